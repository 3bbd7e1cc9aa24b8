"""Fixtures shared by every test: the real-nydus fixtures, the CLI, and source trees; the
markers saying what a test needs; the clean-up of whatever the tests leave behind.

Source trees are session-scoped (built once per run). The Debian root filesystem and its tar
are also cached across runs in $RAFS_TEST_CACHE (default ~/.cache/rafs-tests), because
debootstrap takes minutes and needs the network.

Markers (declared in pyproject.toml) come from the fixtures a test uses (`FIXTURE_MARKERS`),
from its folder (everything under tests/judges/ is `judges`) and from explicit marks where no
fixture tells (a direct `mount_erofs` call); every test with a component marker is also
`root`, so `-m "not root"` selects what a normal user can run.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NoReturn

import pytest

from tests.support.leftovers import SESSION_VARIABLE, clean_leftovers
from tests.support.sources import debootstrap_rootfs, make_all_entry_types, tar_directory

REPO_ROOT = Path(__file__).resolve().parents[1]

RafsRunner = Callable[..., subprocess.CompletedProcess[Any]]
"""Type of the `rafs` fixture: rafs(*args, check=True, input=None, timeout=None)."""

FIXTURE_MARKERS = {
    "registry": "registry",
    "containerd": "containerd",
    "entry_tree": "root",  # device nodes, owners and a setuid file
    "rootfs": "root",  # debootstrap
}
"""Fixture -> the marker every test using it (directly or through another fixture) gets."""

COMPONENT_MARKERS = ("kernel", "fuse", "containerd", "registry", "judges")
JUDGED_TESTS = REPO_ROOT / "tests" / "judges"
LEFTOVERS = pytest.StashKey[list[str]]()


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("true", "1")


def missing_prerequisite(message: str) -> NoReturn:
    """Fail the test in CI (`CI=true`), where everything must be present; skip it elsewhere."""
    if in_ci():
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        fixtures = getattr(item, "fixturenames", ())
        for fixture, marker in FIXTURE_MARKERS.items():
            if fixture in fixtures:
                item.add_marker(marker)
        if item.path.is_relative_to(JUDGED_TESTS):
            item.add_marker("judges")
        if any(item.get_closest_marker(marker) for marker in COMPONENT_MARKERS):
            item.add_marker("root")


@pytest.fixture(scope="session", autouse=True)
def _clean_leftovers_at_the_end(tmp_path_factory: pytest.TempPathFactory,
                                request: pytest.FixtureRequest) -> Iterator[None]:  # fmt: skip
    """Every process the tests start inherits a marker naming this session; once the session's
    fixtures are gone, mounts and loop devices left under the temp root and marked processes
    still running are undone, and each is listed in the summary."""
    marker = str(os.getpid())
    os.environ[SESSION_VARIABLE] = marker
    yield
    request.config.stash[LEFTOVERS] = clean_leftovers(tmp_path_factory.getbasetemp(), marker)


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    cleaned = config.stash.get(LEFTOVERS, [])
    if cleaned:
        terminalreporter.section("left behind by the tests, cleaned at the end", yellow=True)
        for line in cleaned:
            terminalreporter.write_line(line)


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    """Files made by the real nydus-image (see its README): $RAFS_SHARED_FIXTURES, by default
    ../shared/fixtures/nydus beside the repository. Missing, they fail the tests in CI and
    skip them elsewhere."""
    default = REPO_ROOT.parent / "shared" / "fixtures" / "nydus"
    path = Path(os.environ.get("RAFS_SHARED_FIXTURES") or default)
    if not path.is_dir():
        why = "is not a directory" if path.exists() else "does not exist"
        missing_prerequisite(
            f"the nydus fixtures folder {path} {why}"
            " (set RAFS_SHARED_FIXTURES, or put it at ../shared/fixtures/nydus)"
        )
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
