"""Loopback HTTP servers put in front of the real registry to misbehave on purpose.

`start_fault_proxy(registry_host, faults)` forwards every request to the registry (Host
header kept, so the registry's upload Locations point back at the proxy) and, drawing from
a random generator seeded by `faults.seed`, the request and how many times the same request
came before (`fault_key`), instead:
- answers 500 without forwarding (`error_500`),
- closes the connection without forwarding (`drop_before`),
- forwards, then closes without answering: the registry did the work, the client never hears
  of it (`drop_after`),
- forwards and sends the headers but only half the body, then closes (`cut_body`),
- flips the last byte of every blob body it returns (`corrupt`), a lying registry;
- flips one byte of one blob, at a given offset, in every ranged answer (206) covering it
  (`corrupt_at = (digest, offset)`): one damaged chunk for lazy reads;
- answers blob GETs with 307 to another origin (`redirect_blobs_to`).
So a seed gives the same faults to the same requests in every run, in whatever order
concurrent clients send them. Every request is recorded (method, path, headers), and every
fault injected (`Server.injected`). Responses always close the connection.
`start_blob_store(registry)` is that other origin: it serves blobs straight from the
registry's storage directory and records the headers it was sent.
"""

from __future__ import annotations

import hashlib
import http.client
import random
import re
import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from tests.support.registry import Registry

_HOP = {"connection", "keep-alive", "transfer-encoding", "proxy-connection", "content-length"}
_BLOB_GET = re.compile(r"/v2/.+/blobs/(sha256:[0-9a-f]{64})$")
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/")
_UPLOAD_SESSION = re.compile(r"(/blobs/uploads/)[^/?]+")


@dataclass
class Faults:
    error_500: float = 0.0
    drop_before: float = 0.0
    drop_after: float = 0.0
    cut_body: float = 0.0
    corrupt: bool = False
    corrupt_at: tuple[str, int] | None = None
    redirect_blobs_to: str | None = None
    seed: int = 0


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]


@dataclass
class Server:
    host: str
    seen: list[Seen] = field(default_factory=list)
    injected: list[str] = field(default_factory=list)
    """`<fault> <method> <path>` of each fault injected, in order."""


def fault_key(method: str, path: str, headers: dict[str, str], body: bytes) -> str:
    """What makes two requests the same for the fault draws: the method, the path without
    the registry's random upload session id and `_state`, the byte range, and the body."""
    path, _, query = path.partition("?")
    kept = sorted(p for p in query.split("&") if p and not p.startswith("_state="))
    ranges = [f"{k}={v}" for k, v in sorted(headers.items())
              if k.lower() in ("range", "content-range")]  # fmt: skip
    return " ".join([method, _UPLOAD_SESSION.sub(r"\1*", path), "&".join(kept), *ranges,
                     hashlib.sha256(body).hexdigest()])  # fmt: skip


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: Any

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _record(self) -> None:
        self.server.state.seen.append(Seen(self.command, self.path, dict(self.headers.items())))

    def _body(self) -> bytes:
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _reply(self, status: int, headers: list[tuple[str, str]], body: bytes,
               length: int | None = None) -> None:  # fmt: skip
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body) if length is None else length))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)
        self.close_connection = True


class _ProxyHandler(_Handler):
    def handle_one(self) -> None:
        self._record()
        faults: Faults = self.server.faults
        body = self._body()
        key = fault_key(self.command, self.path, dict(self.headers.items()), body)
        with self.server.lock:
            self.server.times_seen[key] += 1
            rng = random.Random(f"{faults.seed} {self.server.times_seen[key]} {key}")
        draw = [rng.random() for _ in range(4)]
        blob = _BLOB_GET.search(self.path.split("?")[0])
        if faults.redirect_blobs_to and blob and self.command == "GET":
            self._reply(307, [("Location", f"{faults.redirect_blobs_to}/{blob.group(1)}")], b"")
            return
        if draw[0] < faults.error_500:
            self._injected("error_500")
            self._reply(500, [("Content-Type", "application/json")],
                        b'{"errors":[{"code":"UNKNOWN","message":"injected fault"}]}')  # fmt: skip
            return
        if draw[1] < faults.drop_before:
            self._injected("drop_before")
            self.close_connection = True
            return
        status, headers, data, length = self._forward(body)
        if draw[2] < faults.drop_after:
            self._injected("drop_after")
            self.close_connection = True
            return
        if faults.corrupt and blob and self.command == "GET" and data:
            data = data[:-1] + bytes([data[-1] ^ 0xFF])
        if faults.corrupt_at and blob and blob.group(1) == faults.corrupt_at[0] and status == 206:
            data = _flip(data, headers, faults.corrupt_at[1])
        if draw[3] < faults.cut_body and len(data) > 1:
            self._injected("cut_body")
            self.send_response(status)
            for name, value in headers:
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data[: len(data) // 2])
            self.close_connection = True
            return
        self._reply(status, headers, data, length)

    def _injected(self, fault: str) -> None:
        with self.server.lock:
            self.server.state.injected.append(f"{fault} {self.command} {self.path}")

    def _forward(self, body: bytes) -> tuple[int, list[tuple[str, str]], bytes, int | None]:
        connection = http.client.HTTPConnection(self.server.upstream, timeout=60)
        try:
            headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP}
            headers["Content-Length"] = str(len(body))
            connection.request(self.command, self.path, body=body, headers=headers)
            response = connection.getresponse()
            data = response.read()
            kept = [(k, v) for k, v in response.getheaders() if k.lower() not in _HOP]
            length = None
            if self.command == "HEAD":
                length = int(response.getheader("Content-Length") or 0)
            return response.status, kept, data, length
        finally:
            connection.close()

    do_GET = do_HEAD = do_PUT = do_POST = do_PATCH = do_DELETE = handle_one


def _flip(data: bytes, headers: list[tuple[str, str]], offset: int) -> bytes:
    """`data`, a 206 body, with the byte at blob `offset` inverted if the body covers it."""
    ranges = [_CONTENT_RANGE.match(v) for k, v in headers if k.lower() == "content-range"]
    if not ranges or ranges[0] is None:
        return data
    at = offset - int(ranges[0].group(1))
    if not 0 <= at < len(data):
        return data
    return data[:at] + bytes([data[at] ^ 0xFF]) + data[at + 1 :]


class _StoreHandler(_Handler):
    def do_GET(self) -> None:
        self._record()
        try:
            data = self.server.registry.blob_file(self.path.rsplit("/", 1)[-1]).read_bytes()
        except (OSError, IndexError):
            self._reply(404, [], b"")
            return
        self._reply(200, [("Content-Type", "application/octet-stream")], data)


@contextmanager
def _serve(handler: type[_Handler], **attributes: Any) -> Iterator[Server]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.daemon_threads = True
    state = Server(f"127.0.0.1:{httpd.server_address[1]}")
    for name, value in {"state": state, "lock": threading.Lock(), **attributes}.items():
        setattr(httpd, name, value)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        httpd.shutdown()
        httpd.server_close()


@contextmanager
def start_fault_proxy(upstream: str, faults: Faults) -> Iterator[Server]:
    with _serve(_ProxyHandler, upstream=upstream, faults=faults,
                times_seen=Counter[str]()) as server:  # fmt: skip
        yield server


@contextmanager
def start_blob_store(registry: Registry) -> Iterator[Server]:
    with _serve(_StoreHandler, registry=registry) as server:
        yield server
