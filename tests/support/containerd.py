"""A real containerd for tests: temporary root, state, opt and sockets; stopped at the end.

`start_containerd(dir)` writes a minimal config (CRI off; the `opt` plugin path overridden,
or containerd creates /opt/containerd even with root/state elsewhere), starts `containerd`
and waits until its gRPC socket answers. Missing binary: the test fails with an install hint.

`proxy_snapshotters={"nydus": socket}` declares remote snapshotters (`[proxy_plugins.NAME]
type = "snapshot"`), and `cri=CriPlugin(...)` turns the CRI plugin on: images pulled through
it (crictl) are unpacked by its snapshotter with the layer annotations and the
`containerd.io/snapshot/cri.*` labels passed to it (`disable_snapshot_annotations = false`;
containerd 1.6 defaults to true), the named registries reached over plain HTTP. Its CNI
folders are empty (no pods here), which it only logs.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator, Mapping
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


@dataclass(frozen=True)
class CriPlugin:
    snapshotter: str
    """The snapshotter CRI pulls unpack with (a proxy snapshotter's name)."""
    plain_http: tuple[str, ...] = ()
    """Registries (`HOST:PORT`) CRI reaches over plain HTTP."""


def _config(base: Path, proxy_snapshotters: Mapping[str, Path] | None = None,
            cri: CriPlugin | None = None) -> str:  # fmt: skip
    disabled = "[]" if cri else '["io.containerd.grpc.v1.cri"]'
    return f"""version = 2
root = "{base / 'root'}"
state = "{base / 'state'}"
disabled_plugins = {disabled}
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
""" + (_cri_config(base, cri) if cri else "") + "".join(
        f'[proxy_plugins.{name}]\n  type = "snapshot"\n  address = "{socket}"\n'
        for name, socket in (proxy_snapshotters or {}).items())


def _cri_config(base: Path, cri: CriPlugin) -> str:
    plugin = '[plugins."io.containerd.grpc.v1.cri"'
    mirrors = "".join(f'{plugin}.registry.mirrors."{host}"]\n  endpoint = ["http://{host}"]\n'
                      for host in cri.plain_http)  # fmt: skip
    return f"""{plugin}]
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
{plugin}.containerd]
  snapshotter = "{cri.snapshotter}"
  disable_snapshot_annotations = false
{plugin}.cni]
  bin_dir = "{base / 'cni-bin'}"
  conf_dir = "{base / 'cni-conf'}"
{mirrors}"""


@contextmanager
def start_containerd(base: Path, timeout: float = 30.0, *,
                     proxy_snapshotters: Mapping[str, Path] | None = None,
                     cri: CriPlugin | None = None) -> Iterator[Containerd]:  # fmt: skip
    binary = shutil.which("containerd")
    if binary is None:
        pytest.fail(INSTALL_HINT)
    if os.geteuid() != 0:
        pytest.fail("containerd needs root to start (run the tests as root)")
    base.mkdir(parents=True, exist_ok=True)
    config = base / "config.toml"
    config.write_text(_config(base, proxy_snapshotters, cri))
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
