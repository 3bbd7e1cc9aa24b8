"""Open a tar layer whatever its compression: plain, gzip or zstd, found by magic bytes."""

from __future__ import annotations

import gzip
from typing import IO, cast

import zstandard

from rafs.codecs import GZIP_MAGIC, ZSTD_MAGIC


class _Prefixed:
    """A stream whose first bytes were already read (to sniff them) and are given back."""

    def __init__(self, head: bytes, rest: IO[bytes]) -> None:
        self._head = head
        self._rest = rest

    def read(self, size: int = -1) -> bytes:
        if not self._head:
            return self._rest.read(size)
        if size < 0:
            data, self._head = self._head + self._rest.read(), b""
            return data
        data, self._head = self._head[:size], self._head[size:]
        if len(data) < size:
            data += self._rest.read(size - len(data))
        return data


def open_tar_stream(raw: IO[bytes]) -> IO[bytes]:
    """A stream of the uncompressed tar bytes of `raw` (read sequentially, never seeked)."""
    head = raw.read(4)
    while 0 < len(head) < 4:
        more = raw.read(4 - len(head))
        if not more:
            break
        head += more
    stream = cast(IO[bytes], _Prefixed(head, raw))
    if head.startswith(GZIP_MAGIC):
        return cast(IO[bytes], gzip.GzipFile(fileobj=stream, mode="rb"))
    if head == ZSTD_MAGIC:
        return zstandard.ZstdDecompressor().stream_reader(stream, read_across_frames=True)
    return stream
