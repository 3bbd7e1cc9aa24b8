"""A real containerd for tests: temporary root, state, opt and sockets; stopped at the end.

`start_containerd(dir)` writes a minimal config (CRI off; the `opt` plugin path overridden,
or containerd creates /opt/containerd even with root/state elsewhere), starts `containerd`
and waits until its gRPC socket answers. Missing binary: the test fails with an install hint.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.daemon import run_daemon

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
    with run_daemon([binary, "--config", str(config)], log, lambda: _answers(socket),
                    "containerd", timeout=timeout, stop_timeout=15):  # fmt: skip
        yield Containerd(socket, base / "root", log)


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
