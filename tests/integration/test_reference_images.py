"""`rafs inspect|ls|cat|check|unpack|export` on Nydus images named by reference.

One two-layer Nydus image (the all-entry-types tree, then a layer adding `extra/`, and
whiting out `empty-dir`) is built as nydus-snapshotter lays it out (tests/support/nydus_image)
and stored twice: in an OCI image layout and in the real docker-registry on loopback. Every
test runs against both `oci:` and `docker://` references; the registry one reads blobs with
HTTP Range requests. An index with a second platform checks `--platform`.
"""

from __future__ import annotations

import io
import json
import os
import random
import shutil
import subprocess
import tarfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from rafs.digest import Digest
from rafs.oci import Descriptor, Index, Manifest, OCILayout, Platform
from rafs.oci import constants as mt
from rafs.oci.nydus_image import host_platform
from rafs.registry import RegistryClient
from tests.conftest import RafsRunner
from tests.support.kernel import mount_erofs, require_kernel_erofs
from tests.support.nydus_image import BuiltImage, build_nydus_image, push, write_layout
from tests.support.registry import Registry, registry  # noqa: F401 (fixture)
from tests.support.tree import compare, snapshot

EXTRA_MTIME = 1_650_000_000
OTHER_PLATFORM = Platform("linux", "riscv64" if host_platform().architecture != "riscv64"
                          else "s390x")  # fmt: skip
BIG = random.Random(5).randbytes(3 * (1 << 20) + 12345)


@dataclass(frozen=True)
class Images:
    tree: Path
    """What the two-layer image holds."""
    image: BuiltImage
    other: BuiltImage
    """A one-layer image (`extra/` only) for OTHER_PLATFORM."""
    layout: Path
    registry: str


def _top_layer(tree_root: Path, out: Path) -> None:
    """A tar adding `extra/` (a small and a multi-chunk file) and whiting out `empty-dir`."""
    root = tree_root.stat()

    def entry(name: str, kind: bytes, mode: int, data: bytes = b"") -> None:
        info = tarfile.TarInfo(name)
        info.type, info.mode, info.mtime, info.size = kind, mode, EXTRA_MTIME, len(data)
        archive.addfile(info, io.BytesIO(data) if data else None)

    with tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as archive:
        entry("./", tarfile.DIRTYPE, root.st_mode & 0o7777)
        entry("./extra/", tarfile.DIRTYPE, 0o755)
        entry("./extra/hello.txt", tarfile.REGTYPE, 0o644, b"hello from the top layer\n")
        entry("./extra/big", tarfile.REGTYPE, 0o600, BIG)
        entry("./.wh.empty-dir", tarfile.REGTYPE, 0o644)


def _apply_top_layer(tree: Path) -> None:
    shutil.rmtree(tree / "empty-dir")
    extra = tree / "extra"
    extra.mkdir(mode=0o755)
    for name, data, mode in (("hello.txt", b"hello from the top layer\n", 0o644),
                             ("big", BIG, 0o600)):  # fmt: skip
        (extra / name).write_bytes(data)
        (extra / name).chmod(mode)
        os.utime(extra / name, (EXTRA_MTIME, EXTRA_MTIME))
    extra.chmod(0o755)
    os.utime(extra, (EXTRA_MTIME, EXTRA_MTIME))


@pytest.fixture(scope="module")
def images(entry_tree: Path, entry_tar: Path, registry: Registry,  # noqa: F811
           tmp_path_factory: pytest.TempPathFactory) -> Images:  # fmt: skip
    base = tmp_path_factory.mktemp("reference-images")
    tree = base / "tree"
    subprocess.run(["cp", "-a", str(entry_tree), str(tree)], check=True)
    _apply_top_layer(tree)
    top = base / "top.tar"
    _top_layer(entry_tree, top)
    image = build_nydus_image([entry_tar, top], base / "build")
    other = build_nydus_image([top], base / "build-other", OTHER_PLATFORM)
    layout = base / "layout"
    write_layout(image, layout, "v1")
    write_layout(other, layout, "other")
    push(image, registry.host, "refs/img", "v1")
    push(other, registry.host, "refs/img", "other")
    index = _index(image, other)
    OCILayout.open(layout).put_manifest(index, "multi")
    with RegistryClient(registry.host, plain_http=True) as client:
        client.repository("refs/img").put_manifest(index, "multi")
    return Images(tree, image, other, layout, registry.host)


def _index(image: BuiltImage, other: BuiltImage) -> Index:
    def entry(built: BuiltImage, platform: Platform) -> Descriptor:
        data = built.manifest.to_bytes()
        return Descriptor(mt.OCI_MANIFEST, Digest.of(data), len(data), platform=platform)

    return Index(manifests=(entry(other, OTHER_PLATFORM), entry(image, host_platform())))


@pytest.fixture(params=["oci", "docker"])
def transport(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def _ref(images: Images, transport: str, tag: str = "v1") -> tuple[str, ...]:
    """The IMAGE argument (and options) naming `tag` in the layout or the registry."""
    if transport == "oci":
        return (f"oci:{images.layout}:{tag}",)
    return (f"docker://{images.registry}/refs/img:{tag}", "--plain-http")


def test_inspect_lists_the_blob_layers(rafs: RafsRunner, images: Images, transport: str) -> None:
    ref = _ref(images, transport)
    info = json.loads(rafs("inspect", *ref, "--json").stdout)
    assert info["source"] == ref[0]
    blob_layers = [d.digest.hex for d in images.image.manifest.layers[:-1]]
    assert sorted(blob["id"] for blob in info["blobs"]) == sorted(blob_layers)
    text = rafs("inspect", *ref).stdout.decode()
    assert all(blob_id in text for blob_id in blob_layers)


def test_ls_and_cat_read_both_layers(rafs: RafsRunner, images: Images, transport: str) -> None:
    ref = _ref(images, transport)
    listing = rafs("ls", *ref, "-R").stdout.decode().split()
    assert "/extra/big" in listing and "/files/chunk-plus-1" in listing
    assert not any(path.startswith("/empty-dir") for path in listing)
    image, *options = ref
    listed = rafs("ls", image, "/extra", *options).stdout.decode().split()
    assert listed == ["big", "hello.txt"]
    long = rafs("ls", image, "/extra/big", "-l", *options).stdout.decode()
    assert long.startswith("-rw-------") and str(len(BIG)) in long
    assert rafs("cat", image, "extra/big", *options).stdout == BIG
    lower = "files/chunk-plus-1"
    assert rafs("cat", image, lower, *options).stdout == (images.tree / lower).read_bytes()


def test_check_verifies_every_chunk(rafs: RafsRunner, images: Images, transport: str) -> None:
    ref = _ref(images, transport)
    result = rafs("check", *ref)
    assert ": ok:" in result.stdout.decode()


def test_unpack_equals_the_source(rafs: RafsRunner, images: Images, transport: str,
                                  tmp_path: Path) -> None:  # fmt: skip
    ref = _ref(images, transport)
    rafs("unpack", *ref, "--to-dir", tmp_path / "out")
    problems = compare(snapshot(images.tree), snapshot(tmp_path / "out"), ignore_root_mtime=True)
    assert problems == [], "\n".join(problems[:50])
    digest = rafs("unpack", *ref, "-o", tmp_path / "layer.tar").stdout.decode().strip()
    assert digest == str(Digest.of((tmp_path / "layer.tar").read_bytes()))


@pytest.mark.kernel
def test_export_block_kernel_mount_equals_the_source(
    rafs: RafsRunner, images: Images, transport: str, tmp_path: Path
) -> None:
    require_kernel_erofs()
    ref = _ref(images, transport)
    rafs("export", "--block", *ref, "-o", tmp_path / "image.erofs")
    with mount_erofs(tmp_path / "image.erofs", tmp_path / "mnt") as mnt:
        problems = compare(snapshot(images.tree), snapshot(mnt), ignore_root_mtime=True)
    assert problems == [], "\n".join(problems[:50])


def test_platform_chooses_from_an_index(rafs: RafsRunner, images: Images, transport: str) -> None:
    ref = _ref(images, transport, "multi")
    assert "files" in rafs("ls", *ref).stdout.decode().split()
    chosen = rafs("ls", *ref, "--platform", str(OTHER_PLATFORM)).stdout.decode().split()
    assert chosen == ["extra"]
    missing = rafs("ls", *ref, "--platform", "plan9/mips", check=False)
    assert missing.returncode == 3
    assert "no manifest for platform plan9/mips" in missing.stderr
    assert str(OTHER_PLATFORM) in missing.stderr


def test_reference_errors(rafs: RafsRunner, images: Images, transport: str) -> None:
    unknown = rafs("ls", *_ref(images, transport, "nope"), check=False)
    assert unknown.returncode == 3 and "nope" in unknown.stderr, unknown.stderr
    blob_dir = rafs("ls", *_ref(images, transport), "--blob-dir", "/tmp", check=False)
    assert blob_dir.returncode == 2 and "--blob-dir" in blob_dir.stderr


def test_a_plain_oci_image_is_refused(rafs: RafsRunner, images: Images, tmp_path: Path) -> None:
    layer = b"\x1f\x8b" + bytes(30)
    config = b'{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}'
    manifest = Manifest(Descriptor(mt.OCI_CONFIG, Digest.of(config), len(config)),
                        (Descriptor(mt.OCI_LAYER_GZIP, Digest.of(layer), len(layer)),))
    layout = OCILayout.create(tmp_path / "plain")
    layout.write_blob(layer)
    layout.write_blob(config)
    layout.put_manifest(manifest, "v1")
    result = rafs("cat", f"oci:{tmp_path / 'plain'}:v1", "/x", check=False)
    assert result.returncode == 2
    assert "not a Nydus image" in result.stderr and "nydus-bootstrap" in result.stderr
