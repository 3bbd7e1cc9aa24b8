"""Benchmark reading a whole image through `rafs mount` against the kernel and a directory.

Inputs (prepared once, cached in the work dir, default ~/.cache/rafs-bench):
  debian   the test suite's debootstrap root filesystem tar (~200 MiB, a few thousand files)
  large    24 files of 8 MiB, half random and half text (compressible): files >= 1 MiB
Each is built with `rafs create` into one Nydus layer, and extracted with GNU tar.

What is measured, per input and per round, always cold (`echo 3 > drop_caches` first):
  dir      reading every regular file of the extracted directory
  kernel   the same through `rafs mount --kernel` (blobs decompressed into a cache dir once,
           then the bootstrap mounted by the kernel EROFS driver with `device=`)
  fuse     the same through a fresh `rafs mount` of the layer file with an empty cache
           directory: every chunk is read from the local blob, decompressed and verified
Files are read in sorted path order, one at a time, with 1 MiB `readinto` calls. The best
of N rounds is kept per mode. Throughput counts file bytes over read time, for all files
and for files >= 1 MiB; the ratios are fuse/kernel and each against the directory. Target:
fuse >= 40% of the kernel mount on files >= 1 MiB.

Time to first byte (inputs holding a file of about 1 KiB: debian): `open` + a 1-byte read
of that file on a fresh mount with an empty cache directory, page cache dropped, from the
local layer file and from a local docker-registry (the image pushed as nydus-snapshotter lays
it out, blobs read with HTTP Range requests; `rafs mount docker://... --plain-http`). The
manifest and bootstrap are fetched at mount time, so the figure is one chunk's round trip:
FUSE lookup and open, one Range request, decompression and digest check. Best of N rounds.

Container start (debian): each of START_COMMANDS run in a chroot of a fresh mount of the
registry image, cache empty, page cache dropped, once with `--amplify-io 0` (one request
per chunk fetch) and once with the default (each fetch takes the chunks stored after it, up
to 128 KiB): seconds, Range requests and the share of blob bytes fetched, and the time ratio.

The machine's load average is printed with the results: on a shared machine, compare the
ratios of one run rather than figures of different runs. Needs root (drop_caches, kernel
mounts). Run from the repository root:
`.venv/bin/python bench/mount.py [--rounds N] [--work DIR] [--input debian|large]
[--registry-only]`.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RAFS = (sys.executable, "-m", "rafs")
ROOTFS_TAR = Path.home() / ".cache" / "rafs-tests" / "debian-bookworm-minbase.tar"
MIB = 1 << 20
LARGE = MIB
TARGET = 0.40
MODES = ("dir", "kernel", "fuse")
START_COMMANDS = (
    "ls / && cat /etc/os-release",
    "apt-get --version && perl -e 'use File::Temp' && dpkg -l",
)
"""Container starts timed from the registry (Debian input)."""


@dataclass
class Result:
    """Bytes and seconds of one full read, split at LARGE."""

    bytes: int = 0
    seconds: float = 0.0
    large_bytes: int = 0
    large_seconds: float = 0.0
    files: int = 0

    def rate(self, large: bool = False) -> float:
        size = self.large_bytes if large else self.bytes
        secs = self.large_seconds if large else self.seconds
        return size / MIB / secs if secs else 0.0


def _run(*argv: str | Path) -> None:
    subprocess.run([str(a) for a in argv], check=True, capture_output=True)


def drop_caches() -> None:
    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


def read_tree(root: Path) -> Result:
    """Read every regular file under `root` in sorted order; time each file."""
    result = Result()
    buffer = bytearray(MIB)
    paths = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        paths += [Path(dirpath) / name for name in sorted(filenames)]
    for path in paths:
        if not path.is_file() or path.is_symlink():
            continue
        start = time.perf_counter()
        size = 0
        with open(path, "rb", buffering=0) as f:
            while n := f.readinto(buffer):
                size += n
        elapsed = time.perf_counter() - start
        result.files += 1
        result.bytes += size
        result.seconds += elapsed
        if size >= LARGE:
            result.large_bytes += size
            result.large_seconds += elapsed
    return result


def make_large(root: Path) -> None:
    rng = random.Random(7)
    text = b"".join(p.read_bytes() for p in sorted(Path(os.__file__).parent.glob("*.py"))[:200])
    root.mkdir(parents=True)
    for i in range(24):
        if i % 2:  # a different phase per file: no chunk repeats across files
            data = (text * (8 * MIB // len(text) + 2))[i * 4099 : i * 4099 + 8 * MIB]
        else:
            data = rng.randbytes(8 * MIB)
        (root / f"file{i:02}").write_bytes(data)


def prepare(name: str, work: Path) -> tuple[Path, Path]:
    """(layer file, extracted directory) of one input, made once."""
    base = work / name
    layer, extracted = base / "layer.nydus", base / "tree"
    if layer.exists() and extracted.exists():
        return layer, extracted
    shutil.rmtree(base, ignore_errors=True)
    base.mkdir(parents=True)
    tar = base / "source.tar"
    if name == "debian":
        if not ROOTFS_TAR.exists():
            sys.exit(f"{ROOTFS_TAR} is missing: run the slow tests once (debootstrap) first")
        tar = ROOTFS_TAR
    else:
        make_large(base / "src")
        _run("tar", "--numeric-owner", "--format=pax", "-C", base / "src", "-cf", tar, ".")
        shutil.rmtree(base / "src")
    extracted.mkdir()
    _run("tar", "--numeric-owner", "--xattrs", "--xattrs-include=*", "-C", extracted,
         "-xf", tar)  # fmt: skip
    _run(*RAFS, "create", tar, "-o", layer)
    return layer, extracted


def measure(mode: str, layer: Path, extracted: Path, scratch: Path) -> Result:
    mnt = scratch / "mnt"
    mnt.mkdir(exist_ok=True)
    if mode == "dir":
        drop_caches()
        return read_tree(extracted)
    if mode == "kernel":
        cache = scratch / "kernel-cache"
        _run(*RAFS, "mount", "--kernel", layer, mnt, "--cache-dir", cache)
    else:
        cache = scratch / "fuse-cache"
        shutil.rmtree(cache, ignore_errors=True)
        _run(*RAFS, "mount", layer, mnt, "--cache-dir", cache)
    try:
        drop_caches()
        return read_tree(mnt)
    finally:
        _run(*RAFS, "umount", mnt)


def bench(name: str, work: Path, rounds: int, registry_only: bool = False) -> None:
    layer, extracted = prepare(name, work)
    if registry_only:
        print(f"\n{name}:")
        bench_registry(name, layer, extracted, rounds)
        return
    best: dict[str, Result] = {}
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="rafs-bench-mount-") as tmp:
        scratch = Path(tmp)
        for _ in range(rounds):
            for mode in MODES:
                result = measure(mode, layer, extracted, scratch)
                if mode not in best or result.seconds < best[mode].seconds:
                    best[mode] = result
    total = best["dir"]
    print(f"\n{name}: {total.files} files, {total.bytes / MIB:.1f} MiB "
          f"({total.large_bytes / MIB:.1f} MiB in files >= 1 MiB), layer "
          f"{layer.stat().st_size / MIB:.1f} MiB, best of {rounds}; load average "
          f"{load_before:.2f} -> {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")  # fmt: skip
    print(f"  {'mode':8} {'all MiB/s':>10} {'>=1MiB MiB/s':>13} {'vs dir':>7} {'vs dir >=1M':>12}")
    for mode in MODES:
        r = best[mode]
        print(f"  {mode:8} {r.rate():10.1f} {r.rate(True):13.1f} "
              f"{r.rate() / total.rate():7.2f} {_ratio(r, total):12.2f}")  # fmt: skip
    fuse, kernel = best["fuse"], best["kernel"]
    ratio = fuse.rate() / kernel.rate()
    print(f"  fuse/kernel: {ratio:.2f} all files", end="")
    if kernel.large_bytes:
        large = _ratio(fuse, kernel)
        verdict = "meets" if large >= TARGET else "misses"
        print(f", {large:.2f} on files >= 1 MiB ({verdict} the {TARGET:.0%} target)")
    else:
        print()
    bench_registry(name, layer, extracted, rounds)


def small_file(root: Path, size: int = 1024) -> Path | None:
    """The regular file under `root` closest to `size` bytes (within 512 of it), or None."""
    best: tuple[int, str] | None = None
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            path = Path(dirpath) / name
            if path.is_symlink() or not path.is_file():
                continue
            key = (abs(path.stat().st_size - size), str(path.relative_to(root)))
            if best is None or key < best:
                best = key
    return Path(best[1]) if best is not None and best[0] <= size // 2 else None


def first_byte(image: str | Path, relative: Path, scratch: Path, *options: str) -> float:
    """Seconds to open `relative` and read its first byte on a fresh mount, cache empty."""
    mnt, cache = scratch / "ttfb-mnt", scratch / "ttfb-cache"
    mnt.mkdir(exist_ok=True)
    shutil.rmtree(cache, ignore_errors=True)
    _run(*RAFS, "mount", image, mnt, "--cache-dir", cache, *options)
    try:
        drop_caches()
        start = time.perf_counter()
        with open(mnt / relative, "rb", buffering=0) as f:
            assert f.read(1)
        return time.perf_counter() - start
    finally:
        _run(*RAFS, "umount", mnt)


@contextlib.contextmanager
def registry_image(layer: Path) -> Iterator[str]:
    """The layer pushed to a local docker-registry as a Nydus image (as nydus-snapshotter
    lays it out): its reference, while the registry runs."""
    sys.path.insert(0, str(REPO))
    from rafs.digest import Digest
    from tests.support.nydus_image import compose_nydus_image, push
    from tests.support.registry import start_registry

    digest = Digest.from_hex(hashlib.sha256(layer.read_bytes()).hexdigest())
    image = compose_nydus_image([(layer, digest)])
    with (tempfile.TemporaryDirectory(prefix="rafs-bench-registry-") as tmp,
          start_registry(Path(tmp) / "registry") as registry):  # fmt: skip
        yield push(image, registry.host, "bench/mount", "v1")


def bench_registry(name: str, layer: Path, extracted: Path, rounds: int) -> None:
    """Time to first byte, local and from the registry; for the Debian input also a
    container's start from the registry with `--amplify-io 0` against the default."""
    relative = small_file(extracted)
    with registry_image(layer) as ref, tempfile.TemporaryDirectory() as tmp:
        scratch = Path(tmp)
        if relative is None:
            print(f"  time to first byte: no file of about 1 KiB in {name}")
        else:
            local = min(first_byte(layer, relative, scratch) for _ in range(rounds))
            remote = min(first_byte(ref, relative, scratch, "--plain-http")
                         for _ in range(rounds))  # fmt: skip
            size = (extracted / relative).stat().st_size
            print(f"  time to first byte of /{relative} ({size} bytes), cold cache, best of "
                  f"{rounds}: local blob {local * 1000:.1f} ms, registry {remote * 1000:.1f} ms "
                  f"({remote / local:.1f}x)")  # fmt: skip
        if name == "debian":
            for command in START_COMMANDS:
                bench_start(ref, command, scratch, rounds)


def bench_start(ref: str, command: str, scratch: Path, rounds: int) -> None:
    """A command run in a chroot of a fresh registry mount, cold, by --amplify-io."""
    print(f"  start from the registry: {command!r}, best of {rounds}")
    seconds: dict[str, float] = {}
    for amplify in ("0", "default"):
        options = ("--plain-http",) + (("--amplify-io", amplify) if amplify == "0" else ())
        runs = [start(ref, command, scratch, *options) for _ in range(rounds)]
        took, stats = min(runs, key=lambda run: run[0])
        seconds[amplify] = took
        share = stats["bytes_fetched"] / stats["blob_bytes"]
        print(f"    --amplify-io {amplify:8} {took * 1000:6.0f} ms, {stats['requests']:4} "
              f"requests, {share:6.2%} of the blob bytes")  # fmt: skip
    print(f"    default/0: {seconds['default'] / seconds['0']:.2f} of the time")


def start(ref: str, command: str, scratch: Path, *options: str) -> tuple[float, dict[str, int]]:
    """(seconds, mount statistics) of `command` in a chroot of a fresh mount, cache empty."""
    mnt, cache, stats = scratch / "start-mnt", scratch / "start-cache", scratch / "stats.json"
    mnt.mkdir(exist_ok=True)
    shutil.rmtree(cache, ignore_errors=True)
    _run(*RAFS, "mount", ref, mnt, "--cache-dir", cache, "--stats", stats, *options)
    try:
        drop_caches()
        begin = time.perf_counter()
        subprocess.run(["chroot", str(mnt), "/bin/sh", "-c", command], check=True,
                       capture_output=True)  # fmt: skip
        took = time.perf_counter() - begin
    finally:
        _run(*RAFS, "umount", mnt)
    return took, json.loads(stats.read_text())


def _ratio(a: Result, b: Result) -> float:
    return a.rate(True) / b.rate(True) if b.rate(True) else 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--work", type=Path, default=Path.home() / ".cache" / "rafs-bench")
    parser.add_argument("--input", choices=("debian", "large"), action="append")
    parser.add_argument("--registry-only", action="store_true",
                        help="measure only the time to first byte and the registry start")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench/mount.py needs root (drop_caches and kernel mounts)")
    for name in args.input or ("large", "debian"):
        bench(name, args.work / "mount", args.rounds, args.registry_only)


if __name__ == "__main__":
    main()
