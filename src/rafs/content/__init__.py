"""Content store: roles, records and rules, after containerd's `core/content`.

A store keeps immutable blobs named by digest. New content arrives through an *ingest*: a
writer opened under a caller-chosen `ref` (e.g. `nydus-merge-<chainID>`). The lifecycle:

- `Ingester.writer(ref)` opens or **resumes** the ingest for `ref` (offset = bytes already
  written, the running digest recomputed from them). Only one writer per ref at a time: a
  second one gets `Unavailable`; `helpers.open_writer` retries with backoff.
  If `expected` is given and that blob is already present, opening raises `AlreadyExists`.
- `Writer.write` appends; `truncate(0)` restarts; `close()` keeps the progress for a later
  resume; `IngestManager.abort(ref)` discards it (`Unavailable` while a writer has it open).
- `Writer.commit(size, expected, labels)` always closes the writer. A `size` (if > 0) or
  `expected` digest that does not match what was written gives `FailedPrecondition` and keeps
  the ingest (resume, truncate or abort it). If the blob is already present the ingest is
  removed and `AlreadyExists` raised - callers treat it as success, but the labels passed are
  *not* applied then. Otherwise the blob appears atomically, verified.
- Content is invisible to `Provider`/`Manager` until committed; once committed it is no
  longer an ingest.

Labels are string pairs on a blob: the key is non-empty and key+value are at most 4096 bytes
(containerd `pkg/labels`); an empty value means "no such label". `Manager.update` changes
them by field path: `labels` replaces the whole set (as does passing no paths) and
`labels.KEY` sets or removes one key. `walk` and `list_statuses` take containerd filters
(`rafs.content.filters`): `labels.KEY==VALUE`, `!=`, `~=` (regex), bare `labels.KEY` for
presence; commas join terms with AND, several filters are ORed.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import TracebackType
from typing import Protocol, Self, runtime_checkable

from rafs.digest import Digest
from rafs.errors import InvalidArgument

MAX_LABEL_SIZE = 4096
"""Bytes allowed for one label's key plus value (containerd `labels.Validate`)."""

EPOCH = datetime.fromtimestamp(0, UTC)


@dataclass(frozen=True)
class Info:
    """A committed blob: its digest, size, times and labels."""

    digest: Digest
    size: int = 0
    created_at: datetime = EPOCH
    updated_at: datetime = EPOCH
    labels: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Status:
    """An ingest in progress: bytes written so far (`offset`) of `total` (0 = unknown)."""

    ref: str
    offset: int
    total: int = 0
    expected: Digest | None = None
    started_at: datetime = EPOCH
    updated_at: datetime = EPOCH


@runtime_checkable
class HasDigest(Protocol):
    """Anything naming content by digest, e.g. an OCI descriptor."""

    @property
    def digest(self) -> str: ...


def digest_of(target: str | HasDigest) -> Digest:
    """The digest named by a digest string or a descriptor (`InvalidArgument` if malformed)."""
    return Digest(target if isinstance(target, str) else target.digest)


def validate_labels(labels: Mapping[str, str]) -> None:
    """Raise `InvalidArgument` for an empty key or a label over `MAX_LABEL_SIZE` bytes."""
    for key, value in labels.items():
        if not key:
            raise InvalidArgument("label key is empty")
        total = len(key.encode()) + len(value.encode())
        if total > MAX_LABEL_SIZE:
            raise InvalidArgument(
                f"label {key[:64]!r}: key and value are {total} bytes, more than {MAX_LABEL_SIZE}"
            )


def apply_label_update(
    current: Mapping[str, str], new: Mapping[str, str], fieldpaths: tuple[str, ...]
) -> dict[str, str]:
    """The label set after `Manager.update(info, *fieldpaths)`; empty values are dropped."""
    result = dict(current)
    if not fieldpaths:
        fieldpaths = ("labels",)
    for path in fieldpaths:
        if path == "labels":
            result = dict(new)
        elif path.startswith("labels.") and len(path) > len("labels."):
            key = path[len("labels.") :]
            result[key] = new.get(key, "")
        else:
            raise InvalidArgument(f"cannot update field {path!r} of content info")
    result = {k: v for k, v in result.items() if v != ""}
    validate_labels(result)
    return result


class ReaderAt(Protocol):
    """Random access to one committed blob; closes as a context manager."""

    @property
    def size(self) -> int: ...

    def read_at(self, offset: int, size: int) -> bytes:
        """Up to `size` bytes from `offset`; fewer only at the end of the blob."""
        ...

    def close(self) -> None: ...

    def __enter__(self) -> Self: ...

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...  # fmt: skip


class ClosesOnExit:
    """Mixin: leaving a `with` block calls `close()`."""

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 tb: TracebackType | None) -> None:  # fmt: skip
        self.close()


class Writer(Protocol):
    """One open ingest. Leaving the context closes it (progress kept, lock released)."""

    @property
    def ref(self) -> str: ...

    def write(self, data: bytes, /) -> int: ...

    def digest(self) -> Digest:
        """Digest of the bytes written so far."""
        ...

    def status(self) -> Status: ...

    def truncate(self, size: int) -> None:
        """Restart the ingest; only `size == 0` is supported (`InvalidArgument` otherwise)."""
        ...

    def commit(
        self, size: int = 0, expected: str | None = None,
        labels: Mapping[str, str] | None = None,
    ) -> Digest:  # fmt: skip
        """Verify and publish the content; returns its digest. Always closes the writer."""
        ...

    def close(self) -> None: ...

    def __enter__(self) -> Self: ...

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...  # fmt: skip


class Provider(Protocol):
    def reader_at(self, target: str | HasDigest) -> ReaderAt:
        """Open a committed blob (`NotFound` if absent)."""
        ...


class Ingester(Protocol):
    def writer(self, ref: str, total: int = 0, expected: str | None = None) -> Writer:
        """Open or resume the ingest `ref` (`Unavailable` if another writer holds it)."""
        ...


class Manager(Protocol):
    def info(self, target: str | HasDigest) -> Info: ...

    def update(self, info: Info, *fieldpaths: str) -> Info:
        """Change the labels of `info.digest` by field path; returns the new info."""
        ...

    def walk(self, *filters: str) -> Iterator[Info]:
        """Committed blobs matching any of `filters` (all when none)."""
        ...

    def delete(self, target: str | HasDigest) -> None: ...


class IngestManager(Protocol):
    def status(self, ref: str) -> Status: ...

    def list_statuses(self, *filters: str) -> list[Status]:
        """Ingests in progress matching any of `filters` (field `ref`)."""
        ...

    def abort(self, ref: str) -> None:
        """Discard the ingest `ref` (`NotFound` if absent)."""
        ...


class Store(Provider, Ingester, Manager, IngestManager, Protocol):
    """Everything a content store does."""


class BlobTarget(Ingester, Protocol):
    """What storing a blob needs: writers, and `info` to see whether it is already there."""

    def info(self, target: str | HasDigest) -> Info: ...


from rafs.content.helpers import as_file, exists, open_writer, read_blob, write_blob  # noqa: E402

__all__ = [
    "EPOCH",
    "MAX_LABEL_SIZE",
    "BlobTarget",
    "HasDigest",
    "Info",
    "IngestManager",
    "Ingester",
    "Manager",
    "Provider",
    "ReaderAt",
    "Status",
    "Store",
    "Writer",
    "apply_label_update",
    "as_file",
    "digest_of",
    "exists",
    "open_writer",
    "read_blob",
    "validate_labels",
    "write_blob",
]
