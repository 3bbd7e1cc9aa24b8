"""Small file helpers: writers that hash what they pass on, atomic output files."""

from __future__ import annotations

import hashlib
import os
import secrets
from pathlib import Path
from types import TracebackType
from typing import BinaryIO


class HashingWriter:
    """Pass writes through to a binary stream, counting and hashing them with SHA-256."""

    def __init__(self, out: BinaryIO) -> None:
        self._out = out
        self._hash = hashlib.sha256()
        self._position = 0

    def write(self, data: bytes, /) -> int:
        self._out.write(data)
        self._hash.update(data)
        self._position += len(data)
        return len(data)

    def tell(self) -> int:
        return self._position

    def hexdigest(self) -> str:
        return self._hash.hexdigest()

    def running_sha256(self) -> bytes:
        """SHA-256 of everything written so far."""
        return self._hash.copy().digest()


class AtomicHashingFile(HashingWriter):
    """Write to a temp file beside `path`, hashing with SHA-256; `commit` renames it in.

    Nothing appears at `path` unless `commit` runs; leaving the context without it removes
    the temp file. Used as a context manager.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._temp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
        try:  # mode 0666 less the umask, like any new file (mkstemp would force 0600)
            fd = os.open(self._temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except OSError as exc:
            raise OSError(exc.errno, exc.strerror, str(path)) from None
        self._file = os.fdopen(fd, "wb", buffering=1 << 20)
        super().__init__(self._file)
        self._done = False

    def commit(self) -> None:
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        os.replace(self._temp, self.path)
        self._done = True

    def __enter__(self) -> AtomicHashingFile:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 tb: TracebackType | None) -> None:  # fmt: skip
        if not self._done:
            self._file.close()
            self._temp.unlink(missing_ok=True)


def write_atomic(path: Path, data: bytes) -> None:
    """Replace `path` with `data` atomically."""
    with AtomicHashingFile(path) as out:
        out.write(data)
        out.commit()
