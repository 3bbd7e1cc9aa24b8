"""RAFS v5: records round-trip, the reader reads what the real nydus-image (2.2) writes, and
corrupt or truncated bootstraps give a FormatError (never another exception, never a hang).

The images are `nydus-image create --fs-version 5` builds of directories made here (as root:
devices, owners, a socket), in the separate form: `image.boot` beside its blob named by blob
id (those tests are marked `judges`). What that builder never writes (holes, another format
version, wrong fields) is made by patching its output.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import socket
import stat
import struct
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from rafs.codecs import digest_function
from rafs.errors import (
    FormatError,
    IntegrityError,
    InvalidArgument,
    NotFound,
    RafsError,
    Unsupported,
)
from rafs.format.blobtable import Compressor, Digester
from rafs.format.chunktable import ChunkFlags, ChunkInfo
from rafs.format.inode import encode_rdev
from rafs.format.superblock import RafsSuperFlags
from rafs.format.v5 import (
    RAFSV5_SUPERBLOCK_SIZE,
    RafsV5BlobEntry,
    RafsV5ExtBlobEntry,
    RafsV5Inode,
    RafsV5InodeFlags,
    RafsV5InodeTableEntry,
    RafsV5SuperBlock,
    RafsV5XattrTable,
    is_rafs_v5,
    pack_blob_table,
    pack_inode_table,
    pack_prefetch_table,
    pack_xattrs,
    unpack_blob_table,
    unpack_prefetch_table,
    unpack_xattrs,
)
from rafs.reader.v5 import RafsV5Image
from tests.conftest import RafsRunner
from tests.support.budget import counting_lines
from tests.support.real_nydus import nydus_image_dir_build

CHUNK = 4096
_PATTERN = bytes((i * 7919 + (i >> 5) * 31) % 251 for i in range(3 * CHUNK + 123))
FILE_MTIME = (1_700_000_000, 123_456_789)

FILES = {
    "/bin/sh": b"#!/bin/sh\necho hi\n",
    "/etc/passwd": b"root:x:0:0:root:/root:/bin/sh\n",
    "/data/big": _PATTERN,
    "/data/dup": _PATTERN[:CHUNK] * 3,
    "/data/empty": b"",
    "/data/zeros": b"a" * CHUNK + bytes(2 * CHUNK) + b"z" * 10,
    "/names/" + "n" * 255: b"long",
    "/names/a": b"1",
    "/names/abcdefgh": b"8",
    "/names/abcdefghi": b"9",
    "/names/été": b"utf8",
}
"""The regular files of the test tree (each with mtime FILE_MTIME unless said otherwise)."""
HARDLINKS = {"/bin/sh-again": "/bin/sh", "/etc/hostname-link": "/bin/sh"}
OTHERS = ["/", "/bin", "/data", "/dev", "/dev/big", "/dev/fifo", "/dev/loop", "/dev/null",
          "/dev/sock", "/empty", "/etc", "/link", "/names"]  # fmt: skip
"""Every other path of the test tree."""


def _write(root: Path, path: str, data: bytes, mode: int = 0o644) -> Path:
    target = root / path.lstrip("/")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(data)
    os.chmod(target, mode)
    return target


def _set_mtime(path: Path, seconds: int, nanoseconds: int) -> None:
    os.utime(path, ns=(seconds * 10**9 + nanoseconds,) * 2, follow_symlinks=False)


def _make_tree(root: Path) -> None:
    """FILES, HARDLINKS and OTHERS under `root`, with the owners, modes, xattrs, device
    numbers and times the tests below expect (needs root)."""
    root.mkdir()
    for path, data in FILES.items():
        _set_mtime(_write(root, path, data, 0o4755 if path == "/bin/sh" else 0o644), *FILE_MTIME)
    for link, target in HARDLINKS.items():
        os.link(root / target.lstrip("/"), root / link.lstrip("/"))
    _set_mtime(root / "bin/sh", 1_700_000_001, 999_999_999)
    passwd = root / "etc/passwd"
    os.chown(passwd, 1000, 1001)
    for xattr, value in ((b"user.a", b"1"), (b"security.selinux", b"x" * 100),
                         (b"trusted.empty", b"")):  # fmt: skip
        os.setxattr(passwd, xattr, value)
    (root / "dev").mkdir()
    for name, kind, device, mode in (("null", stat.S_IFCHR, (1, 3), 0o666),
                                     ("big", stat.S_IFCHR, (240, 70000), 0o600),
                                     ("loop", stat.S_IFBLK, (7, 200), 0o660)):  # fmt: skip
        os.mknod(root / "dev" / name, kind | mode, os.makedev(*device))
        os.chmod(root / "dev" / name, mode)
    os.mkfifo(root / "dev/fifo")
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(root / "dev/sock"))
    os.symlink("etc/passwd", root / "link")
    os.setxattr(root / "link", b"trusted.l", b"v", follow_symlinks=False)
    (root / "empty").mkdir()
    os.chmod(root / "bin", 0o700)
    os.chown(root / "bin", 10, 20)
    _set_mtime(root / "bin", 1_600_000_000, 1)
    os.chown(root, 1, 2)
    os.setxattr(root, b"user.root", b"r")


def _expected_files() -> dict[str, bytes]:
    return {**FILES, **{link: FILES[target] for link, target in HARDLINKS.items()}}


@dataclass(frozen=True)
class Built:
    """What one nydus-image build wrote: `folder/image.boot` and `folder/<blob id>`."""

    folder: Path
    bootstrap: bytes
    blob_id: str
    """"" when the image has no blob."""

    @property
    def blob(self) -> bytes:
        return (self.folder / self.blob_id).read_bytes()

    def open(self) -> RafsV5Image:
        return RafsV5Image(self.bootstrap, "test.boot")

    def copy(self, folder: Path) -> Built:
        """The same build in another folder (for tests that change its files)."""
        shutil.copytree(self.folder, folder)
        return replace(self, folder=folder)


Builder = Callable[..., Built]


def _builder(source: Path, tmp_path_factory: pytest.TempPathFactory) -> Builder:
    """`build(*OPTIONS, prefetch=())`: nydus-image v5 of `source` with 4 KiB chunks, once per
    set of options."""
    made: dict[tuple[tuple[str, ...], tuple[str, ...]], Built] = {}

    def build(*options: str, prefetch: tuple[str, ...] = ()) -> Built:
        key = (options, prefetch)
        if key not in made:
            folder = tmp_path_factory.mktemp("nydus-image-v5")
            boot = nydus_image_dir_build(source, folder, "--fs-version", "5",
                                         "--chunk-size", hex(CHUNK), *options,
                                         prefetch=prefetch)  # fmt: skip
            blobs = [path.name for path in folder.iterdir() if path != boot]
            assert len(blobs) <= 1, blobs
            made[key] = Built(folder, boot.read_bytes(), blobs[0] if blobs else "")
        return made[key]

    return build


@pytest.fixture(scope="module")
def build(tmp_path_factory: pytest.TempPathFactory) -> Builder:
    source = tmp_path_factory.mktemp("v5-source") / "tree"
    _make_tree(source)
    return _builder(source, tmp_path_factory)


def _record_index(image: RafsV5Image, path: str) -> int:
    """The inode table slot of the record of the link at `path` (its own, not its inode's)."""
    parent, name = path.rsplit("/", 1)
    directory = image.inode(image.lookup(parent or "/"))
    for index in range(directory.i_child_index, directory.i_child_index + directory.i_child_count):
        if image.name_of(index) == name.encode():
            return index
    raise AssertionError(f"no record named {path}")


def _patched_inode(data: bytes, image: RafsV5Image, ino: int, **fields: int) -> bytes:
    offset = image.stat(ino).offset
    record = replace(image.inode(ino), **fields).pack()  # type: ignore[arg-type]
    return data[:offset] + record + data[offset + len(record) :]


def _with_hole(built: Built, path: str, chunk: int) -> tuple[bytes, bytes]:
    """The bootstrap with chunk number `chunk` of `path` left out and HAS_HOLE set, as a
    builder that skips chunks of zeros writes it; and the file's content as read then."""
    image = built.open()
    ino = image.lookup(path)
    chunks = image.file_chunks(ino)
    records = b"".join(info.pack() for info in chunks)
    start = built.bootstrap.index(records, image.stat(ino).offset)
    kept = b"".join(info.pack() for index, info in enumerate(chunks) if index != chunk)
    data = built.bootstrap[:start] + kept + built.bootstrap[start + len(kept) :]
    inode = image.inode(ino)
    data = _patched_inode(data, image, ino, i_child_count=len(chunks) - 1,
                          i_flags=inode.i_flags | RafsV5InodeFlags.HAS_HOLE)  # fmt: skip
    content = bytearray(FILES[path])
    gap = chunks[chunk]
    content[gap.file_offset : gap.file_offset + gap.uncompressed_size] = bytes(
        gap.uncompressed_size
    )
    return data, bytes(content)


# -- reading what nydus-image wrote --------------------------------------------------------


@pytest.mark.judges
@pytest.mark.parametrize("compressor", [Compressor.NONE, Compressor.LZ4_BLOCK, Compressor.ZSTD])
@pytest.mark.parametrize("digester", [Digester.BLAKE3, Digester.SHA256])
def test_reader_reads_every_file(
    build: Builder, compressor: Compressor, digester: Digester
) -> None:
    built = build("--compressor", compressor.name.lower(), "--digester", digester.name.lower())
    image = built.open()
    assert image.blob_compressor == compressor
    assert image.blob_digester == digester
    assert image.blob_ids == [built.blob_id]
    for path, data in _expected_files().items():
        ino = image.lookup(path)
        assert image.read_file(ino, built.folder) == data, path
        assert image.read_file(ino, built.folder, 5, 4100) == data[5:4105], path
        assert image.read_file(ino, built.folder, len(data) + 1) == b""
    chunk_flags = {
        c.flags for path in _expected_files() for c in image.file_chunks(image.lookup(path))
    }
    if compressor == Compressor.NONE:
        assert chunk_flags == {0}
    else:  # the patterned and repeated data shrinks, the few-byte files do not
        assert chunk_flags == {0, ChunkFlags.COMPRESSED}


@pytest.mark.judges
def test_walk_lists_every_path_in_name_order(build: Builder) -> None:
    image = build().open()
    paths = [path.decode(errors="surrogateescape") for path, _ in image.walk()]
    assert sorted(paths) == sorted([*_expected_files(), *OTHERS])
    # depth first, children by bytewise name
    assert paths[:5] == ["/", "/bin", "/bin/sh", "/bin/sh-again", "/data"]
    root_names = [e.name for e in image.children(image.root_ino)]
    assert root_names == [b"bin", b"data", b"dev", b"empty", b"etc", b"link", b"names"]


@pytest.mark.judges
def test_stat_fields(build: Builder) -> None:
    image = build().open()
    sh = image.stat(image.lookup("/bin/sh"))
    assert (sh.mode, sh.uid, sh.gid, sh.size, sh.nlink, sh.rdev, sh.blocks, sh.flags) == (
        stat.S_IFREG | 0o4755, 0, 0, 18, 3, (0, 0), 1, 0)  # fmt: skip
    assert (sh.mtime, sh.mtime_nsec) == (1_700_000_001, 999_999_999)
    passwd = image.stat(image.lookup("/etc/passwd"))
    assert (passwd.uid, passwd.gid, passwd.nlink, passwd.size) == (1000, 1001, 1, 30)
    assert passwd.flags == RafsV5InodeFlags.XATTR
    assert (passwd.mtime, passwd.mtime_nsec) == FILE_MTIME
    bin_ = image.stat(image.lookup("/bin"))
    assert (bin_.mode, bin_.uid, bin_.gid, bin_.nlink) == (stat.S_IFDIR | 0o700, 10, 20, 2)
    assert (bin_.mtime, bin_.mtime_nsec, bin_.size, bin_.blocks) == (1_600_000_000, 1, 4096, 8)
    root = image.stat(image.root_ino)
    assert (root.ino, root.uid, root.gid, root.nlink) == (1, 1, 2, 2 + 6)
    assert (root.mtime, root.mtime_nsec) == (0, 0)  # the builder drops the root's mtime
    assert image.stat(image.lookup("/dev/null")).rdev == (1, 3)
    assert image.stat(image.lookup("/dev/big")).rdev == (240, 70000)
    loop = image.stat(image.lookup("/dev/loop"))
    assert (loop.mode, loop.rdev, loop.size) == (stat.S_IFBLK | 0o660, (7, 200), 0)
    assert stat.S_ISFIFO(image.stat(image.lookup("/dev/fifo")).mode)
    assert stat.S_ISSOCK(image.stat(image.lookup("/dev/sock")).mode)
    link = image.stat(image.lookup("/link"))
    assert link.is_symlink and link.size == 10 and link.mode == stat.S_IFLNK | 0o777
    assert link.flags == RafsV5InodeFlags.SYMLINK | RafsV5InodeFlags.XATTR
    assert image.readlink(link.ino) == b"etc/passwd"
    big = image.stat(image.lookup("/data/big"))
    assert big.blocks == (len(_PATTERN) + 511) // 512
    assert image.stat(image.lookup("/names/" + "n" * 255)).size == 4


@pytest.mark.judges
def test_repeatable_build_has_no_owners(build: Builder) -> None:
    image = build("--repeatable").open()
    assert not image.explicit_uid_gid
    assert all((st.uid, st.gid) == (0, 0) for _, st in image.walk())


@pytest.mark.judges
def test_hardlinks_share_one_inode(build: Builder) -> None:
    image = build().open()
    links = ["/bin/sh", "/bin/sh-again", "/etc/hostname-link"]
    inos = {image.lookup(path) for path in links}
    assert len(inos) == 1
    # every link keeps its own record, named and parented where it lives
    indexes = [_record_index(image, path) for path in links]
    assert len(set(indexes)) == 3 and inos < set(indexes)
    records = [image.inode(index) for index in indexes]
    assert {r.i_ino for r in records} == inos
    assert [image.name_of(index) for index in indexes] == [b"sh", b"sh-again", b"hostname-link"]
    assert records[2].i_parent == image.lookup("/etc")
    # two of the table's records are extra links; nydus-image 2.2 also leaves the root out
    assert image.superblock.s_inodes_count == image.superblock.s_inode_table_entries - 3


@pytest.mark.judges
def test_xattrs(build: Builder) -> None:
    image = build().open()
    assert image.xattrs(image.lookup("/etc/passwd")) == {
        b"user.a": b"1",
        b"security.selinux": b"x" * 100,
        b"trusted.empty": b"",
    }
    assert image.xattrs(image.lookup("/link")) == {b"trusted.l": b"v"}
    assert image.xattrs(image.root_ino) == {b"user.root": b"r"}
    assert image.xattrs(image.lookup("/bin/sh")) == {}
    assert image.has_xattr


@pytest.mark.judges
def test_file_chunks_in_file_order_and_deduplicated(build: Builder) -> None:
    image = build().open()
    big = image.file_chunks(image.lookup("/data/big"))
    assert [(c.file_offset, c.uncompressed_size) for c in big] == [
        (0, CHUNK),
        (CHUNK, CHUNK),
        (2 * CHUNK, CHUNK),
        (3 * CHUNK, 123),
    ]
    dup = image.file_chunks(image.lookup("/data/dup"))
    assert [c.file_offset for c in dup] == [0, CHUNK, 2 * CHUNK]
    assert {(c.block_id, c.compressed_offset, c.index) for c in dup} == {
        (big[0].block_id, big[0].compressed_offset, big[0].index)
    }
    assert image.file_chunks(image.lookup("/data/empty")) == []
    digest = digest_function(image.blob_digester)
    assert all(
        c.block_id == digest(_PATTERN[c.file_offset : c.file_offset + c.uncompressed_size])
        for c in big
    )
    distinct = {
        (c.block_id, c.uncompressed_size)
        for path in _expected_files()
        for c in image.file_chunks(image.lookup(path))
    }
    assert image.blobs[0].chunk_count == len(distinct) == 14


@pytest.mark.judges
def test_file_with_a_hole_reads_it_as_zeros(build: Builder) -> None:
    built = build()
    data, content = _with_hole(built, "/data/zeros", 1)
    image = RafsV5Image(data, "holed")
    ino = image.lookup("/data/zeros")
    assert image.inode(ino).has_hole
    assert [c.file_offset for c in image.file_chunks(ino)] == [0, 2 * CHUNK, 3 * CHUNK]
    assert image.read_file(ino, built.folder) == content == FILES["/data/zeros"]
    big, big_content = _with_hole(built, "/data/big", 2)
    image = RafsV5Image(big, "holed")
    ino = image.lookup("/data/big")
    assert image.read_file(ino, built.folder) == big_content != _PATTERN
    assert image.read_file(ino, built.folder, 2 * CHUNK - 2, CHUNK + 4) == (
        big_content[2 * CHUNK - 2 : 3 * CHUNK + 2])  # fmt: skip


@pytest.mark.judges
def test_huge_holes_are_read_in_ranges_only(build: Builder) -> None:
    built = build()
    data, _ = _with_hole(built, "/data/zeros", 1)
    image = RafsV5Image(data, "holed")
    ino = image.lookup("/data/zeros")
    huge = _patched_inode(data, image, ino, i_size=1 << 40)
    image = RafsV5Image(huge, "huge")
    with pytest.raises(InvalidArgument, match="holes"):
        image.read_file(ino, built.folder)
    assert image.read_file(ino, built.folder, (1 << 40) - 5) == bytes(5)
    assert image.read_file(ino, built.folder, 0, 3) == b"aaa"


@pytest.mark.judges
def test_inode_digests_are_those_of_the_builder(build: Builder) -> None:
    for digester in ("blake3", "sha256"):
        image = build("--digester", digester).open()
        assert all(image.digest_matches(st.ino) for _, st in image.walk()), digester
    root = image.inode(image.root_ino)
    digest = digest_function(Digester.SHA256)
    first, count = root.i_child_index, root.i_child_count
    assert root.i_digest == digest(
        b"".join(image.inode(i).i_digest for i in range(first, first + count))
    )


@pytest.mark.judges
def test_layout_of_the_v5_builder(build: Builder) -> None:
    built = build()
    image = built.open()
    sb = image.superblock
    data = built.bootstrap
    assert sb.s_inode_table_offset == RAFSV5_SUPERBLOCK_SIZE
    paths = [path for path, _ in image.walk()]
    indexes = {path: _record_index(image, path.decode()) for path in paths if path != b"/"}
    indexes[b"/"] = 1
    assert sorted(indexes.values()) == list(range(1, sb.s_inode_table_entries + 1))
    # the inode table holds offset >> 3 of each index's own record, 8-aligned
    offsets = {}
    for path, index in indexes.items():
        (value,) = struct.unpack_from("<I", data, RAFSV5_SUPERBLOCK_SIZE + 4 * (index - 1))
        offsets[path] = value << 3
    # a directory's children are consecutive from i_child_index, after it, sorted by name
    for index in indexes.values():
        inode = image.inode(index)
        if inode.is_dir:
            children = range(inode.i_child_index, inode.i_child_index + inode.i_child_count)
            names = [image.name_of(i) for i in children]
            assert names == sorted(names)
            assert inode.i_child_index > index
        else:
            assert inode.i_child_index == 0
    # indexes directory by directory: the root's 7 children, then /bin's
    root_children = [indexes[b"/" + name] for name in
                     (b"bin", b"data", b"dev", b"empty", b"etc", b"link", b"names")]  # fmt: skip
    assert root_children == [2, 3, 4, 5, 6, 7, 8]
    assert indexes[b"/bin/sh"] == 9
    # records in index order (as nydus-image 2.2 writes them), right after the tables
    by_offset = sorted(offsets, key=offsets.__getitem__)
    assert by_offset == sorted(indexes, key=indexes.__getitem__)
    ext_end = sb.s_extended_blob_table_offset + 64 * sb.s_extended_blob_table_entries
    assert offsets[b"/"] == ext_end
    assert len(data) % 8 == 0
    assert sb.s_blob_table_size % 8 == 0
    assert data[sb.s_blob_table_offset + 8 : sb.s_blob_table_offset + 72] == built.blob_id.encode()


@pytest.mark.judges
def test_prefetch_table(build: Builder) -> None:
    image = build(prefetch=("/etc", "/bin/sh")).open()
    assert image.prefetch_inos() == [image.lookup("/etc"), image.lookup("/bin/sh")]
    assert build().open().prefetch_inos() == []


@pytest.mark.judges
def test_lookup_errors(build: Builder) -> None:
    built = build()
    image = built.open()
    assert image.lookup("/") == image.lookup(b"") == 1
    assert image.lookup("//bin/./sh") == image.lookup("/bin/sh")
    with pytest.raises(NotFound):
        image.lookup("/nope")
    with pytest.raises(NotFound):
        image.lookup("/bin/sh/x")
    with pytest.raises(FormatError):
        image.readlink(image.lookup("/bin/sh"))
    with pytest.raises(FormatError):
        image.children(image.lookup("/bin/sh"))
    with pytest.raises(InvalidArgument):
        image.read_file(image.lookup("/bin"), built.folder)


@pytest.mark.judges
def test_missing_and_corrupt_blob(build: Builder, tmp_path: Path) -> None:
    built = build("--compressor", "none").copy(tmp_path / "image")
    image = built.open()
    ino = image.lookup("/data/big")
    first = image.file_chunks(ino)[0]
    with pytest.raises(NotFound):
        image.read_file(ino, tmp_path / "elsewhere")
    blob = built.blob
    corrupt = bytearray(blob)
    corrupt[first.compressed_offset + 100] ^= 1
    (built.folder / built.blob_id).write_bytes(bytes(corrupt))
    with pytest.raises(IntegrityError):
        image.read_file(ino, built.folder)
    (built.folder / built.blob_id).write_bytes(blob[: first.compressed_offset + 50])
    with pytest.raises(FormatError):
        image.read_file(ino, built.folder)
    # blobs may also sit under sha256/
    (built.folder / built.blob_id).unlink()
    (built.folder / "sha256").mkdir()
    (built.folder / "sha256" / built.blob_id).write_bytes(blob)
    assert image.read_file(ino, built.folder) == _PATTERN


@pytest.mark.judges
def test_tree_without_data_has_no_blob(tmp_path_factory: pytest.TempPathFactory) -> None:
    source = tmp_path_factory.mktemp("no-data") / "tree"
    (source / "a").mkdir(parents=True)
    os.symlink("x", source / "a" / "b")
    (source / "e").touch()
    built = _builder(source, tmp_path_factory)()
    image = built.open()
    assert image.blobs == [] and built.blob_id == "" and image.superblock.s_blob_table_size == 0
    assert [p for p, _ in image.walk()] == [b"/", b"/a", b"/a/b", b"/e"]


# -- detection -----------------------------------------------------------------------------


@pytest.mark.judges
def test_detected_by_magic_and_version(build: Builder) -> None:
    data = build().bootstrap
    assert data[:8] == b"SFAR\x00\x05\x00\x00"
    assert is_rafs_v5(data)
    assert is_rafs_v5(b"SFAR\x00\x04\x00\x00")
    assert not is_rafs_v5(b"SFAR\x00\x06\x00\x00")
    assert not is_rafs_v5(bytes(1024) + b"\xe2\xe1\xf5\xe0")
    superblock = RafsV5SuperBlock.unpack(data)
    v4 = replace(superblock, s_fs_version=0x400).pack() + data[RAFSV5_SUPERBLOCK_SIZE:]
    assert RafsV5Image(v4, "v4").superblock.s_fs_version == 0x400
    with pytest.raises(FormatError, match="not a RAFS v5"):
        RafsV5Image(b"SFAR\x00\x06\x00\x00" + data[8:], "v6?")


# -- corrupt input -------------------------------------------------------------------------


def _make_small_tree(root: Path) -> None:
    """Every v5 entry kind in a few bytes: the corruption sweep's source."""
    _write(root, "/d/f", b"hello world" * 50)
    os.link(root / "d/f", root / "d/h")
    os.setxattr(root / "d", b"user.x", b"yz")
    _write(root, "/d/zeros", bytes(CHUNK) + b"tail")
    (root / "e").mkdir()
    os.symlink("d/f", root / "l")
    os.setxattr(_write(root, "/z", bytes(range(256)) * 20), b"trusted.t", b"1")
    os.mknod(root / "c", stat.S_IFCHR | 0o644, os.makedev(5, 1))


def _exercise(data: bytes, blob_dir: Path, budget: int | None = None, what: str = "") -> int:
    """Every read call on every reachable inode; only RafsError may escape. Returns the
    Python lines that took; past `budget` of them the test fails, naming `what` was read."""
    with counting_lines(budget, what) as lines:
        try:
            image = RafsV5Image(data, "fuzz")
            image.prefetch_inos()
            for _, st in image.walk():
                image.xattrs(st.ino)
                image.digest_matches(st.ino)
                if st.is_dir:
                    image.children(st.ino)
                if st.is_symlink:
                    image.readlink(st.ino)
                if st.is_reg:
                    image.file_chunks(st.ino)
                    image.read_file(st.ino, blob_dir)
            for ino in range(1, image.max_ino + 2):
                image.inode(ino)
        except RafsError:
            pass
    return lines.count


@pytest.fixture(scope="module")
def fuzz_image(tmp_path_factory: pytest.TempPathFactory) -> tuple[bytes, Path]:
    source = tmp_path_factory.mktemp("v5-small") / "tree"
    _make_small_tree(source)
    built = _builder(source, tmp_path_factory)("--compressor", "lz4_block", prefetch=("/d",))
    return built.bootstrap, built.folder


@pytest.fixture(scope="module")
def corrupt_budget(fuzz_image: tuple[bytes, Path]) -> int:
    """The Python lines reading a corrupt image may take: ten times the sound image's."""
    return 10 * _exercise(*fuzz_image)


@pytest.mark.judges
def test_truncations_give_format_errors(fuzz_image: tuple[bytes, Path]) -> None:
    data, blob_dir = fuzz_image
    for size in [0, 4, 8, 79, 80, 8191, 8192, 8193, *range(8200, len(data), 8)]:
        with pytest.raises(FormatError):
            image = RafsV5Image(data[:size], "cut")
            for _, st in image.walk():
                if st.is_reg:
                    image.read_file(st.ino, blob_dir)
                image.xattrs(st.ino)


@pytest.mark.judges
def test_bit_flips_give_only_rafs_errors(fuzz_image: tuple[bytes, Path], corrupt_budget: int
                                        ) -> None:  # fmt: skip
    data, blob_dir = fuzz_image
    positions = [*range(80), *range(RAFSV5_SUPERBLOCK_SIZE, len(data))]
    for position in positions:
        for bit in (position % 8, 7 - position % 8) if position < 80 else (position % 8,):
            corrupt = bytearray(data)
            corrupt[position] ^= 1 << bit
            _exercise(bytes(corrupt), blob_dir, corrupt_budget, f"bit {bit} of byte {position}")


@pytest.mark.judges
def test_random_field_values_give_only_rafs_errors(fuzz_image: tuple[bytes, Path],
                                                   corrupt_budget: int) -> None:  # fmt: skip
    data, blob_dir = fuzz_image
    rng = random.Random(5)
    for _ in range(400):
        corrupt = bytearray(data)
        position = rng.randrange(RAFSV5_SUPERBLOCK_SIZE - 80, len(data) - 4)
        position = position if position >= RAFSV5_SUPERBLOCK_SIZE else position % 80
        width = rng.choice((1, 2, 4, 8))
        value = rng.choice((b"\xff" * width, bytes(width), rng.randbytes(width)))
        corrupt[position : position + width] = value
        _exercise(bytes(corrupt), blob_dir, corrupt_budget, f"{value.hex()} at byte {position}")


@pytest.mark.judges
def test_specific_corruptions_are_named(fuzz_image: tuple[bytes, Path]) -> None:
    data, _ = fuzz_image
    image = RafsV5Image(data, "ok")
    sb = image.superblock

    def with_sb(**fields: int) -> bytes:
        return replace(sb, **fields).pack() + data[RAFSV5_SUPERBLOCK_SIZE:]  # type: ignore[arg-type]

    cases = {
        "chunk size": with_sb(s_block_size=12345),
        "superblock size": with_sb(s_sb_size=4096),
        "unknown superblock flags": with_sb(s_flags=sb.s_flags | 0x8000),
        "inode table": with_sb(s_inode_table_entries=1 << 30),
        "blob table": with_sb(s_blob_table_offset=sb.s_inode_table_offset),
        "extended blob table": with_sb(s_extended_blob_table_offset=4),
        "prefetch table": with_sb(s_prefetch_table_entries=1 << 28),
    }
    for what, corrupt in cases.items():
        with pytest.raises(FormatError, match=what):
            RafsV5Image(corrupt, "bad")
    d = image.lookup("/d")
    e = image.lookup("/e")
    d_inode = image.inode(d)
    # /e claims /d's children, whose records name /d as their parent
    stolen = _patched_inode(
        data, image, e, i_child_index=d_inode.i_child_index, i_child_count=d_inode.i_child_count
    )
    with pytest.raises(FormatError, match="as its parent"):
        list(RafsV5Image(stolen, "bad").walk())
    # /e's record says it is inode /d: the directory would be entered twice
    twice = _patched_inode(data, image, e, i_ino=d)
    with pytest.raises(FormatError, match="reached twice"):
        list(RafsV5Image(twice, "bad").walk())
    backwards = _patched_inode(data, image, d, i_child_index=1)
    with pytest.raises(FormatError, match="outside the inode table"):
        RafsV5Image(backwards, "bad").children(d)
    orphan = _patched_inode(data, image, d, i_parent=0)
    with pytest.raises(FormatError, match="no parent"):
        RafsV5Image(orphan, "bad").stat(d)
    f = image.lookup("/d/f")
    gap = _patched_inode(data, image, f, i_size=image.stat(f).size + 1)
    with pytest.raises(FormatError, match="cover"):
        RafsV5Image(gap, "bad").read_file(f, Path("/nonexistent"))


def test_blob_id_must_stay_in_the_blob_folder() -> None:
    for bad in ("../x", "a/b", ".", ".."):
        with pytest.raises(FormatError):
            RafsV5BlobEntry(0, 0, bad).validate()
    table = pack_blob_table([RafsV5BlobEntry(0, 0, "x" * 64)])
    assert len(table) == 72
    RafsV5BlobEntry(0, 0, "x" * 64).validate()


# -- records -------------------------------------------------------------------------------


def test_records_have_their_on_disk_sizes() -> None:
    assert RafsV5SuperBlock.SIZE == 8192
    assert RafsV5Inode.SIZE == 128
    assert RafsV5InodeTableEntry.SIZE == 4
    assert RafsV5ExtBlobEntry.SIZE == 64
    assert RafsV5XattrTable.SIZE == 8
    assert ChunkInfo.SIZE == 80


def test_records_round_trip() -> None:
    records = [
        RafsV5SuperBlock(
            s_flags=0x9,
            s_inodes_count=3,
            s_inode_table_entries=4,
            s_blob_table_offset=8208,
            s_blob_table_size=72,
            s_extended_blob_table_entries=1,
            s_extended_blob_table_offset=8280,
            s_prefetch_table_offset=8200,
            s_prefetch_table_entries=1,
            s_reserved=b"\x01" * 8112,
        ),
        RafsV5Inode(
            bytes(range(32)),
            1,
            2,
            3,
            4,
            5,
            0o100644,
            2**40,
            7,
            0xF,
            2,
            0,
            3,
            9,
            0,
            encode_rdev(8, 1),
            999,
            2**33,
            b"reserved",
        ),
        RafsV5InodeTableEntry(0x1234),
        RafsV5ExtBlobEntry(23, 0x4000_0000, 1 << 33, 1 << 32, b"\x02" * 40),
        RafsV5XattrTable(77),
        ChunkInfo(b"\xaa" * 32, 1, 0x11, 10, 20, 30, 40, 50, 60, 70),
    ]
    for record in records:
        raw = record.pack()
        assert len(raw) == record.SIZE
        assert type(record).unpack(b"pad" + raw, 3) == record
        with pytest.raises(FormatError):
            type(record).unpack(raw[:-1])
    entry = RafsV5BlobEntry(5, 6, "abc")
    assert RafsV5BlobEntry.unpack(entry.pack() + b"\0rest") == (entry, 12)
    assert RafsV5InodeTableEntry.of_offset(8200).offset == 8200


def test_tables_round_trip() -> None:
    entries = [
        RafsV5BlobEntry(1, 2, "a" * 64),
        RafsV5BlobEntry(3, 4, "b" * 10),
        RafsV5BlobEntry(0, 0, "c"),
    ]
    table = pack_blob_table(entries)
    assert len(table) % 8 == 0 and table.count(b"\0", 8) >= 2
    assert unpack_blob_table(table) == entries
    assert unpack_blob_table(b"") == []
    pairs = [(b"security.selinux", b"ctx"), (b"user.empty", b""), (b"user.\xff", b"\0\1")]
    packed = pack_xattrs(pairs)
    header = RafsV5XattrTable.unpack(packed)
    assert len(packed) == 8 + header.aligned_size
    assert unpack_xattrs(packed[8 : 8 + header.size]) == dict(pairs)
    assert pack_xattrs([]) == b""
    for bad in (b"\x01", b"\x09\0\0\0abc", b"\x02\0\0\0\0v", b"\x01\0\0\0a\x01\0\0\0a"):
        with pytest.raises(FormatError):
            unpack_xattrs(bad)
    assert unpack_prefetch_table(pack_prefetch_table([5, 9, 3])) == [5, 9, 3]
    assert len(pack_prefetch_table([1])) == 8
    table = pack_inode_table([8200, 8328, 9000])
    assert len(table) == 16
    assert struct.unpack_from("<3I", table) == (8200 >> 3, 8328 >> 3, 9000 >> 3)
    with pytest.raises(FormatError):
        pack_inode_table([8192])


def test_superblock_validation() -> None:
    good = RafsV5SuperBlock(s_flags=RafsSuperFlags.HASH_BLAKE3 | RafsSuperFlags.COMPRESSION_ZSTD)
    good.validate()
    assert good.compressor == Compressor.ZSTD and good.digester == Digester.BLAKE3
    # nydus's precedence and defaults when flags name several or no algorithms
    assert RafsV5SuperBlock(s_flags=0).compressor == Compressor.LZ4_BLOCK
    assert RafsV5SuperBlock(s_flags=0).digester == Digester.BLAKE3
    assert RafsV5SuperBlock(s_flags=0x3).compressor == Compressor.NONE
    replace(good, s_flags=good.s_flags | 0x8000_0000).validate()  # reserved compat bit
    for bad in (
        dict(s_magic=1),
        dict(s_fs_version=0x600),
        dict(s_block_size=0x800),
        dict(s_block_size=32 << 20),
        dict(s_flags=0x400),
    ):
        with pytest.raises(FormatError):
            replace(good, **bad).validate()  # type: ignore[arg-type]
    with pytest.raises(FormatError):
        good.validate_layout(8192)


# -- the command line ----------------------------------------------------------------------


@pytest.mark.judges
def test_cli_lists_stats_and_reads_v5(rafs: RafsRunner, build: Builder) -> None:
    built = build()
    boot = str(built.folder / "image.boot")
    listing = rafs("ls", boot, "-R").stdout.decode().splitlines()
    assert set(listing) == {*_expected_files(), *OTHERS}
    long = rafs("ls", boot, "/bin", "-l").stdout.decode()
    assert "-rwsr-xr-x   3" in long  # setuid, three names
    for path, data in _expected_files().items():
        assert rafs("cat", boot, path).stdout == data, path
    info = json.loads(rafs("inspect", boot, "--json").stdout)
    assert info["version"] == 5
    assert info["blobs"][0]["id"] == built.blob_id
    unsupported = rafs("check", boot, check=False)
    assert unsupported.returncode == Unsupported.exit_code
