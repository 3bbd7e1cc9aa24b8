"""Overlay semantics for stacking layers: whiteouts and opaque directories, in one place.

An upper layer's directory is merged into the lower one in two passes, as
`nydus-image merge` does (`Tree::merge_overaly`):

1. whiteouts: `.wh..wh..opq` in a directory removes every lower child of it; `.wh.NAME`
   removes the lower NAME. With the overlayfs spec, a 0:0 character device removes the
   lower entry of its name, and a directory with `trusted.overlay.opaque=y` hides all its
   lower children (the xattr itself is dropped). Whiteout entries are never kept.
2. every other upper entry replaces the lower one of the same name; when both are
   directories, the upper attributes win and their children are merged recursively.

The whiteout spec `none` interprets nothing. Unlike nydus, whiteouts of the bottom layer
are interpreted too (they hide nothing, so they simply disappear), as the kernel's overlayfs
and umoci do, rather than staying behind as ordinary files.

Also unlike nydus: an OCI layer leaves out the parent directories it did not change, and a
build gives such parents fixed attributes (0755, root, mtime 0). An upper directory with
exactly those attributes is taken as implied and keeps the lower directory's attributes,
as unpacking the layer onto the lower tree (umoci, containerd) does. A layer that really
sets a directory to those values over different lower ones is the rare case this misreads.

The merged tree holds names only: a `MergedDir` maps each name to a `MergedDir` or, for
anything else, to the `Entry` (layer, nid, dirent file type) of the inode that wins. Its own
attributes are those of one layer's directory inode. Layers are read with `RawBootstrap`,
so no object is made per file; a directory of one layer only is taken over in bulk.
"""

from __future__ import annotations

from itertools import repeat

from rafs.builder.raw_bootstrap import Header, RawBootstrap
from rafs.builder.tree import has_implied_attributes
from rafs.errors import FormatError
from rafs.format.inode import EROFS_FT_CHRDEV, EROFS_FT_DIR

OCI_WHITEOUT_PREFIX = b".wh."
OCI_OPAQUE_MARKER = b".wh..wh..opq"
OVERLAYFS_OPAQUE_XATTR = b"trusted.overlay.opaque"
_DIR_TYPE = bytes([EROFS_FT_DIR])

Entry = tuple[int, int, int]
"""A non-directory of the merged tree: (layer index, nid in that layer, dirent file type)."""


class MergedDir:
    """A directory of the merged tree: its attributes come from inode `nid` of layer
    `layer` (with `xattrs` instead of that inode's when they were changed)."""

    __slots__ = ("children", "layer", "nid", "xattrs")

    def __init__(self, layer: int, nid: int, children: dict[bytes, MergedDir | Entry],
                 xattrs: dict[bytes, bytes] | None) -> None:  # fmt: skip
        self.layer = layer
        self.nid = nid
        self.children = children
        self.xattrs = xattrs


def stack_layer(lower: MergedDir | None, layer: RawBootstrap, index: int, spec: str) -> MergedDir:
    """Merge layer number `index` over the tree of the layers below (None: none); returns
    the merged root, reusing `lower`."""
    return _merge(lower, layer, index, layer.root_nid, spec, {layer.root_nid})


def _merge(lower: MergedDir | None, layer: RawBootstrap, index: int, nid: int, spec: str,
           seen: set[int]) -> MergedDir:  # fmt: skip
    """Merge directory `nid` of the upper layer over `lower` (None: nothing below)."""
    header = layer.header(nid, EROFS_FT_DIR)
    names, nids, file_types = layer.listing(nid, header)
    children = lower.children if lower is not None else {}
    xattrs = None
    opaque = spec == "oci" and OCI_OPAQUE_MARKER in names
    if spec == "overlayfs" and header.xattr_icount:
        xattrs = layer.xattrs(nid, header)
        opaque = xattrs.pop(OVERLAYFS_OPAQUE_XATTR, None) == b"y"
        if not opaque:
            xattrs = None  # unchanged: written from the layer's bytes
    if opaque:
        children.clear()
    if spec != "none":
        names, nids, file_types = _apply_whiteouts(children, names, nids, file_types, layer,
                                                   spec)  # fmt: skip
    subdirs = []
    position = file_types.find(_DIR_TYPE)
    while position >= 0:
        subdirs.append((position, children.get(names[position])))
        position = file_types.find(_DIR_TYPE, position + 1)
    children.update(zip(names, zip(repeat(index), nids, file_types, strict=False), strict=True))
    for position, old in subdirs:
        child = nids[position]
        if child in seen:
            raise FormatError(f"{layer.source}: directory nid {child} is reachable twice "
                              "(a cycle?)")  # fmt: skip
        seen.add(child)
        below = old if isinstance(old, MergedDir) else None
        children[names[position]] = _merge(below, layer, index, child, spec, seen)
    if lower is not None and _is_implied(layer, nid, header, xattrs):
        return lower
    return MergedDir(index, nid, children, xattrs)


def _apply_whiteouts(
    children: dict[bytes, MergedDir | Entry],
    names: list[bytes],
    nids: list[int],
    file_types: bytes,
    layer: RawBootstrap,
    spec: str,
) -> tuple[list[bytes], list[int], bytes]:
    """Remove from the lower `children` what the upper entries white out; returns the upper
    entries that are not whiteouts."""
    if spec == "oci":
        # one scan in C: names joined by NULs, which a name never holds (a false hit only
        # costs the loop below)
        if (b"\0" + b"\0".join(names)).find(b"\0" + OCI_WHITEOUT_PREFIX) < 0:
            return names, nids, file_types
        kept = []
        for position, name in enumerate(names):
            if not name.startswith(OCI_WHITEOUT_PREFIX):
                kept.append(position)
            elif name != OCI_OPAQUE_MARKER:
                children.pop(name[len(OCI_WHITEOUT_PREFIX) :], None)
    else:  # overlayfs: a character device 0:0
        if EROFS_FT_CHRDEV not in file_types:
            return names, nids, file_types
        kept = []
        for position, file_type in enumerate(file_types):
            nid = nids[position]
            if file_type == EROFS_FT_CHRDEV and layer.header(nid, file_type).i_u == 0:
                children.pop(names[position], None)
            else:
                kept.append(position)
    return ([names[i] for i in kept], [nids[i] for i in kept],
            bytes(file_types[i] for i in kept))  # fmt: skip


def _is_implied(layer: RawBootstrap, nid: int, header: Header,
                xattrs: dict[bytes, bytes] | None) -> bool:  # fmt: skip
    """Whether a directory has exactly the attributes `create` gives a parent that a tar
    never names (0755, root, mtime 0, no xattrs)."""
    if not has_implied_attributes(header.mode, header.uid, header.gid, header.mtime,
                                  header.mtime_nsec):  # fmt: skip
        return False
    return not (xattrs if xattrs is not None else layer.xattrs(nid, header))
