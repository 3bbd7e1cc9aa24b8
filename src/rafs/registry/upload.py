"""Blob uploads and cross-repository mounts (distribution `docs/spec/api.md`, "Pushing").

An upload is a session: `POST /v2/NAME/blobs/uploads/` answers 202 with a `Location` (which
carries the session state in its query, e.g. `?_state=...`). Then either
- monolithic: `PUT LOCATION&digest=D` with the whole blob as body, or
- chunked: `PATCH LOCATION` per chunk with `Content-Range: START-END` (inclusive, no unit);
  each 202 answer gives the next `Location` and `Range: 0-END` received so far; a final
  `PUT LOCATION&digest=D` with an empty body closes it.
Both end in 201 with `Docker-Content-Digest`. The `digest` parameter is *merged* into the
Location's query: replacing the query would drop `_state` and the registry would answer 404
BLOB_UPLOAD_INVALID.

A request that carried data cannot simply be resent (the registry may have appended it), so
PATCH and PUT are not retried blindly. After a failed PATCH the client asks where the session
stands (`GET LOCATION`: 204 with `Range: 0-LAST` and a fresh Location) and goes on from
there. distribution cancels a session whose state token is behind its data (a PATCH that
landed but whose answer was lost); that, and a failed monolithic PUT, start a new session
from the start of the source. Before either, a HEAD checks whether the blob arrived after
all (a lost 201).

A mount, `POST /v2/NAME/blobs/uploads/?mount=D&from=OTHER`, links a blob the registry keeps
for another repository (201), or opens an ordinary session (202) when it cannot; that
session is cancelled with DELETE. The token needs pull on OTHER and push on NAME.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from typing import TYPE_CHECKING, BinaryIO

import httpx

from rafs.errors import (
    FormatError,
    IntegrityError,
    InvalidArgument,
    NotFound,
    RafsError,
    Unavailable,
)

if TYPE_CHECKING:
    from rafs.oci.descriptor import Descriptor
    from rafs.registry.repository import Repository

_BLOCK = 1 << 20
_OCTETS = "application/octet-stream"


def push_blob(repo: Repository, source: bytes | BinaryIO, descriptor: Descriptor,
              chunk_size: int | None) -> bool:  # fmt: skip
    """Upload `source` as `descriptor` unless the repository has it; True if sent."""
    if chunk_size is not None and chunk_size <= 0:
        raise ValueError("chunk_size must be positive")
    if repo.has_blob(descriptor.digest):
        return False
    what = repo.what(descriptor.digest)
    failures = 0
    while True:
        try:
            _upload(repo, source, descriptor, chunk_size, what)
            return True
        except Unavailable as exc:
            if repo.has_blob(descriptor.digest):
                return True
            failures = repo.client.retry_or_raise(failures, True, what,
                                                  f"upload failed ({exc})")  # fmt: skip


def _upload(repo: Repository, source: bytes | BinaryIO, descriptor: Descriptor,
            chunk_size: int | None, what: str) -> None:  # fmt: skip
    location = _start(repo, what)
    if chunk_size is None:
        response = repo.client.request(
            "PUT", location.copy_merge_params({"digest": descriptor.digest}), repo.push, what,
            headers={"Content-Type": _OCTETS, "Content-Length": str(descriptor.size)},
            body=lambda: _stream(source, 0, descriptor.size), expect=(201,), retry=False,
        )  # fmt: skip
    else:
        response = _chunked(repo, source, descriptor, chunk_size, location, what)
    answered = response.headers.get("docker-content-digest")
    if answered is not None and answered != descriptor.digest:
        raise IntegrityError(f"{what}: registry stored the blob as {answered}")


def _chunked(repo: Repository, source: bytes | BinaryIO, descriptor: Descriptor,
             chunk_size: int, location: httpx.URL, what: str) -> httpx.Response:  # fmt: skip
    """PATCH the chunks and PUT the end; a failed request resumes from the session's status.

    A session the registry no longer accepts (it cancels one whose state is out of step)
    raises `Unavailable`, and the caller starts a new one.
    """
    client, size, offset, failures = repo.client, descriptor.size, 0, 0
    while True:
        try:
            if offset >= size:
                return client.request(
                    "PUT", location.copy_merge_params({"digest": descriptor.digest}), repo.push,
                    what, headers={"Content-Length": "0"}, body=b"", expect=(201,), retry=False,
                )  # fmt: skip
            end = min(offset + chunk_size, size)
            chunk = b"".join(_stream(source, offset, end - offset))
            response = client.request(
                "PATCH", location, repo.push, what, body=chunk, expect=(202,), retry=False,
                headers={"Content-Type": _OCTETS, "Content-Length": str(len(chunk)),
                         "Content-Range": f"{offset}-{end - 1}"},
            )  # fmt: skip
            location, offset, failures = _location(response, what), end, 0
            if _received(response, what) != end:
                raise Unavailable(f"{what}: registry holds {response.headers['range']} after "
                                  f"a chunk ending at {end - 1}")  # fmt: skip
        except Unavailable as exc:
            failures = client.retry_or_raise(failures, True, what, f"upload interrupted ({exc})")
            if repo.has_blob(descriptor.digest):  # the final PUT worked, its answer was lost
                return httpx.Response(201)
            location, offset = _status(repo, location, what)
        except InvalidArgument as exc:  # 416: the session is out of step with us
            raise Unavailable(f"{what}: upload out of step ({exc})") from None


def _received(response: httpx.Response, what: str) -> int:
    """Bytes a session holds, from its `Range: 0-LAST` header (distribution writes `0-0` for
    an empty session, which reads here as 1 byte: a resumed PATCH then gets 416 and the
    session is restarted)."""
    match = re.fullmatch(r"0-(\d+)", response.headers.get("range", "").strip())
    if match is None:
        raise FormatError(f"{what}: upload status without a Range header")
    return int(match.group(1)) + 1


def _status(repo: Repository, location: httpx.URL, what: str) -> tuple[httpx.URL, int]:
    """Where a session stands (`GET LOCATION`, 204); `Unavailable` if it is gone."""
    try:
        response = repo.client.request("GET", location, repo.push, what, expect=(204,))
    except (NotFound, InvalidArgument) as exc:
        raise Unavailable(f"{what}: upload session lost ({exc})") from None
    return _location(response, what), _received(response, what)


def _start(repo: Repository, what: str) -> httpx.URL:
    response = repo.client.request("POST", f"/v2/{repo.name}/blobs/uploads/", repo.push, what,
                                   headers={"Content-Length": "0"}, body=b"",
                                   expect=(202,))  # fmt: skip
    return _location(response, what)


def _location(response: httpx.Response, what: str) -> httpx.URL:
    location = response.headers.get("location")
    if not location:
        raise FormatError(f"{what}: upload answer without a Location")
    return response.url.join(location)


def _stream(source: bytes | BinaryIO, offset: int, count: int) -> Iterator[bytes]:
    """`count` bytes of `source` from `offset`, in blocks; short sources are an error."""
    if isinstance(source, bytes):
        if len(source) < offset + count:
            raise FormatError(f"upload source is {len(source)} bytes, want {offset + count}")
        for start in range(offset, offset + count, _BLOCK):
            yield source[start : min(start + _BLOCK, offset + count)]
        return
    source.seek(offset)
    while count:
        block = source.read(min(count, _BLOCK))
        if not block:
            raise FormatError(f"upload source ended {count} bytes short")
        count -= len(block)
        yield block


def mount_blob(repo: Repository, digest: str, from_repository: str) -> bool:
    """Mount `digest` from `from_repository`; False if the registry would not."""
    what = f"{repo.what(digest)} (mount from {from_repository})"
    scopes = repo.push | {f"repository:{from_repository}:pull"}
    url = repo.client.url(f"/v2/{repo.name}/blobs/uploads/").copy_merge_params(
        {"mount": digest, "from": from_repository})  # fmt: skip
    response = repo.client.request("POST", url, scopes, what, headers={"Content-Length": "0"},
                                   body=b"", expect=(201, 202))  # fmt: skip
    if response.status_code == 201:
        return True
    with contextlib.suppress(RafsError):  # an abandoned session expires on the registry
        repo.client.request("DELETE", _location(response, what), scopes, what,
                            expect=(204,), retry=False)  # fmt: skip
    return False
