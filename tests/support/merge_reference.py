"""The object path `merge` used to take, kept as a reference for the byte-level one.

Each layer bootstrap is read into an `Inode` tree (`tree_from_bootstrap`), the trees are
stacked with the overlay rules on objects (`merge_directory`: the rules of
`rafs.builder.overlay`, written for trees), the blobs are relabelled in order of first
reference, and `write_bootstrap` (the writer `create` uses, checked against nydus's
fixtures) lays the result out. It makes an object per inode, so it is slow; `merge_layers`
must give the same bytes.
"""

from __future__ import annotations

import stat
from collections import deque
from collections.abc import Sequence
from dataclasses import replace

from rafs.builder.bootstrap import write_bootstrap
from rafs.builder.merge import (
    MergeLayer,
    MergeOptions,
    MergeResult,
    layer_bootstrap,
    layer_own_blob,
    merged_options,
)
from rafs.builder.overlay import OCI_OPAQUE_MARKER, OCI_WHITEOUT_PREFIX, OVERLAYFS_OPAQUE_XATTR
from rafs.builder.tree import Chunk, Inode, relabel_blobs
from rafs.errors import FormatError
from rafs.format.blobtable import BlobEntry, BlobFeatures
from rafs.format.chunktable import ChunkFlags
from rafs.format.inode import encode_rdev
from rafs.format.superblock import RAFS_EXT_SUPER_OFFSET, RafsSuperFlags, SuperBlockExt
from rafs.reader.image import RafsImage, Stat

# -- bootstrap -> tree ----------------------------------------------------------------------


def _chunks(image: RafsImage, blob_map: dict[int, int]) -> dict[tuple[int, int], Chunk]:
    """Every chunk of the image as a `Chunk` (its blob index mapped through `blob_map`),
    keyed by (blob index in the image, block address)."""
    block = image.block_size
    return {
        (info.blob_index, info.uncompressed_offset // block): Chunk(
            info.block_id, blob_map.get(info.blob_index, info.blob_index), info.index,
            info.compressed_offset,
            info.compressed_size, info.uncompressed_offset, info.uncompressed_size,
            bool(info.flags & ChunkFlags.COMPRESSED), info.crc32,
        )
        for info in image.chunk_table()
    }  # fmt: skip


def _inode(image: RafsImage, st: Stat, chunks: dict[tuple[int, int], Chunk]) -> Inode:
    inode = Inode(st.mode, st.uid, st.gid, st.mtime, st.mtime_nsec)
    if st.xattr_size:
        inode.xattrs = image.xattrs(st.nid)
    if st.is_reg:
        inode.size = st.size
        if st.size:
            try:
                inode.chunks = [chunks[key] for key in image.chunk_keys(st.nid)]
            except KeyError:
                image.file_chunks(st.nid)  # raises the FormatError naming the bad chunk
                raise
    elif st.is_symlink:
        inode.target = image.readlink(st.nid)
        inode.size = len(inode.target)
    elif st.rdev != (0, 0):
        inode.rdev = encode_rdev(*st.rdev)
    return inode


def tree_from_bootstrap(image: RafsImage, blob_map: dict[int, int] | None = None) -> Inode:
    """The whole tree of a bootstrap; `blob_map` renumbers the blobs its chunks point at.

    Regular files that share a nid become one `Inode` under several names (hard links).
    """
    chunks = _chunks(image, blob_map or {})
    root = _inode(image, image.stat(image.root_nid), chunks)
    files: dict[int, Inode] = {}
    seen_dirs = {image.root_nid}
    pending = [(image.root_nid, root)]
    while pending:
        nid, directory = pending.pop()
        for entry in image.children(nid):
            st = image.stat(entry.nid)
            if st.is_dir:
                if entry.nid in seen_dirs:
                    raise FormatError(f"{image.source}: directory nid {entry.nid} is reachable "
                                      "twice (a cycle?)")  # fmt: skip
                seen_dirs.add(entry.nid)
                child = _inode(image, st, chunks)
                pending.append((entry.nid, child))
            elif st.is_reg:
                shared = files.get(entry.nid)  # a later name of a hard-linked file
                child = shared if shared is not None else _inode(image, st, chunks)
                files[entry.nid] = child
            else:
                child = _inode(image, st, chunks)
            directory.children[entry.name] = child
    return root


# -- overlay on trees -----------------------------------------------------------------------


def _whiteout_target(name: bytes, inode: Inode, spec: str) -> bytes | None:
    if spec == "oci" and name.startswith(OCI_WHITEOUT_PREFIX) and name != OCI_OPAQUE_MARKER:
        return name[len(OCI_WHITEOUT_PREFIX) :]
    if spec == "overlayfs" and stat.S_ISCHR(inode.mode) and inode.rdev == 0:
        return name
    return None


def _is_opaque(upper: Inode, spec: str) -> bool:
    if spec == "oci":
        return OCI_OPAQUE_MARKER in upper.children
    if spec == "overlayfs":
        return upper.xattrs.get(OVERLAYFS_OPAQUE_XATTR) == b"y"
    return False


def _is_implied(directory: Inode) -> bool:
    return (directory.mode == stat.S_IFDIR | 0o755 and directory.uid == 0
            and directory.gid == 0 and directory.mtime == 0 and directory.mtime_nsec == 0
            and not directory.xattrs)  # fmt: skip


def merge_directory(lower: Inode | None, upper: Inode, spec: str) -> Inode:
    """Merge directory `upper` over `lower` (None: nothing below), reusing both."""
    children = lower.children if lower is not None else {}
    if _is_opaque(upper, spec):
        children.clear()
        if spec == "overlayfs":
            del upper.xattrs[OVERLAYFS_OPAQUE_XATTR]
    kept = {}
    for name, child in upper.children.items():
        if spec == "oci" and name == OCI_OPAQUE_MARKER:
            continue
        target = _whiteout_target(name, child, spec)
        if target is not None:
            children.pop(target, None)
        else:
            kept[name] = child
    for name, child in kept.items():
        old = children.get(name)
        if child.is_dir:
            children[name] = merge_directory(old if old is not None and old.is_dir else None,
                                             child, spec)  # fmt: skip
        else:
            children[name] = child
    merged = lower if lower is not None and _is_implied(upper) else upper
    merged.children = children
    return merged


# -- merge ----------------------------------------------------------------------------------


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


def reference_merge(layers: Sequence[MergeLayer], options: MergeOptions) -> MergeResult:
    """What `merge_layers` must give, computed through `Inode` trees."""
    root: Inode | None = None
    blobs: dict[str, int] = {}
    entries: list[BlobEntry] = []
    image = None
    for layer in layers:
        image = layer_bootstrap(layer)
        mapping = {}
        own = layer_own_blob(layer, image)
        for index, blob in enumerate(image.blobs):
            if index == own:
                blob = replace(
                    blob,
                    blob_id=layer.hex.encode(),
                    features=blob.features & ~BlobFeatures.INLINED_FS_META,
                )
            if blob.id not in blobs:
                blobs[blob.id] = len(entries)
                entries.append(blob)
            mapping[blob.blob_index] = blobs[blob.id]
        root = merge_directory(root, tree_from_bootstrap(image, mapping), options.whiteout_spec)
    assert image is not None and root is not None
    order = _blob_order(root)
    relabel_blobs(root, {old: new for new, old in enumerate(order)})
    bootstrap = write_bootstrap(root, [entries[old] for old in order],
                                merged_options(image, options.prefetch_patterns))
    return MergeResult(_with_has_xattr(bootstrap),
                       [f"sha256:{entries[old].id}" for old in order])  # fmt: skip


def _with_has_xattr(bootstrap: bytes) -> bytes:
    """The bootstrap with HAS_XATTR set, as nydus merge always sets it."""
    data = bytearray(bootstrap)
    ext = SuperBlockExt.unpack(data, RAFS_EXT_SUPER_OFFSET)
    flags = ext.s_flags | RafsSuperFlags.HAS_XATTR
    data[RAFS_EXT_SUPER_OFFSET : RAFS_EXT_SUPER_OFFSET + SuperBlockExt.SIZE] = replace(
        ext, s_flags=int(flags)
    ).pack()
    return bytes(data)
