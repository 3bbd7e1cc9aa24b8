"""The EROFS superblock and the RAFS v6 extended superblock.

A RAFS v6 bootstrap is an EROFS image. Its first 1024 bytes are zero; the 128-byte EROFS
superblock sits at 1024 (0x400), the 256-byte RAFS extension right after it at 1152
(0x480), and the device table at slot offset 11 (1408, 0x580).
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass

from rafs.errors import FormatError
from rafs.format.record import Record

EROFS_SUPER_OFFSET = 1024
EROFS_SUPER_MAGIC_V1 = 0xE0F5E1E2
RAFS_EXT_SUPER_OFFSET = EROFS_SUPER_OFFSET + 128
# Device slots are addressed in 128-byte units; nydus always puts the table at slot 11.
DEVICE_SLOT_SIZE = 128
RAFS_DEVT_SLOTOFF = (RAFS_EXT_SUPER_OFFSET + 256) // DEVICE_SLOT_SIZE

EROFS_BLKSZBITS = 12  # 4 KiB blocks; 9 (512 B) only in TARFS mode
EROFS_BLOCK_SIZE = 1 << EROFS_BLKSZBITS
ROOT_NID = 128  # first inode at pre-shift offset 4096 / 32-byte slots

# s_feature_compat
EROFS_FEATURE_COMPAT_SB_CHKSUM = 0x0000_0001  # superblock crc32c present (nydus never)
EROFS_FEATURE_COMPAT_MTIME = 0x0000_0002  # compact inodes carry mtime (erofs-utils)
EROFS_FEATURE_COMPAT_RAFS_V6 = 0x4000_0000  # image is a RAFS v6 bootstrap
# s_feature_incompat
EROFS_FEATURE_INCOMPAT_CHUNKED_FILE = 0x0000_0004  # regular files may use chunk indexes
EROFS_FEATURE_INCOMPAT_DEVICE_TABLE = 0x0000_0008  # extra devices listed in a device table
RAFS_V6_INCOMPAT = EROFS_FEATURE_INCOMPAT_CHUNKED_FILE | EROFS_FEATURE_INCOMPAT_DEVICE_TABLE


class RafsSuperFlags(enum.IntFlag):
    """`s_flags` of the extended superblock (nydus `RafsSuperFlags`)."""

    COMPRESSION_NONE = 0x0000_0001  # chunks stored raw
    COMPRESSION_LZ4 = 0x0000_0002  # chunks are raw LZ4 blocks
    HASH_BLAKE3 = 0x0000_0004  # chunk digests are BLAKE3
    HASH_SHA256 = 0x0000_0008  # chunk digests are SHA-256
    EXPLICIT_UID_GID = 0x0000_0010  # uid/gid recorded (not --repeatable)
    HAS_XATTR = 0x0000_0020  # some inode carries xattrs
    COMPRESSION_GZIP = 0x0000_0040  # gzip chunks (ref conversions)
    COMPRESSION_ZSTD = 0x0000_0080  # chunks are zstd frames
    INLINED_CHUNK_DIGEST = 0x0000_0100  # every blob carries its chunk-digest array
    TARTFS_MODE = 0x0000_0200  # data blob is the original tar (512-byte blocks)
    ENCRYPTION_NONE = 0x0100_0000  # no encryption (written since nydus v2.3)
    ENCRYPTION_ASE_128_XTS = 0x0200_0000  # chunks encrypted with AES-128-XTS


COMPRESSION_FLAGS = (
    RafsSuperFlags.COMPRESSION_NONE
    | RafsSuperFlags.COMPRESSION_LZ4
    | RafsSuperFlags.COMPRESSION_GZIP
    | RafsSuperFlags.COMPRESSION_ZSTD
)
HASH_FLAGS = RafsSuperFlags.HASH_BLAKE3 | RafsSuperFlags.HASH_SHA256
_KNOWN_FLAGS = 0
for _flag in RafsSuperFlags:
    _KNOWN_FLAGS |= _flag


@dataclass(frozen=True, slots=True)
class SuperBlock(Record):
    """EROFS on-disk superblock (`erofs_super_block`, `RafsV6SuperBlock`), 128 bytes."""

    STRUCT = struct.Struct("<IIIBBHQQIIII16s16sIHHH38s")

    s_magic: int = EROFS_SUPER_MAGIC_V1
    s_checksum: int = 0
    s_feature_compat: int = EROFS_FEATURE_COMPAT_RAFS_V6
    s_blkszbits: int = EROFS_BLKSZBITS
    s_extslots: int = 0
    s_root_nid: int = ROOT_NID
    s_inos: int = 0
    s_build_time: int = 0
    s_build_time_nsec: int = 0
    s_blocks: int = 0
    s_meta_blkaddr: int = 0
    s_xattr_blkaddr: int = 0
    s_uuid: bytes = bytes(16)
    s_volume_name: bytes = bytes(16)
    s_feature_incompat: int = RAFS_V6_INCOMPAT
    s_u: int = 0
    s_extra_devices: int = 0
    s_devt_slotoff: int = RAFS_DEVT_SLOTOFF
    s_reserved: bytes = bytes(38)

    @property
    def block_size(self) -> int:
        return 1 << self.s_blkszbits

    def validate(self) -> None:
        """The checks nydus applies (`RafsV6SuperBlock::validate`), minus the file size."""
        if self.s_magic != EROFS_SUPER_MAGIC_V1:
            raise FormatError(f"bad EROFS magic {self.s_magic:#x}")
        if self.s_checksum != 0:
            raise FormatError("superblock checksum is set; RAFS v6 never sets it")
        if self.s_blkszbits not in (9, 12):
            raise FormatError(f"unsupported block size bits {self.s_blkszbits}")
        if self.s_extslots != 0:
            raise FormatError("superblock extension slots are not supported")
        if self.s_inos == 0:
            raise FormatError("superblock says the image has no inodes")
        if self.s_xattr_blkaddr != 0:
            raise FormatError("shared xattr area is not supported by RAFS v6")
        if not self.s_feature_compat & EROFS_FEATURE_COMPAT_RAFS_V6:
            raise FormatError("EROFS image is not a RAFS v6 bootstrap (compat bit missing)")
        if self.s_feature_incompat != RAFS_V6_INCOMPAT:
            raise FormatError(f"unexpected incompatible features {self.s_feature_incompat:#x}")
        if self.s_devt_slotoff != RAFS_DEVT_SLOTOFF:
            raise FormatError(f"device table at slot {self.s_devt_slotoff}, expected 11")


@dataclass(frozen=True, slots=True)
class SuperBlockExt(Record):
    """RAFS v6 extended superblock (`RafsV6SuperBlockExt`), 256 bytes at 0x480."""

    STRUCT = struct.Struct("<QQIIQQQII200s")

    s_flags: int = 0
    s_blob_table_offset: int = 0
    s_blob_table_size: int = 0
    s_chunk_size: int = 0
    s_chunk_table_offset: int = 0
    s_chunk_table_size: int = 0
    s_prefetch_table_offset: int = 0
    s_prefetch_table_size: int = 0
    s_padding: int = 0
    s_reserved: bytes = bytes(200)

    @property
    def flags(self) -> RafsSuperFlags:
        return RafsSuperFlags(self.s_flags & _KNOWN_FLAGS)

    def validate(self) -> None:
        if self.s_flags & ~_KNOWN_FLAGS:
            raise FormatError(f"unknown superblock flags {self.s_flags & ~_KNOWN_FLAGS:#x}")
        if bin(self.s_flags & COMPRESSION_FLAGS).count("1") != 1:
            raise FormatError("superblock flags must name exactly one compressor")
        if bin(self.s_flags & HASH_FLAGS).count("1") != 1:
            raise FormatError("superblock flags must name exactly one digester")
        size = self.s_chunk_size
        if size < 0x1000 or size > 0x100_0000 or size & (size - 1):
            raise FormatError(f"invalid chunk size {size:#x}")
        if self.s_blob_table_size % 256:
            raise FormatError(f"blob table size {self.s_blob_table_size} is not 256 * N")
        if self.s_chunk_table_size % 80:
            raise FormatError(f"chunk table size {self.s_chunk_table_size} is not 80 * N")
        if self.s_prefetch_table_size % 4:
            raise FormatError(f"prefetch table size {self.s_prefetch_table_size} is not 4 * N")
