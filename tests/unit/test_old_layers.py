"""Layers of nydus-image before 2.2 are read from the layer file itself.

Such a layer's blob table does not mark its blob as inlined and names it by the blob's hash,
not the layer file's digest. No genuine file of that kind is among the shared fixtures (the
Dec-2022 layer in nydus's `tests/texture/toc/` is one), so the layers here are rafs layers
rewritten into the two pre-2.2 layouts by `tests.support.patching.as_layer_before_nydus_2_2`.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from rafs.errors import NotFound
from tests.conftest import RafsRunner
from tests.support.patching import as_layer_before_nydus_2_2
from tests.support.tarballs import make_tar

MiB = 1 << 20
BIG = b"".join(hashlib.sha256(str(i).encode()).digest() for i in range(MiB // 16))  # 2 MiB
FILES = {"/big": BIG, "/etc/small": b"small file\n", "/etc/copy": b"small file\n"}


def _old_layer(rafs: RafsRunner, tmp: Path, ci_in_image_blob: bool) -> tuple[Path, str]:
    source = tmp / "in.tar"
    source.write_bytes(make_tar([(name.lstrip("/"), data, {}) for name, data in FILES.items()]))
    rafs("create", source, "-o", tmp / "new.nydus")
    data, blob_id = as_layer_before_nydus_2_2((tmp / "new.nydus").read_bytes(), ci_in_image_blob)
    layer = tmp / "old.nydus"
    layer.write_bytes(data)
    assert hashlib.sha256(data).hexdigest() != blob_id
    return layer, blob_id


@pytest.mark.parametrize("ci_in_image_blob", [True, False], ids=["v2.1", "dec-2022"])
def test_cat_and_check_read_the_layer_itself(rafs: RafsRunner, tmp_path: Path,
                                             ci_in_image_blob: bool) -> None:  # fmt: skip
    layer, blob_id = _old_layer(rafs, tmp_path, ci_in_image_blob)
    inspect = rafs("inspect", layer).stdout.decode()
    assert blob_id in inspect and "INLINED_FS_META" not in inspect
    for path, data in FILES.items():
        assert rafs("cat", layer, path).stdout == data
    result = rafs("check", layer)
    assert f"ok: 5 inodes, 3 chunks, {len(BIG) + 11} bytes verified" in result.stdout.decode()


@pytest.mark.parametrize("ci_in_image_blob", [True, False], ids=["v2.1", "dec-2022"])
def test_merge_names_the_blob_by_the_layer_digest(rafs: RafsRunner, tmp_path: Path,
                                                  ci_in_image_blob: bool) -> None:  # fmt: skip
    layer, _ = _old_layer(rafs, tmp_path, ci_in_image_blob)
    digest = hashlib.sha256(layer.read_bytes()).hexdigest()
    blobs = tmp_path / "blobs"
    blobs.mkdir()
    layer.rename(blobs / digest)
    merged = tmp_path / "merged.boot"
    listed = rafs("merge", blobs / digest, "-o", merged).stdout.decode().split()
    assert listed == [f"sha256:{digest}"]
    assert rafs("cat", merged, "/big", "--blob-dir", blobs).stdout == BIG
    rafs("check", merged, "--blob-dir", blobs)


def test_a_layer_of_dictionary_chunks_does_not_read_itself_as_their_blob(
    rafs: RafsRunner, tmp_path: Path
) -> None:
    """Its only blob is the dictionary's: taking the layer file for it would read wrong
    bytes, so the blob is looked for by id."""
    base = tmp_path / "base.tar"
    base.write_bytes(make_tar([("big", BIG, {})]))
    rafs("create", base, "-o", tmp_path / "base", "--bootstrap", tmp_path / "base.boot")
    upper = tmp_path / "upper.tar"
    upper.write_bytes(make_tar([("again", BIG, {})]))
    layer = tmp_path / "upper"
    rafs("create", upper, "-o", layer, "--chunk-dict", tmp_path / "base.boot")
    result = rafs("cat", layer, "/again", check=False)
    assert result.returncode == NotFound.exit_code
    assert result.stderr.strip().endswith("needs --blob-dir")
