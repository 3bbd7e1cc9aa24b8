"""`rafs convert` against real components: umoci builds the image, skopeo pushes and pulls
it, Debian's docker-registry serves it, and the kernel mounts the result, which must equal
`umoci unpack` of the source.

The image is test_merge_umoci's four layers (whiteouts, an opaque directory, file <->
directory replacements, hardlinks, a metadata-only layer).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from rafs.content.local import LocalStore
from rafs.digest import Digest
from rafs.oci import Descriptor, ImageConfig, Index, Manifest, OCILayout, Platform
from rafs.oci import constants as mt
from tests.conformance.test_merge_umoci import TAG, UmociImage, _tools, umoci_image
from tests.conftest import RafsRunner
from tests.support import oci
from tests.support.containerd import Containerd, containerd  # noqa: F401  (fixture)
from tests.support.fault_proxy import Faults, start_fault_proxy
from tests.support.kernel import mount_erofs
from tests.support.registry import Registry, registry, skopeo
from tests.support.tarballs import make_tar
from tests.support.tree import compare, snapshot

pytestmark = pytest.mark.kernel
__all__ = ["_tools", "registry", "umoci_image"]  # fixtures shared with other modules


def _nydus_manifest_is_right(manifest: dict[str, Any], layers: int) -> None:
    """N Nydus blob layers then the bootstrap, annotated as nydus-snapshotter does."""
    assert manifest["mediaType"] == mt.OCI_MANIFEST
    kinds = [layer["mediaType"] for layer in manifest["layers"]]
    assert kinds == [mt.NYDUS_BLOB] * layers + [mt.OCI_LAYER_GZIP]
    for layer in manifest["layers"][:-1]:
        assert layer["annotations"] == {mt.NYDUS_BLOB_ANNOTATION: "true"}
    assert manifest["layers"][-1]["annotations"] == {
        mt.NYDUS_BOOTSTRAP_ANNOTATION: "true", mt.NYDUS_FS_VERSION_ANNOTATION: "6"}


def _mounted_tree(layout: Path, tag: str, rafs: RafsRunner, work: Path) -> dict[str, Any]:
    """Export the Nydus image tagged `tag` in `layout` and snapshot its kernel mount."""
    store = OCILayout.open(layout)
    manifest = Manifest.from_bytes(store.read_blob(store.resolve(tag)))
    config = ImageConfig.from_bytes(store.read_blob(manifest.config))
    bootstrap = store.blob_path(manifest.layers[-1].digest)
    tar = gzip.decompress(bootstrap.read_bytes())
    assert config.diff_ids == (*(layer.digest for layer in manifest.layers[:-1]),
                               Digest.of(tar))  # fmt: skip
    assert config.history[-1].comment == "Nydus Bootstrap Layer"
    image = work / f"{tag}.img"
    rafs("export", "--block", bootstrap, "-o", image)  # its blobs are beside it
    with mount_erofs(image, work / f"mnt-{tag}") as mnt:
        return snapshot(mnt)


def _equals_umoci(umoci_image: UmociImage, actual: dict[str, Any]) -> None:
    # The top layer has no `./` entry: see test_merge_umoci for the root's mtime.
    problems = compare(snapshot(umoci_image.references[-1]), actual, ignore_root_mtime=True)
    assert problems == [], f"{len(problems)} differences:\n" + "\n".join(problems[:80])


def test_layout_to_layout(umoci_image: UmociImage, rafs: RafsRunner, tmp_path: Path) -> None:
    store = tmp_path / "store"
    target = tmp_path / "nydus"
    first = rafs("convert", f"oci:{umoci_image.layout}:{TAG}", f"oci:{target}:nydus",
                 "--store", store).stdout.decode()  # fmt: skip
    assert "4 layers (4 converted now)" in first, first
    layout = OCILayout.open(target)
    _nydus_manifest_is_right(json.loads(layout.read_blob(layout.resolve("nydus"))), 4)
    _equals_umoci(umoci_image, _mounted_tree(target, "nydus", rafs, tmp_path))
    rafs("check", f"oci:{target}:nydus")  # the reference opens as an image, every chunk good

    # A second run finds every conversion in the store and gives the same manifest.
    again = rafs("convert", f"oci:{umoci_image.layout}:{TAG}", f"oci:{target}:again",
                 "--store", store).stdout.decode()  # fmt: skip
    assert "(0 converted now)" in again, again
    assert layout.resolve("again").digest == layout.resolve("nydus").digest

    # Back to OCI: umoci unpacks the reverse-converted image to the same tree.
    rafs("convert", "--reverse", f"oci:{target}:nydus", f"oci:{target}:oci", "--store", store)
    manifest = Manifest.from_bytes(layout.read_blob(layout.resolve("oci")))
    assert [layer.media_type for layer in manifest.layers] == [mt.OCI_LAYER_GZIP] * 4
    config = ImageConfig.from_bytes(layout.read_blob(manifest.config))
    assert len(config.diff_ids) == 4
    assert all(h.comment != "Nydus Bootstrap Layer" for h in config.history)
    unpacked = oci.unpack_rootfs(target, "oci", tmp_path / "bundle")
    problems = compare(snapshot(umoci_image.references[-1]), snapshot(unpacked),
                       ignore_root_mtime=True)  # fmt: skip
    assert problems == [], "\n".join(problems[:80])


def test_registry_to_registry(
    umoci_image: UmociImage, registry: Registry, rafs: RafsRunner, tmp_path: Path
) -> None:
    source = f"docker://{registry.host}/rafs/convert:v1"
    target = f"docker://{registry.host}/rafs/convert:nydus"
    skopeo("copy", "--dest-tls-verify=false", f"oci:{umoci_image.layout}:{TAG}", source,
           tmpdir=tmp_path)  # fmt: skip
    rafs("convert", source, target, "--plain-http", "--with-referrer",
         "--store", tmp_path / "store")  # fmt: skip
    raw = json.loads(skopeo("inspect", "--raw", "--tls-verify=false", target, tmpdir=tmp_path))
    _nydus_manifest_is_right(raw, 4)
    source_digest = Manifest.from_bytes(
        OCILayout.open(umoci_image.layout).read_blob(
            OCILayout.open(umoci_image.layout).resolve(TAG))).digest()  # fmt: skip
    assert raw["subject"]["digest"] == source_digest
    rafs("check", target, "--plain-http")  # read straight from the registry
    # skopeo copies the result out; the copy mounts as umoci unpacks the source.
    skopeo("copy", "--src-tls-verify=false", target, f"oci:{tmp_path / 'out'}:nydus",
           tmpdir=tmp_path)  # fmt: skip
    _equals_umoci(umoci_image, _mounted_tree(tmp_path / "out", "nydus", rafs, tmp_path))


def test_blobs_already_in_another_repository_of_the_registry_are_mounted_not_uploaded(
    umoci_image: UmociImage, registry: Registry, rafs: RafsRunner, tmp_path: Path
) -> None:
    source, store = f"oci:{umoci_image.layout}:{TAG}", tmp_path / "store"
    with start_fault_proxy(registry.host, Faults()) as proxy:
        rafs("convert", source, f"docker://{proxy.host}/rafs/first:nydus", "--plain-http",
             "--store", store)  # fmt: skip
        first = len(proxy.seen)
        rafs("convert", source, f"docker://{proxy.host}/rafs/second:nydus", "--plain-http",
             "--store", store)  # fmt: skip
        second = proxy.seen[first:]
    target = f"docker://{registry.host}/rafs/second:nydus"
    raw = json.loads(skopeo("inspect", "--raw", "--tls-verify=false", target, tmpdir=tmp_path))
    blobs = {entry["digest"] for entry in (raw["config"], *raw["layers"])}
    mounts = {seen.path for seen in second if seen.method == "POST" and "mount=" in seen.path}
    assert {path.split("mount=")[1].split("&")[0].replace("%3A", ":") for path in mounts} == blobs
    assert all("from=rafs%2Ffirst" in path for path in mounts)
    assert not [seen for seen in second if seen.method in ("PATCH", "PUT")
                and "/blobs/uploads/" in seen.path]  # nothing uploaded  # fmt: skip
    rafs("check", target, "--plain-http")  # the mounted image reads whole
    labels = LocalStore(store).info(next(iter(blobs))).labels
    assert labels[f"containerd.io/distribution.source.{proxy.host}"] == "rafs/first,rafs/second"


def test_two_platform_index(umoci_image: UmociImage, rafs: RafsRunner, tmp_path: Path) -> None:
    """An index of two platforms (the umoci image, its config relabelled arm64) converts to
    an index of the same two platforms, each a Nydus image; `--platform` picks one."""
    source_dir = tmp_path / "multi"
    shutil.copytree(umoci_image.layout, source_dir)
    layout = OCILayout.open(source_dir)
    amd64 = layout.resolve(TAG)
    manifest = Manifest.from_bytes(layout.read_blob(amd64))
    config = ImageConfig.from_bytes(layout.read_blob(manifest.config))
    arm_config = replace(config, architecture="arm64").to_bytes()
    arm_manifest = replace(manifest, config=Descriptor(
        mt.OCI_CONFIG, layout.write_blob(arm_config), len(arm_config)))  # fmt: skip
    arm_data = arm_manifest.to_bytes()
    entries = (
        Descriptor(mt.OCI_MANIFEST, amd64.digest, amd64.size,
                   platform=Platform("linux", config.architecture)),
        Descriptor(mt.OCI_MANIFEST, layout.write_blob(arm_data), len(arm_data),
                   platform=Platform("linux", "arm64")),
    )  # fmt: skip
    layout.put_manifest(Index(manifests=entries), "multi")

    target = tmp_path / "nydus"
    rafs("convert", f"oci:{source_dir}:multi", f"oci:{target}:multi", "--store", tmp_path / "s")
    out = OCILayout.open(target)
    index = Index.from_bytes(out.read_blob(out.resolve("multi")))
    assert [str(entry.platform) for entry in index.manifests] == [
        f"linux/{config.architecture}", "linux/arm64"]
    for entry in index.manifests:
        _nydus_manifest_is_right(json.loads(out.read_blob(entry)), 4)
        child = Manifest.from_bytes(out.read_blob(entry))
        arch = ImageConfig.from_bytes(out.read_blob(child.config)).architecture
        assert arch == entry.platform.architecture  # type: ignore[union-attr]

    rafs("convert", f"oci:{source_dir}:multi", f"oci:{target}:arm", "--platform",
         "linux/arm64", "--store", tmp_path / "s")  # fmt: skip
    only = Index.from_bytes(out.read_blob(out.resolve("arm")))
    assert [str(entry.platform) for entry in only.manifests] == ["linux/arm64"]


def test_faulty_registry_never_leaves_a_dangling_manifest(
    umoci_image: UmociImage, registry: Registry, rafs: RafsRunner, tmp_path: Path
) -> None:
    """Through a proxy that answers 500 and drops connections (a seeded pattern: the same
    faults for the same requests in every run), each conversion succeeds or fails with one
    clear line; a manifest that exists names only present blobs."""
    source = f"docker://{registry.host}/rafs/faulty:v1"
    skopeo("copy", "--dest-tls-verify=false", f"oci:{umoci_image.layout}:{TAG}", source,
           tmpdir=tmp_path)  # fmt: skip
    outcomes = {}
    for seed in range(3):
        faults = Faults(error_500=0.2, drop_before=0.1, drop_after=0.1, cut_body=0.1, seed=seed)
        with start_fault_proxy(registry.host, faults) as proxy:
            result = rafs("convert", f"docker://{proxy.host}/rafs/faulty:v1",
                          f"docker://{proxy.host}/rafs/faulty:nydus{seed}", "--plain-http",
                          "--store", tmp_path / f"store{seed}", check=False)  # fmt: skip
        what = f"fault seed {seed} ({len(proxy.injected)} faults: {proxy.injected[:8]})"
        lines = result.stderr.splitlines()
        assert result.returncode == 0 or (len(lines) == 1 and lines[0].startswith("rafs: ")), (
            f"{what}: exit {result.returncode}, stderr {lines}")  # fmt: skip
        outcomes[seed] = result.returncode
        pulled = tmp_path / f"pulled{seed}"
        check = skopeo_or_none(registry, f"rafs/faulty:nydus{seed}", pulled, tmp_path)
        if result.returncode == 0:
            assert check is not None, f"{what}: converted, but the manifest is not complete"
        if check is not None:
            for blob in (check.config, *check.layers):
                data = OCILayout.open(pulled).read_blob(blob)
                assert hashlib.sha256(data).hexdigest() == blob.digest.hex, f"{what}: {blob}"
    assert 0 in outcomes.values(), f"no conversion got through: exit code per seed {outcomes}"


def skopeo_or_none(registry: Registry, name: str, into: Path, tmp: Path) -> Manifest | None:
    """The manifest at `name` copied out whole by skopeo, or None if there is no manifest."""
    try:
        skopeo("copy", "--src-tls-verify=false", f"docker://{registry.host}/{name}",
               f"oci:{into}:x", tmpdir=tmp)  # fmt: skip
    except pytest.fail.Exception as exc:
        if "manifest unknown" in str(exc):
            return None
        raise
    layout = OCILayout.open(into)
    return Manifest.from_bytes(layout.read_blob(layout.resolve("x")))


def test_a_corrupt_layer_fails_cleanly(rafs: RafsRunner, tmp_path: Path) -> None:
    """A layer whose bytes match its digest but are no tar at all: one clear line (raised in
    a conversion worker process), and no image written to the target."""
    empty_tar = b"\0" * 1024  # two zero blocks
    layout, layers = _gzip_image(tmp_path / "bad", [empty_tar, b"this is not a tar archive" * 50])
    target = tmp_path / "out"
    result = rafs("convert", f"oci:{layout.root}:v1", f"oci:{target}:v1",
                  "--store", tmp_path / "store", check=False)  # fmt: skip
    lines = result.stderr.splitlines()
    assert result.returncode == 8 and len(lines) == 1, (result.returncode, lines)
    assert lines[0].startswith("rafs: ") and bad_digest(layers) in lines[0], lines
    assert not (target / "index.json").exists() or OCILayout.open(target).tags() == []


def test_a_layer_whose_bytes_are_another_layers_is_refused_before_anything_is_stored(
        rafs: RafsRunner, tmp_path: Path) -> None:  # fmt: skip
    """Layers convert while they download, so the conversion reads bytes not yet verified: a
    layer whose bytes are a valid tar but not the one its digest names converts fine - and
    then the digest check fails, and nothing made from those bytes may be published."""
    named = make_tar([("etc/motd", b"the layer its digest names\n", {})])
    layout, (layer,) = _gzip_image(tmp_path / "swapped", [named])
    served = gzip.compress(make_tar([("etc/motd", b"swapped\n", {})]), mtime=0)
    blob = layout.blob_path(layer.digest)
    blob.chmod(0o644)
    blob.write_bytes(served.ljust(layer.size, b"\0"))  # same size: only the digest differs
    store = tmp_path / "store"
    result = rafs("convert", f"oci:{layout.root}:v1", f"oci:{tmp_path / 'out'}:v1",
                  "--store", store, check=False)  # fmt: skip
    lines = result.stderr.splitlines()
    assert result.returncode != 0 and len(lines) == 1, (result.returncode, lines)
    assert str(layer.digest) in lines[0] and "digest" in lines[0], lines
    stored = LocalStore(store)
    assert [info.digest for info in stored.walk()] == []
    assert [status.ref for status in stored.list_statuses() if "convert" in status.ref] == []


def test_an_image_naming_one_layer_twice_converts(rafs: RafsRunner, tmp_path: Path) -> None:
    """Docker images repeat identical (often empty) layers: the blob is fetched and converted
    once, and the Nydus image names its Nydus blob twice, as the source did."""
    layout, _ = _gzip_image(tmp_path / "twice", [make_tar([("etc/motd", b"twice\n", {})])] * 2)
    out = tmp_path / "out"
    rafs("convert", f"oci:{layout.root}:v1", f"oci:{out}:v1", "--store", tmp_path / "store")
    converted = OCILayout.open(out)
    manifest = Manifest.from_bytes(converted.read_blob(converted.resolve("v1")))
    blobs = manifest.layers[:-1]
    assert [layer.media_type for layer in blobs] == [mt.NYDUS_BLOB] * 2
    assert blobs[0].digest == blobs[1].digest
    assert rafs("cat", f"oci:{out}:v1", "/etc/motd").stdout == b"twice\n"


def test_convert_works_in_a_containerd_content_store(
    containerd: Containerd, rafs: RafsRunner, tmp_path: Path,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """`--containerd`: the layers are fetched into containerd and converted there (each while
    it downloads), and a second run finds the conversions there and converts nothing."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache-home"))
    tars = [make_tar([(f"etc/layer{n}", b"%d\n" % n, {})]) for n in range(3)]
    layout, _ = _gzip_image(tmp_path / "src", tars)
    where = ("--containerd", containerd.socket, "--namespace", "rafs-convert")
    first = rafs("convert", f"oci:{layout.root}:v1", f"oci:{tmp_path / 'a'}:v1", *where)
    assert "(3 converted now)" in first.stdout.decode(), first.stdout
    again = rafs("convert", f"oci:{layout.root}:v1", f"oci:{tmp_path / 'b'}:v1", *where)
    assert "(0 converted now)" in again.stdout.decode(), again.stdout
    for n in range(3):
        assert rafs("cat", f"oci:{tmp_path / 'b'}:v1", f"/etc/layer{n}").stdout == b"%d\n" % n


def _gzip_image(root: Path, tars: list[bytes]) -> tuple[OCILayout, tuple[Descriptor, ...]]:
    """An OCI layout at `root` whose image `v1` has these tars as gzip layers (the same tar
    twice is the same layer twice); returns it and the layers."""
    layout = OCILayout.create(root)
    blobs = [gzip.compress(tar, mtime=0) for tar in tars]
    layers = tuple(Descriptor(mt.OCI_LAYER_GZIP, layout.write_blob(blob), len(blob))
                   for blob in blobs)  # fmt: skip
    config = json.dumps({"architecture": "amd64", "os": "linux", "rootfs": {
        "type": "layers", "diff_ids": [str(Digest.of(tar)) for tar in tars]}}).encode()
    config_desc = Descriptor(mt.OCI_CONFIG, layout.write_blob(config), len(config))
    layout.put_manifest(Manifest(config_desc, layers), "v1")
    return layout, layers


def bad_digest(layers: tuple[Descriptor, ...]) -> str:
    return str(layers[1].digest)
