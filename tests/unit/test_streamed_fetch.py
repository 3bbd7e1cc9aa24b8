"""A layer converts while it downloads: the tee that hands the fetched bytes on, and the
threaded fetch whose bytes are read through a pipe."""

from __future__ import annotations

import io
import os
import threading

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from rafs.content import write_blob
from rafs.content.memory import MemoryStore
from rafs.content.tee import TeeIngester
from rafs.convert.streaming import PIPE_BYTES, NotStreamed, StreamedFetch
from rafs.digest import Digest
from rafs.errors import IntegrityError


def test_tee_passes_each_byte_once_across_a_resume_and_a_restart() -> None:
    store, passed = MemoryStore(), bytearray()
    tee = TeeIngester(store, passed.extend)
    data = os.urandom(10_000)
    with store.writer("ref") as writer:  # an earlier process's download, cut short
        writer.write(data[:3000])
    with tee.writer("ref") as writer:  # stale: its bytes never reached the sink, so restart
        assert writer.status().offset == 0
        writer.write(data[:4000])
        writer.write(data[4000:6000])  # a resumed download continues where it stands
        writer.truncate(0)  # the server ignored Range: everything again from 0
        writer.write(data[:5000])  # ... of which only the last 1000 bytes are new
        writer.write(data[5000:8000])
        writer.write(data[8000:])
        assert writer.commit(len(data), Digest.of(data)) == Digest.of(data)
    assert bytes(passed) == data


def test_streamed_fetch_gives_the_bytes_and_waits_for_the_verdict() -> None:
    data = os.urandom(3 * PIPE_BYTES + 123)  # more than the pipe holds: the fetch must wait
    store = MemoryStore()

    def fetch(sink: object) -> None:
        write_blob(TeeIngester(store, sink), "fetch", io.BytesIO(data),  # type: ignore[arg-type]
                   expected=Digest.of(data))  # fmt: skip

    streamed = StreamedFetch(fetch, "blob", len(data))
    assert streamed.stream.read() == data
    streamed.wait()
    assert streamed.fetched.result() is None and store.info(Digest.of(data)).size == len(data)


def test_streamed_fetch_raises_the_fetch_error_to_the_reader() -> None:
    def fetch(sink: object) -> None:
        sink(b"partial")  # type: ignore[operator]
        raise IntegrityError("blob: downloaded bytes with the wrong digest")

    streamed = StreamedFetch(fetch, "blob", 100)
    assert streamed.stream.read() == b"partial"
    with pytest.raises(IntegrityError, match="wrong digest"):
        streamed.wait()
    with pytest.raises(IntegrityError):
        streamed.fetched.result()


def test_a_reader_that_gives_up_stops_the_fetch() -> None:
    stopped = threading.Event()

    def fetch(sink: object) -> None:
        try:
            while True:
                sink(bytes(PIPE_BYTES))  # type: ignore[operator]
        finally:
            stopped.set()

    streamed = StreamedFetch(fetch, "blob", 1 << 40)
    streamed.stream.read(1000)
    assert streamed.cancel() is None  # only a broken pipe: the reader's own doing
    assert stopped.is_set()


def test_a_blob_stored_by_someone_else_is_not_streamed() -> None:
    streamed = StreamedFetch(lambda sink: None, "blob", 100)  # fetch found it in the store
    assert streamed.stream.read() == b""
    with pytest.raises(NotStreamed):
        streamed.wait()


@settings(max_examples=300, deadline=None)
@given(blob=st.binary(min_size=1, max_size=4000),
       events=st.lists(st.tuples(st.sampled_from(["drop", "restart"]), st.floats(0, 1)),
                       max_size=6),
       pieces=st.integers(1, 12))  # fmt: skip
@example(blob=bytes(range(200)) * 5, events=[("restart", 0.5)], pieces=10)
def test_tee_gives_the_blob_once_whatever_the_download_does(
    blob: bytes, events: list[tuple[str, float]], pieces: int
) -> None:
    """A download that drops (and resumes where the writer stands) or restarts from 0 (a
    server ignoring Range) at random points: the sink gets exactly the blob, once."""
    store, passed = MemoryStore(), bytearray()
    piece = -(-len(blob) // pieces)
    cuts = sorted((int(at * len(blob)), kind) for kind, at in events)
    with TeeIngester(store, passed.extend).writer("ref") as writer:
        position = 0
        while position < len(blob):
            if cuts and cuts[0][0] <= position:
                _, kind = cuts.pop(0)
                if kind == "restart":
                    writer.truncate(0)
                    position = 0
                continue  # a drop: the next request resumes at the writer's offset
            end = min(len(blob), position + piece, *(at for at, _ in cuts if at > position))
            writer.write(blob[position:end])
            position = end
        writer.commit(len(blob), Digest.of(blob))
    assert bytes(passed) == blob
