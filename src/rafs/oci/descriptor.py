"""OCI content descriptors and platforms (image-spec descriptor.md, image-index.md).

A descriptor points at content: `mediaType`, `digest`, `size`, and optionally `urls`,
`annotations`, `data` (the content itself, base64), `platform` (in an index) and
`artifactType`. Keys not modelled here are kept in `extra` and written back.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from rafs.digest import Digest
from rafs.errors import FormatError
from rafs.oci.jsonfields import Fields, with_extra


@dataclass(frozen=True)
class Platform:
    """What an index entry runs on: `os`/`architecture` plus optional refinements."""

    os: str
    architecture: str
    variant: str | None = None
    os_version: str | None = None
    os_features: tuple[str, ...] = ()
    extra: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_json(cls, value: object, what: str = "platform") -> Platform:
        f = Fields(value, what)
        return cls(
            os=f.text("os", required=True) or "",
            architecture=f.text("architecture", required=True) or "",
            variant=f.text("variant"),
            os_version=f.text("os.version"),
            os_features=f.str_list("os.features"),
            extra=f.extra(),
        )

    def to_json(self) -> dict[str, Any]:
        return with_extra({
            "architecture": self.architecture, "os": self.os, "os.version": self.os_version,
            "os.features": list(self.os_features) or None, "variant": self.variant,
        }, self.extra)  # fmt: skip

    def __str__(self) -> str:
        """`os/architecture[/variant]`, the form of `--platform`."""
        return "/".join(p for p in (self.os, self.architecture, self.variant) if p)


@dataclass(frozen=True)
class Descriptor:
    """A typed pointer to content of a known digest and size."""

    media_type: str
    digest: Digest
    size: int
    annotations: Mapping[str, str] = field(default_factory=dict)
    urls: tuple[str, ...] = ()
    platform: Platform | None = None
    artifact_type: str | None = None
    data: str | None = None
    """The content itself, base64 (rarely used; kept for round trips)."""
    extra: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_json(cls, value: object, what: str = "descriptor") -> Descriptor:
        f = Fields(value, what)
        media_type = f.text("mediaType", required=True) or ""
        digest = f.digest("digest")
        size = f.integer("size", required=True) or 0
        if size < 0:
            raise FormatError(f"{what}: negative size {size}")
        platform = f.object("platform")
        return cls(
            media_type=media_type,
            digest=digest,
            size=size,
            annotations=f.str_map("annotations"),
            urls=f.str_list("urls"),
            platform=None if platform is None else Platform.from_json(platform, what),
            artifact_type=f.text("artifactType"),
            data=f.text("data"),
            extra=f.extra(),
        )

    def to_json(self) -> dict[str, Any]:
        return with_extra({
            "mediaType": self.media_type, "digest": str(self.digest), "size": self.size,
            "urls": list(self.urls) or None, "annotations": dict(self.annotations) or None,
            "data": self.data, "artifactType": self.artifact_type,
            "platform": None if self.platform is None else self.platform.to_json(),
        }, self.extra)  # fmt: skip
