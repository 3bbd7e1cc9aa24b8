"""The cache's own records: one row per immutable layer ref, in SQLite (`<root>/cache.db`).

A ref is one layer on top of its parent ref (BuildKit `cache/metadata.go` keys in brackets):

    id             random, 26 base32 characters like BuildKit's identity.NewID()
    parent         the ref below it, or none for a base layer
    blob           digest of the primary blob (the layer as first stored)   [cache.blob]
    media_type     its media type                                           [cache.mediatype]
    blob_size      its size                                                 [cache.blobsize]
    diff_id        digest of the uncompressed tar (for a Nydus primary:
                   the blob itself, as BuildKit's nydus finalizer sets it)  [cache.diffID]
    chain_id       ChainID(parent.chain_id, diff_id)                        [cache.chainID]
    blob_chain_id  ChainID(parent.blob_chain_id, ChainID(blob, diff_id))    [cache.blobChainID]
    annotations    the primary descriptor's annotations (JSON)

`blob_chain_id` is unique: asking for the same blob on the same parent returns the same ref,
from any process (SQLite in WAL mode with a busy timeout serialises writers).
"""

from __future__ import annotations

import base64
import json
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from rafs.digest import Digest
from rafs.errors import FormatError, NotFound
from rafs.sqlitedb import Database

_COLUMNS = ("id, parent, blob, media_type, blob_size, diff_id, chain_id, blob_chain_id, "
            "annotations")  # fmt: skip


def new_ref_id() -> str:
    """A fresh ref id: 16 random bytes as lower-case base32 without padding (26 characters)."""
    return base64.b32encode(secrets.token_bytes(16)).decode().rstrip("=").lower()


@dataclass(frozen=True)
class RefRecord:
    """What the cache knows of one layer ref."""

    id: str
    parent: str | None
    blob: Digest
    media_type: str
    blob_size: int
    diff_id: Digest
    chain_id: Digest
    blob_chain_id: Digest
    annotations: Mapping[str, str] = field(default_factory=dict)


class RefTable:
    """The `refs` table of `<root>/cache.db`; a connection per call, so any thread may use it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._db = Database(path, [
            "CREATE TABLE IF NOT EXISTS refs (id TEXT PRIMARY KEY, parent TEXT, "
            "blob TEXT NOT NULL, media_type TEXT NOT NULL, blob_size INTEGER NOT NULL, "
            "diff_id TEXT NOT NULL, chain_id TEXT NOT NULL, "
            "blob_chain_id TEXT NOT NULL UNIQUE, annotations TEXT NOT NULL)"])  # fmt: skip
        self._connect = self._db.connect

    def add(self, record: RefRecord) -> RefRecord:
        """Insert `record` unless a ref with its blob_chain_id exists; return the stored one."""
        with self._connect() as db:
            db.execute(
                f"INSERT OR IGNORE INTO refs ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (record.id, record.parent, record.blob, record.media_type, record.blob_size,
                 record.diff_id, record.chain_id, record.blob_chain_id,
                 json.dumps(dict(record.annotations), sort_keys=True)),
            )  # fmt: skip
            row = db.execute(f"SELECT {_COLUMNS} FROM refs WHERE blob_chain_id=?",
                             (record.blob_chain_id,)).fetchone()  # fmt: skip
        return self._record(row)

    def get(self, ref_id: str) -> RefRecord:
        with self._connect() as db:
            row = db.execute(f"SELECT {_COLUMNS} FROM refs WHERE id=?", (ref_id,)).fetchone()
        if row is None:
            raise NotFound(f"ref {ref_id}: not found in {self.path}")
        return self._record(row)

    def all(self) -> list[RefRecord]:
        with self._connect() as db:
            rows = db.execute(f"SELECT {_COLUMNS} FROM refs ORDER BY rowid").fetchall()
        return [self._record(row) for row in rows]

    def _record(self, row: tuple[object, ...]) -> RefRecord:
        try:
            ref_id, parent, blob, media_type, size, diff_id, chain, blob_chain, notes = row
            return RefRecord(str(ref_id), None if parent is None else str(parent),
                             Digest(str(blob)), str(media_type), int(str(size)),
                             Digest(str(diff_id)), Digest(str(chain)), Digest(str(blob_chain)),
                             json.loads(str(notes)))  # fmt: skip
        except (ValueError, TypeError) as exc:
            raise FormatError(f"{self.path}: bad ref row {row[0]!r}: {exc}") from None
