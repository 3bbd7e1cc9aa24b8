"""`rafs unpack` never writes outside its output, whatever the bootstrap says.

Malicious bootstraps are built directly from `Inode` trees with `write_bootstrap` (so the tar
reader's checks are bypassed) and patched where a tree cannot express the attack: names
with "/", "..", "." or NUL, one name given twice (a symlink to the outside, then a directory
of the same name holding a file), a directory reached twice. Each is run through
`rafs unpack --to-dir` and `-o`; the run must end with one line on stderr or output
contained in the target, and nothing beside the target may change. A target that already
holds symlinks (and a hard link) to the outside must not be written through either.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from rafs.builder.bootstrap import BootstrapOptions, write_bootstrap
from rafs.builder.tree import Inode
from rafs.errors import FormatError
from rafs.format.blobtable import Compressor, Digester
from rafs.format.inode import DataLayout
from rafs.reader.image import RafsImage
from tests.conftest import RafsRunner

OPTIONS = BootstrapOptions(chunk_size=1 << 20, compressor=Compressor.ZSTD,
                           digester=Digester.BLAKE3)  # fmt: skip


def _dir(children: dict[bytes, Inode], mode: int = 0o755) -> Inode:
    return Inode(stat.S_IFDIR | mode, mtime=1_700_000_000, children=children)


def _file(mode: int = 0o644) -> Inode:
    return Inode(stat.S_IFREG | mode, mtime=1_700_000_000)


def _symlink(target: str) -> Inode:
    raw = target.encode()
    return Inode(stat.S_IFLNK | 0o777, target=raw, size=len(raw))


def _replace_once(data: bytes, old: bytes, new: bytes) -> bytes:
    assert len(old) == len(new) and data.count(old) == 1, (old, data.count(old))
    return data.replace(old, new)


@dataclass(frozen=True)
class Arena:
    """tmp_path laid out as: images/, work/target (the output), work/sentinel/, outside/."""

    root: Path

    @property
    def target(self) -> Path:
        return self.root / "work" / "target"

    @property
    def outside(self) -> Path:
        return self.root / "outside"

    def image(self, data: bytes) -> Path:
        path = self.root / "images" / "image.boot"
        path.write_bytes(data)
        return path

    def state(self) -> dict[str, tuple[int, int, bytes]]:
        """Everything outside the target: path -> (mode, size, content of files)."""
        seen = {}
        for dirpath, dirnames, filenames in os.walk(self.root):
            base = Path(dirpath)
            if base == self.target.parent:
                dirnames[:] = [d for d in dirnames if base / d != self.target]
                filenames = [f for f in filenames if base / f != self.target]
            for name in dirnames + filenames:
                path = base / name
                st = path.lstat()
                content = path.read_bytes() if stat.S_ISREG(st.st_mode) else b""
                seen[str(path.relative_to(self.root))] = (st.st_mode, st.st_size, content)
        return seen


@pytest.fixture
def arena(tmp_path: Path) -> Arena:
    for name in ("images", "work/sentinel", "outside"):
        (tmp_path / name).mkdir(parents=True)
    (tmp_path / "outside" / "secret").write_bytes(b"secret\n")
    return Arena(tmp_path)


def _one_line_error(stderr: str, code: int, expected: int) -> None:
    assert code == expected, stderr
    assert stderr.count("\n") == 1 and stderr.startswith("rafs: "), stderr
    assert "Traceback" not in stderr


# -- malicious bootstraps --------------------------------------------------------------------


def _slash_name(arena: Arena) -> bytes:
    escape = b"../sentinel/escape"
    return write_bootstrap(_dir({b"ok": _file(), escape: _file()}), [], OPTIONS)


def _slash_dir_name(arena: Arena) -> bytes:
    return write_bootstrap(_dir({b"../../outside": _dir({b"x": _file()})}), [], OPTIONS)


def _absolute_name(arena: Arena) -> bytes:
    name = os.fsencode(arena.outside / "abs")
    return write_bootstrap(_dir({name: _file()}), [], OPTIONS)


def _dotdot_name(arena: Arena) -> bytes:
    """A directory renamed ".." holding a file: the reader hides it, or an error."""
    boot = write_bootstrap(_dir({b"QQ": _dir({b"payload": _file()})}), [], OPTIONS)
    return _replace_once(boot, b"...QQ", b".....")


def _dot_name(arena: Arena) -> bytes:
    boot = write_bootstrap(_dir({b"Q": _dir({b"payload": _file()})}), [], OPTIONS)
    return _replace_once(boot, b"...Q", b"....")


def _nul_name(arena: Arena) -> bytes:
    boot = write_bootstrap(_dir({b"aXb": _file(), b"c": _file()}), [], OPTIONS)
    return _replace_once(boot, b"aXbc", b"a\0bc")


def _symlink_then_dir(arena: Arena) -> bytes:
    """`a -> OUTSIDE`, then a directory also named `a` holding `b`: the classic tar attack."""
    root = _dir({b"a": _symlink(str(arena.outside)), b"c": _dir({b"b": _file()})})
    return _replace_once(write_bootstrap(root, [], OPTIONS), b"...ac", b"...aa")


def _symlink_then_file(arena: Arena) -> bytes:
    """`s -> OUTSIDE/secret`, then a regular file also named `s`."""
    root = _dir({b"s": _symlink(str(arena.outside / "secret")), b"t": _file()})
    return _replace_once(write_bootstrap(root, [], OPTIONS), b"...st", b"...ss")


def _directory_twice(arena: Arena) -> bytes:
    """The dirent of `b` patched to point at directory `a`: one directory under two names."""
    boot = write_bootstrap(_dir({b"a": _dir({b"x": _file()}), b"b": _dir({})}), [], OPTIONS)
    image = RafsImage(boot, "crafted")
    root = image.stat(image.root_nid)
    assert root.layout == DataLayout.FLAT_INLINE and root.size < image.block_size
    entries = image.readdir(image.root_nid)
    assert [e.name for e in entries] == [b".", b"..", b"a", b"b"]
    nid_at = root.body_offset + 3 * 12  # e_nid of the fourth dirent
    patched = bytearray(boot)
    patched[nid_at : nid_at + 8] = entries[2].nid.to_bytes(8, "little")
    return bytes(patched)


Attack = Callable[[Arena], bytes]
REFUSED: list[Attack] = [_slash_name, _slash_dir_name, _absolute_name, _nul_name,
                         _symlink_then_dir, _symlink_then_file, _directory_twice]  # fmt: skip
HIDDEN: list[Attack] = [_dotdot_name, _dot_name]


@pytest.mark.parametrize("attack", REFUSED, ids=lambda f: f.__name__.strip("_"))
def test_to_dir_refuses(rafs: RafsRunner, arena: Arena, attack: Attack) -> None:
    image = arena.image(attack(arena))
    before = arena.state()
    result = rafs("unpack", image, "--to-dir", arena.target, check=False)
    _one_line_error(result.stderr, result.returncode, FormatError.exit_code)
    assert arena.state() == before
    assert not (arena.outside / "b").exists()


@pytest.mark.parametrize("attack", REFUSED, ids=lambda f: f.__name__.strip("_"))
def test_tar_refuses(rafs: RafsRunner, arena: Arena, attack: Attack) -> None:
    image = arena.image(attack(arena))
    before = arena.state()
    out = arena.root / "images" / "out.tar"
    result = rafs("unpack", image, "-o", out, check=False)
    _one_line_error(result.stderr, result.returncode, FormatError.exit_code)
    assert not out.exists()
    assert arena.state() == before


@pytest.mark.parametrize("attack", HIDDEN, ids=lambda f: f.__name__.strip("_"))
def test_dot_names_stay_inside(rafs: RafsRunner, arena: Arena, attack: Attack) -> None:
    """Entries named "." and ".." are skipped by the reader: nothing of them is written."""
    image = arena.image(attack(arena))
    before = arena.state()
    result = rafs("unpack", image, "--to-dir", arena.target, check=False)
    if result.returncode:
        _one_line_error(result.stderr, result.returncode, FormatError.exit_code)
    else:
        assert os.listdir(arena.target) == []
    assert arena.state() == before
    assert not list(arena.root.rglob("payload"))


# -- a target that already holds links to the outside ----------------------------------------


def test_existing_links_in_target_are_not_followed(rafs: RafsRunner, arena: Arena) -> None:
    target, outside = arena.target, arena.outside
    target.mkdir()
    (target / "etc").symlink_to(outside)  # a directory in the image
    (target / "file").symlink_to(outside / "new-file")  # a file in the image (dangling)
    (target / "secret").symlink_to(outside / "secret")  # a file in the image
    (target / "node").symlink_to(outside / "node")  # a fifo in the image
    (target / "link").symlink_to(outside)  # a symlink in the image
    os.link(outside / "secret", target / "hardlinked")  # a file in the image
    (target / "keep").mkdir()  # a directory in the image: kept, reused
    (target / "keep" / "old").write_bytes(b"old\n")
    root = _dir({
        b"etc": _dir({b"passwd": _file(0o600), b"sub": _dir({b"x": _file()})}, 0o700),
        b"file": _file(0o4755),
        b"secret": _file(0o600),
        b"node": Inode(stat.S_IFIFO | 0o600),
        b"link": _symlink("elsewhere"),
        b"hardlinked": _file(0o600),
        b"keep": _dir({b"new": _file()}),
    })  # fmt: skip
    image = arena.image(write_bootstrap(root, [], OPTIONS))
    outside_mode = outside.stat().st_mode
    before = arena.state()
    rafs("unpack", image, "--to-dir", target)
    assert arena.state() == before
    assert outside.stat().st_mode == outside_mode
    assert (outside / "secret").read_bytes() == b"secret\n"
    assert sorted(os.listdir(outside)) == ["secret"]
    assert (target / "etc").is_dir() and not (target / "etc").is_symlink()
    assert stat.S_IMODE((target / "etc").stat().st_mode) == 0o700
    assert (target / "etc" / "passwd").is_file()
    assert (target / "etc" / "sub" / "x").is_file()
    for name in ("file", "secret", "hardlinked"):
        path = target / name
        assert path.is_file() and not path.is_symlink() and path.stat().st_nlink == 1
        assert path.read_bytes() == b""
    assert stat.S_IMODE((target / "file").stat().st_mode) == 0o4755
    assert stat.S_ISFIFO((target / "node").lstat().st_mode)
    assert os.readlink(target / "link") == "elsewhere"
    assert sorted(os.listdir(target / "keep")) == ["new", "old"]


def test_existing_directory_replaced_by_file_must_be_empty(rafs: RafsRunner, arena: Arena) -> None:
    arena.target.mkdir()
    (arena.target / "x").mkdir()
    (arena.target / "x" / "inside").write_bytes(b"kept\n")
    (arena.target / "y").mkdir()
    image = arena.image(write_bootstrap(_dir({b"x": _file(), b"y": _file()}), [], OPTIONS))
    result = rafs("unpack", image, "--to-dir", arena.target, check=False)
    assert result.returncode == 11, result.stderr  # an OSError naming the path
    assert result.stderr.count("\n") == 1 and "/target/x: Directory not empty" in result.stderr
    assert (arena.target / "x" / "inside").read_bytes() == b"kept\n"


def test_target_that_is_a_file(rafs: RafsRunner, arena: Arena) -> None:
    arena.target.write_bytes(b"not a directory\n")
    image = arena.image(write_bootstrap(_dir({b"x": _file()}), [], OPTIONS))
    result = rafs("unpack", image, "--to-dir", arena.target, check=False)
    assert result.returncode == 11 and result.stderr.count("\n") == 1, result.stderr
    assert arena.target.read_bytes() == b"not a directory\n"
