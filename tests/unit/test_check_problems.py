"""`check` reports impossible link counts, absurd sizes and chunks that overlap or lie past
their blob, one problem each; the reader reading the same image ends with a `RafsError`
(never another exception, never a loop: at most ten times the Python lines the untouched
image takes).

Images are built in memory by the project's builder, then one record of the bootstrap is
rewritten; the untouched layer stays the blob, so only the damage differs.
(Directory cycles are in test_bad_input.py.)
"""

from __future__ import annotations

import contextlib
import functools
import io
import stat
import tarfile
from dataclasses import replace

import pytest

from rafs.errors import RafsError
from rafs.format.chunktable import ChunkInfo
from rafs.format.inode import unpack_inode
from rafs.reader.artifact import Artifact
from rafs.reader.blobs import BlobSet
from rafs.reader.check import check_image
from rafs.reader.image import RafsImage
from tests.fuzz.targets import build_layer, drive_v6, make_tar
from tests.support.budget import counting_lines

DATA = bytes(range(256)) * 64  # 16 KiB: four 4 KiB chunks
TAR = make_tar([
    ("d", None, {}),
    ("d/sub", None, {}),
    ("d/file", DATA, {}),
    ("d/again", b"", {"type": tarfile.LNKTYPE, "linkname": "d/file"}),
    ("other", b"other data\n", {}),
    ("link", b"", {"type": tarfile.SYMTYPE, "linkname": "d/file"}),
])  # fmt: skip


@pytest.fixture(scope="module")
def built() -> tuple[bytes, bytes]:
    """(layer, bootstrap as inlined in it)."""
    return build_layer(TAR)


def _artifact(layer: bytes, bootstrap: bytes) -> Artifact:
    image = RafsImage(bootstrap, "patched.boot")
    return Artifact(image, BlobSet(image, io.BytesIO(layer), None), None)


def _patch_inode(bootstrap: bytes, path: str, **fields: int) -> bytes:
    image = RafsImage(bootstrap, "boot")
    offset = image.stat(image.lookup(path)).offset
    record = replace(unpack_inode(bootstrap, offset), **fields).pack()  # type: ignore[type-var]
    return bootstrap[:offset] + record + bootstrap[offset + len(record) :]


def _patch_chunk(bootstrap: bytes, index: int, **fields: int) -> bytes:
    """Chunk table entry `index` (in blob order) with new field values."""
    image = RafsImage(bootstrap, "boot")
    target = image.blob_chunks(0)[index]
    table = image.ext.s_chunk_table_offset
    for offset in range(table, table + image.ext.s_chunk_table_size, ChunkInfo.SIZE):
        if ChunkInfo.unpack(bootstrap, offset) == target:
            record = replace(target, **fields).pack()
            return bootstrap[:offset] + record + bootstrap[offset + ChunkInfo.SIZE :]
    raise AssertionError("chunk not in the table")


def _check_and_read(layer: bytes, bootstrap: bytes, budget: int | None) -> tuple[list[str], int]:
    """What check reports, with the reader driven through every command's reads as well, and
    the Python lines that took; past `budget` of them the test fails."""
    with counting_lines(budget, "check and reads of the patched image") as lines:
        report = check_image(_artifact(layer, bootstrap))
        artifact = _artifact(layer, bootstrap)
        with contextlib.suppress(RafsError):
            drive_v6(artifact.image, artifact)
    return report.problems, lines.count


@functools.cache
def _budget() -> int:
    """The Python lines a patched image may take: ten times the untouched image's."""
    return 10 * _check_and_read(*build_layer(TAR), budget=None)[1]


def _problems(layer: bytes, bootstrap: bytes) -> list[str]:
    """What check reports on a patched image, read within the budget."""
    return _check_and_read(layer, bootstrap, _budget())[0]


def test_the_untouched_image_is_sound(built: tuple[bytes, bytes]) -> None:
    layer, bootstrap = built
    image = RafsImage(bootstrap, "boot")
    assert image.stat(image.lookup("/d/file")).nlink == 2
    assert image.stat(image.lookup("/d")).nlink == 3
    assert _problems(layer, bootstrap) == []


@pytest.mark.parametrize(
    ("path", "nlink", "expected"),
    [
        ("/other", 0, "nlink is 0"),
        ("/d", 0, "nlink is 0"),
        ("/d/file", 1, "reachable under 2 names, but nlink is 1"),
        ("/other", 0xFFFF_FFFF, "nlink 4294967295 is more than the"),
        ("/link", 1000, "nlink 1000 is more than the"),
        ("/d", 70000, "directory nlink 70000, but it has only 1 subdirectories"),
    ],
)
def test_impossible_link_counts(built: tuple[bytes, bytes], path: str, nlink: int,
                                expected: str) -> None:  # fmt: skip
    layer, bootstrap = built
    problems = _problems(layer, _patch_inode(bootstrap, path, i_nlink=nlink))
    assert len(problems) == 1 and expected in problems[0], problems


@pytest.mark.parametrize(
    ("path", "size"),
    [("/other", 1 << 40), ("/d/file", (1 << 64) - 1), ("/d", 1 << 40), ("/link", 1 << 20)],
)
def test_absurd_sizes(built: tuple[bytes, bytes], path: str, size: int) -> None:
    layer, bootstrap = built
    problems = _problems(layer, _patch_inode(bootstrap, path, i_size=size))
    assert problems and all("past the end" in p or "symlink of" in p for p in problems), problems


def test_overlapping_stored_chunks(built: tuple[bytes, bytes]) -> None:
    layer, bootstrap = built
    first = RafsImage(bootstrap, "boot").blob_chunks(0)[0]
    patched = _patch_chunk(bootstrap, 1, compressed_offset=first.compressed_offset + 1)
    problems = _problems(layer, patched)
    assert any("stored bytes overlap those of chunk" in p for p in problems), problems


def test_overlapping_uncompressed_chunks(built: tuple[bytes, bytes]) -> None:
    layer, bootstrap = built
    first = RafsImage(bootstrap, "boot").blob_chunks(0)[0]
    patched = _patch_chunk(bootstrap, 1, uncompressed_offset=first.uncompressed_offset)
    problems = _problems(layer, patched)
    assert any("uncompressed bytes overlap those of chunk" in p for p in problems), problems


@pytest.mark.parametrize("where", ["stored", "uncompressed", "file"])
def test_chunk_past_its_blob(built: tuple[bytes, bytes], where: str) -> None:
    layer, bootstrap = built
    blob = RafsImage(bootstrap, "boot").blobs[0]
    last = len(RafsImage(bootstrap, "boot").blob_chunks(0)) - 1
    fields = {
        "stored": {"compressed_offset": blob.compressed_size - 1},
        "uncompressed": {"uncompressed_offset": blob.uncompressed_size},
        "file": {"compressed_offset": len(layer) + 4096},
    }[where]
    problems = _problems(layer, _patch_chunk(bootstrap, last, **fields))
    assert any("past the" in p for p in problems), problems


def test_a_dirent_naming_its_own_directory(built: tuple[bytes, bytes]) -> None:
    """/d/sub patched to be /d itself: the walk reports the cycle once and ends."""
    layer, bootstrap = built
    image = RafsImage(bootstrap, "boot")
    d, sub = image.lookup("/d"), image.lookup("/d/sub")
    st = image.stat(d)
    at = bootstrap.index(sub.to_bytes(8, "little"), st.body_offset)
    patched = bootstrap[:at] + d.to_bytes(8, "little") + bootstrap[at + 8 :]
    assert stat.S_ISDIR(RafsImage(patched, "p").stat(d).mode)
    problems = _problems(layer, patched)
    assert any("cycle" in p for p in problems), problems
