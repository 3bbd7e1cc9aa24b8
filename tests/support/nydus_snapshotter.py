"""The real nydus-snapshotter (`containerd-nydus-grpc` of the judges) for tests.

`start_nydus_snapshotter(dir, ...)` writes its config TOML and the nydusd config it hands
every daemon, starts it and waits until its gRPC socket and its system controller answer;
containerd reaches it as a proxy snapshotter (`tests.support.containerd`, `proxy_snapshotters`).
What it is set up to do:
- fs_driver `fusedev`: every image is a FUSE mount served by the judges' `nydusd`
  (dedicated mode: one nydusd per image; shared: one for all), mounted under `DIR/mnt`;
- the registry backend over plain HTTP (`scheme = "http"`: nydusd fetches the Nydus blobs
  from the loopback registry itself, lazily, as files are read), and no prefetch, so what a
  mount fetched is what was read (no `digest_validate`: nydusd 2.2 refuses it for RAFS v6,
  "Rafs v6 doesn't support integrity validation yet");
- no cgroup, no metrics listener, logs to its stdout (the log file here), and on stop it
  unmounts and stops its daemons (`cleanup_on_close`).

nydusd is started through a two-line wrapper that adds `--rlimit-nofile 0`: nydusd raises
RLIMIT_NOFILE to 1,000,000 by default, and on machines without CAP_SYS_RESOURCE whose hard
limit is lower (here 20,000) it exits at once with `Error: Os { code: 1, kind:
PermissionDenied }` (the failed prlimit64), which the snapshotter reports only as the
daemon's API socket "not found". 0 leaves the limit as it is.

Its root must be short: the snapshotter refuses roots longer than 70 bytes (it puts unix
sockets below it), so `short_tmpdir()` gives a folder under /tmp.

`daemons()` asks the system controller (`GET /api/v1/daemons`) which nydusd processes serve
which snapshots where; `nydusd_get(daemon, PATH)` asks a nydusd itself over its API socket.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.daemon import run_daemon
from tests.support.judges import containerd_nydus_grpc, nydus_image, nydusd

MAX_ROOT = 70
"""containerd-nydus-grpc's `MaxRootPathLen`: longer roots are refused at start."""


@dataclass(frozen=True)
class NydusSnapshotter:
    socket: Path
    """The snapshotter's gRPC socket (containerd's `proxy_plugins` address)."""
    system_socket: Path
    root: Path
    log: Path

    def daemons(self) -> list[dict[str, Any]]:
        """The system controller's list: per nydusd its id, pid, api_socket, mountpoint and
        `instances` (snapshot_id, mountpoint, image_id per mounted image)."""
        found: list[dict[str, Any]] = _get(self.system_socket, "/api/v1/daemons")
        return found


def nydusd_get(daemon: dict[str, Any], path: str) -> Any:
    """GET `path` (e.g. `/api/v1/daemon`) from a nydusd's own API socket."""
    return _get(Path(daemon["api_socket"]), path)


def _get(socket: Path, path: str) -> Any:
    with httpx.Client(transport=httpx.HTTPTransport(uds=str(socket)), timeout=10) as client:
        response = client.get(f"http://localhost{path}")
        response.raise_for_status()
        return response.json()


@contextmanager
def short_tmpdir() -> Iterator[Path]:
    """A fresh folder under /tmp, short enough for the snapshotter's root; removed at the
    end, kept (for its logs) when the block fails; something still mounted below it fails
    the test."""
    path = Path(tempfile.mkdtemp(prefix="rafs-", dir="/tmp"))
    yield path
    left = mounts_below(path)
    if left:
        pytest.fail(f"still mounted below {path}: {left}", pytrace=False)
    shutil.rmtree(path, ignore_errors=True)


def mounts_below(path: Path) -> list[str]:
    """Mount points at or below `path` now (from /proc/self/mounts)."""
    inside = str(path.resolve()).rstrip("/") + "/"
    points = [line.split()[1] for line in Path("/proc/self/mounts").read_text().splitlines()]
    return [point for point in points if (point + "/").startswith(inside)]


def _nydusd_config() -> dict[str, Any]:
    return {
        "device": {
            "backend": {
                "type": "registry",
                "config": {"scheme": "http", "timeout": 10, "connect_timeout": 5, "retry_limit": 2},
            },
            "cache": {"type": "blobcache"},
        },
        "mode": "direct",
        "digest_validate": False,
        "iostats_files": False,
        "enable_xattr": True,
        "fs_prefetch": {"enable": False},
    }


def _config(root: Path, base: Path, daemon_mode: str) -> str:
    return f"""version = 1
root = "{root}"
address = "{base / 'nydus.sock'}"
daemon_mode = "{daemon_mode}"
cleanup_on_close = true

[system]
enable = true
address = "{base / 'nydus-system.sock'}"

[daemon]
nydusd_config = "{base / 'nydusd-config.json'}"
nydusd_path = "{base / 'nydusd'}"
nydusimage_path = "{nydus_image()}"
fs_driver = "fusedev"
recover_policy = "none"
threads_number = 2

[cgroup]
enable = false

[log]
log_to_stdout = true
level = "debug"

[metrics]
address = ""

[snapshot]
enable_nydus_overlayfs = false
sync_remove = true

[remote]
skip_ssl_verify = true
"""


@contextmanager
def start_nydus_snapshotter(base: Path, daemon_mode: str = "dedicated",
                            timeout: float = 30.0) -> Iterator[NydusSnapshotter]:  # fmt: skip
    """Run containerd-nydus-grpc with its root at `base/root` until the block ends; then
    stop it (it unmounts its images and stops its nydusd) and check nothing is left."""
    binary = containerd_nydus_grpc()
    if shutil.which("fusermount3") is None or not os.path.exists("/dev/fuse"):
        pytest.fail("FUSE is missing (/dev/fuse, fusermount3): run `make apt`", pytrace=False)
    root = base / "root"
    if len(str(root)) > MAX_ROOT:
        pytest.fail(f"snapshotter root {root} is longer than {MAX_ROOT} bytes", pytrace=False)
    base.mkdir(parents=True, exist_ok=True)
    (base / "nydusd-config.json").write_text(json.dumps(_nydusd_config(), indent=1))
    wrapper = base / "nydusd"
    wrapper.write_text(f'#!/bin/sh\nexec {nydusd()} "$@" --rlimit-nofile 0\n')
    wrapper.chmod(0o755)
    config = base / "nydus-snapshotter.toml"
    config.write_text(_config(root, base, daemon_mode))
    log = base / "nydus-snapshotter.log"
    sn = NydusSnapshotter(base / "nydus.sock", base / "nydus-system.sock", root, log)
    pids: set[int] = set()
    try:
        with run_daemon([str(binary), "--config", str(config)], log,
                        lambda: _answers(sn), "containerd-nydus-grpc",
                        timeout=timeout, stop_timeout=30):  # fmt: skip
            try:
                yield sn
            finally:
                pids.update(_daemon_pids(sn))
    except BaseException:
        _leftovers(root, pids)
        raise
    left = _leftovers(root, pids)
    if left:
        pytest.fail(f"nydus-snapshotter left behind {left}", pytrace=False)


def _answers(sn: NydusSnapshotter) -> bool:
    if not (sn.socket.exists() and sn.system_socket.exists()):
        return False
    try:
        sn.daemons()
    except (httpx.TransportError, httpx.HTTPStatusError):
        return False
    return True


def _daemon_pids(sn: NydusSnapshotter) -> set[int]:
    try:
        return {int(d["pid"]) for d in sn.daemons() if d.get("pid")}
    except (httpx.TransportError, httpx.HTTPStatusError):
        return set()


def _leftovers(root: Path, pids: set[int]) -> str:
    """After the snapshotter stopped, its nydusd (known by pid) and FUSE mounts should be
    gone: remove any left (so the next test starts clean) and say what they were."""
    alive = [pid for pid in pids if _alive(pid)]
    mounted = mounts_below(root) if root.exists() else []
    for point in reversed(mounted):
        subprocess.run(["umount", "-l", point], check=False)
    for pid in alive:
        os.kill(pid, signal.SIGKILL)
    return f"nydusd {alive}, mounts {mounted}" if alive or mounted else ""


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state != "Z"
