"""`rafs create`: layer packaging, determinism, dedup and tar semantics."""

from __future__ import annotations

import gzip
import hashlib
import os
import tarfile
from pathlib import Path

import pytest
import zstandard

from rafs.builder.layer import build_layer
from rafs.builder.options import BuildOptions
from rafs.errors import FormatError, InvalidArgument
from rafs.format.blobtable import PLACEHOLDER_BLOB_ID
from rafs.format.inode import EROFS_CHUNK_FORMAT_INDEXES
from rafs.format.superblock import RafsSuperFlags
from rafs.format.toc import parse_section_header
from rafs.reader.artifact import open_artifact
from rafs.reader.blobs import read_file
from rafs.reader.layer import read_toc
from tests.conftest import RafsRunner
from tests.support.tarballs import make_tar as _tar

MiB = 1 << 20


def _build(tmp: Path, tar: bytes, **options: object) -> Path:
    source = tmp / "in.tar"
    source.write_bytes(tar)
    layer = tmp / "layer"
    build_layer(source, layer, BuildOptions(**options))  # type: ignore[arg-type]
    return layer


def _random(size: int, seed: int) -> bytes:
    out = bytearray()
    counter = 0
    while len(out) < size:
        out += hashlib.sha256(f"{seed}:{counter}".encode()).digest()
        counter += 1
    return bytes(out[:size])


def test_layer_sections_and_flags_are_those_of_the_go_converter(tmp_path: Path) -> None:
    layer = _build(tmp_path, _tar([("a", b"hello", {}), ("d/b", _random(3 * MiB, 1), {})]))
    data = layer.read_bytes()
    with layer.open("rb") as f:
        toc = read_toc(f, "layer")
    assert toc is not None
    assert [e.section for e in toc] == [b"image.blob", b"blob.meta", b"blob.meta.header",
                                        b"blob.digest", b"image.boot"]  # fmt: skip
    for entry in toc:  # every section is followed by its tar header
        at = entry.compressed_offset + entry.compressed_size
        if entry.section == b"blob.meta":
            at += 4096
        if entry.section != b"blob.meta.header":
            name, _ = parse_section_header(data[at : at + 512], "layer")
            assert name == entry.section
    with open_artifact(layer) as artifact:
        image = artifact.image
        flags = RafsSuperFlags(image.ext.s_flags)
        assert flags == (RafsSuperFlags.COMPRESSION_ZSTD | RafsSuperFlags.HASH_BLAKE3
                         | RafsSuperFlags.EXPLICIT_UID_GID | RafsSuperFlags.INLINED_CHUNK_DIGEST
                         | RafsSuperFlags.ENCRYPTION_NONE)  # fmt: skip
        (blob,) = image.blobs
        assert blob.id == PLACEHOLDER_BLOB_ID
        assert blob.features == 0x7000_0023
        assert blob.compressed_size == toc[-1].compressed_offset  # where image.boot starts
        assert image.prefetch_nids() == []  # the Go converter gives create no patterns
        assert image.devices[0].mapped_blkaddr * 4096 % 0x80000 == 0


def test_same_input_gives_same_bytes(tmp_path: Path) -> None:
    entries = [(f"dir{i % 7}/file{i}", _random(i * 1000, i), {}) for i in range(200)]
    entries.append(("x", b"", {"pax_headers": {"SCHILY.xattr.user.b": "2",
                                               "SCHILY.xattr.user.a": "1"}}))  # fmt: skip
    tar = _tar(entries)
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    first = _build(tmp_path / "one", tar).read_bytes()
    second = _build(tmp_path / "two", tar).read_bytes()
    assert first == second


def test_repeated_chunks_are_stored_once(tmp_path: Path) -> None:
    block = _random(MiB, 7)
    layer = _build(tmp_path, _tar([("a", block * 4, {}), ("b", block, {}),
                                   ("c", block + b"tail", {})]))  # fmt: skip
    with open_artifact(layer) as artifact:
        image = artifact.image
        assert image.blobs[0].chunk_count == 2  # the 1 MiB block and "tail"
        assert read_file(artifact.blobs, image.lookup("/a")) == block * 4
        assert read_file(artifact.blobs, image.lookup("/c"), MiB - 2, 10) == block[-2:] + b"tail"


def test_contiguous_file_uses_one_big_kernel_chunk(tmp_path: Path) -> None:
    layer = _build(tmp_path, _tar([("big", _random(int(2.5 * MiB), 3), {}),
                                   ("rep", _random(MiB, 4) * 3, {})]))  # fmt: skip
    with open_artifact(layer) as artifact:
        image = artifact.image
        big = image.stat(image.lookup("/big"))
        assert big.i_u == EROFS_CHUNK_FORMAT_INDEXES | (22 - 12)  # 4 MiB chunk
        rep = image.stat(image.lookup("/rep"))
        assert rep.i_u == EROFS_CHUNK_FORMAT_INDEXES | (20 - 12)  # chunks repeat: 1 MiB
        assert len(image.chunk_addrs(big.nid)) == 3


def test_tar_semantics(tmp_path: Path) -> None:
    long_name = "deep/" + "n" * 150 + "/" + "é文" * 20
    tar = _tar([
        ("./", None, {"mode": 0o700, "uid": 5}),
        ("missing/parent/file", b"v1", {}),
        ("missing/parent/file", b"version two", {}),
        ("dir/", None, {"mode": 0o750}),
        ("dir/child", b"kept", {}),
        ("dir/", None, {"mode": 0o711}),
        (long_name, b"long", {}),
        ("link", None, {"type": tarfile.SYMTYPE, "linkname": "t" * 300}),
        ("hard", None, {"type": tarfile.LNKTYPE, "linkname": "dir/child"}),
    ])  # fmt: skip
    layer = _build(tmp_path, tar)
    with open_artifact(layer) as artifact:
        image = artifact.image
        root = image.stat(image.root_nid)
        assert (root.mode & 0o7777, root.uid) == (0o700, 5)
        parent = image.stat(image.lookup("/missing/parent"))
        assert (parent.mode & 0o7777, parent.mtime, parent.uid) == (0o755, 0, 0)
        assert read_file(artifact.blobs, image.lookup("/missing/parent/file")) == b"version two"
        assert image.stat(image.lookup("/dir")).mode & 0o7777 == 0o711
        assert read_file(artifact.blobs, image.lookup(long_name)) == b"long"
        assert image.readlink(image.lookup("/link")) == b"t" * 300
        assert image.lookup("/hard") == image.lookup("/dir/child")
        assert image.stat(image.lookup("/hard")).nlink == 2


def test_symlinks_get_mode_0777_whatever_the_tar_says(rafs: RafsRunner, tmp_path: Path) -> None:
    """Python's tarfile writes symlinks as 0644; Linux, GNU tar, umoci and containerd show
    every symlink as lrwxrwxrwx, and so must the layer."""
    source = tmp_path / "in.tar"
    source.write_bytes(_tar([
        ("target", b"data", {"mode": 0o600}),
        ("link", None, {"type": tarfile.SYMTYPE, "linkname": "target", "mode": 0o644}),
        ("again", None, {"type": tarfile.LNKTYPE, "linkname": "link", "mode": 0o600}),
    ]))  # fmt: skip
    layer = tmp_path / "layer"
    rafs("create", source, "-o", layer)
    with open_artifact(layer) as artifact:
        image = artifact.image
        assert image.stat(image.lookup("/link")).mode == 0o120777
        assert image.stat(image.lookup("/again")).mode == 0o120777  # a hard link to it
        assert image.stat(image.lookup("/target")).mode == 0o100600
    listing = rafs("ls", layer, "-l").stdout.decode().splitlines()
    assert [line.split()[0] for line in listing] == ["lrwxrwxrwx", "lrwxrwxrwx", "-rw-------"]


@pytest.mark.parametrize("compress", [gzip.compress, zstandard.ZstdCompressor().compress])
def test_compressed_tars_are_sniffed(tmp_path: Path, compress: object) -> None:
    tar = _tar([("f", b"payload", {})])
    layer = _build(tmp_path, compress(tar))  # type: ignore[operator]
    with open_artifact(layer) as artifact:
        assert read_file(artifact.blobs, artifact.image.lookup("/f")) == b"payload"


def test_empty_layer_has_no_blob(tmp_path: Path) -> None:
    layer = _build(tmp_path, _tar([("d", None, {}), ("e", b"", {})]))
    with open_artifact(layer) as artifact:
        assert artifact.image.blobs == []
        assert artifact.image.superblock.s_meta_blkaddr == 0
        assert [e.name for e in artifact.image.children(artifact.image.root_nid)] == [b"d", b"e"]


@pytest.mark.parametrize("name", ["../escape", "/etc/passwd", "a/../../b"])
def test_names_leaving_the_layer_are_refused(tmp_path: Path, name: str) -> None:
    with pytest.raises(FormatError, match="tar entry"):
        _build(tmp_path, _tar([(name, b"x", {})]))
    assert not (tmp_path / "layer").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["in.tar"]


@pytest.mark.parametrize("size", [0, 3000, 1 << 25, 3 << 20])
def test_bad_chunk_sizes_are_refused(size: int) -> None:
    with pytest.raises(InvalidArgument):
        BuildOptions(chunk_size=size)


@pytest.mark.parametrize("damage", ["truncate-tar", "truncate-zstd", "flip-gzip"])
def test_damaged_sources_are_refused(tmp_path: Path, damage: str) -> None:
    tar = _tar([("a", _random(300_000, 1), {}), ("b", _random(200_000, 2), {})])
    if damage == "truncate-tar":
        source = tar[: len(tar) // 2 // 512 * 512]  # ends cleanly between blocks
    elif damage == "truncate-zstd":
        source = zstandard.ZstdCompressor().compress(tar)[:-100]
    else:
        packed = bytearray(gzip.compress(tar))
        packed[len(packed) // 2] ^= 0x10
        source = bytes(packed)
    with pytest.raises(FormatError):
        _build(tmp_path, source)
    assert [p.name for p in tmp_path.iterdir()] == ["in.tar"]


def test_output_files_follow_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        layer = _build(tmp_path, _tar([("f", b"x", {})]))
    finally:
        os.umask(old)
    assert layer.stat().st_mode & 0o777 == 0o644


def test_prefetch_patterns_become_the_prefetch_table(tmp_path: Path) -> None:
    tar = _tar([("etc/hosts", b"h", {}), ("usr/bin/sh", b"s", {}), ("usr/lib/x", b"x", {})])
    source = tmp_path / "in.tar"
    source.write_bytes(tar)
    layer = tmp_path / "layer"
    patterns = ("/usr/bin/sh", "/etc", "/etc/hosts", "/missing", "/usr")
    build_layer(source, layer, BuildOptions(prefetch_patterns=patterns))
    with open_artifact(layer) as artifact:
        image = artifact.image
        expected = [image.lookup(p) for p in ("/usr/bin/sh", "/etc", "/usr")]
        assert image.prefetch_nids() == expected  # /etc/hosts is covered by /etc


def test_gnu_tar_escapes_in_xattr_names_are_undone(tmp_path: Path) -> None:
    layer = _build(tmp_path, _tar([("f", b"x", {"pax_headers": {
        "SCHILY.xattr.user.a%3Db%25c": "v", "SCHILY.xattr.user.%253D": "w"}})]))  # fmt: skip
    with open_artifact(layer) as artifact:
        xattrs = artifact.image.xattrs(artifact.image.lookup("/f"))
    assert xattrs == {b"user.a=b%c": b"v", b"user.%3D": b"w"}


def test_xattrs_outside_the_rafs_namespaces_are_dropped_with_a_warning(
    rafs: RafsRunner, tmp_path: Path
) -> None:
    """macOS tars carry bare xattr names (no namespace EROFS has a prefix for), as
    `SCHILY.xattr.*` and bsdtar's `LIBARCHIVE.xattr.*` records; like containerd's applier,
    create drops each with one warning and keeps the rest of the entry."""
    source = tmp_path / "mac.tar"
    source.write_bytes(_tar([
        ("f", b"content", {"mode": 0o640, "uid": 501, "pax_headers": {
            "SCHILY.xattr.com.apple.provenance": "\x01\x02",
            "LIBARCHIVE.xattr.com.apple.provenance": "AQI=",
            "SCHILY.xattr.hardlink3": "x",
            "SCHILY.xattr.user.kept": "yes",
            "SCHILY.xattr.security.selinux": "label",
        }}),
        ("d/g", b"other", {"pax_headers": {"SCHILY.xattr.com.apple.provenance": "y"}}),
    ]))  # fmt: skip
    layer = tmp_path / "layer"
    result = rafs("create", source, "-o", layer)
    warnings = sorted(result.stderr.splitlines())
    assert warnings == [
        f"{source}: tar entry 'd/g': xattr 'com.apple.provenance' dropped: RAFS v6 has no "
        "namespace for it",
        f"{source}: tar entry 'f': xattr 'com.apple.provenance' dropped: RAFS v6 has no "
        "namespace for it",
        f"{source}: tar entry 'f': xattr 'hardlink3' dropped: RAFS v6 has no namespace for it",
    ]  # fmt: skip
    with open_artifact(layer) as artifact:
        image = artifact.image
        f = image.stat(image.lookup("/f"))
        assert image.xattrs(f.nid) == {b"user.kept": b"yes", b"security.selinux": b"label"}
        assert (f.mode, f.uid, f.mtime) == (0o100640, 501, 1_700_000_000)
        assert read_file(artifact.blobs, f.nid) == b"content"
        g = image.stat(image.lookup("/d/g"))
        assert not g.xattr_size
        assert read_file(artifact.blobs, g.nid) == b"other"


def test_a_layer_without_its_toc_is_read_through_its_tar_headers(tmp_path: Path) -> None:
    layer = _build(tmp_path, _tar([("a", b"payload", {})]))
    with layer.open("rb") as f:
        toc = read_toc(f, "layer")
    assert toc is not None
    boot = next(entry for entry in toc if entry.section == b"image.boot")
    stripped = tmp_path / "stripped"
    # keep everything up to and including the image.boot section's tar header
    stripped.write_bytes(layer.read_bytes()[: boot.compressed_offset + boot.compressed_size + 512])
    with stripped.open("rb") as f:
        assert read_toc(f, "stripped") is None
    with open_artifact(stripped) as artifact:
        assert read_file(artifact.blobs, artifact.image.lookup("/a")) == b"payload"
