"""A small RAFS v5 bootstrap and data blob writer, for tests only.

Written from the nydus builder (`builder/src/core/bootstrap.rs` `build_rafs`,
`builder/src/core/v5.rs` `v5_dump`, `node.rs`) and the layouts in `rafs.format.v5`:

* Inode indexes are handed out directory by directory: the root is 1; a directory's children
  (sorted by name) take the next consecutive indexes, recorded as `i_child_index` and
  `i_child_count`; then each child directory is laid out in turn, in name order.
* A hard link keeps its own index and record, but takes the `i_ino` of the first link laid
  out; every link gets the group's `i_nlink`. Directories get nlink 2 + subdirectories.
* File data goes into the blob in index order, cut into chunks; a chunk whose digest was
  already written is reused (its info copied, `file_offset` set for the new file). A
  compressed chunk not smaller than its data is stored raw, without the COMPRESSED flag.
* The bootstrap is: superblock, inode table (index -> offset >> 3), prefetch table, blob
  table, extended blob table, then the inode records in depth-first pre-order (nydus HEAD),
  each with its name and symlink target padded to 8, its xattr table, and for files its chunk
  infos. `layout="2022"` writes what the 2022 builders did instead: records in index order,
  and `s_inodes_count` not counting the root. (With it, the upstream fixtures
  `tests/texture/repeatable/*` are reproduced byte for byte, blob included.)
* Digests: a file hashes its chunk digests, a symlink its target, a directory its children's
  digests in order, anything else nothing. Directory sizes are the sum of (name + 8) rounded
  up to 4 KiB (4096 when empty); `i_blocks` is (size + aligned xattr size) in 512-byte units.
  The root's mtime is not kept (the builder leaves it 0).

Entries are described by absolute path: `{"/etc/passwd": File(b"root:x:0:0")}`; missing
parent directories are created with `Dir()` defaults.
"""

from __future__ import annotations

import hashlib
import stat
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from rafs.codecs import compress, crc32c_of, digest_function
from rafs.format.blobtable import Compressor, Digester
from rafs.format.chunktable import ChunkFlags, ChunkInfo
from rafs.format.inode import encode_rdev
from rafs.format.record import align_up
from rafs.format.superblock import RafsSuperFlags
from rafs.format.v5 import (
    RAFSV5_SUPERBLOCK_SIZE,
    RafsV5BlobEntry,
    RafsV5ExtBlobEntry,
    RafsV5Inode,
    RafsV5InodeFlags,
    RafsV5SuperBlock,
    pack_blob_table,
    pack_inode_table,
    pack_prefetch_table,
    pack_xattrs,
    rafsv5_align,
)

_COMPRESSION_FLAG = {
    Compressor.NONE: RafsSuperFlags.COMPRESSION_NONE,
    Compressor.LZ4_BLOCK: RafsSuperFlags.COMPRESSION_LZ4,
    Compressor.ZSTD: RafsSuperFlags.COMPRESSION_ZSTD,
}
_DIGEST_FLAG = {Digester.BLAKE3: RafsSuperFlags.HASH_BLAKE3,
                Digester.SHA256: RafsSuperFlags.HASH_SHA256}  # fmt: skip
V5_VIRTUAL_ENTRY_SIZE = 8  # pseudo dirent size nydus adds per name for a directory's i_size


@dataclass
class Entry:
    """What every kind of entry carries. `mode` holds permission bits only."""

    mode: int = 0o644
    uid: int = 0
    gid: int = 0
    mtime: int = 1_700_000_000
    mtime_nsec: int = 123_456_789
    xattrs: dict[bytes, bytes] = field(default_factory=dict)


@dataclass
class Dir(Entry):
    mode: int = 0o755


@dataclass
class File(Entry):
    data: bytes = b""
    holes: bool = False
    """Leave all-zero chunks out and set HAS_HOLE (nydus readers read the gaps as zeros)."""


@dataclass
class Symlink(Entry):
    target: bytes = b""
    mode: int = 0o777


@dataclass
class Special(Entry):
    """A device, fifo or socket."""

    kind: int = stat.S_IFIFO
    rdev: tuple[int, int] = (0, 0)


@dataclass
class Hardlink:
    """Another name for the regular file at `target` (an absolute path)."""

    target: str


Description = Mapping[str, Entry | Hardlink]


@dataclass
class _Node:
    path: str
    name: bytes
    entry: Entry
    children: list[_Node] = field(default_factory=list)
    parent: _Node | None = None
    link_group: str | None = None  # the path all links of one regular file share
    index: int = 0
    ino: int = 0
    nlink: int = 1
    child_index: int = 0
    chunks: list[ChunkInfo] = field(default_factory=list)
    digest: bytes = b""
    size: int = 0

    @property
    def file_type(self) -> int:
        entry = self.entry
        if isinstance(entry, Dir):
            return stat.S_IFDIR
        if isinstance(entry, File):
            return stat.S_IFREG
        if isinstance(entry, Symlink):
            return stat.S_IFLNK
        assert isinstance(entry, Special)
        return entry.kind


@dataclass
class V5Image:
    """What `write_v5` made."""

    bootstrap: bytes
    blob: bytes
    blob_id: str
    inos: dict[str, int]  # path -> inode number
    indexes: dict[str, int]  # path -> inode table index of its own record
    offsets: dict[str, int]  # path -> byte offset of its inode record

    def save(self, folder: Path, name: str = "image.boot") -> Path:
        """Write the bootstrap as `folder/name` and the blob as `folder/<blob id>`."""
        folder.mkdir(parents=True, exist_ok=True)
        if self.blob_id:
            (folder / self.blob_id).write_bytes(self.blob)
        path = folder / name
        path.write_bytes(self.bootstrap)
        return path


def _tree(entries: Description) -> tuple[_Node, dict[str, _Node]]:
    root_entry = entries.get("/", Dir(mtime=0, mtime_nsec=0))
    if not isinstance(root_entry, Dir):
        raise ValueError("/ must be a directory")
    nodes = {"/": _Node("/", b"/", root_entry)}

    def parent_of(path: str) -> _Node:
        head = path.rsplit("/", 1)[0] or "/"
        if head not in nodes:
            declared = entries.get(head)
            nodes[head] = _Node(head, head.rsplit("/", 1)[1].encode(),
                                declared if isinstance(declared, Dir) else Dir())  # fmt: skip
            parent = parent_of(head)
            nodes[head].parent = parent
            parent.children.append(nodes[head])
        return nodes[head]

    for path in sorted(entries, key=lambda p: p.count("/")):
        if path == "/" or path in nodes:
            continue
        if not path.startswith("/") or path.endswith("/") or "//" in path:
            raise ValueError(f"bad path {path!r}")
        entry = entries[path]
        group = None
        if isinstance(entry, Hardlink):
            group = entry.target
            target = entries.get(group)
            if not isinstance(target, File):
                raise ValueError(f"{path}: hard link target {group} is not a File")
            entry = target
        elif isinstance(entry, File) and any(
            isinstance(e, Hardlink) and e.target == path for e in entries.values()
        ):
            group = path
        parent = parent_of(path)
        if not isinstance(parent.entry, Dir):
            raise ValueError(f"{path}: parent is not a directory")
        node = _Node(path, path.rsplit("/", 1)[1].encode(), entry, parent=parent,
                     link_group=group)  # fmt: skip
        nodes[path] = node
        parent.children.append(node)
    for node in nodes.values():
        node.children.sort(key=lambda n: n.name)
    return nodes["/"], nodes


def _number(root: _Node) -> list[_Node]:
    """`build_rafs`: indexes, inode numbers, child ranges and link counts; index order."""
    order = [root]
    root.index = root.ino = 1
    groups: dict[str, list[_Node]] = {}

    def layout(directory: _Node) -> None:
        directory.child_index = len(order) + 1
        subdirs = []
        for child in directory.children:
            order.append(child)
            child.index = len(order)
            links = groups.get(child.link_group or "") if child.link_group else None
            if links:
                child.ino = links[0].ino
                links.append(child)
                for link in links:
                    link.nlink = len(links)
            else:
                child.ino = child.index
                child.nlink = 1
                if child.link_group:
                    groups[child.link_group] = [child]
            if child.file_type == stat.S_IFDIR:
                subdirs.append(child)
        directory.nlink = 2 + len(subdirs)
        for subdir in subdirs:
            layout(subdir)

    layout(root)
    return order


def _dfs(root: _Node) -> list[_Node]:
    out: list[_Node] = []
    stack = [root]
    while stack:
        node = stack.pop()
        out.append(node)
        stack.extend(reversed(node.children))
    return out


def write_v5(
    entries: Description,
    *,
    compressor: Compressor = Compressor.NONE,
    digester: Digester = Digester.BLAKE3,
    chunk_size: int = 1 << 20,
    explicit_uidgid: bool = True,
    layout: Literal["head", "2022"] = "head",
    prefetch: Sequence[str] = (),
    crc32: bool = False,
    tar_hardlink_flags: bool = False,
    blob_features: int = 0,
    version: int = 0x500,
) -> V5Image:
    """Lay out `entries` as a v5 bootstrap plus one data blob (none if no file has data)."""
    root, nodes = _tree(entries)
    order = _number(root)
    digest = digest_function(digester)

    # Data: chunks in index order, deduplicated by digest.
    blob = bytearray()
    uncompressed_end = 0
    written: dict[tuple[bytes, int], ChunkInfo] = {}
    for node in order:
        if not isinstance(node.entry, File):
            continue
        data = node.entry.data
        for file_offset in range(0, len(data), chunk_size):
            piece = data[file_offset : file_offset + chunk_size]
            if node.entry.holes and not piece.strip(b"\0"):
                continue
            block_id = digest(piece)
            info = written.get((block_id, len(piece)))
            if info is None:
                stored = compress(piece, compressor)
                flags = ChunkFlags.COMPRESSED if len(stored) < len(piece) else 0
                if not flags:
                    stored = piece
                if crc32:
                    flags |= ChunkFlags.HAS_CRC32
                info = ChunkInfo(block_id, 0, int(flags), len(stored), len(piece), len(blob),
                                 uncompressed_end, file_offset, len(written),
                                 crc32c_of(piece) if crc32 else 0)  # fmt: skip
                written[(block_id, len(piece))] = info
                blob += stored
                uncompressed_end += len(piece)
            node.chunks.append(ChunkInfo(*(info.block_id, info.blob_index, info.flags,
                                           info.compressed_size, info.uncompressed_size,
                                           info.compressed_offset, info.uncompressed_offset,
                                           file_offset, info.index, info.crc32)))  # fmt: skip

    # Sizes and digests (directories after their children).
    for node in reversed(order):
        entry = node.entry
        if isinstance(entry, File):
            node.size = len(entry.data)
            node.digest = digest(b"".join(c.block_id for c in node.chunks))
        elif isinstance(entry, Symlink):
            node.size = len(entry.target)
            node.digest = digest(entry.target)
        elif isinstance(entry, Dir):
            names = sum(len(c.name) + V5_VIRTUAL_ENTRY_SIZE for c in node.children)
            node.size = align_up(names, 4096) if names else 4096
            node.digest = digest(b"".join(c.digest for c in node.children))
        else:
            node.digest = digest(b"")

    blob_id = hashlib.sha256(blob).hexdigest() if written else ""
    blob_entries = [RafsV5BlobEntry(0, 0, blob_id)] if written else []
    ext_entries = [
        RafsV5ExtBlobEntry(len(written), blob_features, uncompressed_end, len(blob))
    ] if written else []  # fmt: skip

    dump = _dfs(root) if layout == "head" else order
    records: list[bytes] = []
    for node in dump:
        entry = node.entry
        xattrs = pack_xattrs(sorted(entry.xattrs.items()))
        flags = RafsV5InodeFlags.XATTR if entry.xattrs else 0
        target = entry.target if isinstance(entry, Symlink) else b""
        if target:
            flags |= RafsV5InodeFlags.SYMLINK
        if isinstance(entry, File) and entry.holes:
            flags |= RafsV5InodeFlags.HAS_HOLE
        if tar_hardlink_flags and node.link_group:
            flags |= RafsV5InodeFlags.HARDLINK
        pairs_size = max(0, len(xattrs) - 8)  # the xattr size nydus adds to i_blocks
        rdev = encode_rdev(*entry.rdev) if isinstance(entry, Special) else 0
        is_dir = isinstance(entry, Dir)
        inode = RafsV5Inode(
            i_digest=node.digest,
            i_parent=node.parent.ino if node.parent else 0,
            i_ino=node.ino,
            i_uid=entry.uid if explicit_uidgid else 0,
            i_gid=entry.gid if explicit_uidgid else 0,
            i_projid=0,
            i_mode=node.file_type | entry.mode,
            i_size=node.size,
            i_blocks=(node.size + rafsv5_align(pairs_size) + 511) // 512,
            i_flags=int(flags),
            i_nlink=node.nlink,
            i_child_index=node.child_index if is_dir else 0,
            i_child_count=len(node.children) if is_dir else len(node.chunks),
            i_name_size=len(node.name),
            i_symlink_size=len(target),
            i_rdev=rdev,
            i_mtime_nsec=0 if node is root else entry.mtime_nsec,
            i_mtime=0 if node is root else entry.mtime,
        )
        record = (
            inode.pack()
            + node.name.ljust(rafsv5_align(len(node.name)), b"\0")
            + target.ljust(rafsv5_align(len(target)), b"\0")
            + xattrs
            + b"".join(c.pack() for c in node.chunks)
        )
        records.append(record)

    inode_table_size = rafsv5_align(4 * len(order))
    prefetch_inos = [nodes[path].ino for path in prefetch]
    prefetch_table = pack_prefetch_table(prefetch_inos)
    blob_table = pack_blob_table(blob_entries)
    ext_table = b"".join(e.pack() for e in ext_entries)
    prefetch_offset = RAFSV5_SUPERBLOCK_SIZE + inode_table_size
    blob_table_offset = prefetch_offset + len(prefetch_table)
    ext_offset = blob_table_offset + len(blob_table)
    offset = ext_offset + len(ext_table)
    offsets: dict[str, int] = {}
    for node, record in zip(dump, records, strict=True):
        offsets[node.path] = offset
        offset += len(record)

    sb_flags = _COMPRESSION_FLAG[compressor] | _DIGEST_FLAG[digester]
    if explicit_uidgid:
        sb_flags |= RafsSuperFlags.EXPLICIT_UID_GID
    if any(node.entry.xattrs for node in order):
        sb_flags |= RafsSuperFlags.HAS_XATTR
    superblock = RafsV5SuperBlock(
        s_fs_version=version,
        s_block_size=chunk_size,
        s_flags=int(sb_flags),
        s_inodes_count=len({node.ino for node in order}) - (layout == "2022"),
        s_inode_table_offset=RAFSV5_SUPERBLOCK_SIZE,
        s_prefetch_table_offset=prefetch_offset,
        s_blob_table_offset=blob_table_offset,
        s_inode_table_entries=len(order),
        s_prefetch_table_entries=len(prefetch_inos),
        s_blob_table_size=len(blob_table),
        s_extended_blob_table_entries=len(ext_entries),
        s_extended_blob_table_offset=ext_offset,
    )
    bootstrap = b"".join([
        superblock.pack(),
        pack_inode_table([offsets[node.path] for node in order]),
        prefetch_table,
        blob_table,
        ext_table,
        *records,
    ])  # fmt: skip
    return V5Image(
        bootstrap=bootstrap,
        blob=bytes(blob),
        blob_id=blob_id,
        inos={node.path: node.ino for node in order},
        indexes={node.path: node.index for node in order},
        offsets=offsets,
    )


SMALL_TREE: Description = {
    "/d": Dir(xattrs={b"user.x": b"yz"}),
    "/d/f": File(data=b"hello world" * 50),
    "/d/h": Hardlink("/d/f"),
    "/d/sparse": File(data=bytes(4096) + b"tail", holes=True),
    "/e": Dir(),
    "/l": Symlink(target=b"d/f"),
    "/z": File(data=bytes(range(256)) * 20, xattrs={b"trusted.t": b"1"}),
    "/c": Special(kind=stat.S_IFCHR, rdev=(5, 1)),
}
"""Every v5 entry kind in a few bytes (one 4 KiB chunk of zeros in a sparse file): the v5
fuzz target's seed tree."""
