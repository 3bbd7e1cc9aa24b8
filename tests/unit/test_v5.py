"""RAFS v5: records round-trip, the reader reads what the v5 writer lays out, and corrupt or
truncated bootstraps give a FormatError (never another exception, never a hang).

The bootstraps come from `tests.support.v5_writer`, written from the nydus builder; with its
2022 layout it reproduces nydus's own v5 test images byte for byte.
"""

from __future__ import annotations

import json
import os
import random
import stat
import struct
import time
from dataclasses import replace
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
from rafs.reader.v5 import RafsV5Image, V5Stat
from tests.conftest import RafsRunner
from tests.support.v5_writer import (
    SMALL_TREE,
    Description,
    Dir,
    File,
    Hardlink,
    Special,
    Symlink,
    V5Image,
    write_v5,
)

CHUNK = 4096
_RANDOM = bytes((i * 7919 + (i >> 5) * 31) % 251 for i in range(3 * CHUNK + 123))

TREE: Description = {
    "/": Dir(mode=0o755, uid=1, gid=2, xattrs={b"user.root": b"r"}),
    "/bin": Dir(mode=0o700, uid=10, gid=20, mtime=1_600_000_000, mtime_nsec=1),
    "/bin/sh": File(
        data=b"#!/bin/sh\necho hi\n", mode=0o4755, mtime=1_700_000_001, mtime_nsec=999_999_999
    ),
    "/bin/sh-again": Hardlink("/bin/sh"),
    "/empty": Dir(),
    "/etc/passwd": File(
        data=b"root:x:0:0:root:/root:/bin/sh\n",
        uid=1000,
        gid=1001,
        xattrs={b"user.a": b"1", b"security.selinux": b"x" * 100, b"trusted.empty": b""},
    ),
    "/etc/hostname-link": Hardlink("/bin/sh"),
    "/data/big": File(data=_RANDOM),
    "/data/dup": File(data=_RANDOM[:CHUNK] * 3),
    "/data/empty": File(data=b""),
    "/data/sparse": File(data=b"a" * CHUNK + bytes(2 * CHUNK) + b"z" * 10, holes=True),
    "/dev/null": Special(kind=stat.S_IFCHR, rdev=(1, 3), mode=0o666),
    "/dev/big": Special(kind=stat.S_IFCHR, rdev=(240, 70000), mode=0o600),
    "/dev/loop": Special(kind=stat.S_IFBLK, rdev=(7, 200), mode=0o660),
    "/dev/fifo": Special(kind=stat.S_IFIFO),
    "/dev/sock": Special(kind=stat.S_IFSOCK),
    "/link": Symlink(target=b"etc/passwd", xattrs={b"trusted.l": b"v"}),
    "/names/" + "n" * 255: File(data=b"long"),
    "/names/a": File(data=b"1"),
    "/names/abcdefgh": File(data=b"8"),
    "/names/abcdefghi": File(data=b"9"),
    "/names/\xe9t\xe9": File(data=b"utf8"),
}


def _expected_files() -> dict[str, bytes]:
    files = {}
    for path, entry in TREE.items():
        target = TREE[entry.target] if isinstance(entry, Hardlink) else entry
        if isinstance(target, File):
            files[path] = target.data
    return files


def _open(tmp_path: Path, **options: object) -> tuple[V5Image, RafsV5Image]:
    built = write_v5(TREE, chunk_size=CHUNK, **options)  # type: ignore[arg-type]
    built.save(tmp_path)
    return built, RafsV5Image(built.bootstrap, "test.boot")


# -- reading what the writer made ----------------------------------------------------------


@pytest.mark.parametrize("compressor", [Compressor.NONE, Compressor.LZ4_BLOCK, Compressor.ZSTD])
@pytest.mark.parametrize("digester", [Digester.BLAKE3, Digester.SHA256])
def test_reader_reads_every_file(
    tmp_path: Path, compressor: Compressor, digester: Digester
) -> None:
    built, image = _open(tmp_path, compressor=compressor, digester=digester)
    assert image.blob_compressor == compressor
    assert image.blob_digester == digester
    assert image.blob_ids == [built.blob_id]
    for path, data in _expected_files().items():
        ino = image.lookup(path)
        assert image.read_file(ino, tmp_path) == data, path
        assert image.read_file(ino, tmp_path, 5, 4100) == data[5:4105], path
        assert image.read_file(ino, tmp_path, len(data) + 1) == b""
    chunk_flags = {
        c.flags for path in _expected_files() for c in image.file_chunks(image.lookup(path))
    }
    if compressor == Compressor.NONE:
        assert chunk_flags == {0}
    else:  # the random chunk does not shrink, the repeated text does
        assert chunk_flags == {0, ChunkFlags.COMPRESSED}


def test_walk_lists_every_path_in_name_order(tmp_path: Path) -> None:
    _, image = _open(tmp_path)
    paths = [path.decode(errors="surrogateescape") for path, _ in image.walk()]
    expected = set(TREE) | {"/etc", "/data", "/dev", "/names"}
    assert sorted(paths) == sorted(expected)
    # depth first, children by bytewise name
    assert paths[:5] == ["/", "/bin", "/bin/sh", "/bin/sh-again", "/data"]
    root_names = [e.name for e in image.children(image.root_ino)]
    assert root_names == sorted(root_names)
    assert root_names == [b"bin", b"data", b"dev", b"empty", b"etc", b"link", b"names"]


def test_stat_fields(tmp_path: Path) -> None:
    built, image = _open(tmp_path)
    sh = image.stat(image.lookup("/bin/sh"))
    assert sh == V5Stat(
        ino=built.inos["/bin/sh"],
        mode=stat.S_IFREG | 0o4755,
        uid=0,
        gid=0,
        size=18,
        mtime=1_700_000_001,
        mtime_nsec=999_999_999,
        nlink=3,
        rdev=(0, 0),
        blocks=1,
        flags=0,
        offset=built.offsets["/bin/sh"],
    )
    passwd = image.stat(image.lookup("/etc/passwd"))
    assert (passwd.uid, passwd.gid, passwd.nlink, passwd.size) == (1000, 1001, 1, 30)
    assert passwd.flags == RafsV5InodeFlags.XATTR
    assert (passwd.mtime, passwd.mtime_nsec) == (1_700_000_000, 123_456_789)
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
    assert big.blocks == (len(_RANDOM) + 511) // 512
    assert image.stat(image.lookup("/names/" + "n" * 255)).size == 4


def test_explicit_uid_gid_off_writes_zero_owners(tmp_path: Path) -> None:
    _, image = _open(tmp_path, explicit_uidgid=False)
    assert not image.explicit_uid_gid
    assert all((st.uid, st.gid) == (0, 0) for _, st in image.walk())


def test_hardlinks_share_the_first_links_inode(tmp_path: Path) -> None:
    built, image = _open(tmp_path)
    links = ["/bin/sh", "/bin/sh-again", "/etc/hostname-link"]
    inos = {image.lookup(path) for path in links}
    assert inos == {built.indexes["/bin/sh"]}
    # every link keeps its own record, named and parented where it lives
    records = [image.inode(built.indexes[path]) for path in links]
    assert {r.i_ino for r in records} == inos
    assert [image.name_of(built.indexes[p]) for p in links] == [
        b"sh",
        b"sh-again",
        b"hostname-link",
    ]
    assert records[2].i_parent == image.lookup("/etc")
    assert image.superblock.s_inodes_count == image.superblock.s_inode_table_entries - 2


def test_xattrs(tmp_path: Path) -> None:
    _, image = _open(tmp_path)
    assert image.xattrs(image.lookup("/etc/passwd")) == {
        b"user.a": b"1",
        b"security.selinux": b"x" * 100,
        b"trusted.empty": b"",
    }
    assert image.xattrs(image.lookup("/link")) == {b"trusted.l": b"v"}
    assert image.xattrs(image.root_ino) == {b"user.root": b"r"}
    assert image.xattrs(image.lookup("/bin/sh")) == {}
    assert image.has_xattr


def test_file_chunks_in_file_order_and_deduplicated(tmp_path: Path) -> None:
    _, image = _open(tmp_path)
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
        c.block_id == digest(_RANDOM[c.file_offset : c.file_offset + c.uncompressed_size])
        for c in big
    )
    distinct = {
        (c.block_id, c.uncompressed_size)
        for path in _expected_files()
        for c in image.file_chunks(image.lookup(path))
    }
    assert image.blobs[0].chunk_count == len(distinct) == 13


def test_sparse_file_reads_holes_as_zeros(tmp_path: Path) -> None:
    _, image = _open(tmp_path)
    ino = image.lookup("/data/sparse")
    assert image.inode(ino).has_hole
    assert [c.file_offset for c in image.file_chunks(ino)] == [0, 3 * CHUNK]
    sparse = TREE["/data/sparse"]
    assert isinstance(sparse, File)
    data = sparse.data
    assert image.read_file(ino, tmp_path) == data
    assert image.read_file(ino, tmp_path, CHUNK - 2, CHUNK + 4) == data[CHUNK - 2 : 2 * CHUNK + 2]


def test_huge_holes_are_read_in_ranges_only(tmp_path: Path) -> None:
    built, image = _open(tmp_path)
    ino = image.lookup("/data/sparse")
    huge = _patched_inode(built.bootstrap, image, ino, i_size=1 << 40)
    image = RafsV5Image(huge, "huge")
    with pytest.raises(InvalidArgument, match="holes"):
        image.read_file(ino, tmp_path)
    assert image.read_file(ino, tmp_path, (1 << 40) - 5) == bytes(5)
    assert image.read_file(ino, tmp_path, 0, 3) == b"aaa"


def test_inode_digests_are_those_of_the_builder(tmp_path: Path) -> None:
    _, image = _open(tmp_path, digester=Digester.SHA256)
    for _, st in image.walk():
        assert image.digest_matches(st.ino)
    root = image.inode(image.root_ino)
    digest = digest_function(Digester.SHA256)
    first, count = root.i_child_index, root.i_child_count
    assert root.i_digest == digest(
        b"".join(image.inode(i).i_digest for i in range(first, first + count))
    )


def test_layout_follows_the_v5_builder(tmp_path: Path) -> None:
    built, image = _open(tmp_path)
    sb = image.superblock
    data = built.bootstrap
    assert sb.s_inode_table_offset == RAFSV5_SUPERBLOCK_SIZE
    assert sb.s_inode_table_entries == len(built.indexes)
    # the inode table holds offset >> 3 of each index's own record
    for path, index in built.indexes.items():
        (value,) = struct.unpack_from("<I", data, RAFSV5_SUPERBLOCK_SIZE + 4 * (index - 1))
        assert value << 3 == built.offsets[path]
    # indexes: the root is 1, a directory's children are consecutive from i_child_index
    assert built.indexes["/"] == 1
    for index in built.indexes.values():
        inode = image.inode(index)
        if inode.is_dir:
            names = [
                image.name_of(i)
                for i in range(inode.i_child_index, inode.i_child_index + inode.i_child_count)
            ]
            assert names == sorted(names)
            assert inode.i_child_index > index
        else:
            assert inode.i_child_index == 0
    assert [built.indexes[p] for p in ("/bin", "/data", "/dev", "/empty", "/etc")] == [
        2,
        3,
        4,
        5,
        6,
    ]
    assert built.indexes["/bin/sh"] == 9  # after the 7 children of /, once /bin is laid out
    # records: depth-first pre-order, each 8-aligned, right after the tables
    by_offset = sorted(built.offsets, key=built.offsets.__getitem__)
    assert by_offset[:4] == ["/", "/bin", "/bin/sh", "/bin/sh-again"]
    assert all(offset % 8 == 0 for offset in built.offsets.values())
    ext_end = sb.s_extended_blob_table_offset + 64 * sb.s_extended_blob_table_entries
    assert built.offsets["/"] == ext_end
    assert len(data) % 8 == 0
    assert sb.s_blob_table_size % 8 == 0
    assert data[sb.s_blob_table_offset + 8 : sb.s_blob_table_offset + 72] == built.blob_id.encode()


def test_2022_layout_writes_records_in_index_order(tmp_path: Path) -> None:
    built, image = _open(tmp_path, layout="2022")
    by_offset = sorted(built.offsets, key=built.offsets.__getitem__)
    assert by_offset == sorted(built.indexes, key=built.indexes.__getitem__)
    assert image.superblock.s_inodes_count == image.superblock.s_inode_table_entries - 3
    assert image.read_file(image.lookup("/data/big"), tmp_path) == _RANDOM


def test_prefetch_table(tmp_path: Path) -> None:
    built, image = _open(tmp_path, prefetch=["/etc", "/bin/sh"])
    assert image.prefetch_inos() == [built.inos["/etc"], built.inos["/bin/sh"]]
    _, plain = _open(tmp_path)
    assert plain.prefetch_inos() == []


def test_lookup_errors(tmp_path: Path) -> None:
    _, image = _open(tmp_path)
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
        image.read_file(image.lookup("/bin"), tmp_path)


def test_missing_and_corrupt_blob(tmp_path: Path) -> None:
    built, image = _open(tmp_path)
    ino = image.lookup("/data/big")
    with pytest.raises(NotFound):
        image.read_file(ino, tmp_path / "elsewhere")
    blob = bytearray(built.blob)
    blob[100] ^= 1
    (tmp_path / built.blob_id).write_bytes(bytes(blob))
    with pytest.raises(IntegrityError):
        image.read_file(ino, tmp_path)
    (tmp_path / built.blob_id).write_bytes(built.blob[:50])
    with pytest.raises(FormatError):
        image.read_file(ino, tmp_path)
    # blobs may also sit under sha256/
    (tmp_path / built.blob_id).unlink()
    (tmp_path / "sha256").mkdir()
    (tmp_path / "sha256" / built.blob_id).write_bytes(built.blob)
    assert image.read_file(ino, tmp_path) == _RANDOM


def test_tree_without_data_has_no_blob() -> None:
    built = write_v5({"/a": Dir(), "/a/b": Symlink(target=b"x"), "/e": File()})
    image = RafsV5Image(built.bootstrap, "x")
    assert image.blobs == [] and built.blob == b"" and image.superblock.s_blob_table_size == 0
    assert [p for p, _ in image.walk()] == [b"/", b"/a", b"/a/b", b"/e"]


# -- detection -----------------------------------------------------------------------------


def test_detected_by_magic_and_version(tmp_path: Path) -> None:
    built, _ = _open(tmp_path)
    assert built.bootstrap[:8] == b"SFAR\x00\x05\x00\x00"
    assert is_rafs_v5(built.bootstrap)
    assert is_rafs_v5(b"SFAR\x00\x04\x00\x00")
    assert not is_rafs_v5(b"SFAR\x00\x06\x00\x00")
    assert not is_rafs_v5(bytes(1024) + b"\xe2\xe1\xf5\xe0")
    v4 = write_v5(TREE, chunk_size=CHUNK, version=0x400)
    assert RafsV5Image(v4.bootstrap, "v4").superblock.s_fs_version == 0x400
    with pytest.raises(FormatError, match="not a RAFS v5"):
        RafsV5Image(b"SFAR\x00\x06\x00\x00" + built.bootstrap[8:], "v6?")


# -- corrupt input -------------------------------------------------------------------------



def _exercise(data: bytes, blob_dir: Path) -> None:
    """Every read call on every reachable inode; only RafsError may escape."""
    started = time.monotonic()
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
    assert time.monotonic() - started < 2


@pytest.fixture(scope="module")
def fuzz_image(tmp_path_factory: pytest.TempPathFactory) -> tuple[bytes, Path]:
    blob_dir = tmp_path_factory.mktemp("v5-fuzz")
    built = write_v5(SMALL_TREE, chunk_size=CHUNK, compressor=Compressor.LZ4_BLOCK, prefetch=["/d"])
    built.save(blob_dir)
    _exercise(built.bootstrap, blob_dir)
    return built.bootstrap, blob_dir


def test_truncations_give_format_errors(fuzz_image: tuple[bytes, Path]) -> None:
    data, blob_dir = fuzz_image
    for size in [0, 4, 8, 79, 80, 8191, 8192, 8193, *range(8200, len(data), 8)]:
        with pytest.raises(FormatError):
            image = RafsV5Image(data[:size], "cut")
            for _, st in image.walk():
                if st.is_reg:
                    image.read_file(st.ino, blob_dir)
                image.xattrs(st.ino)


def test_bit_flips_give_only_rafs_errors(fuzz_image: tuple[bytes, Path]) -> None:
    data, blob_dir = fuzz_image
    positions = [*range(80), *range(RAFSV5_SUPERBLOCK_SIZE, len(data))]
    for position in positions:
        for bit in (position % 8, 7 - position % 8) if position < 80 else (position % 8,):
            corrupt = bytearray(data)
            corrupt[position] ^= 1 << bit
            _exercise(bytes(corrupt), blob_dir)


def test_random_field_values_give_only_rafs_errors(fuzz_image: tuple[bytes, Path]) -> None:
    data, blob_dir = fuzz_image
    rng = random.Random(5)
    for _ in range(400):
        corrupt = bytearray(data)
        position = rng.randrange(RAFSV5_SUPERBLOCK_SIZE - 80, len(data) - 4)
        position = position if position >= RAFSV5_SUPERBLOCK_SIZE else position % 80
        width = rng.choice((1, 2, 4, 8))
        corrupt[position : position + width] = rng.choice(
            (b"\xff" * width, bytes(width), os.urandom(width))
        )
        _exercise(bytes(corrupt), blob_dir)


def _patched_inode(data: bytes, image: RafsV5Image, ino: int, **fields: int) -> bytes:
    offset = image.stat(ino).offset
    record = replace(image.inode(ino), **fields).pack()  # type: ignore[arg-type]
    return data[:offset] + record + data[offset + len(record) :]


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


def test_cli_lists_stats_and_reads_v5(rafs: RafsRunner, tmp_path: Path) -> None:
    built = write_v5(TREE, chunk_size=CHUNK, compressor=Compressor.ZSTD)
    boot = str(built.save(tmp_path))
    listing = rafs("ls", boot, "-R").stdout.decode().splitlines()
    assert set(listing) == {p.rstrip("/") or "/" for p in TREE} | {"/etc", "/data", "/dev",
                                                                    "/names"}  # fmt: skip
    long = rafs("ls", boot, "/bin", "-l").stdout.decode()
    assert "-rwsr-xr-x   3" in long  # setuid, three names
    for path, data in _expected_files().items():
        assert rafs("cat", boot, path).stdout == data, path
    info = json.loads(rafs("inspect", boot, "--json").stdout)
    assert info["version"] == 5
    assert info["blobs"][0]["id"] == built.blob_id
    unsupported = rafs("check", boot, check=False)
    assert unsupported.returncode == Unsupported.exit_code
