"""Source trees for tests: every kind of entry a layer can hold, and a real Debian root.

`make_all_entry_types()` builds, as root, a small tree holding every file type, mode bit,
owner, name shape, xattr namespace and size edge a builder must carry over.
`tar_directory()` packs a tree as GNU tar does for an OCI layer. `debootstrap_rootfs()` makes
(once, cached) a Debian bookworm minbase root filesystem: a realistic tree of a few thousand
entries.
"""

from __future__ import annotations

import os
import random
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

DEBIAN_MIRROR = "http://deb.debian.org/debian"

FILE_MTIME_NS = 1_700_000_000_123_456_789
"""mtime of every entry not given one on purpose (2023-11-14, with a nanosecond part)."""
DIR_MTIME_NS = 1_600_000_000_987_654_321
"""mtime of every directory (2020-09-13), set last so creating children does not move it."""

MANY_ENTRIES = 300
"""Files in `many/`: enough that the directory's entries span several 4 KiB blocks."""


def make_all_entry_types(root: Path, chunk_size: int = 1 << 20) -> None:
    """Fill `root` (created if missing) with one of everything. Needs root (mknod, chown).

    Layout:
      files/      empty, small text, chunk_size - 1 / chunk_size / chunk_size + 1 bytes of
                  seeded random data, and a file of 4 identical chunks
      xattrs/     a file with user.*, trusted.* and security.* xattrs (one empty, one of
                  1000 bytes); a directory and a symlink with one each
      hardlinks/  one inode under 3 names in 3 directories
      symlinks/   relative, absolute, dangling, and a target over 100 bytes
      special/    a fifo, character devices 1:3 and 240:70000, block device 7:200
      names/      ~200-byte names, a path over 300 bytes, non-ASCII UTF-8 names
      modes/      setuid, setgid and sticky bits
      owners/     uid/gid 1000/1000, 65534/65534, 100000/100001, a symlink owned by 1000
      times/      the epoch, 1980, 2100 and a nanosecond-only mtime
      deep/       a chain of 40 nested directories
      empty-dir/  nothing
      many/       MANY_ENTRIES files
    """
    if os.geteuid() != 0:
        raise PermissionError(f"building {root} needs root (mknod, chown)")
    root.mkdir(parents=True, exist_ok=True)
    _regular_files(root / "files", chunk_size)
    _xattrs(root / "xattrs")
    _hardlinks(root / "hardlinks")
    _symlinks(root / "symlinks")
    _special_files(root / "special")
    _names(root / "names")
    _modes(root / "modes")
    _owners(root / "owners")
    explicit_mtimes = _times(root / "times")
    _deep(root / "deep", depth=40)
    (root / "empty-dir").mkdir()
    _many(root / "many", MANY_ENTRIES)
    _set_mtimes(root, explicit_mtimes)


def tar_directory(root: Path, out: Path) -> None:
    """Write the contents of `root` as a pax tar (xattrs, numeric owners) to `out`, atomically."""
    partial = out.with_name(out.name + ".tmp")
    subprocess.run(
        [
            "tar",
            "--xattrs",
            "--xattrs-include=*",
            "--numeric-owner",
            "--format=pax",
            "-C",
            str(root),
            "-cf",
            str(partial),
            ".",
        ],
        check=True,
    )
    partial.rename(out)


def debootstrap_rootfs(cache_dir: Path) -> Path:
    """Return a Debian bookworm minbase root filesystem under `cache_dir`, building it once.

    It is built into `<dir>.tmp` and renamed when complete, so an interrupted build is
    never mistaken for a finished one. Fails the test with an install hint when debootstrap
    is missing or the build fails.
    """
    target = cache_dir / "debian-bookworm-minbase"
    if target.is_dir():
        return target
    if shutil.which("debootstrap") is None:
        pytest.fail("debootstrap not found: apt-get install debootstrap", pytrace=False)
    if os.geteuid() != 0:
        pytest.fail("debootstrap needs root", pytrace=False)
    building = target.with_name(target.name + ".tmp")
    _remove_partial(building)
    cache_dir.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(
        ["debootstrap", "--variant=minbase", "bookworm", str(building), DEBIAN_MIRROR],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    if result.returncode != 0:
        _remove_partial(building)
        tail = "\n".join(result.stdout.splitlines()[-20:])
        pytest.fail(f"debootstrap failed ({result.returncode}):\n{tail}", pytrace=False)
    building.rename(target)
    return target


def _remove_partial(path: Path) -> None:
    """Remove a half-built root filesystem, first unmounting anything debootstrap left in it.

    A killed debootstrap can leave /proc, /sys or bind-mounted device nodes mounted inside
    its target; deleting through those would reach the host's files.
    """
    if not os.path.lexists(path):
        return
    inside = str(path.resolve()) + "/"
    mounts = [line.split()[1] for line in Path("/proc/self/mounts").read_text().splitlines()]
    for mountpoint in sorted((m for m in mounts if m.startswith(inside)), reverse=True):
        subprocess.run(["umount", "--lazy", mountpoint], check=True)
    shutil.rmtree(path)


def _write(path: Path, data: bytes, mode: int = 0o644) -> Path:
    """Create a regular file with exactly this content and mode (umask does not apply)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    os.chmod(path, mode)
    return path


def _random_bytes(seed: str, size: int) -> bytes:
    """Reproducible pseudo-random content; a different seed gives different chunks."""
    return random.Random(seed).randbytes(size)


def _regular_files(base: Path, chunk_size: int) -> None:
    _write(base / "empty", b"")
    _write(base / "small.txt", b"hello, rafs\n")
    for name, size in (
        ("chunk-minus-1", chunk_size - 1),
        ("chunk-exact", chunk_size),
        ("chunk-plus-1", chunk_size + 1),
    ):
        _write(base / name, _random_bytes(name, size))
    _write(base / "repeated-chunks", _random_bytes("repeated", chunk_size) * 4)


def _xattrs(base: Path) -> None:
    path = _write(base / "file", b"a file with xattrs\n")
    for name, value in (
        ("user.rafs.text", b"hello"),
        ("user.rafs.binary", bytes(range(256))),
        ("user.rafs.empty", b""),
        ("user.rafs.large", _random_bytes("xattr", 1000)),
        ("trusted.rafs.test", b"trusted value"),
        ("security.rafs.test", b"security value"),
    ):
        os.setxattr(path, name, value)
    directory = base / "dir"
    directory.mkdir()
    os.setxattr(directory, "user.rafs.dir", b"on a directory")
    # user.* is not allowed on symlinks, trusted.* is (for root).
    os.symlink("file", base / "link")
    os.setxattr(base / "link", "trusted.rafs.link", b"on a symlink", follow_symlinks=False)


def _hardlinks(base: Path) -> None:
    first = _write(base / "one" / "linked", b"one inode, three names\n", 0o640)
    for other in (base / "two" / "linked-again", base / "linked-at-top"):
        other.parent.mkdir(parents=True, exist_ok=True)
        os.link(first, other)


def _symlinks(base: Path) -> None:
    base.mkdir(parents=True)
    os.symlink("../files/small.txt", base / "relative")
    os.symlink("/etc/hostname", base / "absolute")
    os.symlink("does/not/exist", base / "dangling")
    os.symlink("/" + "/".join(["a-long-symlink-component"] * 6), base / "long-target")


def _special_files(base: Path) -> None:
    base.mkdir(parents=True)
    os.mkfifo(base / "fifo")
    for name, kind, device, mode in (
        ("null", stat.S_IFCHR, os.makedev(1, 3), 0o666),
        ("big-chr", stat.S_IFCHR, os.makedev(240, 70000), 0o600),
        ("loop200", stat.S_IFBLK, os.makedev(7, 200), 0o660),
    ):
        os.mknod(base / name, kind | mode, device)
        os.chmod(base / name, mode)
    os.chmod(base / "fifo", 0o620)


def _names(base: Path) -> None:
    long_dir = base / ("d" * 200)
    _write(long_dir / ("f" * 120), b"path over 300 bytes\n")
    _write(base / ("n" * 200), b"200-byte name\n")
    _write(base / "dé" / "ünïcødé-文件.txt", b"non-ASCII names\n")


def _modes(base: Path) -> None:
    for name, mode in (("setuid", 0o4755), ("setgid", 0o2755), ("private", 0o600)):
        _write(base / name, b"#!/bin/sh\n", mode)
    for name, mode in (("sticky-dir", 0o1777), ("setgid-dir", 0o2775)):
        (base / name).mkdir()
        os.chmod(base / name, mode)


def _owners(base: Path) -> None:
    for name, uid, gid in (
        ("user-1000", 1000, 1000),
        ("nobody", 65534, 65534),
        ("big-ids", 100000, 100001),
    ):
        os.chown(_write(base / name, f"owned by {uid}:{gid}\n".encode()), uid, gid)
    (base / "dir-1000").mkdir()
    os.chown(base / "dir-1000", 1000, 1000)
    os.symlink("user-1000", base / "link-1000")
    os.lchown(base / "link-1000", 1000, 1000)


def _times(base: Path) -> dict[Path, int]:
    """Files with unusual mtimes; returns them so the final pass keeps them."""
    mtimes = {
        base / "epoch": 0,
        base / "1980": 315_532_800_000_000_001,
        base / "2100": 4_102_444_800_999_999_999,
        base / "nanoseconds": 1_700_000_000_000_000_007,
    }
    for path in mtimes:
        _write(path, f"{path.name}\n".encode())
    os.symlink("epoch", base / "old-link")
    mtimes[base / "old-link"] = 1_000_000_000_500_000_000
    return mtimes


def _deep(base: Path, depth: int) -> None:
    path = base.joinpath(*(f"d{level:02d}" for level in range(depth)))
    _write(path / "bottom.txt", b"at the bottom\n")


def _many(base: Path, count: int) -> None:
    for index in range(count):
        _write(base / f"entry-with-a-fairly-long-name-{index:04d}", f"{index}\n".encode())


def _set_mtimes(root: Path, explicit: dict[Path, int]) -> None:
    """Give every entry its mtime, children before parents, symlinks themselves."""
    for dirpath, dirnames, filenames in os.walk(root, topdown=False):
        base = Path(dirpath)
        for name in filenames + [d for d in dirnames if (base / d).is_symlink()]:
            path = base / name
            mtime = explicit.get(path, FILE_MTIME_NS)
            os.utime(path, ns=(mtime, mtime), follow_symlinks=False)
        os.utime(base, ns=(DIR_MTIME_NS, DIR_MTIME_NS))
