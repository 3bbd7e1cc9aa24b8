"""pyfuse3 operations of a read-only RAFS v6 image.

Inode numbers are nids, as the kernel EROFS driver reports them, with one exception: FUSE
insists the root is inode 1, so the root's nid and 1 trade places (and nid 0, which FUSE
cannot use, becomes `NID0_INO`). Nothing in an image changes, so entries and attributes
are given long timeouts, file pages are kept in the kernel's cache across opens
(`keep_cache`), and no per-inode state exists (lookup counts need no bookkeeping).

Directory offsets are positions in the on-disk entry list ("." and ".." included): stable
for the life of the image. File reads go through the chunk cache: a read whose chunks are
all cached and verified is answered on the event loop; any other runs in a worker thread,
so a slow fetch does not stall other requests.
"""

from __future__ import annotations

import errno
import logging
import os
from collections.abc import Sequence
from functools import lru_cache

import pyfuse3
import trio

from rafs.errors import RafsError
from rafs.format.record import align_up
from rafs.reader.chunkcache import ChunkCache
from rafs.reader.image import DirEntry, RafsImage

log = logging.getLogger(__name__)

TIMEOUT = 30 * 86400.0
"""Seconds the kernel may trust an entry or attributes: the image never changes."""
NID0_INO = 1 << 48
"""Inode number of nid 0 (FUSE reserves inode 0), beyond any nid an image can have."""
NAME_MAX = 255


class RafsOperations(pyfuse3.Operations):
    """The filesystem calls of one mounted image."""

    supports_dot_lookup = True
    enable_writeback_cache = False
    enable_acl = False

    def __init__(self, image: RafsImage, cache: ChunkCache) -> None:
        super().__init__()
        self.image = image
        self.cache = cache
        self._root = image.root_nid
        self._attrs = lru_cache(maxsize=1 << 16)(self._load_attrs)
        self._entries = lru_cache(maxsize=1 << 12)(image.readdir)
        self._names = lru_cache(maxsize=1 << 12)(self._load_names)
        self._xattrs = lru_cache(maxsize=1 << 12)(image.xattrs)

    # -- inode numbers -----------------------------------------------------------------

    def ino(self, nid: int) -> int:
        if nid == self._root:
            return pyfuse3.ROOT_INODE
        if nid == pyfuse3.ROOT_INODE:
            return self._root or NID0_INO
        return nid or NID0_INO

    def nid(self, ino: int) -> int:
        if ino == pyfuse3.ROOT_INODE:
            return self._root
        if ino == NID0_INO:
            return 0
        return pyfuse3.ROOT_INODE if ino == self._root else ino

    # -- metadata ----------------------------------------------------------------------

    def _load_attrs(self, nid: int) -> pyfuse3.EntryAttributes:
        st = self.image.stat(nid)
        attrs = pyfuse3.EntryAttributes()
        attrs.st_ino = self.ino(nid)
        attrs.generation = 0
        attrs.entry_timeout = TIMEOUT
        attrs.attr_timeout = TIMEOUT
        attrs.st_mode = st.mode
        attrs.st_nlink = st.nlink
        attrs.st_uid = st.uid
        attrs.st_gid = st.gid
        attrs.st_rdev = os.makedev(*st.rdev)
        attrs.st_size = st.size
        attrs.st_blksize = self.image.block_size
        attrs.st_blocks = align_up(st.size, self.image.block_size) // 512  # as EROFS counts
        when = st.mtime * 1_000_000_000 + st.mtime_nsec
        attrs.st_atime_ns = attrs.st_mtime_ns = attrs.st_ctime_ns = when
        return attrs

    def _load_names(self, nid: int) -> dict[bytes, int]:
        return {entry.name: entry.nid for entry in self._entries(nid)}

    def _stat_dir(self, ino: int) -> int:
        nid = self.nid(ino)
        if not self.image.stat(nid).is_dir:
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        return nid

    async def lookup(self, parent_inode: int, name: bytes,
                     ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:  # fmt: skip
        with _errors("lookup", parent_inode):
            nid = self._stat_dir(parent_inode)
            child = nid if name == b"." else self._names(nid).get(name)
            if child is None:
                raise pyfuse3.FUSEError(errno.ENOENT)
            return self._attrs(child)

    async def getattr(self, inode: int,
                      ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:  # fmt: skip
        with _errors("getattr", inode):
            return self._attrs(self.nid(inode))

    async def readlink(self, inode: int, ctx: pyfuse3.RequestContext) -> bytes:
        with _errors("readlink", inode):
            nid = self.nid(inode)
            if not self.image.stat(nid).is_symlink:
                raise pyfuse3.FUSEError(errno.EINVAL)
            return self.image.readlink(nid)

    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> int:
        with _errors("opendir", inode):
            self._stat_dir(inode)
            return inode

    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        with _errors("readdir", fh):
            entries: list[DirEntry] = self._entries(self.nid(fh))
            for position in range(start_id, len(entries)):
                entry = entries[position]
                if not pyfuse3.readdir_reply(token, entry.name, self._attrs(entry.nid),
                                             position + 1):  # fmt: skip
                    return

    async def getxattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> bytes:
        with _errors("getxattr", inode):
            value = self._xattrs(self.nid(inode)).get(name)
            if value is None:
                raise pyfuse3.FUSEError(pyfuse3.ENOATTR)
            return value

    async def listxattr(self, inode: int, ctx: pyfuse3.RequestContext) -> Sequence[bytes]:
        with _errors("listxattr", inode):
            return list(self._xattrs(self.nid(inode)))

    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        image = self.image
        result = pyfuse3.StatvfsData()
        result.f_bsize = result.f_frsize = image.block_size
        result.f_blocks = image.superblock.s_blocks + sum(d.blocks for d in image.devices)
        result.f_bfree = result.f_bavail = 0
        result.f_files = image.superblock.s_inos
        result.f_ffree = result.f_favail = 0
        result.f_namemax = NAME_MAX
        return result

    # -- file data ---------------------------------------------------------------------

    async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        with _errors("open", inode):
            if flags & os.O_ACCMODE != os.O_RDONLY:
                raise pyfuse3.FUSEError(errno.EROFS)
            if not self.image.stat(self.nid(inode)).is_reg:
                raise pyfuse3.FUSEError(errno.EINVAL)
            return pyfuse3.FileInfo(fh=inode, keep_cache=True)

    async def read(self, fh: int, off: int, size: int) -> bytes:
        nid = self.nid(fh)
        try:
            data = self.cache.read_ready(nid, off, size)
            if data is None:
                data = await trio.to_thread.run_sync(self.cache.read, nid, off, size)
            return data
        except (RafsError, OSError) as exc:
            log.error("read of nid %d [%d, +%d) failed: %s", nid, off, size, exc)
            raise pyfuse3.FUSEError(errno.EIO) from None


class _errors:
    """Turn a RafsError or OSError inside a metadata call into a FUSE errno, logged."""

    def __init__(self, what: str, inode: int) -> None:
        self.what = what
        self.inode = inode

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: object) -> None:  # fmt: skip
        if isinstance(exc, RafsError | OSError):
            log.error("%s of inode %d failed: %s", self.what, self.inode, exc)
            code = exc.errno if isinstance(exc, RafsError) else errno.EIO
            raise pyfuse3.FUSEError(code or errno.EIO) from None
