"""The content store conformance suite: containerd's semantics, checked on any store.

A test module plugs a store in by subclassing `ContentStoreSuite` and providing a `store`
fixture that yields a fresh, empty store (see test_content_stores.py). The suite only uses
the protocols in `rafs.content`, so every implementation runs the same checks.
"""

from __future__ import annotations

import hashlib
import io
import threading
from dataclasses import dataclass
from typing import Any

import pytest

from rafs.content import Info, Store, open_writer, read_blob, write_blob
from rafs.digest import Digest
from rafs.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    Unavailable,
)  # fmt: skip


def sha(data: bytes) -> Digest:
    return Digest("sha256:" + hashlib.sha256(data).hexdigest())


def put(store: Store, data: bytes, ref: str = "put", labels: dict[str, str] | None = None
        ) -> Digest:  # fmt: skip
    with store.writer(ref) as w:
        w.write(data)
        return w.commit(len(data), sha(data), labels)


@dataclass(frozen=True)
class Desc:
    media_type: str
    digest: str
    size: int


class ContentStoreSuite:
    # -- write, commit, read ------------------------------------------------------------
    def test_write_commit_read(self, store: Store) -> None:
        data = b"hello, content store\n" * 1000
        with store.writer("ref-1", total=len(data)) as w:
            for i in range(0, len(data), 777):
                w.write(data[i : i + 777])
            assert w.digest() == sha(data)
            assert w.status().offset == len(data)
            assert w.commit(len(data), sha(data)) == sha(data)
        info = store.info(sha(data))
        assert (info.digest, info.size, dict(info.labels)) == (sha(data), len(data), {})
        assert read_blob(store, sha(data)) == data
        with pytest.raises(NotFound):
            store.status("ref-1")
        assert store.list_statuses() == []

    def test_commit_without_checks_and_empty_blob(self, store: Store) -> None:
        with store.writer("empty") as w:
            assert w.commit() == sha(b"")
        assert store.info(sha(b"")).size == 0
        assert read_blob(store, sha(b"")) == b""

    def test_read_at_ranges(self, store: Store) -> None:
        data = bytes(range(256)) * 64
        digest = put(store, data)
        with store.reader_at(Desc("application/octet-stream", digest, len(data))) as r:
            assert r.size == len(data)
            assert r.read_at(0, 10) == data[:10]
            assert r.read_at(1000, 3000) == data[1000:4000]
            assert r.read_at(len(data) - 5, 100) == data[-5:]
            assert r.read_at(len(data), 10) == b""
            assert r.read_at(len(data) + 100, 10) == b""
            assert r.read_at(7, 0) == b""
            with pytest.raises(InvalidArgument):
                r.read_at(-1, 5)

    def test_nothing_visible_before_commit(self, store: Store) -> None:
        data = b"not yet"
        with store.writer("pending") as w:
            w.write(data)
            for call in (store.info, store.reader_at, store.delete):
                with pytest.raises(NotFound):
                    call(sha(data))
            assert list(store.walk()) == []
            w.commit()
        assert [i.digest for i in store.walk()] == [sha(data)]

    # -- commit failures ----------------------------------------------------------------
    def test_size_mismatch_keeps_ingest(self, store: Store) -> None:
        w = store.writer("size")
        w.write(b"12345")
        with pytest.raises(FailedPrecondition):
            w.commit(4)
        with pytest.raises(FailedPrecondition):  # commit always closes the writer
            w.write(b"6")
        assert store.status("size").offset == 5
        with pytest.raises(NotFound):
            store.info(sha(b"12345"))
        with store.writer("size") as again:  # lock released; the ingest resumes
            assert again.status().offset == 5
            assert again.commit(5, sha(b"12345")) == sha(b"12345")

    def test_digest_mismatch_keeps_ingest(self, store: Store) -> None:
        w = store.writer("dgst")
        w.write(b"abc")
        with pytest.raises(FailedPrecondition):
            w.commit(3, sha(b"abd"))
        assert store.status("dgst").offset == 3
        assert list(store.walk()) == []
        store.abort("dgst")

    def test_commit_on_closed_writer(self, store: Store) -> None:
        w = store.writer("closed")
        w.write(b"x")
        w.close()
        w.close()  # idempotent
        with pytest.raises(FailedPrecondition):
            w.commit()
        assert store.status("closed").offset == 1

    def test_already_exists_at_commit_removes_ingest(self, store: Store) -> None:
        data = b"same bytes"
        put(store, data, "first", {"a": "1"})
        w = store.writer("second")
        w.write(data)
        with pytest.raises(AlreadyExists):
            w.commit(len(data), sha(data), {"a": "2", "b": "3"})
        with pytest.raises(NotFound):
            store.status("second")
        assert dict(store.info(sha(data)).labels) == {"a": "1"}  # commit labels not applied
        assert read_blob(store, sha(data)) == data

    def test_already_exists_at_open(self, store: Store) -> None:
        digest = put(store, b"present")
        with pytest.raises(AlreadyExists):
            store.writer("again", expected=digest)
        with pytest.raises(NotFound):
            store.status("again")

    # -- refs, locks, resume ------------------------------------------------------------
    def test_busy_ref_is_unavailable(self, store: Store) -> None:
        w = store.writer("busy")
        w.write(b"a")
        with pytest.raises(Unavailable):
            store.writer("busy")
        other = store.writer("not-busy")  # other refs are free
        other.close()
        w.close()
        with store.writer("busy") as again:
            assert again.status().offset == 1

    def test_open_writer_waits_for_the_lock(self, store: Store) -> None:
        w = store.writer("wait")
        releasing = threading.Event()

        def release() -> None:
            releasing.set()  # before the lock goes: a writer got too early if this is unset
            w.close()

        threading.Timer(0.1, release).start()
        with open_writer(store, "wait", timeout=10) as again:
            assert releasing.is_set(), "open_writer returned while the ref was still locked"
            assert again.status().ref == "wait"
        held = store.writer("held")
        try:
            with pytest.raises(Unavailable):
                open_writer(store, "held", timeout=0.1)
        finally:
            held.close()

    def test_resume(self, store: Store) -> None:
        data = b"0123456789" * 500
        with store.writer("resume", total=len(data)) as w:
            w.write(data[:1234])
        status = store.status("resume")
        assert (status.ref, status.offset, status.total) == ("resume", 1234, len(data))
        with store.writer("resume", total=len(data)) as w:
            assert w.status().offset == 1234
            assert w.digest() == sha(data[:1234])
            w.write(data[1234:])
            assert w.commit(len(data), sha(data)) == sha(data)

    def test_write_blob_resumes_from_stream(self, store: Store) -> None:
        data = b"stream me" * 1000
        with store.writer("copy") as w:
            w.write(data[:100])
        digest = write_blob(store, "copy", io.BytesIO(data), size=len(data), expected=sha(data))
        assert digest == sha(data)
        assert read_blob(store, digest) == data
        # present already: success without touching the source
        assert write_blob(store, "copy2", io.BytesIO(b""), expected=sha(data)) == sha(data)

    def test_truncate(self, store: Store) -> None:
        with store.writer("trunc") as w:
            w.write(b"stale bytes")
        with store.writer("trunc") as w:
            assert w.status().offset == 11
            with pytest.raises(InvalidArgument):
                w.truncate(3)
            w.truncate(0)
            assert w.status().offset == 0
            assert w.digest() == sha(b"")
            w.write(b"fresh")
            assert w.commit(5, sha(b"fresh")) == sha(b"fresh")
        assert read_blob(store, sha(b"fresh")) == b"fresh"

    def test_abort(self, store: Store) -> None:
        with store.writer("abort") as w:
            w.write(b"discard me")
        store.abort("abort")
        with pytest.raises(NotFound):
            store.status("abort")
        with pytest.raises(NotFound):
            store.abort("abort")
        with store.writer("abort") as w:
            assert w.status().offset == 0

    def test_empty_ref(self, store: Store) -> None:
        with pytest.raises(InvalidArgument):
            store.writer("")

    def test_status_and_list_statuses(self, store: Store) -> None:
        for ref, size in (("a-1", 3), ("a-2", 4), ("b-1", 5)):
            with store.writer(ref, total=10) as w:
                w.write(b"x" * size)
        statuses = {s.ref: s for s in store.list_statuses()}
        assert {r: (s.offset, s.total) for r, s in statuses.items()} == {
            "a-1": (3, 10), "a-2": (4, 10), "b-1": (5, 10)}  # fmt: skip
        status = store.status("a-2")
        assert status.started_at <= status.updated_at
        assert [s.ref for s in store.list_statuses("ref~=^a-")] == ["a-1", "a-2"]
        assert [s.ref for s in store.list_statuses("ref==b-1")] == ["b-1"]
        assert [s.ref for s in store.list_statuses("ref==a-1", "ref==b-1")] == ["a-1", "b-1"]
        with pytest.raises(NotFound):
            store.status("nope")

    # -- info, update, walk, delete -----------------------------------------------------
    def test_info_update_labels(self, store: Store) -> None:
        digest = put(store, b"labelled", labels={"a": "1", "b": "2"})
        info = store.info(digest)
        assert dict(info.labels) == {"a": "1", "b": "2"}
        assert info.created_at <= info.updated_at
        new = store.update(Info(digest, labels={"b": "20", "c": "3"}), "labels.b", "labels.c")
        assert dict(new.labels) == {"a": "1", "b": "20", "c": "3"}
        new = store.update(Info(digest, labels={}), "labels.a")  # absent in info: removed
        assert dict(new.labels) == {"b": "20", "c": "3"}
        new = store.update(Info(digest, labels={"c": ""}), "labels.c")  # empty value removes
        assert dict(new.labels) == {"b": "20"}
        new = store.update(Info(digest, labels={"x": "y", "z": ""}), "labels")
        assert dict(new.labels) == {"x": "y"}
        new = store.update(Info(digest, labels={"only": "this"}))  # no paths: replace all
        assert dict(store.info(digest).labels) == {"only": "this"} == dict(new.labels)
        assert new.size == len(b"labelled")
        with pytest.raises(InvalidArgument):
            store.update(Info(digest, labels={}), "size")
        with pytest.raises(NotFound):
            store.update(Info(sha(b"missing"), labels={"a": "1"}))

    def test_label_validation(self, store: Store) -> None:
        w = store.writer("bad-labels")
        w.write(b"data")
        with pytest.raises(InvalidArgument):
            w.commit(labels={"": "empty key"})
        assert store.status("bad-labels").offset == 4
        with store.writer("bad-labels") as w, pytest.raises(InvalidArgument):
            w.commit(labels={"k": "v" * 4096})
        digest = put(store, b"data", "ok", {"k": "v" * 4095})  # key+value = 4096 is allowed
        with pytest.raises(InvalidArgument):
            store.update(Info(digest, labels={"k": "v" * 4096}), "labels.k")
        with pytest.raises(InvalidArgument):
            store.update(Info(digest, labels={"é": "v" * 4095}), "labels.é")  # bytes count
        assert dict(store.info(digest).labels) == {"k": "v" * 4095}

    def test_walk_filters(self, store: Store) -> None:
        one = put(store, b"one", "r1", {"kind": "layer", "containerd.io/uncompressed": "x"})
        two = put(store, b"two", "r2", {"kind": "config"})
        three = put(store, b"three", "r3", {})

        def walk(*filters: str) -> set[Digest]:
            return {info.digest for info in store.walk(*filters)}

        assert walk() == {one, two, three}
        assert walk("labels.kind==layer") == {one}
        assert walk('labels."kind"=="config"') == {two}
        assert walk("labels.kind") == {one, two}
        assert walk("labels.kind!=layer") == {two, three}
        assert walk("labels.kind~=^(lay|conf)") == {one, two}
        assert walk("labels.containerd.io/uncompressed==x") == {one}
        assert walk('labels."containerd.io/uncompressed"') == {one}
        assert walk("labels.kind==layer,labels.containerd.io/uncompressed==y") == set()
        assert walk("labels.kind==layer", "labels.kind==config") == {one, two}
        assert walk(f"digest=={three}") == {three}
        assert walk("labels.nope") == set()
        for bad in ("", "labels.==x", "labels.k==\"x", "labels.k~=(", "%%"):
            with pytest.raises(InvalidArgument):
                list(store.walk(bad))
        info = next(iter(store.walk("labels.kind==config")))
        assert (info.size, dict(info.labels)) == (3, {"kind": "config"})

    def test_delete(self, store: Store) -> None:
        digest = put(store, b"doomed", labels={"a": "1"})
        store.delete(digest)
        for call in (store.info, store.reader_at, store.delete):
            with pytest.raises(NotFound):
                call(digest)
        assert list(store.walk()) == []
        assert put(store, b"doomed") == digest  # content can come back, without old labels
        assert dict(store.info(digest).labels) == {}

    def test_reader_survives_delete(self, store: Store) -> None:
        digest = put(store, b"still readable")
        with store.reader_at(digest) as r:
            store.delete(digest)
            assert r.read_at(0, 100) == b"still readable"

    def test_bad_digests(self, store: Store) -> None:
        for bad in ("sha256:abc", "md5:" + "0" * 32, "SHA256:" + "0" * 64, "0" * 64):
            for call in (store.info, store.reader_at, store.delete):
                with pytest.raises(InvalidArgument):
                    call(bad)
        with pytest.raises(InvalidArgument):
            store.writer("x", expected="sha256:nothex")

    def test_threads_write_distinct_refs(self, store: Store) -> None:
        blobs = [bytes([i]) * (10_000 + i) for i in range(8)]
        errors: list[Any] = []

        def work(i: int) -> None:
            try:
                with open_writer(store, f"thread-{i}") as w:
                    for k in range(0, len(blobs[i]), 1000):
                        w.write(blobs[i][k : k + 1000])
                    w.commit(len(blobs[i]), sha(blobs[i]))
            except Exception as exc:  # pragma: no cover - reported below
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        assert {i.digest for i in store.walk()} == {sha(b) for b in blobs}

    def test_threads_contend_for_one_ref(self, store: Store) -> None:
        data = b"contended" * 100
        outcomes: list[str] = []
        lock = threading.Lock()

        def work() -> None:
            try:
                w = store.writer("one-ref")
            except Unavailable:
                outcome = "unavailable"
            else:
                with w:
                    w.truncate(0)
                    w.write(data)
                    try:
                        w.commit(len(data), sha(data))
                        outcome = "committed"
                    except AlreadyExists:
                        outcome = "exists"
            with lock:
                outcomes.append(outcome)

        threads = [threading.Thread(target=work) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert outcomes.count("committed") == 1
        assert read_blob(store, sha(data)) == data
