"""Write a merged tree as a RAFS v6 bootstrap by copying each winning inode's fields.

The bytes are those `bootstrap.write_bootstrap` writes for the same tree (nydus's layout,
spec §1.14-1.15), but no object is made per inode: each inode is written from its layer's
bytes as soon as it is placed, with the fields that change patched in.

1. Directories breadth first (nydus `walk_bfs`): each gets its sorted names and its rank in
   that order, so any entry's breadth-first position is (directory rank, name index). The
   blob table order, first reference in that walk, is fixed here too: the files of a
   layer are looked at only until all its blobs have their place (usually one file).
   Knowing the blob count fixes where the metadata area starts.
2. One depth-first pass, in nydus's placement order (`build_rafs`): a directory is placed
   (inode and dirent blocks), then its other children are placed and written in name
   order, then each child directory's subtree; the directory's own inode and dirents are
   written last, when its children's nids are known. A file's chunk indexes get the new
   device id (blob table index + 1) and the CI index and block address of their chunk
   table entry. nydus writes the chunk table from the last file using a chunk in
   breadth-first order (`file_offset` is that file's): each use carries its position.
3. Hard-linked files are written with i_nlink 1; the name count is patched in at the end.
"""

from __future__ import annotations

import struct
from bisect import bisect_left
from collections.abc import Sequence
from functools import cache
from typing import Any

from rafs.builder.bootstrap import (
    BLOCK,
    Allocator,
    BootstrapOptions,
    assemble_bootstrap,
    check_blob_count,
    chunk_format,
    is_contiguous,
    prefetch_targets,
    superblock_flags,
    table_layout,
)
from rafs.builder.overlay import Entry, MergedDir
from rafs.builder.raw_bootstrap import (
    CHUNK_FILE_OFFSET,
    CHUNK_KEY_MASK,
    CHUNK_KEY_SIZE,
    EXTENDED_CHUNK_BASED,
    Header,
    RawBootstrap,
)
from rafs.format.blobtable import BlobEntry
from rafs.format.chunktable import ChunkInfo
from rafs.format.dirent import dirent_blocks, pack_dirent_blocks
from rafs.format.inode import (
    EROFS_FT_BLKDEV,
    EROFS_FT_CHRDEV,
    EROFS_FT_DIR,
    EROFS_FT_REG_FILE,
    EROFS_FT_SYMLINK,
    EROFS_INODE_SLOT_SIZE,
    DataLayout,
    InodeExtended,
    make_i_format,
)
from rafs.format.xattr import pack_xattrs, xattr_icount

INODE = struct.Struct(InodeExtended.STRUCT.format[:-3] + "16x")  # reserved tail zeroed
FILE_WITH_ONE_CHUNK = struct.Struct(INODE.format + "Q")  # and its chunk index
NLINK = struct.Struct("<I")
NLINK_OFFSET = 44  # of i_nlink in an extended inode
QWORD = struct.Struct("<Q")
_UNCOMPRESSED_OFFSET = 56  # of a chunk table entry


@cache
def _words(count: int) -> struct.Struct:
    return struct.Struct(f"<{count}Q")


class _Dir:
    """A directory of the merged tree, in breadth-first order, and where it was placed."""

    __slots__ = ("counts", "data_offset", "entry_names", "header", "kids", "layout", "merged",
                 "names", "nid", "nids", "rank", "size", "xattrs")  # fmt: skip

    def __init__(self, merged: MergedDir, rank: int) -> None:
        self.merged = merged
        self.rank = rank
        self.names = sorted(merged.children)
        self.kids: list[Entry | _Dir] = []  # parallel to names
        self.nids: list[int] = []  # parallel to names, once placed
        # set when placed: its inode's fields, dirent names ("." and ".." in their sorted
        # places), entries per dirent block, xattr body, size, nid and data layout
        self.header: Header | None = None
        self.entry_names: list[bytes] = []
        self.counts: list[int] = []
        self.xattrs = b""
        self.layout = DataLayout.FLAT_PLAIN
        self.size = self.nid = self.data_offset = 0


def _with_dots(names: list[bytes]) -> list[bytes]:
    """Sorted child names with "." and ".." in their sorted places."""
    result = list(names)
    for dot in (b".", b".."):
        result.insert(bisect_left(result, dot), dot)
    return result


class MergeWriter:
    """Lays out and writes one merged tree (one use): `order`, then `write`."""

    def __init__(self, layers: Sequence[RawBootstrap], chunk_size: int) -> None:
        self.layers = layers
        self.chunk_size = chunk_size
        self.alloc = Allocator()
        self.meta = bytearray()  # the metadata area, pre-shift offsets
        self.meta_block = 0  # block of pre-shift offset 0 in the file, set by `write`
        self.node_count = 1
        self.linked = [layer.linked_nids() for layer in layers]  # per layer
        self.files: dict[int, int] = {}  # (layer << 40 | nid) -> offset, for the linked
        self.names: dict[int, int] = {}  # offset of a hard-linked file -> its names
        self.blob_order: dict[int, int] = {}  # merged blob slot -> blob table index
        self.devices = [[-1] * 256 for _ in layers]  # per layer: device id -> table index
        # chunk table key (digest, blob index) -> breadth-first position of its last user,
        # and the entry that user gives it
        self.user_position: dict[bytes, int] = {}
        self.entries: dict[bytes, bytes] = {}

    # -- breadth first: directory ranks and the blob table ---------------------------------

    def order(self, root: MergedDir) -> list[_Dir]:
        """The directories breadth first, each with its children; gives the blobs their
        table index, in order of first reference."""
        directories = [_Dir(root, 0)]
        unplaced = [self._unplaced_devices(index) for index in range(len(self.layers))]
        for directory in directories:
            children = directory.merged.children
            kids: list[Any] = list(map(children.__getitem__, directory.names))
            directory.kids = kids  # its MergedDirs are made _Dirs here
            for position, kid in enumerate(kids):
                if isinstance(kid, MergedDir):
                    child = _Dir(kid, len(directories))
                    kids[position] = child
                    directories.append(child)
                elif unplaced[kid[0]] and kid[2] == EROFS_FT_REG_FILE:
                    self._place_blobs(kid, unplaced[kid[0]])
        return directories

    def _unplaced_devices(self, index: int) -> set[int]:
        """The device ids of a layer's blobs that have no blob table index yet."""
        slots = self.layers[index].slot_of_device
        return {device for device in range(1, 256) if slots[device] >= 0}

    def _place_blobs(self, entry: Entry, unplaced: set[int]) -> None:
        """Give the blobs a file's chunks are in their table index, if they have none."""
        index, nid, _ = entry
        layer = self.layers[index]
        header = layer.header(nid, EROFS_FT_REG_FILE)
        for word in self._chunk_words(layer, nid, header):
            device = word >> 16 & 0xFF
            if device in unplaced:
                slot = layer.slot_of_device[device]
                blob = self.blob_order.get(slot)
                if blob is None:
                    check_blob_count(len(self.blob_order) + 1)
                    blob = self.blob_order[slot] = len(self.blob_order)
                self.devices[index][device] = blob
                layer.assign_blob(device, blob)
                unplaced.discard(device)

    def _chunk_words(self, layer: RawBootstrap, nid: int, header: Header) -> tuple[int, ...]:
        """A file's chunk index entries, each as one little-endian u64."""
        count = -(-header.size // self.chunk_size)
        if not count:
            return ()
        start = (layer.body_offset(nid, header.i_format, header.xattr_icount) + 7) // 8 * 8
        if start + 8 * count > len(layer.data):
            raise layer.error(nid, "chunk indexes run past the end")
        return _words(count).unpack_from(layer.data, start)

    # -- depth first: place and write ------------------------------------------------------

    def write(self, root: _Dir, meta_block: int) -> bytearray:
        """Place and write every inode; the metadata area (pre-shift offsets), to be put at
        block `meta_block` of the file."""
        self.meta_block = meta_block
        self._place_dir(root)
        self._visit(root, root.nid, 1)
        for offset, names in self.names.items():
            NLINK.pack_into(self.meta, offset + NLINK_OFFSET, names)
        self._reserve(self.alloc.offset)
        del self.meta[self.alloc.offset :]  # the area ends where the layout does
        return self.meta

    def _reserve(self, end: int) -> None:
        """Make the area at least `end` bytes long (at least doubling it, so that growing
        it costs little however many inodes are written)."""
        if end > len(self.meta):
            self.meta += bytes(max(end, 2 * len(self.meta)) - len(self.meta))

    def _put(self, offset: int, data: bytes) -> None:
        """Write `data` at a pre-shift offset."""
        self._reserve(offset + len(data))
        self.meta[offset : offset + len(data)] = data

    def _place_dir(self, directory: _Dir) -> None:
        """Place a directory's inode and dirent blocks."""
        merged = directory.merged
        directory.entry_names = _with_dots(directory.names)
        directory.counts, directory.size = dirent_blocks(directory.entry_names, BLOCK)
        header = directory.header = self.layers[merged.layer].header(merged.nid, EROFS_FT_DIR)
        directory.xattrs = self._dir_xattr_body(merged, header)
        inode_size = InodeExtended.SIZE + len(directory.xattrs)
        offset, directory.layout, directory.data_offset = self.alloc.place_with_tail(
            inode_size, directory.size
        )
        self.alloc.align(EROFS_INODE_SLOT_SIZE)
        directory.nid = offset // EROFS_INODE_SLOT_SIZE

    def _visit(self, directory: _Dir, parent_nid: int, ino: int) -> None:
        """Place and write a placed directory's children, its subdirectories' subtrees,
        then the directory itself.

        The usual file (extended, chunk-based, no xattrs, one chunk) is written here;
        `_write_file` does the same for any file.
        """
        kids = directory.kids
        nids = directory.nids = [0] * len(kids)
        file_types = []
        subdirs = []
        files, layers, devices, linked = self.files, self.layers, self.devices, self.linked
        place_file, meta = self.alloc.place_file, self.meta
        user_position, entries = self.user_position, self.entries
        i_u = chunk_format(self.chunk_size, self.chunk_size, False)  # of a one-chunk file
        bfs_position = directory.rank << 32
        count = self.node_count
        for position, kid in enumerate(kids):
            count += 1
            bfs_position += 1
            if isinstance(kid, _Dir):
                subdirs.append((position, kid, count))
                file_types.append(EROFS_FT_DIR)
                continue
            index, nid, file_type = kid
            file_types.append(file_type)
            if file_type != EROFS_FT_REG_FILE:
                nids[position] = self._write_other(kid, count) // EROFS_INODE_SLOT_SIZE
                continue
            key = -1
            if nid in linked[index]:
                key = index << 40 | nid
                offset = files.get(key)
                if offset is not None:  # a later name of a hard link
                    self.names[offset] = self.names.get(offset, 1) + 1
                    self._note_chunks(
                        kid,
                        bfs_position,
                        self._chunk_words(layers[index], nid, layers[index].header(nid, file_type)),
                    )
                    nids[position] = offset // EROFS_INODE_SLOT_SIZE
                    continue
            layer = layers[index]
            at = layer.meta + nid * 32
            fields = None
            if at + FILE_WITH_ONE_CHUNK.size <= len(layer.data):
                fields = FILE_WITH_ONE_CHUNK.unpack_from(layer.data, at)
                word = fields[12]
                entry = layer.chunk_entry.get(word & CHUNK_KEY_MASK)
                blob = devices[index][word >> 16 & 0xFF]
            if (fields is not None and fields[0] == EXTENDED_CHUNK_BASED and not fields[1]
                    and fields[2] & 0o170000 == 0o100000 and fields[5] & 0xFFE0 == 0x20
                    and 0 < fields[4] <= self.chunk_size and entry is not None
                    and blob >= 0):  # fmt: skip
                offset = place_file(FILE_WITH_ONE_CHUNK.size)
                if offset + FILE_WITH_ONE_CHUNK.size > len(meta):
                    self._reserve(offset + FILE_WITH_ONE_CHUNK.size)  # `meta` grows in place
                FILE_WITH_ONE_CHUNK.pack_into(
                    meta, offset, EXTENDED_CHUNK_BASED, 0, fields[2], 0, fields[4], i_u, count,
                    fields[7], fields[8], fields[9], fields[10], 1,
                    layer.chunk_word[entry] | (blob + 1) << 16,
                )  # fmt: skip
                at = entry * ChunkInfo.SIZE
                table = layer.chunk_table
                chunk = table[at : at + CHUNK_KEY_SIZE]
                if user_position.get(chunk, -1) <= bfs_position:
                    user_position[chunk] = bfs_position
                    entries[chunk] = table[at : at + ChunkInfo.SIZE]  # file_offset 0
            else:
                offset = self._write_file(kid, count, bfs_position)
            if key >= 0:
                files[key] = offset
            nids[position] = offset // EROFS_INODE_SLOT_SIZE
        self.node_count = count
        for position, child, child_ino in subdirs:
            self._place_dir(child)
            nids[position] = child.nid
            self._visit(child, directory.nid, child_ino)
        self._write_dir(directory, parent_nid, ino, file_types, len(subdirs))

    def _write_file(self, entry: Entry, ino: int, bfs_position: int) -> int:
        """Place and write a regular file (its first name); returns its offset."""
        index, nid, _ = entry
        layer = self.layers[index]
        header = layer.header(nid, EROFS_FT_REG_FILE)
        words = self._chunk_words(layer, nid, header)
        out = self._note_chunks(entry, bfs_position, words)
        contiguous = len(words) > 1 and self._contiguous(layer, words, out)
        i_u = chunk_format(header.size, self.chunk_size, contiguous)
        xattrs = self._xattr_body(layer, nid, header)
        body = INODE.pack(EXTENDED_CHUNK_BASED, xattr_icount(len(xattrs)), header.mode, 0,
                          header.size, i_u, ino, header.uid, header.gid, header.mtime,
                          header.mtime_nsec, 1) + xattrs  # fmt: skip
        body = body.ljust((len(body) + 7) // 8 * 8, b"\0") + _words(len(out)).pack(*out)
        offset = self.alloc.place_file(len(body))
        self._put(offset, body)
        return offset

    def _note_chunks(self, entry: Entry, bfs_position: int, words: tuple[int, ...]) -> list[int]:
        """A file's new chunk index words (new device id, CI index and block address from
        its chunk table entry); makes the file the last user of each chunk unless a file
        later in breadth-first order is (within a file, the last use of a chunk counts)."""
        index, nid, _ = entry
        layer = self.layers[index]
        devices = self.devices[index]
        table = layer.chunk_table
        out = []
        for position, word in enumerate(words):
            chunk_entry = layer.chunk_entry.get(word & CHUNK_KEY_MASK)
            blob = devices[word >> 16 & 0xFF]
            if chunk_entry is None or blob < 0:
                raise layer.error(nid, f"chunk (blob {(word >> 16 & 0xFF) - 1}, block "
                                       f"{word >> 32}) is not in the chunk table")  # fmt: skip
            out.append(layer.chunk_word[chunk_entry] | (blob + 1) << 16)
            at = chunk_entry * ChunkInfo.SIZE
            chunk = table[at : at + CHUNK_KEY_SIZE]
            if self.user_position.get(chunk, -1) <= bfs_position:
                self.user_position[chunk] = bfs_position
                self.entries[chunk] = (
                    table[at : at + CHUNK_FILE_OFFSET]
                    + QWORD.pack(position * self.chunk_size)
                    + table[at + CHUNK_FILE_OFFSET + 8 : at + ChunkInfo.SIZE]
                )
        return out

    def _contiguous(self, layer: RawBootstrap, words: Sequence[int], out: list[int]) -> bool:
        """Whether a file's chunks lie back to back in one blob: same new device id, and
        chunk table offsets a chunk apart."""
        chunks = []
        for word, new in zip(words, out, strict=True):
            at = layer.chunk_entry[word & CHUNK_KEY_MASK] * ChunkInfo.SIZE
            offset = QWORD.unpack_from(layer.chunk_table, at + _UNCOMPRESSED_OFFSET)[0]
            chunks.append((new >> 16 & 0xFF, offset))
        return is_contiguous(chunks, self.chunk_size)

    def _write_other(self, entry: Entry, ino: int) -> int:
        """Place and write a symlink (target inline or in blocks) or a device, fifo or
        socket; returns its offset."""
        index, nid, file_type = entry
        layer = self.layers[index]
        header = layer.header(nid, file_type)
        xattrs = self._xattr_body(layer, nid, header)
        inode_size = InodeExtended.SIZE + len(xattrs)
        data = tail = b""
        if file_type == EROFS_FT_SYMLINK:
            target = layer.symlink_target(nid, header)
            size = len(target)
            offset, data_layout, data_offset = self.alloc.place_with_tail(inode_size, size)
            i_u = self.meta_block + data_offset // BLOCK
            full = size - size % BLOCK if data_layout == DataLayout.FLAT_INLINE else size
            data, tail = target[:full], target[full:]
        else:
            offset, data_offset, size = self.alloc.take(inode_size), 0, 0
            data_layout = DataLayout.FLAT_PLAIN
            i_u = header.i_u if file_type in (EROFS_FT_CHRDEV, EROFS_FT_BLKDEV) else 0
        self.alloc.align(EROFS_INODE_SLOT_SIZE)
        record = INODE.pack(
            make_i_format(True, data_layout), xattr_icount(len(xattrs)),
            header.mode, 0, size, i_u, ino, header.uid, header.gid, header.mtime,
            header.mtime_nsec, 1,
        )  # fmt: skip
        self._put(offset, record + xattrs + tail)
        if data:
            self._put(data_offset, data)
        return offset

    def _write_dir(self, directory: _Dir, parent_nid: int, ino: int, file_types: list[int],
                   subdirs: int) -> None:  # fmt: skip
        """A directory's inode (with its inline tail) and dirent blocks."""
        header = directory.header
        assert header is not None  # placed
        names = directory.entry_names
        nids = list(directory.nids)
        for dot, nid in ((b".", directory.nid), (b"..", parent_nid)):
            position = names.index(dot)
            nids.insert(position, nid)
            file_types.insert(position, EROFS_FT_DIR)
        blocks = pack_dirent_blocks(names, nids, file_types, directory.counts, BLOCK)
        tail = blocks.pop() if directory.layout == DataLayout.FLAT_INLINE else b""
        xattrs = directory.xattrs
        record = INODE.pack(
            make_i_format(True, directory.layout), xattr_icount(len(xattrs)),
            header.mode, 0, directory.size, self.meta_block + directory.data_offset // BLOCK,
            ino, header.uid, header.gid, header.mtime, header.mtime_nsec, 2 + subdirs,
        )  # fmt: skip
        self._put(directory.nid * EROFS_INODE_SLOT_SIZE, record + xattrs + tail)
        if blocks:
            self._put(directory.data_offset, b"".join(blocks))

    @staticmethod
    def _xattr_body(layer: RawBootstrap, nid: int, header: Header) -> bytes:
        return layer.xattr_body(nid, header) if header.xattr_icount else b""

    def _dir_xattr_body(self, merged: MergedDir, header: Header) -> bytes:
        if merged.xattrs is not None:
            return pack_xattrs(merged.xattrs)
        return self._xattr_body(self.layers[merged.layer], merged.nid, header)

    def chunk_table(self) -> bytes:
        """The chunk table: one entry per (digest, blob), sorted, from its last user."""
        return b"".join(map(self.entries.__getitem__, sorted(self.entries)))


def _find(root: _Dir, path: bytes) -> tuple[_Dir, int] | None:
    """Where an absolute path's entry is: (its directory, its index), or (the root, -1)."""
    directory, position = root, -1
    for part in path.split(b"/"):
        if not part:
            continue
        if position >= 0:
            kid = directory.kids[position]
            if not isinstance(kid, _Dir):
                return None
            directory = kid
        position = bisect_left(directory.names, part)
        if position == len(directory.names) or directory.names[position] != part:
            return None
    return directory, position


def write_merged(layers: Sequence[RawBootstrap], root: MergedDir, blobs: Sequence[BlobEntry],
                 options: BootstrapOptions) -> tuple[bytes, list[int]]:  # fmt: skip
    """The bootstrap of a merged tree whose layers' blobs are `blobs` (by merged slot), and
    the slots of the blobs it references, in blob table order."""
    writer = MergeWriter(layers, options.chunk_size)
    directories = writer.order(root)
    slots = list(writer.blob_order)
    table_blobs = [blobs[slot] for slot in slots]
    prefetch = []
    if table_blobs:
        prefetch = prefetch_targets(options.prefetch_patterns,
                                    lambda path: _find(directories[0], path))  # fmt: skip
    meta = writer.write(directories[0], table_layout(len(slots), len(prefetch)).meta_addr // BLOCK)
    nids = [directory.nid if position < 0 else directory.nids[position]
            for directory, position in prefetch]  # fmt: skip
    flags = superblock_flags(options, True, table_blobs)  # merge always sets HAS_XATTR
    bootstrap = assemble_bootstrap(meta, table_blobs, nids, writer.chunk_table(),
                                   writer.node_count, flags, options.chunk_size)  # fmt: skip
    return bootstrap, slots
