"""Turn a RAFS v6 bootstrap back into a tree (for merge, re-layout and tests).

Regular files that share a nid become one `Inode` under several names (hard links); chunk
references keep their blob index, CI index and extents from the chunk table, and files
using the same chunk share one `Chunk`. A directory reachable twice (a cycle or a
hard-linked directory) is a `FormatError`.
"""

from __future__ import annotations

from rafs.builder.tree import Chunk, Inode
from rafs.errors import FormatError
from rafs.format.chunktable import ChunkFlags
from rafs.format.inode import encode_rdev
from rafs.reader.image import RafsImage, Stat


def _chunks(image: RafsImage, blob_map: dict[int, int]) -> dict[tuple[int, int], Chunk]:
    """Every chunk of the image as a `Chunk` (its blob index mapped through `blob_map`),
    keyed by (blob index in the image, block address)."""
    block = image.block_size
    return {
        (info.blob_index, info.uncompressed_offset // block): Chunk(
            info.block_id, blob_map.get(info.blob_index, info.blob_index), info.index,
            info.compressed_offset,
            info.compressed_size, info.uncompressed_offset, info.uncompressed_size,
            bool(info.flags & ChunkFlags.COMPRESSED), info.crc32,
        )
        for info in image.chunk_table()
    }  # fmt: skip


def _inode(image: RafsImage, st: Stat, chunks: dict[tuple[int, int], Chunk]) -> Inode:
    inode = Inode(st.mode, st.uid, st.gid, st.mtime, st.mtime_nsec)
    if st.xattr_size:
        inode.xattrs = image.xattrs(st.nid)
    if st.is_reg:
        inode.size = st.size
        if st.size:
            try:
                inode.chunks = [chunks[key] for key in image.chunk_keys(st.nid)]
            except KeyError:
                image.file_chunks(st.nid)  # raises the FormatError naming the bad chunk
                raise
    elif st.is_symlink:
        inode.target = image.readlink(st.nid)
        inode.size = len(inode.target)
    elif st.rdev != (0, 0):
        inode.rdev = encode_rdev(*st.rdev)
    return inode


def tree_from_bootstrap(image: RafsImage, blob_map: dict[int, int] | None = None) -> Inode:
    """The whole tree of a bootstrap; `blob_map` renumbers the blobs its chunks point at."""
    chunks = _chunks(image, blob_map or {})
    root = _inode(image, image.stat(image.root_nid), chunks)
    files: dict[int, Inode] = {}
    seen_dirs = {image.root_nid}
    pending = [(image.root_nid, root)]
    while pending:
        nid, directory = pending.pop()
        for entry in image.children(nid):
            st = image.stat(entry.nid)
            if st.is_dir:
                if entry.nid in seen_dirs:
                    raise FormatError(f"{image.source}: directory nid {entry.nid} is reachable "
                                      "twice (a cycle?)")  # fmt: skip
                seen_dirs.add(entry.nid)
                child = _inode(image, st, chunks)
                pending.append((entry.nid, child))
            elif st.is_reg:
                shared = files.get(entry.nid)  # a later name of a hard-linked file
                child = shared if shared is not None else _inode(image, st, chunks)
                files[entry.nid] = child
            else:
                child = _inode(image, st, chunks)
            directory.children[entry.name] = child
    return root
