"""Turn a host directory into a tree, storing file data in a blob.

Entries are visited in byte order of their names (as nydus's directory builder does), so
the blob's chunk order is deterministic. Regular files with the same (st_dev, st_ino) become
one inode under several names; other file types are never shared. The root directory's
mtime is recorded as 0, as nydus does. Symlinks get mode 0777 (`SYMLINK_MODE`), as Linux
shows them, even from a filesystem that keeps other bits; xattrs RAFS v6 cannot store are
dropped with a warning (`storable_xattrs`).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from rafs.builder.blob import BlobWriter
from rafs.builder.tree import SYMLINK_MODE, Inode, storable_xattrs
from rafs.errors import Unsupported
from rafs.format.inode import encode_rdev


def _xattrs(path: bytes) -> dict[bytes, bytes]:
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:
        return {}
    xattrs = {}
    for name in names:
        raw = name.encode("utf-8", "surrogateescape")
        xattrs[raw] = os.getxattr(path, name, follow_symlinks=False)
    return storable_xattrs(xattrs, os.fsdecode(path))


def _inode(path: bytes, st: os.stat_result) -> Inode:
    if st.st_mtime_ns < 0:
        raise Unsupported(f"{os.fsdecode(path)}: mtime before 1970 cannot be stored in RAFS")
    inode = Inode(
        mode=SYMLINK_MODE if stat.S_ISLNK(st.st_mode) else st.st_mode,
        uid=st.st_uid,
        gid=st.st_gid,
        mtime=st.st_mtime_ns // 1_000_000_000,
        mtime_nsec=st.st_mtime_ns % 1_000_000_000,
        xattrs=_xattrs(path),
    )
    if stat.S_ISLNK(st.st_mode):
        inode.target = os.readlink(path)
        inode.size = len(inode.target)
    elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
        inode.rdev = encode_rdev(os.major(st.st_rdev), os.minor(st.st_rdev))
    elif stat.S_ISSOCK(st.st_mode):
        pass
    elif not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode) or stat.S_ISFIFO(st.st_mode)):
        raise Unsupported(f"{os.fsdecode(path)}: unsupported file type")
    return inode


def tree_from_dir(root: Path, blob: BlobWriter) -> Inode:
    """Read the tree under `root` (not following symlinks)."""
    seen: dict[tuple[int, int], Inode] = {}
    base = os.fsencode(root)
    top = _inode(base, os.lstat(base))
    top.mtime = top.mtime_nsec = 0
    pending = [(base, top)]
    while pending:
        path, directory = pending.pop()
        for name in sorted(os.listdir(path)):
            child_path = os.path.join(path, name)
            st = os.lstat(child_path)
            key = (st.st_dev, st.st_ino)
            if stat.S_ISREG(st.st_mode) and key in seen:
                directory.children[name] = seen[key]
                continue
            child = _inode(child_path, st)
            directory.children[name] = child
            if stat.S_ISREG(st.st_mode):
                seen[key] = child
                child.size = st.st_size
                with open(child_path, "rb") as data:
                    blob.add_file(child, data, st.st_size, os.fsdecode(child_path))
            elif stat.S_ISDIR(st.st_mode):
                pending.append((child_path, child))
    blob.flush()
    return top
