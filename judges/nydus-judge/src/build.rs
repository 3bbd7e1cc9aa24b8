//! `merge` and `create`: nydus-builder's Merger and tarball builder, set up as nydus-image sets
//! them up for `nydus-image merge` and `nydus-image create --type tar-rafs --blob-inline-meta
//! --features blob-toc`.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};
use nydus_api::ConfigV2;
use nydus_builder::attributes::Attributes;
use nydus_builder::{
    parse_chunk_dict_arg, ArtifactStorage, BlobManager, BootstrapManager, BuildContext, Builder,
    ConversionType, Features, Merger, Prefetch, PrefetchPolicy, TarballBuilder, WhiteoutSpec,
};
use nydus_rafs::metadata::RafsVersion;
use nydus_utils::{compress, digest};
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::args::Args;
use crate::tree::{localfs_config, TempDir};

fn elapsed_line(start: Instant) {
    let ms = start.elapsed().as_secs_f64() * 1000.0;
    eprintln!("{{\"elapsed_ms\": {:.3}}}", ms);
}

fn list(args: &Args, name: &str) -> Option<Vec<String>> {
    args.get(name)
        .map(|s| s.split(',').map(|item| item.trim().to_string()).collect())
}

fn digest_list(args: &Args, name: &str) -> Result<Option<Vec<String>>> {
    let Some(items) = list(args, name) else {
        return Ok(None);
    };
    let mut out = Vec::new();
    for item in items {
        let hex = item.strip_prefix("sha256:").unwrap_or(&item).to_string();
        if hex.len() != 64 || !hex.bytes().all(|c| c.is_ascii_hexdigit()) {
            bail!("{}: {:?} is not a sha256 hex digest", name, item);
        }
        out.push(hex.to_ascii_lowercase());
    }
    Ok(Some(out))
}

fn size_list(args: &Args, name: &str) -> Result<Option<Vec<u64>>> {
    let Some(items) = list(args, name) else {
        return Ok(None);
    };
    items
        .iter()
        .map(|s| {
            s.parse::<u64>()
                .map_err(|_| anyhow!("{}: {:?} is not a number", name, s))
        })
        .collect::<Result<Vec<_>>>()
        .map(Some)
}

/// `nydus-judge merge LAYER_BOOTSTRAP... -o OUT [--blob-digests D1,...] [--chunk-dict B]`.
pub fn merge(args: Args) -> Result<()> {
    let sources: Vec<PathBuf> = args.positionals.iter().map(PathBuf::from).collect();
    if sources.is_empty() {
        bail!("missing LAYER_BOOTSTRAP");
    }
    for source in &sources {
        if !source.is_file() {
            bail!("{}: no such file", source.display());
        }
    }
    let target = args
        .get("--output")
        .ok_or_else(|| anyhow!("missing -o OUT"))?;
    if let Ok(out) = std::fs::canonicalize(target) {
        for source in &sources {
            if std::fs::canonicalize(source).ok().as_ref() == Some(&out) {
                bail!("-o {} is one of the layer bootstraps", target);
            }
        }
    }
    let blob_digests = digest_list(&args, "--blob-digests")?;
    let original_blob_ids = list(&args, "--original-blob-ids");
    let blob_sizes = size_list(&args, "--blob-sizes")?;
    let blob_toc_digests = digest_list(&args, "--blob-toc-digests")?;
    let blob_toc_sizes = size_list(&args, "--blob-toc-sizes")?;
    let chunk_dict = args
        .get("--chunk-dict")
        .map(parse_chunk_dict_arg)
        .transpose()?;

    // As `nydus-image merge` without --config: a default configuration, blobs not accessible.
    let config = Arc::new(ConfigV2::default());
    config.internal.set_blob_accessible(false);
    // `--prefetch-policy fs` reads the prefetch patterns from stdin, one a line, as
    // nydus-image does (the Go converter gives "/" for a whole-image prefetch table).
    let prefetch = match args.get("--prefetch-policy").unwrap_or("none") {
        "none" => Prefetch::default(),
        "fs" => Prefetch::new(PrefetchPolicy::Fs)?,
        p => bail!("invalid --prefetch-policy {:?}: fs or none", p),
    };
    let mut ctx = BuildContext {
        prefetch,
        ..Default::default()
    };
    ctx.configuration = config.clone();

    let mut cleanup = Cleanup(vec![PathBuf::from(target)]);
    let start = Instant::now();
    let output = Merger::merge(
        &mut ctx,
        None,
        sources,
        blob_digests,
        original_blob_ids,
        blob_sizes,
        blob_toc_digests,
        blob_toc_sizes,
        ArtifactStorage::SingleFile(PathBuf::from(target)),
        chunk_dict,
        config,
    )?;
    elapsed_line(start);
    cleanup.disarm();
    let line = json!({"bootstrap": target, "blobs": output.blobs});
    writeln!(std::io::stdout().lock(), "{}", line)?;
    Ok(())
}

fn parse_chunk_size(text: &str) -> Result<u32> {
    let value = if let Some(hex) = text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
        u64::from_str_radix(hex, 16)
    } else {
        text.parse::<u64>()
    }
    .map_err(|_| anyhow!("invalid chunk size {:?}", text))?;
    if !value.is_power_of_two() || !(0x1000..=0x1000000).contains(&value) {
        bail!(
            "invalid chunk size {:#x}: a power of two from 0x1000 to 0x1000000",
            value
        );
    }
    Ok(value as u32)
}

fn sha256_file(path: &Path) -> Result<String> {
    let mut file = std::fs::File::open(path).with_context(|| format!("{}", path.display()))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}

fn is_gzip(path: &Path) -> Result<bool> {
    let mut magic = [0u8; 2];
    let mut file = std::fs::File::open(path).with_context(|| format!("{}", path.display()))?;
    let mut got = 0;
    while got < 2 {
        let n = file.read(&mut magic[got..])?;
        if n == 0 {
            break;
        }
        got += n;
    }
    Ok(got == 2 && magic == [0x1f, 0x8b])
}

/// The separate bootstrap of a layer: the layer's inlined bootstrap merged alone, its blob
/// named by the layer digest, as nydus-snapshotter makes an image's bootstrap from its layers.
/// The Merger loads the layer as nydusd does: the layer, found by its digest in a localfs blob
/// folder (here a temporary one with a link to it), has its `image.boot` extracted.
fn separate_bootstrap(layer: &Path, blob_id: &str, target: &Path) -> Result<()> {
    let parent = target.parent().unwrap_or_else(|| Path::new(""));
    let work = TempDir::new(parent, "boot")?;
    let layer_abs = std::fs::canonicalize(layer).with_context(|| format!("{}", layer.display()))?;
    let link = work.0.join(blob_id);
    std::os::unix::fs::symlink(&layer_abs, &link)
        .with_context(|| format!("linking {}", link.display()))?;
    let work_abs = std::fs::canonicalize(&work.0)?;
    let config = Arc::new(localfs_config(&work_abs, &work_abs, None)?);
    config.internal.set_blob_accessible(false);
    let mut ctx = BuildContext {
        prefetch: Prefetch::default(),
        ..Default::default()
    };
    ctx.configuration = config.clone();
    Merger::merge(
        &mut ctx,
        None,
        vec![work_abs.join(blob_id)],
        Some(vec![blob_id.to_string()]),
        None,
        None,
        None,
        None,
        ArtifactStorage::SingleFile(target.to_path_buf()),
        None,
        config,
    )?;
    Ok(())
}

/// Removes the files it names when dropped, unless disarmed: no partial output on failure.
struct Cleanup(Vec<PathBuf>);

impl Cleanup {
    fn disarm(&mut self) {
        self.0.clear();
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for path in &self.0 {
            if path.is_file() {
                let _ = std::fs::remove_file(path);
            }
        }
    }
}

/// `nydus-judge create TAR -o LAYER [--bootstrap FILE] [...]`.
pub fn create(mut args: Args) -> Result<()> {
    let source = PathBuf::from(args.single_positional("TAR")?);
    if !source.is_file() {
        bail!("{}: no such file", source.display());
    }
    let layer = PathBuf::from(
        args.get("--output")
            .ok_or_else(|| anyhow!("missing -o LAYER"))?,
    );
    let bootstrap = args.get("--bootstrap").map(PathBuf::from);
    let version = match args.get("--fs-version").unwrap_or("6") {
        "5" => RafsVersion::V5,
        "6" => RafsVersion::V6,
        v => bail!("invalid --fs-version {:?}: 5 or 6", v),
    };
    let compressor = match args.get("--compressor").unwrap_or("zstd") {
        c @ ("zstd" | "lz4_block" | "none") => compress::Algorithm::from_str(c)?,
        c => bail!("invalid --compressor {:?}: zstd, lz4_block or none", c),
    };
    let digester = match args.get("--digester").unwrap_or("blake3") {
        d @ ("blake3" | "sha256") => digest::Algorithm::from_str(d)?,
        d => bail!("invalid --digester {:?}: blake3 or sha256", d),
    };
    let chunk_size = parse_chunk_size(args.get("--chunk-size").unwrap_or("0x100000"))?;
    let whiteout_spec = WhiteoutSpec::from_str(args.get("--whiteout-spec").unwrap_or("oci"))?;
    let conversion_type = if is_gzip(&source)? {
        ConversionType::TargzToRafs
    } else {
        ConversionType::TarToRafs
    };
    // `--features blob-toc` is refused with RAFS v5 by nydus-image; the bootstrap is inlined
    // (`--blob-inline-meta`) either way.
    let features = if version.is_v6() {
        Features::try_from("blob-toc")?
    } else {
        Features::new()
    };

    let mut cleanup = Cleanup(vec![layer.clone()]);
    cleanup.0.extend(bootstrap.clone());
    let start = Instant::now();
    let mut ctx = BuildContext::new(
        String::new(),
        version.is_v6(), // aligned chunks: always for v6, nydus-image's default off for v5
        0,
        compressor,
        digester,
        true, // explicit uid/gid (not --repeatable)
        whiteout_spec,
        conversion_type,
        source.clone(),
        Prefetch::default(),
        Some(ArtifactStorage::SingleFile(layer.clone())),
        None,
        true, // --blob-inline-meta
        features,
        false,
        Attributes::default(),
    );
    ctx.set_fs_version(version);
    ctx.set_chunk_size(chunk_size);
    ctx.set_batch_size(0);
    let config = ConfigV2::default();
    config.internal.set_blob_accessible(true);
    ctx.set_configuration(Arc::new(config));

    // The bootstrap goes into the layer only (`--blob-inline-meta`), as nydus-image writes it.
    let mut bootstrap_mgr = BootstrapManager::new(None, None);
    let mut blob_mgr = BlobManager::new(digester, false);
    let mut builder = TarballBuilder::new(conversion_type);
    let output = builder
        .build(&mut ctx, &mut bootstrap_mgr, &mut blob_mgr)
        .context("build failed")?;
    let builder_blob_id = output
        .blobs
        .last()
        .cloned()
        .ok_or_else(|| anyhow!("the build made no blob"))?;
    // The layer's digest, its blob id in an image. (The builder's own id is a hash of what it
    // wrote minus the blob.digest array, so it is not the file's digest.)
    let blob_id = sha256_file(&layer)?;
    let build_ms = start.elapsed().as_secs_f64() * 1000.0;

    // The separate bootstrap is no part of `nydus-image create` (the Merger's time is nydus's
    // merge time, not its build time), so it is timed on its own.
    let bootstrap_ms = match &bootstrap {
        Some(target) => {
            let start = Instant::now();
            separate_bootstrap(&layer, &blob_id, target)
                .context("writing the separate bootstrap")?;
            Some(start.elapsed().as_secs_f64() * 1000.0)
        }
        None => None,
    };
    match bootstrap_ms {
        Some(ms) => eprintln!(
            "{{\"elapsed_ms\": {:.3}, \"bootstrap_ms\": {:.3}}}",
            build_ms, ms
        ),
        None => eprintln!("{{\"elapsed_ms\": {:.3}}}", build_ms),
    }

    let size = std::fs::metadata(&layer)
        .with_context(|| format!("{}", layer.display()))?
        .len();
    cleanup.disarm();
    let line = json!({"blob_id": blob_id, "builder_blob_id": builder_blob_id, "size": size});
    writeln!(std::io::stdout().lock(), "{}", line)?;
    Ok(())
}
