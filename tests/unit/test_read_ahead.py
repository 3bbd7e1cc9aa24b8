"""Read-ahead of a mount's file reads: which chunks a streaming read has fetched ahead.

The FUSE operations run here without a kernel mount (called on a trio loop as pyfuse3
would); what they start fetching is read from the cache's claim counter (`cache_misses`
counts every chunk claimed for fetching, at the moment it is claimed), and the bytes they
serve are checked against the source.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from rafs.api import pack
from rafs.fuse.ops import RafsOperations
from rafs.reader.artifact import open_artifact
from rafs.reader.backend import LocalBackend
from rafs.reader.chunkcache import READAHEAD_BYTES, STREAMING_READ, ChunkCache
from tests.support.tarballs import make_tar

MIB = 1 << 20
FILES = {"a": 4 * MIB, "b": 4 * MIB, "c": 4 * MIB, "d": 300 << 10, "e": 2 * MIB, "f": 2 * MIB}
"""Name -> size; the image's chunks are 1 MiB (the default), all distinct (random data)."""


@pytest.fixture
def mounted(tmp_path: Path) -> Iterator[tuple[RafsOperations, dict[str, bytes]]]:
    data = {name: os.urandom(size) for name, size in FILES.items()}
    layer = tmp_path / "layer.nydus"
    with layer.open("wb") as out:
        pack(io.BytesIO(make_tar([(name, body, {}) for name, body in data.items()])), out)
    with open_artifact(layer) as artifact:
        cache = ChunkCache(artifact.image, LocalBackend.for_artifact(artifact), tmp_path / "cache")
        try:
            yield RafsOperations(artifact.image, cache), data
        finally:
            cache.close()


def _ino(ops: RafsOperations, name: str) -> int:
    attrs = trio.run(ops.lookup, ops.ino(ops.image.root_nid), name.encode(), None)
    return int(attrs.st_ino)


def _stream(ops: RafsOperations, ino: int, size: int, request: int = MIB) -> bytes:
    """Read a file as the kernel streams it: `request` bytes at a time, in order (each
    reply copied at once: it may be the cache file's mapped memory)."""

    async def run() -> bytes:
        parts = [bytes(await ops.read(ino, off, request)) for off in range(0, size, request)]
        return b"".join(parts)

    return trio.run(run)


def _read(ops: RafsOperations, ino: int, offset: int, size: int) -> bytes:
    """One read request."""

    async def run() -> bytes:
        return bytes(await ops.read(ino, offset, size))

    return trio.run(run)


def _claimed(ops: RafsOperations) -> int:
    return ops.cache.stats.cache_misses


def test_a_streamed_file_reads_ahead_into_the_next_file(
    mounted: tuple[RafsOperations, dict[str, bytes]],
) -> None:
    ops, data = mounted
    a, b = _ino(ops, "a"), _ino(ops, "b")
    assert READAHEAD_BYTES >= 8 * MIB  # the figures below assume a window of 8 chunks

    assert _read(ops, a, 0, MIB) == data["a"][:MIB]
    # a's 4 chunks, and b's first chunk: no more of b than was streamed from a (1 MiB)
    assert _claimed(ops) == 4 + 1

    assert _stream(ops, a, FILES["a"]) == data["a"]
    assert _claimed(ops) == 4 + 4  # all of b by the end of a; c is not a's next file
    assert _stream(ops, b, FILES["b"]) == data["b"]
    assert _claimed(ops) == 4 + 4 + 4  # b's chunks were not claimed again; c's now were


def test_a_file_read_in_one_small_request_reads_nothing_ahead(
    mounted: tuple[RafsOperations, dict[str, bytes]],
) -> None:
    ops, data = mounted
    d = _ino(ops, "d")
    assert _stream(ops, d, FILES["d"], request=STREAMING_READ - 4096) == data["d"]
    assert _claimed(ops) == 1  # d's one chunk; the 1 MiB reads ahead nothing


def test_spill_is_bounded_by_what_was_streamed(
    mounted: tuple[RafsOperations, dict[str, bytes]],
) -> None:
    ops, data = mounted
    d = _ino(ops, "d")
    assert _read(ops, d, 0, FILES["d"]) == data["d"]  # one streaming read
    assert _claimed(ops) == 1 + 1  # d, and e's first chunk only (300 KiB streamed)
