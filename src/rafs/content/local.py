"""`LocalStore`: a content store in a directory, laid out exactly as containerd's local store.

    <root>/blobs/sha256/<hex>      committed blobs, read-only (mode & ~0333), mtime = commit time
    <root>/ingest/<sha256(ref)>/   one ingest; the ref is hashed to keep paths a fixed length
        ref        the ref string (no newline)
        data       the bytes written so far
        startedat  RFC 3339 time (Go's MarshalText), written as `<name>.tmp` + rename
        updatedat  idem; refreshed on close (status takes the later of it and data's mtime)
        total      decimal expected size, only when known
    <root>/metadata.db             labels and update times (SQLite, WAL) - our addition
    <root>/metadata.db.lock        held while that database is first set up

The ingest directory itself is the per-ref lock: a writer holds `flock(LOCK_EX|LOCK_NB)` on
it, so a second writer in any thread or process gets `Unavailable`, and a killed writer's
lock goes with it. `ref` is written last when an ingest starts, so an ingest without it is
unfinished and restarts. A resumed ingest re-hashes `data` for its running digest.

Commit: fsync, check size then digest (`FailedPrecondition`, ingest kept), make `data`
read-only and hard-link it to the blob path - the link fails atomically if the blob exists
(`AlreadyExists`, ingest removed), so of two committers of the same content exactly one
wins - then set the mtime, fsync the directory, remove the ingest and record the labels.
A label failure after the link is logged, not raised: the blob is already published.
(On a filesystem without hard links, commit falls back to check-then-rename, as containerd.)

`Status.expected` comes back only from a live writer: the layout has no file for it.
`abort` takes the ingest's lock first, so it is `Unavailable` while a writer is open
(containerd removes the directory regardless).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import logging
import os
import re
import shutil
import sqlite3
import time
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path

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
from rafs.sqlitedb import Database

log = logging.getLogger(__name__)

_HEX = re.compile(r"[0-9a-f]{64}")
_NO_HARD_LINKS = {errno.EPERM, errno.EOPNOTSUPP, errno.EMLINK, errno.EXDEV}
_BLOCK = 1 << 20


def format_time(ns: int) -> str:
    """Go's `time.MarshalText` (RFC 3339, nanoseconds without trailing zeros) in UTC."""
    seconds, fraction = divmod(ns, 10**9)
    text = datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    if fraction:
        text += f".{fraction:09d}".rstrip("0")
    return text + "Z"


def parse_time(text: str) -> datetime:
    try:
        return datetime.fromisoformat(text.strip())
    except ValueError:
        raise FailedPrecondition(f"bad timestamp {text!r}") from None


def _from_ns(ns: int) -> datetime:
    return datetime.fromtimestamp(ns / 10**9, UTC)


def _write_small(path: Path, text: str) -> None:
    """containerd's writeToCompletion: `<path>.tmp` opened O_SYNC, then renamed over."""
    tmp = f"{path}.tmp"
    fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_SYNC, 0o666)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)
    os.replace(tmp, path)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


_LABEL_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS labels (digest TEXT NOT NULL, key TEXT NOT NULL, "
    "value TEXT NOT NULL, PRIMARY KEY (digest, key))",
    "CREATE TABLE IF NOT EXISTS updated (digest TEXT PRIMARY KEY, at_ns INTEGER NOT NULL)",
)


class _Labels:
    """Labels and update times in SQLite; one short connection per operation."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._db = Database(path, _LABEL_SCHEMA)
        self._connect = self._db.connect

    def get(self, digest: str) -> tuple[dict[str, str], int]:
        if not self.path.exists():
            return {}, 0
        with self._connect() as db:
            rows = db.execute("SELECT key, value FROM labels WHERE digest=?", (digest,))
            labels = dict(rows.fetchall())
            row = db.execute("SELECT at_ns FROM updated WHERE digest=?", (digest,)).fetchone()
        return labels, (row[0] if row else 0)

    def all(self) -> dict[str, tuple[dict[str, str], int]]:
        result: dict[str, tuple[dict[str, str], int]] = {}
        if not self.path.exists():
            return result
        with self._connect() as db:
            for digest, key, value in db.execute("SELECT digest, key, value FROM labels"):
                result.setdefault(digest, ({}, 0))[0][key] = value
            for digest, at_ns in db.execute("SELECT digest, at_ns FROM updated"):
                result[digest] = (result.get(digest, ({}, 0))[0], at_ns)
        return result

    def put(self, digest: str, labels: Mapping[str, str], at_ns: int) -> None:
        with self._connect() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                db.execute("DELETE FROM labels WHERE digest=?", (digest,))
                db.executemany("INSERT INTO labels VALUES (?, ?, ?)",
                               [(digest, k, v) for k, v in labels.items()])  # fmt: skip
                db.execute("INSERT OR REPLACE INTO updated VALUES (?, ?)", (digest, at_ns))
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise

    def delete(self, digest: str) -> None:
        if self.path.exists():
            with self._connect() as db:
                db.execute("DELETE FROM labels WHERE digest=?", (digest,))
                db.execute("DELETE FROM updated WHERE digest=?", (digest,))


class LocalReader(ClosesOnExit):
    """A committed blob opened once; `read_at` is `pread`."""

    def __init__(self, path: Path, digest: Digest) -> None:
        try:
            self._fd: int | None = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise NotFound(f"content {digest}: not found") from None
        self._size = os.fstat(self._fd).st_size

    @property
    def size(self) -> int:
        return self._size

    def read_at(self, offset: int, size: int) -> bytes:
        if offset < 0 or size < 0:
            raise InvalidArgument(f"read_at: negative offset {offset} or size {size}")
        if self._fd is None:
            raise FailedPrecondition("reader is closed")
        parts, end = [], min(offset + size, self._size)
        while offset < end:
            part = os.pread(self._fd, min(end - offset, 1 << 30), offset)
            if not part:
                break
            parts.append(part)
            offset += len(part)
        return b"".join(parts)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None



class LocalWriter(ClosesOnExit):
    """One ingest, holding its directory's lock until commit or close."""

    def __init__(self, store: LocalStore, ref: str, path: Path, lock_fd: int,
                 total: int, expected: Digest | None) -> None:  # fmt: skip
        self._store, self._ref, self._path, self._lock_fd = store, ref, path, lock_fd
        self._expected = expected
        self._digester = Digester()
        self._fd: int | None = None
        try:
            if not self._resume(total):
                self._start(total)
        except BaseException:
            self._release()
            raise

    def _resume(self, total: int) -> bool:
        """Pick up an existing ingest for this ref; False if there is none usable."""
        p = self._path
        try:
            if (p / "ref").read_text() != self._ref:
                return False
            started = parse_time((p / "startedat").read_text())
            updated = parse_time((p / "updatedat").read_text())
            stored = int((p / "total").read_text()) if (p / "total").exists() else 0
            if total > 0 and stored > 0 and total != stored:
                return False
            fd = os.open(p / "data", os.O_RDWR | os.O_CLOEXEC)
        except (OSError, ValueError, FailedPrecondition):
            return False
        st = os.fstat(fd)
        if st.st_nlink != 1:  # committed (linked to its blob) but the ingest not yet removed
            os.close(fd)
            return False
        while block := os.read(fd, _BLOCK):
            self._digester.update(block)
        self._fd, self._offset = fd, self._digester.size
        self._total = total if stored == 0 else stored
        if self._total and not stored:
            _write_small(p / "total", str(self._total))
        self._started, self._updated = started, max(updated, _from_ns(st.st_mtime_ns))
        return True

    def _start(self, total: int) -> None:
        """A new ingest: clear the directory, then write data, times, total and ref last."""
        for entry in os.scandir(self._path):
            os.unlink(entry.path)  # unlink, never truncate: `data` may be a blob's other name
        now = time.time_ns()
        self._fd = os.open(self._path / "data",
                           os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)  # fmt: skip
        _write_small(self._path / "startedat", format_time(now))
        _write_small(self._path / "updatedat", format_time(now))
        if total > 0:
            _write_small(self._path / "total", str(total))
        _write_small(self._path / "ref", self._ref)
        self._offset, self._total = 0, total
        self._started = self._updated = _from_ns(now)

    @property
    def ref(self) -> str:
        return self._ref

    def _data_fd(self) -> int:
        if self._fd is None:
            raise FailedPrecondition(f"ref {self._ref}: writer is closed")
        return self._fd

    def write(self, data: bytes, /) -> int:
        fd, view = self._data_fd(), memoryview(data)
        while view:
            written = os.pwrite(fd, view, self._offset)
            self._digester.update(view[:written].tobytes())
            self._offset += written
            view = view[written:]
        self._updated = datetime.now(UTC)
        return len(data)

    def digest(self) -> Digest:
        return self._digester.digest()

    def status(self) -> Status:
        return Status(self._ref, self._offset, self._total, self._expected,
                      self._started, self._updated)  # fmt: skip

    def truncate(self, size: int) -> None:
        if size != 0:
            raise InvalidArgument(f"ref {self._ref}: truncate to {size}: only 0 is supported")
        os.ftruncate(self._data_fd(), 0)
        self._digester.reset()
        self._offset = 0
        self._updated = datetime.now(UTC)

    def commit(self, size: int = 0, expected: str | None = None,
               labels: Mapping[str, str] | None = None) -> Digest:  # fmt: skip
        try:
            fd = self._data_fd()
            labels = {k: v for k, v in (labels or {}).items() if v != ""}
            validate_labels(labels)
            os.fsync(fd)
            st = os.fstat(fd)
            actual = self._digester.digest()
            if size > 0 and size != st.st_size:
                raise FailedPrecondition(
                    f"ref {self._ref}: unexpected commit size {st.st_size}, expected {size}")
            if expected is not None and Digest(expected) != actual:
                raise FailedPrecondition(
                    f"ref {self._ref}: unexpected commit digest {actual}, expected {expected}")
            return self._publish(fd, st.st_mode, actual, labels)
        finally:
            self._close_data(write_updated=False)
            self._release()

    def _publish(self, fd: int, mode: int, digest: Digest, labels: Mapping[str, str]) -> Digest:
        store = self._store
        target = store.blob_path(digest)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.fchmod(fd, mode & 0o777 & ~0o333)
        try:
            try:
                os.link(self._path / "data", target)
            except OSError as exc:
                if exc.errno not in _NO_HARD_LINKS:
                    raise
                if target.exists():
                    raise FileExistsError(errno.EEXIST, "blob exists", str(target)) from None
                os.rename(self._path / "data", target)  # no links here: check, then rename
        except FileExistsError:
            shutil.rmtree(self._path, ignore_errors=True)
            raise AlreadyExists(f"content {digest}: already exists") from None
        except OSError:
            os.fchmod(fd, mode & 0o777)
            raise
        now = time.time_ns()
        os.utime(target, ns=(now, now))
        _fsync_dir(target.parent)
        shutil.rmtree(self._path, ignore_errors=True)
        try:
            store._labels.put(digest, labels, now)
        except sqlite3.Error as exc:  # the blob is published; it cannot be rolled back
            log.error("content %s: committed, but its labels were not recorded: %s", digest, exc)
        return digest

    def _close_data(self, write_updated: bool) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            if write_updated:
                os.fsync(fd)
                _write_small(self._path / "updatedat", format_time(time.time_ns()))
        finally:
            os.close(fd)

    def _release(self) -> None:
        if self._lock_fd >= 0:
            os.close(self._lock_fd)  # drops the flock
            self._lock_fd = -1

    def close(self) -> None:
        """Keep the progress for a later writer on this ref; idempotent."""
        try:
            self._close_data(write_updated=True)
        finally:
            self._release()



class LocalStore:
    """A containerd-layout content store under `root` (created unless `create=False`)."""

    def __init__(self, root: str | os.PathLike[str], *, create: bool = True) -> None:
        self.root = Path(root)
        if create:
            (self.root / "ingest").mkdir(parents=True, exist_ok=True)
        elif not self.root.is_dir():
            raise NotFound(f"{self.root}: no such content store")
        self._labels = _Labels(self.root / "metadata.db")

    def blob_path(self, digest: Digest) -> Path:
        return self.root / "blobs" / digest.algorithm / digest.hex

    def ingest_path(self, ref: str) -> Path:
        return self.root / "ingest" / hashlib.sha256(ref.encode()).hexdigest()

    def _lock(self, path: Path, create: bool) -> int:
        """flock the ingest directory, making it if asked; `Unavailable` if held."""
        while True:
            if create:
                path.parent.mkdir(parents=True, exist_ok=True)
                with contextlib.suppress(FileExistsError):
                    path.mkdir(0o755)
            try:
                fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            except FileNotFoundError:
                if create:
                    continue  # removed by a committer between our mkdir and open
                raise
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                os.close(fd)
                if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                    raise Unavailable(f"ref {path.name}: locked by another writer") from None
                raise
            try:
                same = os.path.samestat(os.stat(path), os.fstat(fd))
            except FileNotFoundError:
                same = False
            if same:
                return fd
            os.close(fd)  # we locked a directory that was removed meanwhile
            if not create:
                raise FileNotFoundError(errno.ENOENT, "ingest removed", str(path))

    # Provider
    def reader_at(self, target: str | HasDigest) -> LocalReader:
        digest = digest_of(target)
        return LocalReader(self.blob_path(digest), digest)

    # Ingester
    def writer(self, ref: str, total: int = 0, expected: str | None = None) -> LocalWriter:
        if not ref:
            raise InvalidArgument("writer: empty ref")
        want = Digest(expected) if expected is not None else None
        if want is not None and self.blob_path(want).exists():
            raise AlreadyExists(f"content {want}: already exists")
        path = self.ingest_path(ref)
        try:
            fd = self._lock(path, create=True)
        except Unavailable:
            raise Unavailable(f"ref {ref}: locked by another writer") from None
        return LocalWriter(self, ref, path, fd, total, want)

    # Manager
    def _info(self, digest: Digest, st: os.stat_result, labels: Mapping[str, str],
              updated_ns: int) -> Info:  # fmt: skip
        return Info(digest, st.st_size, _from_ns(st.st_mtime_ns),
                    _from_ns(max(st.st_mtime_ns, updated_ns)), labels)  # fmt: skip

    def info(self, target: str | HasDigest) -> Info:
        digest = digest_of(target)
        try:
            st = os.stat(self.blob_path(digest))
        except FileNotFoundError:
            raise NotFound(f"content {digest}: not found") from None
        return self._info(digest, st, *self._labels.get(digest))

    def update(self, info: Info, *fieldpaths: str) -> Info:
        digest = digest_of(info)
        current = self.info(digest)
        labels = apply_label_update(current.labels, info.labels, fieldpaths)
        # read-modify-write of one blob's labels; concurrent updaters of the same blob race
        # as they do in containerd's local label store
        self._labels.put(digest, labels, time.time_ns())
        return self.info(digest)

    def walk(self, *filters: str) -> Iterator[Info]:
        match = matcher(filters)
        folder = self.root / "blobs" / "sha256"
        try:
            names = sorted(e.name for e in os.scandir(folder) if _HEX.fullmatch(e.name))
        except FileNotFoundError:
            return
        metadata = self._labels.all()
        for name in names:
            digest = Digest.from_hex(name)
            try:
                st = os.stat(folder / name)
            except FileNotFoundError:
                continue  # deleted meanwhile
            info = self._info(digest, st, *metadata.get(digest, ({}, 0)))
            if match(info_lookup(info)):
                yield info

    def delete(self, target: str | HasDigest) -> None:
        digest = digest_of(target)
        try:
            os.unlink(self.blob_path(digest))
        except FileNotFoundError:
            raise NotFound(f"content {digest}: not found") from None
        self._labels.delete(digest)

    # IngestManager
    def _status(self, path: Path) -> Status:
        try:
            st = os.stat(path / "data")
            ref = (path / "ref").read_text()
            started = parse_time((path / "startedat").read_text())
            updated = parse_time((path / "updatedat").read_text())
            total = int((path / "total").read_text()) if (path / "total").exists() else 0
        except (OSError, ValueError):
            raise NotFound(f"ingest {path.name}: not found or incomplete") from None
        return Status(ref, st.st_size, total, None, started,
                      max(updated, _from_ns(st.st_mtime_ns)))  # fmt: skip

    def status(self, ref: str) -> Status:
        try:
            status = self._status(self.ingest_path(ref))
        except NotFound:
            raise NotFound(f"ref {ref}: no such ingest") from None
        if status.ref != ref:
            raise NotFound(f"ref {ref}: no such ingest")
        return status

    def list_statuses(self, *filters: str) -> list[Status]:
        match = matcher(filters)
        statuses = []
        try:
            entries = sorted(os.scandir(self.root / "ingest"), key=lambda e: e.name)
        except FileNotFoundError:
            return []
        for entry in entries:
            with contextlib.suppress(NotFound):
                status = self._status(Path(entry.path))
                if match(status_lookup(status)):
                    statuses.append(status)
        return statuses

    def abort(self, ref: str) -> None:
        """Remove the ingest; `Unavailable` while a writer holds it (containerd does not check)."""
        path = self.ingest_path(ref)
        try:
            fd = self._lock(path, create=False)
        except FileNotFoundError:
            raise NotFound(f"ref {ref}: no such ingest") from None
        except Unavailable:
            raise Unavailable(f"ref {ref}: locked by a writer") from None
        try:
            if not (path / "ref").exists():
                shutil.rmtree(path, ignore_errors=True)
                raise NotFound(f"ref {ref}: no such ingest")
            shutil.rmtree(path)
        finally:
            os.close(fd)
