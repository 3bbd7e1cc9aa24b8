"""Malicious tars given to `rafs create`, and the layers made of them given to `rafs unpack
--to-dir`: each is refused with one line naming the tar and the entry, or contained.

Refused: hard links that leave the layer (by "..", by an absolute name, or through a
symlink), declared sizes larger than the data that follows. Contained: a symlink followed
by entries through it (the later entries replace the symlink by a directory), device nodes,
duplicate entries and names that are the same after normalisation (the last one wins, as
in the Go converter). Every contained layer is then unpacked into a target beside an
`outside` folder; nothing but the target may change. (Names with ".." or absolute names
are refused in test_bad_input.py; malicious bootstraps are in test_unpack_safety.py.)
"""

from __future__ import annotations

import io
import os
import stat
import tarfile
import tracemalloc
from dataclasses import replace
from pathlib import Path

import pytest

from rafs.builder.bootstrap import write_bootstrap
from rafs.errors import FormatError
from rafs.format.inode import unpack_inode
from rafs.reader.image import RafsImage
from tests.conftest import RafsRunner
from tests.fuzz.targets import tar_input
from tests.unit.test_unpack_safety import OPTIONS, Arena, _dir, _file, _one_line_error, arena

__all__ = ["arena"]  # the fixture, used by name below

TIMEOUT = 60.0


def _entry(name: str, kind: bytes = tarfile.REGTYPE, data: bytes = b"", link: str = "",
           **attrs: object) -> tuple[tarfile.TarInfo, bytes]:  # fmt: skip
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.mtime, info.size = kind, link, 1_700_000_000, len(data)
    info.mode = 0o755 if kind == tarfile.DIRTYPE else 0o644
    for key, value in attrs.items():
        setattr(info, key, value)
    return info, data


def _tar(path: Path, *entries: tuple[tarfile.TarInfo, bytes]) -> Path:
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as archive:
        for info, data in entries:
            archive.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return path


def _huge_ustar(path: Path) -> Path:
    """One file whose ustar size field says 8 GiB - 1, followed by 10 bytes."""
    info, _ = _entry("huge")
    info.size = 8**11 - 1
    header = info.tobuf(tarfile.USTAR_FORMAT)
    path.write_bytes(header + b"x" * 10 + bytes(502) + bytes(1024))
    return path


REFUSED = {
    "hardlink-dotdot": (lambda p: _tar(p, _entry("f", data=b"x"),
                                       _entry("h", tarfile.LNKTYPE, link="../outside/secret")),
                        "climbs out"),
    "hardlink-absolute": (lambda p: _tar(p, _entry("h", tarfile.LNKTYPE, link="/etc/passwd")),
                          "absolute name"),
    "hardlink-through-symlink": (lambda p: _tar(p, _entry("s", tarfile.SYMTYPE, link="/etc"),
                                                _entry("h", tarfile.LNKTYPE, link="s/passwd")),
                                 "hard link to missing"),
    "huge-ustar-size": (_huge_ustar, "early"),
    "huge-pax-size": (lambda p: _tar(p, _entry("f", data=b"0123456789",
                                               pax_headers={"size": str(10**15)})),
                      "early"),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_create_refuses(rafs: RafsRunner, arena: Arena, case: str) -> None:
    make, message = REFUSED[case]
    tar = make(arena.root / "images" / f"{case}.tar")
    before = arena.state()
    result = rafs("create", tar, "-o", arena.target, check=False, timeout=TIMEOUT)
    _one_line_error(result.stderr, result.returncode, FormatError.exit_code)
    assert str(tar) in result.stderr and message in result.stderr, result.stderr
    assert not arena.target.exists()
    after = arena.state()
    assert after == before


@pytest.mark.parametrize("case", ["huge-ustar-size", "huge-pax-size"])
def test_huge_declared_sizes_allocate_nothing(tmp_path: Path, case: str) -> None:
    data = REFUSED[case][0](tmp_path / "t.tar").read_bytes()
    tracemalloc.start()
    try:
        with pytest.raises(FormatError):
            tar_input(data)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 64 << 20


def _contained_cases(outside: Path) -> dict[str, tuple[list[tuple[tarfile.TarInfo, bytes]],
                                                        dict[str, tuple[str, bytes]]]]:  # fmt: skip
    """name -> (tar entries, {path in the target: (kind, content or link target)})."""
    return {
        "symlink-then-file-through-it": (
            [_entry("a", tarfile.SYMTYPE, link=str(outside)), _entry("a/b", data=b"in\n")],
            {"a": ("dir", b""), "a/b": ("file", b"in\n")},
        ),
        "relative-symlink-then-directory-through-it": (
            [_entry("a", tarfile.SYMTYPE, link="../../outside"), _entry("a", tarfile.DIRTYPE),
             _entry("a/secret", data=b"mine\n")],
            {"a": ("dir", b""), "a/secret": ("file", b"mine\n")},
        ),
        "devices": (
            [_entry("null", tarfile.CHRTYPE, devmajor=1, devminor=3),
             _entry("loop", tarfile.BLKTYPE, devmajor=7, devminor=0),
             _entry("fifo", tarfile.FIFOTYPE)],
            {"null": ("chr", b""), "loop": ("blk", b""), "fifo": ("fifo", b"")},
        ),
        "duplicates": (
            [_entry("f", data=b"first\n"), _entry("f", data=b"second\n"),
             _entry("d", tarfile.DIRTYPE), _entry("d", data=b"now a file\n"),
             _entry("x", data=b"x"), _entry("x/y", data=b"y\n")],
            {"f": ("file", b"second\n"), "d": ("file", b"now a file\n"), "x": ("dir", b""),
             "x/y": ("file", b"y\n")},
        ),
        "same-after-normalisation": (
            [_entry("./n/./m", data=b"1"), _entry("n//m", data=b"2"),
             _entry("n/m/", tarfile.DIRTYPE), _entry(".//n///m/z", data=b"3"),
             _entry("./", tarfile.DIRTYPE, mode=0o700)],
            {"n": ("dir", b""), "n/m": ("dir", b""), "n/m/z": ("file", b"3")},
        ),
        "link-to-a-symlink-pointing-outside": (
            [_entry("s", tarfile.SYMTYPE, link=str(outside / "secret")),
             _entry("h", tarfile.LNKTYPE, link="s")],
            {"s": ("lnk", os.fsencode(outside / "secret")),
             "h": ("lnk", os.fsencode(outside / "secret"))},
        ),
    }  # fmt: skip


def _kind(mode: int) -> str:
    kinds = {stat.S_IFDIR: "dir", stat.S_IFREG: "file", stat.S_IFLNK: "lnk",
             stat.S_IFCHR: "chr", stat.S_IFBLK: "blk", stat.S_IFIFO: "fifo"}  # fmt: skip
    return kinds[stat.S_IFMT(mode)]


CONTAINED = sorted(_contained_cases(Path("/")))


@pytest.mark.parametrize("case", [pytest.param(case, marks=pytest.mark.root) if case == "devices"
                                  else case for case in CONTAINED])  # fmt: skip
def test_create_and_unpack_contain(rafs: RafsRunner, arena: Arena, case: str) -> None:
    if case == "devices" and os.geteuid() != 0:
        pytest.fail("unpacking device nodes needs root (run the tests as root)")
    entries, expected = _contained_cases(arena.outside)[case]
    tar = _tar(arena.root / "images" / f"{case}.tar", *entries)
    layer = arena.root / "images" / "layer"
    rafs("create", tar, "-o", layer, timeout=TIMEOUT)
    before = arena.state()
    rafs("unpack", layer, "--to-dir", arena.target, timeout=TIMEOUT)
    assert arena.state() == before
    assert (arena.outside / "secret").read_bytes() == b"secret\n"
    found = {}
    for dirpath, dirnames, filenames in os.walk(arena.target):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            st = path.lstat()
            kind = _kind(st.st_mode)
            content = b""
            if kind == "file":
                content = path.read_bytes()
            elif kind == "lnk":
                content = os.fsencode(os.readlink(path))
            found[str(path.relative_to(arena.target))] = (kind, content)
    assert found == expected


def test_unpack_refuses_a_huge_file_size(rafs: RafsRunner, arena: Arena) -> None:
    """A file whose i_size says 1 TiB: one line, and no file of that size anywhere."""
    boot = write_bootstrap(_dir({b"big": _file(), b"ok": _file()}), [], OPTIONS)
    image = RafsImage(boot, "boot")
    offset = image.stat(image.lookup("/big")).offset
    record = replace(unpack_inode(boot, offset), i_size=1 << 40).pack()  # type: ignore[type-var]
    path = arena.image(boot[:offset] + record + boot[offset + len(record) :])
    before = arena.state()
    result = rafs("unpack", path, "--to-dir", arena.target, check=False, timeout=TIMEOUT)
    _one_line_error(result.stderr, result.returncode, FormatError.exit_code)
    assert arena.state() == before
    sizes = [p.lstat().st_size for p in arena.target.rglob("*")]
    assert all(size == 0 for size in sizes), sizes
