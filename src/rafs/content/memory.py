"""`MemoryStore`: the content store semantics (see `rafs.content`) held in memory.

The in-memory twin of `LocalStore` for tests: same errors, same lifecycle, thread-safe
(one lock guards everything; a ref is "busy" while a writer for it is open).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime

from rafs.content import (
    ClosesOnExit,
    HasDigest,
    Info,
    Status,
    apply_label_update,
    digest_of,
    validate_labels,
)
from rafs.content.filters import info_lookup, matcher, status_lookup
from rafs.digest import Digest, Digester
from rafs.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound, Unavailable


def _now() -> datetime:
    return datetime.now(UTC)


@dataclass
class _Ingest:
    ref: str
    total: int
    started_at: datetime
    updated_at: datetime
    data: bytearray = field(default_factory=bytearray)


class MemoryReader(ClosesOnExit):
    def __init__(self, data: bytes) -> None:
        self._data: bytes | None = data

    @property
    def size(self) -> int:
        return len(self._require())

    def _require(self) -> bytes:
        if self._data is None:
            raise FailedPrecondition("reader is closed")
        return self._data

    def read_at(self, offset: int, size: int) -> bytes:
        if offset < 0 or size < 0:
            raise InvalidArgument(f"read_at: negative offset {offset} or size {size}")
        return self._require()[offset : offset + size]

    def close(self) -> None:
        self._data = None



class MemoryWriter(ClosesOnExit):
    def __init__(self, store: MemoryStore, ingest: _Ingest, expected: Digest | None) -> None:
        self._store = store
        self._ingest = ingest
        self._expected = expected
        self._digester = Digester()
        self._digester.update(bytes(ingest.data))
        self._open = True

    @property
    def ref(self) -> str:
        return self._ingest.ref

    def _check_open(self) -> None:
        if not self._open:
            raise FailedPrecondition(f"ref {self.ref}: writer is closed")

    def write(self, data: bytes, /) -> int:
        with self._store._lock:
            self._check_open()
            self._ingest.data += data
            self._ingest.updated_at = _now()
        self._digester.update(data)
        return len(data)

    def digest(self) -> Digest:
        return self._digester.digest()

    def status(self) -> Status:
        i = self._ingest
        return Status(i.ref, len(i.data), i.total, self._expected, i.started_at, i.updated_at)

    def truncate(self, size: int) -> None:
        if size != 0:
            raise InvalidArgument(f"ref {self.ref}: truncate to {size}: only 0 is supported")
        with self._store._lock:
            self._check_open()
            self._ingest.data.clear()
            self._ingest.updated_at = _now()
        self._digester.reset()

    def commit(self, size: int = 0, expected: str | None = None,
               labels: Mapping[str, str] | None = None) -> Digest:  # fmt: skip
        store = self._store
        with store._lock:
            try:
                self._check_open()
                validate_labels(labels or {})
                actual = self._digester.digest()
                written = len(self._ingest.data)
                if size > 0 and size != written:
                    raise FailedPrecondition(
                        f"ref {self.ref}: unexpected commit size {written}, expected {size}")
                if expected is not None and Digest(expected) != actual:
                    raise FailedPrecondition(
                        f"ref {self.ref}: unexpected commit digest {actual}, expected {expected}")
                del store._ingests[self.ref]
                if actual in store._blobs:
                    raise AlreadyExists(f"content {actual}: already exists")
                now = _now()
                store._blobs[actual] = bytes(self._ingest.data)
                store._infos[actual] = Info(actual, written, now, now,
                                            {k: v for k, v in (labels or {}).items() if v})
                return actual
            finally:
                self._release()

    def _release(self) -> None:
        if self._open:
            self._open = False
            self._store._busy.discard(self.ref)

    def close(self) -> None:
        with self._store._lock:
            self._release()



class MemoryStore:
    """A content store in a dict; see `rafs.content` for the semantics."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._blobs: dict[Digest, bytes] = {}
        self._infos: dict[Digest, Info] = {}
        self._ingests: dict[str, _Ingest] = {}
        self._busy: set[str] = set()

    # Provider
    def reader_at(self, target: str | HasDigest) -> MemoryReader:
        digest = digest_of(target)
        with self._lock:
            if digest not in self._blobs:
                raise NotFound(f"content {digest}: not found")
            return MemoryReader(self._blobs[digest])

    # Ingester
    def writer(self, ref: str, total: int = 0, expected: str | None = None) -> MemoryWriter:
        if not ref:
            raise InvalidArgument("writer: empty ref")
        want = Digest(expected) if expected is not None else None
        with self._lock:
            if ref in self._busy:
                raise Unavailable(f"ref {ref}: locked by another writer")
            if want is not None and want in self._blobs:
                raise AlreadyExists(f"content {want}: already exists")
            ingest = self._ingests.get(ref)
            if ingest is None or (total > 0 and ingest.total > 0 and total != ingest.total):
                now = _now()
                ingest = self._ingests[ref] = _Ingest(ref, total, now, now)
            self._busy.add(ref)
            return MemoryWriter(self, ingest, want)

    # Manager
    def info(self, target: str | HasDigest) -> Info:
        digest = digest_of(target)
        with self._lock:
            if digest not in self._infos:
                raise NotFound(f"content {digest}: not found")
            return self._infos[digest]

    def update(self, info: Info, *fieldpaths: str) -> Info:
        digest = digest_of(info)
        with self._lock:
            current = self.info(digest)
            labels = apply_label_update(current.labels, info.labels, fieldpaths)
            updated = replace(current, labels=labels, updated_at=_now())
            self._infos[digest] = updated
            return updated

    def walk(self, *filters: str) -> Iterator[Info]:
        match = matcher(filters)
        with self._lock:
            infos = sorted(self._infos.values(), key=lambda i: i.digest)
        for info in infos:
            if match(info_lookup(info)):
                yield info

    def delete(self, target: str | HasDigest) -> None:
        digest = digest_of(target)
        with self._lock:
            if self._blobs.pop(digest, None) is None:
                raise NotFound(f"content {digest}: not found")
            del self._infos[digest]

    # IngestManager
    def status(self, ref: str) -> Status:
        with self._lock:
            if ref not in self._ingests:
                raise NotFound(f"ref {ref}: no such ingest")
            i = self._ingests[ref]
            return Status(ref, len(i.data), i.total, None, i.started_at, i.updated_at)

    def list_statuses(self, *filters: str) -> list[Status]:
        match = matcher(filters)
        with self._lock:
            statuses = [self.status(ref) for ref in sorted(self._ingests)]
        return [s for s in statuses if match(status_lookup(s))]

    def abort(self, ref: str) -> None:
        with self._lock:
            if ref in self._busy:
                raise Unavailable(f"ref {ref}: locked by a writer")
            if self._ingests.pop(ref, None) is None:
                raise NotFound(f"ref {ref}: no such ingest")

