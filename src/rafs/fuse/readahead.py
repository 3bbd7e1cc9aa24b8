"""Fetching ahead across files, in directory order, for a mount's tree reads.

The chunk cache reads ahead within one file (`ChunkCache`). A tree read file by file (cp -r,
tar, a scanner; any walk in readdir order, which for EROFS is name order) would still wait
at the start of every file for its first chunk: zstd, the digest check and the cache write
of a 1 MiB chunk take milliseconds, against a fraction of one for the kernel reading a
filled cache. Only the FUSE layer knows directories, so it guesses which file comes next, on
two kinds of evidence (`note_read` is told of every read), each bounding what it may fetch
on a wrong guess:

- a file streamed near its end: the part of the read-ahead window lying past its end goes to
  the next regular file of its directory, but never more than the bytes already streamed
  from this one;
- a directory walked in order: once WALK_RUN files of one directory have been read from
  their start, each a little further in the directory than the one before, the files ahead
  are fetched, up to WALK_BYTES (at most the cache's read-ahead window) and WALK_FILES ahead
  of the reader, in batches (small files share a fetch job, and files adjacent in their blob
  one backend request: one HTTP request for a registry).

A lazy start reads few files, rarely in name order: it triggers neither, or little.
A file's directory is the one it was last looked up or listed in (hard links have several).
Errors of files looked at ahead are left for their own reads to report.
"""

from __future__ import annotations

import contextlib
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache

from rafs.errors import RafsError
from rafs.reader.chunkcache import STREAMING_READ, ChunkCache
from rafs.reader.image import DirEntry, RafsImage

NEXT_FILE_SCAN = 16
"""Entries after a file searched for the next regular file of its directory."""
WALK_RUN = 3
"""Files read in directory order before the directory counts as walked."""
WALK_GAP = 16
"""Entries a walk may skip from one file read to the next (files not read, or not again)."""
WALK_BYTES = 8 << 20
WALK_FILES = 32
WALK_SCAN = 256
"""Entries a read may scan for files to fetch ahead of a walk (the rest at later reads)."""
MAX_PARENTS = 1 << 16
"""Files whose directory is remembered."""
MAX_WALKS = 1 << 10


@dataclass
class _Walk:
    """A directory being read file by file: positions are indexes in its entry list."""

    last: int  # the file read last
    run: int = 1  # files read in order, ending with `last`
    frontier: int = -1  # entries up to here were considered for fetching ahead
    ahead: deque[tuple[int, int]] = field(default_factory=deque)  # (position, bytes) fetched


class DirectoryReadAhead:
    """Which files of an image to fetch before they are read, from the reads so far."""

    def __init__(self, image: RafsImage, cache: ChunkCache,
                 entries: Callable[[int], list[DirEntry]]) -> None:  # fmt: skip
        """`entries(directory)` lists a directory (cached by the caller)."""
        self.image = image
        self.cache = cache
        self._entries = entries
        self._positions = lru_cache(maxsize=1 << 12)(self._load_positions)
        self._parents: dict[int, int] = {}  # nid -> the directory it was found in
        self._walks: dict[int, _Walk] = {}  # directory nid -> its walk

    def _load_positions(self, directory: int) -> dict[int, int]:
        """Each nid of a directory -> its index in the directory's entry list."""
        return {entry.nid: at for at, entry in enumerate(self._entries(directory))}

    def found_in(self, directory: int, nid: int) -> None:
        """`nid` was looked up or listed in `directory`."""
        if len(self._parents) >= MAX_PARENTS:
            self._parents.clear()
        self._parents[nid] = directory

    def note_read(self, nid: int, offset: int, size: int) -> None:
        """`nid` was read at [offset, offset+size): fetch what that suggests is read next."""
        with contextlib.suppress(RafsError, OSError):
            if offset == 0:
                self._first_read(nid)
            if size >= STREAMING_READ:
                self._streamed(nid, offset + size)

    def _streamed(self, nid: int, end: int) -> None:
        """A streaming read of `nid` (one the cache reads ahead of) ended at byte `end`."""
        spill = min(end, end + self.cache.readahead_window - self.image.stat(nid).size)
        if spill <= 0:
            return
        directory = self._parents.get(nid)
        if directory is None:
            return
        following = self._next_file(directory, self._positions(directory).get(nid))
        if following is not None:
            self.cache.warm([(self._entries(directory)[following].nid, spill)])

    def _first_read(self, nid: int) -> None:
        """`nid` is read from its start: note the walk, and fetch ahead of one."""
        directory = self._parents.get(nid)
        if directory is None:
            return
        position = self._positions(directory).get(nid)
        if position is None:
            return
        walk = self._walks.get(directory)
        if walk is not None and walk.last < position <= walk.last + WALK_GAP:
            walk.last = position
            walk.run += 1
        else:
            if len(self._walks) >= MAX_WALKS:
                self._walks.clear()
            walk = self._walks[directory] = _Walk(position)
        while walk.ahead and walk.ahead[0][0] <= position:
            walk.ahead.popleft()
        if walk.run >= WALK_RUN:
            self._fetch_ahead(directory, walk)

    def _fetch_ahead(self, directory: int, walk: _Walk) -> None:
        """Once less than half of WALK_BYTES (at most the cache's read-ahead window) or of
        WALK_FILES is fetched ahead of the walk's reader, fetch the files after the walk's
        frontier until both are full again, in one batch (each file only once)."""
        window = min(WALK_BYTES, self.cache.readahead_window)
        budget = window - sum(size for _, size in walk.ahead)
        if 2 * budget < window and 2 * len(walk.ahead) >= WALK_FILES:
            return
        entries = self._entries(directory)
        at = max(walk.frontier, walk.last) + 1
        stop = min(len(entries), at + WALK_SCAN)
        files = []
        while at < stop and budget > 0 and len(walk.ahead) < WALK_FILES:
            nid = entries[at].nid
            st = self.image.stat(nid)
            if st.is_reg and st.size:
                size = min(st.size, budget)
                files.append((nid, size))
                walk.ahead.append((at, size))
                budget -= size
            at += 1
        walk.frontier = at - 1
        self.cache.warm(files)

    def _next_file(self, directory: int, position: int | None) -> int | None:
        """The position of the next non-empty regular file after `position` in a directory,
        if one is near enough."""
        if position is None:
            return None
        entries = self._entries(directory)
        for at in range(position + 1, min(len(entries), position + 1 + NEXT_FILE_SCAN)):
            st = self.image.stat(entries[at].nid)
            if st.is_reg and st.size:
                return at
        return None
