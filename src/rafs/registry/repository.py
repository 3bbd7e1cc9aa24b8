"""One repository of a registry: manifests and blobs (distribution `docs/spec/api.md`).

- Manifests: `GET|HEAD|PUT /v2/NAME/manifests/REF`, REF a tag or a digest. GET sends an
  `Accept` listing OCI and Docker manifests and indexes; the answer's `Content-Type` is its
  media type and `Docker-Content-Digest` its digest. Manifests over 4 MiB are refused (the
  limit distribution and containerd apply). A fetched manifest is checked against the
  digest asked for, or against the registry's `Docker-Content-Digest` when fetched by tag.
- Blobs: `HEAD|GET /v2/NAME/blobs/DIGEST`, `Range: bytes=A-B` for part of one (206). A
  download into a content-store `Writer` resumes from what the writer already holds
  (`Range: bytes=OFFSET-`), survives dropped connections by resuming again, and commits only
  after the bytes' size and digest matched the descriptor; a mismatch discards what was
  written and raises `IntegrityError`.
- Uploads and cross-repository mounts: see `upload`.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, BinaryIO

import httpx

from rafs.digest import Digest
from rafs.errors import AlreadyExists, FormatError, IntegrityError, NotFound
from rafs.oci import constants as mt
from rafs.oci.descriptor import Descriptor
from rafs.oci.manifest import Index, Manifest, parse_manifest
from rafs.registry import upload

if TYPE_CHECKING:
    from rafs.content import Writer
    from rafs.registry.client import RegistryClient

MAX_MANIFEST_SIZE = mt.MAX_MANIFEST_SIZE
MANIFEST_ACCEPT = ", ".join((mt.OCI_MANIFEST, mt.OCI_INDEX, mt.DOCKER_MANIFEST,
                             mt.DOCKER_MANIFEST_LIST))  # fmt: skip
_BLOCK = 1 << 20
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")


class Repository:
    """`HOST/NAME` on a `RegistryClient`; methods name what they fetch in their errors."""

    def __init__(self, client: RegistryClient, name: str) -> None:
        self.client = client
        self.name = name
        self.pull = frozenset({f"repository:{name}:pull"})
        self.push = frozenset({f"repository:{name}:pull,push"})

    def what(self, reference: str) -> str:
        sep = "@" if reference.startswith("sha256:") else ":"
        return f"docker://{self.client.host}/{self.name}{sep}{reference}"

    def _path(self, kind: str, reference: str) -> str:
        return f"/v2/{self.name}/{kind}/{reference}"

    # Manifests.

    def get_manifest(self, reference: str) -> tuple[Descriptor, bytes]:
        """The manifest or index at a tag or digest: its descriptor and exact bytes."""
        what = self.what(reference)
        response, data = self._get_small(self._path("manifests", reference), MAX_MANIFEST_SIZE,
                                         what, {"Accept": MANIFEST_ACCEPT})  # fmt: skip
        digest = Digest.of(data)
        expected = reference if reference.startswith("sha256:") else \
            response.headers.get("docker-content-digest")  # fmt: skip
        if expected is not None and digest != expected:
            raise IntegrityError(f"{what}: manifest has digest {digest}, want {expected}")
        return Descriptor(_media_type(response, data, what), digest, len(data)), data

    def _get_small(
        self, path: str, limit: int, what: str, headers: dict[str, str] | None = None
    ) -> tuple[httpx.Response, bytes]:
        """GET a body of at most `limit` bytes, retrying dropped connections."""
        failures = 0
        while True:
            response = self.client.request("GET", path, self.pull, what, headers=headers,
                                           stream=True)  # fmt: skip
            try:
                _check_length(response, limit, what)
                return response, _read_limited(response, limit, what)
            except httpx.TransportError as exc:
                reason = f"connection dropped ({type(exc).__name__}: {exc})"
                failures = self.client.retry_or_raise(failures, True, what, reason)
            finally:
                response.close()

    def head_manifest(self, reference: str) -> Descriptor:
        """What a tag or digest points at, without fetching it (NotFound if nothing)."""
        what = self.what(reference)
        response = self.client.request("HEAD", self._path("manifests", reference), self.pull,
                                       what, headers={"Accept": MANIFEST_ACCEPT})  # fmt: skip
        digest = response.headers.get("docker-content-digest")
        if digest is None:
            raise FormatError(f"{what}: registry sent no Docker-Content-Digest")
        media_type = response.headers.get("content-type", "").split(";")[0].strip()
        return Descriptor(media_type, Digest(digest),
                          int(response.headers.get("content-length", 0)))  # fmt: skip

    def put_manifest(self, document: Manifest | Index | bytes, reference: str,
                     media_type: str | None = None) -> Descriptor:  # fmt: skip
        """Store a manifest or index under a tag (or its digest); returns its descriptor."""
        data = document if isinstance(document, bytes) else document.to_bytes()
        if media_type is None and not isinstance(document, bytes):
            media_type = document.content_type
        if not media_type:
            raise FormatError(f"{self.what(reference)}: manifest without a media type")
        if len(data) > MAX_MANIFEST_SIZE:
            raise FormatError(f"{self.what(reference)}: manifest larger than "
                              f"{MAX_MANIFEST_SIZE} bytes")  # fmt: skip
        digest = Digest.of(data)
        what = self.what(reference)
        response = self.client.request("PUT", self._path("manifests", reference), self.push,
                                       what, headers={"Content-Type": media_type}, body=data,
                                       expect=(201,))  # fmt: skip
        answered = response.headers.get("docker-content-digest")
        if answered is not None and answered != digest:
            raise IntegrityError(f"{what}: registry stored the manifest as {answered}, "
                                 f"not {digest}")  # fmt: skip
        return Descriptor(media_type, digest, len(data))

    # Blobs.

    def head_blob(self, digest: str) -> int:
        """The size of a blob in this repository (`NotFound` if it is not there)."""
        response = self.client.request("HEAD", self._path("blobs", digest), self.pull,
                                       self.what(digest))  # fmt: skip
        return int(response.headers.get("content-length", 0))

    def has_blob(self, digest: str) -> bool:
        try:
            self.head_blob(digest)
        except NotFound:
            return False
        return True

    def get_blob(self, descriptor: Descriptor) -> bytes:
        """A small blob (a config) in memory, verified against its descriptor."""
        what = self.what(descriptor.digest)
        _, data = self._get_small(self._path("blobs", descriptor.digest), descriptor.size, what)
        if len(data) != descriptor.size or Digest.of(data) != descriptor.digest:
            raise IntegrityError(f"{what}: got {len(data)} bytes with digest {Digest.of(data)}, "
                                 f"want {descriptor.size} bytes")  # fmt: skip
        return data

    def read_blob_range(self, digest: str, offset: int, length: int) -> bytes:
        """`length` bytes of a blob from `offset` (fewer only at its end), with one Range GET."""
        what = f"{self.what(digest)} [{offset}+{length}]"
        if length <= 0:
            return b""
        response = self.client.request(
            "GET", self._path("blobs", digest), self.pull, what,
            headers={"Range": f"bytes={offset}-{offset + length - 1}"}, expect=(200, 206),
        )  # fmt: skip
        if response.status_code == 200:  # the registry ignored Range
            return response.content[offset : offset + length]
        _check_range_start(response, offset, what)
        return response.content[:length]

    def fetch_blob(self, descriptor: Descriptor, writer: Writer) -> Digest:
        """Download a blob into `writer` (resuming from its offset) and commit it verified.

        `AlreadyExists` at commit counts as success. Connection drops resume from the new
        offset, at most `RetryPolicy.attempts` times in a row without progress.
        """
        digest, size = descriptor.digest, descriptor.size
        what = self.what(digest)
        failures = 0
        while (offset := writer.status().offset) < size:
            try:
                if not self._download(digest, offset, size, writer, what):
                    break  # an empty answer: the size check below reports it
            except httpx.TransportError as exc:
                if writer.status().offset > offset:
                    failures = 0
                reason = f"download interrupted ({type(exc).__name__}: {exc})"
                failures = self.client.retry_or_raise(failures, True, what, reason)
        written = writer.status().offset
        actual = writer.digest()
        if written != size or actual != digest:
            writer.truncate(0)
            raise IntegrityError(f"{what}: downloaded {written} bytes with digest {actual}, "
                                 f"want {size} bytes with digest {digest}")  # fmt: skip
        try:
            return writer.commit(size, digest, {})
        except AlreadyExists:
            return digest

    def _download(self, digest: Digest, offset: int, size: int, writer: Writer,
                  what: str) -> bool:  # fmt: skip
        """One GET from `offset` into `writer`; True if any byte was written."""
        headers = {"Range": f"bytes={offset}-"} if offset else {}
        response = self.client.request("GET", self._path("blobs", digest), self.pull, what,
                                       headers=headers, expect=(200, 206),
                                       stream=True)  # fmt: skip
        try:
            if offset and response.status_code == 200:
                writer.truncate(0)  # the registry ignored Range: start again
            elif offset:
                _check_range_start(response, offset, what)
            _check_length(response, size, what)
            written = False
            for block in response.iter_bytes(_BLOCK):
                if writer.status().offset + len(block) > size:
                    writer.truncate(0)
                    raise IntegrityError(f"{what}: registry sent more than {size} bytes")
                writer.write(block)
                written = True
            return written
        finally:
            response.close()

    # Uploads.

    def push_blob(self, source: bytes | BinaryIO, descriptor: Descriptor,
                  chunk_size: int | None = None) -> bool:  # fmt: skip
        """Upload a blob unless the repository has it; True if bytes were sent.

        `source` is bytes or a seekable stream positioned anywhere (it is read from 0).
        `chunk_size` selects the chunked (PATCH) upload; otherwise one PUT carries it all.
        """
        return upload.push_blob(self, source, descriptor, chunk_size)

    def mount_blob(self, digest: str, from_repository: str) -> bool:
        """Link a blob from another repository of the same registry; False if refused."""
        return upload.mount_blob(self, digest, from_repository)


def _check_length(response: httpx.Response, limit: int, what: str) -> None:
    length = response.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limit:
        raise FormatError(f"{what}: registry announces {length} bytes, more than {limit}")


def _read_limited(response: httpx.Response, limit: int, what: str) -> bytes:
    data = bytearray()
    for block in response.iter_bytes():
        data += block
        if len(data) > limit:
            raise FormatError(f"{what}: more than {limit} bytes")
    return bytes(data)


def _check_range_start(response: httpx.Response, offset: int, what: str) -> None:
    match = _CONTENT_RANGE.fullmatch(response.headers.get("content-range", "").strip())
    if match is None or int(match.group(1)) != offset:
        raise FormatError(f"{what}: registry answered Range from {offset} with "
                          f"{response.headers.get('content-range')!r}")  # fmt: skip


def _media_type(response: httpx.Response, data: bytes, what: str) -> str:
    """The served media type, or the document's own `mediaType` when the header is generic."""
    header: str = response.headers.get("content-type", "").split(";")[0].strip()
    if header in mt.MANIFEST_TYPES or header in mt.INDEX_TYPES:
        return header
    return parse_manifest(header, data, what).content_type
