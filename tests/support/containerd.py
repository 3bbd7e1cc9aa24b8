"""A real containerd for tests: temporary root, state, opt and sockets; stopped at the end.

`start_containerd(dir)` writes a minimal config (CRI off; the `opt` plugin path overridden,
or containerd creates /opt/containerd even with root/state elsewhere), starts `containerd`
and waits until its gRPC socket answers. Missing binary: the test fails with an install hint.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

INSTALL_HINT = "containerd is not installed: run `make apt` (or `apt-get install containerd`)"


@dataclass(frozen=True)
class Containerd:
    socket: Path
    root: Path
    log: Path


def _config(base: Path) -> str:
    return f"""version = 2
root = "{base / 'root'}"
state = "{base / 'state'}"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "{base / 'containerd.sock'}"
[ttrpc]
  address = "{base / 'containerd.sock.ttrpc'}"
[debug]
  address = "{base / 'debug.sock'}"
  level = "info"
[plugins]
  [plugins."io.containerd.internal.v1.opt"]
    path = "{base / 'opt'}"
"""


@contextmanager
def start_containerd(base: Path, timeout: float = 30.0) -> Iterator[Containerd]:
    binary = shutil.which("containerd")
    if binary is None:
        pytest.fail(INSTALL_HINT)
    if os.geteuid() != 0:
        pytest.fail("containerd needs root to start (run the tests as root)")
    base.mkdir(parents=True, exist_ok=True)
    config = base / "config.toml"
    config.write_text(_config(base))
    log = base / "containerd.log"
    socket = base / "containerd.sock"
    with log.open("wb") as out:
        proc = subprocess.Popen([binary, "--config", str(config)], stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
    try:
        deadline = time.monotonic() + timeout
        while not _answers(socket):
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"containerd did not start:\n{log.read_text()[-4000:]}")
            time.sleep(0.05)
        yield Containerd(socket, base / "root", log)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="session")
def containerd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Containerd]:
    """A real containerd for the whole session (temporary root, state, opt and socket).

    Import it into a test module to use it."""
    with start_containerd(tmp_path_factory.mktemp("ctd")) as daemon:
        yield daemon


def _answers(socket: Path) -> bool:
    if not socket.exists():
        return False
    import grpc

    channel = grpc.insecure_channel(f"unix://{socket}")
    try:
        grpc.channel_ready_future(channel).result(timeout=1)
    except grpc.FutureTimeoutError:
        return False
    finally:
        channel.close()
    return True
