"""Hand a blob's bytes on while it is being stored: a layer converts as it downloads.

`TeeIngester(store, sink)` is the store for one fetch: its writers store as usual and also
give `sink` every byte of the blob once, in order, from the first. A download that resumes
after a dropped connection continues where the writer stands, so nothing repeats; one that
restarts from 0 (`truncate(0)`) passes on only the bytes beyond what the sink already has.
A stale ingest left by an earlier process is restarted, since its bytes never reached the sink.
The sink's bytes are unverified until the writer's commit checks the digest: whoever reads
them must not publish what it makes of them before that.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from rafs.content import ClosesOnExit

if TYPE_CHECKING:
    from rafs.content import BlobTarget, HasDigest, Info, Status, Writer
    from rafs.digest import Digest

Sink = Callable[[bytes], object]


class TeeIngester:
    """`store` for writers whose bytes also go to `sink`; `info` passes through."""

    def __init__(self, store: BlobTarget, sink: Sink) -> None:
        self._store = store
        self._sink = sink

    def info(self, target: str | HasDigest) -> Info:
        return self._store.info(target)

    def writer(self, ref: str, total: int = 0, expected: str | None = None) -> Writer:
        return TeeWriter(self._store.writer(ref, total, expected), self._sink)


class TeeWriter(ClosesOnExit):
    """A writer that also gives each new byte to `sink`, once (see the module docstring)."""

    def __init__(self, writer: Writer, sink: Sink) -> None:
        self._writer = writer
        self._sink = sink
        if writer.status().offset:
            writer.truncate(0)
        self._offset = 0
        self._passed = 0  # bytes the sink has: the high-water mark of `_offset`

    @property
    def ref(self) -> str:
        return self._writer.ref

    def write(self, data: bytes, /) -> int:
        written = self._writer.write(data)
        start, self._offset = self._offset, self._offset + len(data)
        if self._offset > self._passed:
            self._sink(data[self._passed - start :] if self._passed > start else data)
            self._passed = self._offset
        return written

    def digest(self) -> Digest:
        return self._writer.digest()

    def status(self) -> Status:
        return self._writer.status()

    def truncate(self, size: int) -> None:
        self._writer.truncate(size)
        self._offset = 0

    def commit(self, size: int = 0, expected: str | None = None,
               labels: Mapping[str, str] | None = None) -> Digest:  # fmt: skip
        return self._writer.commit(size, expected, labels)

    def close(self) -> None:
        self._writer.close()
