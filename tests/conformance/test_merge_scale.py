"""Scale: 30 layers with about 100k inodes in total merge, export and mount in the kernel.

Each layer is generated straight into a tar (no files on disk) with Python's tarfile:

  l<NN>/d<KK>/f<MMM>   the layer's own tree: 30 directories of 110 small files
  shared/f<JJJ>        100 files, half of them overwriting the previous layer's
  l<NN-1>/.wh.d29      from layer 2 on: a whole directory of the layer below deleted
  l<NN-1>/d07/.wh.f003 ... and single files
  l<NN-1>/d28/         ... and a directory made opaque, holding one new file

The expected union is computed alongside. After `rafs create` of every layer (in parallel),
`rafs merge` of all 30, `rafs export --block` and a kernel mount, the mounted tree must have
exactly the expected paths, each of the expected kind, and a seeded sample of files must
hold the expected content. Timings are printed (`pytest -s` shows them).
"""

from __future__ import annotations

import os
import random
import tarfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.conftest import RafsRunner
from tests.support.kernel import mount_erofs, require_kernel_erofs

pytestmark = [pytest.mark.kernel, pytest.mark.slow]

LAYERS = 30
DIRS = 30
FILES = 110
SHARED = 100
SAMPLE = 2000
MTIME = 1_700_000_000

Expected = dict[str, bytes | None]
"""Path (relative, no leading slash) -> file content, or None for a directory."""


@pytest.fixture(scope="module", autouse=True)
def _kernel() -> None:
    require_kernel_erofs()


def test_thirty_layers_merge_and_mount(rafs: RafsRunner, tmp_path: Path) -> None:
    timings: list[tuple[str, float]] = []

    def timed(label: str, start: float) -> None:
        timings.append((label, time.perf_counter() - start))

    start = time.perf_counter()
    expected: Expected = {}
    tars = []
    for index in range(LAYERS):
        tar = tmp_path / f"layer-{index:02d}.tar"
        _write_layer(index, tar, expected)
        tars.append(tar)
    timed(f"generate {LAYERS} tars", start)

    start = time.perf_counter()
    blob_dir = tmp_path / "blobs"
    blob_dir.mkdir()
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        layers = list(pool.map(lambda tar: _create(rafs, tar, blob_dir), tars))
    timed(f"rafs create x{LAYERS}", start)

    start = time.perf_counter()
    merged = tmp_path / "merged.boot"
    rafs("merge", *layers, "-o", merged, timeout=300)
    timed("rafs merge", start)

    start = time.perf_counter()
    image = tmp_path / "merged.img"
    rafs("export", "--block", merged, "--blob-dir", blob_dir, "-o", image, timeout=300)
    timed("rafs export --block", start)

    start = time.perf_counter()
    with mount_erofs(image, tmp_path / "mnt") as mnt:
        found = dict(_walk(mnt))
        timed(f"mount + walk {len(found)} entries", start)
        start = time.perf_counter()
        missing = sorted(expected.keys() - found.keys())
        extra = sorted(found.keys() - expected.keys())
        wrong_kind = sorted(
            path for path in expected.keys() & found.keys()
            if (expected[path] is None) != found[path]
        )  # fmt: skip
        files = sorted(path for path, content in expected.items() if content is not None)
        sample = random.Random(0).sample(files, min(SAMPLE, len(files)))
        wrong_content = [
            path for path in sample if (mnt / path).read_bytes() != expected[path]
        ]
        timed(f"read {len(sample)} sampled files", start)

    report = "\n".join(f"  {label:<36} {seconds:7.2f} s" for label, seconds in timings)
    print(f"\n{len(expected)} entries expected (plus the root), {len(layers)} layers:\n{report}")
    assert len(found) == len(expected), (
        f"{len(found)} entries mounted, {len(expected)} expected;"
        f" missing {missing[:20]}, extra {extra[:20]}"
    )
    assert missing == [] and extra == [], (missing[:20], extra[:20])
    assert wrong_kind == [], wrong_kind[:20]
    assert wrong_content == [], wrong_content[:20]


def _write_layer(index: int, out: Path, expected: Expected) -> None:
    """Write layer `index` to `out` and apply it to `expected` with overlay semantics.

    Headers come from tarfile (ustar: every name is short), written directly: this is
    several times faster than TarFile.addfile for 100k tiny members.
    """
    with out.open("wb") as archive:

        def add(name: str, content: bytes | None) -> None:
            info = tarfile.TarInfo(name)
            info.mtime = MTIME + index
            if content is None:
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                archive.write(info.tobuf(tarfile.USTAR_FORMAT))
            else:
                info.mode, info.size = 0o644, len(content)
                archive.write(info.tobuf(tarfile.USTAR_FORMAT))
                archive.write(content + bytes(-len(content) % tarfile.BLOCKSIZE))
            if not name.rsplit("/", 1)[-1].startswith(".wh."):
                expected[name] = content

        if index > 0:
            below = f"l{index - 1:02d}"
            add(below, None)
            add(f"{below}/.wh.d29", b"")
            _remove(expected, f"{below}/d29", _own_files(f"{below}/d29"))
            add(f"{below}/d07", None)
            for victim in ("f003", "f050", "f109"):
                add(f"{below}/d07/.wh.{victim}", b"")
                _remove(expected, f"{below}/d07/{victim}", [])
            add(f"{below}/d28", None)
            add(f"{below}/d28/.wh..wh..opq", b"")
            _remove(expected, None, _own_files(f"{below}/d28"))
            add(f"{below}/d28/new", f"opaque {index}\n".encode())

        own = f"l{index:02d}"
        add(own, None)
        for directory in range(DIRS):
            path = f"{own}/d{directory:02d}"
            add(path, None)
            for name in _own_files(path):
                add(name, f"{name}\n".encode())

        add("shared", None)
        first = index * SHARED // 2
        for number in range(first, first + SHARED):
            add(f"shared/f{number:04d}", f"shared {number} from layer {index}\n".encode())
        archive.write(bytes(2 * tarfile.BLOCKSIZE))


def _own_files(directory: str) -> list[str]:
    """The files a layer writes into one of its own directories."""
    return [f"{directory}/f{number:03d}" for number in range(FILES)]


def _remove(expected: Expected, path: str | None, children: list[str]) -> None:
    """Apply a whiteout of `path` and everything it held (`children`, all of it: the trees
    here are one level deep); path None is an opaque marker, which removes only children."""
    for key in children:
        expected.pop(key, None)
    if path is not None:
        expected.pop(path, None)


def _create(rafs: RafsRunner, tar: Path, blob_dir: Path) -> Path:
    partial = blob_dir / f"{tar.stem}.partial"
    digest = rafs("create", tar, "-o", partial, timeout=300).stdout.decode().strip()
    assert digest.startswith("sha256:"), digest
    layer = blob_dir / digest.removeprefix("sha256:")
    partial.rename(layer)
    return layer


def _walk(root: Path) -> Iterator[tuple[str, bool]]:
    """(relative path, is a directory) for everything below `root`, symlinks not followed."""
    for dirpath, dirnames, filenames in os.walk(root):
        base = os.path.relpath(dirpath, root)
        prefix = "" if base == "." else base + "/"
        for name in dirnames:
            yield prefix + name, True
        for name in filenames:
            yield prefix + name, False
