"""A RAFS v5 bootstrap, read through the rules nydusd's direct (mmap) mode applies.

Inode numbers are the v5 ones: the root is 1 and the inode table maps a number to the
record of the link that owns it. A directory's children are the records at the consecutive
indexes `i_child_index ..`; a hard link's record carries the owning link's number.

Every offset and size taken from the image is checked before use, so a corrupt image gives
a `FormatError` naming the image, never an `IndexError` or `struct.error`, and never a loop.
File data is read from blob files named by blob id and checked against the chunk digests;
an image opened from a Nydus layer reads its inlined blob (`is_marked_inline`:
INLINED_FS_META, or the placeholder id) from the layer file itself.
"""

from __future__ import annotations

import itertools
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import BinaryIO, NamedTuple

from rafs.codecs import digest_function
from rafs.errors import (
    FormatError,
    InvalidArgument,
    NotFound,
    RafsError,
    Unsupported,
)
from rafs.format.blobtable import Compressor, Digester
from rafs.format.chunktable import ChunkInfo
from rafs.format.inode import ModeKind, decode_rdev
from rafs.format.superblock import RafsSuperFlags
from rafs.format.v5 import (
    RAFS_MAX_METADATA_SIZE,
    RAFSV5_EXT_BLOB_ENTRY_SIZE,
    RAFSV5_INODE_SIZE,
    RAFSV5_ROOT_INODE,
    RafsV5ExtBlobEntry,
    RafsV5Inode,
    RafsV5InodeTableEntry,
    RafsV5SuperBlock,
    RafsV5XattrTable,
    is_rafs_v5,
    rafsv5_align,
    unpack_blob_table,
    unpack_prefetch_table,
    unpack_xattrs,
)
from rafs.reader.blobs import read_stored_chunk
from rafs.reader.image import lookup_path
from rafs.reader.layer import is_marked_inline

MAX_HOLE_READ = 64 << 20  # zero bytes of holes one read_file call may return

__all__ = ["RafsV5Image", "V5Blob", "V5DirEntry", "V5Stat", "is_rafs_v5"]


@dataclass(frozen=True, slots=True)
class V5Stat(ModeKind):
    """What `stat` shows of a v5 inode."""

    ino: int
    mode: int
    uid: int
    gid: int
    size: int
    mtime: int
    mtime_nsec: int
    nlink: int
    rdev: tuple[int, int]  # (major, minor) for devices, else (0, 0)
    blocks: int
    flags: int  # RafsV5InodeFlags
    offset: int  # byte offset of the inode record in the bootstrap

    @property
    def nid(self) -> int:
        """The inode number under the name the v6 reader uses."""
        return self.ino


class V5DirEntry(NamedTuple):
    """One child of a directory: a `(name, ino)` pair."""

    name: bytes
    ino: int

    @property
    def nid(self) -> int:
        return self.ino


@dataclass(frozen=True, slots=True)
class V5Blob:
    """A blob table entry merged with its extended entry (zeros when there is none)."""

    index: int
    id: str
    prefetch_offset: int
    prefetch_size: int
    chunk_count: int
    features: int
    uncompressed_size: int
    compressed_size: int


class RafsV5Image:
    """Random access to the metadata of one RAFS v5 bootstrap held in memory."""

    def __init__(self, data: bytes, source: str, layer: Path | None = None) -> None:
        """`layer`: the Nydus layer file `data` was inlined in, which is its own blob."""
        self.data = data
        self.source = source
        self.layer = layer
        size = len(data)
        if not is_rafs_v5(data[:8]):
            raise FormatError(f"{source}: not a RAFS v5 bootstrap (magic/version)")
        if size > RAFS_MAX_METADATA_SIZE:
            raise FormatError(f"{source}: bootstrap of {size} bytes is too large")
        try:
            sb = RafsV5SuperBlock.unpack(data)
            sb.validate()
            sb.validate_layout(size)
        except FormatError as exc:
            raise FormatError(f"{source}: {exc}") from None
        self.superblock = sb
        self.chunk_size = sb.s_block_size
        self.flags = sb.flags
        self.blob_compressor: Compressor = sb.compressor
        self.blob_digester: Digester = sb.digester
        self.root_ino = RAFSV5_ROOT_INODE
        self.max_ino = sb.s_inode_table_entries
        self._inode_table_offset = sb.s_inode_table_offset
        self.blobs = self._load_blobs()
        self.blob_ids = [blob.id for blob in self.blobs]
        self._record_cache = lru_cache(maxsize=65536)(self._load_record)

    # -- tables ------------------------------------------------------------------------

    def _error(self, message: str) -> FormatError:
        return FormatError(f"{self.source}: {message}")

    def _load_blobs(self) -> list[V5Blob]:
        sb = self.superblock
        table = self.data[sb.s_blob_table_offset : sb.s_blob_table_offset + sb.s_blob_table_size]
        ext_offset = sb.s_extended_blob_table_offset
        try:
            entries = unpack_blob_table(table)
            for entry in entries:
                entry.validate()
            ext = [
                RafsV5ExtBlobEntry.unpack(self.data, ext_offset + RAFSV5_EXT_BLOB_ENTRY_SIZE * i)
                for i in range(sb.s_extended_blob_table_entries)
            ]
        except FormatError as exc:
            raise self._error(str(exc)) from None
        if ext and len(ext) < len(entries):
            raise self._error(
                f"extended blob table has {len(ext)} entries for {len(entries)} blobs"
            )
        blobs = []
        for index, entry in enumerate(entries):
            extra = ext[index] if ext else RafsV5ExtBlobEntry()
            blobs.append(
                V5Blob(
                    index=index,
                    id=entry.blob_id,
                    prefetch_offset=entry.prefetch_offset,
                    prefetch_size=entry.prefetch_size,
                    chunk_count=extra.chunk_count,
                    features=extra.features,
                    uncompressed_size=extra.uncompressed_size,
                    compressed_size=extra.compressed_size,
                )
            )
        return blobs

    def prefetch_inos(self) -> list[int]:
        """Inode numbers of the prefetch table, up to the first zero."""
        sb = self.superblock
        start = sb.s_prefetch_table_offset
        return unpack_prefetch_table(self.data[start : start + 4 * sb.s_prefetch_table_entries])

    # -- inode records -----------------------------------------------------------------

    def _load_record(self, ino: int) -> tuple[RafsV5Inode, int]:
        """The inode record at table slot `ino` and its offset, checked as nydusd does."""
        if not 1 <= ino <= self.max_ino:
            raise self._error(f"inode {ino} is not in the inode table (1..{self.max_ino})")
        size = len(self.data)
        try:
            entry = RafsV5InodeTableEntry.unpack(
                self.data, self._inode_table_offset + 4 * (ino - 1)
            )
            entry.validate()
            offset = entry.offset
            if offset + RAFSV5_INODE_SIZE > size:
                raise FormatError(f"inode at offset {offset} is past the end")
            inode = RafsV5Inode.unpack(self.data, offset)
            inode.validate()
        except FormatError as exc:
            raise self._error(f"inode {ino}: {exc}") from None
        if inode.i_ino > self.max_ino:
            raise self._error(f"inode {ino}: inode number {inode.i_ino} is past the table")
        end = offset + inode.record_size
        if inode.has_xattr:
            if end + RafsV5XattrTable.SIZE > size:
                raise self._error(f"inode {ino}: xattr table is past the end")
            end += RafsV5XattrTable.SIZE + RafsV5XattrTable.unpack(self.data, end).aligned_size
        if inode.is_reg:
            end += inode.i_child_count * ChunkInfo.SIZE
        elif inode.is_dir and inode.i_child_count:
            first, count = inode.i_child_index, inode.i_child_count
            if first <= inode.i_ino or count >= self.max_ino or first + count - 1 > self.max_ino:
                raise self._error(
                    f"inode {ino}: children {first}..+{count} are outside the inode table"
                )
        if end > size:
            raise self._error(f"inode {ino}: record [{offset}, {end}) runs past the end")
        return inode, offset

    def inode(self, ino: int) -> RafsV5Inode:
        """The raw inode record of inode number (or table index) `ino`."""
        return self._record_cache(ino)[0]

    def name_of(self, ino: int) -> bytes:
        """The name stored with the record at table slot `ino` ("/" for the root)."""
        inode, offset = self._record_cache(ino)
        start = offset + RAFSV5_INODE_SIZE
        return self.data[start : start + inode.i_name_size]

    def stat(self, ino: int) -> V5Stat:
        inode, offset = self._record_cache(ino)
        if inode.i_ino != ino:
            # The table slot of an inode number holds the record of the link that owns it.
            raise self._error(f"inode table slot {ino} holds inode {inode.i_ino}")
        device = stat.S_ISCHR(inode.i_mode) or stat.S_ISBLK(inode.i_mode)
        return V5Stat(
            ino=inode.i_ino,
            mode=inode.i_mode,
            uid=inode.i_uid,
            gid=inode.i_gid,
            size=inode.i_size,
            mtime=inode.i_mtime,
            mtime_nsec=inode.i_mtime_nsec,
            nlink=inode.i_nlink,
            rdev=decode_rdev(inode.i_rdev) if device else (0, 0),
            blocks=inode.i_blocks,
            flags=inode.i_flags,
            offset=offset,
        )

    def readlink(self, ino: int) -> bytes:
        inode, offset = self._record_cache(ino)
        if not inode.is_symlink:
            raise self._error(f"inode {ino} is not a symlink")
        start = offset + RAFSV5_INODE_SIZE + rafsv5_align(inode.i_name_size)
        return self.data[start : start + inode.i_symlink_size]

    def _xattr_area(self, ino: int) -> tuple[int, int]:
        """(start, size) of the xattr pairs of an inode; (end of record, 0) without any."""
        inode, offset = self._record_cache(ino)
        start = offset + inode.record_size
        if not inode.has_xattr:
            return start, 0
        header = RafsV5XattrTable.unpack(self.data, start)
        return start + RafsV5XattrTable.SIZE, header.size

    def xattrs(self, ino: int) -> dict[bytes, bytes]:
        start, size = self._xattr_area(ino)
        if not size:
            return {}
        try:
            return unpack_xattrs(self.data[start : start + size])
        except FormatError as exc:
            raise self._error(f"inode {ino}: {exc}") from None

    def file_chunks(self, ino: int) -> list[ChunkInfo]:
        """The chunk infos of a regular file, in file order."""
        inode, _ = self._record_cache(ino)
        if not inode.is_reg:
            raise self._error(f"inode {ino} is not a regular file")
        start, size = self._xattr_area(ino)
        if inode.has_xattr:
            start += rafsv5_align(size)
        chunks = []
        for index in range(inode.i_child_count):
            try:
                info = ChunkInfo.unpack(self.data, start + index * ChunkInfo.SIZE)
                info.validate()
            except FormatError as exc:
                raise self._error(f"inode {ino} chunk {index}: {exc}") from None
            if info.blob_index >= len(self.blobs):
                raise self._error(
                    f"inode {ino} chunk {index} names blob {info.blob_index}, "
                    f"the image has {len(self.blobs)}"
                )
            chunks.append(info)
        return chunks

    # -- directories -------------------------------------------------------------------

    def children(self, ino: int) -> list[V5DirEntry]:
        """(name, ino) of every entry of a directory, sorted by name ("." and ".." left out)."""
        inode, _ = self._record_cache(ino)
        if not inode.is_dir:
            raise self._error(f"inode {ino} is not a directory")
        entries = []
        for index in range(inode.i_child_index, inode.i_child_index + inode.i_child_count):
            child, _ = self._record_cache(index)
            if child.i_parent != inode.i_ino:
                raise self._error(
                    f"inode {ino}: child {index} names inode {child.i_parent} as its parent"
                )
            name = self.name_of(index)
            if b"/" in name or b"\0" in name or name in (b".", b".."):
                raise self._error(f"inode {ino}: child {index} has invalid name {name!r}")
            entries.append(V5DirEntry(name, child.i_ino))
        entries.sort(key=lambda entry: entry.name)
        for before, after in itertools.pairwise(entries):
            if before.name == after.name:
                raise self._error(f"inode {ino}: two children named {before.name!r}")
        return entries

    def lookup(self, path: str | bytes) -> int:
        """The inode number at an absolute path (symlinks are not followed)."""
        return lookup_path(self, self.root_ino, path)

    def walk(self) -> Iterator[tuple[bytes, V5Stat]]:
        """Every (path, stat) depth first in name order; a directory reached twice is an error."""
        seen_dirs = {self.root_ino}
        stack: list[tuple[bytes, int]] = [(b"/", self.root_ino)]
        while stack:
            path, ino = stack.pop()
            st = self.stat(ino)
            yield path, st
            if not st.is_dir:
                continue
            for entry in reversed(self.children(ino)):
                child_path = path.rstrip(b"/") + b"/" + entry.name
                if self.stat(entry.ino).is_dir:
                    if entry.ino in seen_dirs:
                        where = child_path.decode(errors="replace")
                        raise self._error(f"directory cycle (directory reached twice) at {where}")
                    seen_dirs.add(entry.ino)
                stack.append((child_path, entry.ino))

    def digest_matches(self, ino: int) -> bool:
        """Whether `i_digest` is what the builder computes (`rafsv5_validate_inode`, one level)."""
        inode, _ = self._record_cache(ino)
        if inode.is_reg:
            parts = [chunk.block_id for chunk in self.file_chunks(ino)]
        elif inode.is_dir:
            first = inode.i_child_index
            parts = [self.inode(i).i_digest for i in range(first, first + inode.i_child_count)]
        elif inode.is_symlink:
            parts = [self.readlink(ino)]
        else:
            parts = []
        return digest_function(self.blob_digester)(b"".join(parts)) == inode.i_digest

    # -- file data ---------------------------------------------------------------------

    def _blob_path(self, index: int, blob_dir: Path) -> Path:
        blob = self.blobs[index]
        if self.layer is not None and is_marked_inline(blob):
            return self.layer
        blob_id = blob.id
        for candidate in (blob_dir / blob_id, blob_dir / "sha256" / blob_id):
            if candidate.is_file():
                return candidate
        raise NotFound(f"{self.source}: blob {blob_id} not found in {blob_dir}")

    def _check_extents(self, ino: int, size: int, has_hole: bool, chunks: list[ChunkInfo]) -> None:
        """Chunks must be in file order, not overlap, stay in the file and (no holes) cover it."""
        covered = 0
        for index, info in enumerate(chunks):
            start = info.file_offset
            if start < covered or (not has_hole and start != covered):
                raise self._error(f"inode {ino} chunk {index} at file offset {start} is misplaced")
            covered = start + info.uncompressed_size
            if covered > size:
                raise self._error(f"inode {ino} chunk {index} runs past the file size {size}")
        if not has_hole and covered != size:
            raise self._error(f"inode {ino}: chunks cover {covered} of {size} bytes")

    def read_chunk(
        self, info: ChunkInfo, f: BinaryIO, blob_size: int, verify: bool = True
    ) -> bytes:
        """The uncompressed bytes of one chunk from its open blob file."""
        if info.compressed and self.blob_compressor == Compressor.GZIP:
            raise Unsupported(f"{self.source}: gzip-compressed chunks are not supported")
        return read_stored_chunk(f, blob_size, info, self.blob_compressor, self.blob_digester,
                                 verify)  # fmt: skip

    def read_file(
        self, ino: int, blob_dir: Path, offset: int = 0, size: int | None = None
    ) -> bytes:
        """Bytes [offset, offset+size) of a regular file (to its end when size is None)."""
        st = self.stat(ino)
        if not st.is_reg:
            raise InvalidArgument(f"{self.source}: inode {ino} is not a regular file")
        if offset < 0 or (size is not None and size < 0):
            raise InvalidArgument(f"{self.source}: bad read range {offset}, {size}")
        end = st.size if size is None else min(st.size, offset + size)
        if offset >= end:
            return b""
        chunks = self.file_chunks(ino)
        has_hole = bool(self.inode(ino).has_hole)
        self._check_extents(ino, st.size, has_hole, chunks)
        stored = sum(
            max(0, min(end, c.file_offset + c.uncompressed_size) - max(offset, c.file_offset))
            for c in chunks
        )
        if end - offset - stored > MAX_HOLE_READ:
            # Zeros cost memory, not I/O: a (maybe corrupt) size must not allocate gigabytes.
            raise InvalidArgument(
                f"{self.source}: inode {ino}: the range holds {end - offset - stored} bytes of "
                f"holes; read at most {MAX_HOLE_READ} at a time"
            )
        parts: list[bytes] = []
        pos = offset
        files: dict[int, tuple[BinaryIO, int]] = {}
        try:
            for info in chunks:
                chunk_end = info.file_offset + info.uncompressed_size
                if chunk_end <= pos:
                    continue
                if info.file_offset >= end:
                    break
                if info.file_offset > pos:
                    parts.append(bytes(info.file_offset - pos))  # a hole
                    pos = info.file_offset
                if info.blob_index not in files:
                    opened = self._blob_path(info.blob_index, blob_dir).open("rb")
                    files[info.blob_index] = (opened, os.fstat(opened.fileno()).st_size)
                blob, blob_size = files[info.blob_index]
                data = self.read_chunk(info, blob, blob_size)
                parts.append(data[pos - info.file_offset : end - info.file_offset])
                pos = min(end, chunk_end)
            if pos < end:
                parts.append(bytes(end - pos))  # a hole at the end
        except OSError as exc:
            raise RafsError(f"{self.source}: reading inode {ino}: {exc}") from None
        finally:
            for blob, _ in files.values():
                blob.close()
        return b"".join(parts)

    # -- summary -----------------------------------------------------------------------

    @property
    def has_xattr(self) -> bool:
        return bool(self.flags & RafsSuperFlags.HAS_XATTR)

    @property
    def explicit_uid_gid(self) -> bool:
        return bool(self.flags & RafsSuperFlags.EXPLICIT_UID_GID)
