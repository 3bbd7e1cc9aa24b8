"""Running a FUSE mount: mount, serve until unmounted or signalled, then clean up.

`FuseMount.start()` mounts (the kernel sees the filesystem as soon as it returns, so a
caller can report readiness before serving), `serve()` runs pyfuse3's loop on trio until
the mount goes away (`umount`, `fusermount3 -u`) or SIGINT/SIGTERM arrives, which unmounts.
SIGUSR1 writes the statistics file; it is written again when the mount ends. A prefetch
runs in a background thread, in batches across files, and stops when the mount ends.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
from collections.abc import Callable, Iterable
from pathlib import Path

import pyfuse3
import trio

from rafs.errors import FailedPrecondition, RafsError
from rafs.fileio import write_atomic
from rafs.format.chunktable import ChunkInfo
from rafs.fuse.ops import RafsOperations
from rafs.reader.chunkcache import ChunkCache
from rafs.reader.image import RafsImage

log = logging.getLogger(__name__)

PREFETCH_BYTES = 8 << 20
"""File bytes a prefetch fetches at once."""
READAHEAD_KIB = 4096
"""Kernel read-ahead for the mount; FUSE's default 128 KiB makes 128-256 KiB requests."""


class FuseMount:
    """One image mounted through FUSE."""

    def __init__(self, image: RafsImage, cache: ChunkCache, mountpoint: Path,
                 stats_path: Path | None = None) -> None:  # fmt: skip
        self.image = image
        self.cache = cache
        self.mountpoint = mountpoint
        self.stats_path = stats_path
        self._stop = threading.Event()
        self._prefetcher: threading.Thread | None = None

    def start(self, fsname: str) -> None:
        """Mount; raises FailedPrecondition when FUSE refuses."""
        options = set(pyfuse3.default_options)
        options |= {"ro", f"fsname={fsname}", "subtype=rafs"}
        if os.geteuid() == 0:  # as a container root: for every user, setuid and devices work
            options |= {"allow_other", "suid", "dev"}
        try:
            pyfuse3.init(RafsOperations(self.image, self.cache), str(self.mountpoint), options)
        except RuntimeError as exc:
            raise FailedPrecondition(f"{self.mountpoint}: FUSE mount failed: {exc}") from None
        log.info("mounted %s on %s", fsname, self.mountpoint)

    def prefetch(self, nids: Iterable[int]) -> None:
        """Fetch the files at (or under) `nids` into the cache, in a background thread."""
        self._prefetcher = threading.Thread(target=self._prefetch, args=(list(nids),),
                                            name="prefetch", daemon=True)  # fmt: skip
        self._prefetcher.start()

    def serve(self, ready: Callable[[], None]) -> None:
        """Serve requests until the mount ends, then unmount and write the statistics.

        `ready()` is called once the mount answers a request of its own (a `statvfs`), so
        a caller reporting readiness knows the kernel handshake worked.
        """
        try:
            trio.run(self._main, ready)
        finally:
            self._stop.set()
            if self._prefetcher is not None:
                self._prefetcher.join()
            pyfuse3.close(unmount=True)
            log.info("unmounted %s", self.mountpoint)
            self.write_stats()

    async def _main(self, ready: Callable[[], None]) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._signals)
            nursery.start_soon(self._probe, ready)
            await pyfuse3.main()
            nursery.cancel_scope.cancel()

    async def _probe(self, ready: Callable[[], None]) -> None:
        st = await trio.to_thread.run_sync(os.stat, self.mountpoint, abandon_on_cancel=True)
        self._widen_readahead(st.st_dev)
        log.info("serving %s", self.mountpoint)
        ready()

    def _widen_readahead(self, device: int) -> None:
        """Let the kernel read ahead READAHEAD_KIB: fewer, 1 MiB read requests (needs root)."""
        knob = Path(f"/sys/class/bdi/{os.major(device)}:{os.minor(device)}/read_ahead_kb")
        try:
            knob.write_text(f"{READAHEAD_KIB}\n")
        except OSError as exc:
            log.info("%s: kernel read-ahead left as it is: %s", knob, exc.strerror)

    async def _signals(self) -> None:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGUSR1) as signals:
            async for signum in signals:
                if signum == signal.SIGUSR1:
                    self.write_stats()
                    continue
                log.info("%s: unmounting", signal.Signals(signum).name)
                pyfuse3.terminate()
                return

    def write_stats(self) -> None:
        if self.stats_path is None:
            return
        stats = self.cache.stats_dict()
        try:
            write_atomic(self.stats_path, json.dumps(stats, indent=2).encode() + b"\n")
        except OSError as exc:
            log.error("%s: cannot write statistics: %s", self.stats_path, exc)
            return
        log.info("statistics written to %s: %d bytes fetched in %d requests, %d cache hits",
                 self.stats_path, stats["bytes_fetched"], stats["requests"],
                 stats["cache_hits"])  # fmt: skip

    def _prefetch(self, nids: list[int]) -> None:
        """Fetch the files' missing chunks in batches of about PREFETCH_BYTES across files:
        the chunks of files stored together (a directory's small files) make one backend
        read, one request from a registry."""
        files = regular_files(self.image, nids)
        log.info("prefetch: %d files", len(files))
        batch: list[ChunkInfo] = []
        size = 0
        for nid in files:
            if self._stop.is_set():
                log.info("prefetch: stopped")
                return
            try:
                chunks = self.cache.missing_chunks(self.image.file_chunks(nid))
            except (RafsError, OSError) as exc:
                log.error("prefetch of nid %d failed: %s", nid, exc)
                continue
            batch += chunks
            size += sum(info.uncompressed_size for info in chunks)
            if size >= PREFETCH_BYTES:
                self._prefetch_batch(batch)
                batch, size = [], 0
        self._prefetch_batch(batch)
        log.info("prefetch: done")

    def _prefetch_batch(self, chunks: list[ChunkInfo]) -> None:
        if not chunks:
            return
        try:
            self.cache.fetch(chunks)
        except (RafsError, OSError) as exc:  # the rest of the batch is fetched all the same
            log.error("prefetch: %s", exc)


def regular_files(image: RafsImage, nids: Iterable[int]) -> list[int]:
    """The regular files among `nids` and under the directories among them, each once."""
    seen: set[int] = set()
    files: list[int] = []
    stack = list(reversed(list(nids)))
    while stack:
        nid = stack.pop()
        if nid in seen:
            continue
        seen.add(nid)
        st = image.stat(nid)
        if st.is_reg:
            files.append(nid)
        elif st.is_dir:
            stack.extend(reversed([e.nid for e in image.children(nid)]))
    return files
