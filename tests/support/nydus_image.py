"""Nydus images for tests, made the way nydus-snapshotter's converter lays them out, without
depending on `rafs convert`.

`build_nydus_image(tars, work)` runs `rafs create` on each layer tar, then
`compose_nydus_image` merges the layers' bootstraps with `rafs.api.merge` (as a tar, then
gzipped) and composes the config and manifest with `rafs.oci` types: the Nydus blob layers
first (media type `application/vnd.oci.image.layer.nydus.blob.v1`, annotated
`nydus-blob: "true"`), the gzip bootstrap layer last (annotated `nydus-bootstrap: "true"`,
`nydus-fs-version: "6"`), the config's diff_ids the blob digests then the sha256 of the
bootstrap tar. `write_layout()` stores it in an OCI image layout, `push()` sends it to a
registry.
"""

from __future__ import annotations

import gzip
import io
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from rafs import api
from rafs.digest import Digest
from rafs.oci import Descriptor, ImageConfig, Manifest, OCILayout, Platform
from rafs.oci import constants as mt
from rafs.oci.nydus_image import host_platform
from rafs.registry import RegistryClient


@dataclass(frozen=True)
class BuiltImage:
    """The parts of one Nydus image, ready to store."""

    blobs: tuple[tuple[Path, Descriptor], ...]
    """Each Nydus layer file and its descriptor, lowest first."""
    bootstrap: bytes
    """The gzip bootstrap layer."""
    bootstrap_descriptor: Descriptor
    config: bytes
    manifest: Manifest

    @property
    def layer_bytes(self) -> int:
        return sum(layer.size for layer in self.manifest.layers)


def rafs_create(tar: Path, out: Path) -> Digest:
    """`rafs create TAR -o OUT`; returns the layer digest it prints."""
    result = subprocess.run([sys.executable, "-m", "rafs", "create", str(tar), "-o", str(out)],
                            capture_output=True, text=True, check=False)  # fmt: skip
    if result.returncode != 0:
        raise RuntimeError(f"rafs create {tar} failed: {result.stderr.strip()}")
    return Digest(result.stdout.strip())


def build_nydus_image(tars: Sequence[Path], work: Path,
                      platform: Platform | None = None) -> BuiltImage:  # fmt: skip
    """`rafs create` each tar (lowest first) into `work`, then `compose_nydus_image`."""
    work.mkdir(parents=True, exist_ok=True)
    made: list[tuple[Path, Digest]] = []
    for i, tar in enumerate(tars):
        layer = work / f"layer-{i}.nydus"
        made.append((layer, rafs_create(tar, layer)))
    return compose_nydus_image(made, platform)


def compose_nydus_image(made: Sequence[tuple[Path, Digest]],
                        platform: Platform | None = None) -> BuiltImage:  # fmt: skip
    """The image of Nydus layer files (path, digest), lowest first: merged bootstrap layer,
    config and manifest."""
    files = [layer.open("rb") for layer, _ in made]
    try:
        merged = io.BytesIO()
        layers = [api.Layer(str(digest), f) for (_, digest), f in zip(made, files, strict=True)]
        used = set(api.merge(layers, merged, api.MergeOption(with_tar=True)))
    finally:
        for f in files:
            f.close()
    bootstrap_tar = merged.getvalue()
    bootstrap = gzip.compress(bootstrap_tar, mtime=0)
    blobs = tuple(
        (layer, Descriptor(mt.NYDUS_BLOB, digest, layer.stat().st_size, {
            mt.ANNOTATION_UNCOMPRESSED: str(digest), mt.NYDUS_BLOB_ANNOTATION: "true"}))
        for layer, digest in made if str(digest) in used
    )  # fmt: skip
    diff_id = Digest.of(bootstrap_tar)
    bootstrap_descriptor = Descriptor(mt.OCI_LAYER_GZIP, Digest.of(bootstrap), len(bootstrap), {
        mt.ANNOTATION_UNCOMPRESSED: str(diff_id), mt.NYDUS_BOOTSTRAP_ANNOTATION: "true",
        mt.NYDUS_FS_VERSION_ANNOTATION: "6"})  # fmt: skip
    where = platform or host_platform()
    config = ImageConfig(os=where.os, architecture=where.architecture, variant=where.variant,
                         diff_ids=(*(d.digest for _, d in blobs), diff_id),
                         config={"Cmd": ["/bin/sh"]}).to_bytes()  # fmt: skip
    manifest = Manifest(
        config=Descriptor(mt.OCI_CONFIG, Digest.of(config), len(config)),
        layers=(*(d for _, d in blobs), bootstrap_descriptor),
    )
    return BuiltImage(blobs, bootstrap, bootstrap_descriptor, config, manifest)


def write_layout(image: BuiltImage, root: Path, tag: str) -> str:
    """Store the image in the layout at `root` (made if missing); returns `oci:ROOT:TAG`."""
    layout = OCILayout.create(root)
    for path, descriptor in image.blobs:
        with path.open("rb") as f:
            layout.write_blob(f, descriptor.digest)
    layout.write_blob(image.bootstrap, image.bootstrap_descriptor.digest)
    layout.write_blob(image.config, image.manifest.config.digest)
    layout.put_manifest(image.manifest, tag)
    return f"oci:{root}:{tag}"


def push(image: BuiltImage, host: str, repository: str, tag: str) -> str:
    """Push the image to the plain-HTTP registry at `host`; returns `docker://HOST/REPO:TAG`."""
    with RegistryClient(host, plain_http=True) as client:
        repo = client.repository(repository)
        for path, descriptor in image.blobs:
            with path.open("rb") as f:
                repo.push_blob(f, descriptor)
        repo.push_blob(image.bootstrap, image.bootstrap_descriptor)
        repo.push_blob(image.config, image.manifest.config)
        repo.put_manifest(image.manifest, tag)
    return f"docker://{host}/{repository}:{tag}"
