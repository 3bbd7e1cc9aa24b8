"""Lazy FUSE mounts straight from a registry: `rafs mount docker://... --plain-http`.

Images are built as nydus-snapshotter lays them out (tests/support/nydus_image) and pushed
to Debian's docker-registry on loopback; the Debian one is an OCI image made by umoci and
converted by `rafs convert`. The mounts are real FUSE mounts made by the command line. A
loopback proxy in front of the registry records every request (so a test can see the Range
requests) and, for the corruption test, damages one chunk of one blob in every ranged
answer that covers it.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from contextlib import ExitStack
from pathlib import Path

import httpx
import pytest

from rafs.cli.mount import mount_type
from rafs.oci import Manifest
from rafs.reader.artifact import open_artifact
from rafs.registry import RegistryClient
from tests.conftest import RafsRunner
from tests.support import oci
from tests.support.fault_proxy import Faults, Seen, start_fault_proxy
from tests.support.fuse import (
    assert_only_victim_unreadable,
    assert_same_tree,
    rafs_mount,
    regular_files,
    require_fuse,
    usr1_stats,
)
from tests.support.kernel import require_kernel_erofs
from tests.support.nydus_image import BuiltImage, build_nydus_image, push
from tests.support.oci import require_umoci
from tests.support.registry import Registry, registry, start_registry  # noqa: F401 (fixture)

VICTIM = "files/chunk-exact"

pytestmark = pytest.mark.fuse


@pytest.fixture(scope="module", autouse=True)
def _fuse() -> None:
    require_fuse()


@pytest.fixture(scope="module")
def entry_image(entry_tar: Path, tmp_path_factory: pytest.TempPathFactory) -> BuiltImage:
    return build_nydus_image([entry_tar], tmp_path_factory.mktemp("entry-image"))


def _blob_gets(seen: list[Seen]) -> list[dict[str, str]]:
    return [s.headers for s in seen if s.method == "GET" and "/blobs/" in s.path]


def test_lazy_mount_reads_as_source_with_range_requests(
    rafs: RafsRunner, registry: Registry, entry_tree: Path,  # noqa: F811
    entry_image: BuiltImage, tmp_path: Path,
) -> None:  # fmt: skip
    push(entry_image, registry.host, "lazy/entry", "v1")
    stats = tmp_path / "stats.json"
    with start_fault_proxy(registry.host, Faults()) as proxy:
        ref = f"docker://{proxy.host}/lazy/entry:v1"
        with rafs_mount(rafs, ref, tmp_path / "mnt", "--plain-http", "--stats", stats) as mnt:
            assert_same_tree(entry_tree, mnt)
        gets = _blob_gets(proxy.seen)
    result = json.loads(stats.read_text())
    blob_bytes = sum(d.size for _, d in entry_image.blobs)
    assert 0 < result["bytes_fetched"] <= blob_bytes
    whole = [h for h in gets if "Range" not in h]
    assert len(whole) == 1  # the bootstrap layer; the blob is only ever read by ranges
    assert result["requests"] == len(gets) - 1 > 0
    assert result["corrupt_chunks"] == 0


def test_a_mount_connects_before_serving_so_a_first_read_is_one_request(
    rafs: RafsRunner, registry: Registry, entry_tree: Path,  # noqa: F811
    entry_image: BuiltImage, tmp_path: Path,
) -> None:  # fmt: skip
    push(entry_image, registry.host, "lazy/connect", "v1")
    [(_, blob)] = entry_image.blobs
    with start_fault_proxy(registry.host, Faults()) as proxy:
        ref = f"docker://{proxy.host}/lazy/connect:v1"
        with rafs_mount(rafs, ref, tmp_path / "mnt", "--plain-http") as mnt:
            mounted = len(proxy.seen)
            # the serving process asked for the blob layer's size before it served (with
            # a token registry, that is also when its pull token is fetched)
            assert ("HEAD", f"/v2/lazy/connect/blobs/{blob.digest}") in [
                (seen.method, seen.path) for seen in proxy.seen]  # fmt: skip
            small = "files/small.txt"
            assert (mnt / small).read_bytes() == (entry_tree / small).read_bytes()
            first_read = proxy.seen[mounted:]
    assert [(seen.method, "Range" in seen.headers) for seen in first_read] == [("GET", True)]


def test_prefetch_fetches_files_stored_together_in_few_requests(
    rafs: RafsRunner, registry: Registry, entry_tree: Path,  # noqa: F811
    entry_image: BuiltImage, tmp_path: Path,
) -> None:  # fmt: skip
    push(entry_image, registry.host, "lazy/prefetch", "v1")
    log, many = tmp_path / "mount.log", sorted((entry_tree / "many").iterdir())
    with start_fault_proxy(registry.host, Faults()) as proxy:
        ref = f"docker://{proxy.host}/lazy/prefetch:v1"
        options = ("--plain-http", "--prefetch", "/many", "--log-file", log)
        with rafs_mount(rafs, ref, tmp_path / "mnt", *options) as mnt:
            deadline = time.monotonic() + 60
            while "prefetch: done" not in log.read_text():
                assert time.monotonic() < deadline, "the prefetch did not finish"
                time.sleep(0.05)
            prefetched = [h for h in _blob_gets(proxy.seen) if "Range" in h]
            for path in many:
                assert (mnt / "many" / path.name).read_bytes() == path.read_bytes()
            assert len([h for h in _blob_gets(proxy.seen) if "Range" in h]) == len(prefetched)
    assert len(many) == 300 and 0 < len(prefetched) <= 2, len(prefetched)  # not one per file


def test_check_of_a_registry_image_reads_its_chunks_in_few_requests(
    rafs: RafsRunner, registry: Registry, entry_image: BuiltImage, tmp_path: Path,  # noqa: F811
) -> None:  # fmt: skip
    push(entry_image, registry.host, "lazy/check", "v1")
    [(layer, _)] = entry_image.blobs
    with open_artifact(layer) as artifact:
        chunks = len(artifact.image.chunk_table())
    with start_fault_proxy(registry.host, Faults()) as proxy:
        result = rafs("check", f"docker://{proxy.host}/lazy/check:v1", "--plain-http")
        ranges = [h for h in _blob_gets(proxy.seen) if "Range" in h]
    assert f"{chunks} chunks" in result.stdout.decode()
    # read in stored order through a window that doubles: not one request per chunk
    assert chunks >= 300 and 0 < len(ranges) <= 10, (chunks, len(ranges))


def test_corrupt_chunk_on_the_registry_fails_only_its_reads(
    rafs: RafsRunner, registry: Registry, entry_tree: Path,  # noqa: F811
    entry_image: BuiltImage, tmp_path: Path,
) -> None:  # fmt: skip
    push(entry_image, registry.host, "lazy/corrupt", "v1")
    [(layer, blob)] = entry_image.blobs
    with open_artifact(layer) as artifact:
        [info] = artifact.image.file_chunks(artifact.image.lookup(VICTIM))
    faults = Faults(corrupt_at=(blob.digest, info.compressed_offset + info.compressed_size // 2))
    log = tmp_path / "mount.log"
    with start_fault_proxy(registry.host, faults) as proxy:
        ref = f"docker://{proxy.host}/lazy/corrupt:v1"
        with rafs_mount(rafs, ref, tmp_path / "mnt", "--plain-http", "--log-file", log) as mnt:
            for _ in range(2):  # not cached: fetched, and refused, again
                assert_only_victim_unreadable(mnt, entry_tree, VICTIM)
    errors = [line for line in log.read_text().splitlines() if " ERROR " in line]
    assert errors and all(blob.digest.hex in e and ("does not match the chunk digest" in e
                          or "decompress" in e.lower() or "Zstd" in e) for e in errors), errors


def test_mount_serves_from_cache_after_the_registry_stops(
    rafs: RafsRunner, entry_tree: Path, entry_image: BuiltImage, tmp_path: Path
) -> None:
    stats = tmp_path / "stats.json"
    options = ("--plain-http", "--cache-dir", tmp_path / "cache", "--stats", stats)
    with ExitStack() as running:
        own = running.enter_context(start_registry(tmp_path / "registry"))
        ref = push(entry_image, own.host, "lazy/stop", "v1")
        with rafs_mount(rafs, ref, tmp_path / "mnt", *options) as mnt:
            assert_same_tree(entry_tree, mnt)
            fetched = usr1_stats(mnt, stats)
            running.close()  # the registry is gone
            with pytest.raises(httpx.TransportError):
                httpx.get(f"http://{own.host}/v2/", timeout=2)
            for path in regular_files(mnt):  # drop the page cache: reads reach the mount
                with path.open("rb") as f:
                    os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
            assert_same_tree(entry_tree, mnt)
            after = usr1_stats(mnt, stats)
    assert after["requests"] == fetched["requests"] and after["corrupt_chunks"] == 0
    assert after["cache_hits"] > fetched["cache_hits"]


@pytest.mark.kernel
def test_kernel_mount_from_the_registry_equals_source(
    rafs: RafsRunner, registry: Registry, entry_tree: Path,  # noqa: F811
    entry_image: BuiltImage, tmp_path: Path,
) -> None:  # fmt: skip
    require_kernel_erofs()
    ref = push(entry_image, registry.host, "lazy/kernel", "v1")
    options = ("--plain-http", "--cache-dir", tmp_path / "cache", "--kernel")
    with rafs_mount(rafs, ref, tmp_path / "mnt", *options) as mnt:
        assert mount_type(mnt.resolve()) == "erofs"
        assert_same_tree(entry_tree, mnt)


@pytest.mark.slow
def test_debian_rootfs_starts_lazily_from_the_registry(
    rafs: RafsRunner, registry: Registry, rootfs: Path, rootfs_tar: Path,  # noqa: F811
    tmp_path: Path,
) -> None:  # fmt: skip
    # The image as a user gets it: an OCI image (umoci gzips the layer) converted and
    # pushed by `rafs convert`.
    require_umoci()
    oci.new_image(tmp_path / "oci", "bookworm")
    oci.add_raw_layer(tmp_path / "oci", "bookworm", rootfs_tar)
    ref = f"docker://{registry.host}/lazy/debian:bookworm"
    rafs("convert", f"oci:{tmp_path / 'oci'}:bookworm", ref, "--plain-http",
         "--store", tmp_path / "store")  # fmt: skip
    with RegistryClient(registry.host, plain_http=True) as client:
        manifest = Manifest.from_bytes(client.repository("lazy/debian").get_manifest(
            "bookworm")[1])  # fmt: skip
    layer_bytes = sum(layer.size for layer in manifest.layers)
    stats = tmp_path / "stats.json"
    with rafs_mount(rafs, ref, tmp_path / "mnt", "--plain-http", "--stats", stats) as mnt:
        command = ["chroot", str(mnt), "/bin/sh", "-c", "ls / && cat /etc/os-release"]
        result = subprocess.run(command, capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr
        assert "bin" in result.stdout.split() and "ID=debian" in result.stdout
        first = usr1_stats(mnt, stats)
        share = first["bytes_fetched"] / layer_bytes
        print(f"\nfetched {first['bytes_fetched']} of {layer_bytes} layer bytes "
              f"({share:.2%}) in {first['requests']} requests")  # fmt: skip
        assert share < 0.10
        assert_same_tree(rootfs, mnt)
