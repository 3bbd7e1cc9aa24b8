"""`ContainerdStore`: the content store protocols over containerd's gRPC content API.

The stubs are generated at build time (setup.py's build hook, for a wheel, `pip install .` and
an editable install alike; `make venv` again when a .proto changes) from the .proto files in
`protos/` into `_gen/` (not committed); `_stubs()` puts that directory on `sys.path` once,
because the generated modules import each other as `containerd.services...`.

- Every call carries `containerd-namespace` metadata, and `containerd-lease`: each store
  instance makes sure its lease exists (`Leases.Create`, `AlreadyExists` is fine). The lease
  has no expiry and is not deleted on `close()`, so it owns what the store ingests and
  commits: containerd's GC does not collect it, while `delete` still removes a blob from the
  namespace. The default lease id is the same for every instance (`rafs.content`), so
  instances do not pile up leases; pass `lease=` to use another one (e.g. one with a
  `containerd.io/gc.expire` label that the caller manages). A lease was chosen over a
  `containerd.io/gc.root` label because a label would show up in `info().labels`, and a
  `labels` replace by the caller would drop it again; a lease also covers ingests in progress.
- The writer is one bidi `Write` stream, which holds containerd's lock on the ref: STAT on
  open (offset, total and times of a resumed ingest), WRITE with the current offset (WRITE at
  offset 0 with no data truncates), COMMIT with the size, the expected digest (the writer's
  own digest, learnt by STAT, when the caller gives none, so that present content always
  gives `AlreadyExists` and removes the ingest) and the labels. `digest()` and `status()` ask
  the server with a STAT. Closing half-closes the stream and waits for its end, so the lock
  is released when `close()` returns.
- `walk` and `list_statuses` filter client-side with `rafs.content.filters`, so the filter
  syntax and semantics are exactly those of the other stores (containerd's parser rejects
  unquoted label keys with `/`, and its `!=` is false for an absent field). When every filter
  has `==` terms on `digest` or labels, those are sent to `List`, quoted, to narrow the stream.
- gRPC status codes map to the rafs errors (`NOT_FOUND` -> `NotFound` and so on).
"""

from __future__ import annotations

import importlib
import queue
import sys
import threading
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import Any, TypeVar

import grpc

from rafs.content import ClosesOnExit, HasDigest, Info, Status, digest_of, validate_labels
from rafs.content.filters import Term, info_lookup, matcher, parse, status_lookup
from rafs.digest import Digest
from rafs.errors import (
    AlreadyExists,
    FailedPrecondition,
    IntegrityError,
    InvalidArgument,
    NotFound,
    RafsError,
    Unavailable,
)  # fmt: skip

GENERATED = Path(__file__).resolve().parent / "_gen"
"""Where the build generates the Python stubs (grpcio-tools, from `protos/`)."""

PROTOS = Path(__file__).resolve().parent / "protos"

DEFAULT_LEASE = "rafs.content"
WRITE_CHUNK = 1 << 20
"""Bytes per WRITE message (containerd's default limit per message is 16 MiB)."""

_T = TypeVar("_T")
_stub_lock = threading.Lock()
_stub_modules: dict[str, ModuleType] = {}


def generate_command(python: str = sys.executable) -> list[str]:
    """The grpcio-tools command that (re)generates the stubs into `GENERATED`."""
    protos = sorted(str(p) for p in PROTOS.rglob("*.proto"))
    return [python, "-m", "grpc_tools.protoc", f"-I{PROTOS}", f"--python_out={GENERATED}",
            f"--grpc_python_out={GENERATED}", *protos]  # fmt: skip


def _stubs() -> dict[str, ModuleType]:
    """The generated modules: content_pb2, content_grpc, leases_pb2, leases_grpc."""
    with _stub_lock:
        if _stub_modules:
            return _stub_modules
        if not (GENERATED / "containerd" / "services" / "content" / "v1").is_dir():
            raise RafsError(
                f"containerd gRPC stubs are missing in {GENERATED}: reinstall rafs "
                f"(`pip install .`), or "
                f"{' '.join(generate_command('python'))}")  # fmt: skip
        if str(GENERATED) not in sys.path:
            sys.path.insert(0, str(GENERATED))
        modules = {}
        for name, module in (
            ("content_pb2", "containerd.services.content.v1.content_pb2"),
            ("content_grpc", "containerd.services.content.v1.content_pb2_grpc"),
            ("leases_pb2", "containerd.services.leases.v1.leases_pb2"),
            ("leases_grpc", "containerd.services.leases.v1.leases_pb2_grpc"),
        ):
            modules[name] = importlib.import_module(module)
            origin = Path(modules[name].__file__ or "").resolve()
            if not origin.is_relative_to(GENERATED):
                raise RafsError(f"module {module} comes from {origin}, not from {GENERATED}: "
                                "another `containerd` package shadows the stubs")  # fmt: skip
        _stub_modules.update(modules)
        return _stub_modules


_CODES: dict[grpc.StatusCode, type[RafsError]] = {
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.ALREADY_EXISTS: AlreadyExists,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPrecondition,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.OUT_OF_RANGE: InvalidArgument,
    grpc.StatusCode.DATA_LOSS: IntegrityError,
}


def map_error(error: grpc.RpcError, what: str) -> RafsError:
    """The rafs error for a failed call (`RafsError` for codes without a closer match)."""
    code = error.code() if isinstance(error, grpc.Call) else grpc.StatusCode.UNKNOWN
    details = error.details() if isinstance(error, grpc.Call) else str(error)
    kind = _CODES.get(code, RafsError)
    return kind(f"containerd: {what}: {details} ({code.name.lower()})")


def _call(what: str, fn: Callable[[], _T]) -> _T:
    try:
        return fn()
    except grpc.RpcError as exc:
        raise map_error(exc, what) from None


def _time(ts: Any) -> datetime:
    return ts.ToDatetime(tzinfo=UTC)  # type: ignore[no-any-return]


def _info(msg: Any) -> Info:
    return Info(Digest(msg.digest), msg.size, _time(msg.created_at), _time(msg.updated_at),
                dict(msg.labels))  # fmt: skip


def _status(msg: Any) -> Status:
    expected = Digest(msg.expected) if msg.expected else None
    return Status(msg.ref, msg.offset, msg.total, expected, _time(msg.started_at),
                  _time(msg.updated_at))  # fmt: skip


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def server_filters(filters: tuple[str, ...]) -> list[str]:
    """containerd filters that select a superset of what `filters` match (none: all).

    Only `==` terms on `digest` and labels are passed on, label keys and values quoted."""
    narrowed = []
    for expression in filters:
        terms: list[Term] = [
            t for t in parse(expression)
            if t.operator == "==" and (t.field == "digest" or t.field.startswith("labels."))
        ]  # fmt: skip
        if not terms:
            return []
        rendered = []
        for t in terms:
            field = "digest" if t.field == "digest" else "labels." + _quote(t.field[7:])
            rendered.append(f"{field}=={_quote(t.value)}")
        narrowed.append(",".join(rendered))
    return narrowed


class ContainerdReader(ClosesOnExit):
    """Random access to one committed blob through `Read(digest, offset, size)`."""

    def __init__(self, store: ContainerdStore, digest: Digest, size: int) -> None:
        self._store = store
        self._digest = digest
        self._size = size
        self._open = True

    @property
    def size(self) -> int:
        return self._size

    def read_at(self, offset: int, size: int) -> bytes:
        if offset < 0 or size < 0:
            raise InvalidArgument(f"read_at: negative offset {offset} or size {size}")
        if not self._open:
            raise FailedPrecondition("reader is closed")
        size = min(size, self._size - offset)
        if size <= 0:
            return b""
        pb = self._store._pb
        request = pb.ReadContentRequest(digest=self._digest, offset=offset, size=size)

        def read() -> bytes:
            stream = self._store._content.Read(request, metadata=self._store._metadata)
            return b"".join(response.data for response in stream)

        return _call(f"read {self._digest}", read)

    def close(self) -> None:
        self._open = False


_END = object()


class ContainerdWriter(ClosesOnExit):
    """One ingest over a bidi `Write` stream; see the module docstring for the protocol."""

    def __init__(self, store: ContainerdStore, ref: str, total: int,
                 expected: Digest | None) -> None:  # fmt: skip
        self._store = store
        self._ref = ref
        self._requests: queue.Queue[object] = queue.Queue()
        self._responses = store._content.Write(self._request_iter(), metadata=store._metadata)
        self._open = True
        self._offset = 0
        self._expected = expected
        try:
            first = self._send(action=store._pb.STAT, ref=ref, total=total,
                               expected=expected or "")  # fmt: skip
        except BaseException:
            self._finish()
            raise
        self._offset = first.offset

    def _request_iter(self) -> Iterator[Any]:
        while (item := self._requests.get()) is not _END:
            yield item

    def _send(self, **fields: Any) -> Any:
        """Send one request and wait for its response; an error ends the stream."""
        if not self._open:
            raise FailedPrecondition(f"ref {self._ref}: writer is closed")
        self._requests.put(self._store._pb.WriteContentRequest(**fields))
        try:
            return next(self._responses)
        except StopIteration:
            self._finish()
            raise RafsError(f"containerd: write {self._ref}: stream ended early") from None
        except grpc.RpcError as exc:
            self._finish()
            raise map_error(exc, f"write {self._ref}") from None

    def _finish(self) -> None:
        """Half-close the stream and wait until the server has ended it (lock released)."""
        if not self._open:
            return
        self._open = False
        self._requests.put(_END)
        try:
            for _ in self._responses:
                pass
        except grpc.RpcError:
            pass

    @property
    def ref(self) -> str:
        return self._ref

    def _stat(self) -> Any:
        return self._send(action=self._store._pb.STAT)

    def write(self, data: bytes, /) -> int:
        view = memoryview(data)
        for start in range(0, len(view), WRITE_CHUNK):
            chunk = bytes(view[start : start + WRITE_CHUNK])
            response = self._send(action=self._store._pb.WRITE, offset=self._offset, data=chunk)
            self._offset = response.offset
        return len(data)

    def digest(self) -> Digest:
        return Digest(self._stat().digest)

    def status(self) -> Status:
        r = self._stat()
        self._offset = r.offset
        return Status(self._ref, r.offset, r.total, self._expected, _time(r.started_at),
                      _time(r.updated_at))  # fmt: skip

    def truncate(self, size: int) -> None:
        if size != 0:
            raise InvalidArgument(f"ref {self._ref}: truncate to {size}: only 0 is supported")
        self._offset = self._send(action=self._store._pb.WRITE, offset=0).offset

    def commit(self, size: int = 0, expected: str | None = None,
               labels: Mapping[str, str] | None = None) -> Digest:  # fmt: skip
        try:
            if not self._open:
                raise FailedPrecondition(f"ref {self._ref}: writer is closed")
            validate_labels(labels or {})
            want = Digest(expected) if expected is not None else self.digest()
            response = self._send(action=self._store._pb.COMMIT, offset=self._offset,
                                  total=size, expected=want, labels=dict(labels or {}))  # fmt: skip
            return Digest(response.digest)
        finally:
            self._finish()

    def close(self) -> None:
        self._finish()

    def __del__(self) -> None:
        # A writer dropped without close(): end the request stream so the server releases
        # the ref (without waiting: this may run in any thread, or at interpreter exit).
        if getattr(self, "_open", False):
            self._open = False
            self._requests.put(_END)


class ContainerdStore:
    """A content store in a running containerd, reached on its gRPC unix socket."""

    def __init__(self, socket_path: str | Path, namespace: str = "default",
                 lease: str = DEFAULT_LEASE) -> None:  # fmt: skip
        stubs = _stubs()
        self._pb = stubs["content_pb2"]
        self._pb_leases = stubs["leases_pb2"]
        self.socket_path = str(socket_path)
        self.namespace = namespace
        self.lease = lease
        self._channel = grpc.insecure_channel(f"unix://{self.socket_path}", options=[
            ("grpc.max_receive_message_length", 32 << 20)])  # fmt: skip
        self._content = stubs["content_grpc"].ContentStub(self._channel)
        self._leases = stubs["leases_grpc"].LeasesStub(self._channel)
        namespace_only = (("containerd-namespace", namespace),)
        self._metadata = (*namespace_only, ("containerd-lease", lease))
        try:
            _call(f"create lease {lease}", lambda: self._leases.Create(
                self._pb_leases.CreateRequest(id=lease), metadata=namespace_only))  # fmt: skip
        except AlreadyExists:
            pass
        except BaseException:
            self._channel.close()
            raise

    def close(self) -> None:
        """Close the channel (the lease stays: it keeps the content)."""
        self._channel.close()

    def __enter__(self) -> ContainerdStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # Provider
    def reader_at(self, target: str | HasDigest) -> ContainerdReader:
        info = self.info(target)
        return ContainerdReader(self, info.digest, info.size)

    # Ingester
    def writer(self, ref: str, total: int = 0, expected: str | None = None) -> ContainerdWriter:
        if not ref:
            raise InvalidArgument("writer: empty ref")
        want = Digest(expected) if expected is not None else None
        return ContainerdWriter(self, ref, total, want)

    # Manager
    def info(self, target: str | HasDigest) -> Info:
        digest = digest_of(target)
        response = _call(f"info {digest}", lambda: self._content.Info(
            self._pb.InfoRequest(digest=digest), metadata=self._metadata))  # fmt: skip
        return _info(response.info)

    def update(self, info: Info, *fieldpaths: str) -> Info:
        digest = digest_of(info)
        validate_labels(info.labels)
        from google.protobuf.field_mask_pb2 import FieldMask

        request = self._pb.UpdateRequest(
            info=self._pb.Info(digest=digest, labels=dict(info.labels)),
            update_mask=FieldMask(paths=list(fieldpaths)))
        response = _call(f"update {digest}", lambda: self._content.Update(
            request, metadata=self._metadata))  # fmt: skip
        return _info(response.info)

    def walk(self, *filters: str) -> Iterator[Info]:
        match = matcher(filters)  # parses: InvalidArgument before any call
        request = self._pb.ListContentRequest(filters=server_filters(filters))

        def listing() -> list[Info]:
            stream = self._content.List(request, metadata=self._metadata)
            return [_info(msg) for response in stream for msg in response.info]

        infos = sorted(_call("list content", listing), key=lambda i: i.digest)
        return (info for info in infos if match(info_lookup(info)))

    def delete(self, target: str | HasDigest) -> None:
        digest = digest_of(target)
        _call(f"delete {digest}", lambda: self._content.Delete(
            self._pb.DeleteContentRequest(digest=digest), metadata=self._metadata))  # fmt: skip

    # IngestManager
    def status(self, ref: str) -> Status:
        response = _call(f"status {ref}", lambda: self._content.Status(
            self._pb.StatusRequest(ref=ref), metadata=self._metadata))  # fmt: skip
        return _status(response.status)

    def list_statuses(self, *filters: str) -> list[Status]:
        match = matcher(filters)
        response = _call("list statuses", lambda: self._content.ListStatuses(
            self._pb.ListStatusesRequest(), metadata=self._metadata))  # fmt: skip
        statuses = sorted((_status(s) for s in response.statuses), key=lambda s: s.ref)
        return [s for s in statuses if match(status_lookup(s))]

    def abort(self, ref: str) -> None:
        _call(f"abort {ref}", lambda: self._content.Abort(
            self._pb.AbortRequest(ref=ref), metadata=self._metadata))  # fmt: skip
