"""Open a tar layer whatever its compression: plain, gzip or zstd, found by magic bytes."""

from __future__ import annotations

import gzip
import io
from typing import IO

import zstandard

GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


def open_tar_stream(raw: io.BufferedReader) -> IO[bytes]:
    """A stream of the uncompressed tar bytes of `raw` (read sequentially, never seeked)."""
    head = raw.peek(4)[:4]
    if head.startswith(GZIP_MAGIC):
        return gzip.GzipFile(fileobj=raw, mode="rb")  # type: ignore[return-value]
    if head == ZSTD_MAGIC:
        return zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True)
    return raw
