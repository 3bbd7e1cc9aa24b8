"""blob.meta: the compression-info (CI) table of a data blob and its 4096-byte header.

The CI table is indexed by a chunk's CI index and gives each chunk's compressed and
uncompressed extents in the blob. It is stored (maybe compressed) at `ci_offset`, followed
by the header. Native builds write 16-byte v1 entries; ref/ZRAN, batch and encrypted blobs
write 24-byte v2 entries, followed by a table of inflate/batch contexts.
The local cache file `<blob_id>.blob.meta` is the uncompressed CI data padded to 4 KiB,
then the header.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from rafs.errors import FormatError
from rafs.format.record import Record

BLOB_META_MAGIC = 0xB10BB10B
BLOB_META_HEADER_SIZE = 4096

# v2 chunk-info flags (bits 56..63 of uncomp_info).
CI_V2_COMPRESSED = 0x01  # chunk is compressed
CI_V2_ZRAN = 0x02  # chunk is inflated from a gzip stream through a ZRAN context
CI_V2_BATCH = 0x04  # chunk is a member of a batch
CI_V2_ENCRYPTED = 0x08  # chunk is encrypted
CI_V2_HAS_CRC32 = 0x10  # `data` holds the chunk's CRC-32C


@dataclass(frozen=True, slots=True)
class BlobMetaHeader(Record):
    """`BlobCompressionContextHeader`, 4096 bytes, plaintext even for encrypted blobs."""

    STRUCT = struct.Struct("<IIIIQQQQQI4032sI")

    s_magic: int
    s_features: int
    s_ci_compressor: int
    s_ci_entries: int
    s_ci_offset: int
    s_ci_compressed_size: int
    s_ci_uncompressed_size: int
    s_ci_zran_offset: int
    s_ci_zran_size: int
    s_ci_zran_count: int
    s_reserved: bytes
    s_magic2: int

    @classmethod
    def make(
        cls,
        features: int,
        ci_compressor: int,
        entries: int,
        ci_offset: int,
        ci_compressed_size: int,
        ci_uncompressed_size: int,
    ) -> BlobMetaHeader:
        return cls(
            BLOB_META_MAGIC, features, ci_compressor, entries, ci_offset,
            ci_compressed_size, ci_uncompressed_size, 0, 0, 0, bytes(4032), BLOB_META_MAGIC,
        )  # fmt: skip

    def validate(self) -> None:
        if self.s_magic != BLOB_META_MAGIC or self.s_magic2 != BLOB_META_MAGIC:
            raise FormatError("blob.meta header has bad magic")
        if self.s_ci_compressed_size > self.s_ci_uncompressed_size:
            raise FormatError("blob.meta header: compressed CI larger than uncompressed")


@dataclass(frozen=True, slots=True)
class ChunkInfoV1(Record):
    """`BlobChunkInfoV1Ondisk`, 16 bytes.

    uncomp_info: bits 8..11 (size-1)>>20, bits 12..43 offset (4 KiB aligned, in place),
    bits 44..63 (size-1) & 0xFFFFF. comp_info: bits 0..39 offset, 40..43 (size-1)>>20,
    44..63 (size-1) & 0xFFFFF. Sizes are 1..16 MiB.
    """

    STRUCT = struct.Struct("<QQ")

    uncomp_info: int
    comp_info: int

    @classmethod
    def make(cls, coff: int, csize: int, uoff: int, usize: int) -> ChunkInfoV1:
        if uoff & 0xFFF or not 0 < usize <= 1 << 24 or not 0 < csize <= 1 << 24:
            raise FormatError(f"chunk extents u {uoff}+{usize} c {coff}+{csize} not encodable")
        u, c = usize - 1, csize - 1
        uncomp = ((u >> 20) << 8) | (uoff & 0xFFF_FFFF_F000) | ((u & 0xFFFFF) << 44)
        comp = (coff & 0xFF_FFFF_FFFF) | ((c >> 20) << 40) | ((c & 0xFFFFF) << 44)
        return cls(uncomp, comp)

    @property
    def uncompressed_offset(self) -> int:
        return self.uncomp_info & 0xFFF_FFFF_F000

    @property
    def uncompressed_size(self) -> int:
        return (((self.uncomp_info >> 8) & 0xF) << 20 | (self.uncomp_info >> 44)) + 1

    @property
    def compressed_offset(self) -> int:
        return self.comp_info & 0xFF_FFFF_FFFF

    @property
    def compressed_size(self) -> int:
        return (((self.comp_info >> 40) & 0xF) << 20 | (self.comp_info >> 44)) + 1

    @property
    def compressed(self) -> bool:
        return self.compressed_size != self.uncompressed_size


@dataclass(frozen=True, slots=True)
class ChunkInfoV2(Record):
    """`BlobChunkInfoV2Ondisk`, 24 bytes.

    uncomp_info: bits 0..31 offset>>12, 32..55 size-1, 56..63 flags (CI_V2_*).
    comp_info: bits 0..39 offset, 40..63 size (not minus one). data: ZRAN/batch context
    index (high 32) and offset in its output (low 32), or the CRC-32C.
    """

    STRUCT = struct.Struct("<QQQ")

    uncomp_info: int
    comp_info: int
    data: int

    @property
    def flags(self) -> int:
        return self.uncomp_info >> 56

    @property
    def uncompressed_offset(self) -> int:
        return (self.uncomp_info & 0xFFFF_FFFF) << 12

    @property
    def uncompressed_size(self) -> int:
        return ((self.uncomp_info >> 32) & 0xFF_FFFF) + 1

    @property
    def compressed_offset(self) -> int:
        return self.comp_info & 0xFF_FFFF_FFFF

    @property
    def compressed_size(self) -> int:
        return self.comp_info >> 40

    @property
    def compressed(self) -> bool:
        return bool(self.flags & CI_V2_COMPRESSED)


@dataclass(frozen=True, slots=True)
class ZranContext(Record):
    """`ZranInflateContext`, 40 bytes: where to resume inflating a gzip stream."""

    STRUCT = struct.Struct("<QQQIIIBB2s")

    in_offset: int
    out_offset: int
    dict_offset: int
    in_len: int
    out_len: int
    dict_size: int
    ctx_byte: int
    ctx_bits: int
    reserved: bytes = bytes(2)


@dataclass(frozen=True, slots=True)
class BatchContext(Record):
    """`BatchInflateContext`, 40 bytes: one compressed frame shared by batched chunks."""

    STRUCT = struct.Struct("<II32s")

    compressed_size: int
    uncompressed_batch_size: int
    reserved: bytes = bytes(32)


CI_FEATURE_V2 = 0x0000_0004  # s_features: 24-byte v2 chunk infos (BlobFeatures.CHUNK_INFO_V2)


def unpack_ci_table(data: bytes, header: BlobMetaHeader) -> list[ChunkInfoV1] | list[ChunkInfoV2]:
    """The `s_ci_entries` chunk infos at the start of an uncompressed CI table."""
    kind: type[ChunkInfoV1] | type[ChunkInfoV2] = (
        ChunkInfoV2 if header.s_features & CI_FEATURE_V2 else ChunkInfoV1
    )
    if header.s_ci_entries * kind.SIZE > len(data):
        raise FormatError(f"blob.meta: {header.s_ci_entries} chunk infos do not fit its "
                          f"{len(data)}-byte CI table")  # fmt: skip
    return [kind.unpack(data, i * kind.SIZE) for i in range(header.s_ci_entries)]  # type: ignore[return-value]
