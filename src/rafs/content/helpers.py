"""Free functions over the store roles (containerd `core/content/helpers.go`).

- `open_writer` retries while the ref is locked (`Unavailable`), with random backoff from
  16 ms doubling up to 2048 ms, until `timeout` seconds pass (then the last error is raised).
- `write_blob` copies a stream into a store under a ref. A resumed ingest continues from its
  offset (the stream is sought, or read and discarded); `AlreadyExists`, at open or at commit,
  is success.
- `read_blob` and `exists` are the obvious conveniences.
- `as_file` gives a `ReaderAt` the seekable file interface that parsers and tar readers want.
"""

from __future__ import annotations

import io
import random
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, BinaryIO, cast

from rafs.digest import Digest
from rafs.errors import AlreadyExists, FailedPrecondition, NotFound, Unavailable

if TYPE_CHECKING:
    from rafs.content import BlobTarget, HasDigest, Ingester, Manager, Provider, ReaderAt, Writer

_BLOCK = 1 << 20


def open_writer(
    ingester: Ingester, ref: str, total: int = 0, expected: str | None = None,
    *, timeout: float = 60.0,
) -> Writer:  # fmt: skip
    """`ingester.writer(...)`, retried while another writer holds `ref`."""
    deadline = time.monotonic() + timeout
    backoff = 0.016
    while True:
        try:
            return ingester.writer(ref, total=total, expected=expected)
        except Unavailable:
            now = time.monotonic()
            if now >= deadline:
                raise
            time.sleep(min(backoff * (1 + random.random()), deadline - now))
            backoff = min(backoff * 2, 2.048)


def write_blob(
    ingester: Ingester, ref: str, source: BinaryIO, *, size: int = 0,
    expected: str | None = None, labels: Mapping[str, str] | None = None,
    timeout: float = 60.0,
) -> Digest:  # fmt: skip
    """Copy `source` into the store under `ref`, commit, and return the digest."""
    if expected is not None:
        expected = Digest(expected)
    try:
        writer = open_writer(ingester, ref, size, expected, timeout=timeout)
    except AlreadyExists:
        assert expected is not None
        return Digest(expected)
    with writer:
        offset = writer.status().offset
        if offset and expected is None:
            writer.truncate(0)  # nothing would check a resumed prefix against this stream
        elif offset:
            _skip(source, offset)
        while block := source.read(_BLOCK):
            writer.write(block)
        if size and writer.status().offset != size:
            raise FailedPrecondition(f"ref {ref}: short copy: got {writer.status().offset} "
                                     f"bytes of {size}")  # fmt: skip
        digest = writer.digest()
        try:
            return writer.commit(size, expected, labels)
        except AlreadyExists:
            return Digest(expected) if expected is not None else digest


def _skip(source: BinaryIO, count: int) -> None:
    try:
        source.seek(count)
        return
    except (AttributeError, OSError):
        pass
    while count:
        block = source.read(min(count, _BLOCK))
        if not block:
            raise FailedPrecondition("source is shorter than the ingest being resumed")
        count -= len(block)


def read_blob(provider: Provider, target: str | HasDigest) -> bytes:
    """The whole content of a committed blob."""
    with provider.reader_at(target) as reader:
        return reader.read_at(0, reader.size)


def exists(manager: BlobTarget | Manager, target: str | HasDigest) -> bool:
    try:
        manager.info(target)
    except NotFound:
        return False
    return True


class _RawReaderAt(io.RawIOBase):
    """The raw, seekable byte stream of a `ReaderAt` (not closing it)."""

    def __init__(self, reader: ReaderAt) -> None:
        self._reader = reader
        self._position = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        data = self._reader.read_at(self._position, len(buffer))
        buffer[: len(data)] = data
        self._position += len(data)
        return len(data)

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._position, io.SEEK_END: self._reader.size}
        position = base[whence] + offset
        if position < 0:
            raise ValueError(f"negative seek position {position}")
        self._position = position
        return position

    def tell(self) -> int:
        return self._position


def as_file(reader: ReaderAt) -> BinaryIO:
    """A buffered, seekable file over `reader`; closing it leaves `reader` open."""
    return cast(BinaryIO, io.BufferedReader(_RawReaderAt(reader), buffer_size=_BLOCK))
