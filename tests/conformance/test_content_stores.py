"""Every content store runs the conformance suite; LocalStore also its on-disk contract.

LocalStore-only checks: its files are those a real containerd writes after the same
operations, and it resumes an ingest containerd left; read-only blobs, locks held across
processes, a writer SIGKILLed at random points (never a partial blob; the ingest resumes),
and two processes committing the same content (exactly one wins). A hypothesis property
drives random interleavings of writer operations on both stores.
"""

from __future__ import annotations

import errno
import hashlib
import io
import itertools
import os
import random
import re
import signal
import stat
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rafs.content import Store, Writer, open_writer, read_blob, write_blob
from rafs.content.containerd import ContainerdStore, server_filters
from rafs.content.local import LocalStore, format_time
from rafs.content.memory import MemoryStore
from rafs.errors import AlreadyExists, FailedPrecondition, NotFound, Unavailable
from tests.conformance.content_suite import ContentStoreSuite, sha
from tests.support.containerd import (  # noqa: F401 (fixture)
    Containerd,
    containerd,
    start_containerd,
)

StoreFactory = Callable[[Path, pytest.FixtureRequest], Store]
_namespaces = itertools.count()


def containerd_store(tmp: Path, request: pytest.FixtureRequest) -> Store:
    """A store in the session's containerd, in a namespace of its own (so it starts empty)."""
    daemon: Containerd = request.getfixturevalue("containerd")
    return ContainerdStore(daemon.socket, namespace=f"rafs-test-{next(_namespaces)}")


FACTORIES: dict[str, StoreFactory] = {
    "memory": lambda tmp, request: MemoryStore(),
    "local": lambda tmp, request: LocalStore(tmp / "store"),
    "containerd": containerd_store,
}

STORE_PARAMS = ["memory", "local", pytest.param("containerd", marks=pytest.mark.containerd)]
"""The names of FACTORIES as fixture params, each marked with the component it starts."""

NOT_CONFORMING: dict[tuple[str, str], str] = {
    ("containerd", "test_reader_survives_delete"):
        "containerd's ReaderAt is remote: every read_at is a Read RPC by digest, and Delete "
        "removes the blob from the namespace at once (an open file descriptor does not exist)",
}  # fmt: skip
"""(store, test) pairs where a store knowingly differs from the suite, with the reason.

They run as strict xfails, so a store that starts to conform fails the run."""


@pytest.fixture(params=STORE_PARAMS)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    reason = NOT_CONFORMING.get((request.param, request.node.originalname))
    if reason is not None:
        request.node.add_marker(pytest.mark.xfail(reason=reason, strict=True))
    made = FACTORIES[request.param](tmp_path, request)
    yield made
    close = getattr(made, "close", None)
    if close is not None:
        close()


class TestContentStores(ContentStoreSuite):
    """The shared suite, once per store factory."""


# -- ContainerdStore: leases, namespaces, what containerd does differently -------------


def gc_now(daemon: Containerd, namespace: str) -> None:
    """Run containerd's GC synchronously: delete a throwaway lease with `sync`."""
    scratch = ContainerdStore(daemon.socket, namespace, lease="rafs-test-gc-trigger")
    try:
        scratch._leases.Delete(scratch._pb_leases.DeleteRequest(id=scratch.lease, sync=True),
                               metadata=(("containerd-namespace", namespace),))  # fmt: skip
    finally:
        scratch.close()


def test_containerd_lease_keeps_content_from_gc(containerd: Containerd) -> None:  # noqa: F811
    """Content ingested under the store's lease survives GC; under a lease that is then
    deleted (what a client without one gets), it is collected."""
    namespace = f"rafs-test-gc-{next(_namespaces)}"
    with ContainerdStore(containerd.socket, namespace) as kept:
        digest = write_blob(kept, "kept", io.BytesIO(b"kept bytes"))
        with kept.writer("kept-ingest") as w:
            w.write(b"partial")
    with ContainerdStore(containerd.socket, namespace, lease="rafs-test-short") as short:
        doomed = write_blob(short, "doomed", io.BytesIO(b"doomed bytes"))
        short._leases.Delete(short._pb_leases.DeleteRequest(id="rafs-test-short", sync=True),
                             metadata=(("containerd-namespace", namespace),))  # fmt: skip
    gc_now(containerd, namespace)
    with ContainerdStore(containerd.socket, namespace) as store:
        assert read_blob(store, digest) == b"kept bytes"
        assert store.status("kept-ingest").offset == 7
        with pytest.raises(NotFound):
            store.info(doomed)


def test_containerd_namespaces_are_separate(containerd: Containerd) -> None:  # noqa: F811
    a = ContainerdStore(containerd.socket, f"rafs-test-ns-{next(_namespaces)}")
    b = ContainerdStore(containerd.socket, f"rafs-test-ns-{next(_namespaces)}")
    try:
        digest = write_blob(a, "one", io.BytesIO(b"namespaced"), labels={"k": "v"})
        with pytest.raises(NotFound):
            b.info(digest)
        assert list(b.walk()) == []
        assert write_blob(b, "one", io.BytesIO(b"namespaced")) == digest  # shared blob
        assert dict(b.info(digest).labels) == {}
        assert dict(a.info(digest).labels) == {"k": "v"}
    finally:
        a.close()
        b.close()


def test_containerd_abort_while_writing_is_allowed(containerd: Containerd) -> None:  # noqa: F811
    """Unlike LocalStore and MemoryStore (`Unavailable`), containerd 1.6 aborts an ingest
    whose writer is open: the ingest disappears and the open stream writes into the void."""
    with ContainerdStore(containerd.socket, f"rafs-test-abort-{next(_namespaces)}") as store:
        w = store.writer("busy")
        w.write(b"abc")
        store.abort("busy")
        assert store.list_statuses() == []
        w.close()


def test_containerd_large_blob_in_chunks(containerd: Containerd) -> None:  # noqa: F811
    """One write() of 5.5 MiB goes out as 1 MiB WRITE messages; reads span the server's
    1 MiB response buffer."""
    data = random.Random(1).randbytes((11 << 20) // 2)
    with ContainerdStore(containerd.socket, f"rafs-test-big-{next(_namespaces)}") as store:
        with store.writer("big", total=len(data)) as w:
            w.write(data[:100])
            w.write(data[100:])
            assert w.status().offset == len(data)
            w.commit(len(data), sha(data))
        with store.reader_at(sha(data)) as r:
            assert r.read_at(0, len(data)) == data
            assert r.read_at(3 << 20, 2 << 20) == data[3 << 20 : 5 << 20]


def test_containerd_busy_ref_across_processes(containerd: Containerd) -> None:  # noqa: F811
    """containerd's lock on a ref is held by the Write stream, whichever process owns it."""
    namespace = f"rafs-test-procs-{next(_namespaces)}"
    code = textwrap.dedent("""
        import sys
        from rafs.content.containerd import ContainerdStore
        w = ContainerdStore(sys.argv[1], sys.argv[2]).writer("shared-ref")
        w.write(b"held")
        print("ready", flush=True)
        sys.stdin.read()
    """)
    holder = subprocess.Popen([sys.executable, "-c", code, str(containerd.socket), namespace],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)  # fmt: skip
    assert holder.stdout is not None
    with ContainerdStore(containerd.socket, namespace) as store:
        try:
            assert holder.stdout.readline().strip() == "ready"
            with pytest.raises(Unavailable):
                store.writer("shared-ref")
        finally:
            holder.kill()  # the stream breaks with the process; containerd drops the lock
            holder.wait()
        with open_writer(store, "shared-ref", timeout=10) as w:
            assert w.status().offset == 4


def test_containerd_server_filters() -> None:
    assert server_filters(()) == []
    assert server_filters(("labels.containerd.io/uncompressed==x,labels.k~=y",)) == [
        'labels."containerd.io/uncompressed"=="x"']
    assert server_filters(('labels.a==1', 'digest==sha256:ab,labels.b=="q\\"uo"')) == [
        'labels."a"=="1"', 'digest=="sha256:ab",labels."b"=="q\\"uo"']
    assert server_filters(("labels.a==1", "labels.b!=2")) == []  # one filter can't narrow


def test_containerd_unreachable_socket(tmp_path: Path) -> None:
    with pytest.raises(Unavailable):
        ContainerdStore(tmp_path / "no.sock")


# -- LocalStore: the on-disk contract ---------------------------------------------------

RFC3339NANO = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,9})?(Z|[+-]\d\d:\d\d)")


CONTENT_PLUGIN = "io.containerd.content.v1.content"
"""containerd's local content store, under its root."""
LOCAL_ONLY = {"metadata.db", "metadata.db-wal", "metadata.db-shm", "metadata.db.lock"}
TIMES = {"startedat", "updatedat"}
WHOLE, RESUMED = b"whole blob\n" * 100, b"0123456789" * 300


def _same_operations(store: Store, ref: Callable[[str], str]) -> None:
    """Commits (whole, and resumed by a second writer), two unfinished ingests (one with a
    total, one without), an aborted one, and the same content committed again."""
    write_blob(store, ref("whole"), io.BytesIO(WHOLE), expected=sha(WHOLE))
    with store.writer(ref("resumed"), total=len(RESUMED)) as w:
        w.write(RESUMED[:1234])
    with store.writer(ref("resumed"), total=len(RESUMED)) as w:
        w.write(RESUMED[1234:])
        w.commit(len(RESUMED), sha(RESUMED))
    with store.writer(ref("nydus-merge-sha256:abc"), total=100) as w:
        w.write(b"partial")
    with store.writer(ref("size unknown")) as w:
        w.write(b"some bytes")
    with store.writer(ref("aborted")) as w:
        w.write(b"gone")
    store.abort(ref("aborted"))
    again = store.writer(ref("again"))
    again.write(WHOLE)
    with pytest.raises(AlreadyExists):
        again.commit(len(WHOLE), sha(WHOLE))


def _content_tree(root: Path) -> dict[str, tuple[str, int, bytes | None]]:
    """Relative path -> (mode, link count, content); times as their format, if RFC 3339."""
    tree: dict[str, tuple[str, int, bytes | None]] = {}
    for path in sorted(root.rglob("*")):
        relative = path.relative_to(root).as_posix()
        if relative in LOCAL_ONLY:
            continue
        st = path.lstat()
        content = None if stat.S_ISDIR(st.st_mode) else path.read_bytes()
        if path.name in TIMES and content is not None and RFC3339NANO.fullmatch(content.decode()):
            content = b"<RFC 3339 time>"
        tree[relative] = (stat.filemode(st.st_mode), st.st_nlink, content)
    return tree


@pytest.mark.containerd
def test_local_layout_is_containerds(tmp_path: Path) -> None:
    """After the same operations, a LocalStore's directory holds what a real containerd's
    content root (`io.containerd.content.v1.content`) holds: the same paths
    (`blobs/sha256/<hex>`, `ingest/<sha256 of ref>/{data,ref,startedat,updatedat,total}`),
    modes, link counts and bytes; `startedat`/`updatedat` are RFC 3339 times in both.

    containerd is driven through its gRPC service, whose metadata layer hands its local
    store the ref `<namespace>/<n>/<ref>`: the LocalStore, standing for that local store,
    ingests under the refs read back from containerd's `ref` files.

    Intended differences, left out: LocalStore keeps labels and update times in SQLite
    beside the content (`metadata.db`, its WAL files and `metadata.db.lock`); containerd
    keeps them, per namespace, in bolt outside it (`io.containerd.metadata.v1.bolt`).
    """
    with start_containerd(tmp_path / "containerd") as daemon:
        with ContainerdStore(daemon.socket, namespace="layout") as store:
            _same_operations(store, lambda ref: ref)
        content_root = daemon.root / CONTENT_PLUGIN
        theirs = _content_tree(content_root)
    on_disk = [path.read_text() for path in (content_root / "ingest").glob("*/ref")]
    assert len(on_disk) == 2, on_disk
    local_ref = {ref.split("/", 2)[2]: ref for ref in on_disk}
    _same_operations(LocalStore(tmp_path / "local"), lambda ref: local_ref.get(ref, ref))
    ours = _content_tree(tmp_path / "local")
    assert {f"blobs/sha256/{sha(data).hex}" for data in (WHOLE, RESUMED)} <= theirs.keys()
    assert ours == theirs


def test_local_first_commits_from_many_threads_all_keep_their_labels(tmp_path: Path) -> None:
    """A fresh store's first label writes race to set up its database: none may be lost (two
    connections switching a new database to WAL at once fail at once, whatever the timeout)."""
    for trial in range(25):
        store = LocalStore(tmp_path / f"store{trial}")
        start = threading.Barrier(4)

        def commit(n: int, store: LocalStore = store, start: threading.Barrier = start) -> None:
            start.wait()
            write_blob(store, f"ref-{n}", io.BytesIO(b"blob %d" % n), labels={"n": str(n)})

        threads = [threading.Thread(target=commit, args=(n,)) for n in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        labels = [store.info(sha(b"blob %d" % n)).labels for n in range(4)]
        assert labels == [{"n": str(n)} for n in range(4)]


@pytest.mark.containerd
def test_local_resumes_an_ingest_containerd_left(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An unfinished ingest a real containerd left in its content root (its times in local
    time with an offset: containerd runs with TZ=Asia/Kolkata, +05:30) has, in a LocalStore
    opened on that root, the offset, total and start time containerd gave; it resumes and
    commits to containerd's blob path."""
    monkeypatch.setenv("TZ", "Asia/Kolkata")
    with start_containerd(tmp_path / "containerd") as daemon:
        with ContainerdStore(daemon.socket, namespace="resume") as containerd_store:
            with containerd_store.writer("left", total=20) as w:
                w.write(b"partial")
            theirs = containerd_store.status("left")
        content_root = daemon.root / CONTENT_PLUGIN
    (ref_file,) = (content_root / "ingest").glob("*/ref")
    assert (ref_file.parent / "startedat").read_text().endswith("+05:30")
    store = LocalStore(content_root, create=False)
    ref = ref_file.read_text()
    status = store.status(ref)
    assert (status.offset, status.total) == (theirs.offset, theirs.total) == (7, 20)
    assert status.started_at == theirs.started_at
    with store.writer(ref, total=20) as w:
        assert (w.status().offset, w.digest()) == (7, sha(b"partial"))
        w.write(b" and the rest")
        w.commit(20, sha(b"partial and the rest"))
    assert (content_root / "blobs/sha256" / sha(b"partial and the rest").hex).is_file()
    assert list((content_root / "ingest").iterdir()) == []


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


_PIECE = 64 << 10
# A writer that takes one step per line it reads: a 64 KiB write, and after the last piece
# the commit. So how far each of its lives gets is the parent's choice, not machine speed.
_STEPPED_VICTIM = f"""
    from rafs.content import open_writer
    data = open(sys.argv[2], "rb").read()
    w = open_writer(store, "victim", total=len(data))
    off = w.status().offset
    print(off, flush=True)
    while off < len(data):
        sys.stdin.readline()
        w.write(data[off : off + {_PIECE}])
        off += {_PIECE}
        print("w", flush=True)
    sys.stdin.readline()
    try:
        w.commit(len(data), sys.argv[3])
    except AlreadyExists:
        pass
    print("done", flush=True)
"""


def _kill_after_some_steps(proc: subprocess.Popen[str], rng: random.Random) -> bool:
    """Let the victim complete 0-3 steps, start one more and SIGKILL it, racing that step.
    Returns whether the victim committed before the kill."""
    assert proc.stdout is not None and proc.stdin is not None
    proc.stdout.readline()  # the lock is held and the offset known
    finished = False
    for _ in range(rng.randint(0, 3)):
        proc.stdin.write("go\n")
        proc.stdin.flush()
        if proc.stdout.readline().startswith("done"):
            finished = True
            break
    if not finished:
        proc.stdin.write("go\n")
        proc.stdin.flush()
        if rng.random() < 0.5:
            time.sleep(0.001)
    proc.send_signal(signal.SIGKILL)
    out, _ = proc.communicate()
    return finished or "done" in out


def _victim_source(tmp_path: Path, pieces: int, seed: int) -> tuple[bytes, Path]:
    data = random.Random(seed).randbytes(pieces * _PIECE)
    source = tmp_path / "source"
    source.write_bytes(data)
    return data, source


def test_local_writer_killed_fifty_times_resumes(tmp_path: Path) -> None:
    """A writer SIGKILLed 50 times, between writes or racing one: no blob ever appears, the
    ingest data is always a prefix of the source, and a last writer resumes and commits.
    The data is large enough that 50 short lives never finish it."""
    data, source = _victim_source(tmp_path, 256, seed=5)
    root = tmp_path / "store"
    store = LocalStore(root)
    rng = random.Random(13)
    for _ in range(50):
        proc = child(_STEPPED_VICTIM, str(root), str(source), sha(data))
        assert not _kill_after_some_steps(proc, rng)
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
    data, source = _victim_source(tmp_path, 24, seed=7)
    root = tmp_path / "store"
    store = LocalStore(root)
    rng = random.Random(11)
    kills = 0
    for _ in range(50):
        proc = child(_STEPPED_VICTIM, str(root), str(source), sha(data))
        kills += not _kill_after_some_steps(proc, rng)
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
