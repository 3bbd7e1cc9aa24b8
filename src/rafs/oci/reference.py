"""Image references as the command line takes them (the forms skopeo uses).

- `oci:PATH[:TAG]`: an image in an OCI image layout; TAG matches the index entry's
  `org.opencontainers.image.ref.name` (absent: the layout must hold exactly one image). PATH
  ends at the first colon, as in skopeo; TAG follows the spec's ref.name grammar.
- `docker://HOST[:PORT]/REPO[:TAG|@DIGEST]`: an image in a registry. The first component is
  the registry when it contains `.` or `:` or is `localhost`; otherwise the image is on Docker
  Hub (`docker.io`, API at `registry-1.docker.io`) and a one-component REPO gets `library/`.
  REPO components are lowercase alphanumerics joined by `.`, `_`, `__` or dashes; no tag and
  no digest means `latest`. With both, the digest decides what is fetched.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from rafs.digest import Digest
from rafs.errors import InvalidArgument

DOCKER_HUB = "docker.io"
DOCKER_HUB_API = "registry-1.docker.io"
DEFAULT_TAG = "latest"
_FORMS = "want oci:PATH[:TAG] or docker://HOST[:PORT]/REPO[:TAG|@DIGEST]"

_HOST = re.compile(
    r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*"
    r"|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?"
)
_REPO_COMPONENT = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*")
_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
_REF_COMPONENT = r"[A-Za-z0-9]+(?:(?:[-._:@+]|--)[A-Za-z0-9]+)*"
_REF_NAME = re.compile(rf"{_REF_COMPONENT}(?:/{_REF_COMPONENT})*")
_MAX_NAME = 255


@dataclass(frozen=True)
class Reference:
    """An image in an OCI layout (`transport == "oci"`) or a registry (`"docker"`)."""

    transport: Literal["oci", "docker"]
    path: str | None = None
    """Layout directory (oci)."""
    registry: str | None = None
    """HOST[:PORT] as written, `docker.io` for Docker Hub (docker)."""
    repository: str | None = None
    """Repository name inside the registry, e.g. `library/busybox` (docker)."""
    tag: str | None = None
    digest: Digest | None = None

    @property
    def api_host(self) -> str:
        """The host serving the distribution API (Docker Hub's differs from its name)."""
        if self.registry is None:
            raise InvalidArgument(f"{self}: not a registry reference")
        return DOCKER_HUB_API if self.registry == DOCKER_HUB else self.registry

    @property
    def name(self) -> str:
        """The repository reference in the API: the digest if known, else the tag."""
        return str(self.digest) if self.digest is not None else self.tag or DEFAULT_TAG

    def __str__(self) -> str:
        if self.transport == "oci":
            return f"oci:{self.path}" + (f":{self.tag}" if self.tag else "")
        text = f"docker://{self.registry}/{self.repository}"
        text += f":{self.tag}" if self.tag else ""
        return text + (f"@{self.digest}" if self.digest else "")


def parse_reference(text: str) -> Reference:
    """Parse `oci:...` or `docker://...`; anything else is `InvalidArgument`."""
    if text.startswith("oci:"):
        return _parse_oci(text)
    if text.startswith("docker://"):
        return _parse_docker(text)
    raise InvalidArgument(f"{text!r}: not an image reference ({_FORMS})")


def _parse_oci(text: str) -> Reference:
    path, colon, tag = text[len("oci:") :].partition(":")
    if not path:
        raise InvalidArgument(f"{text!r}: empty layout path ({_FORMS})")
    return Reference("oci", path=path, tag=_check_tag(tag, "oci", text) if colon else None)


def _check_tag(tag: str, transport: str, text: str) -> str:
    grammar = _REF_NAME if transport == "oci" else _TAG
    if not grammar.fullmatch(tag):
        raise InvalidArgument(f"{text!r}: invalid tag {tag!r}")
    return tag


def _parse_docker(text: str) -> Reference:
    rest = text[len("docker://") :]
    rest, at, digest_text = rest.partition("@")
    digest = None
    if at:
        try:
            digest = Digest(digest_text)
        except InvalidArgument:
            raise InvalidArgument(f"{text!r}: invalid digest {digest_text!r}") from None
    tag = None
    slash = rest.rfind("/")
    if rest.rfind(":") > slash:
        rest, _, tag = rest.rpartition(":")
        _check_tag(tag, "docker", text)
    first, slash_found, remainder = rest.partition("/")
    if slash_found and ("." in first or ":" in first or first == "localhost"):
        if not _HOST.fullmatch(first):
            raise InvalidArgument(f"{text!r}: invalid registry host {first!r}")
        registry, repository = first, remainder
    else:
        registry, repository = DOCKER_HUB, rest
    if registry == "index.docker.io":
        registry = DOCKER_HUB
    if not repository:
        raise InvalidArgument(f"{text!r}: no repository name ({_FORMS})")
    if registry == DOCKER_HUB and "/" not in repository:
        repository = f"library/{repository}"
    if not all(_REPO_COMPONENT.fullmatch(c) for c in repository.split("/")):
        raise InvalidArgument(f"{text!r}: invalid repository name {repository!r} "
                              "(lowercase letters, digits and . _ - separators)")  # fmt: skip
    if len(repository) > _MAX_NAME:
        raise InvalidArgument(f"{text!r}: repository name longer than {_MAX_NAME} characters")
    if tag is None and digest is None:
        tag = DEFAULT_TAG
    return Reference("docker", registry=registry, repository=repository, tag=tag, digest=digest)
