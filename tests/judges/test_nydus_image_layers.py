"""rafs reads what the real builder writes: layers made by `nydus-image create` (2.2) from
the test trees' tars, in RAFS v6 and v5, with every compressor it offers.

Each layer is written as the Go converter asks for one (`--type tar-rafs --blob-inline-meta`,
plus `--features blob-toc` for v6; v5 refuses that feature), and every read command of rafs
must give back the source: `check` passes, `ls -R` lists the source's paths, `cat` gives
each file's bytes, `unpack --to-dir` and `export --block` (mounted by the kernel) and
`mount` (FUSE) hold the source tree. The whole matrix runs on the every-entry-type tree, and
one v6 and one v5 layer of the Debian root filesystem.

nydus-image 2.2 offers the compressors none, lz4_block and zstd (`create --help`; no gzip).
It cannot read xattr values holding a newline byte from a tar, so the every-entry-type
source is `pax_safe_copy` of the fixture tree (see there). rafs reads RAFS v5 with
`inspect`, `ls` and `cat` only: where `check`, `unpack`, `export` or `mount` refuses a v5
layer as unsupported (that error kind's exit code), the test is marked xfail; any other
failure fails it, and once rafs reads v5 there too, it passes.
"""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass
from pathlib import Path

import pytest

from rafs.cli import main as rafs_main
from rafs.errors import Unsupported
from tests.conftest import RafsRunner
from tests.support.fuse import regular_files, require_fuse, unmount
from tests.support.kernel import mount_erofs, require_kernel_erofs
from tests.support.real_nydus import as_nydus_image_stores, nydus_image_layer, pax_safe_copy
from tests.support.sources import tar_directory
from tests.support.tree import ROOT, Entry, compare, snapshot

COMPRESSORS = ("none", "lz4_block", "zstd")
CHUNK_SIZE = 1 << 20
"""nydus-image's default chunk size: the rootfs files bigger than it are all read by `cat`."""
ROOTFS_CAT_EVERY = 20
"""Of the rootfs's single-chunk files, `cat` reads every 20th: one `cat` costs a bootstrap
parse (~45 ms for this image), and unpack, export and mount read every file already."""
V5_READ_ONLY = ("rafs reads RAFS v5 with inspect, ls and cat only: check, unpack, export "
                "and mount take RAFS v6")  # fmt: skip


@dataclass(frozen=True)
class Case:
    source: str
    """`entry` (every entry type) or `rootfs` (Debian)."""
    fs_version: int
    compressor: str

    def __str__(self) -> str:
        return f"{self.source}-v{self.fs_version}-{self.compressor}"


CASES = [
    *(Case("entry", version, compressor) for version in (6, 5) for compressor in COMPRESSORS),
    Case("rootfs", 6, "zstd"),
    Case("rootfs", 5, "lz4_block"),
]


@dataclass(frozen=True)
class JudgedLayer:
    case: Case
    layer: Path
    """The layer file nydus-image wrote."""
    source: Path
    """The tree its tar was made of."""
    expected: dict[str, Entry]
    """The source's snapshot as nydus-image stores it (`as_nydus_image_stores`)."""

    def assert_holds_source(self, root: Path) -> None:
        """The tree at `root` equals the source, as stored, in every compared field."""
        problems = compare(self.expected, snapshot(root), ignore_root_mtime=True)
        assert problems == [], "\n".join(problems[:50])


@pytest.fixture(scope="session")
def pax_safe_entry(entry_tree: Path, tmp_path_factory: pytest.TempPathFactory
                   ) -> tuple[Path, Path]:  # fmt: skip
    """The every-entry-type tree as nydus-image can read it, and its tar."""
    base = tmp_path_factory.mktemp("pax-safe-entry")
    tree = pax_safe_copy(entry_tree, base / "tree")
    tar_directory(tree, base / "tree.tar")
    return tree, base / "tree.tar"


@pytest.fixture(scope="module", params=CASES, ids=str)
def judged(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
           ) -> JudgedLayer:  # fmt: skip
    case: Case = request.param
    if case.source == "entry":
        tree, tar = request.getfixturevalue("pax_safe_entry")
    else:
        tree, tar = request.getfixturevalue("rootfs"), request.getfixturevalue("rootfs_tar")
    layer = tmp_path_factory.mktemp("nydus-image") / f"{case}.nydus"
    nydus_image_layer(tar, layer, case.fs_version, case.compressor)
    return JudgedLayer(case, layer, tree, as_nydus_image_stores(snapshot(tree)))


def _read(rafs: RafsRunner, judged: JudgedLayer, *args: str | Path) -> str:
    """`rafs ARGS` must succeed; returns its stdout. A v5 layer refused as unsupported
    marks the test xfail."""
    result = rafs(*args, check=False, timeout=600)
    if judged.case.fs_version == 5 and result.returncode == Unsupported.exit_code:
        pytest.xfail(f"{V5_READ_ONLY} ({result.stderr.strip()})")
    assert result.returncode == 0, f"rafs {args[0]} exited {result.returncode}: {result.stderr}"
    stdout: bytes = result.stdout
    return stdout.decode()


def _cat(layer: Path, path: str) -> bytes:
    """`rafs cat LAYER PATH` run in this process (the same argv, parsing and command; no
    interpreter start for each of thousands of files)."""
    stdout = io.BytesIO()
    out = io.TextIOWrapper(stdout)
    with contextlib.redirect_stdout(out):
        code = rafs_main(["cat", str(layer), path])
    out.flush()
    assert code == 0, f"rafs cat {layer} {path} exited {code}"
    return stdout.getvalue()


def _files_to_cat(judged: JudgedLayer) -> list[Path]:
    files = regular_files(judged.source)
    if judged.case.source == "entry":
        return files
    return [path for index, path in enumerate(files)
            if path.stat().st_size > CHUNK_SIZE or index % ROOTFS_CAT_EVERY == 0]  # fmt: skip


def test_check_passes(rafs: RafsRunner, judged: JudgedLayer) -> None:
    assert ": ok: " in _read(rafs, judged, "check", judged.layer)


def test_ls_lists_every_source_path(rafs: RafsRunner, judged: JudgedLayer) -> None:
    listed = rafs("ls", "-R", judged.layer, timeout=300).stdout.decode(errors="surrogateescape")
    expected = {"/" + key if key != ROOT else "/" for key in judged.expected}
    assert set(listed.splitlines()) == expected


def test_cat_gives_every_files_bytes(judged: JudgedLayer) -> None:
    files = _files_to_cat(judged)
    assert files, f"no regular files under {judged.source}"
    for path in files:
        inside = "/" + path.relative_to(judged.source).as_posix()
        assert _cat(judged.layer, inside) == path.read_bytes(), inside


def test_unpack_to_dir_gives_the_source_tree(
    rafs: RafsRunner, judged: JudgedLayer, tmp_path: Path
) -> None:
    out = tmp_path / "unpacked"
    _read(rafs, judged, "unpack", judged.layer, "--to-dir", out)
    judged.assert_holds_source(out)


@pytest.mark.kernel
def test_export_block_mounts_as_the_source_tree(
    rafs: RafsRunner, judged: JudgedLayer, tmp_path: Path
) -> None:
    require_kernel_erofs()
    image = tmp_path / "layer.img"
    _read(rafs, judged, "export", "--block", judged.layer, "-o", image)
    with mount_erofs(image, tmp_path / "mnt") as mountpoint:
        judged.assert_holds_source(mountpoint)


def test_fuse_mount_serves_the_source_tree(
    rafs: RafsRunner, judged: JudgedLayer, tmp_path: Path
) -> None:
    require_fuse()
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    try:
        _read(rafs, judged, "mount", judged.layer, mountpoint, "--cache-dir", tmp_path / "cache")
        judged.assert_holds_source(mountpoint)
        rafs("umount", mountpoint, timeout=60)
    finally:
        unmount(mountpoint)
