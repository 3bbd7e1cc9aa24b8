"""`rafs mount --kernel`: every blob decompressed into the cache, then a kernel EROFS mount.

A complete blob cache file is the blob's uncompressed data at its uncompressed offsets
(`rafs.reader.cachefile`), which is what the kernel reads through `-o device=`. So this
fills every blob's cache, attaches each data file to a read-only loop device, and mounts a
copy of the bootstrap kept in the cache directory (`<key>.boot`) with one `device=` per
blob, in blob-table order. Each blob loop device is then detached at once: the kernel holds
it open, so the detach takes effect when the filesystem is unmounted, and `umount` alone
cleans up. The mount needs root.
"""

from __future__ import annotations

import hashlib
import logging
import os
import subprocess
from pathlib import Path

from rafs.errors import FailedPrecondition
from rafs.fileio import write_atomic
from rafs.reader.chunkcache import ChunkCache

log = logging.getLogger(__name__)


def fill_cache(cache: ChunkCache) -> None:
    """Fetch and decompress every chunk of every blob into the cache directory."""
    for index, blob in enumerate(cache.image.blobs):
        cache.fill_blob(index)
        log.info("blob %s: %d bytes uncompressed in %s", blob.id, blob.uncompressed_size,
                 cache.data_path(index))  # fmt: skip


def kernel_mount(cache: ChunkCache, mountpoint: Path) -> None:
    """Mount the image's bootstrap with the kernel, its blobs from the (full) cache."""
    if os.geteuid() != 0:
        raise FailedPrecondition(f"{mountpoint}: a kernel EROFS mount needs root")
    image = cache.image
    bootstrap = cache.directory / f"{hashlib.sha256(image.data).hexdigest()}.boot"
    if not bootstrap.exists():
        write_atomic(bootstrap, image.data)
    loops: list[str] = []
    try:
        for index in range(len(image.blobs)):
            loops.append(_run(["losetup", "--find", "--show", "--read-only",
                               str(cache.data_path(index))]).strip())  # fmt: skip
        options = ",".join(["ro", "loop", *(f"device={loop}" for loop in loops)])
        _run(["mount", "-t", "erofs", "-o", options, str(bootstrap), str(mountpoint)])
        log.info("mounted %s on %s with the kernel EROFS driver", bootstrap, mountpoint)
    finally:
        for loop in loops:
            _run(["losetup", "--detach", loop])


def _run(command: list[str]) -> str:
    try:
        result = subprocess.run(command, capture_output=True, text=True)
    except FileNotFoundError:
        raise FailedPrecondition(f"{command[0]} not found: apt-get install mount") from None
    if result.returncode != 0:
        raise FailedPrecondition(f"{' '.join(command)} failed: {result.stderr.strip()}")
    return result.stdout
