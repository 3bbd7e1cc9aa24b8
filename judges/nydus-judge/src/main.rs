//! nydus-judge: a test tool for rafs.
//!
//! It loads, walks, merges and builds RAFS bootstraps with nydus's published library crates
//! (nydus-rafs, nydus-builder), so the test suite can check what rafs writes against the code
//! nydusd and nydus-image run. See README.md for what each subcommand prints.

mod args;
mod build;
mod tree;

use std::io::{Read, Write};
use std::os::unix::process::ExitStatusExt;
use std::panic::{self, AssertUnwindSafe};
use std::process::ExitCode;
use std::process::{Command, Stdio};
use std::sync::Mutex;

use anyhow::Result;

use args::Args;

const USAGE: &str = "usage:
  nydus-judge check BOOTSTRAP
  nydus-judge walk BOOTSTRAP
  nydus-judge merge LAYER_BOOTSTRAP... -o OUT [--blob-digests D1,D2,...] [--chunk-dict BOOTSTRAP]
                    [--blob-sizes S1,...] [--original-blob-ids I1,...] [--blob-toc-digests D1,...]
                    [--blob-toc-sizes S1,...] [--prefetch-policy fs|none (fs: patterns on stdin)]
  nydus-judge create TAR -o LAYER [--bootstrap FILE] [--fs-version 5|6]
                     [--compressor zstd|lz4_block|none] [--digester blake3|sha256]
                     [--chunk-size N] [--whiteout-spec oci|overlayfs|none]";

/// The message of the last panic, recorded by the panic hook (which prints nothing itself).
static PANIC_MESSAGE: Mutex<Option<String>> = Mutex::new(None);

fn run(command: &str, rest: Vec<String>) -> Result<()> {
    match command {
        "check" => {
            let mut args = Args::parse(rest, &[])?;
            let path = args.single_positional("BOOTSTRAP")?;
            tree::check(&path)
        }
        "walk" => {
            let mut args = Args::parse(rest, &[])?;
            let path = args.single_positional("BOOTSTRAP")?;
            tree::walk(&path)
        }
        "merge" => {
            let args = Args::parse(
                rest,
                &[
                    "-o",
                    "--output",
                    "--blob-digests",
                    "--blob-sizes",
                    "--original-blob-ids",
                    "--blob-toc-digests",
                    "--blob-toc-sizes",
                    "--chunk-dict",
                    "--prefetch-policy",
                ],
            )?;
            build::merge(args)
        }
        "create" => {
            let args = Args::parse(
                rest,
                &[
                    "-o",
                    "--output",
                    "--bootstrap",
                    "--fs-version",
                    "--compressor",
                    "--digester",
                    "--chunk-size",
                    "--whiteout-spec",
                ],
            )?;
            build::create(args)
        }
        _ => anyhow::bail!(
            "unknown subcommand {:?} (check, walk, merge, create; --help for usage)",
            command
        ),
    }
}

fn one_line(text: &str) -> String {
    text.split('\n')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .join("; ")
}

fn fail(what: &str, error: &str) -> ExitCode {
    let _ = std::io::stdout().flush();
    eprintln!("nydus-judge: {}: {}", what, one_line(error));
    ExitCode::from(1)
}

/// Set in the worker process the judge runs its work in.
const WORKER_ENV: &str = "NYDUS_JUDGE_WORKER";

/// Runs this same command in a worker process, stdin and stdout passed through, and relays its
/// stderr. A panic is caught in the worker itself; what cannot be caught there (an abort on a
/// failed allocation of a size read from a corrupt file, a stack overflow, a signal) still
/// ends in one error line and exit 1 here. None when no worker could be started.
fn supervise(command: &str) -> Option<ExitCode> {
    let exe = std::env::current_exe().ok()?;
    let mut child = Command::new(exe)
        .args(std::env::args_os().skip(1))
        .env(WORKER_ENV, "1")
        .stdin(Stdio::inherit())
        .stdout(Stdio::inherit())
        .stderr(Stdio::piped())
        .spawn()
        .ok()?;
    let mut err = Vec::new();
    if let Some(mut pipe) = child.stderr.take() {
        let _ = pipe.read_to_end(&mut err);
    }
    let status = match child.wait() {
        Ok(s) => s,
        Err(e) => return Some(fail(command, &format!("waiting for the worker: {}", e))),
    };
    let text = String::from_utf8_lossy(&err);
    match status.code() {
        Some(0) | Some(1) => {
            let _ = std::io::stderr().write_all(&err);
            Some(ExitCode::from(status.code().unwrap_or(1) as u8))
        }
        other => {
            // The first line is the reason (e.g. "memory allocation of N bytes failed"),
            // what follows a backtrace.
            let reason = text
                .lines()
                .map(str::trim)
                .find(|l| !l.is_empty())
                .unwrap_or("no message");
            let how = match (other, status.signal()) {
                (_, Some(sig)) => format!("signal {}", sig),
                (Some(code), None) => format!("exit code {}", code),
                (None, None) => "unknown status".to_string(),
            };
            // The worker had no chance to remove what it was writing.
            if command == "create" || command == "merge" {
                for path in output_paths() {
                    if std::path::Path::new(&path).is_file() {
                        let _ = std::fs::remove_file(&path);
                    }
                }
            }
            Some(fail(command, &format!("worker died ({}): {}", how, reason)))
        }
    }
}

/// The files named by -o/--output and --bootstrap on the command line.
fn output_paths() -> Vec<String> {
    let args: Vec<String> = std::env::args().skip(2).collect();
    let mut out = Vec::new();
    for (i, arg) in args.iter().enumerate() {
        for name in ["-o", "--output", "--bootstrap"] {
            if arg == name {
                if let Some(v) = args.get(i + 1) {
                    out.push(v.clone());
                }
            } else if let Some(v) = arg.strip_prefix(&format!("{}=", name)) {
                out.push(v.to_string());
            }
        }
    }
    out
}

fn main() -> ExitCode {
    let mut argv: Vec<String> = Vec::new();
    for arg in std::env::args_os().skip(1) {
        match arg.into_string() {
            Ok(s) => argv.push(s),
            Err(a) => return fail("arguments", &format!("argument {:?} is not valid UTF-8", a)),
        }
    }
    if argv.is_empty() || argv[0] == "-h" || argv[0] == "--help" {
        if argv.is_empty() {
            return fail(
                "arguments",
                "missing subcommand (check, walk, merge, create)",
            );
        }
        println!("{}", USAGE);
        return ExitCode::SUCCESS;
    }
    let command = argv.remove(0);

    if std::env::var_os(WORKER_ENV).is_none() {
        if let Some(code) = supervise(&command) {
            return code;
        }
    }

    panic::set_hook(Box::new(|info| {
        let payload = info.payload();
        let message = if let Some(s) = payload.downcast_ref::<&str>() {
            s.to_string()
        } else if let Some(s) = payload.downcast_ref::<String>() {
            s.clone()
        } else {
            "(no message)".to_string()
        };
        let text = match info.location() {
            Some(loc) => format!("{} (at {}:{})", message, loc.file(), loc.line()),
            None => message,
        };
        if let Ok(mut slot) = PANIC_MESSAGE.lock() {
            *slot = Some(text);
        }
    }));

    let result = panic::catch_unwind(AssertUnwindSafe(|| run(&command, argv)));
    match result {
        Ok(Ok(())) => match std::io::stdout().flush() {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => fail(&command, &format!("writing stdout: {}", e)),
        },
        Ok(Err(e)) => fail(&command, &format!("{:#}", e)),
        Err(_) => {
            let message = PANIC_MESSAGE
                .lock()
                .ok()
                .and_then(|mut m| m.take())
                .unwrap_or_else(|| "(no message)".to_string());
            fail(&command, &format!("panic in nydus library: {}", message))
        }
    }
}
