"""containerd runs what rafs converts: the real nydus-snapshotter and nydusd start a container
from an image `rafs convert` pushed to a registry, lazily.

The Debian root filesystem is an OCI image (umoci), pushed by skopeo to Debian's
docker-registry on loopback and converted registry to registry by `rafs convert`. Then
containerd 1.6, with the judges' containerd-nydus-grpc as its proxy snapshotter `nydus`,
pulls it through its CRI plugin (crictl: only CRI pulls label each layer snapshot with the
image reference and layer digest the snapshotter needs), and `ctr run --snapshotter nydus`
runs `cat` in it. The snapshotter unpacks only the bootstrap layer; nydusd (fusedev,
dedicated) mounts it and fetches chunks from the registry over HTTP as they are read. The
container's overlay root must sit on that FUSE mount, nydusd must have fetched only a
small part of the blob to run `cat`, and the whole tree nydusd serves must equal the
source (contents, modes, owners, mtimes, xattrs, hardlinks).
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from rafs.oci import Manifest
from rafs.oci import constants as mt
from rafs.registry import RegistryClient
from tests.conftest import RafsRunner
from tests.support import oci
from tests.support.containerd import Containerd, CriPlugin, start_containerd
from tests.support.fuse import assert_same_tree
from tests.support.judges import crictl
from tests.support.nydus_snapshotter import (
    NydusSnapshotter,
    nydusd_get,
    short_tmpdir,
    start_nydus_snapshotter,
)
from tests.support.registry import Registry, registry, skopeo  # noqa: F401  (fixture)

NAMESPACE = "k8s.io"
"""Where CRI keeps the images it pulls."""


def _run(argv: list[str], timeout: float = 120) -> str:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        pytest.fail(f"{' '.join(argv)} exited {result.returncode}:\n{result.stderr.strip()}\n"
                    f"{result.stdout.strip()[-2000:]}", pytrace=False)  # fmt: skip
    return result.stdout


def _ctr(ctd: Containerd, *args: str) -> str:
    return _run(["ctr", "--address", str(ctd.socket), "--namespace", NAMESPACE, *args])


def _crictl(ctd: Containerd, config: Path, *args: str) -> str:
    endpoint = f"unix://{ctd.socket}"
    return _run([str(crictl()), "--config", str(config), "--runtime-endpoint", endpoint,
                 "--image-endpoint", endpoint, "--timeout", "60s", *args])  # fmt: skip


def _root_mount(mountinfo: str) -> dict[str, str]:
    """The container's `/` from its /proc/self/mountinfo: fstype and super options."""
    for line in mountinfo.splitlines():
        fields = line.split()
        if len(fields) > 4 and fields[4] == "/":
            after = fields[fields.index("-") + 1:]
            return {"fstype": after[0], "source": after[1], "options": after[2]}
    raise AssertionError(f"no / in the container's mountinfo:\n{mountinfo}")


def _fuse_mounts() -> dict[str, str]:
    """Mount point -> fstype of every FUSE mount now."""
    mounts = {}
    for line in Path("/proc/self/mounts").read_text().splitlines():
        _, point, fstype, *_ = line.split()
        if fstype.startswith("fuse"):
            mounts[point] = fstype
    return mounts


def _wait_instances(sn: NydusSnapshotter, timeout: float = 10) -> list[dict[str, object]]:
    deadline = time.monotonic() + timeout
    while True:
        daemons = [d for d in sn.daemons() if d.get("instances")]
        if daemons or time.monotonic() > deadline:
            return daemons
        time.sleep(0.1)


@pytest.mark.slow
def test_containerd_runs_what_rafs_converts_lazily(
    rafs: RafsRunner, registry: Registry, rootfs: Path, rootfs_tar: Path,  # noqa: F811
    tmp_path: Path,
) -> None:  # fmt: skip
    oci.require_umoci()
    layout = tmp_path / "oci"
    oci.new_image(layout, "bookworm")
    oci.add_raw_layer(layout, "bookworm", rootfs_tar)
    source = f"{registry.host}/src/debian:bookworm"
    image = f"{registry.host}/nydus/debian:bookworm"
    skopeo("copy", "--dest-tls-verify=false", f"oci:{layout}:bookworm", f"docker://{source}",
           tmpdir=tmp_path)  # fmt: skip
    rafs("convert", f"docker://{source}", f"docker://{image}", "--plain-http",
         "--store", tmp_path / "store", timeout=300)  # fmt: skip
    with RegistryClient(registry.host, plain_http=True) as client:
        manifest = Manifest.from_bytes(client.repository("nydus/debian").get_manifest(
            "bookworm")[1])  # fmt: skip
    blobs = [layer for layer in manifest.layers if layer.media_type == mt.NYDUS_BLOB]
    assert len(blobs) == 1 and len(manifest.layers) == 2
    crictl_config = tmp_path / "crictl.yaml"
    crictl_config.write_text("")

    with (short_tmpdir() as base,
          start_nydus_snapshotter(base / "sn") as sn,
          start_containerd(base / "ctd", proxy_snapshotters={"nydus": sn.socket},
                           cri=CriPlugin("nydus", (registry.host,))) as ctd):  # fmt: skip
        _crictl(ctd, crictl_config, "pull", image)
        # The Nydus blob was not pulled: only the bootstrap layer is in containerd's store.
        content = _ctr(ctd, "content", "ls", "-q").split()
        assert str(blobs[0].digest) not in content
        assert str(manifest.layers[-1].digest) in content

        out = _ctr(ctd, "run", "--snapshotter", "nydus", image, "judge-debian",
                   "cat", "/etc/os-release", "/proc/self/mountinfo")  # fmt: skip
        try:
            assert 'PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"' in out, out
            assert out.startswith((rootfs / "usr/lib/os-release").read_text()), out

            daemons = _wait_instances(sn)
            assert len(daemons) == 1, json.dumps(sn.daemons(), indent=1)
            daemon = daemons[0]
            (instance,) = daemon["instances"].values()
            mountpoint = instance["mountpoint"]
            assert instance["image_id"] == image
            # nydusd serves the image as a FUSE mount, the container's overlay root sits on it
            assert mountpoint in _fuse_mounts(), (mountpoint, _fuse_mounts())
            root = _root_mount(out)
            assert root["fstype"] == "overlay", root
            assert f"lowerdir={mountpoint}" in root["options"], (root, mountpoint)
            assert nydusd_get(daemon, "/api/v1/daemon")["state"] == "RUNNING"

            # Lazily: nydusd fetched only a small part of the blob to start `cat` (its
            # backend's metrics are kept under the blob id, the layer digest's hex).
            metrics = nydusd_get(daemon, f"/api/v1/metrics/backend?id={blobs[0].digest.hex}")
            print(f"\nnydusd fetched {metrics['read_amount_total']} of {blobs[0].size} blob bytes "
                  f"in {metrics['read_count']} requests to run `cat`")
            fetched = metrics["read_amount_total"]
            assert 0 < fetched < blobs[0].size / 10, (fetched, blobs[0].size)

            # And the whole tree as nydusd serves it (every chunk digest checked) is Debian's.
            assert_same_tree(rootfs, Path(mountpoint))
        finally:
            _ctr(ctd, "containers", "rm", "judge-debian")
