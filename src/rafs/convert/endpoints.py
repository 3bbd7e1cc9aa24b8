"""Where images are read from and written to: an OCI image layout or a registry repository.

Both give the same five operations, so conversion never asks which it has:

    resolve()                      the manifest or index named by the reference, with its bytes
    read_document(desc)            a manifest, index or config (at most 4 MiB), verified
    fetch_into(desc, store)        a blob into the content store, verified before commit
                                   (nothing is fetched when the store has it)
    push_blob(desc, store)         a blob from the store, unless the target has it (a
                                   registry may mount it from another of its repositories)
    push_manifest(document, tag)   a manifest or index, after every blob it names; tagged
                                   (None: the reference's own), or as a child of an index
                                   (`child=True`: stored by digest only)

A blob pushed to a registry repository gets containerd's distribution-source label in the
store, `containerd.io/distribution.source.<registry>` = the repositories it is known to be in
(comma-separated, as containerd's own fetches write it). Before uploading a blob, a push to
the same registry first asks to mount it from those repositories: converting many images
that share a base layer into their own repositories uploads that layer's Nydus blob once.
"""

from __future__ import annotations

import contextlib
import logging
from typing import BinaryIO, Protocol, cast

from rafs.content import BlobTarget, Info, Store, as_file, exists, open_writer, write_blob
from rafs.errors import InvalidArgument, RafsError
from rafs.oci import Descriptor, Index, Manifest, OCILayout, Reference
from rafs.oci.constants import MAX_MANIFEST_SIZE
from rafs.registry import Credentials, RegistryClient, Repository

log = logging.getLogger(__name__)

DISTRIBUTION_SOURCE = "containerd.io/distribution.source."
"""containerd's label prefix: `<prefix><registry host>` lists the repositories holding a blob."""


class ImageEndpoint(Protocol):
    name: str

    def resolve(self) -> tuple[Descriptor, bytes]: ...

    def read_document(self, desc: Descriptor) -> bytes: ...

    def fetch_into(self, desc: Descriptor, store: BlobTarget) -> None: ...

    def push_blob(self, desc: Descriptor, store: Store) -> None: ...

    def push_manifest(self, document: Manifest | Index, *, child: bool = False) -> Descriptor: ...

    def close(self) -> None: ...


class LayoutEndpoint:
    """An OCI image layout directory; `tag` selects the image (the only one if None)."""

    def __init__(self, layout: OCILayout, tag: str | None) -> None:
        self.layout = layout
        self.tag = tag
        self.name = f"{layout.name}:{tag}" if tag else layout.name

    def resolve(self) -> tuple[Descriptor, bytes]:
        desc = self.layout.resolve(self.tag)
        return desc, self.read_document(desc)

    def read_document(self, desc: Descriptor) -> bytes:
        return self.layout.read_blob(desc, MAX_MANIFEST_SIZE)

    def fetch_into(self, desc: Descriptor, store: BlobTarget) -> None:
        if exists(store, desc.digest):
            return
        with self.layout.open_blob(desc) as source:
            write_blob(store, f"fetch-{desc.digest}", cast(BinaryIO, source), size=desc.size,
                       expected=desc.digest)  # fmt: skip

    def push_blob(self, desc: Descriptor, store: Store) -> None:
        if self.layout.has_blob(desc.digest):
            return
        with store.reader_at(desc.digest) as reader:
            self.layout.write_blob(as_file(reader), desc.digest)

    def push_manifest(self, document: Manifest | Index, *, child: bool = False) -> Descriptor:
        if not child:
            return self.layout.put_manifest(document, self.tag)
        data = document.to_bytes()
        return Descriptor(document.content_type, self.layout.write_blob(data), len(data))

    def close(self) -> None:
        pass


class RegistryEndpoint:
    """A repository of a registry; the reference's tag or digest selects the image.
    `registry` is the registry's name in references (the distribution-source label's)."""

    def __init__(self, client: RegistryClient, repository: Repository, reference: str,
                 registry: str) -> None:  # fmt: skip
        self.client = client
        self.repository = repository
        self.reference = reference
        self.name = repository.what(reference)
        self._source_label = DISTRIBUTION_SOURCE + registry

    def resolve(self) -> tuple[Descriptor, bytes]:
        return self.repository.get_manifest(self.reference)

    def read_document(self, desc: Descriptor) -> bytes:
        if desc.size > MAX_MANIFEST_SIZE:
            raise InvalidArgument(f"{self.name}: document {desc.digest} of {desc.size} bytes "
                                  f"is over {MAX_MANIFEST_SIZE}")  # fmt: skip
        return self.repository.get_blob(desc)

    def fetch_into(self, desc: Descriptor, store: BlobTarget) -> None:
        if exists(store, desc.digest):
            return
        with open_writer(store, f"fetch-{desc.digest}", desc.size, desc.digest) as writer:
            self.repository.fetch_blob(desc, writer)

    def push_blob(self, desc: Descriptor, store: Store) -> None:
        sources = self._sources(store, desc)
        if not self.repository.has_blob(desc.digest) and not self._mounted(desc, sources):
            with store.reader_at(desc.digest) as reader:
                self.repository.push_blob(as_file(reader), desc)
        self._note_source(store, desc, sources)

    def _sources(self, store: Store, desc: Descriptor) -> list[str]:
        """The repositories of this registry the store's label says hold the blob."""
        try:
            value = store.info(desc.digest).labels.get(self._source_label, "")
        except RafsError:
            return []
        return [name for name in value.split(",") if name]

    def _mounted(self, desc: Descriptor, sources: list[str]) -> bool:
        """Whether the registry mounted the blob from one of `sources` (no upload needed)."""
        for source in sources:
            if source == self.repository.name:
                continue  # a stale label: it is not there
            try:
                if self.repository.mount_blob(desc.digest, source):
                    log.info("%s: mounted from %s", self.repository.what(desc.digest), source)
                    return True
            except RafsError as exc:  # e.g. no pull access there: upload it instead
                log.info("%s: no mount from %s: %s", self.repository.what(desc.digest),
                         source, exc)  # fmt: skip
        return False

    def _note_source(self, store: Store, desc: Descriptor, sources: list[str]) -> None:
        """Add this repository to the blob's distribution-source label (best effort)."""
        if self.repository.name in sources:
            return
        value = ",".join(sorted({*sources, self.repository.name}))
        with contextlib.suppress(RafsError):  # a label too long, or a store gone read-only
            store.update(Info(desc.digest, labels={self._source_label: value}),
                         f"labels.{self._source_label}")  # fmt: skip

    def push_manifest(self, document: Manifest | Index, *, child: bool = False) -> Descriptor:
        reference = str(document.digest()) if child else self.reference
        return self.repository.put_manifest(document, reference)

    def close(self) -> None:
        self.client.close()


def open_endpoint(reference: Reference, *, plain_http: bool = False, create: bool = False,
                  credentials: Credentials | None = None) -> ImageEndpoint:  # fmt: skip
    """The endpoint of `reference`; `create` makes a missing layout (for writing)."""
    if reference.transport == "oci":
        assert reference.path is not None
        layout = OCILayout.create(reference.path) if create else OCILayout.open(reference.path)
        return LayoutEndpoint(layout, reference.tag)
    assert reference.registry is not None and reference.repository is not None
    client = RegistryClient(reference.api_host, plain_http=plain_http, credentials=credentials)
    return RegistryEndpoint(client, client.repository(reference.repository), reference.name,
                            reference.registry)  # fmt: skip
