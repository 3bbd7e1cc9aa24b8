"""How a mount's file reads fetch: read-ahead of streamed files, small reads inline.

The FUSE operations run here without a kernel mount (called on a trio loop as pyfuse3
would); what they start fetching is read from the cache's claim counter (`cache_misses`
counts every chunk claimed for fetching, at the moment it is claimed), and the bytes they
serve are checked against the source.
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyfuse3
import pytest
import trio

from rafs.api import pack
from rafs.fuse.ops import RafsOperations
from rafs.reader.artifact import open_artifact
from rafs.reader.backend import LocalBackend
from rafs.reader.chunkcache import READAHEAD_BYTES, STREAMING_READ, ChunkCache
from tests.support.tarballs import make_tar

MIB = 1 << 20
FILES = {"a": 4 * MIB, "b": 4 * MIB, "c": 4 * MIB, "d": 300 << 10, "e": 2 * MIB, "f": 2 * MIB,
         "g": 1000}  # fmt: skip
"""Name -> size; the image's chunks are 1 MiB (the default), all distinct (random data)."""
WALKED = {"w/0": 1000, "w/1": 1000, "w/2": 1000, "w/3": 200 << 10, "w/4": 1000, "w/5": 2 * MIB,
          "w/6": 1000, "w/7": 3 * MIB}  # fmt: skip
"""A directory to walk: small files between larger ones."""


class RecordingBackend(LocalBackend):
    """A local blob backend that notes which thread makes each read, and how."""

    at_hand = True  # False: never has bytes at hand, as a registry

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.reads: list[tuple[str, str]] = []

    def read_into(self, blob_id: str, offset: int, buffer: memoryview) -> None:
        self.reads.append(("wait", threading.current_thread().name))
        super().read_into(blob_id, offset, buffer)

    def read_into_nowait(self, blob_id: str, offset: int, buffer: memoryview) -> bool:
        self.reads.append(("nowait", threading.current_thread().name))
        return self.at_hand and super().read_into_nowait(blob_id, offset, buffer)


class WaitingBackend(RecordingBackend):
    at_hand = False


@contextlib.contextmanager
def _mount(tmp_path: Path, backend: type[RecordingBackend] = RecordingBackend,
           limit: int | None = None) -> Iterator[tuple[RafsOperations, dict[str, bytes]]]:
    data = {name: os.urandom(size) for name, size in (FILES | WALKED).items()}
    entries: list[tuple[str, bytes | None, dict[str, object]]] = [("w", None, {})]
    entries += [(name, body, {}) for name, body in data.items()]
    layer = tmp_path / "layer.nydus"
    with layer.open("wb") as out:
        pack(io.BytesIO(make_tar(entries)), out)
    with open_artifact(layer) as artifact:
        cache = ChunkCache(artifact.image, backend.for_artifact(artifact), tmp_path / "cache",
                           limit)  # fmt: skip
        try:
            yield RafsOperations(artifact.image, cache), data
        finally:
            cache.close()


@pytest.fixture
def mounted(tmp_path: Path) -> Iterator[tuple[RafsOperations, dict[str, bytes]]]:
    with _mount(tmp_path) as mount:
        yield mount


@pytest.fixture
def mounted_waiting(tmp_path: Path) -> Iterator[tuple[RafsOperations, dict[str, bytes]]]:
    with _mount(tmp_path, WaitingBackend) as mount:
        yield mount


def _ino(ops: RafsOperations, path: str) -> int:
    """Look a path up as the kernel does, a component at a time."""
    ino = ops.ino(ops.image.root_nid)
    for name in path.split("/"):
        ino = int(trio.run(ops.lookup, ino, name.encode(), None).st_ino)
    return ino


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


def _reads(ops: RafsOperations) -> list[tuple[str, str]]:
    backend = ops.cache.backend
    assert isinstance(backend, RecordingBackend)
    return backend.reads


def test_a_small_read_at_hand_is_fetched_on_the_reading_thread(
    mounted: tuple[RafsOperations, dict[str, bytes]],
) -> None:
    ops, data = mounted
    g = _ino(ops, "g")
    assert _read(ops, g, 0, FILES["g"]) == data["g"]  # the layer was just written: at hand
    assert _reads(ops) == [("nowait", threading.current_thread().name)]

    e = _ino(ops, "e")  # 1 MiB chunks: more than a reading thread fetches
    assert _read(ops, e, 0, 4096) == data["e"][:4096]
    assert _reads(ops)[1:] == [("wait", "chunk-fetch_0")]


def test_small_reads_without_bytes_at_hand_go_to_fetch_threads(
    mounted_waiting: tuple[RafsOperations, dict[str, bytes]],
) -> None:
    ops, data = mounted_waiting
    g = _ino(ops, "g")
    assert _read(ops, g, 0, FILES["g"]) == data["g"]
    [nowait, (how, thread)] = _reads(ops)
    assert nowait[0] == "nowait" and how == "wait" and thread.startswith("chunk-fetch")


def test_a_corrupt_small_chunk_fetched_inline_fails_only_its_read(
    mounted: tuple[RafsOperations, dict[str, bytes]], tmp_path: Path
) -> None:
    ops, data = mounted
    g = _ino(ops, "g")
    [chunk] = ops.image.file_chunks(ops.nid(g))
    with (tmp_path / "layer.nydus").open("r+b") as layer:
        layer.seek(chunk.compressed_offset + chunk.compressed_size // 2)
        byte = layer.read(1)
        layer.seek(-1, io.SEEK_CUR)
        layer.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(pyfuse3.FUSEError) as failed:
        _read(ops, g, 0, FILES["g"])
    assert failed.value.errno == errno.EIO
    assert _reads(ops) == [("nowait", threading.current_thread().name)]
    assert ops.cache.stats.corrupt_chunks == 1
    d = _ino(ops, "d")
    assert _read(ops, d, 0, FILES["d"]) == data["d"]


def test_a_bug_in_one_request_fails_it_alone(
    mounted: tuple[RafsOperations, dict[str, bytes]], monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    ops, data = mounted
    g, d = _ino(ops, "g"), _ino(ops, "d")
    real_stat = ops.image.stat

    def broken_stat(nid: int) -> object:
        if nid == ops.nid(g):
            raise ValueError("a bug")
        return real_stat(nid)

    monkeypatch.setattr(ops.image, "stat", broken_stat)
    with pytest.raises(pyfuse3.FUSEError) as failed:
        _read(ops, g, 0, FILES["g"])
    assert failed.value.errno == errno.EIO
    [record] = [r for r in caplog.records if "internal error" in r.getMessage()]
    assert record.exc_info is not None and "a bug" in str(record.exc_info[1])
    assert _read(ops, d, 0, FILES["d"]) == data["d"]  # the next request is served


def _chunks(*sizes: int) -> int:
    return sum(-(-size // MIB) for size in sizes)


def test_a_directory_read_in_order_has_its_files_fetched_ahead(
    mounted: tuple[RafsOperations, dict[str, bytes]],
) -> None:
    ops, data = mounted
    for name in ("w/0", "w/1"):
        assert _read(ops, _ino(ops, name), 0, 4096) == data[name]
    assert _claimed(ops) == 2  # two files in order: not yet a walk
    assert _read(ops, _ino(ops, "w/2"), 0, 4096) == data["w/2"]
    assert _claimed(ops) == _chunks(*WALKED.values())  # a walk: all of w/3 to w/7 fetched
    for name in ("w/3", "w/4", "w/5", "w/6", "w/7"):
        assert _stream(ops, _ino(ops, name), WALKED[name])[: WALKED[name]] == data[name]
    assert _claimed(ops) == _chunks(*WALKED.values())  # and read from there
    # the 8 chunks ahead in jobs of about 1 MiB, each one backend read of adjacent chunks:
    # [w/3, w/4, w/5 #0], [w/5 #1], [w/6, w/7 #0], [w/7 #1], [w/7 #2]
    assert len([how for how, _ in _reads(ops) if how == "wait"]) == 5


def test_files_read_out_of_order_fetch_nothing_ahead(
    mounted: tuple[RafsOperations, dict[str, bytes]],
) -> None:
    ops, data = mounted
    for name in ("w/7", "w/0", "w/6", "w/1", "w/4", "w/2"):  # a lazy start: back and forth
        assert _read(ops, _ino(ops, name), 0, 4096) == data[name][:4096]
    assert _claimed(ops) == 6


def test_a_walk_under_a_tight_cache_limit_fetches_no_further_than_its_window(
    tmp_path: Path,
) -> None:
    with _mount(tmp_path, limit=8 * MIB) as (ops, data):  # a read-ahead window of 2 MiB
        assert ops.cache.readahead_window == 2 * MIB
        for name in ("w/0", "w/1", "w/2"):
            assert _read(ops, _ino(ops, name), 0, 4096) == data[name]
        # w/3 (200 KiB), w/4 and the 1.8 MiB of w/5 that fit: w/6, w/7 are beyond it
        assert _claimed(ops) == 3 + _chunks(WALKED["w/3"], WALKED["w/4"], WALKED["w/5"])


class RemoteLikeBackend(WaitingBackend):
    """Bytes never at hand, and a request worth 128 KiB: as a registry."""

    amplify_io = 128 << 10


def test_a_fetch_takes_the_chunks_stored_after_it_up_to_amplify_io(tmp_path: Path) -> None:
    with _mount(tmp_path, RemoteLikeBackend) as (ops, data):
        assert ops.cache.amplify_io == 128 << 10
        assert _read(ops, _ino(ops, "w/1"), 0, 4096) == data["w/1"]
        # w/1 and w/2 (1000 bytes each, stored next) in one read; w/3 (200 KiB) does not fit
        assert _claimed(ops) == 2
        assert [how for how, _ in _reads(ops)] == ["nowait", "wait"]
        assert _read(ops, _ino(ops, "w/2"), 0, 4096) == data["w/2"]  # fetched along
        assert _read(ops, _ino(ops, "w/0"), 0, 4096) == data["w/0"]  # w/1 after it is cached
        assert _claimed(ops) == 3
        assert [how for how, _ in _reads(ops)] == ["nowait", "wait"] * 2
