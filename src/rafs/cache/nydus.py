"""`merge_nydus`: one bootstrap layer for a ref's whole layer chain (BuildKit `MergeNydus`).

Steps, as BuildKit's `cache/compression_nydus.go` (converter-semantics §2.1), with its one
known flaw fixed:

1. Only an `ImmutableRef` with a non-empty layer chain is accepted.
2. Every layer of the chain, parent to child, is fetched in Nydus compression (converted on
   demand, `get_blob_with_compression_with_retry`) and opened from the store; every reader is
   closed on every path.
3. The layers are merged with tar output (`image/`, `image/image.boot`, then each layer's
   `image/<blob id>.blob.meta`, as nydus-snapshotter's converter writes for RAFS v6 since
   2025, so nydusd finds the chunk tables without fetching them), streamed through gzip with
   mtime 0 - so the same chain always gives the same bytes - into the ingest
   `nydus-merge-<chainID>`, while the uncompressed tar is hashed for its diffID. BuildKit
   resumes a stale ingest of that name, which would prefix old bytes to the new stream; here
   the ingest is truncated first.
4. Commit with label `containerd.io/uncompressed`; `AlreadyExists` is success (the label is
   then set on the existing blob). The size comes from the stored blob's info.
5. The descriptor: `application/vnd.oci.image.layer.v1.tar+gzip`, annotations
   `containerd.io/uncompressed` and `containerd.io/snapshot/nydus-bootstrap: "true"`, also
   kept as the blob's `buildkit.io/blob/*` labels.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
from typing import BinaryIO, cast

from rafs.api import Layer, MergeOption, merge
from rafs.cache.compression import GZIP_LEVEL, Compression
from rafs.cache.refs import ImmutableRef
from rafs.cache.variants import descriptor_labels
from rafs.content import Info, Store, as_file, open_writer
from rafs.digest import Digest
from rafs.errors import AlreadyExists, InvalidArgument
from rafs.oci import Descriptor
from rafs.oci import constants as mt


class _TeeToGzip:
    """Hash what is written (the tar), and pass it on gzip-compressed to `out`."""

    def __init__(self, out: BinaryIO) -> None:
        self.diff = hashlib.sha256()
        self._gzip = gzip.GzipFile(filename="", mode="wb", compresslevel=GZIP_LEVEL,
                                   fileobj=out, mtime=0)  # fmt: skip

    def write(self, data: bytes, /) -> int:
        self.diff.update(data)
        return self._gzip.write(data)

    def close(self) -> Digest:
        self._gzip.close()
        return Digest.from_hex(self.diff.hexdigest())


def merge_nydus(ref: object, compression: Compression = Compression.NYDUS) -> Descriptor:
    """Merge the Nydus layers of `ref`'s chain into a gzip bootstrap layer in the store."""
    if not isinstance(ref, ImmutableRef):
        raise InvalidArgument(f"merge_nydus: unsupported ref type {type(ref).__name__}")
    chain = ref.layer_chain()
    if not chain:
        raise InvalidArgument(f"merge_nydus: ref {ref.id} has an empty layer chain")
    store = ref.manager.store
    with contextlib.ExitStack() as readers:
        layers = []
        for layer in chain:
            desc = layer.get_blob_with_compression_with_retry(compression)
            reader = readers.enter_context(store.reader_at(desc.digest))
            layers.append(Layer(desc.digest, as_file(reader), f"layer {desc.digest}"))
        digest, diff_id = _write_merged(store, f"nydus-merge-{ref.chain_id}", layers)
    size = store.info(digest).size
    annotations = {mt.ANNOTATION_UNCOMPRESSED: diff_id, mt.NYDUS_BOOTSTRAP_ANNOTATION: "true"}
    desc = Descriptor(mt.OCI_LAYER_GZIP, digest, size, annotations)
    labels = {mt.ANNOTATION_UNCOMPRESSED: diff_id, **descriptor_labels(desc)}
    store.update(Info(digest, labels=labels), *(f"labels.{key}" for key in labels))
    return desc


def _write_merged(store: Store, ref: str, layers: list[Layer]) -> tuple[Digest, Digest]:
    """Merge into the ingest `ref` as a gzip tar; returns (blob digest, tar diffID)."""
    with open_writer(store, ref) as writer:
        writer.truncate(0)
        tee = _TeeToGzip(cast(BinaryIO, writer))
        merge(layers, cast(BinaryIO, tee), MergeOption(with_tar=True))
        diff_id = tee.close()
        digest = writer.digest()
        with contextlib.suppress(AlreadyExists):
            writer.commit(0, digest, {mt.ANNOTATION_UNCOMPRESSED: diff_id})
    return digest, diff_id
