"""A real registry for tests: Debian's `docker-registry` (distribution 2.8) on loopback.

`start_registry(dir)` writes a config (JSON, which the YAML loader accepts) with filesystem
storage under `dir`, deletes enabled and the HTTP listener on 127.0.0.1 at a free port,
starts `docker-registry serve` and waits until `/v2/` answers. `auth` adds the config's
`auth` section as given: `htpasswd_auth()` for Basic, or `TokenServer.auth_config()` for
Bearer tokens. Missing binary: the test fails saying how to install it.

`skopeo()` runs the real skopeo against such a registry (plain HTTP, no trust policy, its
temp files under the test's directory).
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.daemon import run_daemon

REGISTRY_HINT = ("docker-registry is not installed: run `make apt` "
                 "(or `apt-get install docker-registry`)")
SKOPEO_HINT = "skopeo is not installed: run `make apt` (or `apt-get install skopeo`)"


@dataclass(frozen=True)
class Registry:
    host: str
    """`127.0.0.1:PORT`."""
    storage: Path
    log: Path

    def blob_file(self, digest: str) -> Path:
        """Where the registry keeps a blob's bytes (its filesystem driver layout)."""
        hex_digest = digest.split(":", 1)[1]
        return (self.storage / "docker/registry/v2/blobs/sha256" / hex_digest[:2]
                / hex_digest / "data")  # fmt: skip


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def htpasswd_auth(base: Path, users: dict[str, str]) -> dict[str, Any]:
    """An `auth.htpasswd` section for `users` (bcrypt, the only hash distribution accepts;
    cost 4, as the registry checks it on every request)."""
    path = base / "htpasswd"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import crypt  # deprecated, but glibc's crypt() is the stdlib's only bcrypt

        lines = [f"{user}:{crypt.crypt(password, crypt.mksalt(crypt.METHOD_BLOWFISH, rounds=16))}\n"
                 for user, password in users.items()]  # fmt: skip
    path.write_text("".join(lines))
    return {"htpasswd": {"realm": "rafs-test", "path": str(path)}}


@contextmanager
def start_registry(base: Path, auth: dict[str, Any] | None = None,
                   timeout: float = 20.0) -> Iterator[Registry]:  # fmt: skip
    binary = shutil.which("docker-registry")
    if binary is None:
        pytest.fail(REGISTRY_HINT, pytrace=False)
    base.mkdir(parents=True, exist_ok=True)
    host = f"127.0.0.1:{free_port()}"
    storage = base / "data"
    config: dict[str, Any] = {
        "version": "0.1",
        "log": {"level": "info"},
        "storage": {
            "filesystem": {"rootdirectory": str(storage)},
            "delete": {"enabled": True},
            "maintenance": {"uploadpurging": {"enabled": False}},
        },
        "http": {"addr": host, "secret": "rafs-test-secret"},
    }
    if auth is not None:
        config["auth"] = auth
    (base / "config.yml").write_text(json.dumps(config, indent=1))
    log = base / "registry.log"
    with run_daemon([binary, "serve", str(base / "config.yml")], log, lambda: _answers(host),
                    "docker-registry", timeout=timeout, poll=0.03):  # fmt: skip
        yield Registry(host, storage, log)


def _answers(host: str) -> bool:
    try:
        return httpx.get(f"http://{host}/v2/", timeout=1).status_code in (200, 401)
    except httpx.TransportError:
        return False


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    """An open (no auth) registry for the test module; import it into the module to use it."""
    with start_registry(tmp_path_factory.mktemp("registry")) as running:
        yield running


def skopeo(*args: str | Path, tmpdir: Path) -> str:
    """Run `skopeo ARGS` (global options first); return stdout or fail with its stderr."""
    if shutil.which("skopeo") is None:
        pytest.fail(SKOPEO_HINT, pytrace=False)
    command = ["skopeo", "--insecure-policy", "--tmpdir", str(tmpdir), *map(str, args)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    if result.returncode != 0:
        pytest.fail(f"{' '.join(command)} failed ({result.returncode}): {result.stderr.strip()}",
                    pytrace=False)  # fmt: skip
    return result.stdout
