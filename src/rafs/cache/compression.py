"""Layer compressions, and converting a stored layer blob from one to another.

A layer can be kept as an uncompressed tar, a gzip or zstd tar, or a Nydus layer (BuildKit
`util/compression`). A descriptor *is* of a compression when its media type says so; for
Nydus the descriptor must also carry `containerd.io/snapshot/nydus-blob: "true"` (`Is()` in
BuildKit's nydus type), so a bootstrap layer or a foreign blob never passes for a Nydus layer.

`convert_blob` is BuildKit's `util/converter`: read the source blob from the store, undo its
compression, apply the target's, and commit the result under the ingest ref
`convert-from-<digest>-to-<type>-<random>` (truncated first: a stale ingest is never
resumed). The new descriptor's `containerd.io/uncompressed` annotation (also a content
label) is the diffID of the tar - except for Nydus, whose finalizer sets it to the Nydus
blob's own digest and adds `nydus-blob: "true"`.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import secrets
import tempfile
from collections.abc import Callable, Iterator
from enum import StrEnum
from typing import IO, BinaryIO, cast

import zstandard

from rafs.api import pack, unpack
from rafs.builder.source import DECOMPRESSION_ERRORS, open_tar_stream
from rafs.content import Store, as_file, exists, open_writer
from rafs.digest import Digest
from rafs.errors import AlreadyExists, FormatError, InvalidArgument, RafsError
from rafs.oci import Descriptor
from rafs.oci import constants as mt

_BLOCK = 1 << 20
GZIP_LEVEL = 6  # Go's gzip.DefaultCompression
ZSTD_LEVEL = 3  # zstd's default, as BuildKit's


class Compression(StrEnum):
    UNCOMPRESSED = "uncompressed"
    GZIP = "gzip"
    ZSTD = "zstd"
    NYDUS = "nydus"


_MEDIA_TYPES = {
    mt.OCI_LAYER: Compression.UNCOMPRESSED, mt.DOCKER_LAYER: Compression.UNCOMPRESSED,
    mt.OCI_LAYER_GZIP: Compression.GZIP, mt.DOCKER_LAYER_GZIP: Compression.GZIP,
    mt.OCI_LAYER_ZSTD: Compression.ZSTD,
    mt.NYDUS_BLOB: Compression.NYDUS,
}  # fmt: skip
_OCI_MEDIA_TYPE = {
    Compression.UNCOMPRESSED: mt.OCI_LAYER, Compression.GZIP: mt.OCI_LAYER_GZIP,
    Compression.ZSTD: mt.OCI_LAYER_ZSTD, Compression.NYDUS: mt.NYDUS_BLOB,
}  # fmt: skip
_DOCKER_MEDIA_TYPE = {
    Compression.UNCOMPRESSED: mt.DOCKER_LAYER, Compression.GZIP: mt.DOCKER_LAYER_GZIP,
    Compression.ZSTD: mt.OCI_LAYER_ZSTD, Compression.NYDUS: mt.NYDUS_BLOB,  # no Docker zstd type
}  # fmt: skip


def compression_of(desc: Descriptor) -> Compression | None:
    """The compression a layer descriptor claims, or None for a non-layer media type."""
    compression = _MEDIA_TYPES.get(desc.media_type)
    nydus_blob = desc.annotations.get(mt.NYDUS_BLOB_ANNOTATION) == "true"
    if compression is Compression.NYDUS and not nydus_blob:
        return None
    return compression


def media_type_for(compression: Compression, like: str) -> str:
    """The media type of `compression` in the family (Docker or OCI) of media type `like`."""
    family = _DOCKER_MEDIA_TYPE if like.startswith("application/vnd.docker.") else _OCI_MEDIA_TYPE
    return family[compression]


def is_usable(store: Store, desc: Descriptor, compression: Compression) -> bool:
    """Whether `desc` already is a stored blob of `compression` (BuildKit `!NeedsConversion`)."""
    return compression_of(desc) is compression and exists(store, desc.digest)


def convert_blob(store: Store, source: Descriptor, target: Compression) -> Descriptor:
    """Store `source`'s layer again with `target` compression; returns the new descriptor."""
    with store.reader_at(source.digest) as reader:
        return convert_stream(store, source, as_file(reader), target)


def convert_stream(store: Store, source: Descriptor, blob: BinaryIO, target: Compression,
                   before_commit: Callable[[], None] = lambda: None) -> Descriptor:  # fmt: skip
    """`convert_blob` of the bytes of `source` read from `blob` (a stream, read once).

    `before_commit` runs once the result is written and before it is published: a stream
    that is still being verified (a download) makes it wait for the verdict and raise.
    """
    from_compression = _check_convertible(source)
    ref = f"convert-from-{source.digest}-to-{target.value}-{secrets.token_hex(8)}"
    try:
        with open_writer(store, ref) as writer:
            writer.truncate(0)
            if target is Compression.NYDUS:  # from a tar: pack undoes its compression itself
                pack(blob, cast(BinaryIO, writer), name=f"layer {source.digest}")
                diff_id = writer.digest()
                annotations = {mt.ANNOTATION_UNCOMPRESSED: diff_id,
                               mt.NYDUS_BLOB_ANNOTATION: "true"}  # fmt: skip
            else:
                with _tar_of(blob, from_compression, source.digest) as tar:
                    diff_id = _compress(tar, cast(BinaryIO, writer), target, source.digest)
                annotations = {mt.ANNOTATION_UNCOMPRESSED: diff_id}
            digest = writer.digest()
            size = writer.status().offset
            before_commit()
            with contextlib.suppress(AlreadyExists):
                writer.commit(size, digest, {mt.ANNOTATION_UNCOMPRESSED: diff_id})
    except BaseException:
        with contextlib.suppress(RafsError):  # the ref is this call's own: nobody resumes it
            store.abort(ref)
        raise
    return Descriptor(media_type_for(target, source.media_type), digest, size, annotations)


def _check_convertible(source: Descriptor) -> Compression:
    compression = compression_of(source)
    if compression is None:
        raise InvalidArgument(f"blob {source.digest}: media type {source.media_type!r} "
                              "is not a layer compression this cache converts")  # fmt: skip
    return compression


@contextlib.contextmanager
def _tar_of(blob: BinaryIO, compression: Compression, name: str) -> Iterator[IO[bytes]]:
    """The uncompressed tar stream of a layer blob (a Nydus layer is unpacked to a spool)."""
    if compression is not Compression.NYDUS:
        with open_tar_stream(blob) as tar:
            yield tar
        return
    with tempfile.SpooledTemporaryFile(max_size=64 << 20) as spool:
        try:
            unpack(blob, cast(BinaryIO, spool))
        except RafsError as exc:
            raise type(exc)(f"layer {name}: {exc}") from None
        spool.seek(0)
        yield cast(IO[bytes], spool)


def _compress(tar: IO[bytes], out: BinaryIO, target: Compression, name: str) -> Digest:
    """Copy `tar` into `out` with `target` compression; returns the tar's sha256 digest."""
    diff = hashlib.sha256()
    with _compressor(out, target) as sink:
        while block := _read(tar, name):
            diff.update(block)
            sink.write(block)
    return Digest.from_hex(diff.hexdigest())


def _read(stream: IO[bytes], name: str) -> bytes:
    """The next block of a decompressing stream; corrupt input is a `FormatError`."""
    try:
        return stream.read(_BLOCK)
    except DECOMPRESSION_ERRORS as exc:
        raise FormatError(f"layer {name}: corrupt compressed data: {exc}") from None


@contextlib.contextmanager
def _compressor(out: BinaryIO, target: Compression) -> Iterator[IO[bytes]]:
    if target is Compression.UNCOMPRESSED:
        yield out
    elif target is Compression.GZIP:
        with gzip.GzipFile(filename="", mode="wb", compresslevel=GZIP_LEVEL, fileobj=out,
                           mtime=0) as sink:  # fmt: skip
            yield cast(IO[bytes], sink)
    else:
        compressor = zstandard.ZstdCompressor(level=ZSTD_LEVEL)
        with compressor.stream_writer(out, closefd=False) as sink:
            yield cast(IO[bytes], sink)

