"""Every layer rafs creates, and every bootstrap it merges, as the real Nydus code reads them.

Judges: `nydus-image check` (nydus-rs 2.2) and our `nydus-judge` on the published nydus-rafs
crate (2025): its `check` loads the bootstrap as nydusd does and validates every inode, its
`walk` prints every entry as nydus-rafs sees it, which must equal the source tree field by
field (contents are compared by rafs's own tests and by the kernel; the judge gives chunk
lists, not bytes). The matrix: the every-entry-type tree with each compressor, digester and
chunk size rafs offers; the Debian root filesystem with the defaults; the merged bootstrap
of the 4-layer umoci scenario.
"""

from __future__ import annotations

import dataclasses
import stat
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import RafsRunner
from tests.support.judges import judge_check, judge_walk, nydus_image_check
from tests.support.tree import Entry, compare, snapshot

KINDS = {"reg", "dir", "lnk", "chr", "blk", "fifo", "sock"}


def walk_as_snapshot(bootstrap: Path) -> dict[str, Entry]:
    """The judge's walk in the shape of `tests.support.tree.snapshot` (no content digests)."""
    entries: dict[str, Entry] = {}
    inodes: dict[int, list[str]] = defaultdict(list)
    for record in judge_walk(bootstrap):
        key = _path(record).removeprefix("/")
        entries[key] = _entry(record)
        if record["type"] == "reg" and record["nlink"] > 1:
            inodes[record["ino"]].append(key)
    for keys in inodes.values():
        group = tuple(sorted(keys))
        for key in group:
            entries[key] = dataclasses.replace(entries[key], hardlinks=group)
    return entries


def _path(record: dict[str, Any]) -> str:
    if "path" in record:
        return str(record["path"])
    return bytes.fromhex(record["path_hex"]).decode("utf-8", "surrogateescape")


def _entry(record: dict[str, Any]) -> Entry:
    kind = record["type"]
    assert kind in KINDS, record
    if record.get("target_hex") is not None:
        target: bytes | None = bytes.fromhex(record["target_hex"])
    else:
        target = record["target"].encode() if record["target"] is not None else None
    return Entry(
        kind=kind,
        mode=record["mode"],
        uid=record["uid"],
        gid=record["gid"],
        mtime_ns=record["mtime"] * 1_000_000_000 + record["mtime_nsec"],
        xattrs={name: bytes.fromhex(value) for name, value in record["xattrs"].items()},
        size=record["size"] if kind in ("reg", "lnk") else None,
        sha256=None,
        target=target,
        rdev=record["rdev"] if kind in ("chr", "blk") else None,
        nlink=record["nlink"] if kind != "dir" else None,
        hardlinks=None,
    )


def judge(bootstrap: Path, source: Path, work: Path) -> dict[str, Any]:
    """Both checks pass and the judge's walk equals `source`; returns the judge's summary."""
    nydus_image_check(bootstrap, work)
    summary = judge_check(bootstrap)
    problems = compare(snapshot(source), walk_as_snapshot(bootstrap), ignore={"sha256"},
                       ignore_root_mtime=True)  # fmt: skip
    assert not problems, "\n".join(problems[:40])
    return summary


@pytest.mark.parametrize("chunk_size", [4096, 1 << 20, 16 << 20])
@pytest.mark.parametrize("digester", ["blake3", "sha256"])
@pytest.mark.parametrize("compressor", ["zstd", "lz4_block", "none"])
def test_every_entry_type_layer_passes_the_judges(
    entry_tree: Path, entry_tar: Path, rafs: RafsRunner, tmp_path: Path,
    compressor: str, digester: str, chunk_size: int,
) -> None:  # fmt: skip
    boot = tmp_path / "layer.boot"
    rafs("create", entry_tar, "-o", tmp_path / "layer", "--bootstrap", boot,
         "--compressor", compressor, "--digester", digester, "--chunk-size", str(chunk_size))
    summary = judge(boot, entry_tree, tmp_path / "check")
    (blob,) = summary["blobs"]
    assert (blob["compressor"], blob["digester"], blob["chunk_size"]) == (
        compressor, digester, chunk_size)


@pytest.mark.slow
def test_debian_rootfs_layer_passes_the_judges(
    rootfs: Path, rootfs_tar: Path, rafs: RafsRunner, tmp_path: Path
) -> None:
    boot = tmp_path / "layer.boot"
    rafs("create", rootfs_tar, "-o", tmp_path / "layer", "--bootstrap", boot)
    summary = judge(boot, rootfs, tmp_path / "check")
    # The judge counts inodes: hardlinked names are one file.
    regular = {path.lstat().st_ino for path in rootfs.rglob("*")
               if path.is_file() and not path.is_symlink()}  # fmt: skip
    assert summary["files"] == len(regular) > 1000


def test_judge_walk_sees_symlinks_as_lrwxrwxrwx(
    entry_tar: Path, rafs: RafsRunner, tmp_path: Path
) -> None:
    boot = tmp_path / "layer.boot"
    rafs("create", entry_tar, "-o", tmp_path / "layer", "--bootstrap", boot)
    links = [record for record in judge_walk(boot) if record["type"] == "lnk"]
    assert links
    assert {record["mode"] for record in links} == {stat.S_IFLNK | 0o777}
