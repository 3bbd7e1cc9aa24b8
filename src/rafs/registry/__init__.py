"""A client for the OCI distribution API (Docker Registry HTTP API v2), on httpx.

`RegistryClient` is one registry host (connection pool, authentication, retries);
`RegistryClient.repository(name)` gives a `Repository` with the manifest and blob
operations. Everything is synchronous; one client may be shared between threads.

The client's names load on first use (and httpx with them), so that a command reading local
files, which only asks whether its argument is a registry reference, starts without them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from rafs.registry.credentials import Credentials, docker_config_path, load_docker_credentials

if TYPE_CHECKING:
    from rafs.registry.client import RegistryClient
    from rafs.registry.repository import MAX_MANIFEST_SIZE, Repository
    from rafs.registry.retry import RetryPolicy

_LOADED_ON_USE = {
    "RegistryClient": "rafs.registry.client",
    "MAX_MANIFEST_SIZE": "rafs.registry.repository",
    "Repository": "rafs.registry.repository",
    "RetryPolicy": "rafs.registry.retry",
}

__all__ = [
    "MAX_MANIFEST_SIZE",
    "Credentials",
    "RegistryClient",
    "Repository",
    "RetryPolicy",
    "docker_config_path",
    "load_docker_credentials",
]


def __getattr__(name: str) -> Any:
    module = _LOADED_ON_USE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
