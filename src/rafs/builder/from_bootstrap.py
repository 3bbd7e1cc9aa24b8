"""Turn a RAFS v6 bootstrap back into a tree (for merge, re-layout and tests).

Regular files that share a nid become one `Inode` under several names (hard links); chunk
references keep their blob index, CI index and extents from the chunk table.
"""

from __future__ import annotations

from rafs.builder.tree import Chunk, Inode
from rafs.format.chunktable import ChunkFlags
from rafs.format.inode import encode_rdev
from rafs.reader.image import RafsImage, Stat


def _inode(image: RafsImage, st: Stat) -> Inode:
    inode = Inode(
        mode=st.mode,
        uid=st.uid,
        gid=st.gid,
        mtime=st.mtime,
        mtime_nsec=st.mtime_nsec,
        size=st.size if st.is_reg else 0,
        rdev=encode_rdev(*st.rdev),
        xattrs=image.xattrs(st.nid),
    )
    if st.is_symlink:
        inode.target = image.readlink(st.nid)
        inode.size = len(inode.target)
    elif st.is_reg:
        inode.chunks = [
            Chunk(
                digest=info.block_id,
                blob_index=info.blob_index,
                ci_index=info.index,
                compressed_offset=info.compressed_offset,
                compressed_size=info.compressed_size,
                uncompressed_offset=info.uncompressed_offset,
                uncompressed_size=info.uncompressed_size,
                compressed=bool(info.flags & ChunkFlags.COMPRESSED),
                crc32=info.crc32,
            )
            for info in image.file_chunks(st.nid)
        ]
    return inode


def tree_from_bootstrap(image: RafsImage) -> Inode:
    """The whole tree of a bootstrap (cycles are refused by `RafsImage.walk`)."""
    by_nid: dict[int, Inode] = {}
    root = _inode(image, image.stat(image.root_nid))
    by_nid[image.root_nid] = root
    for path, st in image.walk():
        if st.nid == image.root_nid:
            continue
        parent = root
        *parents, name = path.strip(b"/").split(b"/")
        for part in parents:
            parent = parent.children[part]
        shared = by_nid.get(st.nid) if st.is_reg else None
        inode = shared if shared is not None else _inode(image, st)
        by_nid[st.nid] = inode
        parent.children[name] = inode
    return root
