"""A layer's bootstrap as merge reads it: raw bytes, decoded only where merge needs them.

Merge never makes an object per inode of a layer. A directory is read as parallel lists of
names, nids and dirent file types straight from its dirent blocks; the merged bootstrap's
writer then copies each surviving inode's fields from these bytes. A chunk index entry
(`c_blob_addr_lo`, `c_blob_addr_hi`, `c_blk_addr`, read here as one little-endian u64
"word") is resolved as nydusd does, by (device id, block address) through the chunk table.

What merge reads is checked as `RafsImage` checks it (and a dirent's file type must be that
of its inode's mode), so a corrupt layer gives a `FormatError` naming the layer and nid.
"""

from __future__ import annotations

import struct
from collections import Counter
from functools import cache
from typing import NamedTuple

from rafs.errors import FormatError
from rafs.format.chunktable import ChunkFlags, ChunkInfo
from rafs.format.dirent import EROFS_NAME_LEN, Dirent
from rafs.format.inode import (
    EROFS_CHUNK_FORMAT_BLKBITS_MASK,
    EROFS_CHUNK_FORMAT_INDEXES,
    EROFS_FT_REG_FILE,
    EROFS_FT_UNKNOWN,
    DataLayout,
    file_type_of_mode,
)
from rafs.format.xattr import body_size_of_icount, pack_xattrs, unpack_xattrs
from rafs.reader.image import MAX_SYMLINK, RafsImage

# The leading fields of `erofs_inode_extended` / `erofs_inode_compact` (reserved tails left out).
EXTENDED = struct.Struct("<HHHHQIIIIQII")
COMPACT = struct.Struct("<HHHHIIIIHH")
# i_format, i_xattr_icount, i_mode, (i_reserved | compact i_nlink), i_size (extended; a
# compact inode's u32 i_size is the low half)
HEAD = struct.Struct("<HHHHQ")
EXTENDED_CHUNK_BASED = 0x9  # i_format of an extended chunk-based inode: what nydus writes for files
# chunk index word: the device id byte and the block address (the CI index bits masked out)
CHUNK_KEY_MASK = 0xFFFF_FFFF_00FF_0000
CHUNK_KEY_SIZE = 33  # bytes of a merged chunk table entry it is sorted by: digest, blob index
_VALID_FORMATS = frozenset({0x0, 0x1, 0x4, 0x5, 0x8, 0x9})  # both forms x plain, inline, chunks
_INLINE_LAYOUTS = (DataLayout.FLAT_PLAIN, DataLayout.FLAT_INLINE)
# blob_index, uncompressed_offset and index of a chunk table entry
_CHUNK_KEY_FIELDS = struct.Struct("<32xI20xQ8xI4x")
_BLOB_INDEX = 32  # offset of a chunk table entry's blob index (u32; merge needs < 255)
_FLAGS = 36  # offset of its flags (u32)
CHUNK_FILE_OFFSET = 64  # offset of its file_offset (u64)
# the low byte of a chunk's flags as merge writes it, for each value it had
_MERGED_FLAGS = bytes(int(ChunkFlags.HAS_CRC32) | (byte & int(ChunkFlags.COMPRESSED))
                      for byte in range(256))  # fmt: skip


def _merged_entries(table: bytes) -> bytes:
    """A chunk table as the merged one holds its entries: flags HAS_CRC32 and COMPRESSED if
    it was set (as merge writes them), `file_offset` 0 (the last user sets it).

    The blob index is the layer's until `assign_blob`. The first 33 bytes of an entry
    (digest, low byte of the blob index) are the key the merged table is sorted by.
    """
    count = len(table) // ChunkInfo.SIZE
    merged = bytearray(table)
    merged[_FLAGS :: ChunkInfo.SIZE] = table[_FLAGS :: ChunkInfo.SIZE].translate(_MERGED_FLAGS)
    for byte in (*range(_FLAGS + 1, _FLAGS + 4),
                 *range(CHUNK_FILE_OFFSET, CHUNK_FILE_OFFSET + 8)):  # fmt: skip
        merged[byte :: ChunkInfo.SIZE] = bytes(count)
    return bytes(merged)


class Header(NamedTuple):
    """An inode's fields as `EXTENDED` unpacks them; compact inodes take the superblock's
    build time as mtime."""

    i_format: int
    xattr_icount: int
    mode: int
    reserved: int
    size: int
    i_u: int
    ino: int
    uid: int
    gid: int
    mtime: int
    mtime_nsec: int
    nlink: int


class Listing(NamedTuple):
    """A directory's entries other than "." and "..", in on-disk (name) order."""

    names: list[bytes]
    nids: list[int]
    file_types: bytes


@cache
def _dirents(count: int) -> struct.Struct:
    return struct.Struct("<" + "QHBB" * count)


class RawBootstrap:
    """One layer's bootstrap: the fields merge reads directly, and checked decoders."""

    def __init__(self, image: RafsImage, slots: list[int]) -> None:
        """`slots[i]`: the merged blob table slot of the layer's blob i."""
        self.image = image
        self.source = image.source
        self.data = image.data
        self.meta = image.meta_offset  # inode of nid n at meta + 32 n
        self.block_size = image.block_size
        self.root_nid = image.root_nid
        # merged slot of each device id (blob index + 1); -1 where no blob is
        self.slot_of_device = [-1] * 256
        for index, slot in enumerate(slots[:255]):
            self.slot_of_device[index + 1] = slot
        offset, size = image.ext.s_chunk_table_offset, image.ext.s_chunk_table_size
        table = self.data[offset : offset + size - size % ChunkInfo.SIZE]
        fields = list(_CHUNK_KEY_FIELDS.iter_unpack(table))
        block = self.block_size
        # chunk table entry of each (device id, block address) key, the last one winning
        self.chunk_entry = {
            (blob + 1) << 16 | (offset // block) << 32: entry
            for entry, (blob, offset, _) in enumerate(fields)
        }
        # each entry's chunk index word, device id left zero
        self.chunk_word = [
            (offset // block) << 32 | (index >> 16) << 24 | (index & 0xFFFF)
            for _, offset, index in fields
        ]
        self._blob_column = table[_BLOB_INDEX :: ChunkInfo.SIZE]
        self._blob_map = bytearray(range(256))
        self.chunk_table = _merged_entries(table)
        self._xattr_bodies: dict[int, bytes] = {}
        self._listed: list[int] = []  # nids of every entry listed, for `linked_nids`

    def assign_blob(self, device: int, blob: int) -> None:
        """Record that the layer's blob `device - 1` is blob `blob` of the merged table; the
        entries of `chunk_table` then carry that index."""
        self._blob_map[device - 1] = blob
        table = bytearray(self.chunk_table)
        table[_BLOB_INDEX :: ChunkInfo.SIZE] = self._blob_column.translate(self._blob_map)
        self.chunk_table = bytes(table)

    def error(self, nid: int, message: str) -> FormatError:
        return FormatError(f"{self.source}: nid {nid}: {message}")

    def header(self, nid: int, file_type: int) -> Header:
        """The checked fields of the inode a dirent of `file_type` points at."""
        data = self.data
        offset = self.meta + nid * 32
        if offset + 32 > len(data):
            raise FormatError(f"{self.source}: nid {nid} is past the end of the bootstrap")
        i_format = data[offset]
        if i_format & 1:
            if offset + 64 > len(data):
                raise self.error(nid, "inode runs past the end of the bootstrap")
            header = Header(*EXTENDED.unpack_from(data, offset))
        else:
            fmt, icount, mode, nlink, size, _, i_u, ino, uid, gid = COMPACT.unpack_from(
                data, offset
            )
            sb = self.image.superblock
            header = Header(fmt, icount, mode, 0, size, i_u, ino, uid, gid, sb.s_build_time,
                            sb.s_build_time_nsec, nlink)  # fmt: skip
        self._check(nid, header, file_type)
        return header

    def _check(self, nid: int, header: Header, file_type: int) -> None:
        """`validate_inode`, the reader's layout rules, and the dirent's file type."""
        i_format, mode = header.i_format, header.mode
        if i_format not in _VALID_FORMATS:
            raise self.error(nid, f"unsupported inode format {i_format:#x}")
        if file_type_of_mode(mode) != file_type or file_type == EROFS_FT_UNKNOWN:
            raise self.error(nid, f"mode {mode:#o} is not the type its dirent says ({file_type})")
        layout = i_format >> 1
        if layout == DataLayout.CHUNK_BASED:
            if file_type != EROFS_FT_REG_FILE:
                raise self.error(nid, "chunk-based layout on a non-regular inode")
            chunk_format = header.i_u & 0xFFFF
            if chunk_format & ~EROFS_CHUNK_FORMAT_BLKBITS_MASK != EROFS_CHUNK_FORMAT_INDEXES:
                raise self.error(nid, f"unsupported chunk format {chunk_format:#x}")
        elif file_type == EROFS_FT_REG_FILE and header.size:
            raise self.error(nid, "regular file is not chunk-based")
        if self.body_offset(nid, header.i_format, header.xattr_icount) > len(self.data):
            raise self.error(nid, "xattrs run past the end")

    def body_offset(self, nid: int, i_format: int, xattr_icount: int) -> int:
        """Where the inode's data (inline tail or chunk indexes) starts, after its xattrs."""
        inode_size = 64 if i_format & 1 else 32
        return self.meta + nid * 32 + inode_size + body_size_of_icount(xattr_icount)

    def xattrs(self, nid: int, header: Header) -> dict[bytes, bytes]:
        """The inode's xattrs by full name."""
        if not header.xattr_icount:
            return {}
        end = self.body_offset(nid, header.i_format, header.xattr_icount)
        start = end - body_size_of_icount(header.xattr_icount)
        try:
            return unpack_xattrs(self.data[start:end])
        except FormatError as exc:
            raise self.error(nid, str(exc)) from None

    def xattr_body(self, nid: int, header: Header) -> bytes:
        """The inode's xattr body as the bootstrap writer encodes it (entries sorted)."""
        body = self._xattr_bodies.get(nid)
        if body is None:
            body = self._xattr_bodies[nid] = pack_xattrs(self.xattrs(nid, header))
        return body

    def inline_data(self, nid: int, header: Header) -> bytes:
        """The bytes of a directory or symlink: its full blocks, then its inline tail."""
        size, block = header.size, self.block_size
        layout = header.i_format >> 1
        if layout not in _INLINE_LAYOUTS:
            raise self.error(nid, "bad layout for inline data")
        full = size - size % block if layout == DataLayout.FLAT_INLINE else size
        tail_start = self.body_offset(nid, header.i_format, header.xattr_icount)
        if full < size and tail_start % block + size - full > block:
            raise self.error(nid, "inline tail crosses a block")
        start = header.i_u * block
        if start + full > len(self.data) or tail_start + size - full > len(self.data):
            raise self.error(nid, "data runs past the end")
        if full == size:
            return self.data[start : start + full]
        return self.data[start : start + full] + self.data[tail_start : tail_start + size - full]

    def symlink_target(self, nid: int, header: Header) -> bytes:
        if header.size > MAX_SYMLINK:
            raise self.error(nid, f"symlink of {header.size} bytes")
        return self.inline_data(nid, header)

    def listing(self, nid: int, header: Header) -> Listing:
        """The entries of directory `nid` (whose checked header is `header`)."""
        data = self.inline_data(nid, header)
        names: list[bytes] = []
        nids: list[int] = []
        file_types = bytearray()
        block = self.block_size
        for start in range(0, len(data), block):
            used = min(block, len(data) - start)
            self._read_block(nid, data[start : start + used], names, nids, file_types)
        for dot in (b".", b".."):
            while dot in names:
                index = names.index(dot)
                del names[index], nids[index], file_types[index]
        self._listed += nids
        return Listing(names, nids, bytes(file_types))

    def linked_nids(self) -> set[int]:
        """The nids that more than one of the directory entries listed so far point at: the
        only inodes that can be hard links."""
        return {nid for nid, names in Counter(self._listed).items() if names > 1}

    def _read_block(self, nid: int, block: bytes, names: list[bytes], nids: list[int],
                    file_types: bytearray) -> None:  # fmt: skip
        """Append one dirent block's entries: dirents first, then the names back to back; a
        name ends where the next begins, the last at the first NUL or the block's end."""
        used = len(block)
        first = int.from_bytes(block[8:10], "little") if used >= Dirent.SIZE else 0
        if first % Dirent.SIZE or not Dirent.SIZE <= first <= used:
            raise self.error(nid, f"bad first name offset {first} in directory block")
        count = first // Dirent.SIZE
        fields = _dirents(count).unpack_from(block)
        starts = fields[1::4]
        last_end = block.find(b"\0", starts[-1])
        ends = (*starts[1:], used if last_end < 0 else last_end)
        block_names = list(map(block.__getitem__, map(slice, starts, ends)))
        if not all(block_names) or max(map(len, block_names)) > EROFS_NAME_LEN:
            raise self.error(nid, "bad name bounds in directory block")
        names += block_names
        nids += fields[0::4]
        file_types += bytes(fields[2::4])
