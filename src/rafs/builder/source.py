"""Open a tar layer whatever its compression: plain, gzip or zstd, found by magic bytes.

gzip is inflated by ISA-L (`isal`, about twice zlib's speed) in a thread of its own, so a
build parses the tar and digests and compresses chunks while the next megabyte is inflated:
on a gzip layer inflating is the largest single cost of converting it.
"""

from __future__ import annotations

import contextlib
import zlib
from collections.abc import Iterator
from typing import IO, cast

import zstandard
from isal import igzip_threaded, isal_zlib

from rafs.codecs import GZIP_MAGIC, ZSTD_MAGIC

_GZIP_BLOCK = 1 << 20

_ISAL_ERROR = cast(type[Exception], isal_zlib.error)  # isal's stubs declare an instance
DECOMPRESSION_ERRORS = (EOFError, OSError, zlib.error, _ISAL_ERROR, zstandard.ZstdError)
"""What reading a truncated or corrupt compressed stream raises (gzip's BadGzipFile is an
OSError)."""


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

    def readinto(self, buffer: bytearray | memoryview) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)


@contextlib.contextmanager
def open_tar_stream(raw: IO[bytes]) -> Iterator[IO[bytes]]:
    """The uncompressed tar bytes of `raw` (read sequentially, never seeked) while in the
    `with` block; a gzip source's inflating thread stops when it ends."""
    head = raw.read(4)
    while 0 < len(head) < 4:
        more = raw.read(4 - len(head))
        if not more:
            break
        head += more
    stream = cast(IO[bytes], _Prefixed(head, raw))
    if head.startswith(GZIP_MAGIC):
        inflating = igzip_threaded.open(  # type: ignore[no-untyped-call]  # (untyped in isal)
            stream, "rb", block_size=_GZIP_BLOCK)
        with inflating as inflated:
            yield cast(IO[bytes], inflated)
    elif head == ZSTD_MAGIC:
        with zstandard.ZstdDecompressor().stream_reader(stream, read_across_frames=True,
                                                        closefd=False) as decompressed:  # fmt: skip
            yield cast(IO[bytes], decompressed)
    else:
        yield stream
