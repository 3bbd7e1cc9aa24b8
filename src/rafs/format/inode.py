"""EROFS inodes as RAFS v6 writes them, and the chunk index of chunk-based files.

An inode lives at `meta_blkaddr * block_size + nid * 32`. Bit 0 of `i_format` selects the
compact (32-byte) or extended (64-byte) form; bits 1..3 the data layout. The inode body
that follows holds inline xattrs, then either the inline tail of a directory or symlink,
or (8-byte aligned) the chunk index array of a regular file.
"""

from __future__ import annotations

import enum
import stat
import struct
from dataclasses import dataclass

from rafs.errors import FormatError
from rafs.format.record import Record

EROFS_INODE_SLOT_SIZE = 32
EROFS_INODE_LAYOUT_COMPACT = 0  # i_format bit 0 clear: 32-byte inode
EROFS_INODE_LAYOUT_EXTENDED = 1  # i_format bit 0 set: 64-byte inode
EROFS_I_DATALAYOUT_BIT = 1
EROFS_I_DATALAYOUT_MASK = 0x7


class DataLayout(enum.IntEnum):
    """How an inode's data is stored (`EROFS_INODE_*` data layouts)."""

    FLAT_PLAIN = 0  # data in whole blocks starting at i_u
    FLAT_COMPRESSION_LEGACY = 1  # EROFS compression; never used by RAFS
    FLAT_INLINE = 2  # whole blocks at i_u plus a tail right after the inode
    FLAT_COMPRESSION = 3  # EROFS compression; never used by RAFS
    CHUNK_BASED = 4  # chunk index array after the inode


def make_i_format(extended: bool, layout: DataLayout) -> int:
    """`i_format` value for an inode form and data layout."""
    return (EROFS_INODE_LAYOUT_EXTENDED if extended else 0) | (layout << EROFS_I_DATALAYOUT_BIT)


def i_format_is_extended(i_format: int) -> bool:
    return bool(i_format & 1)


def i_format_layout(i_format: int) -> int:
    return (i_format >> EROFS_I_DATALAYOUT_BIT) & EROFS_I_DATALAYOUT_MASK


# i_u of a chunk-based inode: low 16 bits are the chunk format.
EROFS_CHUNK_FORMAT_BLKBITS_MASK = 0x001F  # log2(chunk size) - block size bits
EROFS_CHUNK_FORMAT_INDEXES = 0x0020  # 8-byte chunk indexes (not 4-byte block maps)
EROFS_CHUNK_FORMAT_48BIT = 0x0040  # startblk_hi is valid (never written by nydus)

# EROFS directory entry file types.
EROFS_FT_UNKNOWN = 0
EROFS_FT_REG_FILE = 1
EROFS_FT_DIR = 2
EROFS_FT_CHRDEV = 3
EROFS_FT_BLKDEV = 4
EROFS_FT_FIFO = 5
EROFS_FT_SOCK = 6
EROFS_FT_SYMLINK = 7

_FILE_TYPES = {
    stat.S_IFREG: EROFS_FT_REG_FILE,
    stat.S_IFDIR: EROFS_FT_DIR,
    stat.S_IFCHR: EROFS_FT_CHRDEV,
    stat.S_IFBLK: EROFS_FT_BLKDEV,
    stat.S_IFIFO: EROFS_FT_FIFO,
    stat.S_IFSOCK: EROFS_FT_SOCK,
    stat.S_IFLNK: EROFS_FT_SYMLINK,
}


class ModeKind:
    """Mixin for anything with an `st_mode`-style `mode`: which kind of file it is."""

    __slots__ = ()
    mode: int

    @property
    def is_dir(self) -> bool:
        return stat.S_ISDIR(self.mode)

    @property
    def is_reg(self) -> bool:
        return stat.S_ISREG(self.mode)

    @property
    def is_symlink(self) -> bool:
        return stat.S_ISLNK(self.mode)


def file_type_of_mode(mode: int) -> int:
    """The dirent file type for a `st_mode`."""
    return _FILE_TYPES.get(stat.S_IFMT(mode), EROFS_FT_UNKNOWN)


def encode_rdev(major: int, minor: int) -> int:
    """Linux `new_encode_dev`: the 32-bit device number EROFS stores in `i_u`."""
    return ((minor & 0xFF) | (major << 8) | ((minor & ~0xFF) << 12)) & 0xFFFF_FFFF


def decode_rdev(rdev: int) -> tuple[int, int]:
    """Inverse of `encode_rdev`: (major, minor)."""
    major = (rdev & 0xFFF00) >> 8
    minor = (rdev & 0xFF) | ((rdev >> 12) & 0xFFF00)
    return major, minor


@dataclass(frozen=True, slots=True)
class InodeCompact(Record):
    """`erofs_inode_compact`: 32 bytes, no mtime (the superblock build time applies)."""

    STRUCT = struct.Struct("<HHHHIIIIHH4s")

    i_format: int
    i_xattr_icount: int
    i_mode: int
    i_nlink: int
    i_size: int
    i_reserved: int
    i_u: int
    i_ino: int
    i_uid: int
    i_gid: int
    i_reserved2: bytes = bytes(4)


@dataclass(frozen=True, slots=True)
class InodeExtended(Record):
    """`erofs_inode_extended`: 64 bytes; what nydus writes for every inode."""

    STRUCT = struct.Struct("<HHHHQIIIIQII16s")

    i_format: int
    i_xattr_icount: int
    i_mode: int
    i_reserved: int
    i_size: int
    i_u: int
    i_ino: int
    i_uid: int
    i_gid: int
    i_mtime: int
    i_mtime_nsec: int
    i_nlink: int
    i_reserved2: bytes = bytes(16)


def validate_inode(inode: InodeCompact | InodeExtended) -> None:
    """Reject inodes whose layout or type a RAFS v6 reader cannot interpret."""
    layout = i_format_layout(inode.i_format)
    if inode.i_format & ~0x0F:
        raise FormatError(f"inode format {inode.i_format:#x} has unknown bits")
    if layout not in (DataLayout.FLAT_PLAIN, DataLayout.FLAT_INLINE, DataLayout.CHUNK_BASED):
        raise FormatError(f"unsupported inode data layout {layout}")
    if file_type_of_mode(inode.i_mode) == EROFS_FT_UNKNOWN:
        raise FormatError(f"inode mode {inode.i_mode:#o} has no file type")
    if layout == DataLayout.CHUNK_BASED and not stat.S_ISREG(inode.i_mode):
        raise FormatError("chunk-based layout on a non-regular inode")
    if layout == DataLayout.CHUNK_BASED:
        chunk_format = inode.i_u & 0xFFFF
        if not chunk_format & EROFS_CHUNK_FORMAT_INDEXES:
            raise FormatError(f"chunk format {chunk_format:#x} lacks chunk indexes")
        if chunk_format & ~(EROFS_CHUNK_FORMAT_INDEXES | EROFS_CHUNK_FORMAT_BLKBITS_MASK):
            raise FormatError(f"unsupported chunk format {chunk_format:#x}")


def unpack_inode(buf: bytes | memoryview, offset: int) -> InodeCompact | InodeExtended:
    """Decode the inode at `offset`, compact or extended by its `i_format`."""
    if len(buf) < offset + 2:
        raise FormatError(f"inode at offset {offset} is past the end of the bootstrap")
    (i_format,) = struct.unpack_from("<H", buf, offset)
    if i_format_is_extended(i_format):
        return InodeExtended.unpack(buf, offset)
    return InodeCompact.unpack(buf, offset)


@dataclass(frozen=True, slots=True)
class ChunkAddr(Record):
    """One chunk index entry (`RafsV6InodeChunkAddr` = `erofs_inode_chunk_index`), 8 bytes.

    The device id (low byte of `c_blob_addr_hi`) is blob index + 1; the CI index of the chunk
    within its blob is split over `c_blob_addr_lo` and the high byte of `c_blob_addr_hi`;
    `c_blk_addr` is the chunk's uncompressed offset in its blob divided by the block size.
    """

    STRUCT = struct.Struct("<HHI")

    c_blob_addr_lo: int
    c_blob_addr_hi: int
    c_blk_addr: int

    @classmethod
    def make(cls, blob_index: int, ci_index: int, blkaddr: int) -> ChunkAddr:
        if not 0 <= blob_index < 255:
            raise FormatError(f"blob index {blob_index} out of range")
        if not 0 <= ci_index <= 0xFF_FFFF:
            raise FormatError(f"chunk index {ci_index} out of range")
        return cls(ci_index & 0xFFFF, ((ci_index >> 16) << 8) | (blob_index + 1), blkaddr)

    @property
    def device_id(self) -> int:
        return self.c_blob_addr_hi & 0xFF

    @property
    def blob_index(self) -> int:
        return self.device_id - 1

    @property
    def ci_index(self) -> int:
        return ((self.c_blob_addr_hi >> 8) << 16) | self.c_blob_addr_lo

    def validate(self) -> None:
        if self.device_id == 0:
            raise FormatError("chunk index points at device 0 (the bootstrap itself)")


def pack_chunk_addrs(addrs: list[tuple[int, int, int]]) -> bytes:
    """Many `ChunkAddr`s, from (blob index, CI index, block address), packed at once.

    The builder guarantees the ranges `ChunkAddr.make` checks (fewer than 255 blobs, CI
    indexes below 2^24), so this is the fast path for writing whole chunk index arrays.
    """
    return struct.pack(
        f"<{len(addrs)}Q",
        *(
            (ci & 0xFFFF) | (((ci >> 16) << 8 | (blob + 1)) << 16) | (blkaddr << 32)
            for blob, ci, blkaddr in addrs
        ),
    )
