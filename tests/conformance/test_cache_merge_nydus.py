"""MergeNydus end to end, judged by umoci and the kernel.

The four-layer umoci image of test_merge_umoci (whiteouts, opaque directory, file <->
directory replacements, hardlinks, a metadata-only layer) is imported into a content store
with `rafs cache import`; `rafs cache merge-nydus` converts each layer to Nydus and merges
them. The bootstrap layer it stores, with the Nydus layer blobs from the same store as blob
folder, is exported and mounted by the kernel: the tree must equal `umoci unpack`.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from pathlib import Path

import pytest

from rafs.content.local import LocalStore
from tests.conformance.test_merge_umoci import TAG, UmociImage, _tools, umoci_image
from tests.conftest import RafsRunner
from tests.support.containerd import Containerd, containerd  # noqa: F401  (fixture)
from tests.support.kernel import mount_erofs
from tests.support.tree import compare, snapshot

pytestmark = pytest.mark.kernel
__all__ = ["_tools", "umoci_image"]  # module fixtures shared with test_merge_umoci

NYDUS_BLOB = "application/vnd.oci.image.layer.nydus.blob.v1"


def test_merge_nydus_mounts_as_umoci_unpacks(
    umoci_image: UmociImage, rafs: RafsRunner, tmp_path: Path
) -> None:
    store_dir = tmp_path / "store"
    imported = rafs("cache", "import", f"oci:{umoci_image.layout}:{TAG}", "--store", store_dir)
    top = imported.stdout.decode().splitlines()[-1]
    assert len(imported.stderr.splitlines()) == len(umoci_image.tars)

    first = json.loads(rafs("cache", "merge-nydus", top, "--store", store_dir).stdout)
    second = json.loads(rafs("cache", "merge-nydus", top, "--store", store_dir).stdout)
    assert first == second
    assert first["mediaType"] == "application/vnd.oci.image.layer.v1.tar+gzip"
    bootstrap_blob = store_dir / "blobs" / "sha256" / first["digest"].removeprefix("sha256:")
    data = bootstrap_blob.read_bytes()
    assert first["size"] == len(data)
    tar = gzip.decompress(data)
    assert first["annotations"] == {
        "containerd.io/uncompressed": "sha256:" + hashlib.sha256(tar).hexdigest(),
        "containerd.io/snapshot/nydus-bootstrap": "true",
    }
    # One Nydus variant per layer, in the same store, labelled as BuildKit does.
    store = LocalStore(store_dir)
    nydus = [info for info in store.walk(f'labels."buildkit.io/blob/mediatype"=={NYDUS_BLOB}')]
    assert len(nydus) == len(umoci_image.tars)
    # The bootstrap, then each Nydus layer's blob.meta (nydus-snapshotter's layout).
    with tarfile.open(fileobj=io.BytesIO(tar)) as archive:
        names = archive.getnames()
    assert names[:2] == ["image", "image/image.boot"]
    assert sorted(names[2:]) == sorted(f"image/{info.digest.hex}.blob.meta" for info in nydus)
    for info in nydus:
        assert info.labels["buildkit.io/blob/annotation.containerd.io/snapshot/nydus-blob"] == (
            "true")  # fmt: skip
        assert any(key.startswith("containerd.io/gc.ref.content.blob-") for key in info.labels)

    # The stored bootstrap layer opens as is; its blobs are found beside it in the store.
    image = tmp_path / "merged.img"
    rafs("export", "--block", bootstrap_blob, "-o", image)
    with mount_erofs(image, tmp_path / "mnt") as mnt:
        actual = snapshot(mnt)
    # The top layer (metadata-only L4) has no `./` entry: see test_merge_umoci for why the
    # root's mtime is then left out.
    problems = compare(snapshot(umoci_image.references[-1]), actual, ignore_root_mtime=True)
    assert problems == [], f"{len(problems)} differences:\n" + "\n".join(problems[:80])

    listed = rafs("cache", "ls", "--store", store_dir).stdout.decode().splitlines()
    assert len(listed) == len(umoci_image.tars) and any(line.startswith(top) for line in listed)


def test_merge_nydus_on_containerd(
    umoci_image: UmociImage, containerd: Containerd, rafs: RafsRunner, tmp_path: Path,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """The same on a real containerd's content store (BuildKit's own setting): the layers,
    their Nydus variants and the bootstrap layer all live in containerd; the ref records in
    $XDG_CACHE_HOME/rafs/containerd/."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache-home"))
    where = ("--containerd", containerd.socket, "--namespace", "rafs-merge-nydus")
    imported = rafs("cache", "import", f"oci:{umoci_image.layout}:{TAG}", *where)
    top = imported.stdout.decode().splitlines()[-1]
    first = json.loads(rafs("cache", "merge-nydus", top, *where).stdout)
    assert json.loads(rafs("cache", "merge-nydus", top, *where).stdout) == first
    assert first["annotations"]["containerd.io/snapshot/nydus-bootstrap"] == "true"
    assert (tmp_path / "cache-home" / "rafs" / "containerd").is_dir()

    # Everything the image needs comes out of containerd: the bootstrap layer and the
    # Nydus blobs beside it, named by digest.
    listed = rafs("content", *where, "ls",
                  f'labels."buildkit.io/blob/mediatype"=={NYDUS_BLOB}').stdout.decode()
    nydus = [line.split("\t")[0] for line in listed.splitlines()]
    assert len(nydus) == len(umoci_image.tars)
    blobs = tmp_path / "blobs"
    blobs.mkdir()
    for digest in [first["digest"], *nydus]:
        data = rafs("content", *where, "get", digest).stdout
        (blobs / digest.removeprefix("sha256:")).write_bytes(data)
    image = tmp_path / "merged.img"
    rafs("export", "--block", blobs / first["digest"].removeprefix("sha256:"), "-o", image)
    with mount_erofs(image, tmp_path / "mnt") as mnt:
        actual = snapshot(mnt)
    problems = compare(snapshot(umoci_image.references[-1]), actual, ignore_root_mtime=True)
    assert problems == [], f"{len(problems)} differences:\n" + "\n".join(problems[:80])
    refs = rafs("cache", "ls", *where).stdout.decode().splitlines()
    assert len(refs) == len(umoci_image.tars) and any(line.startswith(top) for line in refs)


def test_cache_cli_errors_are_one_line(rafs: RafsRunner, tmp_path: Path) -> None:
    store_dir = tmp_path / "store"
    store_dir.mkdir()
    for args, code in (
        (("cache", "merge-nydus", "noref", "--store", store_dir), 3),
        (("cache", "import", f"oci:{tmp_path}/missing", "--store", store_dir), 3),
        (("cache", "import", "docker://localhost:5000/x", "--store", store_dir), 2),
    ):
        result = rafs(*args, check=False)
        lines = result.stderr.splitlines()
        assert result.returncode == code and len(lines) == 1 and lines[0].startswith("rafs: "), (
            args, result.returncode, lines)  # fmt: skip
