"""Merge layer bootstraps, lowest first, into one image bootstrap (`nydus-image merge`).

Each layer is a Nydus layer (or a bare bootstrap) plus its digest. Its bootstrap is found
from the end of the layer (ToC, else tar headers) and stacked on the layers below with
overlay semantics on names (`overlay.py`); the merged tree's inodes are then copied from the
layers' bytes into the new layout (`merge_writer.py`), so merge costs a few microseconds per
inode. Every layer's own blob (marked INLINED_FS_META, or in a layer of nydus-image before
2.2 the one its sections fit) is renamed to the layer digest (hex) and loses
INLINED_FS_META; blobs a layer references through a chunk dictionary keep their ids (and
appear once however many layers use them). The blob table lists the blobs in the order the
merged tree first references them (breadth first), so blobs of layers whose files were all
deleted, and of metadata-only layers, drop out. All layers must share one chunk size; the
compressor and digester recorded are those of the top layer, and HAS_XATTR is always set, as
nydus does.
"""

from __future__ import annotations

import io
import tarfile
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import BinaryIO

from rafs.builder.bootstrap import COMPRESSION_FLAG, DIGEST_FLAG, BootstrapOptions
from rafs.builder.merge_writer import write_merged
from rafs.builder.options import WHITEOUT_SPECS
from rafs.builder.overlay import MergedDir, stack_layer
from rafs.builder.raw_bootstrap import RawBootstrap
from rafs.builder.tree import cyclic_gc_paused
from rafs.errors import FormatError, InvalidArgument, NotFound, RafsError, Unsupported
from rafs.format.blobtable import BlobEntry, BlobFeatures
from rafs.format.superblock import RafsSuperFlags
from rafs.format.toc import SECTION_BLOB_META, SECTION_BLOB_META_HEADER, SECTION_BOOTSTRAP
from rafs.reader.image import RafsImage, is_rafs_v6
from rafs.reader.layer import is_marked_inline, own_blob_index, read_section

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


def layer_own_blob(layer: MergeLayer, image: RafsImage) -> int | None:
    """The index of the layer's own blob (the others come from a chunk dict): the one marked
    as inlined, or in a layer of nydus-image before 2.2 the one the layer's sections fit
    (`own_blob_index`); None for a bootstrap whose own blob already has its real id."""
    marked = [index for index, blob in enumerate(image.blobs) if is_marked_inline(blob)]
    if len(marked) > 1:
        raise Unsupported(f"{image.source}: a layer bootstrap with {len(marked)} data blobs "
                          "of its own cannot be merged")  # fmt: skip
    layer.reader.seek(0)
    if marked or is_rafs_v6(layer.reader.read(4096)):
        return marked[0] if marked else None
    return own_blob_index(layer.reader, image.blobs, image.source)


def merged_options(image: RafsImage, prefetch_patterns: tuple[str, ...]) -> BootstrapOptions:
    """How the merged bootstrap is written: chunk size, codecs and id flag of the top layer."""
    flags = image.ext.s_flags
    compressor = next(c for c, bit in COMPRESSION_FLAG.items() if flags & bit)
    digester = next(d for d, bit in DIGEST_FLAG.items() if flags & bit)
    return BootstrapOptions(
        chunk_size=image.chunk_size,
        compressor=compressor,
        digester=digester,
        explicit_uid_gid=bool(flags & RafsSuperFlags.EXPLICIT_UID_GID),
        prefetch_patterns=prefetch_patterns,
    )


def merge_layers(layers: Sequence[MergeLayer], options: MergeOptions) -> MergeResult:
    """Stack the layers (lowest first) into one bootstrap."""
    if not layers:
        raise InvalidArgument("merge needs at least one layer")
    with cyclic_gc_paused():
        return _merge(layers, options)


def _merge(layers: Sequence[MergeLayer], options: MergeOptions) -> MergeResult:
    root: MergedDir | None = None
    slots: dict[str, int] = {}  # blob id -> slot in `blobs`
    blobs: list[BlobEntry] = []
    raws: list[RawBootstrap] = []
    image = None
    for layer in layers:
        image = layer_bootstrap(layer)
        if raws and image.chunk_size != raws[0].image.chunk_size:
            raise InvalidArgument(
                f"{image.source}: chunk size {image.chunk_size:#x} differs from "
                f"{raws[0].image.chunk_size:#x} of the layers below; all layers must share "
                "one chunk size"
            )
        own = layer_own_blob(layer, image)
        layer_slots = []
        for index, blob in enumerate(image.blobs):
            if index == own:
                blob = replace(blob, blob_id=layer.hex.encode(),
                               features=blob.features & ~BlobFeatures.INLINED_FS_META)
            if blob.id not in slots:
                slots[blob.id] = len(blobs)
                blobs.append(blob)
            layer_slots.append(slots[blob.id])
        raw = RawBootstrap(image, layer_slots)
        root = stack_layer(root, raw, len(raws), options.whiteout_spec)
        raws.append(raw)
    assert image is not None and root is not None
    bootstrap, order = write_merged(raws, root, blobs,
                                    merged_options(image, options.prefetch_patterns))
    return MergeResult(bootstrap, [f"sha256:{blobs[slot].id}" for slot in order])


def layer_blob_meta(layer: MergeLayer) -> bytes | None:
    """The layer's `<blob id>.blob.meta` file as nydus-snapshotter puts it in a bootstrap layer:
    the blob.meta section (the chunk infos), zero-padded to 4 KiB, then the 4 KiB blob.meta
    header. None for a bare bootstrap or a layer without those sections."""
    where = layer.name or layer.digest
    layer.reader.seek(0)
    if is_rafs_v6(layer.reader.read(4096)):
        return None
    try:
        meta = read_section(layer.reader, SECTION_BLOB_META, where)
        header = read_section(layer.reader, SECTION_BLOB_META_HEADER, where)
    except NotFound:
        return None
    return meta + bytes(-len(meta) % 4096) + header


def blob_metas(layers: Sequence[MergeLayer]) -> list[tuple[str, bytes]]:
    """(blob id, `layer_blob_meta`) of each layer that has one, for `write_bootstrap_tar`."""
    metas = ((layer.hex, layer_blob_meta(layer)) for layer in layers)
    return [(blob_id, meta) for blob_id, meta in metas if meta is not None]


def write_bootstrap_tar(bootstrap: bytes, out: BinaryIO,
                        blob_metas: Sequence[tuple[str, bytes]] = ()) -> None:  # fmt: skip
    """The bootstrap as the Go converter's bootstrap layer tar: `image/`, `image/image.boot`,
    then `image/<blob id>.blob.meta` for each (blob id, file) given (`layer_blob_meta`): the
    layout nydus-snapshotter writes since 2025, so nydusd needs no blob.meta from the network.

    Only name, mode and size are set (no mtime or owner), so equal bootstraps give equal tars.
    """
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as archive:
        directory = tarfile.TarInfo("image")
        directory.type = tarfile.DIRTYPE
        directory.mode = 0o755
        archive.addfile(directory)
        files = [(BOOTSTRAP_NAME_IN_LAYER, bootstrap),
                 *((f"image/{blob_id}.blob.meta", meta) for blob_id, meta in blob_metas)]
        for name, data in files:
            member = tarfile.TarInfo(name)
            member.mode = 0o444
            member.size = len(data)
            archive.addfile(member, io.BytesIO(data))

