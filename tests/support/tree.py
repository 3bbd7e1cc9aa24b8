"""Snapshot a directory tree and compare two snapshots field by field.

A snapshot records, for every entry under a root, everything a filesystem image must carry
over: file type and full mode (setuid/setgid/sticky included), owner, size, mtime to the
nanosecond, content digest, symlink target, xattrs, device number, link count and which
names share one inode. Nothing is followed: symlinks are read with `lstat`/`readlink` and
xattrs with `follow_symlinks=False`.

Keys are POSIX paths relative to the root, without a leading slash (`"etc/passwd"`); the
root itself is the empty string `""`.

Deliberately not recorded, because they legitimately differ between filesystems holding the
same tree: directory sizes, directory link counts, block counts, inode numbers, atime and
ctime.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import stat
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

ROOT = ""
"""The snapshot key of the root directory itself."""

_KINDS = {
    stat.S_IFREG: "reg",
    stat.S_IFDIR: "dir",
    stat.S_IFLNK: "lnk",
    stat.S_IFCHR: "chr",
    stat.S_IFBLK: "blk",
    stat.S_IFIFO: "fifo",
    stat.S_IFSOCK: "sock",
}


@dataclass(frozen=True)
class Entry:
    """What one path holds. Fields that do not apply to the entry's kind are None."""

    kind: str
    """One of reg, dir, lnk, chr, blk, fifo, sock."""
    mode: int
    """Full st_mode: file type bits, setuid/setgid/sticky and permissions."""
    uid: int
    gid: int
    mtime_ns: int
    xattrs: dict[str, bytes]
    size: int | None
    """Regular files and symlinks only (directory sizes are filesystem-specific)."""
    sha256: str | None
    """Hex digest of a regular file's content."""
    target: bytes | None
    """A symlink's target, as stored."""
    rdev: int | None
    """Character and block devices only."""
    nlink: int | None
    """Every kind but directories."""
    hardlinks: tuple[str, ...] | None
    """For a regular file with nlink > 1: the sorted keys of all names of its inode."""


def snapshot(root: Path) -> dict[str, Entry]:
    """Walk `root` without following symlinks and return its entries keyed by relative path."""
    entries: dict[str, Entry] = {}
    inodes: dict[int, list[str]] = defaultdict(list)
    for key, path in _walk(root):
        st = os.lstat(path)
        entries[key] = _entry(path, st)
        if stat.S_ISREG(st.st_mode) and st.st_nlink > 1:
            inodes[st.st_ino].append(key)
    for keys in inodes.values():
        group = tuple(sorted(keys))
        for key in group:
            entries[key] = dataclasses.replace(entries[key], hardlinks=group)
    return entries


def compare(
    expected: dict[str, Entry],
    actual: dict[str, Entry],
    *,
    ignore: Iterable[str] = (),
    ignore_root_mtime: bool = False,
) -> list[str]:
    """List the differences between two snapshots as readable lines; empty means equal.

    `ignore` names Entry fields left out everywhere (e.g. {"xattrs"}); `ignore_root_mtime`
    leaves out only the root directory's mtime, which a builder may not know.
    """
    skipped = set(ignore)
    unknown = skipped - {f.name for f in dataclasses.fields(Entry)}
    if unknown:
        raise ValueError(f"unknown Entry fields to ignore: {sorted(unknown)}")
    problems = [f"missing: {key!r}" for key in sorted(expected.keys() - actual.keys())]
    problems += [f"extra: {key!r}" for key in sorted(actual.keys() - expected.keys())]
    for key in sorted(expected.keys() & actual.keys()):
        for field in dataclasses.fields(Entry):
            if field.name in skipped or (
                key == ROOT and ignore_root_mtime and field.name == "mtime_ns"
            ):
                continue
            want = getattr(expected[key], field.name)
            got = getattr(actual[key], field.name)
            if want != got:
                problems.append(
                    f"{key!r}: {field.name} expected {_show(field.name, want)},"
                    f" got {_show(field.name, got)}"
                )
    return problems


def _walk(root: Path) -> Iterable[tuple[str, Path]]:
    """Yield (key, path) for the root and everything below it, parents before children."""
    yield ROOT, root
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        base = Path(dirpath)
        for name in sorted(dirnames + filenames):
            path = base / name
            yield path.relative_to(root).as_posix(), path


def _entry(path: Path, st: os.stat_result) -> Entry:
    """Build the Entry of one path from its lstat result (hardlinks are filled in later)."""
    fmt = stat.S_IFMT(st.st_mode)
    kind = _KINDS[fmt]
    return Entry(
        kind=kind,
        mode=st.st_mode,
        uid=st.st_uid,
        gid=st.st_gid,
        mtime_ns=st.st_mtime_ns,
        xattrs={
            name: os.getxattr(path, name, follow_symlinks=False)
            for name in sorted(os.listxattr(path, follow_symlinks=False))
        },
        size=st.st_size if kind in ("reg", "lnk") else None,
        sha256=_sha256(path) if kind == "reg" else None,
        target=os.readlink(os.fsencode(path)) if kind == "lnk" else None,
        rdev=st.st_rdev if kind in ("chr", "blk") else None,
        nlink=st.st_nlink if kind != "dir" else None,
        hardlinks=None,
    )


def _sha256(path: Path) -> str:
    """Hex sha256 of a file's content, read in bounded pieces."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def _show(field: str, value: object) -> str:
    """Format a field value for a difference line: modes in octal, devices as major:minor."""
    if value is None:
        return "None"
    if field == "mode" and isinstance(value, int):
        return oct(value)
    if field == "rdev" and isinstance(value, int):
        return f"{os.major(value)}:{os.minor(value)}"
    return repr(value)
