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
"""

from __future__ import annotations

import stat

from rafs.builder.tree import Inode

OCI_WHITEOUT_PREFIX = b".wh."
OCI_OPAQUE_MARKER = b".wh..wh..opq"
OVERLAYFS_OPAQUE_XATTR = b"trusted.overlay.opaque"


def _is_overlayfs_whiteout(inode: Inode) -> bool:
    return stat.S_ISCHR(inode.mode) and inode.rdev == 0


def _whiteout_target(name: bytes, inode: Inode, spec: str) -> bytes | None:
    """The lower name an upper entry hides, or None when it is not a whiteout."""
    if spec == "oci" and name.startswith(OCI_WHITEOUT_PREFIX) and name != OCI_OPAQUE_MARKER:
        return name[len(OCI_WHITEOUT_PREFIX) :]
    if spec == "overlayfs" and _is_overlayfs_whiteout(inode):
        return name
    return None


def _is_opaque(upper: Inode, spec: str) -> bool:
    if spec == "oci":
        return OCI_OPAQUE_MARKER in upper.children
    if spec == "overlayfs":
        return upper.xattrs.get(OVERLAYFS_OPAQUE_XATTR) == b"y"
    return False


def _is_implied(directory: Inode) -> bool:
    """Whether a directory has exactly the attributes `create` gives a parent that a tar
    never names (0755, root, mtime 0, no xattrs)."""
    return (directory.mode == stat.S_IFDIR | 0o755 and directory.uid == 0
            and directory.gid == 0 and directory.mtime == 0 and directory.mtime_nsec == 0
            and not directory.xattrs)  # fmt: skip


def merge_directory(lower: Inode | None, upper: Inode, spec: str) -> Inode:
    """Merge directory `upper` over `lower` (None: nothing below); returns the merged
    directory, reusing both."""
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
