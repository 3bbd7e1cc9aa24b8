"""The real `nydus-image` and `nydusd` (2.2, built by `make judges`) on this machine's files.

`nydus_image_layer()` writes a Nydus layer file as the Go converter asks `nydus-image
create` for one; `nydus_image_dir_build()` builds a bootstrap and blob from a directory.
`pax_safe_copy()` copies a source tree into a form nydus-image 2.2 can read as a tar,
`as_nydus_image_stores()` says what of it a tar build keeps. `nydusd_mount()` serves a
bootstrap with a dedicated `nydusd` FUSE daemon (localfs or registry backend), waits until
it serves and always unmounts and stops it; `assert_nydusd_serves()` compares what it
serves with the source tree.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import shutil
import subprocess
import tarfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.daemon import run_daemon
from tests.support.judges import nydus_image, nydusd, run_judge
from tests.support.tree import ROOT, Entry, compare, snapshot


def nydus_image_layer(tar: Path, out: Path, fs_version: int, compressor: str) -> Path:
    """`nydus-image create` of `tar` into the layer file `out`, as the Go converter does:
    `--type tar-rafs --blob-inline-meta`, and for v6 `--features blob-toc` (v5 refuses it:
    "`--features blob-toc` can't be used with `--version 5`")."""
    features = ["--features", "blob-toc"] if fs_version == 6 else []
    run_judge([nydus_image(), "create", "--type", "tar-rafs", "--blob-inline-meta", *features,
               "--fs-version", str(fs_version), "--compressor", compressor,
               "--blob", out, "--log-level", "warn", tar])  # fmt: skip
    return out


def nydus_image_dir_build(source: Path, out: Path, *options: str,
                          prefetch: Sequence[str] = ()) -> Path:  # fmt: skip
    """`nydus-image create --type dir-rafs OPTIONS SOURCE` into the folder `out`: returns
    the bootstrap `OUT/image.boot`; the blob, when any file has data, is `OUT/<blob id>`.
    `prefetch` paths go on its stdin with `--prefetch-policy fs`."""
    out.mkdir(parents=True, exist_ok=True)
    policy = ["--prefetch-policy", "fs"] if prefetch else []
    argv = [str(nydus_image()), "create", "--type", "dir-rafs", *policy, *options,
            "--bootstrap", str(out / "image.boot"), "--blob-dir", str(out),
            "--log-level", "warn", str(source)]  # fmt: skip
    result = subprocess.run(argv, input="".join(f"{path}\n" for path in prefetch),
                            capture_output=True, text=True, timeout=300)  # fmt: skip
    if result.returncode != 0:
        pytest.fail(f"{' '.join(argv)} exited {result.returncode}:\n{result.stderr.strip()}",
                    pytrace=False)  # fmt: skip
    return out / "image.boot"


def pax_safe_copy(tree: Path, copy: Path) -> Path:
    """`tree` copied to `copy` (`cp -a`) with every newline byte taken out of xattr values.

    nydus-image 2.2 reads tars with the `tar` crate, which splits PAX records at newline
    bytes: a tar holding an xattr value with a 0x0a byte fails its build with "failed to
    parse PaxExtension from tar header, malformed pax extension". Everything else (every
    entry kind, owner, mode, time, the xattrs themselves) stays as it was.
    """
    subprocess.run(["cp", "-a", str(tree), str(copy)], check=True)
    for dirpath, dirnames, filenames in os.walk(copy):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            for key in os.listxattr(path, follow_symlinks=False):
                value = os.getxattr(path, key, follow_symlinks=False)
                if b"\n" in value:
                    os.setxattr(path, key, value.replace(b"\n", b""), follow_symlinks=False)
    return copy


def as_nydus_image_stores(expected: dict[str, Entry]) -> dict[str, Entry]:
    """A source snapshot as nydus-image 2.2 stores it from a tar: mtimes in whole seconds.

    Its tar builder takes the mtime of the ustar header and writes `i_mtime_nsec: 0`
    (src/bin/nydus-image/builder/tarball.rs at v2.2.0), so a PAX mtime's fraction is lost.
    """
    return {key: replace(entry, mtime_ns=entry.mtime_ns // 10**9 * 10**9)
            for key, entry in expected.items()}  # fmt: skip


@dataclass(frozen=True)
class NydusdMount:
    mountpoint: Path
    log: Path
    started_s: int
    """Wall-clock second nydusd was started in (see `assert_nydusd_serves`)."""

    socket: Path
    """nydusd's API socket."""

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def backend_metrics(self) -> dict[str, Any]:
        """`GET /api/v1/metrics/backend`: backend_type, read_count, read_errors,
        read_amount_total (bytes fetched from the backend) and latency histograms."""
        metrics: dict[str, Any] = _api_get(self.socket, "/api/v1/metrics/backend")
        return metrics


def localfs_backend(blob_dir: Path) -> dict[str, Any]:
    """nydusd's `localfs` backend: blobs are the files `BLOB_DIR/<blob id>`."""
    return {"type": "localfs", "config": {"dir": str(blob_dir)}}


def registry_backend(host: str, repository: str) -> dict[str, Any]:
    """nydusd's `registry` backend: blobs fetched from `http://HOST/v2/REPO/blobs/sha256:<id>`."""
    return {"type": "registry",
            "config": {"scheme": "http", "host": host, "repo": repository, "timeout": 30,
                       "connect_timeout": 10, "retry_limit": 2}}  # fmt: skip


@contextmanager
def nydusd_mount(bootstrap: Path, backend: dict[str, Any], work: Path, *,
                 prefetch: bool = False, timeout: float = 30) -> Iterator[NydusdMount]:  # fmt: skip
    """Serve `bootstrap` at `WORK/mnt` with nydusd (FUSE, blobcache under `WORK/cache`).

    The config is nydusd's JSON of docs/nydusd.md (v2.2.0): `enable_xattr` (off by default),
    no `digest_validate` (nydusd 2.2 refuses it for RAFS v6), and `fs_prefetch` when
    `prefetch` (the bootstrap's prefetch table read ahead in the background). nydusd runs
    with `--rlimit-nofile 0`: it otherwise raises RLIMIT_NOFILE to 1,000,000 and exits with
    EPERM where the hard limit is lower and it lacks CAP_SYS_RESOURCE. The mount counts as
    up once the API socket says RUNNING and the mountpoint is mounted; a nydusd that exits
    or does not get there within `timeout` seconds fails the test with its log's tail.
    """
    work.mkdir(parents=True, exist_ok=True)
    mountpoint, socket, log = work / "mnt", work / "api.sock", work / "nydusd.log"
    mountpoint.mkdir(exist_ok=True)
    config = {
        "device": {"backend": backend,
                   "cache": {"type": "blobcache", "config": {"work_dir": str(work / "cache")}}},
        "mode": "direct",
        "digest_validate": False,
        "enable_xattr": True,
        "fs_prefetch": {"enable": prefetch, "threads_count": 2, "merging_size": 1 << 20},
    }  # fmt: skip
    (work / "nydusd.json").write_text(json.dumps(config, indent=1))
    argv = [str(nydusd()), "--config", str(work / "nydusd.json"), "--mountpoint", str(mountpoint),
            "--bootstrap", str(bootstrap), "--apisock", str(socket), "--log-level", "info",
            "--rlimit-nofile", "0"]  # fmt: skip
    started_s = int(time.time())
    with run_daemon(argv, log, lambda: _serving(socket, mountpoint), "nydusd",
                    timeout=timeout, poll=0.05):  # fmt: skip
        try:
            yield NydusdMount(mountpoint, log, started_s, socket)
        finally:
            _unmount(mountpoint)


def _api_get(socket: Path, path: str) -> Any:
    with httpx.Client(transport=httpx.HTTPTransport(uds=str(socket)), timeout=10) as client:
        response = client.get(f"http://localhost{path}")
        response.raise_for_status()
        return response.json()


def _serving(socket: Path, mountpoint: Path) -> bool:
    if not socket.exists():
        return False
    try:
        state = _api_get(socket, "/api/v1/daemon").get("state")
    except (httpx.HTTPError, ValueError):
        return False
    return state == "RUNNING" and os.path.ismount(mountpoint)


def _unmount(mountpoint: Path) -> None:
    if not os.path.ismount(mountpoint):
        return
    if subprocess.run(["umount", str(mountpoint)], capture_output=True).returncode != 0:
        subprocess.run(["umount", "--lazy", str(mountpoint)], capture_output=True)


def assert_nydusd_serves(source: Path, mount: NydusdMount) -> None:
    """The tree nydusd serves equals `source` in every compared field (root mtime aside),
    with the two changes nydusd 2.2 makes to what the bootstrap says (rafs/src/fs.rs,
    `get_inode_attr`/`get_inode_entry`): the root directory's permission bits are always
    0755, and an inode whose mtime is 0 shows the time nydusd started (such an entry must
    carry a time from then on, and is then compared as 0).
    """
    expected = snapshot(source)
    root = expected[ROOT]
    expected[ROOT] = replace(root, mode=root.mode & ~0o777 | 0o755)
    served = snapshot(mount.mountpoint)
    problems = compare(expected, _epoch_as_stored(expected, served, mount.started_s),
                       ignore_root_mtime=True)  # fmt: skip
    assert problems == [], ("\n".join(problems[:50])
                            + f"\n-- nydusd log ({mount.log}):\n{mount.log_tail()}")  # fmt: skip


def _epoch_as_stored(expected: dict[str, Entry], served: dict[str, Entry],
                     started_s: int) -> dict[str, Entry]:  # fmt: skip
    fixed = dict(served)
    for key, entry in expected.items():
        got = served.get(key)
        if entry.mtime_ns == 0 and got is not None and got.mtime_ns >= started_s * 10**9:
            fixed[key] = replace(got, mtime_ns=0)
    return fixed


def bootstrap_of_layer_tar(layer_tar_gz: bytes, out: Path) -> Path:
    """`image/image.boot` of a gzip bootstrap layer, written to `out` (what the snapshotter
    unpacks before it starts nydusd)."""
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(layer_tar_gz))) as archive:
        member = archive.extractfile("image/image.boot")
        assert member is not None, "the bootstrap layer has no image/image.boot"
        with out.open("wb") as f:
            shutil.copyfileobj(member, f)
    return out
