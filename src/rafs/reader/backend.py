"""Blob backends: where the stored (compressed) bytes of data blobs come from.

A backend answers one question, `read_range(blob_id, offset, size)`: the stored bytes of a
blob in [offset, offset+size); `read_into` is the same into the caller's buffer (a mount's
fetch threads reuse theirs), and `read_into_nowait` the same only if the bytes are at hand
(a local file's page cache; never for a network), so that a mount's event loop can serve a
small read itself instead of handing it to a fetch thread. Everything above it
(which chunks a read needs, merging adjacent chunks into one range, decompression, digest
checks, caching) lives in `rafs.reader.chunkcache`, so a new backend — e.g. HTTP Range
requests against a registry — implements only this protocol. Backends must be safe to
call from several threads at once.

`LocalBackend` serves blobs from local files (a `--blob-dir`, or the Nydus layer file that
carries its own blob). A file is located and opened on first use, so a mount whose blob
files are gone still serves whatever its cache already holds.

`BackendBlobSet` lets the read commands (cat, check, unpack, export) read an image whose
blobs are behind a backend (an image reference), one range per chunk and no cache.
"""

from __future__ import annotations

import contextlib
import errno
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from rafs.errors import FormatError, NotFound, RafsError, Unsupported
from rafs.format.chunktable import ChunkInfo
from rafs.reader.artifact import Artifact
from rafs.reader.blobs import BlobSet, unpack_chunk
from rafs.reader.image import RafsImage

READ_WINDOW = 8 << 20
"""Most stored bytes a read command fetches at once through a backend (`BackendBlobSet`)."""


class BlobBackend(Protocol):
    """Ranged reads of stored blob bytes, by blob id."""

    amplify_io: int
    """Stored bytes worth fetching in one read when less is asked for (the cache adds the
    chunks that follow): what a request costs beyond its bytes. 0 for local files."""

    def read_range(self, blob_id: str, offset: int, size: int) -> bytes:
        """Exactly `size` stored bytes of blob `blob_id` from `offset`; raises a RafsError."""
        ...

    def read_into(self, blob_id: str, offset: int, buffer: memoryview) -> None:
        """`read_range(blob_id, offset, len(buffer))`, written into `buffer`."""
        ...

    def read_into_nowait(self, blob_id: str, offset: int, buffer: memoryview) -> bool:
        """`read_into` if the bytes are at hand (no disk or network to wait for): True;
        else False, `buffer` left undefined."""
        ...

    def connect(self) -> None:
        """Get ready for a first read to be quick (open a connection, authenticate); raises
        a RafsError or OSError if that fails (reads would try again)."""
        ...

    def close(self) -> None: ...


class LocalBackend:
    """Blobs as local files, found by `locate(blob_id)` and read with `pread`."""

    amplify_io = 0  # a read costs its bytes only

    def __init__(self, locate: Callable[[str], Path]) -> None:
        self._locate = locate
        self._fds: dict[str, tuple[int, int, Path]] = {}  # blob id -> (fd, size, path)
        self._lock = threading.Lock()

    @classmethod
    def for_artifact(cls, artifact: Artifact) -> LocalBackend:
        """Blobs where `rafs cat` finds them: the layer file itself, or the blob folder."""
        index_of = {blob.id: blob.blob_index for blob in artifact.image.blobs}

        def locate(blob_id: str) -> Path:
            if blob_id not in index_of:
                raise NotFound(f"{artifact.image.source}: no blob {blob_id} in the image")
            return artifact.blobs.path(index_of[blob_id])

        return cls(locate)

    def _open(self, blob_id: str) -> tuple[int, int, Path]:
        with self._lock:
            known = self._fds.get(blob_id)
            if known is None:
                path = self._locate(blob_id)
                try:
                    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
                except FileNotFoundError:
                    raise NotFound(f"{path}: blob file is gone") from None
                known = (fd, os.fstat(fd).st_size, path)
                self._fds[blob_id] = known
            return known

    def read_range(self, blob_id: str, offset: int, size: int) -> bytes:
        fd, path = self._open_range(blob_id, offset, size)
        data = os.pread(fd, size, offset)
        if len(data) != size:
            raise FormatError(f"{path}: blob ends inside [{offset}, +{size})")
        return data

    def read_into(self, blob_id: str, offset: int, buffer: memoryview) -> None:
        size = len(buffer)
        fd, path = self._open_range(blob_id, offset, size)
        if os.preadv(fd, [buffer], offset) != size:
            raise FormatError(f"{path}: blob ends inside [{offset}, +{size})")

    def read_into_nowait(self, blob_id: str, offset: int, buffer: memoryview) -> bool:
        """A read that succeeds only from the page cache (`RWF_NOWAIT`): never waits for
        the disk. False also where the filesystem does not support it."""
        size = len(buffer)
        fd, _ = self._open_range(blob_id, offset, size)
        try:
            return os.preadv(fd, [buffer], offset, os.RWF_NOWAIT) == size
        except (BlockingIOError, InterruptedError):
            return False
        except OSError as exc:
            if exc.errno in (errno.EOPNOTSUPP, errno.EINVAL):
                return False
            raise

    def connect(self) -> None:
        """Nothing to do: a blob file is opened on first use."""

    def _open_range(self, blob_id: str, offset: int, size: int) -> tuple[int, Path]:
        """The open blob file and its path, once [offset, +size) is known to lie inside it."""
        fd, blob_size, path = self._open(blob_id)
        if offset < 0 or offset + size > blob_size:
            raise FormatError(f"{path}: range [{offset}, +{size}) lies past the end of the blob")
        return fd, path

    def close(self) -> None:
        with self._lock:
            for fd, _, _ in self._fds.values():
                os.close(fd)
            self._fds.clear()


class BackendBlobSet(BlobSet):
    """The blobs of an image read through a backend (which this set closes).

    The read commands go through an image's chunks mostly in the order they are stored, so
    where a request costs more than its bytes (`amplify_io`: a registry) a chunk's read
    fetches a window of the stored bytes from it, kept for the chunks that follow: the
    window starts at `amplify_io` bytes and doubles, up to READ_WINDOW, while the reads keep
    running on from its end (one file read alone fetches little more than it needs).
    """

    def __init__(self, image: RafsImage, backend: BlobBackend) -> None:
        super().__init__(image, None, None)
        self.backend = backend
        self._window: tuple[int, int, bytes] = (-1, 0, b"")  # blob index, offset, bytes
        self._lock = threading.Lock()

    def path(self, index: int) -> Path:
        raise Unsupported(f"{self.image.source}: blob {self.image.blobs[index].id} is not a "
                          "local file")  # fmt: skip

    def read_chunk(self, info: ChunkInfo, verify: bool = True) -> bytes:
        if info.blob_index >= len(self.image.blobs):
            raise FormatError(f"{self.image.source}: chunk names missing blob {info.blob_index}")
        blob = self.image.blobs[info.blob_index]
        stored = self._stored(info)
        where = f"{self.image.source}: blob {blob.id}: chunk {info.block_id.hex()[:16]}"
        return unpack_chunk(stored, info, blob.compression_algo, blob.digest_algo, verify, where)

    def _stored(self, info: ChunkInfo) -> bytes:
        """A chunk's stored bytes: from the window, or read with a new window from it."""
        start, size = info.compressed_offset, info.compressed_size
        blob = self.image.blobs[info.blob_index]
        if not self.backend.amplify_io:
            return self.backend.read_range(blob.id, start, size)
        with self._lock:
            index, offset, data = self._window
            if index == info.blob_index and offset <= start and start + size <= offset + len(data):
                return data[start - offset : start - offset + size]
            running_on = index == info.blob_index and start == offset + len(data)
        window = min(READ_WINDOW, 2 * len(data)) if running_on else self.backend.amplify_io
        length = min(window, blob.compressed_size - start)
        data = b""
        if length > size:
            with contextlib.suppress(RafsError):  # e.g. a blob size the image gets wrong
                data = self.backend.read_range(blob.id, start, length)
        if not data:
            data = self.backend.read_range(blob.id, start, size)
        with self._lock:
            self._window = (info.blob_index, start, data)
        return data[:size]

    def close(self) -> None:
        super().close()
        self.backend.close()
