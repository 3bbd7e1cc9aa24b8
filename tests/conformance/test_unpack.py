"""GNU tar is the judge: `rafs create` -> `rafs unpack` -> `tar -x` equals the source tree.

Sources are the all-entry-types tree (hardlinks, symlinks, fifos, devices, xattrs in the
user/trusted/security namespaces, long and non-ASCII names, setuid, nanosecond and far-future
mtimes, big ids) and a Debian root filesystem made by debootstrap. Each is tarred with GNU
tar, built into a Nydus layer, unpacked back to a tar and extracted by GNU tar as root; the
extracted tree must equal the source attribute for attribute (root mtime included). The
same holds for `unpack --to-dir`. The real nydus fixture unpacks to its two files.
"""

from __future__ import annotations

import hashlib
import io
import os
import socket
import subprocess
import tarfile
from pathlib import Path

import pytest

from rafs.reader import unpack as unpack_module
from rafs.reader.artifact import open_artifact
from tests.conftest import RafsRunner
from tests.support.tree import compare, snapshot

pytestmark = pytest.mark.root

GNU_TAR_EXTRACT = ["tar", "--xattrs", "--xattrs-include=*", "--numeric-owner",
                   "--warning=no-timestamp", "-xpf"]  # fmt: skip
"""As root, -p restores modes (setuid included) and --same-owner is the default; xattrs of
every namespace need --xattrs-include; PAX mtime records give nanoseconds."""


@pytest.fixture(scope="module", autouse=True)
def _root() -> None:
    if os.geteuid() != 0:
        pytest.fail("unpack round trips need root (devices, owners, trusted.* xattrs)",
                    pytrace=False)  # fmt: skip


def _gnu_extract(tar: Path, into: Path) -> Path:
    into.mkdir()
    result = subprocess.run([*GNU_TAR_EXTRACT, str(tar), "-C", str(into)],
                            capture_output=True, text=True)  # fmt: skip
    assert result.returncode == 0, result.stderr
    return into


def _assert_same_tree(source: Path, actual: Path, ignore_root_mtime: bool = False) -> None:
    problems = compare(snapshot(source), snapshot(actual), ignore_root_mtime=ignore_root_mtime)
    assert problems == [], "\n".join(problems[:50])


def _layer(rafs: RafsRunner, source: Path, tmp: Path, *options: str) -> Path:
    layer = tmp / "layer.nydus"
    rafs("create", source, "-o", layer, *options)
    return layer


def _unpack_tar(rafs: RafsRunner, layer: Path, out: Path) -> Path:
    result = rafs("unpack", layer, "-o", out)
    digest = hashlib.sha256(out.read_bytes()).hexdigest()
    assert result.stdout.decode() == f"sha256:{digest}\n"
    return out


# -- the all-entry-types tree --------------------------------------------------------------


@pytest.mark.parametrize("chunk_size", ["0x1000", "0x100000"])
def test_entry_types_round_trip_through_gnu_tar(
    rafs: RafsRunner, entry_tree: Path, entry_tar: Path, tmp_path: Path, chunk_size: str
) -> None:
    layer = _layer(rafs, entry_tar, tmp_path, "--chunk-size", chunk_size)
    tar = _unpack_tar(rafs, layer, tmp_path / "out.tar")
    _assert_same_tree(entry_tree, _gnu_extract(tar, tmp_path / "extracted"))


def test_entry_types_to_dir(
    rafs: RafsRunner, entry_tree: Path, entry_tar: Path, tmp_path: Path
) -> None:
    layer = _layer(rafs, entry_tar, tmp_path)
    result = rafs("unpack", layer, "--to-dir", tmp_path / "new" / "dir")
    assert result.stdout == b"" and result.stderr == ""
    _assert_same_tree(entry_tree, tmp_path / "new" / "dir")


def test_to_dir_with_few_descriptors(
    entry_tree: Path, entry_tar: Path, tmp_path: Path, rafs: RafsRunner,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """The 40-deep chain extracts right when only 2 directories stay open (".." reopens)."""
    layer = _layer(rafs, entry_tar, tmp_path)
    monkeypatch.setattr(unpack_module, "MAX_OPEN_DIRS", 2)
    with open_artifact(layer) as artifact:
        summary = unpack_module.extract(artifact, tmp_path / "out")
    assert summary.skipped == []
    _assert_same_tree(entry_tree, tmp_path / "out")


def test_tar_entries(rafs: RafsRunner, entry_tar: Path, tmp_path: Path) -> None:
    """Names as `tar -C DIR -cf - .` gives them, links to the first name, PAX only if needed."""
    layer = _layer(rafs, entry_tar, tmp_path)
    data = rafs("unpack", layer, "-o", "-").stdout
    assert data == _unpack_tar(rafs, layer, tmp_path / "out.tar").read_bytes()
    assert len(data) % 512 == 0 and data.endswith(bytes(1024))
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        members = {m.name: m for m in tar.getmembers()}
    names = [name for name in members]
    assert names[0] == "." and all(n.startswith("./") for n in names[1:])  # "./" read as "."
    assert names == sorted(names, key=lambda n: n.split("/"))  # depth first, name order
    links = {n: m.linkname for n, m in members.items() if m.type == tarfile.LNKTYPE}
    assert links == {"./hardlinks/one/linked": "./hardlinks/linked-at-top",
                     "./hardlinks/two/linked-again": "./hardlinks/linked-at-top"}  # fmt: skip
    xattr_file = members["./xattrs/file"]
    assert xattr_file.pax_headers["SCHILY.xattr.trusted.rafs.test"] == "trusted value"
    nanos = members["./times/nanoseconds"]
    assert nanos.pax_headers["mtime"] == "1700000000.000000007"
    assert "mtime" not in members["./times/epoch"].pax_headers
    assert members["./special/big-chr"].devminor == 70000
    assert members["./owners/big-ids"].uid == 100000
    assert members["./modes/setuid"].mode == 0o4755


def test_whiteouts_come_out_as_they_are(rafs: RafsRunner, tmp_path: Path) -> None:
    source = tmp_path / "layer.tar"
    with tarfile.open(source, "w", format=tarfile.PAX_FORMAT) as tar:
        for name, kind in (
            ("dir", tarfile.DIRTYPE),
            ("dir/.wh..wh..opq", tarfile.REGTYPE),
            (".wh.gone", tarfile.REGTYPE),
            ("dir/.wh.file", tarfile.REGTYPE),
        ):
            info = tarfile.TarInfo(name)
            info.type = kind
            tar.addfile(info)  # fmt: skip
    layer = _layer(rafs, source, tmp_path)
    data = rafs("unpack", layer, "-o", "-").stdout
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        names = tar.getnames()
    # No root: the source named none (see test_implied_parents_stay_implied).
    assert names == ["./.wh.gone", "./dir", "./dir/.wh..wh..opq", "./dir/.wh.file"]


def test_sockets_are_left_out_of_a_tar(rafs: RafsRunner, tmp_path: Path) -> None:
    source = tmp_path / "source"
    source.mkdir()
    (source / "file").write_bytes(b"data\n")
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(source / "sock"))
        layer = _layer(rafs, source, tmp_path)
    result = rafs("unpack", layer, "-o", tmp_path / "out.tar")
    assert result.stderr.count("\n") == 1 and "/sock: a socket cannot" in result.stderr
    with tarfile.open(tmp_path / "out.tar") as tar:
        # The root of a directory source is recorded as nydus does (mtime 0), which makes
        # it an implied parent: left out like the root a tar does not name.
        assert tar.getnames() == ["./file"]
    rafs("unpack", layer, "--to-dir", tmp_path / "out")
    _assert_same_tree(source, tmp_path / "out", ignore_root_mtime=True)  # a directory source
    # records the root's mtime as 0, as nydus does


# -- the real nydus fixture ----------------------------------------------------------------


def test_nydus_fixture_unpacks(rafs: RafsRunner, fixtures_dir: Path, tmp_path: Path) -> None:
    boot = fixtures_dir / "rafs-v6-2.2.boot"
    data = rafs("unpack", boot, "-o", "-").stdout
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        sizes = {m.name: m.size for m in tar.getmembers() if m.isfile()}
        lib = tar.extractfile("./lib.rs")
        assert lib is not None and lib.read(2) == b"//"
    assert sizes == {"./lib.rs": 16931, "./sync_io.rs": 13400}
    out = tmp_path / "out"
    rafs("unpack", boot, "--to-dir", out, "--blob-dir", fixtures_dir)
    assert sorted(os.listdir(out)) == ["lib.rs", "sync_io.rs"]
    assert (out / "lib.rs").stat().st_size == 16931
    assert (out / "sync_io.rs").stat().st_size == 13400
    assert (out / "lib.rs").stat().st_mtime_ns == 1676819553_628661334
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        for name in ("lib.rs", "sync_io.rs"):
            member = tar.extractfile("./" + name)
            assert member is not None and member.read() == (out / name).read_bytes()


def test_failed_unpack_leaves_no_tar(rafs: RafsRunner, entry_tar: Path, tmp_path: Path) -> None:
    """A blob that is missing halfway through: no output file, no temp file."""
    layer = _layer(rafs, entry_tar, tmp_path)
    boot = tmp_path / "boot" / "image.boot"
    boot.parent.mkdir()
    rafs("create", entry_tar, "-o", tmp_path / "again.nydus", "--bootstrap", boot)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    result = rafs("unpack", boot, "-o", out_dir / "out.tar", "--blob-dir", out_dir, check=False)
    assert result.returncode == 3, result.stderr  # NotFound: the blob
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("rafs: ")
    assert os.listdir(out_dir) == []
    assert layer.exists()


def test_exactly_one_destination(rafs: RafsRunner, tmp_path: Path, fixtures_dir: Path) -> None:
    boot = fixtures_dir / "rafs-v6-2.2.boot"
    assert rafs("unpack", boot, check=False).returncode == 2
    both = rafs("unpack", boot, "-o", tmp_path / "x.tar", "--to-dir", tmp_path / "d", check=False)
    assert both.returncode == 2
    assert not (tmp_path / "x.tar").exists() and not (tmp_path / "d").exists()


# -- a Debian root filesystem --------------------------------------------------------------


@pytest.mark.slow
def test_debian_rootfs_round_trip(
    rafs: RafsRunner, rootfs: Path, rootfs_tar: Path, tmp_path: Path
) -> None:
    layer = _layer(rafs, rootfs_tar, tmp_path)
    tar = _unpack_tar(rafs, layer, tmp_path / "out.tar")
    _assert_same_tree(rootfs, _gnu_extract(tar, tmp_path / "extracted"))
    rafs("unpack", layer, "--to-dir", tmp_path / "to-dir")
    _assert_same_tree(rootfs, tmp_path / "to-dir")


def test_implied_parents_stay_implied(rafs: RafsRunner, tmp_path: Path) -> None:
    """A layer's tar leaves out the parents its source never named, so applying it keeps a
    lower layer's directory attributes; a named directory with the same attributes, when
    empty, is still written."""
    source = tmp_path / "layer.tar"
    with tarfile.open(source, "w", format=tarfile.PAX_FORMAT) as tar:
        for name, kind, data in (("a/b/file", tarfile.REGTYPE, b"data"),
                                 ("empty", tarfile.DIRTYPE, b"")):  # fmt: skip
            info = tarfile.TarInfo(name)
            info.type, info.mode, info.size = kind, 0o755, len(data)
            tar.addfile(info, io.BytesIO(data))
    layer = _layer(rafs, source, tmp_path)
    data = rafs("unpack", layer, "-o", "-").stdout
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        assert tar.getnames() == ["./a/b/file", "./empty"]
    blobs = tmp_path / "blobs"
    blobs.mkdir()
    digest = rafs("merge", layer, "-o", tmp_path / "merged.boot").stdout.decode().split()[0]
    layer.rename(blobs / digest.removeprefix("sha256:"))
    data = rafs("unpack", tmp_path / "merged.boot", "--blob-dir", blobs, "-o", "-").stdout
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        assert tar.getnames() == [".", "./a", "./a/b", "./a/b/file", "./empty"]
