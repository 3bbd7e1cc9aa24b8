"""Media types and annotation keys: every OCI, Docker and Nydus name in one place.

Sources: the OCI image spec (`specs-go/v1/mediatype.go`, `annotations.go`), Docker's
distribution schema2 and manifest list, and nydus-snapshotter `pkg/converter` / `pkg/label`
(see spec/converter-semantics.md §1.3). Nydus layer annotations are also content labels, all
prefixed `containerd.io/snapshot/`.
"""

from __future__ import annotations

# OCI image spec media types.
OCI_DESCRIPTOR = "application/vnd.oci.descriptor.v1+json"
OCI_LAYOUT_HEADER = "application/vnd.oci.layout.header.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_EMPTY = "application/vnd.oci.empty.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
OCI_LAYER_NONDISTRIBUTABLE = "application/vnd.oci.image.layer.nondistributable.v1.tar"
OCI_LAYER_NONDISTRIBUTABLE_GZIP = "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"

# Docker image manifest v2 schema 2 and manifest list.
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar"
DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
DOCKER_LAYER_FOREIGN_GZIP = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"

# Nydus.
NYDUS_BLOB = "application/vnd.oci.image.layer.nydus.blob.v1"
NYDUS_CONFIG = "application/vnd.nydus.image.config.v1+json"
NYDUS_MANIFEST_ARTIFACT = "application/vnd.nydus.image.manifest.v1+json"
NYDUS_OS_FEATURE = "nydus.remoteimage.v1"
"""`platform.os.features` marker of a Nydus entry in an index (legacy detection)."""
NYDUS_BOOTSTRAP_NAME = "image/image.boot"
"""Path of the bootstrap inside the bootstrap layer's tar."""

MANIFEST_TYPES = frozenset({OCI_MANIFEST, DOCKER_MANIFEST})
INDEX_TYPES = frozenset({OCI_INDEX, DOCKER_MANIFEST_LIST})
"""Media types a registry serves at /v2/<name>/manifests/<ref> that this package reads."""

LAYER_TYPES = frozenset({
    OCI_LAYER, OCI_LAYER_GZIP, OCI_LAYER_ZSTD, OCI_LAYER_NONDISTRIBUTABLE,
    OCI_LAYER_NONDISTRIBUTABLE_GZIP, DOCKER_LAYER, DOCKER_LAYER_GZIP, DOCKER_LAYER_FOREIGN_GZIP,
    NYDUS_BLOB,
})  # fmt: skip

# OCI annotations.
ANNOTATION_REF_NAME = "org.opencontainers.image.ref.name"
"""Names a manifest in an image layout's index.json (the tag of `oci:PATH:TAG`)."""
ANNOTATION_CREATED = "org.opencontainers.image.created"
ANNOTATION_BASE_DIGEST = "org.opencontainers.image.base.digest"
ANNOTATION_BASE_NAME = "org.opencontainers.image.base.name"

# containerd.
ANNOTATION_UNCOMPRESSED = "containerd.io/uncompressed"
"""diff_id of a layer: sha256 of its uncompressed tar (a Nydus blob's own digest)."""
LABEL_GC_REF_CONTENT = "containerd.io/gc.ref.content"
"""Prefix of the labels (`.l.<i>`, `.config`, `.m.<i>`) keeping referenced content alive."""

# Nydus layer annotations (also content labels), nydus-snapshotter pkg/label.
_SNAPSHOT = "containerd.io/snapshot/"
NYDUS_BLOB_ANNOTATION = _SNAPSHOT + "nydus-blob"
"""`"true"` on a Nydus data blob layer."""
NYDUS_BOOTSTRAP_ANNOTATION = _SNAPSHOT + "nydus-bootstrap"
"""`"true"` on the bootstrap layer (the last layer of a Nydus manifest)."""
NYDUS_FS_VERSION_ANNOTATION = _SNAPSHOT + "nydus-fs-version"
"""RAFS version of the bootstrap layer, `"5"` or `"6"`."""
NYDUS_BLOB_DIGEST = _SNAPSHOT + "nydus-blob-digest"
NYDUS_BLOB_SIZE = _SNAPSHOT + "nydus-blob-size"
NYDUS_SOURCE_CHAINID = _SNAPSHOT + "nydus-source-chainid"
NYDUS_SOURCE_DIGEST = _SNAPSHOT + "nydus-source-digest"
"""Digest of the OCI layer a Nydus blob was converted from."""
NYDUS_TARGET_DIGEST = _SNAPSHOT + "nydus-target-digest"
NYDUS_ENCRYPTED_BLOB = _SNAPSHOT + "nydus-encrypted-blob"
NYDUS_REFERENCE_BLOB_IDS = _SNAPSHOT + "nydus-reference-blob-ids"
NYDUS_REF = _SNAPSHOT + "nydus-ref"
"""On an OCI-ref ("zran") layer: digest of the original OCI tar.gz holding the data."""
NYDUS_TARFS = _SNAPSHOT + "nydus-tarfs"
NYDUS_SIGNATURE = _SNAPSHOT + "nydus-signature"
NYDUS_CACHE = _SNAPSHOT + "nydus-cache"
"""Manifest annotation `v1` of nydusify build-cache manifests."""
NYDUS_SOURCE_REFERENCE = _SNAPSHOT + "nydus-source-reference"
NYDUS_BUILDER_VERSION = _SNAPSHOT + "nydus-builder-version"

MAX_MANIFEST_SIZE = 4 << 20
"""Manifests, indexes and configs larger than this are refused (distribution's and
containerd's limit)."""

# History entry the converter appends for the bootstrap layer.
NYDUS_HISTORY_CREATED_BY = "Nydus Converter"
NYDUS_HISTORY_COMMENT = "Nydus Bootstrap Layer"
