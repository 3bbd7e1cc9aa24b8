"""Authentication against real registries: htpasswd (Basic) and token (Bearer) auth, with
credentials from a Docker config file."""

from __future__ import annotations

import base64
import json
import os
import shlex
from collections.abc import Iterator
from pathlib import Path

import pytest

from rafs.digest import Digest
from rafs.errors import FailedPrecondition
from rafs.oci import Descriptor, Manifest
from rafs.oci import constants as mt
from rafs.registry import Credentials, RegistryClient, docker_config_path, load_docker_credentials
from tests.support.registry import Registry, htpasswd_auth, start_registry
from tests.support.token_server import SERVICE, TokenServer, start_token_server

USERS = {"alice": "s3cret:with colon"}


@pytest.fixture(scope="module")
def basic_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    base = tmp_path_factory.mktemp("basic-registry")
    with start_registry(base, auth=htpasswd_auth(base, USERS)) as running:
        yield running


@pytest.fixture(scope="module")
def token_setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Registry, TokenServer]]:
    base = tmp_path_factory.mktemp("token-registry")
    with start_token_server(base / "token", USERS) as tokens, \
            start_registry(base / "registry", auth=tokens.auth_config()) as running:  # fmt: skip
        yield running, tokens


def _docker_config(home: Path, host: str, user: str, password: str) -> Credentials | None:
    path = docker_config_path({}, home)
    path.parent.mkdir(parents=True, exist_ok=True)
    auth = base64.b64encode(f"{user}:{password}".encode()).decode()
    path.write_text(json.dumps({"auths": {"https://other.example/v1/": {"auth": "eDp5"},
                                          f"http://{host}": {"auth": auth}}}))  # fmt: skip
    return load_docker_credentials(path, host)


def _round_trip(client: RegistryClient, name: str) -> None:
    repo = client.repository(name)
    data = b"layer bytes " * 1000
    layer = Descriptor(mt.OCI_LAYER_GZIP, Digest.of(data), len(data))
    repo.push_blob(data, layer, chunk_size=5000)
    config = b"{}"
    config_d = Descriptor(mt.OCI_CONFIG, Digest.of(config), len(config))
    repo.push_blob(config, config_d)
    pushed = repo.put_manifest(Manifest(config_d, (layer,)), "v1")
    assert repo.get_manifest("v1")[0].digest == pushed.digest
    assert repo.get_blob(layer) == data


def test_docker_config_lookup(tmp_path: Path) -> None:
    assert docker_config_path({"DOCKER_CONFIG": "/x"}, tmp_path) == Path("/x/config.json")
    assert load_docker_credentials(tmp_path / "none.json", "h:1") is None
    assert _docker_config(tmp_path, "h:1", "bob", "p:w") == Credentials("bob", "p:w")
    assert load_docker_credentials(docker_config_path({}, tmp_path), "h:2") is None
    hub = tmp_path / "hub.json"
    hub.write_text(json.dumps({"auths": {"https://index.docker.io/v1/": {
        "username": "u", "password": "p"}}}))  # fmt: skip
    assert load_docker_credentials(hub, "registry-1.docker.io") == Credentials("u", "p")


def _credential_helper(bin_dir: Path, name: str, answers: dict[str, dict[str, str]]) -> None:
    """`docker-credential-NAME` in `bin_dir`: `get` answers each server's JSON, else says
    "credentials not found" as docker-credential-helpers do."""
    cases = "".join(f"  {json.dumps(server)}) printf '%s' {shlex.quote(json.dumps(reply))};;\n"
                    for server, reply in answers.items())  # fmt: skip
    helper = bin_dir / f"docker-credential-{name}"
    helper.write_text(f"""#!/bin/sh
[ "$1" = get ] || exit 2
server=$(cat)
case "$server" in
{cases}  *) echo "credentials not found in native keychain"; exit 1;;
esac
""")
    helper.chmod(0o755)


@pytest.mark.registry
def test_credential_helpers(basic_registry: Registry, tmp_path: Path,
                            monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    """`credHelpers` (per host) before `credsStore` (every host) before `auths`, as the Docker
    CLI: the helper's answer is final; its credentials then open the real registry."""
    host = basic_registry.host
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    _credential_helper(bin_dir, "store", {host: {"Username": "alice", "Secret": USERS["alice"]},
                                          "https://index.docker.io/v1/": {
                                              "Username": "<token>", "Secret": "refresh"}})
    _credential_helper(bin_dir, "other", {host: {"Username": "bob", "Secret": "other"}})
    config = tmp_path / "config.json"
    in_file = {"auths": {host: {"username": "carol", "password": "in the file"}}}

    def lookup(settings: dict[str, object], for_host: str = host) -> Credentials | None:
        config.write_text(json.dumps({**in_file, **settings}))
        return load_docker_credentials(config, for_host)

    assert lookup({}) == Credentials("carol", "in the file")
    credentials = lookup({"credsStore": "store"})
    assert credentials == Credentials("alice", USERS["alice"])
    assert lookup({"credsStore": "store", "credHelpers": {host: "other"}}) == Credentials(
        "bob", "other")  # fmt: skip
    assert lookup({"credsStore": "store"}, "elsewhere:5000") is None  # "not found": final
    assert lookup({"credsStore": "store"}, "docker.io") is None  # an identity token
    with pytest.raises(FailedPrecondition, match="docker-credential-absent is not on PATH"):
        lookup({"credHelpers": {f"https://{host}": "absent"}})
    with RegistryClient(host, plain_http=True, credentials=credentials) as client:
        _round_trip(client, "rafs/helper")


@pytest.mark.registry
def test_basic_auth(basic_registry: Registry, tmp_path: Path) -> None:
    credentials = _docker_config(tmp_path, basic_registry.host, "alice", USERS["alice"])
    with RegistryClient(basic_registry.host, plain_http=True, credentials=credentials) as client:
        client.ping()
        _round_trip(client, "rafs/basic")

    no_credentials = "authentication required and no credentials"
    with RegistryClient(basic_registry.host, plain_http=True) as anonymous, \
            pytest.raises(FailedPrecondition, match=no_credentials):  # fmt: skip
        anonymous.repository("rafs/basic").get_manifest("v1")
    wrong = Credentials("alice", "wrong")
    denied = r"rafs/basic:v1: access denied: UNAUTHORIZED"
    with RegistryClient(basic_registry.host, plain_http=True, credentials=wrong) as client, \
            pytest.raises(FailedPrecondition, match=denied):  # fmt: skip
        client.repository("rafs/basic").get_manifest("v1")


@pytest.mark.registry
def test_bearer_token(token_setup: tuple[Registry, TokenServer], tmp_path: Path) -> None:
    registry, tokens = token_setup
    credentials = _docker_config(tmp_path, registry.host, "alice", USERS["alice"])
    tokens.requests.clear()
    with RegistryClient(registry.host, plain_http=True, credentials=credentials) as client:
        _round_trip(client, "rafs/token")
        source = client.repository("rafs/token")
        target = client.repository("rafs/token-copy")
        data = b"layer bytes " * 1000
        assert target.mount_blob(Digest.of(data), source.name) is True
    assert tokens.requests and all(r.granted and r.service == SERVICE for r in tokens.requests)
    asked = {scope for r in tokens.requests for scope in r.scopes}
    assert {"repository:rafs/token:pull,push", "repository:rafs/token:pull",
            "repository:rafs/token-copy:pull,push"} <= asked  # fmt: skip
    # tokens are cached per scope set: far fewer token requests than API requests
    assert len(tokens.requests) <= 6


@pytest.mark.registry
def test_bearer_token_refused(token_setup: tuple[Registry, TokenServer]) -> None:
    registry, _ = token_setup
    refused = "refused anonymous access for repository:rafs/x:pull"
    with RegistryClient(registry.host, plain_http=True) as anonymous, \
            pytest.raises(FailedPrecondition, match=refused):  # fmt: skip
        anonymous.repository("rafs/x").get_manifest("v1")
    wrong = Credentials("alice", "nope")
    with RegistryClient(registry.host, plain_http=True, credentials=wrong) as client, \
            pytest.raises(FailedPrecondition, match="refused the credentials"):  # fmt: skip
        client.ping()


@pytest.mark.registry
def test_no_password_to_plain_http_realm(token_setup: tuple[Registry, TokenServer]) -> None:
    """Over https the client would not send the password to an http:// realm."""
    registry, tokens = token_setup
    from rafs.registry.auth import Authenticator

    tokens.requests.clear()
    seen: list[dict[str, str]] = []

    def fetch(url: object, headers: dict[str, str]) -> object:
        seen.append(headers)
        raise FailedPrecondition("stop")

    auth = Authenticator(registry.host, Credentials("alice", "x"), allow_plain_http=False)
    with pytest.raises(FailedPrecondition):
        auth.challenged(f'Bearer realm="{tokens.url}/token",service="s"', frozenset(), fetch)  # type: ignore[arg-type]
    assert seen == [{}]
