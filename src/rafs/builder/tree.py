"""The in-memory file tree a build produces and the bootstrap writer consumes.

An `Inode` carries one file's attributes; a directory inode maps names to child inodes.
A hard link is the same `Inode` object under several names, so `nlink` is derived, never
stored. Regular files list their chunks in file order.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import NamedTuple

from rafs.format.inode import ModeKind
from rafs.format.xattr import find_namespace

log = logging.getLogger(__name__)


class Chunk(NamedTuple):
    """One chunk stored in a data blob; files that hold the same data share it.

    A named tuple rather than a dataclass: builds make one per chunk, and this is cheap.
    """

    digest: bytes
    blob_index: int
    ci_index: int
    compressed_offset: int
    compressed_size: int
    uncompressed_offset: int
    uncompressed_size: int
    compressed: bool
    crc32: int


@dataclass(eq=False, slots=True)
class Inode(ModeKind):
    """A file's attributes; directories also hold their children by name."""

    mode: int
    uid: int = 0
    gid: int = 0
    mtime: int = 0
    mtime_nsec: int = 0
    size: int = 0
    rdev: int = 0  # Linux new_encode_dev form
    xattrs: dict[bytes, bytes] = field(default_factory=dict)
    target: bytes = b""  # symlink target
    chunks: list[Chunk] = field(default_factory=list)
    children: dict[bytes, Inode] = field(default_factory=dict)


SYMLINK_MODE = stat.S_IFLNK | 0o777
"""The mode every symlink gets: Linux filesystems, GNU tar, umoci and containerd all show
symlinks as `lrwxrwxrwx`, whatever permission bits a tar header carries (Python's tarfile
writes 0644); the kernel ignores a symlink's permissions, but shows those it is given."""


def storable_xattrs(xattrs: dict[bytes, bytes], where: str) -> dict[bytes, bytes]:
    """The xattrs of a source entry that RAFS v6 can store: those in a namespace EROFS has a
    name prefix for (`find_namespace`). Any other (macOS tars carry bare names such as
    `com.apple.provenance`) is dropped with one warning naming `where` and the xattr, as
    containerd's applier drops the xattrs a filesystem refuses, instead of failing the layer.
    """
    kept = {}
    for name, value in xattrs.items():
        if find_namespace(name) is not None:
            kept[name] = value
        else:
            log.warning("%s: xattr %r dropped: RAFS v6 has no namespace for it", where,
                        name.decode(errors="backslashreplace"))  # fmt: skip
    return kept


def new_directory(mode: int = 0o755) -> Inode:
    """A directory as nydus makes for parents a tar never names: 0755, root, mtime 0."""
    return Inode(mode=stat.S_IFDIR | mode)


def has_implied_attributes(mode: int, uid: int, gid: int, mtime: int, mtime_nsec: int) -> bool:
    """Whether a directory has the attributes `new_directory` gives a parent no tar entry
    named (0755, root, mtime 0); such a directory also has no xattrs, which callers check."""
    return (mode == stat.S_IFDIR | 0o755 and uid == 0 and gid == 0 and mtime == 0
            and mtime_nsec == 0)  # fmt: skip


def relabel_blobs(root: Inode, mapping: dict[int, int]) -> None:
    """Give every chunk in the tree the blob index `mapping` assigns to its current one."""
    if all(old == new for old, new in mapping.items()):
        return
    seen: set[int] = set()
    pending = [root]
    while pending:
        directory = pending.pop()
        for child in directory.children.values():
            if child.is_dir:
                pending.append(child)
            elif child.chunks and id(child) not in seen:
                seen.add(id(child))
                child.chunks = [c._replace(blob_index=mapping[c.blob_index]) for c in child.chunks]


@contextlib.contextmanager
def cyclic_gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector while a tree is built, merged or written.

    That allocates a few container objects per file and chunk and frees them by reference
    counting (trees are acyclic); the collector's repeated full scans of the growing heap
    cost over 10% of a build of the kernel tree and find nothing.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()
