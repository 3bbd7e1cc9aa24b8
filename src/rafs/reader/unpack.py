"""Unpack a RAFS v6 image: back to an OCI layer tar, or into a directory.

Both walk the tree depth first in name order, the root first, each directory before its
children. Every name is checked before use: a corrupt bootstrap naming an entry "", ".",
"..", or with "/" or NUL in it, or giving one directory the same name twice, is a
`FormatError`, never a path outside the output.

The tar is what `tar --format=pax --xattrs --numeric-owner -C DIR -cf - .` makes: entries
named `./`, `./dir/`, `./dir/file`; ustar headers (names up to 256 bytes through the
prefix field), with a PAX extended header only when an entry needs one: a name or link
target too long for ustar, an mtime with nanoseconds (`mtime=S.NNNNNNNNN`), xattrs
(`SCHILY.xattr.NAME`, raw bytes, `=` and `%` in names percent-encoded as GNU tar does), ids
or sizes past the ustar octal limits. A non-directory inode seen under a second name becomes
a link entry (type '1') to its first name. Sockets cannot be stored in a tar; they are left
out and reported. Whiteouts (`.wh.*`, overlayfs 0:0 devices) are ordinary entries of a
single layer and come out as they are. File data is streamed one chunk at a time.

A single layer's tar leaves out the parent directories its source tar never named: `create`
gives those fixed attributes (0755, root, mtime 0, no xattrs; see `builder/overlay.py`), and
writing them would reset a lower layer's directory when the tar is applied. They still
appear implicitly through their children; an empty one is written. A merged image's
directories are all written.

Extraction creates every entry relative to an open directory descriptor: directories are
opened with O_NOFOLLOW | O_DIRECTORY, files created with O_EXCL | O_NOFOLLOW, and owner,
xattrs, mode and times set through the open descriptor or with "don't follow" calls, so
neither a symlink from the image nor one already in the target is ever followed. A name that
already exists in the target is replaced (a directory is kept and reused). Owners are set
only when running as root; modes after owners (chown clears setuid); directory modes and
times after their children, bottom up.
"""

from __future__ import annotations

import os
import stat
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from rafs.builder.tree import has_implied_attributes
from rafs.errors import FormatError
from rafs.reader.artifact import Artifact
from rafs.reader.blobs import read_file
from rafs.reader.image import RafsImage, Stat

BLOCK = 512
MAX_OPEN_DIRS = 64  # directory descriptors kept open along the current path
_ZEROS = bytes(BLOCK)


class Sink(Protocol):
    """Where a tar goes: a binary file, stdout, or an `AtomicHashingFile`."""

    def write(self, data: bytes, /) -> int | None: ...


@dataclass
class UnpackSummary:
    """What an unpack wrote, and what it had to leave out."""

    entries: int = 0
    data_bytes: int = 0
    skipped: list[str] = field(default_factory=list)  # paths (sockets in a tar)


# -- the walk shared by both forms ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Entry:
    parts: tuple[bytes, ...]  # path components below the root; () is the root
    st: Stat
    link: tuple[bytes, ...] | None  # first path of the same inode: a hard link
    leave: bool = False  # the end of a directory, after all its children


def _show(parts: tuple[bytes, ...]) -> str:
    return "/" + b"/".join(parts).decode(errors="replace")


def _check_name(image: RafsImage, parts: tuple[bytes, ...], name: bytes) -> None:
    if not name or name in (b".", b"..") or b"/" in name or b"\0" in name:
        raise FormatError(f"{image.source}: directory {_show(parts)} holds an entry named "
                          f"{name!r}, which cannot be a file name")  # fmt: skip


def _walk(image: RafsImage) -> Iterator[_Entry]:
    """Every entry depth first in name order, with a `leave` event closing each directory."""
    root = image.stat(image.root_nid)
    if not root.is_dir:
        raise FormatError(f"{image.source}: the root inode is not a directory")
    seen_dirs = {image.root_nid}
    first_path: dict[int, tuple[bytes, ...]] = {}
    stack: list[tuple[tuple[bytes, ...], int, Stat | None]] = [((), image.root_nid, None)]
    while stack:
        parts, nid, closing = stack.pop()
        if closing is not None:
            yield _Entry(parts, closing, None, leave=True)
            continue
        st = image.stat(nid)
        if not st.is_dir:
            link = first_path.get(nid)
            if link is None and st.nlink > 1:
                first_path[nid] = parts
            yield _Entry(parts, st, link)
            continue
        yield _Entry(parts, st, None)
        stack.append((parts, nid, st))
        children = sorted(image.children(nid), key=lambda e: e.name, reverse=True)
        previous = None
        for entry in children:
            _check_name(image, parts, entry.name)
            if entry.name == previous:
                raise FormatError(f"{image.source}: directory {_show(parts)} names "
                                  f"{entry.name!r} twice")  # fmt: skip
            previous = entry.name
            if image.stat(entry.nid).is_dir:
                if entry.nid in seen_dirs:
                    where = _show((*parts, entry.name))
                    raise FormatError(f"{image.source}: directory cycle at {where}")
                seen_dirs.add(entry.nid)
            stack.append(((*parts, entry.name), entry.nid, None))


def _file_chunks(artifact: Artifact, st: Stat) -> Iterator[bytes]:
    """A regular file's bytes, one chunk at a time."""
    image = artifact.image
    step = image.chunk_size
    for offset in range(0, st.size, step):
        data = read_file(artifact.blobs, st.nid, offset, step)
        if len(data) != min(step, st.size - offset):
            raise FormatError(f"{image.source}: nid {st.nid}: file data ends early")
        yield data


# -- tar -----------------------------------------------------------------------------------

REGTYPE, LNKTYPE, SYMTYPE, CHRTYPE, BLKTYPE, DIRTYPE, FIFOTYPE = b"0123456"
PAX_HEADER_TYPE = b"x"[0]
PAX_HEADER_NAME = b"././@PaxHeader"
_NAME, _PREFIX, _LINK = 100, 155, 100
_MAX_ID = 8**7 - 1  # 7 octal digits (uid, gid, devmajor, devminor)
_MAX_NUM = 8**11 - 1  # 11 octal digits (size, mtime)


def _pax_record(key: bytes, value: bytes) -> bytes:
    """One `"<len> <key>=<value>\\n"` record; the length counts its own digits."""
    body = b" %s=%s\n" % (key, value)
    length = len(body) + len(str(len(body)))
    if len(str(length)) > len(str(len(body))):
        length += 1
    return b"%d%s" % (length, body)


def _xattr_keyword(name: bytes) -> bytes:
    """GNU tar's `SCHILY.xattr.` keyword: '%' and '=' in the name are percent-encoded."""
    return b"SCHILY.xattr." + name.replace(b"%", b"%25").replace(b"=", b"%3D")


def _split_ustar(name: bytes) -> tuple[bytes, bytes] | None:
    """(prefix, name) fields holding `name`, or None when it needs a PAX `path`."""
    if len(name) <= _NAME:
        return b"", name
    # The prefix ends at a '/' (not stored); the rest must fit the name field.
    start = len(name) - _NAME - 1
    slash = name.find(b"/", max(start, 1), _PREFIX + 1)
    while slash != -1:
        rest = name[slash + 1 :]
        if rest and rest != b"/":
            return name[:slash], rest
        slash = name.find(b"/", slash + 1, _PREFIX + 1)
    return None


def tar_header(name: bytes, st: Stat, kind: int, size: int = 0, linkname: bytes = b"",
               xattrs: dict[bytes, bytes] | None = None) -> bytes:  # fmt: skip
    """The header block(s) of one entry: an optional PAX header, then the ustar header."""
    pax: list[bytes] = []
    split = _split_ustar(name)
    if split is None:
        pax.append(_pax_record(b"path", name))
        split = b"", name[:_NAME]
    if len(linkname) > _LINK:
        pax.append(_pax_record(b"linkpath", linkname))
    uid, gid, mtime = st.uid, st.gid, st.mtime
    if uid > _MAX_ID:
        pax.append(_pax_record(b"uid", b"%d" % uid))
        uid = 0
    if gid > _MAX_ID:
        pax.append(_pax_record(b"gid", b"%d" % gid))
        gid = 0
    if size > _MAX_NUM:
        pax.append(_pax_record(b"size", b"%d" % size))
    if st.mtime_nsec:
        pax.append(_pax_record(b"mtime", b"%d.%09d" % (mtime, st.mtime_nsec)))
    elif mtime > _MAX_NUM:
        pax.append(_pax_record(b"mtime", b"%d" % mtime))
    if mtime > _MAX_NUM:
        mtime = 0
    for key, value in (xattrs or {}).items():
        pax.append(_pax_record(_xattr_keyword(key), value))
    major, minor = st.rdev if kind in (CHRTYPE, BLKTYPE) else (0, 0)
    if major > _MAX_ID or minor > _MAX_ID:
        raise FormatError(f"device {major}:{minor} does not fit a tar header")
    ustar_size = size if size <= _MAX_NUM else 0  # past it, the PAX size record counts
    header = _ustar(split, st.mode & 0o7777, uid, gid, ustar_size, mtime, kind,
                    linkname[:_LINK], major, minor)  # fmt: skip
    if not pax:
        return header
    records = b"".join(pax)
    extended = _ustar((b"", PAX_HEADER_NAME), 0o644, 0, 0, len(records), 0, PAX_HEADER_TYPE,
                      b"", 0, 0)  # fmt: skip
    return extended + records + _ZEROS[: -len(records) % BLOCK] + header


_USTAR = struct.Struct("100s8s8s8s12s12s8sc100s8s64s8s8s155s12x")
assert _USTAR.size == BLOCK


def _ustar(split: tuple[bytes, bytes], mode: int, uid: int, gid: int, size: int, mtime: int,
           kind: int, linkname: bytes, major: int, minor: int) -> bytes:  # fmt: skip
    prefix, name = split
    fields = [name, b"%07o\0" % mode, b"%07o\0" % uid, b"%07o\0" % gid, b"%011o\0" % size,
              b"%011o\0" % mtime, b"        ", bytes((kind,)), linkname, b"ustar\x0000", b"",
              b"%07o\0" % major, b"%07o\0" % minor, prefix]  # fmt: skip
    head = _USTAR.pack(*fields)
    fields[6] = b"%06o\0 " % sum(head)
    return _USTAR.pack(*fields)


_TAR_KINDS = {
    stat.S_IFREG: REGTYPE,
    stat.S_IFDIR: DIRTYPE,
    stat.S_IFLNK: SYMTYPE,
    stat.S_IFCHR: CHRTYPE,
    stat.S_IFBLK: BLKTYPE,
    stat.S_IFIFO: FIFOTYPE,
}


def _is_implied_parent(image: RafsImage, st: Stat) -> bool:
    """A non-empty directory with the attributes `create` gives parents a tar left out."""
    return (has_implied_attributes(st.mode, st.uid, st.gid, st.mtime, st.mtime_nsec)
            and not st.xattr_size and bool(image.children(st.nid)))  # fmt: skip


def write_tar(artifact: Artifact, out: Sink) -> UnpackSummary:
    """Write the image as an uncompressed OCI layer tar to `out` (see the module docstring)."""
    image = artifact.image
    summary = UnpackSummary()
    write = out.write
    is_layer = artifact.blobs.holds_layer
    for entry in _walk(image):
        if entry.leave:
            continue
        st = entry.st
        if is_layer and st.is_dir and _is_implied_parent(image, st):
            continue
        path = b"./" + b"/".join(entry.parts)
        fmt = stat.S_IFMT(st.mode)
        if fmt == stat.S_IFSOCK:
            summary.skipped.append(_show(entry.parts))
            continue
        kind = _TAR_KINDS.get(fmt)
        if kind is None:
            raise FormatError(f"{image.source}: {_show(entry.parts)}: unknown file type "
                              f"{st.mode:#o}")  # fmt: skip
        summary.entries += 1
        if entry.link is not None:
            write(tar_header(path, st, LNKTYPE, linkname=b"./" + b"/".join(entry.link)))
            continue
        xattrs = image.xattrs(st.nid) if st.xattr_size else None
        if kind == DIRTYPE:
            write(tar_header(path if not entry.parts else path + b"/", st, kind, xattrs=xattrs))
        elif kind == SYMTYPE:
            target = image.readlink(st.nid)
            if b"\0" in target:
                raise FormatError(f"{image.source}: {_show(entry.parts)}: symlink target "
                                  "holds a NUL byte")  # fmt: skip
            write(tar_header(path, st, kind, linkname=target, xattrs=xattrs))
        elif kind == REGTYPE:
            write(tar_header(path, st, kind, size=st.size, xattrs=xattrs))
            for data in _file_chunks(artifact, st):
                write(data)
            if st.size % BLOCK:
                write(_ZEROS[: -st.size % BLOCK])
            summary.data_bytes += st.size
        else:
            write(tar_header(path, st, kind, xattrs=xattrs))
    write(_ZEROS + _ZEROS)
    return summary


# -- directory -----------------------------------------------------------------------------

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


@dataclass(slots=True)
class _Frame:
    """A directory on the current path and, while kept open, its descriptor."""

    fd: int | None
    st: Stat


class _Extractor:
    """Creates entries below an open target directory; see the module docstring.

    `frames` holds the directories on the current path. The innermost one is always open;
    outer ones beyond MAX_OPEN_DIRS are closed and, on the way back up, reopened as ".."
    of their child (never a symlink), so a deep tree needs a bounded number of descriptors.
    """

    def __init__(self, artifact: Artifact, target: Path, root_fd: int,
                 same_owner: bool) -> None:  # fmt: skip
        self.artifact = artifact
        self.image = artifact.image
        self.target = target
        self.root_fd = root_fd
        self.same_owner = same_owner
        self.frames: list[_Frame] = []
        self.summary = UnpackSummary()

    def run(self) -> UnpackSummary:
        for entry in _walk(self.image):
            try:
                self._entry(entry)
            except OSError as exc:
                where = os.fsdecode(self.target) + _show(entry.parts)
                raise OSError(exc.errno, exc.strerror, where) from None
        return self.summary

    def close(self) -> None:
        for frame in self.frames:
            if frame.fd is not None and frame.fd != self.root_fd:
                os.close(frame.fd)
        self.frames.clear()

    def _entry(self, entry: _Entry) -> None:
        st = entry.st
        if entry.leave:
            self._leave_dir(st)
            return
        self.summary.entries += 1
        if not entry.parts:  # the root: the target itself
            self.frames.append(_Frame(self.root_fd, st))
            return
        name = entry.parts[-1]
        parent = self.frames[-1].fd
        assert parent is not None
        if st.is_dir:
            self._make_dir(parent, name, st)
        elif entry.link is not None:
            self._make_link(parent, name, entry.link)
        elif st.is_reg:
            self._make_file(parent, name, st)
        else:
            self._make_special(parent, name, st, entry.parts)

    def _clear(self, parent: int, name: bytes, keep_dir: bool) -> bool:
        """Remove what `name` holds (never following it); True when a directory is kept."""
        try:
            existing = os.stat(name, dir_fd=parent, follow_symlinks=False)
        except FileNotFoundError:
            return False
        if stat.S_ISDIR(existing.st_mode):
            if keep_dir:
                return True
            os.rmdir(name, dir_fd=parent)
        else:
            os.unlink(name, dir_fd=parent)
        return False

    def _make_dir(self, parent: int, name: bytes, st: Stat) -> None:
        try:
            os.mkdir(name, 0o700, dir_fd=parent)
        except FileExistsError:
            if not self._clear(parent, name, keep_dir=True):
                os.mkdir(name, 0o700, dir_fd=parent)
        self.frames.append(_Frame(os.open(name, _DIR_FLAGS, dir_fd=parent), st))
        for frame in self.frames[1 : max(1, len(self.frames) - MAX_OPEN_DIRS)]:
            if frame.fd is not None:
                os.close(frame.fd)
                frame.fd = None

    def _leave_dir(self, st: Stat) -> None:
        frame = self.frames.pop()
        fd = frame.fd
        assert fd is not None
        if self.frames and self.frames[-1].fd is None:
            self.frames[-1].fd = os.open("..", _DIR_FLAGS, dir_fd=fd)
        try:
            self._set_attrs_fd(fd, st)
        finally:
            if fd != self.root_fd:
                os.close(fd)

    def _open_path(self, parts: tuple[bytes, ...]) -> int:
        """A new descriptor of the directory at `parts`, each component opened no-follow."""
        fd = os.dup(self.root_fd)
        for part in parts:
            try:
                child = os.open(part, _DIR_FLAGS, dir_fd=fd)
            finally:
                os.close(fd)
            fd = child
        return fd

    def _make_link(self, parent: int, name: bytes, first: tuple[bytes, ...]) -> None:
        source = self._open_path(first[:-1])
        try:
            try:
                os.link(first[-1], name, src_dir_fd=source, dst_dir_fd=parent,
                        follow_symlinks=False)  # fmt: skip
            except FileExistsError:
                self._clear(parent, name, keep_dir=False)
                os.link(first[-1], name, src_dir_fd=source, dst_dir_fd=parent,
                        follow_symlinks=False)  # fmt: skip
        finally:
            os.close(source)

    def _make_file(self, parent: int, name: bytes, st: Stat) -> None:
        try:
            fd = os.open(name, _FILE_FLAGS, 0o600, dir_fd=parent)
        except FileExistsError:
            self._clear(parent, name, keep_dir=False)
            fd = os.open(name, _FILE_FLAGS, 0o600, dir_fd=parent)
        try:
            with open(fd, "wb", closefd=False) as f:
                for data in _file_chunks(self.artifact, st):
                    f.write(data)
            self.summary.data_bytes += st.size
            self._set_attrs_fd(fd, st)
        finally:
            os.close(fd)

    def _make_special(self, parent: int, name: bytes, st: Stat,
                      parts: tuple[bytes, ...]) -> None:  # fmt: skip
        """A symlink, device, fifo or socket; attributes set by name, never followed."""
        fmt = stat.S_IFMT(st.mode)
        target = None
        if fmt == stat.S_IFLNK:
            target = self.image.readlink(st.nid)
            if b"\0" in target:
                raise FormatError(f"{self.image.source}: {_show(parts)}: symlink target "
                                  "holds a NUL byte")  # fmt: skip
        elif fmt not in (stat.S_IFCHR, stat.S_IFBLK, stat.S_IFIFO, stat.S_IFSOCK):
            raise FormatError(f"{self.image.source}: {_show(parts)}: unknown file type "
                              f"{st.mode:#o}")  # fmt: skip
        try:
            _create_special(parent, name, st, target)
        except FileExistsError:
            self._clear(parent, name, keep_dir=False)
            _create_special(parent, name, st, target)
        if self.same_owner:
            os.chown(name, st.uid, st.gid, dir_fd=parent, follow_symlinks=False)
        if st.xattr_size:
            # No descriptor reaches a symlink or device without opening it; the
            # /proc/self/fd link resolves to the open parent and the name is not followed.
            path = b"/proc/self/fd/%d/%s" % (parent, name)
            for key, value in self.image.xattrs(st.nid).items():
                os.setxattr(path, key, value, follow_symlinks=False)
        if target is None:  # a symlink's mode is always 0777
            os.chmod(name, st.mode & 0o7777, dir_fd=parent, follow_symlinks=False)
        mtime = st.mtime * 1_000_000_000 + st.mtime_nsec
        os.utime(name, ns=(mtime, mtime), dir_fd=parent, follow_symlinks=False)

    def _set_attrs_fd(self, fd: int, st: Stat) -> None:
        """Owner, xattrs, mode (after chown, which clears setuid), then times."""
        if self.same_owner:
            os.fchown(fd, st.uid, st.gid)
        if st.xattr_size:
            for key, value in self.image.xattrs(st.nid).items():
                os.setxattr(fd, key, value)
        os.fchmod(fd, st.mode & 0o7777)
        mtime = st.mtime * 1_000_000_000 + st.mtime_nsec
        os.utime(fd, ns=(mtime, mtime))


def _create_special(parent: int, name: bytes, st: Stat, target: bytes | None) -> None:
    fmt = stat.S_IFMT(st.mode)
    if target is not None:
        os.symlink(target, name, dir_fd=parent)
    elif fmt in (stat.S_IFCHR, stat.S_IFBLK):
        os.mknod(name, fmt | 0o600, os.makedev(*st.rdev), dir_fd=parent)
    else:
        os.mknod(name, fmt | 0o600, dir_fd=parent)


def extract(artifact: Artifact, target: Path, same_owner: bool | None = None) -> UnpackSummary:
    """Extract the image into directory `target` (made if missing), never writing outside it.

    Owners are set when `same_owner` (default: when running as root).
    """
    target.mkdir(parents=True, exist_ok=True)
    root_fd = os.open(target, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    if same_owner is None:
        same_owner = os.geteuid() == 0
    extractor = _Extractor(artifact, target, root_fd, same_owner)
    try:
        return extractor.run()
    finally:
        extractor.close()
        os.close(root_fd)
