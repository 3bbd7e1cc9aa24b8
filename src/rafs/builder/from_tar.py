"""Turn an OCI tar layer into a tree, storing file data in a blob as it streams by.

Entries are taken in stream order, as the Go converter's `tar-rafs` build does: file data
goes to the blob writer immediately; a later entry for the same path replaces the earlier
one (a directory replacing a directory keeps its children); parents a tar never names are
made as 0755 root-owned directories with mtime 0; a `./` entry sets the root's attributes.
PAX and GNU long names and links, PAX `SCHILY.xattr.*` xattrs, hard links (sharing the
target's inode), symlinks, devices and fifos are understood. Names that climb out of the
layer (`..`) or are absolute are refused, as are sparse and contiguous files.
"""

from __future__ import annotations

import stat
import tarfile
from typing import IO

from rafs.builder.blob import BlobWriter
from rafs.builder.tree import Inode, new_directory
from rafs.errors import FormatError, Unsupported
from rafs.format.dirent import EROFS_NAME_LEN
from rafs.format.inode import encode_rdev
from rafs.format.xattr import split_name

PAX_XATTR = "SCHILY.xattr."
_TYPE_BITS = {
    tarfile.REGTYPE: stat.S_IFREG,
    tarfile.AREGTYPE: stat.S_IFREG,
    tarfile.DIRTYPE: stat.S_IFDIR,
    tarfile.SYMTYPE: stat.S_IFLNK,
    tarfile.CHRTYPE: stat.S_IFCHR,
    tarfile.BLKTYPE: stat.S_IFBLK,
    tarfile.FIFOTYPE: stat.S_IFIFO,
}


def _raw(text: str) -> bytes:
    """tarfile decodes names as UTF-8 with surrogateescape; this gives the bytes back."""
    return text.encode("utf-8", "surrogateescape")


def split_path(name: str, source: str) -> list[bytes]:
    """Components of a tar member name, refusing names that leave the layer."""
    raw = _raw(name)
    if raw.startswith(b"/"):
        raise FormatError(f"{source}: tar entry {raw!r} has an absolute name")
    parts = []
    for part in raw.split(b"/"):
        if part in (b"", b"."):
            continue
        if part == b"..":
            raise FormatError(f"{source}: tar entry {raw!r} climbs out with '..'")
        if len(part) > EROFS_NAME_LEN:
            raise FormatError(f"{source}: tar entry {raw!r} has a name over 255 bytes")
        parts.append(part)
    return parts


def _xattrs(member: tarfile.TarInfo, source: str) -> dict[bytes, bytes]:
    xattrs = {}
    for key, value in member.pax_headers.items():
        if key.startswith(PAX_XATTR):
            name = _raw(key[len(PAX_XATTR) :])
            split_name(name)  # refuse namespaces RAFS cannot store, naming the entry
            xattrs[name] = _raw(value)
    return xattrs


def _mtime(member: tarfile.TarInfo, where: str) -> tuple[int, int]:
    """(seconds, nanoseconds), exact: PAX `mtime` is decimal text and a float would round."""
    text = member.pax_headers.get("mtime")
    if text is None:
        seconds, nanoseconds = int(member.mtime), 0
    else:
        whole, _, fraction = text.partition(".")
        try:
            seconds = int(whole)
            nanoseconds = int((fraction + "000000000")[:9]) if fraction else 0
        except ValueError:
            raise FormatError(f"{where}: bad PAX mtime {text!r}") from None
    if seconds < 0:
        raise Unsupported(f"{where}: mtime before 1970 cannot be stored in RAFS")
    return seconds, nanoseconds


class TarTreeBuilder:
    """Accumulates a tree from tar members; file data goes to a `BlobWriter`."""

    def __init__(self, blob: BlobWriter, source: str) -> None:
        self.root = new_directory()
        self._blob = blob
        self._source = source

    def _parent(self, parts: list[bytes]) -> Inode:
        node = self.root
        for part in parts[:-1]:
            child = node.children.get(part)
            if child is None or not child.is_dir:
                child = node.children[part] = new_directory()
            node = child
        return node

    def _lookup(self, parts: list[bytes]) -> Inode | None:
        node: Inode | None = self.root
        for part in parts:
            node = node.children.get(part) if node is not None and node.is_dir else None
        return node

    def add(self, member: tarfile.TarInfo, stream: tarfile.TarFile) -> None:
        where = f"{self._source}: tar entry {member.name!r}"
        if member.issparse() or member.type == tarfile.CONTTYPE:
            raise Unsupported(f"{where}: sparse and contiguous files are not supported")
        parts = split_path(member.name, self._source)
        if member.type == tarfile.LNKTYPE:
            self._add_hardlink(parts, member, where)
            return
        type_bits = _TYPE_BITS.get(member.type)
        if type_bits is None:
            raise Unsupported(f"{where}: unsupported tar entry type {member.type!r}")
        seconds, nanoseconds = _mtime(member, where)
        inode = Inode(
            mode=type_bits | (member.mode & 0o7777),
            uid=member.uid,
            gid=member.gid,
            mtime=seconds,
            mtime_nsec=nanoseconds,
            xattrs=_xattrs(member, self._source),
        )
        if type_bits == stat.S_IFREG:
            inode.size = member.size
            if member.size:
                reader = stream.extractfile(member)
                if reader is None:
                    raise FormatError(f"{where}: no data")
                self._blob.add_file(inode, reader, member.size, where)
        elif type_bits == stat.S_IFLNK:
            inode.target = _raw(member.linkname)
            inode.size = len(inode.target)
        elif type_bits in (stat.S_IFCHR, stat.S_IFBLK):
            inode.rdev = encode_rdev(member.devmajor, member.devminor)
        if not parts:  # "./": the root's own attributes
            inode.children = self.root.children
            if not inode.is_dir:
                raise FormatError(f"{where}: the layer root is not a directory")
            self.root = inode
            return
        parent = self._parent(parts)
        old = parent.children.get(parts[-1])
        if inode.is_dir and old is not None and old.is_dir:
            inode.children = old.children
        parent.children[parts[-1]] = inode

    def _add_hardlink(self, parts: list[bytes], member: tarfile.TarInfo, where: str) -> None:
        target = self._lookup(split_path(member.linkname, self._source))
        if target is None:
            raise FormatError(f"{where}: hard link to missing {member.linkname!r}")
        if target.is_dir:
            raise FormatError(f"{where}: hard link to a directory")
        if not parts:
            raise FormatError(f"{where}: hard link named as the layer root")
        if not target.is_reg:  # RAFS shares inodes only between regular files
            target = Inode(target.mode, target.uid, target.gid, target.mtime,
                           target.mtime_nsec, target.size, target.rdev, dict(target.xattrs),
                           target.target)  # fmt: skip
        self._parent(parts).children[parts[-1]] = target


def tree_from_tar(stream: IO[bytes], blob: BlobWriter, source: str) -> Inode:
    """Read a whole (uncompressed) tar stream into a tree."""
    builder = TarTreeBuilder(blob, source)
    try:
        with tarfile.open(fileobj=stream, mode="r|", errorlevel=2) as archive:
            for member in archive:
                builder.add(member, archive)
    except tarfile.TarError as exc:
        raise FormatError(f"{source}: bad tar: {exc}") from None
    except (EOFError, OSError) as exc:
        raise FormatError(f"{source}: truncated or corrupt input: {exc}") from None
    blob.flush()
    return builder.root
