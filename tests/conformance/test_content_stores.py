"""Every content store runs the conformance suite; LocalStore also its on-disk contract.

LocalStore-only checks: containerd's exact layout, read-only blobs, locks held across
processes, a writer SIGKILLed at random points (never a partial blob; the ingest resumes),
and two processes committing the same content (exactly one wins). A hypothesis property
drives random interleavings of writer operations on both stores.
"""

from __future__ import annotations

import errno
import hashlib
import os
import random
import re
import signal
import stat
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rafs.content import Store, Writer, read_blob
from rafs.content.local import LocalStore, format_time, parse_time
from rafs.content.memory import MemoryStore
from rafs.errors import AlreadyExists, FailedPrecondition, NotFound, Unavailable
from tests.conformance.content_suite import ContentStoreSuite, sha

StoreFactory = Callable[[Path], Store]
FACTORIES: dict[str, StoreFactory] = {
    "memory": lambda tmp: MemoryStore(),
    "local": lambda tmp: LocalStore(tmp / "store"),
}


@pytest.fixture(params=sorted(FACTORIES))
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Store:
    return FACTORIES[request.param](tmp_path)


class TestContentStores(ContentStoreSuite):
    """The shared suite, once per store factory."""


# -- LocalStore: the on-disk contract ---------------------------------------------------

RFC3339NANO = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,9})?(Z|[+-]\d\d:\d\d)")


def test_local_layout(tmp_path: Path) -> None:
    root = tmp_path / "store"
    store = LocalStore(root)
    ref = "nydus-merge-sha256:abc"
    data = b"layout bytes"
    with store.writer(ref, total=len(data)) as w:
        w.write(data[:5])
    ingest = root / "ingest" / hashlib.sha256(ref.encode()).hexdigest()
    assert sorted(os.listdir(root / "ingest")) == [ingest.name]
    assert sorted(os.listdir(ingest)) == ["data", "ref", "startedat", "total", "updatedat"]
    assert (ingest / "ref").read_bytes() == ref.encode()
    assert (ingest / "total").read_bytes() == str(len(data)).encode()
    assert (ingest / "data").read_bytes() == data[:5]
    for name in ("startedat", "updatedat"):
        assert RFC3339NANO.fullmatch((ingest / name).read_text())
    with store.writer(ref) as w:
        w.write(data[5:])
        w.commit(len(data), sha(data))
    blob = root / "blobs" / "sha256" / sha(data).hex
    assert blob.read_bytes() == data
    assert stat.S_IMODE(blob.stat().st_mode) == 0o444
    assert blob.stat().st_nlink == 1
    assert os.listdir(root / "ingest") == []
    assert os.listdir(root / "blobs" / "sha256") == [blob.name]
    assert {p.name for p in root.iterdir()} - {"metadata.db-wal", "metadata.db-shm"} == {
        "blobs", "ingest", "metadata.db"}  # fmt: skip


def test_local_resumes_containerd_ingest(tmp_path: Path) -> None:
    """An ingest as containerd writes it (Go timestamps with an offset) resumes."""
    store = LocalStore(tmp_path)
    ref = "containerd-ref"
    ingest = store.ingest_path(ref)
    ingest.mkdir()
    (ingest / "ref").write_text(ref)
    (ingest / "data").write_bytes(b"partial")
    (ingest / "startedat").write_text("2024-05-06T07:08:09.123456789+02:00")
    (ingest / "updatedat").write_text("2024-05-06T07:08:10+02:00")
    status = store.status(ref)
    assert (status.offset, status.total) == (7, 0)
    assert status.started_at == parse_time("2024-05-06T05:08:09.123456Z")
    with store.writer(ref) as w:
        assert (w.status().offset, w.digest()) == (7, sha(b"partial"))
        w.write(b" and the rest")
        w.commit(0, sha(b"partial and the rest"))


def test_local_format_time() -> None:
    assert format_time(0) == "1970-01-01T00:00:00Z"
    assert format_time(1_500_000_000_120_000_000) == "2017-07-14T02:40:00.12Z"


def test_local_incomplete_ingest_restarts(tmp_path: Path) -> None:
    """A crash before `ref` was written leaves an ingest that starts over."""
    store = LocalStore(tmp_path)
    ingest = store.ingest_path("r")
    ingest.mkdir()
    (ingest / "data").write_bytes(b"junk")
    assert store.list_statuses() == []
    with store.writer("r") as w:
        assert w.status().offset == 0
    assert (ingest / "data").read_bytes() == b""


def test_local_commit_without_hard_links(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                        ) -> None:  # fmt: skip
    def no_link(src: object, dst: object) -> None:
        raise OSError(errno.EPERM, "no hard links here")

    monkeypatch.setattr(os, "link", no_link)
    store = LocalStore(tmp_path)
    first, second = store.writer("a"), store.writer("b")
    for w in (first, second):
        w.write(b"same")
    assert first.commit(4, sha(b"same")) == sha(b"same")
    with pytest.raises(AlreadyExists):
        second.commit(4, sha(b"same"))
    assert store.list_statuses() == []
    assert read_blob(store, sha(b"same")) == b"same"
    assert stat.S_IMODE((tmp_path / "blobs" / "sha256" / sha(b"same").hex).stat().st_mode) == 0o444


def test_local_missing_store_without_create(tmp_path: Path) -> None:
    with pytest.raises(NotFound):
        LocalStore(tmp_path / "absent", create=False)


# -- LocalStore across processes --------------------------------------------------------

CHILD_PRELUDE = """
import sys, time
from rafs.content.local import LocalStore
from rafs.errors import AlreadyExists, Unavailable
store = LocalStore(sys.argv[1])
"""


def child(code: str, *args: str) -> subprocess.Popen[str]:
    source = CHILD_PRELUDE + textwrap.dedent(code)
    return subprocess.Popen([sys.executable, "-c", source, *args], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)  # fmt: skip


def test_local_busy_ref_across_processes(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    holder = child("""
        w = store.writer("shared-ref")
        w.write(b"held")
        print("ready", flush=True)
        sys.stdin.read()
    """, str(tmp_path))  # fmt: skip
    assert holder.stdout is not None and holder.stdin is not None
    try:
        assert holder.stdout.readline().strip() == "ready"
        with pytest.raises(Unavailable):
            store.writer("shared-ref")
        with pytest.raises(Unavailable):
            store.abort("shared-ref")
    finally:
        holder.kill()  # the kernel drops the flock with the process
        holder.wait()
    with store.writer("shared-ref") as w:
        assert w.status().offset == 4
    tryer = child("""
        try:
            store.writer("mine")
        except Unavailable:
            print("unavailable")
    """, str(tmp_path))  # fmt: skip
    with store.writer("mine"):
        out, _ = tryer.communicate(timeout=30)
    assert out.strip() == "unavailable"


def test_local_writer_killed_fifty_times_resumes(tmp_path: Path) -> None:
    """A writer SIGKILLed 50 times, between writes or racing one: no blob ever appears, the
    ingest data is always a prefix of the source, and a last writer resumes and commits.

    The victim writes one 64 KiB piece per line it reads, so the parent chooses how far each
    life gets; the data is large enough that 50 short lives never finish it."""
    piece = 64 << 10
    data = random.Random(5).randbytes(256 * piece)
    source = tmp_path / "source"
    source.write_bytes(data)
    root = tmp_path / "store"
    store = LocalStore(root)
    code = f"""
        from rafs.content import open_writer
        data = open(sys.argv[2], "rb").read()
        w = open_writer(store, "victim", total=len(data))
        off = w.status().offset
        print(off, flush=True)
        for _ in sys.stdin:
            w.write(data[off : off + {piece}])
            off += {piece}
            print("w", flush=True)
    """
    rng = random.Random(13)
    for _ in range(50):
        proc = child(code, str(root), str(source))
        assert proc.stdout is not None and proc.stdin is not None
        proc.stdout.readline()  # the lock is held and the offset known
        for _ in range(rng.randint(0, 3)):
            proc.stdin.write("go\n")
            proc.stdin.flush()
            proc.stdout.readline()
        if rng.random() < 0.5:  # race a write in progress
            proc.stdin.write("go\n")
            proc.stdin.flush()
        proc.send_signal(signal.SIGKILL)
        proc.communicate()
        blobs = root / "blobs" / "sha256"
        assert not blobs.exists() or not any(blobs.iterdir())
        written = (store.ingest_path("victim") / "data").read_bytes()
        assert written == data[: len(written)]
    with store.writer("victim") as w:
        offset = w.status().offset
        assert 0 < offset < len(data) and w.digest() == sha(data[:offset])
        w.write(data[offset:])
        w.commit(len(data), sha(data))
    assert read_blob(store, sha(data)) == data


def test_local_sigkill_at_random_points(tmp_path: Path) -> None:
    """SIGKILL a writer at random points (mid-write, mid-commit) until one gets through.

    After every kill: no blob but the complete, verified one is ever visible; the ingest's
    data is a prefix of the source and the next writer resumes from it.
    """
    chunk = 64 << 10
    data = random.Random(7).randbytes(24 * chunk)
    source = tmp_path / "source"
    source.write_bytes(data)
    root = tmp_path / "store"
    store = LocalStore(root)
    code = f"""
        from rafs.content import open_writer
        data = open(sys.argv[2], "rb").read()
        w = open_writer(store, "victim", total=len(data))
        off = w.status().offset
        print(off, flush=True)
        while off < len(data):
            w.write(data[off : off + {chunk}])
            off += {chunk}
            print("w", flush=True)
        print("c", flush=True)
        try:
            w.commit(len(data), sys.argv[3])
        except AlreadyExists:
            pass
        print("done", flush=True)
    """
    rng = random.Random(11)
    kills = 0
    for _ in range(50):
        proc = child(code, str(root), str(source), sha(data))
        assert proc.stdout is not None
        proc.stdout.readline()  # lock held, offset known
        for _ in range(rng.randint(0, 3)):
            proc.stdout.readline()
        proc.send_signal(signal.SIGKILL)
        out, _ = proc.communicate()
        kills += "done" not in out
        blobs = list((root / "blobs" / "sha256").glob("*")) if (root / "blobs").exists() else []
        for blob in blobs:  # anything visible is complete and verified
            assert blob.name == sha(data).hex
            assert hashlib.sha256(blob.read_bytes()).hexdigest() == blob.name
        if blobs:
            break
        assert 0 <= store.status("victim").offset <= len(data)
        written = (store.ingest_path("victim") / "data").read_bytes()
        assert written == data[: len(written)]
    else:
        with store.writer("victim") as w:  # finish it ourselves: it resumes
            assert w.digest() == sha(data[: w.status().offset])
            w.write(data[w.status().offset :])
            w.commit(len(data), sha(data))
    assert kills >= 5
    assert read_blob(store, sha(data)) == data
    for status in store.list_statuses():  # killed between link and cleanup: restartable
        with store.writer(status.ref) as w:
            assert w.status().offset == 0


def test_local_concurrent_commits_across_processes(tmp_path: Path) -> None:
    data = random.Random(3).randbytes(1 << 20)
    go = tmp_path / "go"
    code = """
        import os
        from rafs.content import Info
        w = store.writer(sys.argv[2])
        w.write(open(sys.argv[3], "rb").read())
        print("ready", flush=True)
        while not os.path.exists(sys.argv[4]):
            time.sleep(0.001)
        try:
            w.commit(0, None, {"by": sys.argv[2]})
            print("committed", flush=True)
        except AlreadyExists:
            print("exists", flush=True)
    """
    source = tmp_path / "data"
    source.write_bytes(data)
    root = tmp_path / "store"
    LocalStore(root)
    procs = [child(code, str(root), f"ref-{i}", str(source), str(go)) for i in range(2)]
    for proc in procs:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    go.touch()
    outs = sorted(proc.communicate(timeout=30)[0].strip() for proc in procs)
    assert outs == ["committed", "exists"]
    store = LocalStore(root)
    assert read_blob(store, sha(data)) == data
    assert dict(store.info(sha(data)).labels) in ({"by": "ref-0"}, {"by": "ref-1"})
    assert store.list_statuses() == []


# -- property: random interleavings never expose a partial blob -------------------------

OPS = st.lists(
    st.tuples(
        st.sampled_from(["open", "write", "commit", "bad-commit", "close", "abort", "truncate"]),
        st.integers(0, 2),
        st.binary(max_size=64),
    ),
    max_size=30,
)


def run_interleaving(store: Store, ops: list[tuple[str, int, bytes]]) -> None:
    """Apply `ops` to `store` and to a model, checking both agree after every step."""
    writers: dict[str, Writer] = {}
    ingests: dict[str, bytes] = {}
    committed: set[str] = set()
    try:
        for op, index, payload in ops:
            ref = f"ref-{index}"
            w = writers.get(ref)
            if op == "open" and w is not None:
                with pytest.raises(Unavailable):
                    store.writer(ref)
            elif op == "open":
                writers[ref] = store.writer(ref)
                assert writers[ref].status().offset == len(ingests.setdefault(ref, b""))
            elif op == "abort" and w is not None:
                with pytest.raises(Unavailable):
                    store.abort(ref)
            elif op == "abort" and ref in ingests:
                store.abort(ref)
                del ingests[ref]
            elif op == "abort":
                with pytest.raises(NotFound):
                    store.abort(ref)
            elif w is None:
                continue
            elif op == "write":
                w.write(payload)
                ingests[ref] += payload
            elif op == "truncate":
                w.truncate(0)
                ingests[ref] = b""
            elif op == "close":
                w.close()
                del writers[ref]
            elif op == "bad-commit":
                del writers[ref]
                with pytest.raises(FailedPrecondition):
                    w.commit(len(ingests[ref]) + 1)
            else:
                del writers[ref]
                data = ingests.pop(ref)
                try:
                    w.commit(len(data), sha(data))
                    assert sha(data) not in committed
                except AlreadyExists:
                    assert sha(data) in committed
                committed.add(sha(data))
            assert_consistent(store, committed, ingests)
    finally:
        for w in writers.values():
            w.close()


def assert_consistent(store: Store, committed: set[str], ingests: dict[str, bytes]) -> None:
    infos = list(store.walk())
    assert {info.digest for info in infos} == committed
    for info in infos:
        data = read_blob(store, info.digest)
        assert (sha(data), len(data)) == (info.digest, info.size)
    statuses = {s.ref: s.offset for s in store.list_statuses()}
    assert statuses == {ref: len(data) for ref, data in ingests.items()}


@settings(max_examples=60, deadline=None)
@given(OPS)
def test_property_interleavings_memory(ops: list[tuple[str, int, bytes]]) -> None:
    run_interleaving(MemoryStore(), ops)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(OPS)
def test_property_interleavings_local(ops: list[tuple[str, int, bytes]]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        run_interleaving(LocalStore(tmp), ops)
