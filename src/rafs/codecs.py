"""Chunk compressors and digesters, as nydus applies them to chunk data.

Compressed chunks are self-contained: a zstd frame (level 3, content size in the header, no
checksum) or a raw LZ4 block (no frame, no size prefix). A chunk whose compressed form is
not smaller than its data is stored raw. Digests are BLAKE3 or SHA-256 of the uncompressed
chunk; the CRC is CRC-32C (iSCSI). Codec objects are per thread: zstd contexts are not safe
to share between threads, and every call here may run in a worker thread.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable

import blake3
import crc32c
import lz4.block
import zstandard

from rafs.errors import FormatError, InvalidArgument
from rafs.format.blobtable import Compressor, Digester

ZSTD_LEVEL = 3
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"  # first bytes of every zstd frame
COMPRESSOR_NAMES = {"none": Compressor.NONE, "lz4_block": Compressor.LZ4_BLOCK,
                    "zstd": Compressor.ZSTD}  # fmt: skip
DIGESTER_NAMES = {"blake3": Digester.BLAKE3, "sha256": Digester.SHA256}

_local = threading.local()


def _zstd_compressor() -> zstandard.ZstdCompressor:
    compressor = getattr(_local, "zc", None)
    if compressor is None:
        compressor = _local.zc = zstandard.ZstdCompressor(level=ZSTD_LEVEL)
    return compressor


def _zstd_decompressor() -> zstandard.ZstdDecompressor:
    decompressor = getattr(_local, "zd", None)
    if decompressor is None:
        decompressor = _local.zd = zstandard.ZstdDecompressor()
    return decompressor


def compress(data: bytes, algo: Compressor) -> bytes:
    """Compress one chunk (or table); the caller keeps `data` if the result is not smaller."""
    if algo == Compressor.ZSTD:
        return _zstd_compressor().compress(data)
    if algo == Compressor.LZ4_BLOCK:
        return lz4.block.compress(data, store_size=False)  # type: ignore[no-any-return]
    if algo == Compressor.NONE:
        return data
    raise InvalidArgument(f"compressor {algo.name} cannot be used to write")


def decompress(data: bytes, algo: int, size: int) -> bytes:
    """Decompress to exactly `size` bytes; a `FormatError` if the data is corrupt."""
    try:
        if algo == Compressor.ZSTD:
            out = _zstd_decompressor().decompress(data, max_output_size=size)
        elif algo == Compressor.LZ4_BLOCK:
            out = lz4.block.decompress(data, uncompressed_size=size)
        elif algo == Compressor.NONE:
            out = data
        else:
            raise FormatError(f"unsupported compressor {algo}")
    except (zstandard.ZstdError, lz4.block.LZ4BlockError) as exc:
        raise FormatError(f"corrupt compressed data: {exc}") from None
    if len(out) != size:
        raise FormatError(f"decompressed {len(out)} bytes, expected {size}")
    return out


def digest_function(algo: int) -> Callable[[bytes], bytes]:
    """The 32-byte chunk digest function for a digester."""
    if algo == Digester.BLAKE3:
        return lambda data: blake3.blake3(data).digest()
    if algo == Digester.SHA256:
        return lambda data: hashlib.sha256(data).digest()
    raise FormatError(f"unsupported digester {algo}")


def crc32c_of(data: bytes) -> int:
    """CRC-32C (Castagnoli / iSCSI) of `data`."""
    return crc32c.crc32c(data)
