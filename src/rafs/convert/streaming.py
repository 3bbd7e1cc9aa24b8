"""Run a blob's fetch in a thread of its own and read its bytes as they arrive, through a pipe.

A cold layer converts while it downloads: `StreamedFetch(fetch)` starts `fetch(sink)` - a
download into the content store that gives each byte to `sink` once (`content.tee`) - and
`stream` reads those bytes. The pipe holds at most `PIPE_BYTES`, so neither side runs ahead
of the other by more than that. Closing `stream` early (the reader failed) makes the fetch's
next write fail, which stops it.

`wait()` joins the fetch and raises its error; it is what a reader calls before it publishes
anything made from the bytes, which are verified only when the fetch commits. It raises
`NotStreamed` when fewer bytes than the blob's size reached the stream: another process had
stored the blob (or was storing it), so nothing was downloaded here. `fetched` is the fetch's
outcome as a future, for whoever waits for the blob to be in the store.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import BinaryIO

from rafs.content.tee import Sink

PIPE_BYTES = 1 << 20


class NotStreamed(Exception):
    """The blob was stored without passing through the stream (another process had it)."""


class StreamedFetch:
    """`fetch(sink)` in a thread; its bytes readable from `stream` (see the module docstring)."""

    def __init__(self, fetch: Callable[[Sink], None], name: str, size: int) -> None:
        read_fd, write_fd = os.pipe2(os.O_CLOEXEC)
        with contextlib.suppress(OSError):  # a smaller pipe only means more wake-ups
            fcntl.fcntl(write_fd, fcntl.F_SETPIPE_SZ, PIPE_BYTES)
        self.stream: BinaryIO = open(read_fd, "rb")  # noqa: SIM115 (closed by wait/cancel)
        self.passed = 0
        self.fetched: Future[None] = Future()
        self._size = size
        self._pipe = open(write_fd, "wb")  # noqa: SIM115 (closed by the fetch thread)
        self._fetch = fetch
        self._thread = threading.Thread(target=self._run, name=f"fetch {name}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            with self._pipe:
                self._fetch(self._give)
        except BaseException as exc:  # handed to the reading thread by wait()
            self.fetched.set_exception(exc)
        else:
            self.fetched.set_result(None)

    def _give(self, data: bytes) -> None:
        self._pipe.write(data)
        self.passed += len(data)

    def wait(self) -> None:
        """Join the fetch; raise what it raised."""
        self._thread.join()
        self.stream.close()
        self.fetched.result()  # raises what the fetch raised
        if self.passed < self._size:
            raise NotStreamed(f"{self.passed} of {self._size} bytes streamed")

    def cancel(self) -> BaseException | None:
        """Stop reading, join the fetch, and return its error unless it only saw the stream
        closed under it."""
        self.stream.close()
        self._thread.join()
        error = self.fetched.exception()
        return None if isinstance(error, BrokenPipeError) else error
