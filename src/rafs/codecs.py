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
import lz4.block
import zstandard

from rafs.errors import FormatError, InvalidArgument
from rafs.format.blobtable import Compressor, Digester

ZSTD_LEVEL = 3
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"  # first bytes of every zstd frame
GZIP_MAGIC = b"\x1f\x8b"  # first bytes of every gzip member
ZSTD_PIECE = 16 << 20  # zstd output allocated at once at most (the largest chunk)
LZ4_MAX_RATIO = 255  # an LZ4 block never expands more (one length byte adds 255 bytes)
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


def zstd_bounded(data: bytes, limit: int) -> bytes:
    """The first zstd frame of `data`, decompressed piece by piece: memory follows the real
    output, never a size field (a frame header may claim any size, or none, and zstandard
    allocates what it claims up front); more than `limit` bytes is a `FormatError`."""
    parts = []
    total = 0
    try:
        with _zstd_decompressor().stream_reader(data) as reader:
            while piece := reader.read(ZSTD_PIECE):
                total += len(piece)
                if total > limit:
                    raise FormatError(f"zstd data decompresses to more than {limit} bytes")
                parts.append(piece)
    except zstandard.ZstdError as exc:
        raise FormatError(f"corrupt compressed data: {exc}") from None
    return b"".join(parts)


def decompress(data: bytes, algo: int, size: int) -> bytes:
    """Decompress to exactly `size` bytes; a `FormatError` if the data is corrupt.

    `size` comes from the input, so it only bounds the output: beyond ZSTD_PIECE it is never
    allocated up front (zstd is streamed, LZ4 is refused past its maximum ratio).
    """
    try:
        if algo == Compressor.ZSTD:
            # zstandard allocates what a frame header claims, whatever max_output_size says.
            claimed = zstandard.frame_content_size(data)
            if claimed not in (-1, size):
                raise FormatError(f"zstd frame holds {claimed} bytes, expected {size}")
            if size > ZSTD_PIECE:
                out = zstd_bounded(data, size)
            else:
                out = _zstd_decompressor().decompress(data, max_output_size=size)
        elif algo == Compressor.LZ4_BLOCK:
            if size > LZ4_MAX_RATIO * len(data) + 16:
                raise FormatError(f"{len(data)} bytes of LZ4 cannot hold {size} bytes")
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


def decompress_into(data: memoryview, algo: int, size: int, out: memoryview) -> memoryview:
    """`decompress`, writing into the caller's `out` (at least `size` bytes) and returning
    the view of the result: `out[:size]`, or `data` itself when it is stored raw.

    For the read path of a mount, whose fetch threads each reuse one buffer rather than
    allocate every chunk's output. zstd decodes straight into it (the output can never
    exceed `size`); LZ4 has no such call and copies.
    """
    if algo == Compressor.NONE:
        if len(data) != size:
            raise FormatError(f"stored {len(data)} bytes, expected {size}")
        return data
    if algo != Compressor.ZSTD:
        result = out[:size]
        result[:] = decompress(bytes(data), algo, size)
        return result
    claimed = zstandard.frame_content_size(data)
    if claimed not in (-1, size):
        raise FormatError(f"zstd frame holds {claimed} bytes, expected {size}")
    result = out[:size]
    done = 0
    try:
        with _zstd_decompressor().stream_reader(data) as reader:
            while done < size and (n := reader.readinto(result[done:])):
                done += n
            if done == size and reader.read(1):
                raise FormatError(f"zstd data decompresses to more than {size} bytes")
    except zstandard.ZstdError as exc:
        raise FormatError(f"corrupt compressed data: {exc}") from None
    if done != size:
        raise FormatError(f"decompressed {done} bytes, expected {size}")
    return result


def digest_function(algo: int) -> Callable[[bytes | memoryview], bytes]:
    """The 32-byte chunk digest function for a digester."""
    if algo == Digester.BLAKE3:
        return lambda data: blake3.blake3(data).digest()
    if algo == Digester.SHA256:
        return lambda data: hashlib.sha256(data).digest()
    raise FormatError(f"unsupported digester {algo}")


def crc32c_of(data: bytes) -> int:
    """CRC-32C (Castagnoli / iSCSI) of `data`."""
    import crc32c  # on first use: the package loads importlib.metadata (~50 ms)

    return crc32c.crc32c(data)
