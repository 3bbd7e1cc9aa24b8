"""Turn an OCI tar layer into a tree, storing file data in a blob as it streams by.

Entries are taken in stream order, as the Go converter's `tar-rafs` build does: file data
goes to the blob writer immediately; a later entry for the same path replaces the earlier
one (a directory replacing a directory keeps its children); parents a tar never names are
made as 0755 root-owned directories with mtime 0; a `./` entry sets the root's attributes.
PAX and GNU long names and links, PAX `SCHILY.xattr.*` xattrs, hard links (sharing the
target's inode), symlinks, devices and fifos are understood; a symlink's mode is always
0777, whatever its header says, and an xattr outside the namespaces RAFS v6 stores is
dropped with a warning (`storable_xattrs`). Names that climb out of the layer (`..`) or
are absolute are refused, as are sparse and contiguous files. Whiteouts are kept as the
files they are, except (OCI spec) a `.wh.` entry below a path this layer made a file or
symlink: it hides nothing, and keeping it would turn the file into a directory.
"""

from __future__ import annotations

import stat
from typing import IO

from rafs.builder.blob import BlobWriter, Readable
from rafs.builder.overlay import OCI_WHITEOUT_PREFIX
from rafs.builder.source import DECOMPRESSION_ERRORS
from rafs.builder.tarstream import (
    BLOCKDEV,
    CHARDEV,
    DIRECTORY,
    FIFO,
    HARDLINK,
    REGULAR,
    SYMLINK,
    TarEntry,
    TarStream,
)
from rafs.builder.tree import SYMLINK_MODE, Inode, new_directory, storable_xattrs
from rafs.errors import FormatError, RafsError, Unsupported
from rafs.format.dirent import EROFS_NAME_LEN
from rafs.format.inode import encode_rdev

_TYPE_BITS = {
    REGULAR: stat.S_IFREG,
    DIRECTORY: stat.S_IFDIR,
    SYMLINK: stat.S_IFLNK,
    CHARDEV: stat.S_IFCHR,
    BLOCKDEV: stat.S_IFBLK,
    FIFO: stat.S_IFIFO,
}


def split_path(name: bytes) -> list[bytes]:
    """Components of a tar member name, refusing names that leave the layer."""
    if name.startswith(b"/"):
        raise FormatError("absolute name")
    parts = [part for part in name.split(b"/") if part and part != b"."]
    if b".." in parts:
        raise FormatError("name climbs out with '..'")
    if any(len(part) > EROFS_NAME_LEN for part in parts):
        raise FormatError("a name component is over 255 bytes")
    return parts


class TarTreeBuilder:
    """Accumulates a tree from tar entries; file data goes to a `BlobWriter`."""

    def __init__(self, blob: BlobWriter, whiteout_spec: str, source: str) -> None:
        self.root = new_directory()
        self._source = source
        self._blob = blob
        self._whiteouts = whiteout_spec == "oci"
        self._last_dir_path: list[bytes] = []
        self._last_dir = self.root

    def _parent(self, parts: list[bytes]) -> Inode:
        """The directory holding `parts[-1]`, made as needed (the last one is cached)."""
        dir_parts = parts[:-1]
        if dir_parts == self._last_dir_path and self._last_dir.is_dir:
            return self._last_dir
        node = self.root
        for part in dir_parts:
            child = node.children.get(part)
            if child is None or not child.is_dir:
                child = node.children[part] = new_directory()
            node = child
        self._last_dir_path, self._last_dir = dir_parts, node
        return node

    def _under_non_directory(self, parts: list[bytes]) -> bool:
        node: Inode | None = self.root
        for part in parts[:-1]:
            node = node.children.get(part) if node is not None else None
            if node is None:
                return False
            if not node.is_dir:
                return True
        return False

    def _lookup(self, parts: list[bytes]) -> Inode | None:
        node: Inode | None = self.root
        for part in parts:
            node = node.children.get(part) if node is not None and node.is_dir else None
        return node

    def add(self, entry: TarEntry, data: Readable) -> None:
        if entry.sparse:
            raise Unsupported("sparse files are not supported")
        parts = split_path(entry.name)
        if self._whiteouts and parts and parts[-1].startswith(OCI_WHITEOUT_PREFIX) and \
                self._under_non_directory(parts):
            return  # hides a child of what this layer made a file: nothing to hide (umoci)
        if entry.type == HARDLINK:
            self._add_hardlink(parts, entry)
            return
        type_bits = _TYPE_BITS.get(entry.type)
        if type_bits is None:
            raise Unsupported(f"unsupported tar entry type {entry.type!r}")
        if entry.mtime < 0:
            raise Unsupported("mtime before 1970 cannot be stored in RAFS")
        mode = SYMLINK_MODE if type_bits == stat.S_IFLNK else type_bits | (entry.mode & 0o7777)
        inode = Inode(mode, entry.uid, entry.gid, entry.mtime, entry.mtime_nsec)
        if entry.xattrs:
            inode.xattrs = storable_xattrs(entry.xattrs, f"{self._source}: tar entry "
                                           f"{entry.name.decode(errors='backslashreplace')!r}")
        if type_bits == stat.S_IFREG:
            inode.size = entry.size
            if entry.size:
                self._blob.add_file(inode, data, entry.size, "file data")
        elif type_bits == stat.S_IFLNK:
            inode.target = entry.linkname
            inode.size = len(entry.linkname)
        elif type_bits != stat.S_IFDIR and type_bits != stat.S_IFIFO:
            inode.rdev = encode_rdev(entry.devmajor, entry.devminor)
        if not parts:  # "./": the root's own attributes
            if type_bits != stat.S_IFDIR:
                raise FormatError("the layer root is not a directory")
            inode.children = self.root.children
            self.root = inode
            self._last_dir_path, self._last_dir = [], inode
            return
        parent = self._parent(parts)
        old = parent.children.get(parts[-1])
        if old is not None and old.is_dir:
            if type_bits == stat.S_IFDIR:
                inode.children = old.children
            self._last_dir_path = [b"/"]  # the cached directory may be the one replaced
        parent.children[parts[-1]] = inode

    def _add_hardlink(self, parts: list[bytes], entry: TarEntry) -> None:
        target = self._lookup(split_path(entry.linkname))
        if target is None:
            raise FormatError(f"hard link to missing {entry.linkname!r}")
        if target.is_dir:
            raise FormatError("hard link to a directory")
        if not parts:
            raise FormatError("hard link named as the layer root")
        if not target.is_reg:  # RAFS shares inodes only between regular files
            target = Inode(target.mode, target.uid, target.gid, target.mtime,
                           target.mtime_nsec, target.size, target.rdev, dict(target.xattrs),
                           target.target)  # fmt: skip
        self._parent(parts).children[parts[-1]] = target


def tree_from_tar(stream: IO[bytes], blob: BlobWriter, source: str,
                  whiteout_spec: str = "oci") -> Inode:  # fmt: skip
    """Read a whole (uncompressed) tar stream into a tree."""
    builder = TarTreeBuilder(blob, whiteout_spec, source)
    try:
        for entry, data in TarStream(stream):
            try:
                builder.add(entry, data)
            except RafsError as exc:
                raise type(exc)(f"tar entry {entry.name!r}: {exc}") from None
    except RafsError as exc:
        raise type(exc)(f"{source}: {exc}") from None
    except DECOMPRESSION_ERRORS as exc:
        # gzip and zstd sources fail inside the tar reader's reads
        raise FormatError(f"{source}: truncated or corrupt input: {exc}") from None
    blob.flush()
    return builder.root
