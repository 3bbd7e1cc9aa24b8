"""Fuzz targets: one function per parser, fed arbitrary bytes, and the seeds they start from.

Each target takes one input and drives a parser the way the command line does (open, then
walk and read everything reachable). The rules every target is held to are checked by
`run_one`, not by the targets: only `RafsError` may escape, an input takes at most
`TIME_LIMIT` seconds of CPU, and (in the fuzzing child, by an address-space limit; in
regression replays, by tracemalloc) no input allocates `MEMORY_LIMIT` bytes or more.

Seeds are small valid inputs made by the project's own builder (and by `tarfile` and the
test v5 writer), so the fuzzer starts from inputs that reach deep into each parser.
Targets hold their seeds' blobs in memory: nothing here touches the disk except the v5
reader, which reads blobs from a folder (`setup` makes it).
"""

from __future__ import annotations

import contextlib
import io
import tarfile
import tempfile
from collections.abc import Callable
from pathlib import Path

import zstandard

from rafs.builder.layer import write_layer
from rafs.builder.options import BuildOptions
from rafs.builder.source import open_tar_stream
from rafs.errors import RafsError
from rafs.fileio import HashingWriter
from rafs.format.blobmeta import BLOB_META_HEADER_SIZE
from rafs.format.blobtable import Compressor, Digester
from rafs.format.toc import (
    SECTION_BLOB,
    SECTION_BLOB_DIGEST,
    SECTION_BLOB_META,
    SECTION_BLOB_META_HEADER,
    SECTION_BOOTSTRAP,
    TAR_BLOCK,
    TOC_NAME,
    TocEntry,
    TocFlags,
    pack_section_header,
)
from rafs.reader.artifact import Artifact, open_artifact_reader
from rafs.reader.blobs import BlobSet, read_file
from rafs.reader.check import check_image
from rafs.reader.image import RafsImage
from rafs.reader.layer import ends_with_section, read_blob_meta, read_section, read_toc
from rafs.reader.unpack import write_tar
from rafs.reader.v5 import RafsV5Image
from tests.fuzz.oci_targets import (
    auth_flow,
    auth_seeds,
    oci_document,
    oci_seeds,
    oci_setup,
    reference,
    reference_seeds,
)
from tests.support.tarballs import make_tar
from tests.support.v5_writer import SMALL_TREE, write_v5

TIME_LIMIT = 1.0  # seconds of CPU one input may take
MEMORY_LIMIT = 512 << 20  # bytes one input may allocate
CHUNK = 0x1000  # small chunks: seeds stay small, and one input never reads much

Target = Callable[[bytes], None]


class _Null:
    """A sink that keeps nothing."""

    def write(self, data: bytes, /) -> int:
        return len(data)


# -- seed sources ----------------------------------------------------------------------------


_TEXT = b"hello, world\n" * 20
_MIXED = bytes((i * 7919 + (i >> 5) * 31) % 251 for i in range(3 * CHUNK + 100))


def tar_seeds() -> list[bytes]:
    """Small tars touching every entry type and header form the tar reader understands."""
    full = make_tar([
        ("etc", None, {}),
        ("etc/hosts", b"127.0.0.1 localhost\n", {"uid": 1000, "gid": 1000}),
        ("etc/data", _MIXED, {"pax_headers": {"SCHILY.xattr.user.k": "v"}}),
        ("etc/again", b"", {"type": tarfile.LNKTYPE, "linkname": "etc/hosts"}),
        ("link", b"", {"type": tarfile.SYMTYPE, "linkname": "etc/hosts"}),
        ("dev", None, {}),
        ("dev/null", b"", {"type": tarfile.CHRTYPE, "devmajor": 1, "devminor": 3}),
        ("dev/fifo", b"", {"type": tarfile.FIFOTYPE}),
        ("d/" + "n" * 120, _TEXT, {}),
        ("d/.wh.gone", b"", {}),
        ("./", None, {"mode": 0o700}),
    ])  # fmt: skip
    gnu = make_tar([
        ("long/" + "x" * 150, _TEXT, {}),
        ("long/link", b"", {"type": tarfile.SYMTYPE, "linkname": "y" * 130}),
        ("big-id", b"z", {"uid": 8**8}),
    ], fmt=tarfile.GNU_FORMAT)  # fmt: skip
    plain = make_tar([("a", b"a", {}), ("b", None, {})], fmt=tarfile.USTAR_FORMAT)
    seeds = [full, gnu, plain, make_tar([])]
    seeds.append(zstandard.ZstdCompressor().compress(plain))
    gz = io.BytesIO()
    with tarfile.open(fileobj=gz, mode="w:gz") as archive:
        info = tarfile.TarInfo("g")
        info.size = 3
        archive.addfile(info, io.BytesIO(b"gzz"))
    seeds.append(gz.getvalue())
    return seeds


def build_layer(source: bytes, **options: object) -> tuple[bytes, bytes]:
    """(layer, bootstrap as inlined) built from a tar by the project's own builder."""
    out = io.BytesIO()
    with open_tar_stream(io.BytesIO(source)) as tar:
        result = write_layer(tar, HashingWriter(out), BuildOptions(chunk_size=CHUNK, **options),  # type: ignore[arg-type]
                             "seed")  # fmt: skip
    return out.getvalue(), result.bootstrap


_LAYER_OPTIONS: list[dict[str, object]] = [
    {},
    {"compressor": Compressor.LZ4_BLOCK, "digester": Digester.SHA256},
    {"compressor": Compressor.NONE, "prefetch_patterns": ("/etc",)},
]


def _rewrite_toc(layer: bytes, keep: Callable[[TocEntry], TocEntry | None]) -> bytes:
    """A copy of a layer whose ToC entries are mapped by `keep` (None drops one)."""
    entries = read_toc(io.BytesIO(layer), "seed")
    assert entries is not None
    toc = b"".join(e.pack() for e in (keep(e) for e in entries) if e is not None)
    body = layer[: len(layer) - TAR_BLOCK - len(entries) * TocEntry.SIZE]
    return body + toc + pack_section_header(TOC_NAME, len(toc))


def _raw_bootstrap(layer: bytes, bootstrap: bytes) -> bytes:
    """The layer with its image.boot stored raw, digest-less: mutations of it reach the
    bootstrap parser instead of failing the ToC digest."""
    entries = read_toc(io.BytesIO(layer), "seed")
    assert entries is not None
    boot = next(e for e in entries if e.section == SECTION_BOOTSTRAP)
    head = layer[: boot.compressed_offset] + bootstrap
    head += pack_section_header(SECTION_BOOTSTRAP, len(bootstrap))
    moved = []
    for entry in entries:
        if entry.section == SECTION_BOOTSTRAP:
            entry = TocEntry(TocFlags.COMPRESSION_NONE, 0, entry.name, bytes(32),
                             boot.compressed_offset, len(bootstrap), len(bootstrap))  # fmt: skip
        moved.append(entry.pack())
    toc = b"".join(moved)
    return head + toc + pack_section_header(TOC_NAME, len(toc))


def layer_seeds() -> list[bytes]:
    """Layers as built, without their ToC (walked by headers), and with a raw bootstrap."""
    full = tar_seeds()[0]
    seeds = []
    for options in _LAYER_OPTIONS:
        layer, bootstrap = build_layer(full, **options)
        seeds += [layer, _raw_bootstrap(layer, bootstrap)]
    layer, _ = build_layer(full)
    seeds.append(_without_toc(layer))
    seeds.append(_rewrite_toc(layer, lambda e: e if e.section != SECTION_BLOB else None))
    seeds.append(build_layer(tar_seeds()[2])[0])
    return seeds


def _without_toc(layer: bytes) -> bytes:
    """A layer as pre-ToC builders wrote it: found section by section through tar headers."""
    entries = read_toc(io.BytesIO(layer), "seed")
    assert entries is not None
    return layer[: len(layer) - TAR_BLOCK - len(entries) * TocEntry.SIZE]


def _stored_blob_meta(layer: bytes) -> bytes:
    """The blob.meta section as stored: the CI table (as its ToC entry locates it) and the
    header right after it."""
    entries = read_toc(io.BytesIO(layer), "seed")
    assert entries is not None
    meta = next(e for e in entries if e.section == SECTION_BLOB_META)
    end = meta.compressed_offset + meta.compressed_size + BLOB_META_HEADER_SIZE
    return layer[meta.compressed_offset : end]


def blob_meta_seeds() -> list[bytes]:
    """blob.meta sections as stored: (maybe compressed) CI table, then the 4096-byte header."""
    full = tar_seeds()[0]
    return [_stored_blob_meta(build_layer(full, **options)[0]) for options in _LAYER_OPTIONS]


# -- v6 bootstraps: each with its own blob ---------------------------------------------------

_v6_blobs: dict[tuple[int, ...], bytes] = {}


def _v6_sources() -> list[tuple[bytes, dict[str, object]]]:
    tars = tar_seeds()
    return [(tars[0], options) for options in _LAYER_OPTIONS] + [(tars[1], {})]


def v6_seeds() -> list[bytes]:
    return [build_layer(source, **options)[1] for source, options in _v6_sources()]


def _blob_keys(image: RafsImage) -> list[tuple[int, ...]]:
    """Keys of the seed blob an image reads: its own, else one of the same codecs."""
    blob = image.blobs[0]
    codecs = (blob.compression_algo, blob.digest_algo)
    return [(*codecs, blob.compressed_size), codecs]


def _v6_setup(workdir: Path) -> None:
    for source, options in _v6_sources():
        layer, bootstrap = build_layer(source, **options)
        for key in _blob_keys(RafsImage(bootstrap, "seed")):
            _v6_blobs.setdefault(key, layer)


def drive_v6(image: RafsImage, artifact: Artifact) -> None:
    """Everything the commands do with an opened v6 image, each step isolated."""
    steps: list[Callable[[], object]] = [
        image.prefetch_nids,
        lambda: [image.blob_chunks(i) for i in range(len(image.blobs))],
        lambda: check_image(artifact),
        lambda: write_tar(artifact, _Null()),
    ]
    for step in steps:
        with contextlib.suppress(RafsError):
            step()
    for _, st in image.walk():
        for call in (image.xattrs, image.readdir, image.readlink, image.chunk_addrs):
            with contextlib.suppress(RafsError):
                call(st.nid)
        if st.is_reg:
            try:
                for offset in range(0, st.size, image.chunk_size):
                    read_file(artifact.blobs, st.nid, offset, image.chunk_size)
            except RafsError:
                pass


def v6_bootstrap(data: bytes) -> None:
    """A RAFS v6 bootstrap: open, walk every inode, read every symlink, xattr and chunk."""
    image = RafsImage(data, "fuzz.boot")
    blob = b""
    if image.blobs:
        blob = next((_v6_blobs[k] for k in _blob_keys(image) if k in _v6_blobs), b"")
    artifact = Artifact(image, BlobSet(image, io.BytesIO(blob), None), None)
    drive_v6(image, artifact)


# -- layers: the ToC and the tar-trailer walk, then the image in them ------------------------

_SECTIONS = (SECTION_BOOTSTRAP, SECTION_BLOB_META, SECTION_BLOB_META_HEADER,
             SECTION_BLOB_DIGEST, SECTION_BLOB, b"missing")  # fmt: skip


def layer(data: bytes) -> None:
    """A Nydus layer: its trailer, every section, then the image it holds."""
    f = io.BytesIO(data)
    ends_with_section(f)
    for name in _SECTIONS:
        with contextlib.suppress(RafsError):
            read_section(f, name, "fuzz.layer")
    with contextlib.suppress(RafsError):
        read_blob_meta(f, "fuzz.layer")
    artifact = open_artifact_reader(f, "fuzz.layer")
    drive_v6(artifact.image, artifact)


# -- blob.meta -------------------------------------------------------------------------------


def blob_meta(data: bytes) -> None:
    """A blob.meta section as stored in a layer: CI table (maybe compressed), then header."""
    read_blob_meta(io.BytesIO(data + pack_section_header(SECTION_BLOB_META, len(data))),
                   "fuzz.blob.meta")  # fmt: skip


# -- v5 bootstraps ---------------------------------------------------------------------------

_V5_OPTIONS: list[dict[str, object]] = [
    {"compressor": Compressor.LZ4_BLOCK, "prefetch": ["/d"]},
    {"compressor": Compressor.ZSTD, "digester": Digester.SHA256, "layout": "2022"},
    {"compressor": Compressor.NONE, "crc32": True},
]
_v5_blob_dir: list[Path] = []


def v5_seeds() -> list[bytes]:
    return [write_v5(SMALL_TREE, chunk_size=CHUNK, **options).bootstrap  # type: ignore[arg-type]
            for options in _V5_OPTIONS]  # fmt: skip


def _v5_setup(workdir: Path) -> None:
    folder = workdir / "v5-blobs"
    for options in _V5_OPTIONS:
        write_v5(SMALL_TREE, chunk_size=CHUNK, **options).save(folder)  # type: ignore[arg-type]
    _v5_blob_dir[:] = [folder]


def v5_bootstrap(data: bytes) -> None:
    """A RAFS v5 bootstrap: open, walk, read every xattr, symlink, digest and file."""
    image = RafsV5Image(data, "fuzz.v5")
    for call in (image.prefetch_inos, lambda: list(image.walk())):
        with contextlib.suppress(RafsError):
            call()
    for ino in range(1, min(image.max_ino, 4096) + 2):
        try:
            st = image.stat(ino)
            image.xattrs(ino)
            image.digest_matches(ino)
            if st.is_dir:
                image.children(ino)
            if st.is_symlink:
                image.readlink(ino)
            if st.is_reg:
                image.file_chunks(ino)
                for offset in range(0, min(st.size, 16 * CHUNK), CHUNK):
                    image.read_file(ino, _v5_blob_dir[0], offset, CHUNK)
        except RafsError:
            pass


# -- tar input -------------------------------------------------------------------------------


def tar_input(data: bytes) -> None:
    """A tar (plain, gzip or zstd) through `create`, the layer written to nowhere."""
    with open_tar_stream(io.BytesIO(data)) as tar:
        write_layer(tar, HashingWriter(_Null()), BuildOptions(chunk_size=CHUNK),  # type: ignore[arg-type]
                    "fuzz.tar")  # fmt: skip


# -- the registry ----------------------------------------------------------------------------

TARGETS: dict[str, tuple[Target, Callable[[], list[bytes]], Callable[[Path], None] | None]] = {
    "v6": (v6_bootstrap, v6_seeds, _v6_setup),
    "v5": (v5_bootstrap, v5_seeds, _v5_setup),
    "layer": (layer, layer_seeds, None),
    "blobmeta": (blob_meta, blob_meta_seeds, None),
    "tar": (tar_input, tar_seeds, None),
    "oci": (oci_document, oci_seeds, oci_setup),
    "auth": (auth_flow, auth_seeds, None),
    "reference": (reference, reference_seeds, None),
}


def setup(name: str, workdir: Path | None = None) -> Target:
    """The target called `name`, with whatever it reads beside its input made ready."""
    target, _, prepare = TARGETS[name]
    if prepare is not None:
        prepare(workdir or Path(tempfile.mkdtemp(prefix=f"rafs-fuzz-{name}-")))
    return target


def run_one(target: Target, data: bytes) -> None:
    """One input: a `RafsError` is the expected way to refuse it; anything else escapes."""
    with contextlib.suppress(RafsError):
        target(data)
