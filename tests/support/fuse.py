"""FUSE mounts made by `rafs mount`, for tests.

`require_fuse()` fails the calling test, naming what to install, when FUSE cannot work:
these tests are never skipped silently. `rafs_mount()` mounts in the background and always
unmounts when the block ends (lazily, as a last resort), so no test leaves a stale mount.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from rafs.cli.mount import mount_type, state_path
from tests.conftest import RafsRunner
from tests.support.tree import compare, snapshot


def require_fuse() -> None:
    """Fail the current test, saying how to fix it, unless FUSE mounts can work."""
    missing = []
    if not Path("/dev/fuse").exists():
        missing.append("/dev/fuse is missing: modprobe fuse (CONFIG_FUSE_FS)")
    if shutil.which("fusermount3") is None:
        missing.append("fusermount3 not found: apt-get install fuse3")
    if importlib.util.find_spec("pyfuse3") is None:
        missing.append("pyfuse3 is not installed: apt-get install libfuse3-dev pkg-config, "
                       "then make venv")  # fmt: skip
    if missing:
        pytest.fail("FUSE tests cannot run: " + "; ".join(missing), pytrace=False)


def unmount(mountpoint: Path) -> None:
    """Unmount whatever rafs left at `mountpoint` (lazily if it is busy)."""
    if mount_type(mountpoint.resolve()) is None:
        return
    if subprocess.run(["umount", str(mountpoint)], capture_output=True).returncode != 0:
        subprocess.run(["umount", "--lazy", str(mountpoint)], capture_output=True)


@contextlib.contextmanager
def rafs_mount(rafs: RafsRunner, image: str | Path, mountpoint: Path, *options: str | Path
               ) -> Iterator[Path]:  # fmt: skip
    """`rafs mount IMAGE MOUNTPOINT OPTIONS...` (background); `rafs umount` on exit."""
    mountpoint.mkdir(parents=True, exist_ok=True)
    rafs("mount", image, mountpoint, *options, timeout=60)
    try:
        assert mount_type(mountpoint.resolve()) in ("fuse.rafs", "erofs")
        yield mountpoint
        rafs("umount", mountpoint, timeout=60)
    finally:
        unmount(mountpoint)


@contextlib.contextmanager
def foreground_mount(image: Path, mountpoint: Path, *options: str | Path
                     ) -> Iterator[subprocess.Popen[bytes]]:  # fmt: skip
    """`rafs mount --foreground` as a child process, yielded once the mount serves."""
    mountpoint.mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, "-m", "rafs", "mount", "--foreground", str(image), str(mountpoint),
            *(os.fspath(option) for option in options)]  # fmt: skip
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30
        while mount_type(mountpoint.resolve()) != "fuse.rafs":
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"rafs mount --foreground did not mount: "
                            f"{process.communicate(timeout=10)[1].decode()}")  # fmt: skip
            time.sleep(0.05)
        os.statvfs(mountpoint)
        yield process
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
        unmount(mountpoint)


def assert_same_tree(source: Path, mountpoint: Path) -> None:
    """The mounted tree equals `source` in every compared field (root mtime aside)."""
    problems = compare(snapshot(source), snapshot(mountpoint), ignore_root_mtime=True)
    assert problems == [], "\n".join(problems[:50])


def regular_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and not p.is_symlink())


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def assert_only_victim_unreadable(mountpoint: Path, source: Path, victim: str) -> None:
    """Reading `victim` gives EIO; every other regular file reads as in `source`."""
    with pytest.raises(OSError) as raised:
        (mountpoint / victim).read_bytes()
    assert raised.value.errno == errno.EIO
    for path in regular_files(source):
        relative = path.relative_to(source)
        if relative.as_posix() != victim:
            assert sha256_of(mountpoint / relative) == sha256_of(path), relative


def usr1_stats(mountpoint: Path, stats: Path) -> dict[str, int]:
    """SIGUSR1 the mount process (found through its pid file) and read what it writes."""
    pid = int(state_path(mountpoint.resolve(), ".pid").read_text())
    stats.unlink(missing_ok=True)
    os.kill(pid, signal.SIGUSR1)
    deadline = time.monotonic() + 10
    while not stats.exists():
        assert time.monotonic() < deadline, "no statistics after SIGUSR1"
        time.sleep(0.02)
    result: dict[str, int] = json.loads(stats.read_text())
    return result
