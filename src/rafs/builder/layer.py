"""Package a source as a Nydus layer, byte for byte as the Go converter does.

The Go converter runs `nydus-image create --type tar-rafs --blob-inline-meta --features
blob-toc`. The layer it produces is the data blob with the bootstrap inlined:

    chunks | H(image.blob) | CI table + header | H(blob.meta) | chunk digests | H(blob.digest)
           | zstd(bootstrap) | H(image.boot) | ToC entries | H(rafs.blob.toc)

where H(x) is a 512-byte tar header naming the section just before it. The bootstrap's
blob table names the blob by a placeholder id ("x" * 64; a reader uses the layer itself)
and records as compressed size the offset where the bootstrap starts. The layer digest is
the SHA-256 of the whole file. A bootstrap written beside the layer names the blob by the
layer digest instead, as a merged image does, so it resolves in a folder of blobs.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from rafs.builder.blob import TOC_FLAGS, BlobSummary, BlobWriter, store_compressed, toc_entry
from rafs.builder.bootstrap import BootstrapOptions, rename_blobs, write_bootstrap
from rafs.builder.chunkdict import ChunkDict
from rafs.builder.from_dir import tree_from_dir
from rafs.builder.from_tar import tree_from_tar
from rafs.builder.options import BuildOptions
from rafs.builder.source import open_tar_stream
from rafs.builder.tree import cyclic_gc_paused, relabel_blobs
from rafs.errors import NotFound
from rafs.fileio import AtomicHashingFile, HashingWriter, write_atomic
from rafs.format.blobtable import PLACEHOLDER_BLOB_ID, BlobEntry, Compressor, Digester
from rafs.format.toc import SECTION_BOOTSTRAP, TOC_NAME, pack_section_header


@dataclass(frozen=True)
class LayerResult:
    """What a build produced."""

    digest: str  # "sha256:<hex>" of the layer file
    size: int
    bootstrap: bytes  # as inlined in the layer
    has_own_blob: bool  # False when the layer stores no chunk data of its own


def blob_entry(summary: BlobSummary, options: BuildOptions, blob_id: str,
               compressed_size: int) -> BlobEntry:  # fmt: skip
    """The blob table entry for a freshly written blob."""
    return BlobEntry(
        blob_id=blob_id.encode(),
        blob_index=0,
        chunk_size=options.chunk_size,
        chunk_count=summary.chunk_count,
        compression_algo=options.compressor,
        digest_algo=options.digester,
        features=summary.features,
        compressed_size=compressed_size,
        uncompressed_size=summary.uncompressed_size,
        blob_toc_size=0,
        ci_compressor=summary.ci_compressor,
        ci_offset=summary.ci_offset,
        ci_compressed_size=summary.ci_compressed_size,
        ci_uncompressed_size=summary.ci_uncompressed_size,
    )


def bootstrap_options(options: BuildOptions) -> BootstrapOptions:
    return BootstrapOptions(
        chunk_size=options.chunk_size,
        compressor=Compressor(options.compressor),
        digester=Digester(options.digester),
        prefetch_patterns=options.prefetch_patterns,
    )


def build_layer(source: Path, output: Path, options: BuildOptions,
                bootstrap_path: Path | None = None) -> LayerResult:  # fmt: skip
    """Build the Nydus layer of a tar file (plain, gzip, zstd) or a directory."""
    if not source.exists():
        raise NotFound(f"{source}: no such file or directory")
    with AtomicHashingFile(output) as out:
        if source.is_dir():
            result = write_layer(source, out, options, str(source))
        else:
            with source.open("rb") as raw, open_tar_stream(raw) as tar:
                result = write_layer(tar, out, options, str(source))
        out.commit()
    if bootstrap_path is not None:
        own = {0: result.digest.split(":")[1]} if result.has_own_blob else {}
        write_atomic(bootstrap_path, rename_blobs(result.bootstrap, own))
    return result


def write_layer(source: Path | IO[bytes], out: HashingWriter, options: BuildOptions,
                name: str) -> LayerResult:  # fmt: skip
    """Write the Nydus layer of a directory or an uncompressed tar stream to `out`."""
    chunk_dict = None
    if options.chunk_dict_path is not None:
        chunk_dict = ChunkDict.load(options.chunk_dict_path, options.digester, options.chunk_size)
    with cyclic_gc_paused():
        blob = BlobWriter(out, options, chunk_dict=chunk_dict)
        try:
            if isinstance(source, Path):
                root = tree_from_dir(source, blob)
            else:
                root = tree_from_tar(source, blob, name, options.whiteout_spec)
            summary = blob.finish()
        finally:
            blob.close()
        blobs = []
        if summary is not None:
            blobs = [blob_entry(summary, options, PLACEHOLDER_BLOB_ID, out.tell())]
        if chunk_dict is not None and chunk_dict.used_blobs:
            if summary is None:  # every chunk came from the dictionary: no blob of our own
                relabel_blobs(root, {i + 1: i for i in range(len(chunk_dict.used_blobs))})
            blobs += chunk_dict.used_blobs
        bootstrap = write_bootstrap(root, blobs, bootstrap_options(options))
    entries = list(summary.toc_entries) if summary else []
    stored, algo = store_compressed(bootstrap, Compressor.ZSTD)
    entries.append(toc_entry(SECTION_BOOTSTRAP, TOC_FLAGS[algo],
                             hashlib.sha256(bootstrap).digest(), out.tell(), len(stored),
                             len(bootstrap)))  # fmt: skip
    out.write(stored)
    out.write(pack_section_header(SECTION_BOOTSTRAP, len(stored)))
    toc = b"".join(entry.pack() for entry in entries)
    out.write(toc)
    out.write(pack_section_header(TOC_NAME, len(toc)))
    return LayerResult(f"sha256:{out.hexdigest()}", out.tell(), bootstrap, summary is not None)
