"""Lay out and write a RAFS v6 bootstrap exactly as nydus-image does.

Layout pass (nydus `Bootstrap::build_rafs` and `Node::v6_set_*offset*`): inodes are placed
in a "pre-shift" space that starts at 4096, so the root's nid is always 128. Starting from
the root, each directory is placed (inode, then its dirent blocks), then each of its
non-directory children in name order, then each child directory recursively. Small inodes
are tucked into the free tails of blocks already used by directory data (a FIFO list per
free-size bucket), directories and symlinks keep their last partial block inline after the
inode when it fits, and every placement ends aligned to the 32-byte inode slot.

Dump pass: superblock, extended superblock, device slots, blob table, prefetch table,
then the metadata area shifted to `meta_addr`, then the chunk table; the file is padded to
a whole number of 4 KiB blocks.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import NamedTuple, TypeVar

from rafs.builder.tree import Chunk, Inode
from rafs.errors import InvalidArgument
from rafs.format.blobtable import BlobEntry, BlobFeatures, Compressor, DeviceSlot, Digester
from rafs.format.chunktable import ChunkFlags, ChunkInfo, pack_prefetch_table
from rafs.format.dirent import dirent_blocks, pack_dirent_blocks
from rafs.format.inode import (
    EROFS_CHUNK_FORMAT_INDEXES,
    EROFS_FT_DIR,
    EROFS_INODE_SLOT_SIZE,
    DataLayout,
    InodeExtended,
    file_type_of_mode,
    make_i_format,
    pack_chunk_addrs,
)
from rafs.format.record import align_up
from rafs.format.superblock import (
    EROFS_BLKSZBITS,
    EROFS_BLOCK_SIZE,
    EROFS_SUPER_OFFSET,
    RAFS_EXT_SUPER_OFFSET,
    RafsSuperFlags,
    SuperBlock,
    SuperBlockExt,
)
from rafs.format.xattr import pack_xattrs, xattr_body_size, xattr_icount

BLOCK = EROFS_BLOCK_SIZE
DEVICE_TABLE_OFFSET = 0x580
MAPPED_BLKADDR_ALIGN = 0x8_0000  # flat-device blobs start on 512 KiB boundaries
MAX_BLOBS = 254

_T = TypeVar("_T")

COMPRESSION_FLAG = {
    Compressor.NONE: RafsSuperFlags.COMPRESSION_NONE,
    Compressor.LZ4_BLOCK: RafsSuperFlags.COMPRESSION_LZ4,
    Compressor.GZIP: RafsSuperFlags.COMPRESSION_GZIP,
    Compressor.ZSTD: RafsSuperFlags.COMPRESSION_ZSTD,
}
DIGEST_FLAG = {Digester.BLAKE3: RafsSuperFlags.HASH_BLAKE3,
               Digester.SHA256: RafsSuperFlags.HASH_SHA256}  # fmt: skip


@dataclass(frozen=True)
class BootstrapOptions:
    """Image-wide settings recorded in the superblock."""

    chunk_size: int
    compressor: Compressor
    digester: Digester
    explicit_uid_gid: bool = True
    prefetch_patterns: tuple[str, ...] = ("/",)


@dataclass(eq=False, slots=True)
class _Placed:
    """Where the layout pass put one inode."""

    inode: Inode
    ino: int
    offset: int  # pre-shift byte offset of the inode
    inode_size: int  # fixed inode + xattr body
    layout: DataLayout
    data_offset: int = 0  # pre-shift offset of the first full data block (dirs, symlinks)
    data_size: int = 0
    nlink: int = 1
    dirents: list[tuple[bytes, Inode]] = field(default_factory=list)

    @property
    def nid(self) -> int:
        return self.offset // EROFS_INODE_SLOT_SIZE


class Allocator:
    """The metadata cursor and the free block tails (nydus `BootstrapContext`)."""

    def __init__(self) -> None:
        self.offset = BLOCK
        self._free: list[deque[int]] = [deque() for _ in range(BLOCK // 32)]
        self._nonempty = 0  # bit i set when bucket i holds a block

    def align(self, alignment: int) -> None:
        self.offset = (self.offset + alignment - 1) // alignment * alignment

    def remember_tail(self, offset: int) -> None:
        if offset % BLOCK:
            index = (BLOCK - offset % BLOCK) // 32
            self._free[index].append(offset - offset % BLOCK)
            self._nonempty |= 1 << index

    def take_tail(self, size: int) -> int:
        """Place `size` bytes in a remembered block tail (smallest that fits, oldest first);
        0 when none fits."""
        if size >= BLOCK:
            return 0
        slots = (size + 31) // 32
        candidates = self._nonempty >> slots
        if not candidates:
            return 0
        index = slots + (candidates & -candidates).bit_length() - 1
        bucket = self._free[index]
        block = bucket.popleft()
        if not bucket:
            self._nonempty &= ~(1 << index)
        offset = block + BLOCK - index * 32
        self.remember_tail(offset + slots * 32)
        return offset

    def take(self, size: int) -> int:
        """Place `size` bytes at the cursor."""
        offset = self.offset
        self.offset += size
        return offset

    def place_file(self, size: int) -> int:
        """Place a regular file's inode and chunk indexes: in a block tail if one fits, else
        at the cursor; the cursor ends on an inode slot. (`take_tail or take`, then `align`,
        with fewer calls: this runs once per file.)"""
        if size < BLOCK and self._nonempty >> (size + 31) // 32:
            offset = self.take_tail(size)
            self.align(EROFS_INODE_SLOT_SIZE)
            return offset
        offset = self.offset
        self.offset = (offset + size + 31) // 32 * 32
        return offset

    def place_with_tail(self, inode_size: int, data_size: int) -> tuple[int, DataLayout, int]:
        """Place a directory or symlink; (inode offset, layout, first data block offset)."""
        tail = data_size % BLOCK
        if tail and inode_size + tail <= BLOCK:
            offset = self.take_tail(inode_size + tail)
            if offset == 0:
                if BLOCK - self.offset % BLOCK < inode_size + tail:
                    self.remember_tail(self.offset)
                    self.align(BLOCK)
                offset = self.take(inode_size + tail)
            if data_size != tail:
                self.remember_tail(self.offset)
                self.align(BLOCK)
            data_offset = self.take(data_size - tail)
            return offset, DataLayout.FLAT_INLINE, data_offset
        offset = self.take_tail(inode_size) or self.take(inode_size)
        self.remember_tail(self.offset)
        self.align(BLOCK)
        data_offset = self.take(data_size)
        self.align(BLOCK)
        return offset, DataLayout.FLAT_PLAIN, data_offset


def _entry_names(names: list[bytes]) -> list[bytes]:
    """Sorted child names plus "." and ".." in their sorted places."""
    return sorted([b".", b"..", *names])


class _Layout:
    """Assigns inode numbers, nids and data offsets to every inode of a tree."""

    def __init__(self, root: Inode, chunk_size: int) -> None:
        self.chunk_size = chunk_size
        self.alloc = Allocator()
        self.placed: dict[int, _Placed] = {}
        self.parent: dict[int, Inode] = {id(root): root}
        self.names: dict[int, list[bytes]] = {}  # sorted child names of each directory
        self.directories: list[Inode] = []  # in placement order
        self.node_count = 1
        self.root = self._place_dir(root, 1)
        self._visit(root)
        self._count_links()

    def _place_dir(self, directory: Inode, ino: int) -> _Placed:
        names = self.names[id(directory)] = sorted(directory.children)
        self.directories.append(directory)
        inode_size = InodeExtended.SIZE + xattr_body_size(directory.xattrs)
        _, dir_size = dirent_blocks(_entry_names(names), BLOCK)
        offset, layout, data_offset = self.alloc.place_with_tail(inode_size, dir_size)
        self.alloc.align(EROFS_INODE_SLOT_SIZE)
        placed = _Placed(directory, ino, offset, inode_size, layout, data_offset, dir_size)
        self.placed[id(directory)] = placed
        return placed

    def _place_other(self, inode: Inode, ino: int) -> None:
        inode_size = InodeExtended.SIZE + xattr_body_size(inode.xattrs)
        alloc = self.alloc
        if inode.is_reg:
            total = align_up(inode_size, 8) + 8 * self._chunk_count(inode)
            placed = _Placed(inode, ino, alloc.place_file(total), inode_size,
                             DataLayout.CHUNK_BASED)  # fmt: skip
        elif inode.is_symlink:
            offset, layout, data_offset = alloc.place_with_tail(inode_size, len(inode.target))
            placed = _Placed(inode, ino, offset, inode_size, layout, data_offset,
                             len(inode.target))  # fmt: skip
        else:
            placed = _Placed(inode, ino, alloc.take(inode_size), inode_size,
                             DataLayout.FLAT_PLAIN)  # fmt: skip
        alloc.align(EROFS_INODE_SLOT_SIZE)
        self.placed[id(inode)] = placed

    def _chunk_count(self, inode: Inode) -> int:
        return (inode.size + self.chunk_size - 1) // self.chunk_size

    def _visit(self, directory: Inode) -> None:
        subdirs = []
        for name in self.names[id(directory)]:
            child = directory.children[name]
            self.node_count += 1
            if id(child) in self.placed:  # a later name of a hard-linked file
                continue
            if child.is_dir:
                self.parent[id(child)] = directory
                subdirs.append((child, self.node_count))
            else:
                self._place_other(child, self.node_count)
        for child, ino in subdirs:
            self._place_dir(child, ino)
            self._visit(child)

    def _count_links(self) -> None:
        """Directories: 2 + subdirectories; regular files: the names they have."""
        names: dict[int, int] = {}
        for directory in self.directories:
            self.placed[id(directory)].nlink = 2 + sum(
                1 for child in directory.children.values() if child.is_dir
            )
            for child in directory.children.values():
                if child.is_reg:
                    names[id(child)] = names.get(id(child), 0) + 1
        for key, count in names.items():
            self.placed[key].nlink = count

    @property
    def end(self) -> int:
        return self.alloc.offset


def _walk_bfs(root: Inode, layout: _Layout) -> Iterator[Inode]:
    """nydus `walk_bfs` order: the root, a directory's children, then each child directory."""
    yield root
    pending = deque([root])
    while pending:
        directory = pending.popleft()
        for name in layout.names[id(directory)]:
            child = directory.children[name]
            yield child
            if child.is_dir:
                pending.append(child)


def chunk_format(size: int, chunk_size: int, contiguous: bool) -> int:
    """`i_u` of a chunk-based inode: one big chunk (the size rounded up to a power of two)
    when the file is larger than a chunk and its chunks lie back to back in one blob."""
    chunk = 1 << (size - 1).bit_length() if size > chunk_size and contiguous else chunk_size
    return EROFS_CHUNK_FORMAT_INDEXES | (chunk.bit_length() - 1 - EROFS_BLKSZBITS)


def is_contiguous(chunks: Sequence[tuple[int, int]], chunk_size: int) -> bool:
    """Whether chunks, as (blob index, uncompressed offset), follow each other in one blob."""
    blob, start = chunks[0]
    return all(b == blob and offset == start + i * chunk_size
               for i, (b, offset) in enumerate(chunks))  # fmt: skip


def prefetch_targets(patterns: Sequence[str], lookup: Callable[[bytes], _T | None]) -> list[_T]:
    """What `lookup` finds (e.g. the nid) at each prefetch pattern's path that exists, in
    pattern order, leaving out patterns under an earlier one."""
    found: list[_T] = []
    kept: list[bytes] = []
    for pattern in patterns:
        path = b"/" + pattern.encode().strip(b"/")
        if any(path == k or path.startswith(k.rstrip(b"/") + b"/") for k in kept):
            continue
        target = lookup(path)
        if target is not None:
            kept.append(path)
            found.append(target)
    return found


def _lookup(root: Inode, layout: _Layout, path: bytes) -> int | None:
    """The nid at an absolute path of a laid-out tree, or None."""
    node: Inode | None = root
    for part in path.split(b"/"):
        if part and node is not None:
            node = node.children.get(part)
    return None if node is None else layout.placed[id(node)].nid


def write_bootstrap(root: Inode, blobs: Sequence[BlobEntry], options: BootstrapOptions) -> bytes:
    """The complete RAFS v6 bootstrap of `root` whose chunks live in `blobs` (table order)."""
    check_blob_count(len(blobs))
    layout = _Layout(root, options.chunk_size)
    prefetch = []
    if blobs:
        prefetch = prefetch_targets(options.prefetch_patterns,
                                    lambda path: _lookup(root, layout, path))  # fmt: skip
    meta_block = table_layout(len(blobs), len(prefetch)).meta_addr // BLOCK
    meta = bytearray(layout.end)
    has_xattr = False
    for placed in layout.placed.values():
        has_xattr |= bool(placed.inode.xattrs)
        _dump_inode(meta, placed, layout, meta_block, options.chunk_size)
    flags = superblock_flags(options, has_xattr, blobs)
    return assemble_bootstrap(meta, blobs, prefetch, b"".join(_chunk_table(root, layout)),
                              layout.node_count, flags, options.chunk_size)  # fmt: skip


def check_blob_count(count: int) -> None:
    if count > MAX_BLOBS:
        raise InvalidArgument(f"{count} blobs: RAFS v6 allows at most {MAX_BLOBS}")


class TableLayout(NamedTuple):
    """Where the tables before the metadata area go (`v6_dump`)."""

    blob_table_offset: int
    prefetch_offset: int
    meta_addr: int  # file offset of pre-shift offset 0; the root inode is at meta_addr + 4096


def table_layout(blob_count: int, prefetch_count: int) -> TableLayout:
    """The offsets of the blob table, prefetch table and metadata area for table sizes."""
    blob_table_offset = align_up(DEVICE_TABLE_OFFSET + 128 * blob_count, BLOCK)
    prefetch_offset = blob_table_offset + 256 * blob_count
    meta_addr = align_up(prefetch_offset + 4 * prefetch_count, BLOCK) if blob_count else 0
    return TableLayout(blob_table_offset, prefetch_offset, meta_addr)


def superblock_flags(options: BootstrapOptions, has_xattr: bool,
                     blobs: Sequence[BlobEntry]) -> RafsSuperFlags:  # fmt: skip
    """The extended superblock's `s_flags` for these options, xattr use and blobs."""
    flags = (COMPRESSION_FLAG[options.compressor] | DIGEST_FLAG[options.digester]
             | RafsSuperFlags.ENCRYPTION_NONE)  # fmt: skip
    if options.explicit_uid_gid:
        flags |= RafsSuperFlags.EXPLICIT_UID_GID
    if has_xattr:
        flags |= RafsSuperFlags.HAS_XATTR
    if all(b.features & BlobFeatures.INLINED_CHUNK_DIGEST for b in blobs):
        flags |= RafsSuperFlags.INLINED_CHUNK_DIGEST
    return flags


def assemble_bootstrap(
    meta: bytes | bytearray,
    blobs: Sequence[BlobEntry],
    prefetch: Sequence[int],
    chunk_table: bytes,
    node_count: int,
    flags: int,
    chunk_size: int,
) -> bytes:
    """The bootstrap file around a laid-out metadata area.

    `meta` holds the inodes and directory/symlink blocks at their pre-shift offsets (the
    root at 4096; nothing below it), `chunk_table` the packed chunk table entries. Adds the
    superblocks, device slots, blob table and prefetch table in front and the chunk table
    behind, each where `v6_dump` puts it, and pads the file to whole blocks.
    """
    tables = table_layout(len(blobs), len(prefetch))
    meta_addr = tables.meta_addr
    chunk_table_offset = align_up(meta_addr + len(meta), BLOCK)
    size = align_up(chunk_table_offset + len(chunk_table), BLOCK)
    image = bytearray(size)
    image[meta_addr + BLOCK : meta_addr + len(meta)] = memoryview(meta)[BLOCK:]

    mapped = size
    for index, blob in enumerate(blobs):
        blocks = blob.uncompressed_size // BLOCK
        blkaddr = align_up(mapped, MAPPED_BLKADDR_ALIGN) // BLOCK
        mapped = (blkaddr + blocks) * BLOCK
        slot = DeviceSlot(blob.blob_id, blocks, blkaddr)
        slot_at = DEVICE_TABLE_OFFSET + 128 * index
        image[slot_at : slot_at + 128] = slot.pack()
        entry = replace(blob, blob_index=index, chunk_size=chunk_size)
        entry_at = tables.blob_table_offset + 256 * index
        image[entry_at : entry_at + 256] = entry.pack()
    prefetch_at = tables.prefetch_offset
    image[prefetch_at : prefetch_at + 4 * len(prefetch)] = pack_prefetch_table(list(prefetch))
    image[chunk_table_offset : chunk_table_offset + len(chunk_table)] = chunk_table

    superblock = SuperBlock(
        s_inos=node_count,
        s_blocks=sum(b.uncompressed_size // BLOCK for b in blobs),
        s_meta_blkaddr=meta_addr // BLOCK,
        s_extra_devices=len(blobs),
    )
    image[EROFS_SUPER_OFFSET : EROFS_SUPER_OFFSET + SuperBlock.SIZE] = superblock.pack()
    ext = SuperBlockExt(
        s_flags=int(flags),
        s_blob_table_offset=tables.blob_table_offset,
        s_blob_table_size=256 * len(blobs),
        s_chunk_size=chunk_size,
        s_chunk_table_offset=chunk_table_offset,
        s_chunk_table_size=len(chunk_table),
        s_prefetch_table_offset=prefetch_at if prefetch else 0,
        s_prefetch_table_size=4 * len(prefetch),
    )
    image[RAFS_EXT_SUPER_OFFSET : RAFS_EXT_SUPER_OFFSET + SuperBlockExt.SIZE] = ext.pack()
    return bytes(image)


def _chunk_table(root: Inode, layout: _Layout) -> list[bytes]:
    """Chunk table entries sorted by (digest, blob index); the last user sets file_offset."""
    chunk_size = layout.chunk_size
    users: dict[tuple[bytes, int], tuple[Chunk, int]] = {}
    for inode in _walk_bfs(root, layout):
        for position, chunk in enumerate(inode.chunks):
            users[(chunk.digest, chunk.blob_index)] = (chunk, position * chunk_size)
    pack = ChunkInfo.STRUCT.pack
    compressed = int(ChunkFlags.HAS_CRC32 | ChunkFlags.COMPRESSED)
    raw = int(ChunkFlags.HAS_CRC32)
    return [
        pack(chunk.digest, chunk.blob_index, compressed if chunk.compressed else raw,
             chunk.compressed_size, chunk.uncompressed_size, chunk.compressed_offset,
             chunk.uncompressed_offset, file_offset, chunk.ci_index, chunk.crc32)
        for chunk, file_offset in (users[key] for key in sorted(users))
    ]  # fmt: skip


def _dump_inode(meta: bytearray, placed: _Placed, layout: _Layout, meta_block: int,
                chunk_size: int) -> None:  # fmt: skip
    """Write one inode (and its directory or symlink data) into the metadata area."""
    inode = placed.inode
    start = placed.offset
    data_block = meta_block + placed.data_offset // BLOCK
    tail = b""
    if inode.is_dir:
        i_size = placed.data_size
        i_u = data_block
        blocks = _dir_blocks(inode, placed, layout)
        if placed.layout == DataLayout.FLAT_INLINE:
            tail = blocks.pop()
        data = b"".join(blocks)
    elif inode.is_symlink:
        i_size, i_u = len(inode.target), data_block
        full = len(inode.target) - len(inode.target) % BLOCK
        if placed.layout == DataLayout.FLAT_INLINE:
            tail = inode.target[full:]
            data = inode.target[:full]
        else:
            data = inode.target
    elif inode.is_reg:
        contiguous = bool(inode.chunks) and is_contiguous(
            [(c.blob_index, c.uncompressed_offset) for c in inode.chunks], chunk_size
        )
        i_size, i_u = inode.size, chunk_format(inode.size, chunk_size, contiguous)
        data = b""
    else:
        i_size, i_u, data = 0, inode.rdev, b""
    xattrs = pack_xattrs(inode.xattrs) if inode.xattrs else b""
    record = InodeExtended.STRUCT.pack(
        make_i_format(True, placed.layout), xattr_icount(len(xattrs)), inode.mode, 0, i_size,
        i_u, placed.ino, inode.uid, inode.gid, inode.mtime, inode.mtime_nsec, placed.nlink,
        bytes(16),
    )  # fmt: skip
    body = record + xattrs + tail
    if inode.chunks:
        body = body.ljust(align_up(len(body), 8), b"\0") + pack_chunk_addrs(
            [(c.blob_index, c.ci_index, c.uncompressed_offset // BLOCK) for c in inode.chunks]
        )
    meta[start : start + len(body)] = body
    if data:
        meta[placed.data_offset : placed.data_offset + len(data)] = data


def _dir_blocks(directory: Inode, placed: _Placed, layout: _Layout) -> list[bytes]:
    """The directory's data blocks; the last one unpadded (it may be an inline tail)."""
    names = _entry_names(layout.names[id(directory)])
    counts, _ = dirent_blocks(names, BLOCK)
    parent_nid = layout.placed[id(layout.parent[id(directory)])].nid
    nids, types = [], []
    for name in names:
        if name == b".":
            nids.append(placed.nid)
            types.append(EROFS_FT_DIR)
        elif name == b"..":
            nids.append(parent_nid)
            types.append(EROFS_FT_DIR)
        else:
            child = directory.children[name]
            nids.append(layout.placed[id(child)].nid)
            types.append(file_type_of_mode(child.mode))
    return pack_dirent_blocks(names, nids, types, counts, BLOCK)


def rename_blobs(bootstrap: bytes, blob_ids: dict[int, str]) -> bytes:
    """The bootstrap with blobs renamed (by table index) and no longer marked inlined."""
    image = bytearray(bootstrap)
    ext = SuperBlockExt.unpack(image, RAFS_EXT_SUPER_OFFSET)
    for index, blob_id in blob_ids.items():
        name = blob_id.encode().ljust(64, b"\0")
        slot_at = DEVICE_TABLE_OFFSET + 128 * index
        image[slot_at : slot_at + 64] = name
        entry_at = ext.s_blob_table_offset + 256 * index
        entry = BlobEntry.unpack(image, entry_at)
        features = entry.features & ~BlobFeatures.INLINED_FS_META
        image[entry_at : entry_at + 256] = replace(entry, blob_id=name, features=features).pack()
    return bytes(image)
