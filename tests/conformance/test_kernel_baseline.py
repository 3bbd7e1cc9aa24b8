"""The kernel harness proven with a peer tool, independently of rafs.

erofs-utils' `mkfs.erofs` builds images of the all-entry-types tree, plain and chunked with
a separate blob device (the shape of a Nydus bootstrap plus data blob). Mounted by the
kernel, each must snapshot exactly like its source, and `fsck.erofs` must accept it. If
this fails, the harness (snapshot, compare, mount_erofs) is wrong, not rafs.

mkfs.erofs 1.5 keeps every field a snapshot records, for this tree and for a debootstrap
root filesystem alike (checked by hand); what differs, directory sizes, is not recorded.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.support.kernel import MountError, fsck_erofs, mount_erofs, require_kernel_erofs
from tests.support.tree import compare, snapshot

pytestmark = pytest.mark.kernel


@pytest.fixture(scope="module", autouse=True)
def _kernel() -> None:
    require_kernel_erofs()


def _mkfs(tmp: Path, source: Path, *options: str) -> Path:
    image = tmp / "image.erofs"
    subprocess.run(
        ["mkfs.erofs", "--quiet", *options, str(image), str(source)],
        check=True,
        capture_output=True,
    )
    return image


@pytest.fixture(scope="module")
def plain_image(entry_tree: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _mkfs(tmp_path_factory.mktemp("plain"), entry_tree)


@pytest.fixture(scope="module")
def chunked_image(entry_tree: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A metadata image whose file data lives in 1 MiB chunks on a separate blob device."""
    tmp = tmp_path_factory.mktemp("chunked")
    blob = tmp / "blob.img"
    return _mkfs(tmp, entry_tree, "--chunksize=1048576", f"--blobdev={blob}"), blob


def test_plain_image_mounts_as_its_source(
    plain_image: Path, entry_tree: Path, tmp_path: Path
) -> None:
    with mount_erofs(plain_image, tmp_path / "mnt") as mnt:
        problems = compare(snapshot(entry_tree), snapshot(mnt))
    assert problems == [], "\n".join(problems)


def test_chunked_image_with_blob_device_mounts_as_its_source(
    chunked_image: tuple[Path, Path], entry_tree: Path, tmp_path: Path
) -> None:
    image, blob = chunked_image
    with mount_erofs(image, tmp_path / "mnt", [blob]) as mnt:
        problems = compare(snapshot(entry_tree), snapshot(mnt))
    assert problems == [], "\n".join(problems)


def test_same_image_mounts_twice_at_once(chunked_image: tuple[Path, Path], tmp_path: Path) -> None:
    image, blob = chunked_image
    with (
        mount_erofs(image, tmp_path / "one", [blob]) as one,
        mount_erofs(image, tmp_path / "two", [blob]) as two,
    ):
        assert compare(snapshot(one), snapshot(two)) == []


def test_mount_cleans_up_mount_and_loop_devices(
    chunked_image: tuple[Path, Path], tmp_path: Path
) -> None:
    image, blob = chunked_image
    with mount_erofs(image, tmp_path / "mnt", [blob]) as mnt:
        assert mnt.is_mount()
        assert _loops_backed_by(blob)
    assert not mnt.is_mount()
    assert not _loops_backed_by(blob)


def test_fsck_accepts_mkfs_images(plain_image: Path, chunked_image: tuple[Path, Path]) -> None:
    rc, output = fsck_erofs(plain_image)
    assert rc == 0, output
    image, blob = chunked_image
    rc, output = fsck_erofs(image, [blob])
    assert rc == 0, output


def _loops_backed_by(path: Path) -> str:
    """`losetup --associated` lines for the loop devices backed by `path`."""
    return subprocess.run(
        ["losetup", "--associated", str(path)], check=True, capture_output=True, text=True
    ).stdout


def test_wrong_number_of_devices_is_refused(
    chunked_image: tuple[Path, Path], tmp_path: Path
) -> None:
    image, blob = chunked_image
    with (
        pytest.raises(MountError, match="extra devices don't match"),
        mount_erofs(image, tmp_path / "mnt", [blob, blob]),
    ):
        pass
    assert not (tmp_path / "mnt").is_mount()
    assert not _loops_backed_by(blob)
