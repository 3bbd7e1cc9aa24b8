"""Fuzz targets for the OCI and registry text parsers: manifests, indexes, configs and
descriptors (`oci`), `WWW-Authenticate` challenges and the token flow (`auth`), and image
references (`reference`).

Besides "only a `RafsError` escapes", these targets check what the parsers promise:
- a document that parses re-serialises (canonical JSON, as a document changed with
  `dataclasses.replace` is written) and re-parses to an equal object, and every key the
  types do not model is written back unchanged;
- challenges rendered back as a header parse to the same challenges, and the token flow
  sends credentials only where `Authenticator` says it does;
- a reference that parses prints (`str`) to text that parses to the same `Reference`.

A broken promise raises `Broken` (not a `RafsError`): a crash, like any other exception.
Seeds are documents made with the project's own types and converter, plus the shapes
skopeo, umoci, Docker Hub and registries write, and challenges real registries send.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx

from rafs.digest import Digest
from rafs.errors import InvalidArgument, RafsError
from rafs.oci import constants as mt
from rafs.oci.descriptor import Descriptor, Platform
from rafs.oci.jsonfields import canonical_json, load_object
from rafs.oci.manifest import History, ImageConfig, Index, Manifest, parse_manifest
from rafs.oci.nydus_image import choose_manifest, nydus_manifest, parse_platform
from rafs.oci.reference import parse_reference
from rafs.registry.auth import Authenticator, Challenge, parse_challenges
from rafs.registry.credentials import Credentials


class Broken(Exception):
    """A parser broke one of its promises (not a `RafsError`: the fuzzer counts a crash)."""


def _digest(text: str) -> Digest:
    return Digest.of(text.encode())


# -- oci: documents --------------------------------------------------------------------------

Document = Manifest | Index | ImageConfig | Descriptor

_MODES: list[tuple[str, Callable[[bytes], Document]]] = [
    ("parse_manifest(no type)", lambda d: parse_manifest("", d, "fuzz")),
    ("parse_manifest(oci manifest)", lambda d: parse_manifest(mt.OCI_MANIFEST, d, "fuzz")),
    ("parse_manifest(docker manifest)", lambda d: parse_manifest(mt.DOCKER_MANIFEST, d, "fuzz")),
    ("parse_manifest(oci index)", lambda d: parse_manifest(mt.OCI_INDEX, d, "fuzz")),
    ("parse_manifest(docker list)", lambda d: parse_manifest(mt.DOCKER_MANIFEST_LIST, d, "fuzz")),
    ("parse_manifest(generic)", lambda d: parse_manifest("application/json", d, "fuzz")),
    ("ImageConfig.from_bytes", lambda d: ImageConfig.from_bytes(d, "fuzz")),
    ("Descriptor.from_json", lambda d: Descriptor.from_json(load_object(d, "fuzz"), "fuzz")),
]
"""The first byte of an `oci` input picks how the rest is parsed."""

# Keys each type models; any other key of its JSON object must be written back as it was.
_DESCRIPTOR_KEYS = {"mediaType", "digest", "size", "annotations", "urls", "platform",
                    "artifactType", "data"}  # fmt: skip
_PLATFORM_KEYS = {"os", "architecture", "variant", "os.version", "os.features"}
_DOCUMENT_KEYS = {"schemaVersion", "mediaType", "annotations", "subject", "artifactType"}
_MANIFEST_KEYS = _DOCUMENT_KEYS | {"config", "layers"}
_INDEX_KEYS = _DOCUMENT_KEYS | {"manifests"}
_CONFIG_KEYS = {"os", "architecture", "variant", "os.version", "os.features", "created",
                "author", "config", "rootfs", "history"}  # fmt: skip
_HISTORY_KEYS = {"created", "created_by", "author", "comment", "empty_layer"}


def _kept(original: Mapping[str, Any], written: Mapping[str, Any], known: set[str],
          what: str) -> None:  # fmt: skip
    """Every key of `original` not in `known` is in `written` with the same value."""
    for key, value in original.items():
        if key not in known and (key not in written or written[key] != value):
            raise Broken(f"{what}: unknown key {key!r} was not written back as it was")


def _kept_descriptor(original: Mapping[str, Any], written: Mapping[str, Any], what: str) -> None:
    _kept(original, written, _DESCRIPTOR_KEYS, what)
    if isinstance(original.get("platform"), dict):
        _kept(original["platform"], written["platform"], _PLATFORM_KEYS, f"{what}.platform")


def _kept_all(document: Document, original: Mapping[str, Any]) -> None:
    """Unknown keys survive in the document and in the descriptors and entries it holds."""
    written = document.to_json()
    if isinstance(document, Descriptor):
        _kept_descriptor(original, written, "descriptor")
        return
    if isinstance(document, ImageConfig):
        _kept(original, written, _CONFIG_KEYS, "config")
        _kept(original["rootfs"], written["rootfs"], {"type", "diff_ids"}, "config.rootfs")
        for i, entry in enumerate(original.get("history") or []):
            _kept(entry, written["history"][i], _HISTORY_KEYS, f"config.history[{i}]")
        return
    if isinstance(document, Manifest):
        _kept(original, written, _MANIFEST_KEYS, "manifest")
        _kept_descriptor(original["config"], written["config"], "manifest.config")
        children = ("layers", original["layers"], written["layers"])
    else:
        _kept(original, written, _INDEX_KEYS, "index")
        children = ("manifests", original["manifests"], written["manifests"])
    key, before, after = children
    for i, item in enumerate(before):
        _kept_descriptor(item, after[i], f"{key}[{i}]")
    if isinstance(original.get("subject"), dict):
        _kept_descriptor(original["subject"], written["subject"], "subject")


def _reparse(document: Document) -> Document:
    """The document written as canonical JSON (its `raw` dropped), then parsed again."""
    if isinstance(document, Descriptor):
        return Descriptor.from_json(load_object(canonical_json(document.to_json()), "again"))
    data = replace(document).to_bytes()  # `replace` drops `raw`: canonical JSON
    if isinstance(document, Manifest):
        return Manifest.from_bytes(data, "again")
    if isinstance(document, Index):
        return Index.from_bytes(data, "again")
    return ImageConfig.from_bytes(data, "again")


def _use(document: Document) -> None:
    """What the commands do with a parsed document beyond reading its fields."""
    if isinstance(document, Manifest):
        with contextlib.suppress(RafsError):
            nydus_manifest(document, "fuzz")
    elif isinstance(document, Index):
        for wanted in (Platform("linux", "amd64"), Platform("linux", "arm64", "v8")):
            with contextlib.suppress(RafsError):
                choose_manifest(document, wanted, "fuzz")
    elif isinstance(document, ImageConfig):
        str(document.platform)


_VOCABULARY: list[object] = [
    "", "layers", "manifests", "config", "mediaType", "digest", "size", "platform", "rootfs",
    "diff_ids", "history", "annotations", "subject", "os.features", "linux", "amd64", "v8",
    "true", "6", "x-vendor", mt.OCI_MANIFEST, mt.DOCKER_MANIFEST, mt.OCI_INDEX, mt.NYDUS_BLOB,
    mt.DOCKER_MANIFEST_LIST, mt.NYDUS_BOOTSTRAP_ANNOTATION, mt.NYDUS_FS_VERSION_ANNOTATION,
    mt.NYDUS_OS_FEATURE, "sha256:" + "a" * 64, "sha256:" + "A" * 64, "\u00e9\U0001f600",
    "\ud800", "a\x00b", 0, -1, 2, 1 << 63, -(1 << 64), 10**30, 0.5, -0.0, True, False, None,
]  # fmt: skip
"""Keys and values a tree edit puts into a document: names and media types the parsers look
for, and values of every JSON type."""


class _Program:
    """Fuzz bytes read one at a time (0 once they run out)."""

    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def byte(self) -> int:
        self.pos += 1
        return self.data[self.pos - 1] if self.pos <= len(self.data) else 0

    def value(self, depth: int = 0) -> object:
        kind = self.byte() % 8
        if kind == 6 and depth < 3:
            return [self.value(depth + 1) for _ in range(self.byte() % 3)]
        if kind == 7 and depth < 3:
            return {str(self.pick(_VOCABULARY)): self.value(depth + 1)
                    for _ in range(self.byte() % 3)}  # fmt: skip
        return self.pick(_VOCABULARY)

    def pick(self, items: list[Any]) -> Any:
        return items[self.byte() % len(items)]


def _edit(tree: dict[str, Any], program: _Program) -> None:
    """One edit: walk to a node, then set, delete or add a key (or an item)."""
    node: Any = tree
    for _ in range(program.byte() % 5):
        children = sorted(node) if isinstance(node, dict) else list(range(len(node)))
        if not children:
            break
        child = node[program.pick(children)]
        if not isinstance(child, dict | list):
            break
        node = child
    op = program.byte() % 3
    if isinstance(node, dict):
        keys = sorted(node)
        if op == 0 and keys:
            node[program.pick(keys)] = program.value()
        elif op == 1 and keys:
            del node[program.pick(keys)]
        else:
            node[str(program.pick(_VOCABULARY))] = program.value()
    elif op == 1 and node:
        del node[program.byte() % len(node)]
    else:
        node.insert(program.byte() % (len(node) + 1), program.value())


_bases: list[tuple[int, bytes]] = []


def oci_setup(workdir: Path | None = None) -> None:
    """Make the seed documents tree edits start from (before the first timed input)."""
    if not _bases:
        _bases.extend(_own_documents() + _written_by_others())


def _tree_input(data: bytes) -> tuple[int, bytes]:
    """(mode, document): a seed document changed by the tree edits `data` spells."""
    oci_setup()
    program = _Program(data)
    mode, base = program.pick(_bases)
    tree = json.loads(base)
    for _ in range(1 + program.byte() % 6):
        _edit(tree, program)
    indent = program.byte() % 4
    text = json.dumps(tree, indent=indent or None, ensure_ascii=indent == 3)
    return mode, text.encode("utf-8", "backslashreplace")


def oci_document(data: bytes) -> None:
    """An OCI/Docker manifest, index, config or descriptor: parse, use, round-trip.

    The first byte picks the parser (`_MODES`), or, above those, says the rest are tree
    edits to apply to a seed document: most inputs are then well-formed JSON, which reach
    the type checks and round trips instead of the JSON scanner's errors."""
    if not data:
        return
    mode, body = data[0], data[1:]
    if mode >= 2 * len(_MODES):
        mode, body = _tree_input(body)
    name, parse = _MODES[mode % len(_MODES)]
    document = parse(body)
    if not isinstance(document, Descriptor) and (
        document.to_bytes() != body or document.digest() != Digest.of(body)
    ):
        raise Broken(f"{name}: a parsed document does not keep its exact bytes")
    _use(document)
    _kept_all(document, load_object(body, "fuzz"))
    try:
        again = _reparse(document)
    except RafsError as exc:
        raise Broken(f"{name}: written back, it no longer parses: {exc}") from exc
    if again != document:
        raise Broken(f"{name}: written back and parsed again, it differs")


def _config_descriptor(config: ImageConfig) -> Descriptor:
    return Descriptor(mt.OCI_CONFIG, config.digest(), len(config.to_bytes()))


def _own_documents() -> list[tuple[int, bytes]]:
    """(mode, document) made with the project's own types and converter."""
    from rafs.convert.manifest import nydus_image  # imports most of rafs: not at startup

    history = (History(created="2026-11-01T10:00:00Z", created_by="/bin/sh -c #(nop) ADD file"),
               History(created_by="/bin/sh -c #(nop) CMD [\"sh\"]", empty_layer=True,
                       extra={"x-history": 1}))  # fmt: skip
    config = ImageConfig("linux", "amd64", (_digest("diff0"), _digest("diff1")), history,
                         created="2026-11-01T10:00:00Z",
                         config={"Env": ["PATH=/usr/bin:/bin"], "Cmd": ["sh"]},
                         extra={"x-config": {"nested": [1, 2.5, None, True]}})  # fmt: skip
    layers = tuple(
        Descriptor(mt.OCI_LAYER_GZIP, _digest(f"layer{i}"), 1000 + i,
                   annotations={mt.ANNOTATION_UNCOMPRESSED: _digest(f"diff{i}")})
        for i in range(2)
    )  # fmt: skip
    manifest = Manifest(_config_descriptor(config), layers,
                        annotations={mt.ANNOTATION_CREATED: "2026-11-01T10:00:00Z"})  # fmt: skip
    blobs = [Descriptor(mt.NYDUS_BLOB, _digest(f"blob{i}"), 5000 + i,
                        annotations={mt.ANNOTATION_UNCOMPRESSED: _digest(f"blob{i}")})
             for i in range(2)]  # fmt: skip
    boot_annotations = {mt.ANNOTATION_UNCOMPRESSED: _digest("boot-tar")}
    bootstrap = Descriptor(mt.OCI_LAYER_GZIP, _digest("boot"), 777, annotations=boot_annotations)
    source = Descriptor(mt.OCI_MANIFEST, manifest.digest(), len(manifest.to_bytes()),
                        platform=Platform("linux", "amd64"))  # fmt: skip
    nydus, nydus_config = nydus_image(manifest, config, blobs, bootstrap, source)
    nydus = replace(nydus, config=_config_descriptor(nydus_config))
    index = Index((
        replace(source, annotations={mt.ANNOTATION_REF_NAME: "latest"}),
        Descriptor(mt.OCI_MANIFEST, nydus.digest(), len(nydus.to_bytes()),
                   platform=Platform("linux", "amd64", os_features=(mt.NYDUS_OS_FEATURE,)),
                   artifact_type=mt.NYDUS_MANIFEST_ARTIFACT),
        Descriptor(mt.OCI_MANIFEST, _digest("arm"), 1,
                   platform=Platform("linux", "arm64", "v8", extra={"x-platform": "kept"}),
                   urls=("https://example.com/blob",), data="e30=", extra={"x-entry": []}),
    ), annotations={"org.opencontainers.image.version": "1.0"},
       extra={"x-index": "kept"})  # fmt: skip
    return [(1, manifest.to_bytes()), (0, nydus.to_bytes()), (3, index.to_bytes()),
            (6, config.to_bytes()), (6, nydus_config.to_bytes()),
            (7, canonical_json(index.manifests[2].to_json()))]  # fmt: skip


def _written_by_others() -> list[tuple[int, bytes]]:
    """Shapes other tools write: skopeo (Docker schema 2, indented), umoci (index.json, a
    config with history), Docker Hub's manifest list, an OCI artifact with a subject, and a
    Docker config with its many extra keys and a long history."""
    config_digest, layer_digest = _digest("config"), _digest("layer")
    skopeo_docker = json.dumps({
        "schemaVersion": 2, "mediaType": mt.DOCKER_MANIFEST,
        "config": {"mediaType": mt.DOCKER_CONFIG, "size": 1457, "digest": config_digest},
        "layers": [{"mediaType": mt.DOCKER_LAYER_GZIP, "size": 2591575, "digest": layer_digest}],
    }, indent=3)  # fmt: skip
    skopeo_oci = json.dumps({
        "schemaVersion": 2, "mediaType": mt.OCI_MANIFEST,
        "config": {"mediaType": mt.OCI_CONFIG, "digest": config_digest, "size": 1457},
        "layers": [{"mediaType": mt.OCI_LAYER_GZIP, "digest": layer_digest, "size": 2591575}],
        "annotations": {"org.opencontainers.image.base.name": "docker.io/library/alpine"},
    }, separators=(",", ":"))  # fmt: skip
    umoci_index = json.dumps({
        "schemaVersion": 2,
        "manifests": [{"mediaType": mt.OCI_MANIFEST, "digest": _digest("m"), "size": 348,
                       "annotations": {mt.ANNOTATION_REF_NAME: "latest"},
                       "platform": {"architecture": "amd64", "os": "linux"}}],
    }, separators=(",", ":"))  # fmt: skip
    umoci_config = json.dumps({
        "created": "2026-11-28T08:00:00.123456789Z", "architecture": "amd64", "os": "linux",
        "config": {"User": "0:0", "Env": ["PATH=/bin"], "WorkingDir": "/"},
        "rootfs": {"type": "layers", "diff_ids": [_digest("d")]},
        "history": [{"created": "2026-11-28T08:00:00Z", "created_by": "umoci config",
                     "author": "rafs", "empty_layer": True}],
    }, separators=(",", ":"))  # fmt: skip
    hub_list = json.dumps({
        "manifests": [
            {"digest": _digest(f"p{i}"), "mediaType": mt.DOCKER_MANIFEST, "size": 528,
             "platform": platform}
            for i, platform in enumerate([
                {"architecture": "amd64", "os": "linux"},
                {"architecture": "arm", "os": "linux", "variant": "v7"},
                {"architecture": "amd64", "os": "windows", "os.version": "10.0.20348.2113"},
                {"architecture": "arm64", "os": "linux", "variant": "v8",
                 "features": ["sse4"]},
            ])
        ],
        "mediaType": mt.DOCKER_MANIFEST_LIST, "schemaVersion": 2,
    }, indent=2)  # fmt: skip
    artifact = json.dumps({
        "schemaVersion": 2, "mediaType": mt.OCI_MANIFEST,
        "artifactType": "application/vnd.example.sbom.v1+json",
        "config": {"mediaType": mt.OCI_EMPTY, "digest": _digest("{}"), "size": 2,
                   "data": "e30="},
        "layers": [{"mediaType": "application/spdx+json", "digest": _digest("sbom"),
                    "size": 10, "annotations": {"org.opencontainers.image.title": "s.json"}}],
        "subject": {"mediaType": mt.OCI_MANIFEST, "digest": _digest("m"), "size": 348},
    }, separators=(",", ":"))  # fmt: skip
    docker_config = json.dumps({
        "architecture": "amd64", "os": "linux", "docker_version": "24.0.7",
        "created": "2026-11-01T10:00:00.5Z", "container": "0" * 64,
        "container_config": {"Hostname": "", "Cmd": ["/bin/sh", "-c", "#(nop) CMD"],
                             "Labels": {}, "OnBuild": None},
        "config": {"Env": ["PATH=/usr/local/bin:/usr/bin"], "Cmd": ["bash"], "Image": ""},
        "rootfs": {"type": "layers", "diff_ids": [_digest(f"d{i}") for i in range(12)]},
        "history": [{"created": f"2026-11-01T10:{i:02}:00Z",
                     "created_by": f"/bin/sh -c apt-get install -y package-{i} && rm -rf x",
                     "empty_layer": i % 3 == 0, "comment": "buildkit.dockerfile.v0"}
                    for i in range(30)],
    }, indent=4)  # fmt: skip
    return [(2, skopeo_docker.encode()), (1, skopeo_oci.encode()), (0, umoci_index.encode()),
            (6, umoci_config.encode()), (4, hub_list.encode()), (5, artifact.encode()),
            (6, docker_config.encode()), (5, hub_list.encode())]  # fmt: skip


def oci_seeds() -> list[bytes]:
    """Every seed document for its parser, then tree-edit programs over them that keep the
    document valid (an unknown key added at the top, or deeper)."""
    seeds = [bytes([mode]) + data for mode, data in _own_documents() + _written_by_others()]
    tree = 2 * len(_MODES)
    vendor = _VOCABULARY.index("x-vendor")
    for base in range(len(seeds)):
        for depth, value in ((0, 7), (1, 2), (2, 5)):
            program = bytes([tree, base, 0, depth, 1, 1, 2, vendor, value, 4, 0, 1])
            try:
                oci_document(program)
            except RafsError:
                continue
            seeds.append(program)
    return seeds


# -- auth: WWW-Authenticate and the token flow -----------------------------------------------

_AUTH_STATUS = (200, 200, 200, 401, 403, 404, 500)
_TOKEN_URL = "https://auth.example.com/token"


def _quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def render_challenges(challenges: list[Challenge]) -> str:
    """Challenges as a `WWW-Authenticate` value: `scheme k="v", k="v", scheme2 ...`."""
    return ", ".join(
        " ".join([c.scheme, ", ".join(f"{k}={_quote(v)}" for k, v in c.params.items())]).rstrip()
        for c in challenges
    )


def auth_flow(data: bytes) -> None:
    """`header \\n status-byte token-answer`: parse the challenges, check they render back,
    then answer the challenge as the client does, with a fake token server."""
    head, _, rest = data.partition(b"\n")
    header = head.decode("utf-8", "replace")
    challenges = parse_challenges(header)
    for challenge in challenges:
        if not challenge.scheme or challenge.scheme != challenge.scheme.lower():
            raise Broken(f"{header!r}: scheme {challenge.scheme!r} is not lowercase")
    rendered = render_challenges(challenges)
    if parse_challenges(rendered) != challenges:
        raise Broken(f"{header!r}: rendered back as {rendered!r}, it parses differently")

    status = _AUTH_STATUS[rest[0] % len(_AUTH_STATUS)] if rest else 200
    answer = rest[1:]
    fetched: list[tuple[httpx.URL, dict[str, str]]] = []

    def fetch(url: httpx.URL, headers: dict[str, str]) -> httpx.Response:
        fetched.append((url, headers))
        return httpx.Response(status, content=answer)

    scopes = frozenset({"repository:library/busybox:pull"})
    for credentials, plain in ((None, False), (Credentials("user", "secret"), False),
                               (Credentials("user", "secret"), True)):  # fmt: skip
        fetched.clear()
        auth = Authenticator("registry.example.com", credentials, plain)
        schemes = {c.scheme for c in challenges}
        try:
            value = auth.challenged(header, scopes, fetch)
        except RafsError:
            continue
        if "bearer" in schemes:
            url, headers = fetched[-1]
            if not value.startswith("Bearer ") or len(fetched) != 1:
                raise Broken(f"{header!r}: a Bearer challenge was answered with {value!r}")
            allowed = credentials is not None and (url.scheme == "https" or plain)
            if ("Authorization" in headers) != allowed:
                raise Broken(f"{header!r}: credentials sent to {url} (plain HTTP allowed: "
                             f"{plain}) should be {allowed}")  # fmt: skip
            if auth.authorization(scopes | _wanted(challenges), fetch) is None:
                raise Broken(f"{header!r}: no Authorization after a Bearer challenge")
        elif fetched or credentials is None or value != credentials.basic():
            raise Broken(f"{header!r}: a Basic challenge was answered with {value!r}")


def _wanted(challenges: list[Challenge]) -> frozenset[str]:
    bearer = {c.scheme: c for c in challenges}["bearer"]
    return frozenset(bearer.params.get("scope", "").split())


def auth_seeds() -> list[bytes]:
    """Challenges Docker Hub, GHCR, Quay, GCR, ECR, ACR and distribution send, each with a
    token answer."""
    headers = [
        'Bearer realm="https://auth.docker.io/token",service="registry.docker.io",'
        'scope="repository:library/busybox:pull"',
        'Bearer realm="https://ghcr.io/token",service="ghcr.io",scope="repository:org/img:pull"',
        'Bearer realm="https://quay.io/v2/auth",service="quay.io"',
        'Bearer realm="https://gcr.io/v2/token",service="gcr.io",'
        'scope="repository:google-containers/pause:pull"',
        'Basic realm="https://123456789012.dkr.ecr.us-east-1.amazonaws.com/",'
        'service="ecr.amazonaws.com"',
        'Bearer realm="https://reg.azurecr.io/oauth2/token",service="reg.azurecr.io",'
        'scope="repository:x:pull,push" , error="insufficient_scope"',
        'Basic realm="Registry Realm"',
        'Bearer realm="http://127.0.0.1:5001/token",service="rafs-test",'
        'scope="repository:a/b:pull repository:a/c:pull"',
        'Basic realm="x", Bearer realm="https://a.example/t",service="we \\"quote\\""',
        'Negotiate, Basic realm=plain, Bearer realm=https://x.example/t',
        "Bearer",
    ]
    answers = [
        (0, b'{"token":"abc.def.ghi","access_token":"abc.def.ghi","expires_in":300,'
            b'"issued_at":"2026-11-28T08:00:00Z"}'),
        (0, b'{"access_token":"t0k3n"}'),
        (0, b'{"token":"t","expires_in":"60"}'),
        (3, b'{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}'),
    ]  # fmt: skip
    return [header.encode() + b"\n" + bytes([status]) + body
            for i, header in enumerate(headers)
            for status, body in answers[i % len(answers) : i % len(answers) + 2]]  # fmt: skip


# -- reference: oci:PATH[:TAG] and docker://... ----------------------------------------------


def reference(data: bytes) -> None:
    """`parse_reference` (and `parse_platform`) on any text: only `InvalidArgument` escapes,
    and what parses prints back to text that parses to the same value."""
    text = data.decode("utf-8", "surrogateescape")
    try:
        ref = parse_reference(text)
    except InvalidArgument:
        ref = None
    if ref is not None:
        printed = str(ref)
        try:
            again = parse_reference(printed)
        except InvalidArgument as exc:
            raise Broken(f"{text!r} prints as {printed!r}, which does not parse: {exc}") from exc
        if again != ref:
            raise Broken(f"{text!r} prints as {printed!r}, which parses to {again!r}")
        ref.name  # noqa: B018 - the property is what the registry code reads
        if ref.transport == "docker":
            ref.api_host  # noqa: B018
    try:
        platform = parse_platform(text)
    except InvalidArgument:
        return
    if parse_platform(str(platform)) != platform:
        raise Broken(f"platform {text!r} prints as {platform}, which parses differently")


def reference_seeds() -> list[bytes]:
    digest = _digest("ref")
    texts = [
        "oci:/var/lib/images/layout", "oci:layout:latest", "oci:./dir:v1.0-rc1+build.5",
        "oci:out:docker.io/library/busybox:1.36", "docker://busybox",
        "docker://docker.io/library/busybox:1.36", f"docker://ghcr.io/org/img@{digest}",
        f"docker://localhost:5000/ns/img:tag@{digest}", "docker://[::1]:5000/x/y",
        "docker://quay.io/coreos/etcd:v3.5.0", "docker://index.docker.io/library/ubuntu",
        "docker://registry.example.com:443/a/b/c__d-e.f:latest", "docker://localhost/a",
        "linux/amd64", "linux/arm64/v8",
    ]  # fmt: skip
    return [text.encode() for text in texts]
