"""Interoperability with skopeo: an image built by umoci and pushed by `skopeo copy` is pulled
by our client with every blob verified; an image pushed by our client is read by skopeo."""

from __future__ import annotations

import json
from pathlib import Path

from rafs.oci import ImageConfig, Manifest, OCILayout
from rafs.registry import RegistryClient
from tests.support.oci import add_layer_from_tree, new_image, require_umoci
from tests.support.registry import Registry, registry, skopeo  # noqa: F401  (fixture)


def _build_image(tmp_path: Path) -> Path:
    require_umoci()
    layout = tmp_path / "src"
    new_image(layout, "v1")
    for i in range(2):
        tree = tmp_path / f"tree{i}"
        (tree / "etc").mkdir(parents=True)
        (tree / "etc" / f"file{i}").write_text(f"layer {i}\n" * (1000 * (i + 1)))
        (tree / "usr" / "bin").mkdir(parents=True)
        (tree / "usr" / "bin" / f"tool{i}").write_bytes(bytes(range(256)) * 400 * (i + 1))
        add_layer_from_tree(layout, "v1", tree, tmp_path / f"bundle{i}")
    return layout


def test_skopeo_push_our_pull(registry: Registry, tmp_path: Path) -> None:  # noqa: F811
    source = OCILayout.open(_build_image(tmp_path))
    skopeo("copy", "--dest-tls-verify=false", f"oci:{source.root}:v1",
           f"docker://{registry.host}/rafs/skopeo:v1", tmpdir=tmp_path)  # fmt: skip
    source_manifest = source.resolve("v1")

    pulled = OCILayout.create(tmp_path / "pulled")
    with RegistryClient(registry.host, plain_http=True) as client:
        repo = client.repository("rafs/skopeo")
        descriptor, data = repo.get_manifest("v1")
        assert descriptor.digest == source_manifest.digest  # skopeo kept the bytes
        manifest = Manifest.from_bytes(data)
        assert len(manifest.layers) == 2
        config = ImageConfig.from_bytes(repo.get_blob(manifest.config))
        assert len(config.diff_ids) == 2 and config.os == "linux"
        for blob in (manifest.config, *manifest.layers):
            with pulled.writer(expected=blob.digest) as writer:
                repo.fetch_blob(blob, writer)  # verified before it is renamed in
            assert pulled.read_blob(blob) == source.read_blob(blob)
        pulled.put_manifest(manifest, "v1")
    assert pulled.resolve("v1").digest == source_manifest.digest

    # pushed back by our client under another name, skopeo reads it and copies it out
    with RegistryClient(registry.host, plain_http=True) as client:
        repo = client.repository("rafs/ours")
        for blob in (manifest.config, *manifest.layers):
            with pulled.blob_path(blob.digest).open("rb") as f:
                repo.push_blob(f, blob, chunk_size=64 << 10)
        repo.put_manifest(manifest, "v2")
    raw = skopeo("inspect", "--raw", "--tls-verify=false",
                 f"docker://{registry.host}/rafs/ours:v2", tmpdir=tmp_path)  # fmt: skip
    assert json.loads(raw) == json.loads(data)
    skopeo("copy", "--src-tls-verify=false", f"docker://{registry.host}/rafs/ours:v2",
           f"oci:{tmp_path / 'back'}:v2", tmpdir=tmp_path)  # fmt: skip
    back = OCILayout.open(tmp_path / "back")
    assert back.resolve("v2").digest == source_manifest.digest
    for blob in (manifest.config, *manifest.layers):
        assert back.read_blob(blob) == source.read_blob(blob)
