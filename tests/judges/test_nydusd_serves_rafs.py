"""nydusd serves what rafs writes: images built by `rafs create` and merged by `rafs merge`
(or `tests.support.nydus_image`, pushed to a registry), mounted by the real `nydusd` (2.2,
FUSE), hold the source tree.

The Debian root filesystem is split into two layers (`/usr/share` in the second), so the
merged bootstrap names two blobs; the every-entry-type tree is one layer. With the localfs
backend nydusd reads the layer files from a folder where they are named by blob id (the
layer digest hex); with the registry backend it fetches their chunks from Debian's
docker-registry on loopback, with `fs_prefetch` reading the prefetch table ahead.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.conftest import RafsRunner
from tests.support.fuse import require_fuse
from tests.support.nydus_image import build_nydus_image, push
from tests.support.real_nydus import (
    NydusdMount,
    assert_nydusd_serves,
    bootstrap_of_layer_tar,
    localfs_backend,
    nydusd_mount,
    registry_backend,
)
from tests.support.registry import Registry, registry  # noqa: F401  (fixture)

UPPER_DIR = "./usr/share"
"""The Debian tree's second layer holds this folder, and the entries of `UPPER_PARENTS`;
the first layer holds the rest."""
UPPER_PARENTS = (".", "./usr")


def _tar(root: Path, out: Path, *members: str) -> Path:
    """GNU tar of `members` of `root` as `tests.support.sources.tar_directory` packs a
    layer; GNU tar's `--no-recursion`/`--recursion` apply to the members after them."""
    subprocess.run(["tar", "--xattrs", "--xattrs-include=*", "--numeric-owner", "--format=pax",
                    "-C", str(root), "-cf", str(out), *members], check=True)  # fmt: skip
    return out


@pytest.fixture(scope="module")
def rootfs_layers(rootfs: Path, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """The Debian tree as two layer tars: all but `UPPER_DIR`, then `UPPER_DIR` with its
    parents' entries (so the merged tree is the source, parents' attributes too)."""
    base = tmp_path_factory.mktemp("rootfs-layers")
    return [
        _tar(rootfs, base / "lower.tar", f"--exclude={UPPER_DIR}", "."),
        _tar(rootfs, base / "upper.tar", "--no-recursion", *UPPER_PARENTS, "--recursion",
             UPPER_DIR),
    ]  # fmt: skip


def _source(name: str, request: pytest.FixtureRequest) -> tuple[Path, list[Path]]:
    """The tree called `name` and its layer tars, lowest first."""
    if name == "rootfs":
        return request.getfixturevalue("rootfs"), request.getfixturevalue("rootfs_layers")
    return request.getfixturevalue("entry_tree"), [request.getfixturevalue("entry_tar")]


def _assert_read_from(mount: NydusdMount, backend: str) -> None:
    """The file data nydusd served came from `backend`, without a failed read."""
    metrics = mount.backend_metrics()
    assert metrics["backend_type"] == backend
    assert metrics["read_errors"] == 0 and metrics["read_amount_total"] > 0, metrics


@pytest.mark.parametrize("source", ["entry", "rootfs"])
def test_nydusd_serves_rafs_layers_from_a_blob_folder(
    rafs: RafsRunner, source: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    require_fuse()
    tree, tars = _source(source, request)
    blobs = tmp_path / "blobs"
    blobs.mkdir()
    layers = []
    for index, tar in enumerate(tars):
        made = tmp_path / f"layer-{index}.nydus"
        digest = rafs("create", tar, "-o", made, timeout=600).stdout.decode().strip()
        layers.append(made.rename(blobs / digest.removeprefix("sha256:")))
    bootstrap = tmp_path / "image.boot"
    named = rafs("merge", *layers, "-o", bootstrap, timeout=600).stdout.decode().split()
    assert sorted(named) == sorted(f"sha256:{layer.name}" for layer in layers)
    with nydusd_mount(bootstrap, localfs_backend(blobs), tmp_path / "nydusd") as mount:
        assert_nydusd_serves(tree, mount)
        _assert_read_from(mount, "localfs")


@pytest.mark.parametrize("source", ["entry", "rootfs"])
def test_nydusd_serves_a_pushed_rafs_image_from_the_registry(
    registry: Registry,  # noqa: F811  (fixture)
    source: str,
    request: pytest.FixtureRequest,
    tmp_path: Path,
) -> None:
    require_fuse()
    tree, tars = _source(source, request)
    image = build_nydus_image(tars, tmp_path / "build")
    assert len(image.blobs) == len(tars)
    repository = f"judges/{source}"
    push(image, registry.host, repository, "nydus")
    bootstrap = bootstrap_of_layer_tar(image.bootstrap, tmp_path / "image.boot")
    with nydusd_mount(bootstrap, registry_backend(registry.host, repository),
                      tmp_path / "nydusd", prefetch=True) as mount:  # fmt: skip
        assert_nydusd_serves(tree, mount)
        _assert_read_from(mount, "registry")
