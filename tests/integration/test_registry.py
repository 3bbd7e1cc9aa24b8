"""The registry client against a real Debian `docker-registry` on loopback: blobs, manifests,
ranges, mounts, verified and resumed downloads."""

from __future__ import annotations

import io
import random
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from rafs.content.local import LocalStore
from rafs.digest import Digest
from rafs.errors import FormatError, IntegrityError, InvalidArgument, NotFound
from rafs.oci import Descriptor, Index, Manifest, Platform, parse_manifest
from rafs.oci import constants as mt
from rafs.registry import MAX_MANIFEST_SIZE, RegistryClient, Repository
from tests.support.fault_proxy import Faults, start_fault_proxy
from tests.support.registry import Registry, registry  # noqa: F401  (fixture)


def _blob(size: int, seed: int) -> tuple[bytes, Descriptor]:
    data = random.Random(seed).randbytes(size)
    return data, Descriptor(mt.OCI_LAYER_GZIP, Digest.of(data), len(data))


@pytest.fixture
def client(registry: Registry) -> Iterator[RegistryClient]:  # noqa: F811
    with RegistryClient(registry.host, plain_http=True) as c:
        yield c


def _push_image(repo: Repository, tag: str, layers: list[bytes]) -> tuple[Manifest, Descriptor]:
    descriptors = []
    for i, data in enumerate(layers):
        descriptor = Descriptor(mt.NYDUS_BLOB if i else mt.OCI_LAYER_GZIP, Digest.of(data),
                                len(data), {mt.NYDUS_BLOB_ANNOTATION: "true"} if i else {})
        repo.push_blob(data, descriptor, chunk_size=1 << 20 if i % 2 else None)
        descriptors.append(descriptor)
    config = b'{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}'
    config_descriptor = Descriptor(mt.OCI_CONFIG, Digest.of(config), len(config))
    repo.push_blob(config, config_descriptor)
    manifest = Manifest(config_descriptor, tuple(descriptors),
                        annotations={"org.example.note": "rafs test"},
                        extra={"x-vendor": {"kept": [1, 2]}})  # fmt: skip
    return manifest, repo.put_manifest(manifest, tag)


def test_ping(client: RegistryClient) -> None:
    client.ping()


def test_push_monolithic_and_chunked(client: RegistryClient, tmp_path: Path) -> None:
    repo = client.repository("rafs/blobs")
    small, small_d = _blob(3 << 20, 1)
    assert repo.push_blob(small, small_d) is True
    assert repo.head_blob(small_d.digest) == len(small)
    assert repo.push_blob(small, small_d) is False  # already there: nothing sent

    big, big_d = _blob((5 << 20) + 12345, 2)
    source = tmp_path / "big"
    source.write_bytes(big)
    with source.open("rb") as f:
        f.seek(777)  # read from 0 whatever the position
        assert repo.push_blob(f, big_d, chunk_size=(1 << 20) + 3) is True
    assert repo.head_blob(big_d.digest) == len(big)
    assert repo.get_blob(big_d) == big

    empty, empty_d = _blob(0, 3)
    assert repo.push_blob(empty, empty_d, chunk_size=1024) is True
    assert repo.get_blob(empty_d) == b""


def test_push_wrong_digest_rejected(client: RegistryClient) -> None:
    repo = client.repository("rafs/wrong")
    data, descriptor = _blob(1000, 4)
    lie = Descriptor(descriptor.media_type, Digest.of(b"other"), len(data))
    with pytest.raises(InvalidArgument, match=r"rafs/wrong@sha256:\w+: DIGEST_INVALID"):
        repo.push_blob(data, lie)
    assert not repo.has_blob(lie.digest)


def test_manifest_round_trip(client: RegistryClient) -> None:
    repo = client.repository("rafs/image")
    layers = [_blob(200_000, 5)[0], _blob(1_500_000, 6)[0], _blob(10, 7)[0]]
    manifest, pushed = _push_image(repo, "v1", layers)
    assert pushed.digest == Digest.of(manifest.to_bytes())

    for reference in ("v1", pushed.digest):
        descriptor, data = repo.get_manifest(reference)
        assert descriptor == Descriptor(mt.OCI_MANIFEST, pushed.digest, len(data))
        assert data == manifest.to_bytes()
        back = parse_manifest(descriptor.media_type, data)
        assert back == manifest and back.to_bytes() == data
        assert isinstance(back, Manifest) and back.extra == {"x-vendor": {"kept": [1, 2]}}
        assert back.layers[1].media_type == mt.NYDUS_BLOB
        assert back.layers[1].annotations[mt.NYDUS_BLOB_ANNOTATION] == "true"
    assert repo.head_manifest("v1").digest == pushed.digest

    index = Index((Descriptor(mt.OCI_MANIFEST, pushed.digest, pushed.size,
                              platform=Platform("linux", "amd64")),))  # fmt: skip
    index_descriptor = repo.put_manifest(index, "multi")
    descriptor, data = repo.get_manifest("multi")
    assert descriptor.media_type == mt.OCI_INDEX and descriptor.digest == index_descriptor.digest
    assert Index.from_bytes(data) == index

    docker = Manifest(manifest.config, manifest.layers[:1], media_type=mt.DOCKER_MANIFEST)
    repo.put_manifest(docker, "docker")
    descriptor, data = repo.get_manifest("docker")
    assert descriptor.media_type == mt.DOCKER_MANIFEST and data == docker.to_bytes()

    with pytest.raises(NotFound, match=r"^docker://127\.0\.0\.1:\d+/rafs/image:nope: "
                                       r"MANIFEST_UNKNOWN: manifest unknown \(HTTP 404\)$"):
        repo.get_manifest("nope")


def test_manifest_size_limit(client: RegistryClient) -> None:
    repo = client.repository("rafs/huge")
    config, config_d = _blob(10, 8)
    repo.push_blob(config, config_d)
    huge = Manifest(config_d, (), annotations={"pad": "x" * MAX_MANIFEST_SIZE})
    with pytest.raises(FormatError, match="rafs/huge:huge: manifest larger than 4194304"):
        repo.put_manifest(huge, "huge")
    # the registry keeps the same limit, so a server that sends one more is a stand-in
    body = huge.to_bytes()

    def serve(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=body, headers={"Content-Type": mt.OCI_MANIFEST})

    http = httpx.Client(transport=httpx.MockTransport(serve))
    too_big = r"invalid/rafs/huge:huge: .* more than 4194304"
    with RegistryClient("registry.invalid", http=http) as fake, \
            pytest.raises(FormatError, match=too_big):  # fmt: skip
        fake.repository("rafs/huge").get_manifest("huge")


def test_ranged_get(client: RegistryClient) -> None:
    repo = client.repository("rafs/range")
    data, descriptor = _blob(100_000, 9)
    repo.push_blob(data, descriptor)
    assert repo.read_blob_range(descriptor.digest, 0, 10) == data[:10]
    assert repo.read_blob_range(descriptor.digest, 54_321, 4096) == data[54_321:58_417]
    assert repo.read_blob_range(descriptor.digest, 99_990, 100) == data[99_990:]


def test_cross_repository_mount(client: RegistryClient) -> None:
    source, target = client.repository("rafs/mount-src"), client.repository("rafs/mount-dst")
    data, descriptor = _blob(50_000, 10)
    source.push_blob(data, descriptor)
    assert not target.has_blob(descriptor.digest)
    assert target.mount_blob(descriptor.digest, source.name) is True
    assert target.get_blob(descriptor) == data
    unknown = Digest.of(b"never pushed")
    assert target.mount_blob(unknown, source.name) is False
    assert not target.has_blob(unknown)


def test_download_verified_and_resumed(client: RegistryClient, registry: Registry,  # noqa: F811
                                       tmp_path: Path) -> None:  # fmt: skip
    repo = client.repository("rafs/download")
    data, descriptor = _blob(3_000_000, 11)
    repo.push_blob(data, descriptor)
    store = LocalStore(tmp_path / "store")

    # a first attempt stopped after 1 MB; its progress stays in the ingest
    with store.writer("pull-1", descriptor.size) as writer:
        writer.write(data[:1_000_000])
    with start_fault_proxy(registry.host, Faults()) as proxy, \
            RegistryClient(proxy.host, plain_http=True) as via_proxy:  # fmt: skip
        with store.writer("pull-1", descriptor.size) as writer:
            assert writer.status().offset == 1_000_000
            via_proxy.repository(repo.name).fetch_blob(descriptor, writer)
        gets = [s for s in proxy.seen if s.method == "GET" and "/blobs/" in s.path]
        assert [s.headers.get("Range") for s in gets] == ["bytes=1000000-"]
    with store.reader_at(descriptor.digest) as reader:
        assert reader.read_at(0, reader.size) == data

    # an already complete blob: AlreadyExists at commit is success
    with store.writer("pull-2", descriptor.size) as writer:
        assert repo.fetch_blob(descriptor, writer) == descriptor.digest


def test_digest_mismatch_never_committed(registry: Registry, tmp_path: Path) -> None:  # noqa: F811
    data, descriptor = _blob(400_000, 12)
    with RegistryClient(registry.host, plain_http=True) as direct:
        direct.repository("rafs/liar").push_blob(data, descriptor)
    store = LocalStore(tmp_path / "store")
    with start_fault_proxy(registry.host, Faults(corrupt=True)) as proxy, \
            RegistryClient(proxy.host, plain_http=True) as liar:  # fmt: skip
        repo = liar.repository("rafs/liar")
        mismatch = f"rafs/liar@{descriptor.digest}: downloaded"
        with store.writer("pull", descriptor.size) as writer, \
                pytest.raises(IntegrityError, match=mismatch):  # fmt: skip
            repo.fetch_blob(descriptor, writer)
        with pytest.raises(IntegrityError):
            repo.get_blob(descriptor)
    with pytest.raises(NotFound):
        store.info(descriptor.digest)
    assert [s.offset for s in store.list_statuses()] == [0]  # what was written is discarded


def test_redirect_never_carries_credentials(registry: Registry) -> None:  # noqa: F811
    from rafs.registry import Credentials
    from tests.support.fault_proxy import start_blob_store

    data, descriptor = _blob(70_000, 13)
    with RegistryClient(registry.host, plain_http=True) as direct:
        direct.repository("rafs/redirect").push_blob(data, descriptor)
    with start_blob_store(registry) as store, \
            start_fault_proxy(registry.host,
                              Faults(redirect_blobs_to=f"http://{store.host}")) as proxy, \
            RegistryClient(proxy.host, plain_http=True,
                           credentials=Credentials("alice", "secret")) as client:  # fmt: skip
        repo = client.repository("rafs/redirect")
        # make the client hold credentials for the registry origin: a Basic challenge
        client._auth.challenged('Basic realm="x"', repo.pull, client._fetch_token)
        assert repo.get_blob(descriptor) == data
        assert repo.read_blob_range(descriptor.digest, 5, 5) == data[5:10]
        assert [s.headers.get("Authorization") for s in proxy.seen if "/blobs/" in s.path] \
            == [Credentials("alice", "secret").basic()] * 2  # fmt: skip
        assert len(store.seen) == 2
        assert all("Authorization" not in s.headers for s in store.seen)


def test_stream_source_short(client: RegistryClient) -> None:
    data, descriptor = _blob(1000, 14)
    with pytest.raises(FormatError, match="short"):
        client.repository("rafs/short").push_blob(io.BytesIO(data[:500]), descriptor,
                                                  chunk_size=300)  # fmt: skip
