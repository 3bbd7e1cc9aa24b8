"""A RAFS v6 bootstrap, read through the same rules the kernel and nydusd apply.

Inode numbers are nids (`meta_blkaddr * block_size + nid * 32` is the inode's offset).
Every offset and size taken from the image is checked against the bootstrap before use, so
a corrupt image gives a `FormatError` naming the image, never an exception from deep
inside, and never a loop.
"""

from __future__ import annotations

import stat
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Protocol, TypeVar

from rafs.errors import FormatError, NotFound
from rafs.format.blobtable import BlobEntry, DeviceSlot
from rafs.format.chunktable import ChunkInfo, unpack_prefetch_table
from rafs.format.dirent import unpack_dirent_block
from rafs.format.inode import (
    EROFS_CHUNK_FORMAT_BLKBITS_MASK,
    ChunkAddr,
    DataLayout,
    InodeExtended,
    ModeKind,
    decode_rdev,
    i_format_layout,
    unpack_inode,
    validate_inode,
)
from rafs.format.record import align_up
from rafs.format.superblock import (
    EROFS_SUPER_MAGIC_V1,
    EROFS_SUPER_OFFSET,
    RAFS_EXT_SUPER_OFFSET,
    SuperBlock,
    SuperBlockExt,
)
from rafs.format.xattr import body_size_of_icount, unpack_xattrs

MAX_SYMLINK = 4096
_R = TypeVar("_R", SuperBlock, SuperBlockExt, DeviceSlot, BlobEntry)


class _Directory(Protocol):
    """What `lookup_path` needs of an image (v5 or v6)."""

    source: str

    def stat(self, number: int, /) -> ModeKind: ...

    def children(self, number: int, /) -> Sequence[_Named]: ...


class _Named(Protocol):
    @property
    def name(self) -> bytes: ...

    @property
    def nid(self) -> int: ...


def lookup_path(image: _Directory, root: int, path: str | bytes) -> int:
    """The inode number at an absolute path from `root` (symlinks are not followed)."""
    raw = path.encode() if isinstance(path, str) else path
    number = root
    for part in raw.split(b"/"):
        if not part or part == b".":
            continue
        if not image.stat(number).is_dir:
            raise NotFound(f"{image.source}: {raw.decode(errors='replace')}: not a directory")
        for entry in image.children(number):
            if entry.name == part:
                number = entry.nid
                break
        else:
            raise NotFound(f"{image.source}: {raw.decode(errors='replace')}: no such file")
    return number


def is_rafs_v6(head: bytes) -> bool:
    """Whether the first bytes of a file are those of a RAFS v6 bootstrap."""
    magic = head[EROFS_SUPER_OFFSET : EROFS_SUPER_OFFSET + 4]
    return magic == EROFS_SUPER_MAGIC_V1.to_bytes(4, "little")


@dataclass(frozen=True, slots=True)
class Stat(ModeKind):
    """What `stat` shows of an inode."""

    nid: int
    mode: int
    uid: int
    gid: int
    size: int
    mtime: int
    mtime_nsec: int
    nlink: int
    rdev: tuple[int, int]  # (major, minor) for devices
    layout: int
    i_u: int
    offset: int  # byte offset of the inode in the bootstrap
    body_offset: int  # first byte after the fixed inode and its xattrs
    xattr_size: int


@dataclass(frozen=True, slots=True)
class DirEntry:
    name: bytes
    nid: int
    file_type: int


class RafsImage:
    """Random access to the metadata of one RAFS v6 bootstrap held in memory."""

    def __init__(self, bootstrap: bytes, source: str) -> None:
        self.data = bootstrap
        self.source = source
        if len(bootstrap) < 4096 or len(bootstrap) % 512:
            raise FormatError(f"{source}: {len(bootstrap)} bytes is not a RAFS v6 bootstrap size")
        self.superblock = self._record(SuperBlock, EROFS_SUPER_OFFSET)
        self.ext = self._record(SuperBlockExt, RAFS_EXT_SUPER_OFFSET)
        sb, ext = self.superblock, self.ext
        self.block_size = sb.block_size
        if len(bootstrap) % self.block_size:
            raise FormatError(f"{source}: size is not a multiple of the block size")
        self.meta_offset = sb.s_meta_blkaddr * self.block_size
        count = sb.s_extra_devices
        if ext.s_blob_table_size != 256 * count:
            raise FormatError(
                f"{source}: blob table holds {ext.s_blob_table_size // 256} blobs, "
                f"superblock says {count}"
            )
        self._check_range(ext.s_blob_table_offset, ext.s_blob_table_size, "blob table")
        self.devices = [
            self._record(DeviceSlot, sb.s_devt_slotoff * 128 + 128 * i) for i in range(count)
        ]
        self.blobs = [
            self._record(BlobEntry, ext.s_blob_table_offset + 256 * i) for i in range(count)
        ]
        for index, blob in enumerate(self.blobs):
            if blob.blob_index != index:
                raise FormatError(f"{source}: blob {index} says it has index {blob.blob_index}")
            if blob.chunk_size != ext.s_chunk_size:
                raise FormatError(f"{source}: blob {index} chunk size differs from the image's")
        self._check_range(ext.s_chunk_table_offset, ext.s_chunk_table_size, "chunk table")
        self._check_range(ext.s_prefetch_table_offset, ext.s_prefetch_table_size,
                          "prefetch table")  # fmt: skip
        self.root_nid = sb.s_root_nid
        self._chunk_map: dict[tuple[int, int], ChunkInfo] | None = None
        self._chunk_table: list[ChunkInfo] | None = None
        self._by_blob: dict[int, list[ChunkInfo]] | None = None
        self._inode_cache = lru_cache(maxsize=None)(self._load_stat)

    def _record(self, kind: type[_R], offset: int) -> _R:
        try:
            record = kind.unpack(self.data, offset)
            record.validate()
        except FormatError as exc:
            raise FormatError(f"{self.source}: {exc}") from None
        return record

    def _check_range(self, offset: int, size: int, what: str) -> None:
        if size and (offset < 0 or offset + size > len(self.data)):
            raise FormatError(f"{self.source}: {what} [{offset}, +{size}) is past the end")

    # -- tables ------------------------------------------------------------------------

    @property
    def chunk_size(self) -> int:
        return self.ext.s_chunk_size

    def chunk_table(self) -> list[ChunkInfo]:
        """The chunk table, decoded once."""
        if self._chunk_table is None:
            offset, size = self.ext.s_chunk_table_offset, self.ext.s_chunk_table_size
            self._chunk_table = [
                ChunkInfo.unpack(self.data, offset + i) for i in range(0, size, ChunkInfo.SIZE)
            ]
        return self._chunk_table

    def blob_chunks(self, blob_index: int) -> list[ChunkInfo]:
        """The chunk table entries of one blob, in the order they are stored in it."""
        if self._by_blob is None:
            self._by_blob = {}
            for info in sorted(self.chunk_table(), key=lambda c: c.compressed_offset):
                self._by_blob.setdefault(info.blob_index, []).append(info)
        return self._by_blob.get(blob_index, [])

    def chunk_map(self) -> dict[tuple[int, int], ChunkInfo]:
        """Chunk infos keyed by (blob index, uncompressed block address)."""
        if self._chunk_map is None:
            self._chunk_map = {
                (c.blob_index, c.uncompressed_offset // self.block_size): c
                for c in self.chunk_table()
            }
        return self._chunk_map

    def prefetch_nids(self) -> list[int]:
        offset, size = self.ext.s_prefetch_table_offset, self.ext.s_prefetch_table_size
        return unpack_prefetch_table(self.data[offset : offset + size])

    # -- inodes ------------------------------------------------------------------------

    def stat(self, nid: int) -> Stat:
        return self._inode_cache(nid)

    def _load_stat(self, nid: int) -> Stat:
        offset = self.meta_offset + nid * 32
        if nid < 0 or offset + 32 > len(self.data):
            raise FormatError(f"{self.source}: nid {nid} is past the end of the bootstrap")
        try:
            inode = unpack_inode(self.data, offset)
            validate_inode(inode)
        except FormatError as exc:
            raise FormatError(f"{self.source}: nid {nid}: {exc}") from None
        extended = isinstance(inode, InodeExtended)
        xattr_size = body_size_of_icount(inode.i_xattr_icount)
        body = offset + inode.SIZE + xattr_size
        if body > len(self.data):
            raise FormatError(f"{self.source}: nid {nid}: xattrs run past the end")
        rdev = (0, 0)
        if stat.S_ISCHR(inode.i_mode) or stat.S_ISBLK(inode.i_mode):
            rdev = decode_rdev(inode.i_u)
        return Stat(
            nid=nid,
            mode=inode.i_mode,
            uid=inode.i_uid,
            gid=inode.i_gid,
            size=inode.i_size,
            mtime=inode.i_mtime if extended else self.superblock.s_build_time,  # type: ignore[union-attr]
            mtime_nsec=inode.i_mtime_nsec if extended else self.superblock.s_build_time_nsec,  # type: ignore[union-attr]
            nlink=inode.i_nlink,
            rdev=rdev,
            layout=i_format_layout(inode.i_format),
            i_u=inode.i_u,
            offset=offset,
            body_offset=body,
            xattr_size=xattr_size,
        )

    def xattrs(self, nid: int) -> dict[bytes, bytes]:
        st = self.stat(nid)
        if not st.xattr_size:
            return {}
        start = st.body_offset - st.xattr_size
        try:
            return unpack_xattrs(self.data[start : st.body_offset])
        except FormatError as exc:
            raise FormatError(f"{self.source}: nid {nid}: {exc}") from None

    def _inline_data(self, st: Stat) -> bytes:
        """The bytes of a directory or symlink (full blocks plus inline tail)."""
        size = st.size
        bs = self.block_size
        if st.layout == DataLayout.FLAT_INLINE:
            full = size - size % bs
            tail_len = size % bs
            if st.body_offset % bs + tail_len > bs:
                raise FormatError(f"{self.source}: nid {st.nid}: inline tail crosses a block")
            tail_start = st.body_offset
        elif st.layout == DataLayout.FLAT_PLAIN:
            full, tail_len, tail_start = size, 0, 0
        else:
            raise FormatError(f"{self.source}: nid {st.nid}: bad layout for inline data")
        start = st.i_u * bs
        if start + full > len(self.data) or tail_start + tail_len > len(self.data):
            raise FormatError(f"{self.source}: nid {st.nid}: data runs past the end")
        return self.data[start : start + full] + self.data[tail_start : tail_start + tail_len]

    def readdir(self, nid: int) -> list[DirEntry]:
        """Entries of a directory, "." and ".." included, in on-disk order."""
        st = self.stat(nid)
        if not st.is_dir:
            raise FormatError(f"{self.source}: nid {nid} is not a directory")
        data = self._inline_data(st)
        entries: list[DirEntry] = []
        bs = self.block_size
        try:
            for start in range(0, len(data), bs):
                used = min(bs, len(data) - start)
                for name, dirent in unpack_dirent_block(data[start : start + used], used):
                    entries.append(DirEntry(name, dirent.e_nid, dirent.e_file_type))
        except FormatError as exc:
            raise FormatError(f"{self.source}: directory nid {nid}: {exc}") from None
        return entries

    def children(self, nid: int) -> list[DirEntry]:
        return [e for e in self.readdir(nid) if e.name not in (b".", b"..")]

    def readlink(self, nid: int) -> bytes:
        st = self.stat(nid)
        if not st.is_symlink:
            raise FormatError(f"{self.source}: nid {nid} is not a symlink")
        if st.size > MAX_SYMLINK:
            raise FormatError(f"{self.source}: nid {nid}: symlink of {st.size} bytes")
        return self._inline_data(st)

    def lookup(self, path: str | bytes) -> int:
        """The nid at an absolute path (symlinks are not followed)."""
        return lookup_path(self, self.root_nid, path)

    def _chunk_array(self, nid: int) -> tuple[int, int]:
        """(offset, entry count) of a regular file's chunk index array, checked."""
        st = self.stat(nid)
        if not st.is_reg:
            raise FormatError(f"{self.source}: nid {nid} is not a regular file")
        if st.layout != DataLayout.CHUNK_BASED:
            raise FormatError(f"{self.source}: nid {nid}: regular file is not chunk-based")
        if (st.i_u & EROFS_CHUNK_FORMAT_BLKBITS_MASK) + 12 > 63:
            raise FormatError(f"{self.source}: nid {nid}: bad chunk format")
        count = (st.size + self.chunk_size - 1) // self.chunk_size
        start = align_up(st.body_offset, 8)
        if start + 8 * count > len(self.data):
            raise FormatError(f"{self.source}: nid {nid}: chunk indexes run past the end")
        return start, count

    def chunk_addrs(self, nid: int, first: int = 0, stop: int | None = None) -> list[ChunkAddr]:
        """The chunk index array of a regular file, one entry per RAFS chunk.

        `first` and `stop` select entries [first, stop), so that reading part of a large
        file does not decode the index of the whole file.
        """
        start, count = self._chunk_array(nid)
        stop = count if stop is None else min(stop, count)
        return [ChunkAddr.unpack(self.data, start + 8 * i) for i in range(first, stop)]

    def chunk_keys(
        self, nid: int, first: int = 0, stop: int | None = None
    ) -> list[tuple[int, int]]:
        """(blob index, block address) of chunks [first, stop): `chunk_addrs` decoded at once."""
        start, count = self._chunk_array(nid)
        stop = count if stop is None else min(stop, count)
        if stop <= first:
            return []
        words = struct.unpack_from(f"<{stop - first}Q", self.data, start + 8 * first)
        return [(((word >> 16) & 0xFF) - 1, word >> 32) for word in words]

    def file_chunks(self, nid: int, first: int = 0, stop: int | None = None) -> list[ChunkInfo]:
        """The chunk infos of a regular file in file order (chunks [first, stop))."""
        chunk_map = self.chunk_map()
        infos = []
        for index, key in enumerate(self.chunk_keys(nid, first, stop), first):
            info = chunk_map.get(key)
            if info is None or key[0] >= len(self.blobs):
                raise FormatError(
                    f"{self.source}: nid {nid} chunk {index} (blob {key[0]}, block "
                    f"{key[1]}) is not in the chunk table"
                )
            infos.append(info)
        return infos

    def walk(self) -> Iterator[tuple[bytes, Stat]]:
        """Every (path, stat) depth first in name order; each directory visited once."""
        seen_dirs = {self.root_nid}
        stack: list[tuple[bytes, int]] = [(b"/", self.root_nid)]
        while stack:
            path, nid = stack.pop()
            st = self.stat(nid)
            yield path, st
            if st.is_dir:
                children = sorted(self.children(nid), key=lambda e: e.name, reverse=True)
                for entry in children:
                    child_path = path.rstrip(b"/") + b"/" + entry.name
                    if self.stat(entry.nid).is_dir:
                        if entry.nid in seen_dirs:
                            where = child_path.decode(errors="replace")
                            raise FormatError(f"{self.source}: directory cycle at {where}")
                        seen_dirs.add(entry.nid)
                    stack.append((child_path, entry.nid))
