"""Open a Nydus image named by a reference: `oci:PATH[:TAG]` or `docker://HOST/REPO[:TAG|@DIGEST]`.

Resolving walks index (by platform) -> manifest -> bootstrap layer (`rafs.oci.nydus_image`),
fetches and verifies that layer and takes the bootstrap out of it. The blobs stay where they
are, read through a backend: an image layout's blob files (`blobs/sha256/<hex>`, each a whole
Nydus layer whose data starts at offset 0, read with `pread`), or the registry with HTTP Range
requests (`RegistryBackend`). `ResolvedImage.backend()` makes a new backend each call, with
its own registry connections, so a mount process can make its own after forking.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from rafs.errors import FormatError
from rafs.oci import constants as mt
from rafs.oci.descriptor import Descriptor, Platform
from rafs.oci.layout import OCILayout
from rafs.oci.manifest import Index, Manifest, parse_manifest
from rafs.oci.nydus_image import (
    NydusManifest,
    blob_layer_digest,
    choose_manifest,
    host_platform,
    nydus_manifest,
)
from rafs.oci.reference import Reference, parse_reference
from rafs.reader.artifact import MAX_BOOTSTRAP, Artifact, open_artifact_reader
from rafs.reader.backend import BackendBlobSet, BlobBackend, LocalBackend
from rafs.reader.image import RafsImage
from rafs.registry.credentials import Credentials

REFERENCE_PREFIXES = ("oci:", "docker://")


@dataclass(frozen=True)
class RemoteOptions:
    """How to reach an image reference."""

    platform: Platform | None = None
    """The manifest to take from an index; None: this host's platform."""
    plain_http: bool = False
    credentials: Credentials | None = None


@dataclass(frozen=True)
class ResolvedImage:
    """A Nydus image found through a reference: its bootstrap, its layers, its blobs."""

    name: str
    image: RafsImage
    layers: NydusManifest
    _make_backend: Callable[[], BlobBackend]

    def backend(self) -> BlobBackend:
        """A new backend reading this image's blobs (the caller closes it)."""
        return self._make_backend()

    def artifact(self) -> Artifact:
        """The image as the read commands take it, blobs read through a new backend."""
        return Artifact(self.image, BackendBlobSet(self.image, self.backend()), None)


def is_reference(text: str) -> bool:
    """Whether an IMAGE argument is a reference rather than a file path."""
    return text.startswith(REFERENCE_PREFIXES)


def resolve(text: str, options: RemoteOptions = RemoteOptions()) -> ResolvedImage:
    """Find the Nydus image `text` names and load its bootstrap."""
    reference = parse_reference(text)
    wanted = options.platform or host_platform()
    if reference.transport == "oci":
        return _resolve_layout(reference, wanted)
    return _resolve_registry(reference, wanted, options)


def _resolve_layout(reference: Reference, wanted: Platform) -> ResolvedImage:
    assert reference.path is not None
    layout = OCILayout.open(reference.path)
    name = str(reference)

    def fetch(descriptor: Descriptor) -> bytes:
        return layout.read_blob(descriptor, mt.MAX_MANIFEST_SIZE)

    top = layout.resolve(reference.tag)
    layers = _nydus_layers(parse_manifest(top.media_type, fetch(top), name), fetch, wanted, name)
    _check_bootstrap_size(layers.bootstrap, name)
    image = _bootstrap(layout.read_blob(layers.bootstrap, MAX_BOOTSTRAP), name)

    def locate(blob_id: str) -> Path:
        layer = layers.blobs.get(blob_id)
        return layout.blob_path(layer.digest if layer else blob_layer_digest(blob_id, name))

    return ResolvedImage(name, image, layers, lambda: LocalBackend(locate))


def _resolve_registry(reference: Reference, wanted: Platform,
                      options: RemoteOptions) -> ResolvedImage:  # fmt: skip
    from rafs.reader.registry_backend import RegistryBackend  # httpx loads only when asked
    from rafs.registry.client import RegistryClient

    assert reference.repository is not None
    repository_name = reference.repository
    name = str(reference)

    def client() -> RegistryClient:
        return RegistryClient(reference.api_host, plain_http=options.plain_http,
                              credentials=options.credentials)  # fmt: skip

    with client() as resolver:
        repository = resolver.repository(repository_name)

        def fetch(descriptor: Descriptor) -> bytes:
            return repository.get_manifest(descriptor.digest)[1]

        top, data = repository.get_manifest(reference.name)
        document = parse_manifest(top.media_type, data, name)
        layers = _nydus_layers(document, fetch, wanted, name)
        _check_bootstrap_size(layers.bootstrap, name)
        image = _bootstrap(repository.get_blob(layers.bootstrap), name)

    def backend() -> BlobBackend:
        own = client()
        return RegistryBackend(own.repository(repository_name), layers.blobs, on_close=own.close)

    return ResolvedImage(name, image, layers, backend)


def _nydus_layers(document: Manifest | Index, fetch: Callable[[Descriptor], bytes],
                  wanted: Platform, name: str) -> NydusManifest:  # fmt: skip
    if isinstance(document, Index):
        entry = choose_manifest(document, wanted, name)
        what = f"{name}@{entry.digest}"
        document = parse_manifest(entry.media_type, fetch(entry), what)
        if isinstance(document, Index):
            raise FormatError(f"{what}: an index inside an index for platform {wanted}")
    return nydus_manifest(document, name)


def _check_bootstrap_size(layer: Descriptor, name: str) -> None:
    if layer.size > MAX_BOOTSTRAP:
        raise FormatError(f"{name}: bootstrap layer of {layer.size} bytes is too large")


def _bootstrap(layer: bytes, name: str) -> RafsImage:
    """The bootstrap in a bootstrap layer (a gzip tar; a bare bootstrap is taken as well)."""
    return open_artifact_reader(io.BytesIO(layer), name).image
