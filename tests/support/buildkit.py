"""The real BuildKit (`buildkitd` and `buildctl` of the judges, built with `-tags nydus`).

`start_buildkitd(dir, plain_http=(host,))` runs a rootful buildkitd with its state in
`dir/root`, listening on `dir/buildkitd.sock`: the OCI worker only (runc, the overlayfs
snapshotter, host network, no GC), the containerd worker off, CDI off, and the named
registries reached over plain HTTP (`[registry."HOST"] http = true`). The judges'
`nydus-image` is first on its PATH: `compression=nydus` exports run it (BuildKit's nydus
compression packs each layer with `nydus-image create` and merges the bootstraps with
`nydus-image merge`, in work folders under `dir/nydus-work`). It waits until `buildctl
debug workers` answers, and at the end stops it and checks it left nothing mounted.

`BuildKit.build(context, *outputs)` runs `buildctl build` with the Dockerfile frontend on
a context folder holding the Dockerfile, one `--output` per argument.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.daemon import run_daemon
from tests.support.judges import buildctl, buildkitd, nydus_image
from tests.support.nydus_snapshotter import mounts_below


@dataclass(frozen=True)
class BuildKit:
    address: str
    """`unix://PATH` of buildkitd's gRPC socket."""
    root: Path
    log: Path

    def build(self, context: Path, *outputs: str, timeout: float = 300) -> str:
        """`buildctl build` of `context/Dockerfile`; fails the test with its output if the
        build fails. Returns buildctl's progress output (plain)."""
        argv = [str(buildctl()), "--addr", self.address, "build", "--progress", "plain",
                "--frontend", "dockerfile.v0", "--local", f"context={context}",
                "--local", f"dockerfile={context}"]  # fmt: skip
        for output in outputs:
            argv += ["--output", output]
        result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
        if result.returncode != 0:
            pytest.fail(f"{' '.join(argv)} exited {result.returncode}:\n"
                        f"{result.stderr[-4000:]}", pytrace=False)  # fmt: skip
        return result.stderr


def _config(base: Path, plain_http: tuple[str, ...]) -> str:
    registries = "".join(f'[registry."{host}"]\n  http = true\n' for host in plain_http)
    return f"""root = "{base / 'root'}"
[log]
  level = "debug"
[grpc]
  address = ["unix://{base / 'buildkitd.sock'}"]
[otel]
  socketPath = "{base / 'otel-grpc.sock'}"
[cdi]
  disabled = true
[worker.oci]
  enabled = true
  snapshotter = "overlayfs"
  binary = "runc"
  gc = false
[worker.containerd]
  enabled = false
{registries}"""


@contextmanager
def start_buildkitd(base: Path, plain_http: tuple[str, ...] = (),
                    timeout: float = 60.0) -> Iterator[BuildKit]:  # fmt: skip
    binary = buildkitd()
    if os.geteuid() != 0:
        pytest.fail("buildkitd (rootful) needs root", pytrace=False)
    if shutil.which("runc") is None:
        pytest.fail("runc is not installed: run `make apt` (containerd pulls it in)",
                    pytrace=False)  # fmt: skip
    base.mkdir(parents=True, exist_ok=True)
    config = base / "buildkitd.toml"
    config.write_text(_config(base, plain_http))
    (base / "nydus-work").mkdir(exist_ok=True)
    env = {**os.environ, "PATH": f"{nydus_image().parent}:{os.environ.get('PATH', '')}",
           "NYDUS_WORKDIR": str(base / "nydus-work")}  # fmt: skip
    log = base / "buildkitd.log"
    kit = BuildKit(f"unix://{base / 'buildkitd.sock'}", base / "root", log)
    argv = [str(binary), "--config", str(config), "--oci-worker-net", "host"]
    with run_daemon(argv, log, lambda: _answers(kit), "buildkitd", timeout=timeout,
                    poll=0.2, stop_timeout=30, env=env):  # fmt: skip
        yield kit
    left = mounts_below(base)
    for point in reversed(left):
        subprocess.run(["umount", "-l", point], check=False)
    if left:
        pytest.fail(f"buildkitd left mounts behind: {left}", pytrace=False)


def _answers(kit: BuildKit) -> bool:
    if not Path(kit.address.removeprefix("unix://")).exists():
        return False
    result = subprocess.run([str(buildctl()), "--addr", kit.address, "debug", "workers"],
                            capture_output=True, text=True, timeout=30)  # fmt: skip
    return result.returncode == 0 and "linux/amd64" in result.stdout
