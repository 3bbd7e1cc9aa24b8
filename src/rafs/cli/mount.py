"""`rafs mount` and `rafs umount`.

A FUSE mount runs in the background by default: the command forks, the child mounts and
tells the parent through a pipe whether that worked (the parent prints any error and exits
with its code), then the child detaches (new session, stdio on the log file) and serves
until unmounted. `--foreground` serves in the command's own process, logging to stderr.

The serving process keeps `<state dir>/<key>.pid` while it runs (the state dir is
/run/rafs for root, else $XDG_RUNTIME_DIR/rafs; the key is a hash of the mountpoint);
`rafs umount` unmounts, then waits for that file to go, so the statistics file is complete
when it returns. Without `--cache-dir`, a FUSE mount caches in a private temporary
directory that is deleted when the mount ends.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rafs.cli.images import add_image_args, resolve_image
from rafs.errors import FailedPrecondition, InvalidArgument, NotFound, RafsError
from rafs.fileio import write_atomic
from rafs.reader.artifact import open_artifact
from rafs.reader.backend import BlobBackend, LocalBackend
from rafs.reader.chunkcache import ChunkCache
from rafs.reader.image import RafsImage
from rafs.reader.kernel_mount import fill_cache, kernel_mount

log = logging.getLogger("rafs.mount")

LOG_FORMAT = "%(asctime)s rafs[%(process)d] %(levelname)s %(message)s"
UMOUNT_WAIT = 60.0
EXIT_OS_ERROR = 11
_SIZE = re.compile(r"(\d+)([KMGT]?)(i?B)?", re.IGNORECASE)

BackendFactory = Callable[[], BlobBackend]
"""Makes the blob backend of a mount; called in the process that serves it."""


def register(commands: Any) -> None:
    mount = commands.add_parser("mount", help="mount an image (FUSE, lazy; or --kernel)")
    add = mount.add_argument
    add_image_args(mount)
    add("mountpoint", type=Path)
    add("--cache-dir", type=Path, help="chunk cache kept across mounts (default: temporary)")
    add("--cache-limit", type=_size, metavar="SIZE",
        help="largest cache size, e.g. 512M; least recently used chunks go")  # fmt: skip
    add("--amplify-io", type=_size, metavar="SIZE",
        help="stored bytes each fetch takes at least, adding the chunks that follow in the "
             "blob (default: 128K from a registry, 0 from local blobs)")  # fmt: skip
    add("--foreground", action="store_true", help="serve in this process")
    add("--prefetch", nargs="*", metavar="PATH",
        help="fetch the image's prefetch table (or PATHs) in the background")  # fmt: skip
    add("--stats", type=Path, metavar="FILE",
        help="write statistics as JSON on unmount and on SIGUSR1")  # fmt: skip
    add("--log-file", type=Path, help="log of a background mount (default: state directory)")
    add("--kernel", action="store_true",
        help="decompress all blobs into --cache-dir, mount with kernel EROFS")  # fmt: skip
    mount.set_defaults(run=run_mount)

    umount = commands.add_parser("umount", help="unmount a rafs mount")
    umount.add_argument("mountpoint", type=Path)
    umount.set_defaults(run=run_umount)


def _size(text: str) -> int:
    match = _SIZE.fullmatch(text.strip())
    if match is None:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size such as 512M")
    return int(match.group(1)) << 10 * " KMGT".index(match.group(2).upper() or " ")


def state_dir() -> Path:
    if os.geteuid() == 0:
        return Path("/run/rafs")
    return Path(os.environ.get("XDG_RUNTIME_DIR") or tempfile.gettempdir()) / "rafs"


def state_path(mountpoint: Path, suffix: str) -> Path:
    key = hashlib.sha256(os.fsencode(mountpoint)).hexdigest()[:16]
    return state_dir() / f"{key}{suffix}"


# -- mount -----------------------------------------------------------------------------


def run_mount(args: argparse.Namespace) -> int:
    mountpoint = args.mountpoint.resolve()
    if not mountpoint.is_dir():
        raise NotFound(f"{args.mountpoint}: mountpoint is not a directory")
    image, make_backend, fsname = _open(args)
    prefetch: list[int] | None = None
    if args.prefetch is not None:
        prefetch = [image.lookup(p) for p in args.prefetch] or image.prefetch_nids()
    if args.kernel:
        if args.cache_dir is None:
            raise InvalidArgument("--kernel needs --cache-dir: the kernel reads blobs from it")
        _configure_logging(None)
        _mount_kernel(image, make_backend, args, mountpoint)
        return 0
    serve = _server(image, make_backend, fsname, args, mountpoint, prefetch)
    if args.foreground:
        _configure_logging(None)
        serve(lambda: None)
        return 0
    log_file = args.log_file or state_path(mountpoint, ".log")
    return _daemonize(serve, log_file.resolve())


def _open(args: argparse.Namespace) -> tuple[RafsImage, BackendFactory, str]:
    """The image, how to make its blob backend, and the name the mount shows for it."""
    resolved = resolve_image(args)
    if resolved is not None:
        return resolved.image, resolved.backend, resolved.name
    artifact = open_artifact(Path(args.image), args.blob_dir)
    return (artifact.image, lambda: LocalBackend.for_artifact(artifact),
            str(Path(args.image).resolve()))  # fmt: skip


def _mount_kernel(image: RafsImage, make_backend: BackendFactory, args: argparse.Namespace,
                  mountpoint: Path) -> None:  # fmt: skip
    uncompressed = sum(blob.uncompressed_size for blob in image.blobs)
    if args.cache_limit is not None and args.cache_limit < uncompressed:
        raise InvalidArgument(f"--cache-limit {args.cache_limit} is below the {uncompressed} "
                              "bytes of uncompressed blobs --kernel needs")
    backend = make_backend()
    cache = ChunkCache(image, backend, args.cache_dir)
    try:
        fill_cache(cache)
        if args.stats is not None:
            write_atomic(args.stats, json.dumps(cache.stats_dict(), indent=2).encode() + b"\n")
        kernel_mount(cache, mountpoint)
    finally:
        cache.close()
        backend.close()


def _server(image: RafsImage, make_backend: BackendFactory, fsname: str,
            args: argparse.Namespace, mountpoint: Path,
            prefetch: list[int] | None) -> Callable[[Callable[[], None]], None]:  # fmt: skip
    """A function that mounts, calls `ready()`, serves until unmounted, and cleans up."""
    stats = args.stats.resolve() if args.stats is not None else None

    def serve(ready: Callable[[], None]) -> None:
        # Imported here: pyfuse3 and trio cost every other command 150 ms at start.
        from rafs.fuse.session import FuseMount

        scratch = None
        directory: Path = args.cache_dir
        if directory is None:
            directory = scratch = Path(tempfile.mkdtemp(prefix="rafs-cache-"))
        backend = make_backend()
        pid_file = state_path(mountpoint, ".pid")
        try:
            try:
                backend.connect()
            except (RafsError, OSError) as exc:
                log.warning("%s: not connected yet (reads will try again): %s", fsname, exc)
            cache = ChunkCache(image, backend, directory, args.cache_limit, args.amplify_io)
            try:
                mount = FuseMount(image, cache, mountpoint, stats)
                mount.start(fsname)
                pid_file.parent.mkdir(parents=True, exist_ok=True)
                pid_file.write_text(f"{os.getpid()}\n")
                if prefetch is not None:
                    mount.prefetch(prefetch)
                mount.serve(ready)
            finally:
                cache.close()
        finally:
            backend.close()
            pid_file.unlink(missing_ok=True)
            if scratch is not None:
                shutil.rmtree(scratch, ignore_errors=True)

    return serve


def _configure_logging(log_file: Path | None) -> None:
    handler: logging.Handler
    handler = logging.StreamHandler() if log_file is None else logging.FileHandler(log_file)
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    root = logging.getLogger("rafs")
    root.addHandler(handler)
    root.setLevel(logging.INFO)


def _daemonize(serve: Callable[[Callable[[], None]], None], log_file: Path) -> int:
    """Run `serve` in a detached child; return once it is ready (0) or has failed."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid:
        os.close(write_end)
        with os.fdopen(read_end, "rb") as pipe:
            report = pipe.read().decode(errors="replace")
        if report == "0":
            return 0
        if not report:
            os.waitpid(pid, os.WNOHANG)
            raise RafsError(f"the mount process exited before the mount was ready; see {log_file}")
        status, _, message = report.partition(" ")
        os.waitpid(pid, 0)
        print(f"rafs: {message}", file=sys.stderr)
        return int(status)
    os.close(read_end)
    os.setsid()
    _detach_stdio(log_file)
    _configure_logging(log_file)
    parent = _Parent(write_end)
    code = 0
    try:
        serve(parent.ready)
    except RafsError as exc:
        log.error("%s", exc)
        code = parent.failed(exc.exit_code, str(exc))
    except OSError as exc:
        log.error("%s", exc)
        code = parent.failed(EXIT_OS_ERROR, f"{exc.filename or 'mount'}: {exc.strerror or exc}")
    except BaseException:
        log.exception("mount process failed")
        code = parent.failed(10, f"mount process failed; see {log_file}")
    logging.shutdown()
    os._exit(code)


class _Parent:
    """The pipe to the waiting parent: one report, "0" (ready) or "<code> <message>"."""

    def __init__(self, fd: int) -> None:
        self._fd: int | None = fd

    def ready(self) -> None:
        self._send("0")

    def failed(self, code: int, message: str) -> int:
        self._send(f"{code} {message}")
        return code

    def _send(self, report: str) -> None:
        if self._fd is not None:
            os.write(self._fd, report.encode())
            os.close(self._fd)
            self._fd = None


def _detach_stdio(log_file: Path) -> None:
    null = os.open(os.devnull, os.O_RDONLY)
    out = os.open(log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(null, 0)
    os.dup2(out, 1)
    os.dup2(out, 2)
    os.close(null)
    os.close(out)


# -- umount ----------------------------------------------------------------------------


def mount_type(mountpoint: Path) -> str | None:
    """The filesystem type mounted at `mountpoint` (the topmost mount), or None."""
    found = None
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split(" ")
        separator = fields.index("-")
        where = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), fields[4])
        if where == str(mountpoint):
            found = fields[separator + 1]
    return found


def run_umount(args: argparse.Namespace) -> int:
    mountpoint = Path(os.path.realpath(args.mountpoint))
    kind = mount_type(mountpoint)
    if kind is None:
        raise NotFound(f"{mountpoint}: not mounted")
    if kind not in ("fuse.rafs", "erofs"):
        raise InvalidArgument(f"{mountpoint}: a {kind} mount, not a rafs mount")
    pid_file = state_path(mountpoint, ".pid")
    command = ["umount", str(mountpoint)]
    if kind == "fuse.rafs" and os.geteuid() != 0:
        command = ["fusermount3", "-u", str(mountpoint)]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise FailedPrecondition(f"{' '.join(command)} failed: {result.stderr.strip()}")
    if kind == "fuse.rafs":
        _wait_for_exit(pid_file)
    return 0


def _wait_for_exit(pid_file: Path) -> None:
    """Wait until the serving process has removed its pid file (or is gone)."""
    deadline = time.monotonic() + UMOUNT_WAIT
    while time.monotonic() < deadline:
        try:
            pid = int(pid_file.read_text())
            os.kill(pid, 0)
        except (FileNotFoundError, ProcessLookupError, ValueError):
            return
        time.sleep(0.02)
    raise FailedPrecondition(f"unmounted, but the mount process {pid_file} did not exit")
