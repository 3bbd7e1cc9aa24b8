"""RAFS v5 on-disk records: the older, nydus-only bootstrap format (read side).

A v5 bootstrap is a flat file whose every structure starts on an 8-byte boundary:

    offset 0      superblock, 8192 bytes (magic "SFAR" = 0x52414653, version 0x500; 0x400
                  is the compatible v4)
    8192          inode table: one u32 per inode *index* (1-based), the inode's byte offset
                  shifted right by 3; zero padded to 8 bytes
                  prefetch table: u32 inode numbers, zero padded to 8 (optional)
                  blob table: `{prefetch_offset u32, prefetch_size u32, blob id}` per blob,
                  consecutive entries separated by one NUL, zero padded to 8
                  extended blob table: 64 bytes per blob (chunk count, features, sizes)
    then          inodes: each a 128-byte `RafsV5Inode`, its name (padded to 8), its symlink
                  target (padded to 8), an xattr table when it has the XATTR flag (`u64 size`
                  then pairs `{u32 len, name NUL value}`, padded to 8), and for a regular
                  file `i_child_count` 80-byte chunk infos (`ChunkInfo`, shared with v6).

The builder numbers inodes directory by directory: the root is index 1; when a directory is
laid out its children take the next consecutive indexes (`i_child_index`, `i_child_count`,
sorted by name), then each child directory is laid out in turn. A hard link keeps its own
index (its own record, name and parent) but carries the `i_ino` of the first link, so the
inode table maps an inode number to the record of the link that owns it. Regular files
reuse `i_child_count` as their chunk count. `i_digest` hashes the chunk digests (regular
files), the children's digests (directories), the target (symlinks) or nothing.

Sources: nydus `rafs/src/metadata/layout/v5.rs`, `direct_v5.rs`, `layout/mod.rs` and the
writer `builder/src/core/v5.rs`, `bootstrap.rs`.
"""

from __future__ import annotations

import enum
import stat
import struct
from dataclasses import dataclass

from rafs.errors import FormatError
from rafs.format.blobtable import Compressor, Digester
from rafs.format.record import Record, align_up
from rafs.format.superblock import RafsSuperFlags

RAFSV5_SUPER_MAGIC = 0x5241_4653  # b"SFAR" little-endian
RAFS_SUPER_VERSION_V4 = 0x400
RAFS_SUPER_VERSION_V5 = 0x500
RAFSV5_SUPERBLOCK_SIZE = 8192
RAFSV5_ALIGNMENT = 8
RAFSV5_ROOT_INODE = 1
RAFSV5_INODE_SIZE = 128
RAFSV5_EXT_BLOB_ENTRY_SIZE = 64
RAFS_MAX_NAME = 255
RAFS_MAX_CHUNK_SIZE = 16 << 20
RAFS_MAX_METADATA_SIZE = 0x8000_0000
# nydus rejects inode table entries at or above this (offset >> 3 must fit in 29 bits).
MAX_INODE_TABLE_VALUE = 1 << 29

# `RafsSuperFlags` bits nydus reserves for future compatible features; accepted on read.
PRESERVED_COMPAT_FLAGS = 0xFC00_0000
_KNOWN_SUPER_FLAGS = PRESERVED_COMPAT_FLAGS
for _flag in RafsSuperFlags:
    _KNOWN_SUPER_FLAGS |= _flag

V5_MAGIC_BYTES = struct.pack("<II", RAFSV5_SUPER_MAGIC, RAFS_SUPER_VERSION_V5)
V4_MAGIC_BYTES = struct.pack("<II", RAFSV5_SUPER_MAGIC, RAFS_SUPER_VERSION_V4)


def rafsv5_align(size: int) -> int:
    """Round up to the v5 alignment of 8 bytes."""
    return align_up(size, RAFSV5_ALIGNMENT)


def is_rafs_v5(head: bytes) -> bool:
    """Whether the first 8 bytes of a file are a v5 (or v4) superblock's magic and version."""
    return head[:8] in (V5_MAGIC_BYTES, V4_MAGIC_BYTES)


class RafsV5InodeFlags(enum.IntFlag):
    """`RafsInodeFlags` stored in `i_flags`."""

    SYMLINK = 0x1  # set by the tar builders on symlinks (informational)
    HARDLINK = 0x2  # set by the tar builders on both ends of a tar hard link
    XATTR = 0x4  # an xattr table follows the name and symlink target
    HAS_HOLE = 0x8  # chunks do not cover the whole file; gaps read as zeros


def compressor_of_flags(flags: int) -> Compressor:
    """The chunk compressor named by superblock flags, with nydus's precedence and default."""
    for bit, algo in (
        (RafsSuperFlags.COMPRESSION_NONE, Compressor.NONE),
        (RafsSuperFlags.COMPRESSION_LZ4, Compressor.LZ4_BLOCK),
        (RafsSuperFlags.COMPRESSION_GZIP, Compressor.GZIP),
        (RafsSuperFlags.COMPRESSION_ZSTD, Compressor.ZSTD),
    ):
        if flags & bit:
            return algo
    return Compressor.LZ4_BLOCK


def digester_of_flags(flags: int) -> Digester:
    """The chunk digester named by superblock flags (BLAKE3 when none is set, as nydus)."""
    if flags & RafsSuperFlags.HASH_BLAKE3:
        return Digester.BLAKE3
    if flags & RafsSuperFlags.HASH_SHA256:
        return Digester.SHA256
    return Digester.BLAKE3


def _range_ok(start: int, size: int, lo: int, hi: int, size_aligned: bool) -> bool:
    """nydus `MetaRange`: 8-aligned start (and size), and [start, start+size) within [lo, hi)."""
    if start % RAFSV5_ALIGNMENT or (size_aligned and size % RAFSV5_ALIGNMENT):
        return False
    return lo <= start and start + size <= hi


def _intersect(a: tuple[int, int], b: tuple[int, int]) -> bool:
    return a[0] < b[0] + b[1] and a[0] + a[1] > b[0]


@dataclass(frozen=True, slots=True)
class RafsV5SuperBlock(Record):
    """`RafsV5SuperBlock`, 8192 bytes at offset 0 (80 bytes of fields, then zeros)."""

    STRUCT = struct.Struct("<IIIIQQQQQIIIIQ8112s")

    s_magic: int = RAFSV5_SUPER_MAGIC
    s_fs_version: int = RAFS_SUPER_VERSION_V5
    s_sb_size: int = RAFSV5_SUPERBLOCK_SIZE
    s_block_size: int = 1 << 20  # the chunk size
    s_flags: int = 0
    s_inodes_count: int = 0  # unique inodes (a hard-linked inode counts once)
    s_inode_table_offset: int = RAFSV5_SUPERBLOCK_SIZE
    s_prefetch_table_offset: int = 0
    s_blob_table_offset: int = 0
    s_inode_table_entries: int = 0  # inode indexes, one u32 each
    s_prefetch_table_entries: int = 0
    s_blob_table_size: int = 0  # bytes, padding included
    s_extended_blob_table_entries: int = 0
    s_extended_blob_table_offset: int = 0
    s_reserved: bytes = bytes(8112)

    @property
    def chunk_size(self) -> int:
        return self.s_block_size

    @property
    def flags(self) -> RafsSuperFlags:
        return RafsSuperFlags(self.s_flags & ~PRESERVED_COMPAT_FLAGS & _KNOWN_SUPER_FLAGS)

    @property
    def compressor(self) -> Compressor:
        return compressor_of_flags(self.s_flags)

    @property
    def digester(self) -> Digester:
        return digester_of_flags(self.s_flags)

    def validate(self) -> None:
        """Field checks of `RafsV5SuperBlock::validate` that need no file size."""
        if self.s_magic != RAFSV5_SUPER_MAGIC:
            raise FormatError(f"bad RAFS v5 magic {self.s_magic:#x}")
        if self.s_fs_version not in (RAFS_SUPER_VERSION_V5, RAFS_SUPER_VERSION_V4):
            raise FormatError(f"unsupported RAFS version {self.s_fs_version:#x}")
        if self.s_sb_size != RAFSV5_SUPERBLOCK_SIZE:
            raise FormatError(f"superblock size {self.s_sb_size}, expected 8192")
        size = self.s_block_size
        if size < 0x1000 or size > RAFS_MAX_CHUNK_SIZE or size & (size - 1):
            raise FormatError(f"invalid chunk size {size:#x}")
        if self.s_flags & ~_KNOWN_SUPER_FLAGS:
            raise FormatError(f"unknown superblock flags {self.s_flags & ~_KNOWN_SUPER_FLAGS:#x}")

    def validate_layout(self, meta_size: int) -> None:
        """Table placement checks against a bootstrap of `meta_size` bytes (nydus rules)."""
        lo, hi = RAFSV5_SUPERBLOCK_SIZE, meta_size
        if meta_size <= RAFSV5_SUPERBLOCK_SIZE or meta_size % RAFSV5_ALIGNMENT:
            raise FormatError(f"bootstrap of {meta_size} bytes is not a RAFS v5 size")
        inode_table = (self.s_inode_table_offset, self.s_inode_table_entries * 4)
        if self.s_inodes_count > self.s_inode_table_entries or not _range_ok(
            *inode_table, lo, hi, False
        ):
            raise FormatError("invalid inode table count, offset or entries")
        if self.s_inode_table_entries == 0:
            raise FormatError("inode table is empty")
        blob_table = (self.s_blob_table_offset, self.s_blob_table_size)
        if not _range_ok(*blob_table, lo, hi, False) or _intersect(blob_table, inode_table):
            raise FormatError("invalid blob table offset or size")
        ext_table = (
            self.s_extended_blob_table_offset,
            self.s_extended_blob_table_entries * RAFSV5_EXT_BLOB_ENTRY_SIZE,
        )
        if ext_table[1] and (
            not _range_ok(*ext_table, lo, hi, True)
            or _intersect(ext_table, inode_table)
            or _intersect(ext_table, blob_table)
        ):
            raise FormatError("invalid extended blob table offset or size")
        prefetch = (self.s_prefetch_table_offset, self.s_prefetch_table_entries * 4)
        if prefetch[1] and (
            not _range_ok(*prefetch, lo, hi, False)
            or _intersect(prefetch, inode_table)
            or _intersect(prefetch, blob_table)
            or (ext_table[1] and _intersect(prefetch, ext_table))
        ):
            raise FormatError("invalid prefetch table offset or size")


@dataclass(frozen=True, slots=True)
class RafsV5InodeTableEntry(Record):
    """One u32 of the inode table: the inode record's offset from the bootstrap start >> 3."""

    STRUCT = struct.Struct("<I")

    offset_shr3: int

    @classmethod
    def of_offset(cls, offset: int) -> RafsV5InodeTableEntry:
        if offset % RAFSV5_ALIGNMENT or offset <= RAFSV5_SUPERBLOCK_SIZE:
            raise FormatError(f"invalid inode offset {offset:#x}")
        return cls(offset >> 3)

    @property
    def offset(self) -> int:
        return self.offset_shr3 << 3

    def validate(self) -> None:
        if not RAFSV5_SUPERBLOCK_SIZE >> 3 < self.offset_shr3 < MAX_INODE_TABLE_VALUE:
            raise FormatError(f"invalid inode table value {self.offset_shr3:#x}")


def pack_inode_table(offsets: list[int]) -> bytes:
    """The inode table for inode records at `offsets` (index 1 first), padded to 8."""
    raw = b"".join(RafsV5InodeTableEntry.of_offset(offset).pack() for offset in offsets)
    return raw.ljust(rafsv5_align(len(raw)), b"\0")


def pack_prefetch_table(inos: list[int]) -> bytes:
    """u32 inode numbers, zero padded to 8 (a zero entry ends the list on read)."""
    raw = b"".join(struct.pack("<I", ino) for ino in inos)
    return raw.ljust(rafsv5_align(len(raw)), b"\0")


def unpack_prefetch_table(buf: bytes | memoryview) -> list[int]:
    inos = []
    for (ino,) in struct.iter_unpack("<I", bytes(buf[: len(buf) // 4 * 4])):
        if ino == 0:
            break
        inos.append(ino)
    return inos


@dataclass(frozen=True, slots=True)
class RafsV5BlobEntry:
    """One blob table entry: `{prefetch_offset u32, prefetch_size u32, blob id}`.

    Variable length: the id runs to the next NUL (the separator) or to the table's end.
    """

    HEAD = struct.Struct("<II")

    prefetch_offset: int
    prefetch_size: int
    blob_id: str

    @classmethod
    def unpack(cls, buf: bytes | memoryview, offset: int = 0) -> tuple[RafsV5BlobEntry, int]:
        """The entry at `offset` and the offset after it (and after its NUL separator)."""
        raw = bytes(buf)
        if offset < 0 or len(raw) - offset < cls.HEAD.size:
            raise FormatError(f"blob table entry at {offset} is truncated")
        prefetch_offset, prefetch_size = cls.HEAD.unpack_from(raw, offset)
        start = offset + cls.HEAD.size
        end = raw.find(b"\0", start)
        end = len(raw) if end < 0 else end
        try:
            blob_id = raw[start:end].decode()
        except UnicodeDecodeError:
            raise FormatError(f"blob table entry at {offset}: id is not UTF-8") from None
        return cls(prefetch_offset, prefetch_size, blob_id), min(end + 1, len(raw))

    def pack(self) -> bytes:
        """The entry without its separator."""
        return self.HEAD.pack(self.prefetch_offset, self.prefetch_size) + self.blob_id.encode()

    def validate(self) -> None:
        if not self.blob_id:
            raise FormatError("blob table entry has an empty blob id")
        # The id names a file in the blob folder: it must not be able to leave it.
        if not self.blob_id.isprintable() or "/" in self.blob_id or self.blob_id in (".", ".."):
            raise FormatError(f"blob id {self.blob_id!r} is not a valid file name")


def pack_blob_table(entries: list[RafsV5BlobEntry]) -> bytes:
    """Entries joined by NUL, padded to 8 (empty for no blobs)."""
    raw = b"\0".join(entry.pack() for entry in entries)
    return raw.ljust(rafsv5_align(len(raw)), b"\0")


def unpack_blob_table(buf: bytes | memoryview) -> list[RafsV5BlobEntry]:
    """Parse a blob table as nydus does: entries while more than 8 bytes remain."""
    entries = []
    pos = 0
    while len(buf) - pos > RafsV5BlobEntry.HEAD.size:
        entry, pos = RafsV5BlobEntry.unpack(buf, pos)
        entries.append(entry)
    return entries


@dataclass(frozen=True, slots=True)
class RafsV5ExtBlobEntry(Record):
    """`RafsV5ExtBlobEntry`, 64 bytes: what the blob table entry lacks."""

    STRUCT = struct.Struct("<IIQQ40s")

    chunk_count: int = 0
    features: int = 0  # `BlobFeatures`
    uncompressed_size: int = 0
    compressed_size: int = 0
    reserved2: bytes = bytes(40)


@dataclass(frozen=True, slots=True)
class RafsV5Inode(Record):
    """`RafsV5Inode`, 128 bytes, followed by its name, symlink target, xattrs and chunks."""

    STRUCT = struct.Struct("<32sQQIIIIQQQIIIHHIIQ8s")

    i_digest: bytes
    i_parent: int  # parent's inode number; 0 for the root
    i_ino: int  # inode number (= index, or the first link's index for hard links)
    i_uid: int
    i_gid: int
    i_projid: int
    i_mode: int
    i_size: int
    i_blocks: int  # 512-byte blocks of size plus aligned xattr size
    i_flags: int  # RafsV5InodeFlags
    i_nlink: int
    i_child_index: int  # directories: index of the first child
    i_child_count: int  # directories: children; regular files: chunk infos
    i_name_size: int
    i_symlink_size: int
    i_rdev: int  # Linux `new_encode_dev` value for devices
    i_mtime_nsec: int
    i_mtime: int
    i_reserved: bytes = bytes(8)

    @property
    def is_dir(self) -> bool:
        return stat.S_ISDIR(self.i_mode)

    @property
    def is_reg(self) -> bool:
        return stat.S_ISREG(self.i_mode)

    @property
    def is_symlink(self) -> bool:
        return stat.S_ISLNK(self.i_mode)

    @property
    def is_hardlink(self) -> bool:
        """nydus's test: a regular file with more than one link."""
        return self.is_reg and self.i_nlink > 1

    @property
    def has_xattr(self) -> bool:
        return bool(self.i_flags & RafsV5InodeFlags.XATTR)

    @property
    def has_hole(self) -> bool:
        return bool(self.i_flags & RafsV5InodeFlags.HAS_HOLE)

    @property
    def record_size(self) -> int:
        """Bytes of the inode plus its padded name and symlink target."""
        return (
            RAFSV5_INODE_SIZE + rafsv5_align(self.i_name_size) + rafsv5_align(self.i_symlink_size)
        )

    def validate(self) -> None:
        """Checks needing no other record (nydus `OndiskInodeWrapper::validate`, part)."""
        if stat.S_IFMT(self.i_mode) not in (
            stat.S_IFREG, stat.S_IFDIR, stat.S_IFLNK, stat.S_IFCHR, stat.S_IFBLK,
            stat.S_IFIFO, stat.S_IFSOCK,
        ):  # fmt: skip
            raise FormatError(f"inode {self.i_ino}: mode {self.i_mode:#o} has no file type")
        if self.i_mode > 0xFFFF:
            raise FormatError(f"inode {self.i_ino}: mode {self.i_mode:#o} is too large")
        if self.i_ino == 0:
            raise FormatError("inode number 0")
        if self.i_ino != RAFSV5_ROOT_INODE and self.i_parent == 0:
            raise FormatError(f"inode {self.i_ino} has no parent")
        if self.i_nlink == 0:
            raise FormatError(f"inode {self.i_ino} has no links")
        if self.i_name_size == 0 or self.i_name_size > RAFS_MAX_NAME + 1:
            raise FormatError(f"inode {self.i_ino}: bad name size {self.i_name_size}")
        if not self.is_hardlink and self.i_parent >= self.i_ino:
            raise FormatError(f"inode {self.i_ino}: parent {self.i_parent} is not before it")
        if self.is_symlink and self.i_symlink_size == 0:
            raise FormatError(f"inode {self.i_ino}: symlink without a target")


@dataclass(frozen=True, slots=True)
class RafsV5XattrTable(Record):
    """`RafsV5XAttrsTable`: the u64 byte size of the xattr pairs that follow it."""

    STRUCT = struct.Struct("<Q")

    size: int

    @property
    def aligned_size(self) -> int:
        return rafsv5_align(self.size)


XATTR_PAIR_SIZE = struct.Struct("<I")
# Namespaces nydus accepts when building (`RAFS_XATTR_PREFIXES`); not enforced on read.
RAFS_XATTR_PREFIXES = (
    b"user.", b"security.", b"trusted.", b"system.posix_acl_access", b"system.posix_acl_default",
)  # fmt: skip


def pack_xattrs(pairs: list[tuple[bytes, bytes]]) -> bytes:
    """The whole xattr area of an inode: header, pairs, padding to 8; empty without pairs."""
    if not pairs:
        return b""
    body = b"".join(
        XATTR_PAIR_SIZE.pack(len(name) + 1 + len(value)) + name + b"\0" + value
        for name, value in pairs
    )
    out = RafsV5XattrTable(len(body)).pack() + body
    return out.ljust(rafsv5_align(len(out)), b"\0")


def unpack_xattrs(body: bytes | memoryview) -> dict[bytes, bytes]:
    """Decode the pairs (the bytes after the size header, exactly `size` of them)."""
    raw = bytes(body)
    result: dict[bytes, bytes] = {}
    pos = 0
    while pos < len(raw):
        if len(raw) - pos < XATTR_PAIR_SIZE.size:
            raise FormatError("xattr table ends inside a pair size")
        (pair_size,) = XATTR_PAIR_SIZE.unpack_from(raw, pos)
        pos += XATTR_PAIR_SIZE.size
        if pair_size > len(raw) - pos:
            raise FormatError(f"xattr pair of {pair_size} bytes runs past the table")
        pair = raw[pos : pos + pair_size]
        pos += pair_size
        sep = pair.find(b"\0")
        if sep <= 0:
            raise FormatError("xattr pair has no name")
        name = pair[:sep]
        if name in result:
            raise FormatError(f"xattr {name!r} appears twice")
        result[name] = pair[sep + 1 :]
    return result
