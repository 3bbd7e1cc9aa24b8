"""The test harness itself: snapshot/compare catch each kind of difference, the
all-entry-types source tree really holds every kind of entry, and the end-of-session clean-up
undoes what a test left behind."""

from __future__ import annotations

import os
import re
import shutil
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import RafsRunner
from tests.support.fuse import require_fuse
from tests.support.kernel import require_kernel_erofs
from tests.support.leftovers import (
    SESSION_VARIABLE,
    clean_leftovers,
    loop_devices_under,
    mounts_under,
)
from tests.support.sources import MANY_ENTRIES
from tests.support.tree import ROOT, Entry, compare, snapshot


@pytest.fixture
def small_tree(tmp_path: Path) -> Path:
    """A file with an xattr, a directory, and a regular file under two names."""
    root = tmp_path / "tree"
    (root / "sub").mkdir(parents=True)
    (root / "file").write_bytes(b"content\n")
    os.chmod(root / "file", 0o644)
    os.setxattr(root / "file", "user.test", b"one")
    (root / "linked").write_bytes(b"shared\n")
    os.link(root / "linked", root / "sub" / "linked-too")
    return root


def test_keys_are_relative_posix_paths_with_empty_root(small_tree: Path) -> None:
    assert sorted(snapshot(small_tree)) == [ROOT, "file", "linked", "sub", "sub/linked-too"]


def test_same_tree_compares_equal(small_tree: Path) -> None:
    assert compare(snapshot(small_tree), snapshot(small_tree)) == []


def test_detects_changed_mode(small_tree: Path) -> None:
    before = snapshot(small_tree)
    os.chmod(small_tree / "file", 0o4755)
    assert compare(before, snapshot(small_tree)) == ["'file': mode expected 0o100644, got 0o104755"]


def test_detects_changed_mtime(small_tree: Path) -> None:
    before = snapshot(small_tree)
    mtime = before["file"].mtime_ns + 1
    os.utime(small_tree / "file", ns=(mtime, mtime))
    problems = compare(before, snapshot(small_tree))
    assert [p.split(" expected")[0] for p in problems] == ["'file': mtime_ns"]
    assert compare(before, snapshot(small_tree), ignore={"mtime_ns"}) == []


def test_root_mtime_can_be_ignored_alone(small_tree: Path) -> None:
    before = snapshot(small_tree)
    os.utime(small_tree, ns=(1, 1))
    os.utime(small_tree / "sub", ns=(1, 1))
    problems = compare(before, snapshot(small_tree), ignore_root_mtime=True)
    assert [p.split(" expected")[0] for p in problems] == ["'sub': mtime_ns"]


def test_detects_changed_xattr(small_tree: Path) -> None:
    before = snapshot(small_tree)
    os.setxattr(small_tree / "file", "user.test", b"two")
    assert compare(before, snapshot(small_tree)) == [
        "'file': xattrs expected {'user.test': b'one'}, got {'user.test': b'two'}"
    ]


def test_detects_missing_and_extra_paths(small_tree: Path) -> None:
    before = snapshot(small_tree)
    os.rename(small_tree / "file", small_tree / "renamed")
    problems = compare(before, snapshot(small_tree), ignore_root_mtime=True)
    assert problems == ["missing: 'file'", "extra: 'renamed'"]


def test_detects_broken_hardlink_group(small_tree: Path) -> None:
    before = snapshot(small_tree)
    copy = small_tree / "sub" / "linked-too"
    os.unlink(copy)
    copy.write_bytes(b"shared\n")
    mtime = before["sub/linked-too"].mtime_ns
    os.utime(copy, ns=(mtime, mtime))
    os.utime(copy.parent, ns=(before["sub"].mtime_ns,) * 2)
    problems = compare(before, snapshot(small_tree))
    assert [p.split(" expected")[0] for p in problems] == [
        "'linked': nlink",
        "'linked': hardlinks",
        "'sub/linked-too': nlink",
        "'sub/linked-too': hardlinks",
    ]


def test_unknown_ignored_field_is_an_error(small_tree: Path) -> None:
    with pytest.raises(ValueError, match="mtime"):
        compare({}, {}, ignore={"mtime"})


def _by_kind(tree: dict[str, Entry], kind: str) -> dict[str, Entry]:
    return {key: entry for key, entry in tree.items() if entry.kind == kind}


def test_entry_tree_has_every_file_type(entry_tree: Path) -> None:
    tree = snapshot(entry_tree)
    assert {entry.kind for entry in tree.values()} == {"reg", "dir", "lnk", "chr", "blk", "fifo"}
    assert {e.rdev for e in _by_kind(tree, "chr").values()} == {
        os.makedev(1, 3),
        os.makedev(240, 70000),
    }
    assert [e.rdev for e in _by_kind(tree, "blk").values()] == [os.makedev(7, 200)]
    targets = {e.target for e in _by_kind(tree, "lnk").values()}
    assert b"does/not/exist" in targets
    assert any(t is not None and len(t) > 100 for t in targets)


def test_entry_tree_has_a_hardlink_group_of_three(entry_tree: Path) -> None:
    groups = {e.hardlinks for e in snapshot(entry_tree).values() if e.hardlinks}
    assert groups == {
        ("hardlinks/linked-at-top", "hardlinks/one/linked", "hardlinks/two/linked-again")
    }


def test_entry_tree_has_xattrs_of_every_namespace(entry_tree: Path) -> None:
    tree = snapshot(entry_tree)
    names = {name for entry in tree.values() for name in entry.xattrs}
    assert {name.split(".")[0] for name in names} == {"user", "trusted", "security"}
    assert tree["xattrs/file"].xattrs["user.rafs.empty"] == b""
    assert tree["xattrs/dir"].xattrs
    assert tree["xattrs/link"].xattrs


def test_entry_tree_has_mode_owner_name_and_size_edges(entry_tree: Path) -> None:
    tree = snapshot(entry_tree)
    modes = [entry.mode for entry in tree.values()]
    for bit in (stat.S_ISUID, stat.S_ISGID, stat.S_ISVTX):
        assert any(mode & bit for mode in modes)
    assert {1000, 65534, 100000} <= {entry.uid for entry in tree.values()}
    assert max(len(key.encode()) for key in tree) > 300
    assert any(not key.isascii() for key in tree)
    assert {entry.size for entry in tree.values()} >= {0, (1 << 20) - 1, 1 << 20, (1 << 20) + 1}
    assert sum(key.startswith("many/") for key in tree) == MANY_ENTRIES
    assert any(entry.mtime_ns % 1_000_000_000 for entry in tree.values())


@pytest.mark.kernel
@pytest.mark.fuse
def test_leftovers_are_cleaned_and_each_named(rafs: RafsRunner, tmp_path: Path) -> None:
    """Mounts (EROFS on a loop device, an overlay on it, a FUSE mount served by a daemonized
    `rafs mount`), a loop device and a daemon left on purpose under a stand-in temp root are
    all undone, one line each; a loop device backed by a file elsewhere is left alone."""
    require_kernel_erofs()
    require_fuse()
    root, elsewhere = tmp_path / "session", tmp_path / "elsewhere"
    source = root / "source"
    source.mkdir(parents=True)
    (source / "file").write_bytes(b"left behind\n")
    elsewhere.mkdir()
    marker = f"leftovers-test-{os.getpid()}"
    marked = {**os.environ, SESSION_VARIABLE: marker}

    image = root / "image.erofs"
    subprocess.run(["mkfs.erofs", "--quiet", str(image), str(source)], check=True)
    shutil.copyfile(image, elsewhere / "image.erofs")
    loop = _attach(image)
    kept = _attach(elsewhere / "image.erofs")
    try:
        for name in ("erofs", "upper", "work", "overlay", "fuse"):
            (root / name).mkdir()
        subprocess.run(["mount", "-t", "erofs", "-o", "ro", loop, str(root / "erofs")],
                       check=True)  # fmt: skip
        layers = f"lowerdir={root / 'erofs'},upperdir={root / 'upper'},workdir={root / 'work'}"
        subprocess.run(["mount", "-t", "overlay", "overlay", "-o", layers, str(root / "overlay")],
                       check=True)  # fmt: skip
        layer = root / "layer"
        rafs("create", source, "-o", layer)
        subprocess.run([sys.executable, "-m", "rafs", "mount", str(layer), str(root / "fuse")],
                       env=marked, check=True, timeout=60)  # fmt: skip
        daemon = subprocess.Popen(["sleep", "600"], env=marked, start_new_session=True)
        assert (root / "overlay" / "file").read_bytes() == b"left behind\n"
        assert (root / "fuse" / "file").read_bytes() == b"left behind\n"

        cleaned = clean_leftovers(root, marker)

        assert mounts_under(root) == []
        assert loop_devices_under(root) == []
        assert daemon.wait(timeout=10) == -signal.SIGTERM
        assert loop_devices_under(elsewhere) == [(kept, elsewhere / "image.erofs")]
        expected = [
            f"fuse.rafs mount at {root / 'fuse'}: unmounted",
            f"overlay mount at {root / 'overlay'}: unmounted",
            f"erofs mount at {root / 'erofs'}: unmounted",
            f"process {daemon.pid} (sleep 600): terminated",
            f"loop device {loop} on {image}: detached",
        ]
        # The FUSE mount's server exits once unmounted; if it was still there, it was stopped.
        server = re.compile(r"process \d+ \(.* -m rafs mount .*\): terminated")
        assert [line for line in cleaned if not server.fullmatch(line)] == expected, cleaned
    finally:
        for mountpoint in ("fuse", "overlay", "erofs"):
            subprocess.run(["umount", "-l", str(root / mountpoint)], capture_output=True)
        for device in (loop, kept):
            subprocess.run(["losetup", "-d", device], capture_output=True)


def _attach(backing: Path) -> str:
    """A loop device on `backing`, as `mount_erofs` attaches blob devices (no autoclear)."""
    result = subprocess.run(["losetup", "--find", "--show", "--read-only", str(backing)],
                            capture_output=True, text=True, check=True)  # fmt: skip
    return result.stdout.strip()
