"""The device table and the blob table of a RAFS v6 bootstrap.

Blob k of the blob table is EROFS extra device k+1. The device slot (128 bytes, at 0x580 +
128k) gives the kernel the blob's size in blocks and, for a flattened image, the block where
its uncompressed data starts (`mapped_blkaddr`). The blob table entry (256 bytes) tells a
Nydus reader how the blob's chunks are compressed, digested and indexed (blob.meta).
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass

from rafs.errors import FormatError
from rafs.format.record import Record, fixed_str

BLOB_ID_LEN = 64
# Placeholder id written into a bootstrap inlined in its own blob (the real id is the file's).
PLACEHOLDER_BLOB_ID = "x" * BLOB_ID_LEN
MAX_CHUNKS_PER_BLOB = 1 << 24


class BlobFeatures(enum.IntFlag):
    """`BlobFeatures` of nydus-storage, stored in the blob table and the blob.meta header."""

    ALIGNED = 0x0000_0001  # uncompressed chunk offsets are 4 KiB aligned
    INLINED_FS_META = 0x0000_0002  # the bootstrap is inlined in the blob
    CHUNK_INFO_V2 = 0x0000_0004  # blob.meta uses 24-byte v2 chunk infos
    ZRAN = 0x0000_0008  # chunk data lives in an original gzip stream (ZRAN)
    SEPARATE = 0x0000_0010  # chunk data and RAFS meta are separate objects
    INLINED_CHUNK_DIGEST = 0x0000_0020  # the blob carries a chunk-digest array
    TARFS = 0x0000_0040  # the data blob is an original tar
    BATCH = 0x0000_0080  # small chunks batched into shared compressed frames
    ENCRYPTED = 0x0000_0100  # chunk data is encrypted
    IS_CHUNKDICT_GENERATED = 0x0000_0200  # blob made by chunk-dict generation
    IS_SEPARATED_WITH_PREFETCH_FILES = 0x0000_0400  # blob made by `optimize`
    EXTERNAL = 0x0000_0800  # data in an external (model) store
    HAS_TAR_HEADER = 0x1000_0000  # sections are followed by 512-byte tar headers
    HAS_TOC = 0x2000_0000  # the blob ends with a ToC
    CAP_TAR_TOC = 0x4000_0000  # written by nydus-image >= 2.2


_KNOWN_FEATURES = 0
for _feature in BlobFeatures:
    _KNOWN_FEATURES |= _feature


class Compressor(enum.IntEnum):
    """`compression_algo` of a blob (also the ToC and blob.meta CI compressor)."""

    NONE = 0
    LZ4_BLOCK = 1
    GZIP = 2
    ZSTD = 3


class Digester(enum.IntEnum):
    """`digest_algo` of a blob: how chunk digests are computed."""

    BLAKE3 = 0
    SHA256 = 1


def decode_blob_id(raw: bytes, what: str) -> str:
    """A blob id field as text; it must be UTF-8."""
    try:
        return fixed_str(raw).decode()
    except UnicodeDecodeError:
        raise FormatError(f"{what}: blob id is not valid UTF-8") from None


@dataclass(frozen=True, slots=True)
class DeviceSlot(Record):
    """`erofs_deviceslot` (`RafsV6Device`), 128 bytes."""

    STRUCT = struct.Struct("<64sII56s")

    blob_id: bytes
    blocks: int
    mapped_blkaddr: int
    reserved: bytes = bytes(56)

    @property
    def id(self) -> str:
        return decode_blob_id(self.blob_id, "device slot")

    def validate(self) -> None:
        decode_blob_id(self.blob_id, "device slot")
        if self.blocks == 0:
            raise FormatError("device slot has zero blocks")


@dataclass(frozen=True, slots=True)
class BlobEntry(Record):
    """`RafsV6Blob`, one 256-byte blob table entry."""

    STRUCT = struct.Struct("<64sIIIIIIQQIIQQQ32s32sQ8sI36s")

    blob_id: bytes
    blob_index: int
    chunk_size: int
    chunk_count: int
    compression_algo: int
    digest_algo: int
    features: int
    compressed_size: int
    uncompressed_size: int
    blob_toc_size: int
    ci_compressor: int
    ci_offset: int
    ci_compressed_size: int
    ci_uncompressed_size: int
    blob_toc_digest: bytes = bytes(32)
    blob_meta_digest: bytes = bytes(32)
    blob_meta_size: int = 0
    cipher_iv: bytes = bytes(8)
    cipher_algo: int = 0
    reserved: bytes = bytes(36)

    @property
    def id(self) -> str:
        return decode_blob_id(self.blob_id, f"blob {self.blob_index}")

    def validate(self) -> None:
        """The checks of `RafsV6Blob::validate` that apply to what this package reads."""
        where = f"blob {self.blob_index}"
        decode_blob_id(self.blob_id, where)
        if self.features & ~_KNOWN_FEATURES:
            raise FormatError(f"{where}: unknown features {self.features & ~_KNOWN_FEATURES:#x}")
        if self.compression_algo not in Compressor.__members__.values():
            raise FormatError(f"{where}: unknown compressor {self.compression_algo}")
        if self.ci_compressor not in Compressor.__members__.values():
            raise FormatError(f"{where}: unknown chunk-info compressor {self.ci_compressor}")
        if self.digest_algo not in Digester.__members__.values():
            raise FormatError(f"{where}: unknown digester {self.digest_algo}")
        if self.chunk_count > MAX_CHUNKS_PER_BLOB:
            raise FormatError(f"{where}: {self.chunk_count} chunks is too many")
        if self.uncompressed_size >= 1 << 44:
            raise FormatError(f"{where}: uncompressed size {self.uncompressed_size} too large")
        features = BlobFeatures(self.features)
        tarfs = bool(features & BlobFeatures.TARFS)
        if bool(features & BlobFeatures.ALIGNED) == tarfs and self.chunk_count:
            raise FormatError(f"{where}: ALIGNED must be set exactly when not TARFS")
        v2 = bool(features & BlobFeatures.CHUNK_INFO_V2)
        extra = features & (BlobFeatures.BATCH | BlobFeatures.ZRAN | BlobFeatures.ENCRYPTED)
        if extra and not v2:
            raise FormatError(f"{where}: batch/zran/encryption need v2 chunk infos")
        exempt = features & (BlobFeatures.IS_CHUNKDICT_GENERATED | BlobFeatures.TARFS)
        if not v2 and not exempt and self.ci_uncompressed_size != 16 * self.chunk_count:
            raise FormatError(f"{where}: chunk-info size does not match {self.chunk_count} chunks")
        if v2 and not extra and self.ci_uncompressed_size != 24 * self.chunk_count:
            raise FormatError(f"{where}: chunk-info size does not match {self.chunk_count} chunks")
        if v2 and extra and self.ci_uncompressed_size < 24 * self.chunk_count:
            raise FormatError(f"{where}: chunk-info table too small")
        if self.ci_compressed_size > self.ci_uncompressed_size:
            raise FormatError(f"{where}: compressed chunk-info larger than uncompressed")
