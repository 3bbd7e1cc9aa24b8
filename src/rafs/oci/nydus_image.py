"""Nydus images as layouts and registries hold them: which manifest, which layer is the
bootstrap, and which layer is each data blob.

A Nydus manifest (nydus-snapshotter `pkg/converter`, spec/converter-semantics.md §1.7) lists
the data blob layers first (`application/vnd.oci.image.layer.nydus.blob.v1`, annotated
`containerd.io/snapshot/nydus-blob: "true"`), then the bootstrap layer: a gzip tar holding
`image/image.boot`, annotated `containerd.io/snapshot/nydus-bootstrap: "true"` and
`containerd.io/snapshot/nydus-fs-version`. Merging names every blob of the bootstrap by its
layer's digest (hex), so a blob id leads straight to the layer holding it; a blob layer is a
whole Nydus layer, its data at offset 0.

An index is narrowed to one manifest by platform, `os/arch[/variant]` (default: this host's);
when several entries match, the one marked with the `nydus.remoteimage.v1` os feature wins
(images that carry the OCI and the Nydus manifest side by side).
"""

from __future__ import annotations

import platform as host
from collections.abc import Mapping
from dataclasses import dataclass

from rafs.digest import Digest
from rafs.errors import FormatError, InvalidArgument, NotFound, Unsupported
from rafs.oci import constants as mt
from rafs.oci.descriptor import Descriptor, Platform
from rafs.oci.manifest import Index, Manifest

_GOARCH = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64",
           "armv7l": "arm", "armv6l": "arm", "i686": "386", "i386": "386",
           "ppc64le": "ppc64le", "s390x": "s390x", "riscv64": "riscv64"}  # fmt: skip
"""`uname -m` to the GOARCH names OCI platforms use."""


@dataclass(frozen=True)
class NydusManifest:
    """A Nydus image manifest, its bootstrap layer, and its blob layers by blob id."""

    manifest: Manifest
    bootstrap: Descriptor
    blobs: Mapping[str, Descriptor]
    """Blob id (the layer digest's hex) -> the layer holding that blob."""

    @property
    def layer_bytes(self) -> int:
        """Bytes of all the image's layers, bootstrap included (what a full pull moves)."""
        return sum(layer.size for layer in self.manifest.layers)


def nydus_manifest(manifest: Manifest, what: str) -> NydusManifest:
    """Find the bootstrap and blob layers of `manifest`; a manifest without a bootstrap layer
    is not a Nydus image (`InvalidArgument`)."""
    marked = [i for i, layer in enumerate(manifest.layers)
              if layer.annotations.get(mt.NYDUS_BOOTSTRAP_ANNOTATION) == "true"]  # fmt: skip
    if not marked:
        raise InvalidArgument(f"{what}: not a Nydus image (no layer annotated "
                              f"{mt.NYDUS_BOOTSTRAP_ANNOTATION}=true)")  # fmt: skip
    if len(marked) > 1:
        raise FormatError(f"{what}: {len(marked)} layers are annotated as the bootstrap")
    bootstrap = manifest.layers[marked[0]]
    version = bootstrap.annotations.get(mt.NYDUS_FS_VERSION_ANNOTATION, "6")
    if version != "6":
        raise Unsupported(f"{what}: RAFS v{version} images cannot be read from a registry or "
                          "layout (only v6)")  # fmt: skip
    blobs = {layer.digest.hex: layer for i, layer in enumerate(manifest.layers) if i != marked[0]}
    return NydusManifest(manifest, bootstrap, blobs)


def blob_layer_digest(blob_id: str, what: str) -> Digest:
    """The digest of the layer holding blob `blob_id` when the manifest lists no layer for
    it (a chunk dictionary's blob): its id is that digest's hex."""
    try:
        return Digest.from_hex(blob_id)
    except InvalidArgument:
        raise FormatError(f"{what}: blob id {blob_id!r} names no layer") from None


def host_platform() -> Platform:
    """This machine's platform as OCI names it (`linux/amd64`...)."""
    machine = host.machine().lower()
    variant = "v7" if machine == "armv7l" else "v6" if machine == "armv6l" else None
    return Platform(host.system().lower() or "linux", _GOARCH.get(machine, machine), variant)


def parse_platform(text: str) -> Platform:
    """`OS/ARCH[/VARIANT]` as `--platform` takes it."""
    parts = text.strip().split("/")
    if len(parts) not in (2, 3) or not all(parts):
        raise InvalidArgument(f"platform {text!r}: want OS/ARCH[/VARIANT], e.g. linux/amd64")
    return Platform(parts[0], parts[1], parts[2] if len(parts) == 3 else None)


def _matches(candidate: Platform | None, wanted: Platform) -> bool:
    if candidate is None:
        return False
    if (candidate.os, candidate.architecture) != (wanted.os, wanted.architecture):
        return False
    return wanted.variant is None or candidate.variant in (None, wanted.variant)


def choose_manifest(index: Index, wanted: Platform, what: str) -> Descriptor:
    """The index entry for platform `wanted`, preferring entries marked as Nydus."""
    found = [entry for entry in index.manifests
             if entry.media_type not in mt.INDEX_TYPES and _matches(entry.platform, wanted)]
    if not found:
        have = ", ".join(sorted({str(e.platform) for e in index.manifests if e.platform}))
        raise NotFound(f"{what}: no manifest for platform {wanted} "
                       f"(the index has {have or 'no platforms'}; choose with --platform)")
    nydus = [e for e in found if e.platform and mt.NYDUS_OS_FEATURE in e.platform.os_features]
    return (nydus or found)[0]
