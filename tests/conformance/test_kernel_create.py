"""The kernel is the judge: `rafs create` -> `rafs export` -> `mount -t erofs` equals the source.

Sources are the all-entry-types tree (hardlinks, symlinks, fifos, devices, xattrs, long and
non-ASCII names, chunk-size edge files, repeated chunks, setuid...) and a Debian root
filesystem made by debootstrap. Each is tarred with GNU tar, built into a Nydus layer, then
mounted two ways: as one flat block image (`export --block`, no `device=`), and as the
bootstrap with its uncompressed blob passed as `-o device=`. `fsck.erofs` checks the
multi-device form (erofs-utils 1.5 predates flat-device images).
"""

from __future__ import annotations

import os
import stat
import tarfile
from pathlib import Path

import pytest

from tests.conftest import RafsRunner
from tests.support.kernel import fsck_erofs, mount_erofs, require_kernel_erofs
from tests.support.tarballs import make_tar
from tests.support.tree import compare, snapshot

pytestmark = pytest.mark.kernel

CONFIGS = [
    (compressor, digester)
    for compressor in ("zstd", "lz4_block", "none")
    for digester in ("blake3", "sha256")
]


@pytest.fixture(scope="module", autouse=True)
def _kernel() -> None:
    require_kernel_erofs()


def _build(rafs: RafsRunner, tar: Path, out: Path, *options: str) -> Path:
    layer = out / "layer.nydus"
    result = rafs("create", str(tar), "-o", str(layer), *options)
    assert result.stdout.decode().startswith("sha256:")
    return layer


def _assert_block_mount_equals(rafs: RafsRunner, layer: Path, source: Path, tmp: Path) -> None:
    image = tmp / "image.erofs"
    rafs("export", "--block", str(layer), "-o", str(image))
    with mount_erofs(image, tmp / "mnt") as mnt:
        problems = compare(snapshot(source), snapshot(mnt), ignore_root_mtime=True)
    assert problems == [], "\n".join(problems[:50])


def _assert_device_mount_equals(rafs: RafsRunner, layer: Path, source: Path, tmp: Path) -> None:
    exported = tmp / "exported"
    rafs("export", "--blob-data", str(layer), "-o", str(exported))
    bootstrap = exported / "image.boot"
    devices = sorted(exported.glob("*.blob.data"))
    assert len(devices) == 1
    rc, output = fsck_erofs(bootstrap, devices)
    assert rc == 0, output
    with mount_erofs(bootstrap, tmp / "mnt-dev", devices) as mnt:
        problems = compare(snapshot(source), snapshot(mnt), ignore_root_mtime=True)
    assert problems == [], "\n".join(problems[:50])


@pytest.mark.parametrize(("compressor", "digester"), CONFIGS)
def test_entry_types_mount_as_source(
    rafs: RafsRunner, entry_tree: Path, entry_tar: Path, tmp_path: Path,
    compressor: str, digester: str,
) -> None:  # fmt: skip
    layer = _build(rafs, entry_tar, tmp_path, "--compressor", compressor, "--digester", digester)
    rafs("check", str(layer))
    _assert_block_mount_equals(rafs, layer, entry_tree, tmp_path)
    _assert_device_mount_equals(rafs, layer, entry_tree, tmp_path)


@pytest.mark.parametrize("chunk_size", ["0x1000", "0x10000", "0x1000000"])
def test_chunk_sizes_mount_as_source(
    rafs: RafsRunner, entry_tree: Path, entry_tar: Path, tmp_path: Path, chunk_size: str
) -> None:
    layer = _build(rafs, entry_tar, tmp_path, "--chunk-size", chunk_size)
    _assert_block_mount_equals(rafs, layer, entry_tree, tmp_path)


def test_directory_source_mounts_as_source(
    rafs: RafsRunner, entry_tree: Path, tmp_path: Path
) -> None:
    layer = _build(rafs, entry_tree, tmp_path)
    _assert_block_mount_equals(rafs, layer, entry_tree, tmp_path)


def test_symlinks_mount_as_lrwxrwxrwx(rafs: RafsRunner, tmp_path: Path) -> None:
    """A tar from Python's tarfile says 0644 for a symlink; the OCI image (GNU tar, umoci,
    containerd) has lrwxrwxrwx, and so must the kernel mount of the layer."""
    tar = tmp_path / "links.tar"
    tar.write_bytes(make_tar([
        ("target", b"data", {}),
        ("link", None, {"type": tarfile.SYMTYPE, "linkname": "target", "mode": 0o644}),
    ]))  # fmt: skip
    layer = _build(rafs, tar, tmp_path)
    image = tmp_path / "image.erofs"
    rafs("export", "--block", str(layer), "-o", str(image))
    with mount_erofs(image, tmp_path / "mnt") as mnt:
        st = os.lstat(mnt / "link")
        assert stat.filemode(st.st_mode) == "lrwxrwxrwx"
        assert os.readlink(mnt / "link") == "target"
        assert (mnt / "link").read_bytes() == b"data"


@pytest.mark.slow
@pytest.mark.parametrize(("compressor", "digester"), CONFIGS)
def test_debian_rootfs_mounts_as_source(
    rafs: RafsRunner, rootfs: Path, rootfs_tar: Path, tmp_path: Path,
    compressor: str, digester: str,
) -> None:  # fmt: skip
    layer = _build(rafs, rootfs_tar, tmp_path, "--compressor", compressor, "--digester", digester)
    _assert_block_mount_equals(rafs, layer, rootfs, tmp_path)
    _assert_device_mount_equals(rafs, layer, rootfs, tmp_path)
