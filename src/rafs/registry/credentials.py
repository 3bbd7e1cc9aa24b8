"""Registry credentials from a Docker config file, as the Docker CLI finds them.

The file is `$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`. For a registry host:
1. `credHelpers: {"HOST": "NAME"}` names a credential helper for that host;
2. else `credsStore: "NAME"` names one for every host;
3. else `auths: {"HOST": {"auth": base64("user:password")}}` (or `username` and `password`)
   holds them in the file. Keys may be URLs (`https://index.docker.io/v1/` for Docker Hub);
   only their host part is compared.

A helper is the program `docker-credential-NAME` on `PATH` (docker-credential-helpers'
protocol): `get` with the server's address on stdin - the host, or
`https://index.docker.io/v1/` for Docker Hub - answers `{"Username": ..., "Secret": ...}`,
or fails saying "credentials not found" (then there are none: the helper decides, as it does
for Docker). An identity token (user name `<token>`, an OAuth refresh token) is not
supported; the registry is then asked anonymously.
"""

from __future__ import annotations

import base64
import json
import logging
import re
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from rafs.errors import FailedPrecondition, FormatError

log = logging.getLogger(__name__)

DOCKER_HUB_KEYS = ("docker.io", "index.docker.io", "registry-1.docker.io")
DOCKER_HUB_SERVER = "https://index.docker.io/v1/"
HELPER_TIMEOUT_SECONDS = 60  # a helper may ask the user (a GPG passphrase, a keychain prompt)
_NOT_FOUND = "credentials not found"
_IDENTITY_TOKEN_USER = "<token>"


@dataclass(frozen=True)
class Credentials:
    username: str
    password: str = field(repr=False)

    def basic(self) -> str:
        pair = f"{self.username}:{self.password}".encode()
        return "Basic " + base64.b64encode(pair).decode()


def docker_config_path(environ: Mapping[str, str], home: Path) -> Path:
    """Where Docker keeps its config: `$DOCKER_CONFIG/config.json` or `~/.docker/config.json`."""
    base = environ.get("DOCKER_CONFIG")
    return Path(base) / "config.json" if base else home / ".docker" / "config.json"


def load_docker_credentials(path: Path, host: str) -> Credentials | None:
    """The credentials the Docker config at `path` gives `host` (None if none or no file)."""
    try:
        config = json.loads(path.read_bytes())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise FormatError(f"{path}: cannot read Docker config ({exc})") from None
    if not isinstance(config, dict):
        return None
    wanted = {host} | (set(DOCKER_HUB_KEYS) if host in DOCKER_HUB_KEYS else set())
    helpers = config.get("credHelpers")
    if isinstance(helpers, dict):
        for key, name in helpers.items():
            if _key_host(key) in wanted and isinstance(name, str) and name:
                return _helper_credentials(name, host, path)
    store = config.get("credsStore")
    if isinstance(store, str) and store:
        return _helper_credentials(store, host, path)
    auths = config.get("auths")
    if not isinstance(auths, dict):
        return None
    for key, entry in auths.items():
        if _key_host(key) in wanted and isinstance(entry, dict):
            return _entry_credentials(entry, path, key)
    return None


def _key_host(key: str) -> str:
    return re.sub(r"^[a-z]+://", "", key).split("/", 1)[0]


def _entry_credentials(entry: Mapping[str, object], path: Path, key: str) -> Credentials | None:
    encoded = entry.get("auth")
    if isinstance(encoded, str) and encoded:
        try:
            user, colon, password = base64.b64decode(encoded, validate=True).decode().partition(":")
        except ValueError:
            raise FormatError(f"{path}: auths[{key!r}].auth is not base64 user:password") from None
        if not colon:
            raise FormatError(f"{path}: auths[{key!r}].auth has no ':' between user and password")
        return Credentials(user, password)
    name, secret = entry.get("username"), entry.get("password")
    if isinstance(name, str) and isinstance(secret, str) and name:
        return Credentials(name, secret)
    return None


def _helper_credentials(name: str, host: str, path: Path) -> Credentials | None:
    """Ask `docker-credential-NAME get` for `host`'s credentials."""
    program = f"docker-credential-{name}"
    server = DOCKER_HUB_SERVER if host in DOCKER_HUB_KEYS else host
    what = f"{path}: credential helper {program} for {server}"
    try:
        answer = subprocess.run([program, "get"], input=server.encode(), capture_output=True,
                                timeout=HELPER_TIMEOUT_SECONDS, check=False)  # fmt: skip
    except FileNotFoundError:
        raise FailedPrecondition(f"{what}: {program} is not on PATH") from None
    except subprocess.TimeoutExpired:
        raise FailedPrecondition(f"{what}: no answer in {HELPER_TIMEOUT_SECONDS} s") from None
    except OSError as exc:
        raise FailedPrecondition(f"{what}: cannot run it ({exc})") from None
    said = (answer.stdout + answer.stderr).decode(errors="replace").strip()
    if answer.returncode != 0:
        if _NOT_FOUND in said:
            return None
        first_line = said.splitlines()[0] if said else f"exit status {answer.returncode}"
        raise FailedPrecondition(f"{what}: {first_line}")
    try:
        reply = json.loads(answer.stdout)
        username, secret = reply["Username"], reply["Secret"]
    except (ValueError, KeyError, TypeError):
        raise FormatError(f"{what}: answer is not {{\"Username\", \"Secret\"}} JSON") from None
    if not isinstance(username, str) or not isinstance(secret, str):
        raise FormatError(f"{what}: Username and Secret must be strings")
    if username == _IDENTITY_TOKEN_USER:
        log.warning("%s: an identity token, which rafs does not support; asking anonymously",
                    what)  # fmt: skip
        return None
    return Credentials(username, secret)
