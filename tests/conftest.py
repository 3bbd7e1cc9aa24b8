"""Fixtures shared by every test: the real-nydus fixtures, the CLI, and source trees.

Source trees are session-scoped (built once per run). The Debian root filesystem and its tar
are also cached across runs in $RAFS_TEST_CACHE (default ~/.cache/rafs-tests), because
debootstrap takes minutes and needs the network.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.support.sources import debootstrap_rootfs, make_all_entry_types, tar_directory

REPO_ROOT = Path(__file__).resolve().parents[1]

RafsRunner = Callable[..., subprocess.CompletedProcess[Any]]
"""Type of the `rafs` fixture: rafs(*args, check=True, input=None, timeout=None)."""


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    """Files made by the real nydus-image (see its README), kept beside the repository."""
    path = REPO_ROOT.parent / "shared" / "fixtures" / "nydus"
    if not path.is_dir():
        pytest.skip(f"nydus fixtures not found at {path} (they live in ../shared/fixtures in CI)")
    return path


@pytest.fixture(scope="session")
def rafs() -> RafsRunner:
    """Run the command line as `python -m rafs ARGS`: stdout as bytes, stderr as text.

    With check=True (the default) a non-zero exit fails the test and shows stderr. With a
    timeout (seconds), a run that takes longer is killed and fails the test.
    """

    def run(
        *args: str | os.PathLike[str],
        check: bool = True,
        input: bytes | None = None,
        timeout: float | None = None,
    ) -> subprocess.CompletedProcess[Any]:
        argv = [sys.executable, "-m", "rafs", *(os.fspath(arg) for arg in args)]
        try:
            result = subprocess.run(argv, input=input, capture_output=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"rafs {' '.join(argv[3:])} hung (killed after {timeout} s)",
                        pytrace=False)  # fmt: skip
        stderr = result.stderr.decode(errors="replace")
        if check and result.returncode != 0:
            pytest.fail(
                f"rafs {' '.join(argv[3:])} exited {result.returncode}:\n{stderr}",
                pytrace=False,
            )
        return subprocess.CompletedProcess(argv, result.returncode, result.stdout, stderr)

    return run


@pytest.fixture(scope="session")
def test_cache() -> Path:
    """Directory for expensive inputs kept between runs ($RAFS_TEST_CACHE)."""
    return Path(os.environ.get("RAFS_TEST_CACHE") or Path.home() / ".cache" / "rafs-tests")


@pytest.fixture(scope="session")
def rootfs(test_cache: Path) -> Path:
    """A Debian bookworm minbase root filesystem (debootstrap, cached)."""
    return debootstrap_rootfs(test_cache)


@pytest.fixture(scope="session")
def rootfs_tar(rootfs: Path, test_cache: Path) -> Path:
    """The root filesystem as a pax tar with xattrs and numeric owners (cached)."""
    out = test_cache / f"{rootfs.name}.tar"
    if not out.exists():
        tar_directory(rootfs, out)
    return out


@pytest.fixture(scope="session")
def entry_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tree with every entry type, mode bit, owner and size edge (needs root)."""
    root = tmp_path_factory.mktemp("all-entry-types")
    make_all_entry_types(root)
    return root


@pytest.fixture(scope="session")
def entry_tar(entry_tree: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`entry_tree` as a pax tar with xattrs and numeric owners."""
    out = tmp_path_factory.mktemp("entry-tar") / "all-entry-types.tar"
    tar_directory(entry_tree, out)
    return out
