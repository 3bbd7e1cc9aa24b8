"""Properties of build and read: nothing is lost, every byte range reads back.

* A random tree (directories, files of random and repetitive data, symlinks, hard links;
  random modes, owners, times to the nanosecond, xattrs) written as a tar, built by
  `create` (in memory, every compressor, small chunks so files span several), then read
  back through the image reader: the same paths, attributes, targets, xattrs and bytes.
* Random (offset, size) reads of a file through the file reader equal the source bytes.
"""

from __future__ import annotations

import io
import stat
import tarfile
from dataclasses import dataclass

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rafs.builder.layer import write_layer
from rafs.builder.options import BuildOptions
from rafs.builder.source import open_tar_stream
from rafs.fileio import HashingWriter
from rafs.format.blobtable import Compressor, Digester
from rafs.reader.artifact import open_artifact_reader
from rafs.reader.blobs import read_file

CHUNK = 0x1000
COMPRESSORS = [Compressor.NONE, Compressor.LZ4_BLOCK, Compressor.ZSTD]
SETTINGS = settings(max_examples=30, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])  # fmt: skip


@dataclass(frozen=True)
class Attrs:
    mode: int
    uid: int
    gid: int
    mtime: int
    mtime_nsec: int
    xattrs: tuple[tuple[str, bytes], ...]


@dataclass(frozen=True)
class File:
    data: bytes
    attrs: Attrs


@dataclass(frozen=True)
class Link:
    target: str
    attrs: Attrs


@dataclass(frozen=True)
class Dir:
    children: dict[str, File | Link | Dir]
    attrs: Attrs


names = st.text("abcé.-_", min_size=1, max_size=8).filter(lambda n: n not in (".", ".."))
attrs = st.builds(
    Attrs,
    mode=st.integers(0, 0o7777),
    uid=st.integers(0, 70_000),
    gid=st.integers(0, 70_000),
    mtime=st.integers(0, 2**33),
    mtime_nsec=st.integers(0, 999_999_999),
    xattrs=st.lists(st.tuples(st.sampled_from(["user.a", "user.bb", "trusted.t"]),
                              st.binary(max_size=40)),
                    max_size=2, unique_by=lambda x: x[0]).map(tuple),
)  # fmt: skip
data = st.one_of(
    st.binary(max_size=3 * CHUNK),
    st.tuples(st.binary(min_size=1, max_size=64), st.integers(1, 300)).map(lambda t: t[0] * t[1]),
)
leaves = st.one_of(st.builds(File, data, attrs), st.builds(Link, names, attrs))
trees = st.builds(
    Dir,
    st.dictionaries(
        names,
        st.recursive(leaves, lambda kids: st.builds(Dir, st.dictionaries(names, kids, max_size=4),
                                                    attrs), max_leaves=12),
        max_size=6,
    ),
    attrs,
)  # fmt: skip


def _flatten(tree: Dir, prefix: str = "") -> dict[str, File | Link | Dir]:
    out: dict[str, File | Link | Dir] = {prefix or "/": tree}
    for name, child in tree.children.items():
        path = f"{prefix}/{name}"
        out.update(_flatten(child, path) if isinstance(child, Dir) else {path: child})
    return out


def _tar(entries: dict[str, File | Link | Dir], hardlinks: dict[str, str]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for path, entry in entries.items():
            info = tarfile.TarInfo("./" if path == "/" else "." + path)
            a = entry.attrs
            info.mode, info.uid, info.gid = a.mode, a.uid, a.gid
            info.pax_headers = {"mtime": f"{a.mtime}.{a.mtime_nsec:09d}"}
            for key, value in a.xattrs:
                info.pax_headers["SCHILY.xattr." + key] = value.decode("utf-8", "surrogateescape")
            payload = None
            if isinstance(entry, Dir):
                info.type = tarfile.DIRTYPE
            elif isinstance(entry, Link):
                info.type, info.linkname = tarfile.SYMTYPE, entry.target
            else:
                info.size, payload = len(entry.data), io.BytesIO(entry.data)
            archive.addfile(info, payload)
        for path, target in hardlinks.items():
            info = tarfile.TarInfo("." + path)
            info.type, info.linkname = tarfile.LNKTYPE, "." + target
            archive.addfile(info)
    return buffer.getvalue()


def _build(tar: bytes, compressor: Compressor, digester: Digester = Digester.BLAKE3) -> bytes:
    out = io.BytesIO()
    options = BuildOptions(compressor=compressor, digester=digester, chunk_size=CHUNK)
    with open_tar_stream(io.BytesIO(tar)) as stream:
        write_layer(stream, HashingWriter(out), options, "property")
    return out.getvalue()


@SETTINGS
@given(tree=trees, compressor=st.sampled_from(COMPRESSORS),
       digester=st.sampled_from(list(Digester)), link_seed=st.integers(0, 1000))  # fmt: skip
def test_tree_create_read_back_identical(tree: Dir, compressor: Compressor, digester: Digester,
                                         link_seed: int) -> None:  # fmt: skip
    entries = _flatten(tree)
    files = sorted(p for p, e in entries.items() if isinstance(e, File))
    hardlinks = {}
    if files:  # one hard link to a file, beside it under a name no tree uses
        target = files[link_seed % len(files)]
        hardlinks[target.rsplit("/", 1)[0] + "/HARDLINK"] = target
    layer = _build(_tar(entries, hardlinks), compressor, digester)
    with open_artifact_reader(io.BytesIO(layer), "property") as artifact:
        image = artifact.image
        seen = {}
        for raw, st_ in image.walk():
            seen[raw.decode()] = st_
        expected = set(entries) | set(hardlinks)
        assert set(seen) == expected
        for path, entry in {**entries, **{k: entries[v] for k, v in hardlinks.items()}}.items():
            got = seen[path]
            a = entry.attrs
            if not isinstance(entry, Link):  # a symlink's mode is always 0777
                assert stat.S_IMODE(got.mode) == a.mode, path
            assert (got.uid, got.gid, got.mtime, got.mtime_nsec) == (
                a.uid, a.gid, a.mtime, a.mtime_nsec), path  # fmt: skip
            want_xattrs = {k.encode(): v for k, v in a.xattrs}
            assert (image.xattrs(got.nid) if got.xattr_size else {}) == want_xattrs, path
            if isinstance(entry, File):
                assert got.is_reg and got.size == len(entry.data), path
                assert read_file(artifact.blobs, got.nid) == entry.data, path
            elif isinstance(entry, Link):
                assert got.is_symlink and image.readlink(got.nid) == entry.target.encode(), path
            else:
                assert got.is_dir, path
        for path, target in hardlinks.items():
            assert seen[path].nid == seen[target].nid
            assert seen[path].nlink == 2


@SETTINGS
@given(content=data.filter(bool) | st.binary(min_size=1, max_size=40_000),
       compressor=st.sampled_from(COMPRESSORS),
       reads=st.data())  # fmt: skip
def test_random_ranges_read_the_source_bytes(content: bytes, compressor: Compressor,
                                             reads: st.DataObject) -> None:  # fmt: skip
    tar = _tar({"/": Dir({}, Attrs(0o755, 0, 0, 0, 0, ())),
                "/f": File(content, Attrs(0o644, 0, 0, 0, 0, ()))}, {})  # fmt: skip
    layer = _build(tar, compressor)
    with open_artifact_reader(io.BytesIO(layer), "property") as artifact:
        nid = artifact.image.lookup("/f")
        for _ in range(20):
            offset = reads.draw(st.integers(0, len(content) + CHUNK), label="offset")
            size = reads.draw(st.integers(0, len(content) + CHUNK) | st.none(), label="size")
            end = None if size is None else offset + size
            assert read_file(artifact.blobs, nid, offset, size) == content[offset:end]
