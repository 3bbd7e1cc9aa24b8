"""OCI image layouts: open, resolve tags, verified reads, atomic writes, index.json edits;
read by and written for the real `umoci`."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from rafs.digest import Digest
from rafs.errors import (
    AlreadyExists,
    FailedPrecondition,
    FormatError,
    IntegrityError,
    InvalidArgument,
    NotFound,
)
from rafs.oci import Descriptor, Index, Manifest, OCILayout
from rafs.oci import constants as mt
from tests.support.oci import new_image, require_umoci, umoci


def _image(layout: OCILayout, layer: bytes) -> Manifest:
    config = b'{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}'
    config_d = Descriptor(mt.OCI_CONFIG, layout.write_blob(config), len(config))
    layer_d = Descriptor(mt.OCI_LAYER, layout.write_blob(io.BytesIO(layer)), len(layer))
    return Manifest(config_d, (layer_d,))


def test_create_write_read(tmp_path: Path) -> None:
    layout = OCILayout.create(tmp_path / "l")
    header = json.loads((tmp_path / "l" / "oci-layout").read_text())
    assert header == {"imageLayoutVersion": "1.0.0"}
    assert layout.index() == Index(())
    digest = layout.write_blob(b"hello", expected=Digest.of(b"hello"))
    assert layout.blob_path(digest).read_bytes() == b"hello"
    assert layout.write_blob(b"hello") == digest  # already there
    assert layout.read_blob(digest) == b"hello"
    assert layout.read_blob(Descriptor("x", digest, 5)) == b"hello"
    with pytest.raises(IntegrityError, match="longer than its size 4"):
        layout.read_blob(Descriptor("x", digest, 4))
    with pytest.raises(FormatError, match="larger than 3 bytes"):
        layout.read_blob(digest, max_size=3)
    with pytest.raises(NotFound, match=r"oci:.*: blob sha256:\w+ not found"):
        layout.read_blob(Digest.of(b"absent"))
    layout.blob_path(digest).write_bytes(b"HELLO")
    with pytest.raises(IntegrityError, match="content has digest"):
        layout.read_blob(digest)
    with pytest.raises(FailedPrecondition, match="content has digest"):
        layout.write_blob(b"other", expected=Digest.of(b"different"))
    # nothing but the blobs themselves is left behind
    assert sorted(p.name for p in (tmp_path / "l" / "blobs" / "sha256").iterdir()) == [digest.hex]


def test_writer_protocol(tmp_path: Path) -> None:
    layout = OCILayout.create(tmp_path)
    with layout.writer(total=6) as writer:
        writer.write(b"abc")
        assert writer.status().offset == 3
        writer.truncate(0)
        writer.write(b"abcdef")
        assert writer.digest() == Digest.of(b"abcdef")
        with pytest.raises(FailedPrecondition, match="wrote 6 bytes, want 7"):
            writer.commit(size=7)
    assert not layout.has_blob(Digest.of(b"abcdef"))
    with layout.writer() as writer:
        writer.write(b"abcdef")
        assert writer.commit(6, Digest.of(b"abcdef")) == Digest.of(b"abcdef")
    with pytest.raises(AlreadyExists):
        layout.writer(expected=Digest.of(b"abcdef"))


def test_tags_and_index(tmp_path: Path) -> None:
    layout = OCILayout.create(tmp_path)
    first, second = _image(layout, b"one"), _image(layout, b"two")
    d1 = layout.put_manifest(first, "v1")
    assert d1.annotations == {mt.ANNOTATION_REF_NAME: "v1"} and d1.media_type == mt.OCI_MANIFEST
    assert layout.resolve() == d1 and layout.resolve("v1") == d1
    layout.put_manifest(second, "v2")
    assert layout.tags() == ["v1", "v2"]
    with pytest.raises(InvalidArgument, match=r"holds 2 images; name one as .*:TAG .*v1, v2"):
        layout.resolve()
    d3 = layout.put_manifest(second, "v1")  # retag: replaces the old entry
    assert layout.tags() == ["v2", "v1"] and layout.resolve("v1").digest == d3.digest
    with pytest.raises(NotFound, match=r":nope: no such tag"):
        layout.resolve("nope")
    assert Manifest.from_bytes(layout.read_blob(layout.resolve("v1"))) == second

    dangling = Manifest(first.config, (Descriptor(mt.OCI_LAYER, Digest.of(b"gone"), 4),))
    with pytest.raises(FailedPrecondition, match="missing blobs: sha256:"):
        layout.put_manifest(dangling, "bad")
    index = Index((d3,))
    layout.put_manifest(index, "all")
    assert layout.resolve("all").media_type == mt.OCI_INDEX


def test_open_errors(tmp_path: Path) -> None:
    with pytest.raises(NotFound, match="not an OCI image layout"):
        OCILayout.open(tmp_path)
    (tmp_path / "oci-layout").write_text('{"imageLayoutVersion": "2.0.0"}')
    with pytest.raises(FormatError, match=r"unsupported imageLayoutVersion '2\.0\.0'"):
        OCILayout.open(tmp_path)


def test_umoci_interop(tmp_path: Path) -> None:
    require_umoci()
    new_image(tmp_path / "u", "base")
    layout = OCILayout.open(tmp_path / "u")
    manifest = Manifest.from_bytes(layout.read_blob(layout.resolve("base")))
    assert manifest.media_type is None or manifest.media_type == mt.OCI_MANIFEST
    layout.put_manifest(_image(layout, b"layer"), "ours")
    listed = umoci("ls", "--layout", tmp_path / "u").split()
    assert sorted(listed) == ["base", "ours"]
    umoci("stat", "--image", f"{tmp_path / 'u'}:ours")  # umoci reads what we wrote
