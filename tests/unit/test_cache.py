"""The ref cache: chain ids, compression variants and their labels, merge_nydus, and the
guarantee that concurrent `ensure_compression` calls convert once."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import subprocess
import sys
import tarfile
import threading
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest
import zstandard

from rafs.cache import CacheManager, Compression, ImmutableRef, merge_nydus
from rafs.cache.variants import MEDIA_TYPE_LABEL, VARIANT_LABEL_PREFIX
from rafs.content import Store, read_blob, write_blob
from rafs.content.local import LocalStore
from rafs.content.memory import MemoryStore
from rafs.digest import Digest, chain_id
from rafs.errors import FormatError, InvalidArgument, NotFound
from rafs.oci import Descriptor
from rafs.oci.constants import NYDUS_BLOB
from rafs.oci.constants import OCI_LAYER_GZIP as LAYER_GZIP
from rafs.reader.artifact import open_artifact_reader
from rafs.reader.blobs import read_file
from tests.conformance.test_content_stores import FACTORIES, STORE_PARAMS
from tests.support.containerd import containerd
from tests.support.tarballs import make_tar

__all__ = ["containerd"]  # the fixture FACTORIES["containerd"] asks for

UNCOMPRESSED = "containerd.io/uncompressed"
BOOTSTRAP = "containerd.io/snapshot/nydus-bootstrap"
NYDUS_ANNOTATION = "containerd.io/snapshot/nydus-blob"

LOWER = make_tar([("etc", None, {}), ("etc/os-release", b"ID=test\n", {}),
                  ("bin", None, {}), ("bin/tool", b"\x7fELF" + bytes(5000), {"mode": 0o755})])
UPPER = make_tar([("etc", None, {}), ("etc/.wh.os-release", b"", {}),
                  ("etc/hostname", b"box\n", {})])  # fmt: skip


def add_gzip_layer(store: Store, tar: bytes) -> Descriptor:
    """Store `tar` gzip-compressed; its descriptor carries the diffID as BuildKit needs."""
    blob = gzip.compress(tar, mtime=0)
    digest = write_blob(store, "import", io.BytesIO(blob), expected=Digest.of(blob))
    return Descriptor(LAYER_GZIP, digest, len(blob), {UNCOMPRESSED: Digest.of(tar)})


def make_chain(cache: CacheManager, *tars: bytes) -> ImmutableRef:
    ref = None
    for tar in tars:
        ref = cache.get_by_blob(add_gzip_layer(cache.store, tar), ref)
    assert ref is not None
    return ref


@pytest.fixture(params=STORE_PARAMS)
def cache(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[CacheManager]:
    """A cache over each kind of store: memory, local, and a real containerd."""
    store = FACTORIES[request.param](tmp_path, request)
    yield CacheManager(store, tmp_path / "cache")
    close = getattr(store, "close", None)
    if close is not None:
        close()


def test_chain_and_blob_chain_ids_follow_buildkit(cache: CacheManager) -> None:
    top = make_chain(cache, LOWER, UPPER)
    base = top.parent
    assert base is not None and base.parent is None
    assert [ref.id for ref in top.layer_chain()] == [base.id, top.id]
    lower_diff, upper_diff = Digest.of(LOWER), Digest.of(UPPER)
    assert base.chain_id == lower_diff
    assert top.chain_id == chain_id([lower_diff, upper_diff])
    blob_ids = [chain_id([ref.record.blob, ref.diff_id]) for ref in (base, top)]
    assert base.record.blob_chain_id == blob_ids[0]
    assert top.record.blob_chain_id == chain_id(blob_ids)
    # The same blob on the same parent is the same ref; on no parent it is another.
    again = cache.get_by_blob(top.descriptor(), base)
    assert again.id == top.id
    assert cache.get_by_blob(top.descriptor(), None).id != top.id
    assert cache.get(top.id).record == top.record


def test_refs_persist_across_managers(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store")
    top = make_chain(CacheManager(store, tmp_path / "cache"), LOWER, UPPER)
    reopened = CacheManager(LocalStore(tmp_path / "store"), tmp_path / "cache").get(top.id)
    assert [ref.record for ref in reopened.layer_chain()] == [
        ref.record for ref in top.layer_chain()
    ]


def test_get_by_blob_refuses_what_it_cannot_chain(cache: CacheManager) -> None:
    desc = add_gzip_layer(cache.store, LOWER)
    with pytest.raises(InvalidArgument, match=UNCOMPRESSED.replace(".", r"\.")):
        cache.get_by_blob(Descriptor(desc.media_type, desc.digest, desc.size))
    with pytest.raises(InvalidArgument, match="not a layer media type"):
        cache.get_by_blob(Descriptor("application/json", desc.digest, desc.size,
                                     desc.annotations))  # fmt: skip
    missing = Digest.of(b"never stored")
    with pytest.raises(NotFound):
        cache.get_by_blob(Descriptor(LAYER_GZIP, missing, 3, {UNCOMPRESSED: missing}))
    with pytest.raises(NotFound, match="not found"):
        cache.get("nosuchref")


def _untar(tar: bytes) -> dict[str, bytes]:
    with tarfile.open(fileobj=io.BytesIO(tar)) as archive:
        return {m.name.removeprefix("./"): archive.extractfile(m).read()  # type: ignore[union-attr]
                for m in archive if m.isfile()}  # fmt: skip


def test_variants_are_converted_linked_and_kept_apart(cache: CacheManager) -> None:
    """BuildKit's nydus test: nydus, then gzip and zstd of the same refs - each is its own
    compression, never another's; the primary is used where it already fits."""
    top = make_chain(cache, LOWER, UPPER)
    store = cache.store
    nydus = [ref.get_blob_with_compression_with_retry(Compression.NYDUS)
             for ref in top.layer_chain()]  # fmt: skip
    for ref, desc in zip(top.layer_chain(), nydus, strict=True):
        assert desc.media_type == NYDUS_BLOB
        assert desc.annotations == {UNCOMPRESSED: desc.digest, NYDUS_ANNOTATION: "true"}
        assert desc.size == store.info(desc.digest).size
        # Linked both ways, descriptor kept on the variant.
        primary = store.info(ref.record.blob).labels
        variant = store.info(desc.digest).labels
        assert primary[VARIANT_LABEL_PREFIX + desc.digest] == desc.digest
        assert variant[VARIANT_LABEL_PREFIX + ref.record.blob] == ref.record.blob
        assert variant[MEDIA_TYPE_LABEL] == NYDUS_BLOB
        assert variant[UNCOMPRESSED] == desc.digest
    for ref in top.layer_chain():
        gz = ref.get_blob_with_compression_with_retry(Compression.GZIP)
        assert gz == ref.descriptor()  # the primary already is gzip: no conversion
        zst = ref.get_blob_with_compression_with_retry(Compression.ZSTD)
        assert zst.media_type == "application/vnd.oci.image.layer.v1.tar+zstd"
        assert zst.annotations == {UNCOMPRESSED: ref.diff_id}
        tar = zstandard.ZstdDecompressor().stream_reader(
            io.BytesIO(read_blob(store, zst.digest))).read()  # fmt: skip
        assert Digest.of(tar) == ref.diff_id
        plain = ref.get_blob_with_compression_with_retry(Compression.UNCOMPRESSED)
        assert Digest(plain.digest) == ref.diff_id
        # Asking again finds, never converts.
        assert not ref.ensure_compression(Compression.ZSTD)
        assert ref.get_blob_with_compression(Compression.NYDUS).media_type == NYDUS_BLOB


def test_reverse_order_gives_the_same_variants(tmp_path: Path) -> None:
    """gzip, zstd, then nydus on a fresh cache: the same blobs as the other order."""
    results = {}
    for order in ("forward", "reverse"):
        cache = CacheManager(MemoryStore(), tmp_path / order)
        top = make_chain(cache, LOWER, UPPER)
        kinds = list(Compression)
        if order == "reverse":
            kinds.reverse()
        found = {kind: [ref.get_blob_with_compression_with_retry(kind).digest
                        for ref in top.layer_chain()] for kind in kinds}  # fmt: skip
        results[order] = (found, merge_nydus(top))
    assert results["forward"] == results["reverse"]


def test_a_nydus_primary_converts_back_to_tar(cache: CacheManager) -> None:
    base = make_chain(cache, LOWER)
    nydus = base.get_blob_with_compression_with_retry(Compression.NYDUS)
    ref = cache.get_by_blob(nydus)
    assert ref.descriptor().media_type == NYDUS_BLOB
    gz = ref.get_blob_with_compression_with_retry(Compression.GZIP)
    tar = gzip.decompress(read_blob(cache.store, gz.digest))
    assert _untar(tar) == _untar(LOWER)
    assert gz.annotations[UNCOMPRESSED] == Digest.of(tar)


def test_merge_nydus_descriptor_and_bootstrap(cache: CacheManager, tmp_path: Path) -> None:
    top = make_chain(cache, LOWER, UPPER)
    desc = merge_nydus(top)
    again = merge_nydus(top)
    assert again == desc
    store = cache.store
    blob = read_blob(store, desc.digest)
    assert desc.media_type == LAYER_GZIP
    assert desc.size == len(blob) == store.info(desc.digest).size
    tar = gzip.decompress(blob)
    assert desc.annotations == {UNCOMPRESSED: Digest.of(tar), BOOTSTRAP: "true"}
    labels = store.info(desc.digest).labels
    assert labels[UNCOMPRESSED] == Digest.of(tar)
    assert labels["buildkit.io/blob/annotation." + BOOTSTRAP] == "true"
    with tarfile.open(fileobj=io.BytesIO(tar)) as archive:
        members = archive.getmembers()
        assert [(m.name, m.mode, m.mtime) for m in members[:2]] == [
            ("image", 0o755, 0), ("image/image.boot", 0o444, 0)]
        # Then each Nydus layer's blob.meta, named by its blob id (the layer digest hex).
        assert [(m.name.endswith(".blob.meta"), m.mode) for m in members[2:]] == [
            (True, 0o444), (True, 0o444)]
        bootstrap = archive.extractfile(members[1]).read()  # type: ignore[union-attr]
    # gzip header: no name, mtime 0.
    assert blob[3] == 0 and blob[4:8] == bytes(4)
    # With the layers' nydus blobs as its blob folder, the bootstrap is the applied chain.
    blob_dir = tmp_path / "blobs"
    blob_dir.mkdir()
    blob_ids = []
    for ref in top.layer_chain():
        layer = ref.get_blob_with_compression(Compression.NYDUS)
        blob_ids.append(Digest(layer.digest).hex)
        (blob_dir / blob_ids[-1]).write_bytes(read_blob(store, layer.digest))
    with open_artifact_reader(io.BytesIO(bootstrap), "merged", blob_dir) as artifact:
        image = artifact.image
        assert [blob.id for blob in image.blobs] == blob_ids
        assert read_file(artifact.blobs, image.lookup("/etc/hostname")) == b"box\n"
        assert read_file(artifact.blobs, image.lookup("/bin/tool")) == b"\x7fELF" + bytes(5000)
        with pytest.raises(NotFound):
            image.lookup("/etc/os-release")


def test_merge_nydus_ignores_a_stale_ingest(cache: CacheManager) -> None:
    """BuildKit would resume a leftover `nydus-merge-<chainID>` ingest; it must not count."""
    top = make_chain(cache, LOWER, UPPER)
    with cache.store.writer(f"nydus-merge-{top.chain_id}") as stale:
        stale.write(b"left over by a crashed merge")
    desc = merge_nydus(top)
    blob = read_blob(cache.store, desc.digest)
    assert zlib.decompressobj(31).decompress(blob)[:5] == b"image"
    assert Digest.of(blob) == desc.digest


def test_merge_nydus_refuses_what_is_not_a_ref(cache: CacheManager) -> None:
    with pytest.raises(InvalidArgument, match="unsupported ref type"):
        merge_nydus("sha256:" + "0" * 64)


def _ensure_in_process(store_root: str, cache_root: str, ref_id: str, go: str) -> bool:
    while not os.path.exists(go):
        pass
    cache = CacheManager(LocalStore(store_root), Path(cache_root))
    return cache.get(ref_id).ensure_compression(Compression.NYDUS)


def test_concurrent_ensure_converts_exactly_once(tmp_path: Path) -> None:
    """8 threads and 2 processes ask for the nydus variant of one layer at the same time."""
    store_root, cache_root, go = tmp_path / "store", tmp_path / "cache", tmp_path / "go"
    cache = CacheManager(LocalStore(store_root), cache_root)
    big = make_tar([(f"f{n}", hashlib.sha256(bytes([n])).digest() * 40000, {})
                    for n in range(8)])  # fmt: skip
    ref = make_chain(cache, big)
    script = (f"from tests.unit.test_cache import _ensure_in_process as e; "
              f"print(e({str(store_root)!r}, {str(cache_root)!r}, {ref.id!r}, {str(go)!r}))")
    processes = [subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE,
                                  text=True, cwd=Path(__file__).parents[2])
                 for _ in range(2)]  # fmt: skip
    results: list[bool] = []
    threads = [threading.Thread(target=lambda: results.append(
        _ensure_in_process(str(store_root), str(cache_root), ref.id, str(go))))
        for _ in range(8)]  # fmt: skip
    for thread in threads:
        thread.start()
    go.touch()
    for thread in threads:
        thread.join(timeout=120)
    outputs = [process.communicate(timeout=120)[0].strip() for process in processes]
    assert all(process.returncode == 0 for process in processes), outputs
    results += [output == "True" for output in outputs]
    assert len(results) == 10 and results.count(True) == 1, (results, outputs)
    nydus = [info for info in cache.store.walk(f"labels.{MEDIA_TYPE_LABEL}=={NYDUS_BLOB}")]
    assert len(nydus) == 1


@pytest.mark.parametrize("compression", [Compression.ZSTD, Compression.NYDUS])
def test_a_corrupt_layer_is_a_format_error_naming_it(tmp_path: Path,
                                                    compression: Compression) -> None:  # fmt: skip
    """gzip whose deflate stream is damaged: converting it fails with one message naming
    the layer, and no variant is linked."""
    cache = CacheManager(MemoryStore(), tmp_path / "cache")
    blob = bytearray(gzip.compress(LOWER, mtime=0))
    blob[len(blob) // 2] ^= 0xFF
    digest = write_blob(cache.store, "bad", io.BytesIO(bytes(blob)), expected=Digest.of(blob))
    ref = cache.get_by_blob(Descriptor(LAYER_GZIP, digest, len(blob),
                                       {UNCOMPRESSED: Digest.of(LOWER)}))  # fmt: skip
    with pytest.raises(FormatError, match=f"layer {digest}"):
        ref.ensure_compression(compression)
    with pytest.raises(NotFound):
        ref.get_blob_with_compression(compression)
