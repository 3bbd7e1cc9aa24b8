"""Image references: `oci:PATH[:TAG]` and `docker://HOST[:PORT]/REPO[:TAG|@DIGEST]`."""

from __future__ import annotations

import pytest

from rafs.errors import InvalidArgument
from rafs.oci import Reference, parse_reference

D = "sha256:" + "c" * 64


@pytest.mark.parametrize(("text", "expected", "canonical"), [
    ("oci:/tmp/layout", Reference("oci", path="/tmp/layout"), None),
    ("oci:rel/dir:v1.0", Reference("oci", path="rel/dir", tag="v1.0"), None),
    ("oci:/l:example.com/app:1", Reference("oci", path="/l", tag="example.com/app:1"), None),
    ("docker://127.0.0.1:5000/img:v1",
     Reference("docker", registry="127.0.0.1:5000", repository="img", tag="v1"), None),
    ("docker://localhost/a/b/c", Reference("docker", registry="localhost",
                                           repository="a/b/c", tag="latest"),
     "docker://localhost/a/b/c:latest"),
    (f"docker://ghcr.io/o/r@{D}",
     Reference("docker", registry="ghcr.io", repository="o/r", digest=D), None),
    (f"docker://ghcr.io/o/r:t@{D}",
     Reference("docker", registry="ghcr.io", repository="o/r", tag="t", digest=D), None),
    ("docker://busybox", Reference("docker", registry="docker.io", repository="library/busybox",
                                   tag="latest"), "docker://docker.io/library/busybox:latest"),
    ("docker://user/app:1", Reference("docker", registry="docker.io", repository="user/app",
                                      tag="1"), "docker://docker.io/user/app:1"),
    ("docker://index.docker.io/busybox:1", Reference("docker", registry="docker.io",
     repository="library/busybox", tag="1"), "docker://docker.io/library/busybox:1"),
    ("docker://[::1]:5000/x_y__z-w.v:T_a-g.1",
     Reference("docker", registry="[::1]:5000", repository="x_y__z-w.v", tag="T_a-g.1"), None),
])  # fmt: skip
def test_parse(text: str, expected: Reference, canonical: str | None) -> None:
    reference = parse_reference(text)
    assert reference == expected
    assert str(reference) == (canonical or text)
    assert parse_reference(str(reference)) == reference


def test_properties() -> None:
    hub = parse_reference("docker://busybox")
    assert hub.api_host == "registry-1.docker.io" and hub.name == "latest"
    local = parse_reference(f"docker://127.0.0.1:5000/a@{D}")
    assert local.api_host == "127.0.0.1:5000" and local.name == D
    with pytest.raises(InvalidArgument, match="not a registry reference"):
        _ = parse_reference("oci:/x").api_host


@pytest.mark.parametrize(("text", "message"), [
    ("/tmp/layout", "not an image reference"),
    ("docker:/x/y", "not an image reference"),
    ("oci:", "empty layout path"),
    ("oci::tag", "empty layout path"),
    ("oci:/l:", "invalid tag ''"),
    ("oci:/l:bad tag", "invalid tag"),
    ("docker://", "no repository name"),
    ("docker://host.example/x:y:z", "invalid repository name 'x:y'"),
    ("docker://127.0.0.1:5000/UPPER", "invalid repository name 'UPPER'"),
    ("docker://127.0.0.1:5000/a//b", "invalid repository name"),
    ("docker://127.0.0.1:5000/a-/b", "invalid repository name"),
    ("docker://127.0.0.1:5000/", "no repository name"),
    ("docker://127.0.0.1:5000/a:", "invalid tag ''"),
    ("docker://127.0.0.1:5000/a:-x", "invalid tag '-x'"),
    ("docker://127.0.0.1:5000/a:" + "t" * 129, "invalid tag"),
    ("docker://127.0.0.1:5000/a@sha256:abc", "invalid digest 'sha256:abc'"),
    ("docker://127.0.0.1:5000/a@md5:" + "0" * 32, "invalid digest"),
    ("docker://bad_host.example/a", "invalid registry host 'bad_host.example'"),
    ("docker://127.0.0.1:5000/" + "a" * 256, "longer than 255"),
])  # fmt: skip
def test_bad_references(text: str, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        parse_reference(text)
