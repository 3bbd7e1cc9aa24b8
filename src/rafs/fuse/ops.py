"""pyfuse3 operations of a read-only RAFS v6 image.

Inode numbers are nids, as the kernel EROFS driver reports them, with one exception: FUSE
insists the root is inode 1, so the root's nid and 1 trade places (and nid 0, which FUSE
cannot use, becomes `NID0_INO`). Nothing in an image changes, so entries and attributes
are given long timeouts, file pages are kept in the kernel's cache across opens
(`keep_cache`), and no per-inode state exists (lookup counts need no bookkeeping).

Directory offsets are positions in the on-disk entry list ("." and ".." included): stable
for the life of the image. File reads go through the chunk cache, all on the event loop: a
read whose chunks are cached and verified is answered at once (the cache file's mapped
memory, or a `preadv` into one reply buffer); a read that lacks chunks has them fetched by
the cache's fetch threads (which also read ahead of a streamed file) and waits for them
without blocking the loop, then answers the same way (small chunks a local blob has in the
page cache are fetched on the loop at once: see `ChunkCache.request`). Only a read the cache
could not keep (a tight `--cache-limit`) takes a worker thread. Every read is also reported
to `rafs.fuse.readahead`, which fetches ahead across files when reads follow directory order.

What `read` returns may be reused memory because pyfuse3 hands it (any buffer) to
`fuse_reply_buf`, which copies it to the kernel, right after `read` returns and before
another request runs on the loop.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future
from functools import lru_cache
from types import TracebackType
from typing import Any

import pyfuse3
import trio

from rafs.errors import RafsError
from rafs.format.record import align_up
from rafs.fuse.readahead import DirectoryReadAhead
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
        self._reply = bytearray()  # see the module docstring
        self._files_ahead = DirectoryReadAhead(image, cache, self._entries)

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
            self._files_ahead.found_in(nid, child)
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
            nid = self.nid(fh)
            entries: list[DirEntry] = self._entries(nid)
            for position in range(start_id, len(entries)):
                entry = entries[position]
                self._files_ahead.found_in(nid, entry.nid)
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
        with _errors("statfs", pyfuse3.ROOT_INODE):
            return self._statfs()

    def _statfs(self) -> pyfuse3.StatvfsData:
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
            nid = self.nid(inode)
            if not self.image.stat(nid).is_reg:
                raise pyfuse3.FUSEError(errno.EINVAL)
            return pyfuse3.FileInfo(fh=inode, keep_cache=True)

    # pyfuse3 declares `bytes`, but takes any buffer (its fuse_read_async: PyObject_GetBuffer).
    async def read(self, fh: int, off: int, size: int) -> bytes | memoryview:  # type: ignore[override]
        nid = self.nid(fh)
        if len(self._reply) < size:
            self._reply = bytearray(size)
        data: bytes | memoryview | None
        with _errors(f"read [{off}, +{size})", fh, is_read=True):
            data = self.cache.read_ready(nid, off, size, self._reply)
            if data is None:
                await _settled(self.cache.request(nid, off, size))
                data = self.cache.read_ready(nid, off, size, self._reply)
            if data is None:  # not kept in the cache, or evicted since
                data = await trio.to_thread.run_sync(self.cache.read, nid, off, size)
            self._files_ahead.note_read(nid, off, size)
        return data


async def _settled(futures: Iterable[Future[Any]]) -> None:
    """Wait until `futures` (settled by other threads) are done, raising the first error;
    the loop sleeps meanwhile and serves other requests."""
    token = trio.lowlevel.current_trio_token()
    for future in futures:
        if not future.done():
            done = trio.Event()
            future.add_done_callback(_waker(token, done))
            await done.wait()
        error = future.exception()
        if error is not None:
            raise error


def _waker(token: trio.lowlevel.TrioToken, event: trio.Event) -> Callable[[object], None]:
    """A done-callback, called in any thread, that sets `event` on the loop of `token`."""

    def wake(_: object) -> None:
        with contextlib.suppress(trio.RunFinishedError):  # the mount ended: nobody waits
            token.run_sync_soon(event.set)

    return wake


class _errors:
    """Turn an error inside a filesystem call into a FUSE errno, logged, so that one failing
    request never takes the mount down: a RafsError or OSError (bad image data, a blob that
    cannot be read) becomes its errno (EIO for reads, and for OSErrors), and any other
    exception (a bug) EIO, logged with its traceback."""

    def __init__(self, what: str, inode: int, is_read: bool = False) -> None:
        self.what = what
        self.inode = inode
        self.is_read = is_read

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:  # fmt: skip
        if not isinstance(exc, Exception) or isinstance(exc, pyfuse3.FUSEError):
            return  # success, a FUSE answer, or trio's cancellation: as they are
        if isinstance(exc, RafsError | OSError):
            log.error("%s of inode %d failed: %s", self.what, self.inode, exc)
            code = exc.errno if isinstance(exc, RafsError) and not self.is_read else None
        else:
            log.error("%s of inode %d failed: internal error", self.what, self.inode,
                      exc_info=(type(exc), exc, tb))  # fmt: skip
            code = None
        raise pyfuse3.FUSEError(code or errno.EIO) from None
