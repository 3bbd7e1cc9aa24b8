"""Benchmark `rafs convert` of a real multi-layer image between two local registries.

Input (prepared once, cached in the work dir, default ~/.cache/rafs-bench/convert):
  a three-layer gzip OCI image of the test suite's Debian bookworm root filesystem
  (debootstrap): everything but /usr, then /usr/lib, then the rest of /usr - each layer
  packed by GNU tar as OCI layers are (pax, xattrs, numeric owners), gzip -6 -n.

Registries (Debian's docker-registry) are started on loopback: A, holding the image (pushed
once, untimed), and for every round a fresh, empty B - so no copy can skip a blob or mount
it from another repository. Then, alternating rounds (wall clock):
  skopeo    `skopeo copy docker://A/src:v1 docker://B/copy:v1`: pulls and pushes every
            byte - the cost of only moving the image, the baseline
  convert   `rafs convert docker://A/src:v1 docker://B/nydus-N:v1` with an empty store:
            pull, convert every layer, merge, push
  warm      the same convert again into another repository, store kept: conversions are
            found by source digest, so this is pull-free push time
Reported: best of N of each, and convert/skopeo (target <= 3).

Run from the repository root: `.venv/bin/python bench/convert.py [--rounds N] [--work DIR]`.
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RAFS = [sys.executable, "-m", "rafs"]
SKOPEO = ["skopeo", "--insecure-policy"]
LAYERS = (
    ("base", ["--exclude=./usr", "."]),
    ("usr-lib", ["./usr/lib"]),
    ("usr-rest", ["--exclude=./usr/lib", "./usr"]),
)


def main() -> int:
    args = parse_args()
    sys.path.insert(0, str(REPO))
    from tests.support.registry import start_registry

    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    layout = prepare_layout(work)
    with tempfile.TemporaryDirectory(prefix="rafs-bench-convert-") as scratch_name, \
            contextlib.ExitStack() as stack:  # fmt: skip
        scratch = Path(scratch_name)
        source = stack.enter_context(start_registry(scratch / "registry-a"))
        timed([*SKOPEO, "--tmpdir", str(scratch), "copy", "--dest-tls-verify=false",
               f"oci:{layout}:v1", f"docker://{source.host}/bench/src:v1"])  # fmt: skip
        src = f"docker://{source.host}/bench/src:v1"
        times: dict[str, list[float]] = {"skopeo": [], "convert": [], "warm": []}
        for round_number in range(args.rounds):
            with start_registry(scratch / f"registry-b{round_number}") as target:
                dest = f"docker://{target.host}/bench"
                store = scratch / f"store-{round_number}"
                times["skopeo"].append(timed([
                    *SKOPEO, "--tmpdir", str(scratch), "copy", "--src-tls-verify=false",
                    "--dest-tls-verify=false", src, f"{dest}/copy:v1"]))  # fmt: skip
                for name in ("convert", "warm"):
                    times[name].append(timed([*RAFS, "convert", src, f"{dest}/{name}:v1",
                                              "--plain-http", "--store", str(store)]))
            shutil.rmtree(store)
    report(layout, times)
    return 0


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--work", type=Path,
                        default=Path.home() / ".cache" / "rafs-bench" / "convert")  # fmt: skip
    return parser.parse_args()


def prepare_layout(work: Path) -> Path:
    """The three-layer OCI layout of the Debian root filesystem, made once."""
    layout = work / "debian-oci"
    if (layout / "index.json").exists():
        return layout
    import pytest

    from rafs.oci import Descriptor, ImageConfig, Manifest, OCILayout
    from rafs.oci import constants as mt
    from tests.support.sources import debootstrap_rootfs

    cache = Path(os.environ.get("RAFS_TEST_CACHE") or Path.home() / ".cache" / "rafs-tests")
    try:
        rootfs = debootstrap_rootfs(cache)
    except pytest.fail.Exception as exc:
        raise SystemExit(f"no Debian root filesystem: {exc}") from None
    partial = work / "debian-oci.partial"
    shutil.rmtree(partial, ignore_errors=True)
    store = OCILayout.create(partial)
    layers, diff_ids = [], []
    for name, selection in LAYERS:
        print(f"packing layer {name}", file=sys.stderr)
        tar = subprocess.run(["tar", "--xattrs", "--xattrs-include=*", "--numeric-owner",
                              "--format=pax", "-C", str(rootfs), "-cf", "-", *selection],
                             check=True, capture_output=True).stdout  # fmt: skip
        blob = gzip.compress(tar, compresslevel=6, mtime=0)
        layers.append(Descriptor(mt.OCI_LAYER_GZIP, store.write_blob(blob), len(blob)))
        diff_ids.append("sha256:" + hashlib.sha256(tar).hexdigest())
    config = json.dumps({"architecture": "amd64", "os": "linux",
                         "rootfs": {"type": "layers", "diff_ids": diff_ids},
                         "config": {"Cmd": ["/bin/sh"]}}).encode()  # fmt: skip
    config_desc = Descriptor(mt.OCI_CONFIG, store.write_blob(config), len(config))
    store.put_manifest(Manifest(config_desc, tuple(layers)), "v1")
    ImageConfig.from_bytes(config)  # the config parses as the converter will read it
    partial.rename(layout)
    return layout


def timed(argv: list[str]) -> float:
    """Run `argv` (stdout discarded); its wall-clock seconds."""
    start = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def report(layout: Path, times: dict[str, list[float]]) -> None:
    sizes = sum(f.stat().st_size for f in (layout / "blobs" / "sha256").iterdir())
    print(f"image: {len(LAYERS)} gzip layers, {sizes / 2**20:.1f} MiB in the layout")
    best = {name: min(values) for name, values in times.items()}
    for name, values in times.items():
        rounds = " ".join(f"{value:.2f}" for value in values)
        print(f"{name:8} best {best[name]:6.2f} s   rounds: {rounds}")
    print(f"convert / skopeo copy: {best['convert'] / best['skopeo']:.2f} (target <= 3.0); "
          f"warm convert / skopeo copy: {best['warm'] / best['skopeo']:.2f}")


if __name__ == "__main__":
    raise SystemExit(main())
