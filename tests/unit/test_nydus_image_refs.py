"""Finding the Nydus parts of a manifest, choosing from an index, and the registry backend's
range splitting and concurrency bound (against a fake repository)."""

from __future__ import annotations

import threading
import time
from typing import Any, cast

import pytest

from rafs.digest import Digest
from rafs.errors import FormatError, InvalidArgument, NotFound, Unsupported
from rafs.oci import Descriptor, Index, Manifest, Platform
from rafs.oci import constants as mt
from rafs.oci.nydus_image import choose_manifest, nydus_manifest, parse_platform
from rafs.reader.registry_backend import RegistryBackend
from rafs.registry import Repository

CONFIG = Descriptor(mt.OCI_CONFIG, Digest.of(b"{}"), 2)


def _layer(name: bytes, media_type: str = mt.NYDUS_BLOB, **annotations: str) -> Descriptor:
    return Descriptor(media_type, Digest.of(name), 100 + len(name), annotations)


def _bootstrap(version: str = "6") -> Descriptor:
    return _layer(b"boot", mt.OCI_LAYER_GZIP, **{mt.NYDUS_BOOTSTRAP_ANNOTATION: "true",
                                                  mt.NYDUS_FS_VERSION_ANNOTATION: version})


def test_nydus_manifest_maps_blob_ids_to_layers() -> None:
    a, b = _layer(b"a"), _layer(b"b")
    found = nydus_manifest(Manifest(CONFIG, (a, b, _bootstrap())), "img")
    assert found.bootstrap == _bootstrap()
    assert dict(found.blobs) == {a.digest.hex: a, b.digest.hex: b}
    assert found.layer_bytes == a.size + b.size + _bootstrap().size


def test_nydus_manifest_refuses_other_images() -> None:
    with pytest.raises(InvalidArgument, match="not a Nydus image"):
        nydus_manifest(Manifest(CONFIG, (_layer(b"a", mt.OCI_LAYER_GZIP),)), "img")
    with pytest.raises(FormatError, match="2 layers"):
        nydus_manifest(Manifest(CONFIG, (_bootstrap(), _bootstrap())), "img")
    with pytest.raises(Unsupported, match="v5"):
        nydus_manifest(Manifest(CONFIG, (_layer(b"a"), _bootstrap("5"))), "img")


def _entry(name: bytes, platform: Platform) -> Descriptor:
    return Descriptor(mt.OCI_MANIFEST, Digest.of(name), 10, platform=platform)


def test_choose_manifest_by_platform_preferring_nydus() -> None:
    amd = _entry(b"amd", Platform("linux", "amd64"))
    nydus = _entry(b"nydus", Platform("linux", "amd64", os_features=(mt.NYDUS_OS_FEATURE,)))
    arm = _entry(b"arm", Platform("linux", "arm64", "v8"))
    index = Index((amd, arm, nydus))
    assert choose_manifest(index, Platform("linux", "amd64"), "i") == nydus
    assert choose_manifest(index, parse_platform("linux/arm64"), "i") == arm
    assert choose_manifest(index, parse_platform("linux/arm64/v8"), "i") == arm
    with pytest.raises(NotFound, match=r"linux/arm64/v7.*linux/amd64, linux/arm64/v8"):
        choose_manifest(index, parse_platform("linux/arm64/v7"), "i")


@pytest.mark.parametrize("text", ["linux", "linux/", "/amd64", "a/b/c/d", ""])
def test_parse_platform_refuses_malformed(text: str) -> None:
    with pytest.raises(InvalidArgument):
        parse_platform(text)


class _FakeRepository:
    """`read_blob_range` over one in-memory blob, recording concurrency."""

    def __init__(self, data: bytes, short: bool = False) -> None:
        self.data, self.short = data, short
        self.calls: list[tuple[int, int]] = []
        self.active = self.peak = 0
        self.lock = threading.Lock()

    def read_blob_range(self, digest: str, offset: int, length: int) -> bytes:
        with self.lock:
            self.calls.append((offset, length))
            self.active += 1
            self.peak = max(self.peak, self.active)
        time.sleep(0.01)
        with self.lock:
            self.active -= 1
        return self.data[offset : offset + length - (1 if self.short else 0)]

    def what(self, reference: str) -> str:
        return f"docker://fake/repo@{reference}"


def _backend(repo: _FakeRepository, **options: Any) -> tuple[RegistryBackend, str]:
    layer = Descriptor(mt.NYDUS_BLOB, Digest.of(repo.data), len(repo.data))
    backend = RegistryBackend(cast(Repository, repo), {layer.digest.hex: layer}, **options)
    return backend, layer.digest.hex


def test_registry_backend_splits_large_ranges_with_bounded_concurrency() -> None:
    repo = _FakeRepository(bytes(range(256)) * 400)
    backend, blob_id = _backend(repo, concurrency=3, part_size=1000)
    try:
        assert backend.read_range(blob_id, 10, 20) == repo.data[10:30]
        assert repo.calls == [(10, 20)]
        assert backend.read_range(blob_id, 500, 9000) == repo.data[500:9500]
        assert len(repo.calls) == 1 + 9 and repo.peak <= 3
        with pytest.raises(FormatError, match="outside"):
            backend.read_range(blob_id, len(repo.data) - 5, 10)
    finally:
        backend.close()


def test_registry_backend_refuses_short_answers() -> None:
    repo = _FakeRepository(b"x" * 100, short=True)
    backend, blob_id = _backend(repo)
    with pytest.raises(FormatError, match="sent 9 bytes"):
        backend.read_range(blob_id, 0, 10)
    backend.close()
