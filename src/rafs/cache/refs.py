"""A BuildKit-style cache of immutable layer refs over a content store.

`CacheManager(store, root)` keeps its records in `<root>/cache.db` (see `metadata.py`) and
its cross-process locks in `<root>/locks/`. `get_by_blob(desc, parent)` turns a stored layer
blob into a ref on top of `parent` (reusing the ref with the same blob chain), so a chain of
refs is an image's layers. A ref's *primary* blob is the layer as first stored; other
compressions are *variants* linked to it (`variants.py`) and made on demand:

- `get_blob_with_compression(c)`: the first of the primary and its variants that is a
  stored blob of compression `c`, else `NotFound`;
- `ensure_compression(c)`: make that variant unless it exists. Exactly one conversion happens
  however many threads and processes ask at once: each takes `flock` on
  `locks/ensure-<ref>-<c>` (a fresh open file each time, so threads exclude each other too)
  and looks again before converting. Returns whether this call converted;
- `get_blob_with_compression_with_retry(c)`: look, ensure, look again;
- `adopt_variant(desc)`: link a variant converted before the ref existed (under the same
  lock, and only if the ref has none of that compression yet).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from rafs.cache.compression import Compression, compression_of, convert_blob, is_usable
from rafs.cache.metadata import RefRecord, RefTable, new_ref_id
from rafs.cache.variants import descriptors, link_variant
from rafs.content import Info, Store
from rafs.digest import Digest, chain_id
from rafs.errors import FailedPrecondition, InvalidArgument, NotFound
from rafs.oci import Descriptor
from rafs.oci import constants as mt


class CacheManager:
    """Refs over `store`, with metadata and locks under `root`."""

    def __init__(self, store: Store, root: Path) -> None:
        self.store = store
        self.root = root
        (root / "locks").mkdir(parents=True, exist_ok=True)
        self._refs = RefTable(root / "cache.db")

    def get_by_blob(self, desc: Descriptor, parent: ImmutableRef | None = None) -> ImmutableRef:
        """The ref of stored layer blob `desc` on top of `parent`, made if new.

        `desc` needs its diffID as annotation `containerd.io/uncompressed`.
        """
        diff_text = desc.annotations.get(mt.ANNOTATION_UNCOMPRESSED)
        if diff_text is None:
            raise InvalidArgument(f"layer {desc.digest}: descriptor has no "
                                  f"{mt.ANNOTATION_UNCOMPRESSED} annotation (its diffID)")
        diff_id = Digest(diff_text)
        if compression_of(desc) is None:
            raise InvalidArgument(f"layer {desc.digest}: {desc.media_type!r} is not a layer "
                                  "media type")  # fmt: skip
        info = self.store.info(desc.digest)
        if desc.size and info.size != desc.size:
            raise FailedPrecondition(f"layer {desc.digest}: stored size {info.size} is not "
                                     f"the descriptor's {desc.size}")  # fmt: skip
        if info.labels.get(mt.ANNOTATION_UNCOMPRESSED) != diff_id:
            self.store.update(Info(info.digest, labels={mt.ANNOTATION_UNCOMPRESSED: diff_id}),
                              f"labels.{mt.ANNOTATION_UNCOMPRESSED}")  # fmt: skip
        blob_id = chain_id([desc.digest, diff_id])
        if parent is None:
            chain, blob_chain = diff_id, blob_id
        else:
            chain = chain_id([parent.chain_id, diff_id])
            blob_chain = chain_id([parent.record.blob_chain_id, blob_id])
        record = RefRecord(new_ref_id(), None if parent is None else parent.id, info.digest,
                           desc.media_type, info.size, diff_id, chain, blob_chain,
                           dict(desc.annotations))  # fmt: skip
        return ImmutableRef(self, self._refs.add(record))

    def get(self, ref_id: str) -> ImmutableRef:
        return ImmutableRef(self, self._refs.get(ref_id))

    def refs(self) -> list[ImmutableRef]:
        return [ImmutableRef(self, record) for record in self._refs.all()]

    @contextlib.contextmanager
    def _exclusive(self, name: str) -> Iterator[None]:
        """Hold `locks/<name>` against every other thread and process."""
        fd = os.open(self.root / "locks" / name, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)


class ImmutableRef:
    """One layer ref: its record plus the operations on its blobs."""

    def __init__(self, manager: CacheManager, record: RefRecord) -> None:
        self.manager = manager
        self.record = record

    def __repr__(self) -> str:
        return f"ImmutableRef({self.id})"

    @property
    def id(self) -> str:
        return self.record.id

    @property
    def chain_id(self) -> Digest:
        return self.record.chain_id

    @property
    def diff_id(self) -> Digest:
        return self.record.diff_id

    @property
    def parent(self) -> ImmutableRef | None:
        parent = self.record.parent
        return None if parent is None else self.manager.get(parent)

    def layer_chain(self) -> list[ImmutableRef]:
        """The refs from the base layer up to this one (parent -> child)."""
        chain: list[ImmutableRef] = []
        ref: ImmutableRef | None = self
        while ref is not None:
            chain.append(ref)
            ref = ref.parent
        return chain[::-1]

    def descriptor(self) -> Descriptor:
        """The primary blob's descriptor."""
        annotations = {**self.record.annotations, mt.ANNOTATION_UNCOMPRESSED: self.diff_id}
        return Descriptor(self.record.media_type, self.record.blob, self.record.blob_size,
                          annotations)  # fmt: skip

    def get_blob_with_compression(self, compression: Compression) -> Descriptor:
        store = self.manager.store
        store.info(self.record.blob)  # NotFound if the primary blob is gone
        for desc in descriptors(store, self.descriptor()):
            if is_usable(store, desc, compression):
                return desc
        raise NotFound(f"ref {self.id}: no {compression.value} blob")

    def ensure_compression(self, compression: Compression) -> bool:
        """Make the `compression` variant unless it exists; True if this call converted."""
        with self.manager._exclusive(f"ensure-{self.id}-{compression.value}"):
            try:
                self.get_blob_with_compression(compression)
                return False
            except NotFound:
                pass
            variant = convert_blob(self.manager.store, self.descriptor(), compression)
            link_variant(self.manager.store, self.record.blob, variant)
            return True

    def adopt_variant(self, variant: Descriptor) -> Descriptor:
        """Link `variant`, a stored blob converted from this ref's layer elsewhere (while it
        downloaded), unless the ref has a blob of its compression by now; returns the one
        the ref uses."""
        compression = compression_of(variant)
        if compression is None:
            raise InvalidArgument(f"blob {variant.digest}: {variant.media_type!r} is not a "
                                  "layer media type")  # fmt: skip
        with self.manager._exclusive(f"ensure-{self.id}-{compression.value}"):
            try:
                return self.get_blob_with_compression(compression)
            except NotFound:
                link_variant(self.manager.store, self.record.blob, variant)
                return variant

    def get_blob_with_compression_with_retry(self, compression: Compression) -> Descriptor:
        try:
            return self.get_blob_with_compression(compression)
        except NotFound:
            self.ensure_compression(compression)
        return self.get_blob_with_compression(compression)

