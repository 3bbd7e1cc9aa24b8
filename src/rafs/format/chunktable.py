"""The v6 chunk table and the prefetch table.

The chunk table (at `s_chunk_table_offset`) repeats, for every distinct chunk the image
uses, nydus's 80-byte `RafsV5ChunkInfo`: digest, blob index, flags, compressed and
uncompressed extents, the CI index and a CRC-32C. It is sorted by (digest, blob index).
The prefetch table is an array of u32 nids of files or directories to fetch first.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass

from rafs.errors import FormatError
from rafs.format.record import Record


class ChunkFlags(enum.IntFlag):
    """`BlobChunkFlags`."""

    COMPRESSED = 0x01  # stored bytes are compressed
    HOLE = 0x02  # a hole (never written)
    ENCRYPTED = 0x04  # stored bytes are encrypted
    BATCH = 0x08  # member of a batch chunk
    HAS_CRC32 = 0x10  # crc32 holds the CRC-32C of the uncompressed data


@dataclass(frozen=True, slots=True)
class ChunkInfo(Record):
    """`RafsV5ChunkInfo`, 80 bytes: one chunk table entry."""

    STRUCT = struct.Struct("<32sIIIIQQQII")

    block_id: bytes
    blob_index: int
    flags: int
    compressed_size: int
    uncompressed_size: int
    compressed_offset: int
    uncompressed_offset: int
    file_offset: int
    index: int
    crc32: int

    @property
    def compressed(self) -> bool:
        return bool(self.flags & ChunkFlags.COMPRESSED)

    def validate(self) -> None:
        if self.flags & ~0x1F:
            raise FormatError(f"chunk {self.block_id.hex()}: unknown flags {self.flags:#x}")
        if self.uncompressed_size == 0 or self.uncompressed_size > 0x100_0000:
            raise FormatError(
                f"chunk {self.block_id.hex()}: bad uncompressed size {self.uncompressed_size}"
            )
        if self.compressed_size == 0 and not self.flags & ChunkFlags.BATCH:
            raise FormatError(f"chunk {self.block_id.hex()}: zero compressed size")


PREFETCH_ENTRY = struct.Struct("<I")


def pack_prefetch_table(nids: list[int]) -> bytes:
    return b"".join(PREFETCH_ENTRY.pack(nid) for nid in nids)


def unpack_prefetch_table(buf: bytes | memoryview) -> list[int]:
    """Nids up to the first zero entry, which ends the list at run time."""
    nids = []
    for (nid,) in PREFETCH_ENTRY.iter_unpack(buf):
        if nid == 0:
            break
        nids.append(nid)
    return nids
