"""Run one fuzz target under atheris (libFuzzer), coverage-guided, from the targets' seeds.

    python -m tests.fuzz.run TARGET [--runs N] [--seconds S] [--corpus DIR] [--artifacts DIR]

The parent writes the seeds to a corpus folder and starts a child that imports `rafs`
instrumented, limits its own address space to what it uses after setup plus
`MEMORY_LIMIT` (so a size field driving a larger allocation raises `MemoryError`, which is
not a `RafsError`: a crash), and fuzzes. Each input runs under a CPU-time timer of
`TIME_LIMIT`: an input taking longer raises `Slow`, also a crash. libFuzzer's own wall-clock
timeout catches an input stuck where Python cannot raise. A crash leaves `crash-<sha1>` (or
`timeout-<sha1>`) in the artifacts folder; the exit code is then non-zero. The last line
printed is a summary: `fuzz TARGET: N inputs in S s, exit C`.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import os
import re
import resource
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import FrameType

REPO = Path(__file__).resolve().parents[2]
WALL_TIMEOUT = 10  # libFuzzer's timeout, seconds: a backstop for inputs stuck in C code
_TARGET_MODULES = dict.fromkeys(("oci", "auth", "reference"), "tests.fuzz.oci_targets")
"""Targets defined outside `targets.py`, by the module holding them."""


class Slow(Exception):
    """An input used more CPU time than TIME_LIMIT."""


def _slow(signum: int, frame: FrameType | None) -> None:
    raise Slow("input took more than the time limit of CPU time")


def _vm_size() -> int:
    """This process's address space in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmSize:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmSize in /proc/self/status")


def child(name: str, workdir: Path, libfuzzer_args: list[str]) -> None:
    """Fuzz in this process (never returns: libFuzzer exits)."""
    import atheris

    # Instrument only what the target drives: the rest of `rafs` (imported by `targets`
    # afterwards) then costs no instrumenting at startup.
    with atheris.instrument_imports(include=["rafs"]):
        importlib.import_module(_TARGET_MODULES.get(name, "tests.fuzz.targets"))
    from tests.fuzz import targets
    target = targets.setup(name, workdir)
    signal.signal(signal.SIGPROF, _slow)
    limit = targets.TIME_LIMIT

    def one(data: bytes) -> None:
        signal.setitimer(signal.ITIMER_PROF, limit)
        try:
            targets.run_one(target, data)
        finally:
            signal.setitimer(signal.ITIMER_PROF, 0)

    # Start from everything the seeds and setup made (threads included), then allow
    # MEMORY_LIMIT more: an allocation that size or larger fails with MemoryError.
    one(b"")
    budget = _vm_size() + targets.MEMORY_LIMIT
    resource.setrlimit(resource.RLIMIT_AS, (budget, budget))
    atheris.Setup([sys.argv[0], *libfuzzer_args], one)
    atheris.Fuzz()


def write_seeds(name: str, corpus: Path) -> int:
    from tests.fuzz import targets

    corpus.mkdir(parents=True, exist_ok=True)
    seeds = targets.TARGETS[name][1]()
    for seed in seeds:
        (corpus / hashlib.sha1(seed).hexdigest()).write_bytes(seed)
    return len(seeds)


def fuzz(name: str, runs: int, seconds: int, corpus: Path | None, artifacts: Path,
         seed: int = 1) -> int:  # fmt: skip
    """Fuzz one target in a child process; returns its exit code (0: no crash)."""
    artifacts.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f"rafs-fuzz-{name}-") as temp:
        work = Path(temp)
        corpus = corpus or work / "corpus"
        write_seeds(name, corpus)
        args = [str(corpus), f"-runs={runs}", f"-max_total_time={seconds}",
                f"-timeout={WALL_TIMEOUT}", f"-seed={seed}", "-rss_limit_mb=0",
                f"-artifact_prefix={artifacts}/", "-print_final_stats=1"]  # fmt: skip
        # This checkout's src first: a worktree fuzzes its own code, not the installed one.
        path = os.pathsep.join([str(REPO / "src"), str(REPO)])
        env = {**os.environ, "MALLOC_ARENA_MAX": "2", "PYTHONPATH": path}
        started = time.monotonic()
        proc = subprocess.run(
            [sys.executable, "-m", "tests.fuzz.run", name, "--child", str(work), "--", *args],
            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            errors="replace",
        )  # fmt: skip
        elapsed = time.monotonic() - started
    output = proc.stdout
    done = re.findall(r"stat::number_of_executed_units:\s*(\d+)", output)
    if proc.returncode:
        sys.stdout.write(output[-6000:])
    print(f"fuzz {name}: {done[-1] if done else '?'} inputs in {elapsed:.0f} s, "
          f"exit {proc.returncode}")  # fmt: skip
    return proc.returncode


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.fuzz.run")
    parser.add_argument("target")
    parser.add_argument("--runs", type=int, default=200_000)
    parser.add_argument("--seconds", type=int, default=0, help="stop after this (0: never)")
    parser.add_argument("--corpus", type=Path, help="corpus folder kept between runs")
    parser.add_argument("--artifacts", type=Path, default=Path("fuzz-artifacts"))
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    argv = sys.argv[1:] if argv is None else argv
    libfuzzer = argv[argv.index("--") + 1 :] if "--" in argv else []
    args = parser.parse_args(argv[: len(argv) - len(libfuzzer) - bool(libfuzzer)])
    if args.child is not None:
        child(args.target, args.child, libfuzzer)
        return 1
    return fuzz(args.target, args.runs, args.seconds, args.corpus, args.artifacts, args.seed)


if __name__ == "__main__":
    sys.exit(main())
