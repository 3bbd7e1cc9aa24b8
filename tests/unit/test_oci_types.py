"""OCI descriptors, manifests, indexes and configs: unknown fields and exact bytes survive."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from rafs.digest import Digest
from rafs.errors import FormatError
from rafs.oci import Descriptor, History, ImageConfig, Index, Manifest, parse_manifest
from rafs.oci import constants as mt

A = "sha256:" + "a" * 64
B = "sha256:" + "b" * 64

MANIFEST = b"""{
  "schemaVersion": 2,
  "mediaType": "application/vnd.oci.image.manifest.v1+json",
  "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": "%s",
             "size": 7, "x-config-extra": true},
  "layers": [
    {"mediaType": "application/vnd.oci.image.layer.nydus.blob.v1", "digest": "%s", "size": 9,
     "annotations": {"containerd.io/snapshot/nydus-blob": "true"}, "x-layer": [1, {"a": null}]}
  ],
  "x-top": {"nested": "kept"},
  "annotations": {"k": "v"}
}""" % (A.encode(), B.encode())


def test_manifest_keeps_bytes_and_unknown_fields() -> None:
    manifest = Manifest.from_bytes(MANIFEST)
    assert manifest.to_bytes() == MANIFEST and manifest.digest() == Digest.of(MANIFEST)
    assert manifest.extra == {"x-top": {"nested": "kept"}}
    assert manifest.config.extra == {"x-config-extra": True}
    layer = manifest.layers[0]
    assert (layer.media_type, layer.digest, layer.size) == (mt.NYDUS_BLOB, B, 9)
    assert layer.annotations == {mt.NYDUS_BLOB_ANNOTATION: "true"}
    assert layer.extra == {"x-layer": [1, {"a": None}]}

    changed = replace(manifest, annotations={**manifest.annotations, "new": "1"})
    assert changed.raw is None and changed.to_bytes() != MANIFEST
    written = json.loads(changed.to_bytes())
    original = json.loads(MANIFEST)
    assert written == {**original, "annotations": {"k": "v", "new": "1"}}
    # canonical JSON: sorted keys, no whitespace; parsing it back gives the same document
    assert changed.to_bytes() == json.dumps(written, sort_keys=True, separators=(",", ":")).encode()
    assert Manifest.from_bytes(changed.to_bytes()) == changed


def test_new_documents_are_canonical() -> None:
    config = Descriptor(mt.OCI_CONFIG, Digest(A), 2)
    manifest = Manifest(config, ())
    assert manifest.to_bytes() == (
        b'{"config":{"digest":"%s","mediaType":"application/vnd.oci.image.config.v1+json",'
        b'"size":2},"layers":[],"mediaType":"application/vnd.oci.image.manifest.v1+json",'
        b'"schemaVersion":2}' % A.encode()
    )
    assert Manifest(config, (), media_type=None).content_type == mt.OCI_MANIFEST
    assert Index((), media_type=None).content_type == mt.OCI_INDEX


def test_index_round_trip_with_platforms() -> None:
    data = json.dumps({
        "schemaVersion": 2, "mediaType": mt.DOCKER_MANIFEST_LIST,
        "manifests": [
            {"mediaType": mt.DOCKER_MANIFEST, "digest": A, "size": 1,
             "platform": {"architecture": "arm64", "os": "linux", "variant": "v8",
                          "os.features": [mt.NYDUS_OS_FEATURE], "x-plat": 1}},
            {"mediaType": mt.OCI_MANIFEST, "digest": B, "size": 2,
             "artifactType": mt.NYDUS_MANIFEST_ARTIFACT},
        ],
    }, indent=3).encode()  # fmt: skip
    index = parse_manifest(mt.DOCKER_MANIFEST_LIST, data)
    assert isinstance(index, Index) and index.to_bytes() == data
    platform = index.manifests[0].platform
    assert platform is not None and str(platform) == "linux/arm64/v8"
    assert platform.os_features == (mt.NYDUS_OS_FEATURE,) and platform.extra == {"x-plat": 1}
    assert index.manifests[1].artifact_type == mt.NYDUS_MANIFEST_ARTIFACT
    assert json.loads(replace(index, annotations={"a": "b"}).to_bytes()) == \
        {**json.loads(data), "annotations": {"a": "b"}}  # fmt: skip


def test_config_round_trip() -> None:
    data = json.dumps({
        "architecture": "amd64", "os": "linux", "created": "2024-01-01T00:00:00Z",
        "config": {"Env": ["PATH=/bin"], "Cmd": ["/bin/sh"]},
        "rootfs": {"type": "layers", "diff_ids": [A, B], "x-rootfs": "r"},
        "history": [{"created_by": "umoci insert", "x-h": 1}, {"empty_layer": True}],
        "x-config": {"deep": [1, 2]},
    }).encode()  # fmt: skip
    config = ImageConfig.from_bytes(data)
    assert config.to_bytes() == data and config.diff_ids == (A, B)
    assert config.history[0] == History(created_by="umoci insert", extra={"x-h": 1})
    assert config.history[1].empty_layer
    nydus = History(created_by=mt.NYDUS_HISTORY_CREATED_BY, comment=mt.NYDUS_HISTORY_COMMENT)
    changed = replace(config, diff_ids=(*config.diff_ids, Digest(A)),
                      history=(*config.history, nydus))  # fmt: skip
    written = json.loads(changed.to_bytes())
    original = json.loads(data)
    assert written["rootfs"] == {**original["rootfs"], "diff_ids": [A, B, A]}
    assert written["history"][:2] == original["history"]
    assert written["history"][2] == {"created_by": "Nydus Converter",
                                     "comment": "Nydus Bootstrap Layer"}  # fmt: skip
    assert {k: v for k, v in written.items() if k not in ("rootfs", "history")} == \
        {k: v for k, v in original.items() if k not in ("rootfs", "history")}  # fmt: skip
    assert str(config.platform) == "linux/amd64"


@pytest.mark.parametrize(("data", "message"), [
    (b"not json", "not JSON"),
    (b"[]", "not a JSON object"),
    (b'{"schemaVersion": 1, "config": {}, "layers": []}', "schemaVersion 1"),
    (b'{"schemaVersion": 2, "layers": []}', "'config' is missing"),
    (b'{"schemaVersion": 2, "config": {"mediaType": "x", "digest": "sha256:12", "size": 1},'
     b' "layers": []}', "config: 'digest' is not a sha256 digest"),
    (b'{"schemaVersion": 2, "config": {"mediaType": "x", "digest": "%s", "size": -1},'
     b' "layers": []}' % A.encode(), "negative size"),
    (b'{"schemaVersion": 2, "config": {"mediaType": "x", "digest": "%s", "size": true},'
     b' "layers": []}' % A.encode(), "'size' has the wrong type"),
    (b'{"schemaVersion": 2, "config": {"mediaType": "x", "digest": "%s", "size": 1},'
     b' "layers": [{"mediaType": "x", "digest": "%s", "size": 1, "annotations": {"a": 1}}]}'
     % (A.encode(), A.encode()), r"layers\[0\]: 'annotations' is not a map of strings"),
    (b'{"schemaVersion": 2, "mediaType": "%s", "manifests": []}' % mt.OCI_INDEX.encode(),
     "is not an image manifest"),
])  # fmt: skip
def test_bad_manifests(data: bytes, message: str) -> None:
    with pytest.raises(FormatError, match=message):
        Manifest.from_bytes(data, "m.json")


def test_bad_config_and_dispatch() -> None:
    with pytest.raises(FormatError, match=r"rootfs\.type is not 'layers'"):
        ImageConfig.from_bytes(b'{"os":"linux","architecture":"x","rootfs":{"type":"x",'
                               b'"diff_ids":[]}}')  # fmt: skip
    with pytest.raises(FormatError, match="'diff_ids' is not a list of sha256 digests"):
        ImageConfig.from_bytes(b'{"os":"linux","architecture":"x","rootfs":{"type":"layers",'
                               b'"diff_ids":["x"]}}')  # fmt: skip
    manifest = Manifest(Descriptor(mt.OCI_CONFIG, Digest(A), 1), (), media_type=None)
    assert isinstance(parse_manifest("application/json", manifest.to_bytes()), Manifest)
    assert isinstance(parse_manifest("", Index((), media_type=None).to_bytes()), Index)
    with pytest.raises(FormatError, match="not a manifest or index"):
        parse_manifest("text/plain", b'{"schemaVersion": 2}')
