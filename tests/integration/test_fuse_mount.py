"""`rafs mount` for real: FUSE mounts read back the source tree, and the chunk cache holds.

Every mount is made by the command line (background unless a test needs the process), and
unmounted in a finalizer whatever happens. Images come from the all-entry-types tree and a
debootstrap root filesystem (slow). The corruption, persistence and eviction tests build a
bootstrap and a blob folder, so that a blob can be damaged or removed between mounts.
"""

from __future__ import annotations

import errno
import json
import os
import random
import signal
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from rafs.cli.mount import mount_type
from rafs.reader.artifact import open_artifact
from rafs.reader.image import RafsImage
from tests.conftest import RafsRunner
from tests.support.fuse import (
    assert_only_victim_unreadable,
    assert_same_tree,
    foreground_mount,
    rafs_mount,
    regular_files,
    require_fuse,
    sha256_of,
    usr1_stats,
)
from tests.support.kernel import require_kernel_erofs
from tests.support.patching import redirect_dirent

pytestmark = pytest.mark.fuse


@pytest.fixture(scope="module", autouse=True)
def _fuse() -> None:
    require_fuse()


@pytest.fixture(scope="module")
def entry_layer(rafs: RafsRunner, entry_tar: Path, tmp_path_factory: pytest.TempPathFactory
                ) -> Path:  # fmt: skip
    layer = tmp_path_factory.mktemp("entry-layer") / "layer.nydus"
    rafs("create", entry_tar, "-o", layer)
    return layer


def _split_image(rafs: RafsRunner, tar: Path, out: Path) -> tuple[Path, Path]:
    """A bootstrap and a blob folder holding its one blob, named by the layer digest."""
    blobs = out / "blobs"
    blobs.mkdir(parents=True)
    layer = out / "layer"
    bootstrap = out / "image.boot"
    digest = rafs("create", tar, "-o", layer, "--bootstrap", bootstrap).stdout.decode().strip()
    layer.rename(blobs / digest.removeprefix("sha256:"))
    return bootstrap, blobs


def test_entry_tree_reads_as_source_and_stats(
    rafs: RafsRunner, entry_tree: Path, entry_layer: Path, tmp_path: Path
) -> None:
    stats = tmp_path / "stats.json"
    with rafs_mount(rafs, entry_layer, tmp_path / "mnt", "--stats", stats) as mnt:
        assert os.stat(mnt).st_ino == 1
        assert_same_tree(entry_tree, mnt)
        assert sorted(os.listdir(mnt / "many")) == sorted(os.listdir(entry_tree / "many"))
        with pytest.raises(OSError) as raised:
            (mnt / "files" / "new").write_bytes(b"x")
        assert raised.value.errno == errno.EROFS
    result = json.loads(stats.read_text())
    with open_artifact(entry_layer) as artifact:
        image = artifact.image
        blob_bytes = sum(blob.compressed_size for blob in image.blobs)
        assert result["image_bytes"] == len(image.data) + blob_bytes
    assert 0 < result["bytes_fetched"] <= blob_bytes
    assert result["requests"] > 0
    assert result["cache_hits"] > 0
    assert result["corrupt_chunks"] == 0
    assert mount_type((tmp_path / "mnt").resolve()) is None


@pytest.mark.slow
def test_debian_rootfs_reads_as_source_and_runs(
    rafs: RafsRunner, rootfs: Path, rootfs_tar: Path, tmp_path: Path
) -> None:
    layer = tmp_path / "rootfs.nydus"
    rafs("create", rootfs_tar, "-o", layer)
    stats = tmp_path / "stats.json"
    with rafs_mount(rafs, layer, tmp_path / "mnt", "--stats", stats) as mnt:
        command = ["chroot", str(mnt), "/bin/sh", "-c", "ls / && cat /etc/os-release"]
        result = subprocess.run(command, capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        assert "bin" in result.stdout.split()
        assert 'ID=debian' in result.stdout
        first_read = usr1_stats(mnt, stats)
        assert first_read["bytes_fetched"] < layer.stat().st_size / 10
        assert_same_tree(rootfs, mnt)


def test_corrupt_chunk_fails_only_its_file(
    rafs: RafsRunner, entry_tree: Path, entry_tar: Path, tmp_path: Path
) -> None:
    bootstrap, blobs = _split_image(rafs, entry_tar, tmp_path)
    victim = "files/chunk-exact"
    with open_artifact(bootstrap, blobs) as artifact:
        [info] = artifact.image.file_chunks(artifact.image.lookup(victim))
    blob = next(blobs.iterdir())
    with blob.open("r+b") as f:
        f.seek(info.compressed_offset + info.compressed_size // 2)
        byte = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([byte[0] ^ 0xFF]))
    log = tmp_path / "mount.log"
    options = ("--blob-dir", blobs, "--log-file", log)
    with rafs_mount(rafs, bootstrap, tmp_path / "mnt", *options) as mnt:
        assert_only_victim_unreadable(mnt, entry_tree, victim)
    errors = [line for line in log.read_text().splitlines() if " ERROR " in line]
    assert errors and all("does not match the chunk digest" in e or "Zstd" in e or
                          "decompress" in e.lower() for e in errors), errors  # fmt: skip


def test_a_directory_cycle_neither_hangs_nor_stops_the_mount(
    rafs: RafsRunner, entry_tree: Path, entry_tar: Path, tmp_path: Path
) -> None:
    """/deep's first subdirectory patched to be /deep itself, and the root's `files` to be
    the root: walking the mount ends - the kernel refuses a second name for a directory
    (ELOOP) and an entry naming the root (EIO) - other files still read, and the mount
    unmounts cleanly."""
    bootstrap, blobs = _split_image(rafs, entry_tar, tmp_path)
    data = bootstrap.read_bytes()
    image = RafsImage(data, "boot")
    deep = image.lookup("/deep")
    [child] = [e.name for e in image.children(deep)][:1]
    data = redirect_dirent(data, "/deep", child, deep)
    bootstrap.write_bytes(redirect_dirent(data, "/", b"files", image.root_nid))
    with rafs_mount(rafs, bootstrap, tmp_path / "mnt", "--blob-dir", blobs) as mnt:
        walk = subprocess.run(["find", str(mnt)], capture_output=True, text=True, timeout=120,
                              env={**os.environ, "LC_ALL": "C"})  # fmt: skip
        refused = walk.stderr.splitlines()
        assert len(refused) == 2, refused
        assert f"/deep/{child.decode()}" in refused[0] and "Too many levels" in refused[0]
        assert "/files" in refused[1] and "Input/output error" in refused[1], refused
        assert (mnt / "xattrs").is_dir() and mount_type(mnt.resolve()) == "fuse.rafs"
        for path in regular_files(entry_tree / "hardlinks"):
            relative = path.relative_to(entry_tree)
            assert sha256_of(mnt / relative) == sha256_of(path), relative


def test_cache_serves_after_blobs_are_gone(
    rafs: RafsRunner, entry_tree: Path, entry_tar: Path, tmp_path: Path
) -> None:
    bootstrap, blobs = _split_image(rafs, entry_tar, tmp_path)
    cache = tmp_path / "cache"
    options = ("--blob-dir", blobs, "--cache-dir", cache)
    with rafs_mount(rafs, bootstrap, tmp_path / "mnt", *options) as mnt:
        assert_same_tree(entry_tree, mnt)
    for blob in blobs.iterdir():
        blob.unlink()
    stats = tmp_path / "stats.json"
    with rafs_mount(rafs, bootstrap, tmp_path / "mnt", *options, "--stats", stats) as mnt:
        assert_same_tree(entry_tree, mnt)
    result = json.loads(stats.read_text())
    assert result["requests"] == 0 and result["bytes_fetched"] == 0
    assert result["cache_hits"] > 0


def test_small_cache_limit_evicts_and_stays_correct(
    rafs: RafsRunner, entry_tree: Path, entry_tar: Path, tmp_path: Path
) -> None:
    bootstrap, blobs = _split_image(rafs, entry_tar, tmp_path)
    cache, stats = tmp_path / "cache", tmp_path / "stats.json"
    limit = 2 << 20
    options = ("--blob-dir", blobs, "--cache-dir", cache, "--cache-limit", "2M", "--stats", stats)
    with rafs_mount(rafs, bootstrap, tmp_path / "mnt", *options) as mnt:
        for _ in range(2):
            assert_same_tree(entry_tree, mnt)
            used = sum(p.stat().st_blocks * 512 for p in cache.glob("*.blob.data"))
            assert used <= limit
    result = json.loads(stats.read_text())
    assert result["evicted_chunks"] > 0
    assert result["cache_bytes"] <= limit


@pytest.mark.parametrize("limit", [None, "2M"])
def test_concurrent_readers_get_the_source_bytes(
    rafs: RafsRunner, entry_tree: Path, entry_tar: Path, tmp_path: Path, limit: str | None
) -> None:
    """Six readers at once, each through the whole tree in its own order (forwards, which
    starts directory walks; backwards; shuffled), on a cold cache: small fetches on the
    event loop, fetch threads, read-ahead across files and (with a limit) eviction all run
    at the same time."""
    bootstrap, blobs = _split_image(rafs, entry_tar, tmp_path)
    expected = {p.relative_to(entry_tree): sha256_of(p) for p in regular_files(entry_tree)}
    orders = [sorted(expected), sorted(expected, reverse=True)]
    orders += [random.Random(seed).sample(sorted(expected), len(expected)) for seed in range(4)]
    options = ["--blob-dir", blobs, "--cache-dir", tmp_path / "cache"]
    options += ["--cache-limit", limit] if limit else []
    with rafs_mount(rafs, bootstrap, tmp_path / "mnt", *options) as mnt:

        def read_all(order: list[Path]) -> dict[Path, str]:
            return {relative: sha256_of(mnt / relative) for relative in order}

        with ThreadPoolExecutor(len(orders)) as readers:
            for seen in readers.map(read_all, orders):
                assert seen == expected


def test_sigterm_unmounts_and_writes_stats(
    entry_tree: Path, entry_layer: Path, tmp_path: Path
) -> None:
    stats, mnt = tmp_path / "stats.json", tmp_path / "mnt"
    with foreground_mount(entry_layer, mnt, "--stats", stats) as process:
        assert (mnt / "files" / "small.txt").read_bytes() == (
            entry_tree / "files" / "small.txt").read_bytes()  # fmt: skip
        process.send_signal(signal.SIGUSR1)
        deadline = time.monotonic() + 10
        while not stats.exists():
            assert time.monotonic() < deadline, "no statistics after SIGUSR1"
            time.sleep(0.02)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0, process.communicate()[1].decode()
    assert mount_type(mnt.resolve()) is None
    assert json.loads(stats.read_text())["reads"] >= 1


def test_prefetch_paths_fill_the_cache(
    rafs: RafsRunner, entry_layer: Path, tmp_path: Path
) -> None:
    stats, cache = tmp_path / "stats.json", tmp_path / "cache"
    options = ("--cache-dir", cache, "--prefetch", "/files", "--stats", stats)
    with rafs_mount(rafs, entry_layer, tmp_path / "mnt", *options) as mnt:
        deadline = time.monotonic() + 30
        while usr1_stats(mnt, stats)["chunks_fetched"] < 5:
            assert time.monotonic() < deadline, "prefetch fetched nothing"
            time.sleep(0.1)
    result = json.loads(stats.read_text())
    assert result["reads"] == 0


def test_mount_errors_are_reported_before_detaching(rafs: RafsRunner, entry_layer: Path,
                                                    tmp_path: Path) -> None:  # fmt: skip
    missing = rafs("mount", tmp_path / "nope", tmp_path, check=False, timeout=30)
    assert missing.returncode == 3 and "no such file" in missing.stderr
    not_dir = rafs("mount", entry_layer, tmp_path / "nodir", check=False, timeout=30)
    assert not_dir.returncode == 3 and "not a directory" in not_dir.stderr
    bad = rafs("mount", entry_layer, tmp_path, "--prefetch", "/no/such", check=False, timeout=30)
    assert bad.returncode == 3 and "/no/such" in bad.stderr
    umount = rafs("umount", tmp_path, check=False, timeout=30)
    assert umount.returncode == 3 and "not mounted" in umount.stderr


@pytest.mark.kernel
def test_kernel_mount_equals_source(
    rafs: RafsRunner, entry_tree: Path, entry_tar: Path, tmp_path: Path
) -> None:
    require_kernel_erofs()
    bootstrap, blobs = _split_image(rafs, entry_tar, tmp_path)
    options = ("--blob-dir", blobs, "--cache-dir", tmp_path / "cache", "--kernel")
    with rafs_mount(rafs, bootstrap, tmp_path / "mnt", *options) as mnt:
        assert mount_type(mnt.resolve()) == "erofs"
        assert_same_tree(entry_tree, mnt)
    loops = subprocess.run(["losetup", "-a"], capture_output=True, text=True).stdout
    assert str(tmp_path) not in loops
