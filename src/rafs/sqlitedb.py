"""Small SQLite databases shared by threads and processes (the store's labels, the cache's refs).

Every operation opens its own short connection with a busy timeout, so any thread or process
may call at any time; writers serialise on SQLite's lock. The one step the busy timeout does
not cover is switching a new database to WAL: two connections doing it at once get "database
is locked" at once. So the schema is made once per process under an exclusive `flock` on
`<name>.lock` beside the database, which also orders it against other processes.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

BUSY_TIMEOUT_SECONDS = 30.0


class Database:
    """`path` with `schema` (CREATE ... IF NOT EXISTS statements) made on first connect."""

    def __init__(self, path: Path, schema: Sequence[str]) -> None:
        self.path = path
        self._schema = tuple(schema)
        self._ready = False
        self._init_lock = threading.Lock()

    @contextlib.contextmanager
    def connect(self) -> Iterator[sqlite3.Connection]:
        """A connection in autocommit mode (use `BEGIN IMMEDIATE` for a transaction)."""
        if not self._ready:
            self._create()
        db = self._open()
        try:
            yield db
        finally:
            db.close()

    def _open(self) -> sqlite3.Connection:
        return sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_SECONDS, isolation_level=None)

    def _create(self) -> None:
        with self._init_lock:
            if self._ready:
                return
            lock_fd = os.open(f"{self.path}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            try:
                fcntl.flock(lock_fd, fcntl.LOCK_EX)
                with contextlib.closing(self._open()) as db:
                    db.execute("PRAGMA journal_mode=WAL")
                    for statement in self._schema:
                        db.execute(statement)
            finally:
                os.close(lock_fd)
            self._ready = True
