"""The content store a command works on: a directory (`--store DIR`) or a running
containerd (`--containerd SOCKET [--namespace NS]`), and the cache of layer refs over it.

A directory store keeps the cache's records in `DIR/cache/`. A containerd keeps only content,
so its cache records go to `$XDG_CACHE_HOME/rafs/containerd/<socket id>/<namespace>`
(default `~/.cache/rafs/...`; the socket id is a hash of the socket's real path).
"""

from __future__ import annotations

import argparse
import hashlib
import os
from pathlib import Path
from typing import TYPE_CHECKING

from rafs.content import Store
from rafs.content.local import LocalStore

if TYPE_CHECKING:
    from rafs.cache import CacheManager


def add_store_arguments(parser: argparse.ArgumentParser, *, required: bool,
                        store_help: str) -> None:  # fmt: skip
    where = parser.add_mutually_exclusive_group(required=required)
    where.add_argument("--store", type=Path, metavar="DIR", help=store_help)
    where.add_argument("--containerd", type=Path, metavar="SOCKET",
                       help="use a running containerd's content store (its gRPC socket)")
    parser.add_argument("--namespace", default="default",
                        help="containerd namespace (default: default)")  # fmt: skip


def cache_home() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "rafs"


def open_store(args: argparse.Namespace, *, create: bool = False,
               default: Path | None = None) -> Store:  # fmt: skip
    """The store the arguments name; `default` is the directory used when none is named."""
    if args.containerd is not None:
        from rafs.content.containerd import ContainerdStore  # grpc loads only when asked

        return ContainerdStore(args.containerd, args.namespace)
    return LocalStore(_store_dir(args, default), create=create)


def open_cache(args: argparse.Namespace, *, create: bool = False,
               default: Path | None = None) -> CacheManager:  # fmt: skip
    """The ref cache over `open_store(args, ...)`, its records where the module says."""
    from rafs.cache import CacheManager  # the builder and reader behind it: not for `content`

    store = open_store(args, create=create, default=default)
    if args.containerd is not None:
        socket_id = hashlib.sha256(str(args.containerd.resolve()).encode()).hexdigest()[:16]
        return CacheManager(store, cache_home() / "containerd" / socket_id / args.namespace)
    return CacheManager(store, _store_dir(args, default) / "cache")


def _store_dir(args: argparse.Namespace, default: Path | None) -> Path:
    directory: Path | None = args.store or default
    assert directory is not None, "argparse requires --store or --containerd without a default"
    return directory
