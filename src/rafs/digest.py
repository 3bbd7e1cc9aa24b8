"""Content digests: the `Digest` type, hashing helpers and the OCI ChainID.

A digest names content by its hash, written `<algorithm>:<encoded>` as in the OCI image spec
and containerd. This package only produces and accepts SHA-256 (`sha256:` followed by 64
lowercase hex digits), the canonical algorithm; anything else is `InvalidArgument`.

`chain_id` follows the OCI image spec (config.md, "Layer ChainID"):
chain(L0) = diff_id(L0); chain(Ln) = sha256("<chain(Ln-1)> <diff_id(Ln)>").
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from typing import BinaryIO

from rafs.errors import InvalidArgument

ALGORITHM = "sha256"
_SHA256 = re.compile(r"sha256:[0-9a-f]{64}")
_BLOCK = 1 << 20


class Digest(str):
    """A validated `sha256:<64 hex>` string; compares and hashes like the plain string."""

    __slots__ = ()

    def __new__(cls, value: str) -> Digest:
        if isinstance(value, Digest):
            return value
        if not isinstance(value, str) or not _SHA256.fullmatch(value):
            raise InvalidArgument(f"{value!r}: not a digest (want sha256:<64 lowercase hex>)")
        return super().__new__(cls, value)

    @classmethod
    def from_hex(cls, encoded: str) -> Digest:
        """The sha256 digest whose encoded part is `encoded`."""
        return cls(f"{ALGORITHM}:{encoded}")

    @classmethod
    def of(cls, data: bytes) -> Digest:
        """The digest of `data`."""
        return cls.from_hex(hashlib.sha256(data).hexdigest())

    @property
    def algorithm(self) -> str:
        return ALGORITHM

    @property
    def hex(self) -> str:
        """The encoded part (64 hex digits), as used for file names."""
        return self[len(ALGORITHM) + 1 :]


def parse(value: str) -> Digest:
    """Validate `value` as a digest (raises `InvalidArgument`)."""
    return Digest(value)


class Digester:
    """An incremental SHA-256 whose `digest()` can be read at any point."""

    def __init__(self) -> None:
        self._hash = hashlib.sha256()
        self.size = 0

    def update(self, data: bytes) -> None:
        self._hash.update(data)
        self.size += len(data)

    def digest(self) -> Digest:
        """Digest of everything fed so far."""
        return Digest.from_hex(self._hash.hexdigest())

    def reset(self) -> None:
        self._hash = hashlib.sha256()
        self.size = 0


class HashingReader:
    """Wrap a binary stream, hashing and counting everything read through it."""

    def __init__(self, source: BinaryIO) -> None:
        self._source = source
        self.digester = Digester()

    def read(self, size: int = -1, /) -> bytes:
        data = self._source.read(size)
        self.digester.update(data)
        return data

    @property
    def size(self) -> int:
        return self.digester.size

    def digest(self) -> Digest:
        return self.digester.digest()


def digest_stream(source: BinaryIO) -> tuple[Digest, int]:
    """Read `source` to its end; return its digest and size."""
    digester = Digester()
    while block := source.read(_BLOCK):
        digester.update(block)
    return digester.digest(), digester.size


def chain_id(diff_ids: Iterable[str]) -> Digest:
    """The ChainID of a layer stack given its diff_ids, lowest layer first."""
    chain: Digest | None = None
    for diff_id in diff_ids:
        layer = Digest(diff_id)
        chain = layer if chain is None else Digest.of(f"{chain} {layer}".encode())
    if chain is None:
        raise InvalidArgument("chain_id of an empty layer chain")
    return chain
