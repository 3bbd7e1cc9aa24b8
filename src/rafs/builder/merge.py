"""Merge layer bootstraps, lowest first, into one image bootstrap (`nydus-image merge`).

Each layer is a Nydus layer (or a bare bootstrap) plus its digest. Its bootstrap is found
from the end of the layer (ToC, else tar headers), read into a tree, and stacked with
overlay semantics (`overlay.py`). Every layer's own blob is renamed to the layer digest
(hex) and loses INLINED_FS_META; blobs a layer references through a chunk dictionary keep
their ids (and appear once however many layers use them). The blob table lists the blobs
in the order the merged tree
first references them (breadth first), so blobs of layers whose files were all deleted, and
of metadata-only layers, drop out. All layers must share one chunk size; the compressor and
digester recorded are those of the top layer, and HAS_XATTR is always set, as nydus does.
"""

from __future__ import annotations

import io
import tarfile
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import BinaryIO

from rafs.builder.bootstrap import (
    COMPRESSION_FLAG,
    DIGEST_FLAG,
    BootstrapOptions,
    write_bootstrap,
)
from rafs.builder.from_bootstrap import tree_from_bootstrap
from rafs.builder.options import WHITEOUT_SPECS
from rafs.builder.overlay import merge_directory
from rafs.builder.tree import Inode, cyclic_gc_paused, relabel_blobs
from rafs.errors import FormatError, InvalidArgument, RafsError, Unsupported
from rafs.format.blobtable import PLACEHOLDER_BLOB_ID, BlobEntry, BlobFeatures
from rafs.format.superblock import RafsSuperFlags
from rafs.format.toc import SECTION_BOOTSTRAP
from rafs.reader.image import RafsImage, is_rafs_v6
from rafs.reader.layer import read_section

BOOTSTRAP_NAME_IN_LAYER = "image/image.boot"
MAX_BOOTSTRAP = 1 << 30


@dataclass(frozen=True)
class MergeLayer:
    """One layer to merge: a seekable reader of a Nydus layer (or bootstrap) and its digest."""

    digest: str  # "sha256:<hex>"
    reader: BinaryIO
    name: str = ""  # how errors name the layer (defaults to the digest)

    @property
    def hex(self) -> str:
        algorithm, _, hex_digest = self.digest.partition(":")
        if algorithm != "sha256" or len(hex_digest) != 64:
            raise InvalidArgument(f"layer digest {self.digest!r} is not sha256:<64 hex>")
        return hex_digest


@dataclass(frozen=True)
class MergeOptions:
    """What a merge may vary."""

    whiteout_spec: str = "oci"
    prefetch_patterns: tuple[str, ...] = ("/",)

    def __post_init__(self) -> None:
        if self.whiteout_spec not in WHITEOUT_SPECS:
            raise InvalidArgument(f"whiteout spec {self.whiteout_spec!r} is not one of "
                                  f"{', '.join(WHITEOUT_SPECS)}")  # fmt: skip


@dataclass(frozen=True)
class MergeResult:
    """The merged bootstrap and the digests of the blobs it references, in table order."""

    bootstrap: bytes
    blob_digests: list[str]


def layer_bootstrap(layer: MergeLayer) -> RafsImage:
    """The bootstrap of a layer, read from its end (or the reader itself is a bootstrap)."""
    where = layer.name or layer.digest
    f = layer.reader
    f.seek(0)
    head = f.read(4096)
    if is_rafs_v6(head):
        size = f.seek(0, 2)
        if size > MAX_BOOTSTRAP:
            raise FormatError(f"{where}: bootstrap of {size} bytes is too large")
        f.seek(0)
        data = f.read()
    else:
        try:
            data = read_section(f, SECTION_BOOTSTRAP, where)
        except RafsError as exc:
            raise type(exc)(f"{exc} (is it a Nydus layer?)") from None
        if not is_rafs_v6(data[:4096]):
            raise FormatError(f"{where}: the layer's image.boot is not a RAFS v6 bootstrap")
    return RafsImage(data, where)


def _is_own_blob(blob: BlobEntry) -> bool:
    """Whether a layer's blob is the layer itself (the others come from a chunk dict)."""
    return bool(blob.features & BlobFeatures.INLINED_FS_META) or blob.id == PLACEHOLDER_BLOB_ID


def _codecs(image: RafsImage) -> tuple[int, int]:
    flags = image.ext.s_flags
    compressor = next(c for c, bit in COMPRESSION_FLAG.items() if flags & bit)
    digester = next(d for d, bit in DIGEST_FLAG.items() if flags & bit)
    return compressor, digester


def _blob_order(root: Inode) -> list[int]:
    """Blob indexes in order of first reference, walking the tree breadth first by name."""
    order: dict[int, None] = {}
    pending = deque([root])
    while pending:
        directory = pending.popleft()
        for name in sorted(directory.children):
            child = directory.children[name]
            if child.is_dir:
                pending.append(child)
            for chunk in child.chunks:
                order.setdefault(chunk.blob_index, None)
    return list(order)


def merge_layers(layers: Sequence[MergeLayer], options: MergeOptions) -> MergeResult:
    """Stack the layers (lowest first) into one bootstrap."""
    if not layers:
        raise InvalidArgument("merge needs at least one layer")
    with cyclic_gc_paused():
        return _merge(layers, options)


def _merge(layers: Sequence[MergeLayer], options: MergeOptions) -> MergeResult:
    root: Inode | None = None
    blobs: dict[str, int] = {}  # blob id -> index while merging
    entries: list[BlobEntry] = []
    chunk_size = 0
    image = None
    for layer in layers:
        image = layer_bootstrap(layer)
        if chunk_size and image.chunk_size != chunk_size:
            raise InvalidArgument(
                f"{image.source}: chunk size {image.chunk_size:#x} differs from {chunk_size:#x} "
                "of the layers below; all layers must share one chunk size"
            )
        chunk_size = image.chunk_size
        mapping = {}
        own = [b for b in image.blobs if _is_own_blob(b)]
        if len(own) > 1:
            raise Unsupported(f"{image.source}: a layer bootstrap with {len(own)} data blobs "
                              "of its own cannot be merged")  # fmt: skip
        for blob in image.blobs:
            if _is_own_blob(blob):
                blob = replace(blob, blob_id=layer.hex.encode(),
                               features=blob.features & ~BlobFeatures.INLINED_FS_META)
            if blob.id not in blobs:
                blobs[blob.id] = len(entries)
                entries.append(blob)
            mapping[blob.blob_index] = blobs[blob.id]
        tree = tree_from_bootstrap(image, mapping)
        root = merge_directory(root, tree, options.whiteout_spec)
    assert image is not None and root is not None
    order = _blob_order(root)
    relabel_blobs(root, {old: new for new, old in enumerate(order)})
    compressor, digester = _codecs(image)
    bootstrap = write_bootstrap(
        root,
        [entries[old] for old in order],
        BootstrapOptions(
            chunk_size=chunk_size,
            compressor=compressor,  # type: ignore[arg-type]
            digester=digester,  # type: ignore[arg-type]
            explicit_uid_gid=bool(image.ext.s_flags & RafsSuperFlags.EXPLICIT_UID_GID),
            force_has_xattr=True,
            prefetch_patterns=options.prefetch_patterns,
        ),
    )
    return MergeResult(bootstrap, [f"sha256:{entries[old].id}" for old in order])


def write_bootstrap_tar(bootstrap: bytes, out: BinaryIO) -> None:
    """The bootstrap as the Go converter's bootstrap layer tar: `image/` then `image/image.boot`.

    Only name, mode and size are set (no mtime or owner), so equal bootstraps give equal tars.
    """
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as archive:
        directory = tarfile.TarInfo("image")
        directory.type = tarfile.DIRTYPE
        directory.mode = 0o755
        archive.addfile(directory)
        member = tarfile.TarInfo(BOOTSTRAP_NAME_IN_LAYER)
        member.mode = 0o444
        member.size = len(bootstrap)
        archive.addfile(member, io.BytesIO(bootstrap))

