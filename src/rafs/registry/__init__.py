"""A client for the OCI distribution API (Docker Registry HTTP API v2), on httpx.

`RegistryClient` is one registry host (connection pool, authentication, retries);
`RegistryClient.repository(name)` gives a `Repository` with the manifest and blob
operations. Everything is synchronous; one client may be shared between threads.
"""

from rafs.registry.client import RegistryClient
from rafs.registry.credentials import Credentials, docker_config_path, load_docker_credentials
from rafs.registry.repository import MAX_MANIFEST_SIZE, Repository
from rafs.registry.retry import RetryPolicy

__all__ = [
    "MAX_MANIFEST_SIZE",
    "Credentials",
    "RegistryClient",
    "Repository",
    "RetryPolicy",
    "docker_config_path",
    "load_docker_credentials",
]
