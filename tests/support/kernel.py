"""The Linux kernel's EROFS driver and erofs-utils as the format oracle.

`require_kernel_erofs()` fails the calling test with an install hint when something is
missing: these tests must never be skipped silently. `mount_erofs()` mounts an image
read-only through a loop device, with extra blob devices attached as `device=` options, and
always cleans up. `fsck_erofs()` runs erofs-utils' checker (whose `mkfs.erofs` is the peer
builder the baseline tests use).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest


class MountError(RuntimeError):
    """`mount -t erofs` refused an image; the message carries mount's and the kernel's words."""


def require_kernel_erofs() -> None:
    """Fail the current test, saying how to fix it, unless kernel EROFS mounts can work."""
    missing: list[str] = []
    if os.geteuid() != 0:
        missing.append("must run as root (mount and losetup need it)")
    elif not _kernel_has_erofs():
        missing.append(
            "the kernel has no EROFS driver: 'erofs' is not in /proc/filesystems and"
            " 'modprobe erofs' failed (needs CONFIG_EROFS_FS)"
        )
    for tool, package in (
        ("losetup", "mount"),
        ("fsck.erofs", "erofs-utils"),
        ("mkfs.erofs", "erofs-utils"),
    ):
        if shutil.which(tool) is None:
            missing.append(f"{tool} not found: apt-get install {package}")
    if missing:
        pytest.fail("kernel EROFS tests cannot run: " + "; ".join(missing), pytrace=False)


@contextlib.contextmanager
def mount_erofs(image: Path, mountpoint: Path, devices: Sequence[Path] = ()) -> Iterator[Path]:
    """Mount `image` read-only at `mountpoint`, each of `devices` as a blob device, in order.

    The image is mounted from a private copy: util-linux reuses the loop device of an image
    file that is already mounted, and the kernel then reuses the old superblock and silently
    ignores new `device=` options. Yields the mountpoint; on exit unmounts and detaches every
    loop device this call set up. Raises MountError if the kernel refuses the image.

    Pass every blob device: recent kernels (6.18 here) mount an image with extra devices but
    no `device=` in "flat device" mode, reading chunk data from the image itself, which gives
    wrong content or EIO instead of a refused mount. A wrong non-zero count is refused.
    """
    mountpoint.mkdir(parents=True, exist_ok=True)
    with (
        tempfile.TemporaryDirectory(prefix="rafs-mount-") as scratch,
        contextlib.ExitStack() as cleanup,
    ):
        copy = Path(scratch) / image.name
        shutil.copyfile(image, copy)
        options = ["loop", "ro"]
        for device in devices:
            loop = _run(["losetup", "--find", "--show", "--read-only", str(device)]).strip()
            cleanup.callback(_run, ["losetup", "--detach", loop])
            options.append(f"device={loop}")
        command = ["mount", "-t", "erofs", "-o", ",".join(options), str(copy), str(mountpoint)]
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            raise MountError(
                f"{' '.join(command)} failed ({result.returncode}): {result.stderr.strip()};"
                f" kernel says: {_kernel_erofs_messages()}"
            )
        # The loop device under the image was made by mount with autoclear: umount frees it.
        cleanup.callback(_unmount, mountpoint)
        yield mountpoint


def fsck_erofs(image: Path, devices: Sequence[Path] = ()) -> tuple[int, str]:
    """Run `fsck.erofs [--device=FILE...] IMAGE`; return its exit code and combined output."""
    command = ["fsck.erofs", *(f"--device={device}" for device in devices), str(image)]
    result = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return result.returncode, result.stdout


def _kernel_has_erofs() -> bool:
    """True if the EROFS driver is built in or loads as a module."""
    if "erofs" in Path("/proc/filesystems").read_text().split():
        return True
    return subprocess.run(["modprobe", "erofs"], capture_output=True).returncode == 0


def _unmount(mountpoint: Path) -> None:
    """Unmount, falling back to a lazy unmount if something still holds the filesystem."""
    if subprocess.run(["umount", str(mountpoint)], capture_output=True).returncode != 0:
        _run(["umount", "--lazy", str(mountpoint)])


def _run(command: list[str]) -> str:
    """Run a command that must succeed; return its stdout."""
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(
            f"{' '.join(command)} failed ({result.returncode}): {result.stderr.strip()}"
        )
    return result.stdout


def _kernel_erofs_messages() -> str:
    """The last few kernel log lines about EROFS, to explain a refused mount."""
    log = subprocess.run(["dmesg"], capture_output=True, text=True).stdout
    lines = [line for line in log.splitlines() if "erofs" in line.lower()]
    return " | ".join(lines[-5:]) or "(nothing in dmesg)"
