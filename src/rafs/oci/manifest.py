"""Image manifests, indexes and configs (image-spec manifest.md, image-index.md, config.md).

Docker's schema 2 manifest and manifest list have the same shape as the OCI manifest and
index, so one type serves both; `media_type` says which. Each document keeps the keys it
does not model in `extra`, and a parsed document keeps its exact bytes in `raw`:
`to_bytes()` returns them unchanged, so its digest stays what the registry or layout said.
A document made or changed with `dataclasses.replace` has no `raw` and is written as
canonical JSON.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Self

from rafs.digest import Digest
from rafs.errors import FormatError
from rafs.oci import constants as mt
from rafs.oci.descriptor import Descriptor, Platform
from rafs.oci.jsonfields import Fields, canonical_json, load_object, with_extra


class _Document:
    """Shared `raw` handling: bytes as parsed, or canonical JSON of `to_json()`."""

    raw: bytes | None
    media_type: str | None
    default_media_type = ""

    @property
    def content_type(self) -> str:
        """The media type to serve it as: its `mediaType`, which OCI lets it leave out."""
        return self.media_type or self.default_media_type

    def to_json(self) -> dict[str, Any]:
        raise NotImplementedError

    def to_bytes(self) -> bytes:
        return self.raw if self.raw is not None else canonical_json(self.to_json())

    def digest(self) -> Digest:
        return Digest.of(self.to_bytes())

    def _keep(self, data: bytes) -> Self:
        object.__setattr__(self, "raw", data)
        return self


def _schema_version(f: Fields, what: str) -> None:
    version = f.integer("schemaVersion", required=True)
    if version != 2:
        raise FormatError(f"{what}: schemaVersion {version} is not supported (want 2)")


def _descriptors(f: Fields, key: str, what: str) -> tuple[Descriptor, ...]:
    return tuple(
        Descriptor.from_json(item, f"{what}: {key}[{i}]")
        for i, item in enumerate(f.objects(key, required=True))
    )


@dataclass(frozen=True)
class Manifest(_Document):
    """An image manifest: one config and the layers, lowest first."""

    default_media_type = mt.OCI_MANIFEST
    config: Descriptor
    layers: tuple[Descriptor, ...]
    media_type: str | None = mt.OCI_MANIFEST
    annotations: Mapping[str, str] = field(default_factory=dict)
    subject: Descriptor | None = None
    artifact_type: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)
    raw: bytes | None = field(default=None, init=False, repr=False, compare=False)

    @classmethod
    def from_bytes(cls, data: bytes, what: str = "manifest") -> Manifest:
        f = Fields(load_object(data, what), what)
        _schema_version(f, what)
        media_type = f.text("mediaType")
        if media_type not in (None, *mt.MANIFEST_TYPES):
            raise FormatError(f"{what}: mediaType {media_type} is not an image manifest")
        subject = f.object("subject")
        return cls(
            config=Descriptor.from_json(f.object("config", required=True), f"{what}: config"),
            layers=_descriptors(f, "layers", what),
            media_type=media_type,
            annotations=f.str_map("annotations"),
            subject=None if subject is None else Descriptor.from_json(subject, f"{what}: subject"),
            artifact_type=f.text("artifactType"),
            extra=f.extra(),
        )._keep(data)

    def to_json(self) -> dict[str, Any]:
        return with_extra({
            "schemaVersion": 2, "mediaType": self.media_type, "artifactType": self.artifact_type,
            "config": self.config.to_json(), "layers": [d.to_json() for d in self.layers],
            "subject": None if self.subject is None else self.subject.to_json(),
            "annotations": dict(self.annotations) or None,
        }, self.extra)  # fmt: skip


@dataclass(frozen=True)
class Index(_Document):
    """An image index (or Docker manifest list): manifests, usually one per platform."""

    default_media_type = mt.OCI_INDEX
    manifests: tuple[Descriptor, ...]
    media_type: str | None = mt.OCI_INDEX
    annotations: Mapping[str, str] = field(default_factory=dict)
    subject: Descriptor | None = None
    artifact_type: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)
    raw: bytes | None = field(default=None, init=False, repr=False, compare=False)

    @classmethod
    def from_bytes(cls, data: bytes, what: str = "index") -> Index:
        f = Fields(load_object(data, what), what)
        _schema_version(f, what)
        media_type = f.text("mediaType")
        if media_type not in (None, *mt.INDEX_TYPES):
            raise FormatError(f"{what}: mediaType {media_type} is not an image index")
        subject = f.object("subject")
        return cls(
            manifests=_descriptors(f, "manifests", what),
            media_type=media_type,
            annotations=f.str_map("annotations"),
            subject=None if subject is None else Descriptor.from_json(subject, f"{what}: subject"),
            artifact_type=f.text("artifactType"),
            extra=f.extra(),
        )._keep(data)

    def to_json(self) -> dict[str, Any]:
        return with_extra({
            "schemaVersion": 2, "mediaType": self.media_type, "artifactType": self.artifact_type,
            "manifests": [d.to_json() for d in self.manifests],
            "subject": None if self.subject is None else self.subject.to_json(),
            "annotations": dict(self.annotations) or None,
        }, self.extra)  # fmt: skip


def parse_manifest(media_type: str, data: bytes, what: str = "manifest") -> Manifest | Index:
    """Parse a manifest or index served as `media_type` (from the registry or a descriptor).

    A missing or generic media type falls back to the document's own `mediaType`, then to
    its shape (`manifests` makes an index).
    """
    if media_type in mt.MANIFEST_TYPES:
        return Manifest.from_bytes(data, what)
    if media_type in mt.INDEX_TYPES:
        return Index.from_bytes(data, what)
    document = load_object(data, what)
    inner = document.get("mediaType")
    if inner is not None and not isinstance(inner, str):
        raise FormatError(f"{what}: 'mediaType' has the wrong type")
    if inner in mt.INDEX_TYPES or (inner is None and "manifests" in document):
        return Index.from_bytes(data, what)
    if inner in mt.MANIFEST_TYPES or (inner is None and "config" in document):
        return Manifest.from_bytes(data, what)
    raise FormatError(f"{what}: media type {media_type or inner!r} is not a manifest or index")


@dataclass(frozen=True)
class History:
    """One entry of a config's `history` (empty_layer entries have no layer)."""

    created: str | None = None
    created_by: str | None = None
    author: str | None = None
    comment: str | None = None
    empty_layer: bool = False
    extra: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_json(cls, value: object, what: str) -> History:
        f = Fields(value, what)
        return cls(f.text("created"), f.text("created_by"), f.text("author"), f.text("comment"),
                   f.flag("empty_layer"), f.extra())  # fmt: skip

    def to_json(self) -> dict[str, Any]:
        return with_extra({
            "created": self.created, "created_by": self.created_by, "author": self.author,
            "comment": self.comment, "empty_layer": self.empty_layer or None,
        }, self.extra)  # fmt: skip


@dataclass(frozen=True)
class ImageConfig(_Document):
    """An image config: platform, the layers' diff_ids and history; the runtime `config`
    (entrypoint, env...) is kept as an opaque JSON object."""

    os: str
    architecture: str
    diff_ids: tuple[Digest, ...]
    history: tuple[History, ...] = ()
    variant: str | None = None
    os_version: str | None = None
    os_features: tuple[str, ...] = ()
    created: str | None = None
    author: str | None = None
    config: Mapping[str, Any] | None = None
    rootfs_extra: Mapping[str, Any] = field(default_factory=dict)
    extra: Mapping[str, Any] = field(default_factory=dict)
    raw: bytes | None = field(default=None, init=False, repr=False, compare=False)

    @classmethod
    def from_bytes(cls, data: bytes, what: str = "image config") -> ImageConfig:
        f = Fields(load_object(data, what), what)
        rootfs = Fields(f.object("rootfs", required=True), f"{what}: rootfs")
        if rootfs.text("type", required=True) != "layers":
            raise FormatError(f"{what}: rootfs.type is not 'layers'")
        diff_ids = rootfs.digests("diff_ids")
        return cls(
            os=f.text("os", required=True) or "",
            architecture=f.text("architecture", required=True) or "",
            diff_ids=diff_ids,
            history=tuple(
                History.from_json(h, f"{what}: history[{i}]")
                for i, h in enumerate(f.objects("history"))
            ),
            variant=f.text("variant"),
            os_version=f.text("os.version"),
            os_features=f.str_list("os.features"),
            created=f.text("created"),
            author=f.text("author"),
            config=f.object("config"),
            rootfs_extra=rootfs.extra(),
            extra=f.extra(),
        )._keep(data)

    @property
    def platform(self) -> Platform:
        return Platform(self.os, self.architecture, self.variant, self.os_version,
                        self.os_features)  # fmt: skip

    def to_json(self) -> dict[str, Any]:
        rootfs = with_extra({"type": "layers", "diff_ids": [str(d) for d in self.diff_ids]},
                            self.rootfs_extra)  # fmt: skip
        return with_extra({
            "created": self.created, "author": self.author, "architecture": self.architecture,
            "os": self.os, "os.version": self.os_version,
            "os.features": list(self.os_features) or None, "variant": self.variant,
            "config": None if self.config is None else dict(self.config), "rootfs": rootfs,
            "history": [h.to_json() for h in self.history] or None,
        }, self.extra)  # fmt: skip
