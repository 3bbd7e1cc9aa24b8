"""Retries: a loopback proxy in front of the real registry answers 500, drops connections
(before and after forwarding) and cuts bodies at random; the client gets through with
backoff or fails with a clear `Unavailable`."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from rafs.content.local import LocalStore
from rafs.digest import Digest
from rafs.errors import Unavailable
from rafs.oci import Descriptor, Manifest
from rafs.oci import constants as mt
from rafs.registry import RegistryClient, RetryPolicy
from tests.support.fault_proxy import Faults, Seen, start_fault_proxy
from tests.support.registry import Registry, registry  # noqa: F401  (fixture)

FAST = RetryPolicy(attempts=10, base_delay=0.005, max_delay=0.05)


def test_push_and_pull_through_faults(registry: Registry, tmp_path: Path) -> None:  # noqa: F811
    # Each seed's faults are the same in every run; these take every recovery path, as
    # asserted: resumed uploads and resumed downloads.
    seen = [request for seed in (1, 2, 5) for request in _round_trip(registry, tmp_path, seed)]
    assert any(s.method == "GET" and "/blobs/uploads/" in s.path for s in seen)
    assert any(s.method == "GET" and s.headers.get("Range", "").endswith("-") for s in seen)


def _round_trip(registry: Registry, tmp_path: Path, seed: int) -> list[Seen]:  # noqa: F811
    """Push an image through a faulty proxy and pull it back; return what the proxy saw."""
    rng = random.Random(seed)
    blobs = [rng.randbytes(rng.randrange(1, 3 << 20)) for _ in range(4)]
    faults = Faults(error_500=0.15, drop_before=0.1, drop_after=0.1, cut_body=0.15, seed=seed)
    name = f"rafs/faults-{seed}"
    with start_fault_proxy(registry.host, faults) as proxy, \
            RegistryClient(proxy.host, plain_http=True, retry=FAST) as client:  # fmt: skip
        repo = client.repository(name)
        layers = []
        for i, data in enumerate(blobs):
            layer = Descriptor(mt.OCI_LAYER_GZIP, Digest.of(data), len(data))
            repo.push_blob(data, layer, chunk_size=(512 << 10) if i % 2 else None)
            layers.append(layer)
        config = b'{"rootfs":{"type":"layers","diff_ids":[]}}'
        config_d = Descriptor(mt.OCI_CONFIG, Digest.of(config), len(config))
        repo.push_blob(config, config_d)
        pushed = repo.put_manifest(Manifest(config_d, tuple(layers)), "v1")

        store = LocalStore(tmp_path / f"store-{seed}")
        descriptor, data = repo.get_manifest("v1")
        assert descriptor.digest == pushed.digest
        for layer in Manifest.from_bytes(data).layers:
            with store.writer(f"pull-{layer.digest}", layer.size) as writer:
                repo.fetch_blob(layer, writer)
            with store.reader_at(layer) as reader:
                assert reader.read_at(0, reader.size) == blobs[layers.index(layer)]
        assert repo.read_blob_range(layers[0].digest, 3, 100) == blobs[0][3:103]

    # the registry itself holds a complete image: every blob of the manifest is there
    with RegistryClient(registry.host, plain_http=True) as direct:
        repo = direct.repository(name)
        manifest = Manifest.from_bytes(repo.get_manifest("v1")[1])
        for layer in (*manifest.layers, manifest.config):
            assert repo.head_blob(layer.digest) == layer.size
    return proxy.seen


def test_gives_up_with_a_clear_error(registry: Registry) -> None:  # noqa: F811
    policy = RetryPolicy(attempts=3, base_delay=0.001, max_delay=0.01)
    data = b"x" * 1000
    blob = Descriptor(mt.OCI_LAYER, Digest.of(data), len(data))
    with start_fault_proxy(registry.host, Faults(error_500=1.0)) as proxy, \
            RegistryClient(proxy.host, plain_http=True, retry=policy) as client:  # fmt: skip
        repo = client.repository("rafs/down")
        message = rf"^docker://{proxy.host}/rafs/down:v1: HTTP 500 after 3 attempts$"
        with pytest.raises(Unavailable, match=message):
            repo.get_manifest("v1")
        assert len(proxy.seen) == 3
        with pytest.raises(Unavailable, match=r"rafs/down@sha256:\w+: HTTP 500 after 3 attempts"):
            repo.push_blob(data, blob)

    dropped = r"rafs/down:v1: connection failed \(RemoteProtocolError: .*\) after 3 attempts"
    with start_fault_proxy(registry.host, Faults(drop_before=1.0)) as proxy, \
            RegistryClient(proxy.host, plain_http=True, retry=policy) as client, \
            pytest.raises(Unavailable, match=dropped):  # fmt: skip
        client.repository("rafs/down").get_manifest("v1")

    refused = r"^docker://127.0.0.1:1: connection failed \(ConnectError"
    with RegistryClient("127.0.0.1:1", plain_http=True, retry=policy) as client, \
            pytest.raises(Unavailable, match=refused):  # fmt: skip
        client.ping()
