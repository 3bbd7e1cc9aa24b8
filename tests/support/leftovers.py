"""What a test session leaves behind when a test dies half-way, found and removed at its end.

Every mount, loop device and daemon a test makes is undone by the test's own context
managers; a test killed at the wrong moment (a timeout, a crash in teardown) can still leave
one, and the next session then trips over it. `clean_leftovers(root, marker)` undoes, in
this order:
- mounts whose mount point is under `root` (the session's temp root), last mounted first:
  FUSE with `fusermount3 -u -z`, anything else (EROFS, overlay) with `umount -l`;
- processes whose environment holds `SESSION_VARIABLE=marker`: every child the tests start
  inherits it, daemonized or not (SIGTERM, then SIGKILL after a grace period);
- loop devices whose backing file is under `root` (`losetup -d`).
It returns one line per thing it had to clean.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

SESSION_VARIABLE = "RAFS_TEST_SESSION"
"""Set in the test process's environment; its value names the session."""


@dataclass(frozen=True)
class Mount:
    mountpoint: Path
    fstype: str


def _unescape(field: str) -> str:
    r"""mountinfo escapes space, tab, newline and backslash as \NNN (octal)."""
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and field[i + 1 : i + 4].isdigit():
            out.append(chr(int(field[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def mounts_under(root: Path) -> list[Mount]:
    """Mounts whose mount point is `root` or below it, last mounted first (mountinfo lists
    them in mount order: a mount on top of another, or on a folder in it, comes later)."""
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        mountpoint = Path(_unescape(fields[4]))
        fstype = fields[fields.index("-") + 1]
        if mountpoint.is_relative_to(root):
            found.append(Mount(mountpoint, fstype))
    return found[::-1]


def loop_devices_under(root: Path) -> list[tuple[str, Path]]:
    """(device, backing file) of every loop device backed by a file under `root`."""
    found = []
    for backing in sorted(Path("/sys/block").glob("loop*/loop/backing_file")):
        try:
            name = backing.read_text().rstrip("\n").removesuffix(" (deleted)")
        except OSError:  # detached meanwhile
            continue
        if Path(name).is_relative_to(root):
            found.append((f"/dev/{backing.parts[3]}", Path(name)))
    return found


def session_processes(marker: str) -> list[tuple[int, str]]:
    """(pid, command line) of every other process whose environment has the session marker."""
    wanted = f"{SESSION_VARIABLE}={marker}".encode()
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            if wanted not in (proc / "environ").read_bytes().split(b"\0"):
                continue
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:  # exited meanwhile, or not ours to read
            continue
        found.append((int(proc.name), b" ".join(argv).decode(errors="replace").strip()))
    return found


def clean_leftovers(root: Path, marker: str, grace: float = 5.0) -> list[str]:
    """Unmount, stop and detach what is left under `root` or marked `marker`; say what."""
    cleaned = []
    for mount in mounts_under(root):
        if mount.fstype.startswith("fuse"):
            command = ["fusermount3", "-u", "-z", str(mount.mountpoint)]
        else:
            command = ["umount", "-l", str(mount.mountpoint)]
        result = subprocess.run(command, capture_output=True, text=True)
        outcome = "unmounted" if result.returncode == 0 else f"failed: {result.stderr.strip()}"
        cleaned.append(f"{mount.fstype} mount at {mount.mountpoint}: {outcome}")
    cleaned += _stop(session_processes(marker), grace)
    for device, backing in loop_devices_under(root):
        result = subprocess.run(["losetup", "-d", device], capture_output=True, text=True)
        outcome = "detached" if result.returncode == 0 else f"failed: {result.stderr.strip()}"
        cleaned.append(f"loop device {device} on {backing}: {outcome}")
    return cleaned


def _stop(processes: list[tuple[int, str]], grace: float) -> list[str]:
    """SIGTERM each process, SIGKILL those alive after `grace` seconds."""
    for pid, _ in processes:
        _signal(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    lines = []
    for pid, command in processes:
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        how = "terminated"
        if _alive(pid):
            _signal(pid, signal.SIGKILL)
            how = "killed"
        lines.append(f"process {pid} ({command}): {how}")
    return lines


def _signal(pid: int, signum: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signum)


def _alive(pid: int) -> bool:
    """Running (a zombie, waiting for its parent to reap it, has stopped)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"
