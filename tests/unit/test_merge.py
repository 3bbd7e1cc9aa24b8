"""`rafs merge`: overlay semantics, blob table, options and bad input (no kernel needed)."""

from __future__ import annotations

import gzip
import io
import random
import tarfile
from pathlib import Path

import pytest

from rafs.builder.layer import build_layer
from rafs.builder.merge import MergeLayer, MergeOptions, merge_layers, write_bootstrap_tar
from rafs.builder.options import BuildOptions
from rafs.errors import FormatError, InvalidArgument, NotFound, RafsError
from rafs.format.superblock import RafsSuperFlags
from rafs.format.toc import SECTION_BLOB_META, SECTION_BLOB_META_HEADER
from rafs.reader.artifact import open_artifact
from rafs.reader.blobs import BlobSet, read_file
from rafs.reader.image import RafsImage
from rafs.reader.layer import read_section
from tests.conftest import RafsRunner
from tests.support.merge_reference import reference_merge
from tests.support.tarballs import make_tar

Entries = list[tuple[str, bytes | None, dict[str, object]]]


class Stack:
    """Layers built from in-memory tars, saved as <blob dir>/<digest hex>."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.blob_dir = tmp / "blobs"
        self.blob_dir.mkdir()
        self.paths: list[Path] = []

    def add(self, entries: Entries, **options: object) -> Path:
        source = self.tmp / f"layer{len(self.paths)}.tar"
        source.write_bytes(make_tar(entries))
        staging = self.tmp / "staging"
        result = build_layer(source, staging, BuildOptions(**options))  # type: ignore[arg-type]
        path = self.blob_dir / result.digest.split(":")[1]
        staging.rename(path)
        self.paths.append(path)
        return path

    def merge(self, spec: str = "oci") -> tuple[RafsImage, BlobSet, list[str]]:
        layers = [MergeLayer(f"sha256:{p.name}", p.open("rb")) for p in self.paths]
        try:
            result = merge_layers(layers, MergeOptions(whiteout_spec=spec))
        finally:
            for layer in layers:
                layer.reader.close()
        image = RafsImage(result.bootstrap, "merged")
        return image, BlobSet(image, None, self.blob_dir), result.blob_digests


def _names(image: RafsImage) -> dict[str, int]:
    return {path.decode(): st.mode for path, st in image.walk()}


def test_whiteouts_opaque_dirs_and_replacements(tmp_path: Path) -> None:
    stack = Stack(tmp_path)
    stack.add([
        ("a/keep", b"keep", {}), ("a/gone", b"gone", {}), ("dir/sub/f", b"f", {}),
        ("file-becomes-dir", b"x", {}), ("dir-becomes-file/inner", b"y", {}),
        ("opaque/old", b"old", {}), ("hard/one", b"linked", {}),
        ("hard/two", None, {"type": tarfile.LNKTYPE, "linkname": "hard/one"}),
    ])  # fmt: skip
    stack.add([
        ("a/.wh.gone", b"", {}), (".wh.dir", b"", {}), (".wh.never-existed", b"", {}),
        ("file-becomes-dir/now", b"dir", {}), ("dir-becomes-file", b"file", {}),
        ("opaque/.wh..wh..opq", b"", {}), ("opaque/new", b"new", {}),
        ("hard/one", b"replaced", {}),
    ])  # fmt: skip
    image, blobs, digests = stack.merge()
    names = _names(image)
    assert sorted(names) == [
        "/", "/a", "/a/keep", "/dir-becomes-file", "/file-becomes-dir",
        "/file-becomes-dir/now", "/hard", "/hard/one", "/hard/two", "/opaque", "/opaque/new",
    ]  # fmt: skip
    assert read_file(blobs, image.lookup("/dir-becomes-file")) == b"file"
    assert read_file(blobs, image.lookup("/hard/one")) == b"replaced"
    assert read_file(blobs, image.lookup("/hard/two")) == b"linked"
    assert image.stat(image.lookup("/hard/two")).nlink == 1  # its partner was replaced
    # blobs in order of first reference, breadth first: /dir-becomes-file is layer 1's
    assert digests == [f"sha256:{stack.paths[1].name}", f"sha256:{stack.paths[0].name}"]
    assert image.ext.s_flags & RafsSuperFlags.HAS_XATTR  # as nydus merge always sets
    assert image.prefetch_nids() == [image.root_nid]


def test_metadata_only_layer_and_unreferenced_blobs(tmp_path: Path) -> None:
    stack = Stack(tmp_path)
    stack.add([("gone/data", b"old data", {})])
    stack.add([("kept", b"kept data", {})])
    stack.add([(".wh.gone", b"", {}), ("kept", b"", {"mode": 0o600, "uid": 7})])
    stack.add([("kept", b"kept data", {"mode": 0o640, "uid": 9,
                                       "pax_headers": {"SCHILY.xattr.user.k": "v"}})])  # fmt: skip
    image, blobs, digests = stack.merge()
    st = image.stat(image.lookup("/kept"))
    assert (st.mode & 0o777, st.uid) == (0o640, 9)
    assert image.xattrs(st.nid) == {b"user.k": b"v"}
    # layer 0's files are all deleted; layer 2 has no data; layer 1 and 3 hold the same
    # chunk, which layer 3 (read last) references.
    assert digests == [f"sha256:{stack.paths[3].name}"]
    assert read_file(blobs, st.nid) == b"kept data"


def test_overlayfs_whiteouts(tmp_path: Path) -> None:
    stack = Stack(tmp_path)
    stack.add([("d/old", b"1", {}), ("f", b"2", {}), ("o/x", b"3", {})])
    stack.add([
        ("f", None, {"type": tarfile.CHRTYPE, "devmajor": 0, "devminor": 0}),
        ("o", None, {"pax_headers": {"SCHILY.xattr.trusted.overlay.opaque": "y"}}),
        ("o/y", b"4", {}),
    ])  # fmt: skip
    image, _, _ = stack.merge("overlayfs")
    assert sorted(_names(image)) == ["/", "/d", "/d/old", "/o", "/o/y"]
    assert image.xattrs(image.lookup("/o")) == {}
    oci, _, _ = stack.merge("oci")  # the same layers, read as OCI: nothing is a whiteout
    assert "/o/x" in _names(oci) and stat_is_chr(oci, "/f")


def stat_is_chr(image: RafsImage, path: str) -> bool:
    import stat

    return stat.S_ISCHR(image.stat(image.lookup(path)).mode)


def test_whiteout_spec_none_keeps_whiteout_files(tmp_path: Path) -> None:
    stack = Stack(tmp_path)
    stack.add([("a", b"1", {})])
    stack.add([(".wh.a", b"", {})])
    image, _, _ = stack.merge("none")
    assert sorted(_names(image)) == ["/", "/.wh.a", "/a"]


def test_chunk_sizes_must_match(tmp_path: Path) -> None:
    stack = Stack(tmp_path)
    stack.add([("a", b"1", {})])
    stack.add([("b", b"2", {})], chunk_size=0x10000)
    with pytest.raises(InvalidArgument, match="chunk size"):
        stack.merge()


def test_layers_without_a_bootstrap_are_refused(tmp_path: Path) -> None:
    plain = tmp_path / "plain.tar"
    plain.write_bytes(make_tar([("a", b"1", {})]))
    with plain.open("rb") as f, pytest.raises((FormatError, NotFound)):
        merge_layers([MergeLayer("sha256:" + "0" * 64, f)], MergeOptions())
    stack = Stack(tmp_path)
    layer = stack.add([("a", b"1", {})])
    data = layer.read_bytes()
    cut = tmp_path / "cut"
    cut.write_bytes(data[:-700])  # inside the ToC
    with cut.open("rb") as f, pytest.raises(FormatError):
        merge_layers([MergeLayer("sha256:" + "1" * 64, f)], MergeOptions())


def test_tar_output_is_the_go_converters_bootstrap_layer(tmp_path: Path) -> None:
    stack = Stack(tmp_path)
    stack.add([("a", b"1", {})])
    image, _, _ = stack.merge()
    out = io.BytesIO()
    write_bootstrap_tar(image.data, out)
    with tarfile.open(fileobj=io.BytesIO(out.getvalue())) as archive:
        members = archive.getmembers()
        assert [(m.name, m.type, m.mode, m.mtime, m.uid, m.gid) for m in members] == [
            ("image", tarfile.DIRTYPE, 0o755, 0, 0, 0),
            ("image/image.boot", tarfile.REGTYPE, 0o444, 0, 0, 0),
        ]
        assert archive.extractfile(members[1]).read() == image.data  # type: ignore[union-attr]
    again = io.BytesIO()
    write_bootstrap_tar(image.data, again)
    assert again.getvalue() == out.getvalue()


def test_merge_tar_carries_each_layers_blob_meta(tmp_path: Path, rafs: RafsRunner) -> None:
    """`image/<blob id>.blob.meta` beside image.boot, as nydus-snapshotter writes it: the
    layer's blob.meta section zero-padded to 4 KiB, then its blob.meta header; and the tar
    still opens as an image."""
    layers = []
    for name, data in (("low", b"x" * 10000), ("high", bytes(range(256)) * 40)):
        tar = tmp_path / f"{name}.tar"
        tar.write_bytes(make_tar([(name, data, {})]))
        digest = rafs("create", tar, "-o", tmp_path / name).stdout.decode().strip()
        layer = tmp_path / digest.split(":")[1]
        (tmp_path / name).rename(layer)
        layers.append(layer)
    rafs("merge", *layers, "-o", tmp_path / "boot.tar", "--tar")
    with tarfile.open(tmp_path / "boot.tar") as archive:
        names = archive.getnames()
        assert names == ["image", "image/image.boot",
                         *(f"image/{layer.name}.blob.meta" for layer in layers)]
        for layer in layers:
            meta_file = archive.extractfile(f"image/{layer.name}.blob.meta")
            assert meta_file is not None
            got = meta_file.read()
            with layer.open("rb") as f:
                meta = read_section(f, SECTION_BLOB_META, layer.name)
                header = read_section(f, SECTION_BLOB_META_HEADER, layer.name)
            assert len(header) == 4096
            assert got == meta + bytes(-len(meta) % 4096) + header
    (tmp_path / "boot.tar.gz").write_bytes(gzip.compress((tmp_path / "boot.tar").read_bytes()))
    listing = rafs("ls", tmp_path / "boot.tar.gz").stdout.decode().split()
    assert sorted(listing) == ["high", "low"]


def test_chunk_dict_blobs_join_the_blob_table(tmp_path: Path, rafs: RafsRunner) -> None:
    shared = bytes(range(256)) * 8192  # 2 MiB
    base = tmp_path / "base.tar"
    base.write_bytes(make_tar([("big", shared, {})]))
    blob_dir = tmp_path / "blobs"
    blob_dir.mkdir()
    digest = rafs("create", str(base), "-o", str(tmp_path / "base"), "--bootstrap",
                  str(tmp_path / "base.boot")).stdout.decode().strip()  # fmt: skip
    (tmp_path / "base").rename(blob_dir / digest.split(":")[1])
    upper = tmp_path / "upper.tar"
    upper.write_bytes(make_tar([("copy", shared, {}), ("own", b"own data", {})]))
    staged = tmp_path / "upper"
    upper_digest = rafs("create", str(upper), "-o", str(staged), "--chunk-dict",
                        str(tmp_path / "base.boot")).stdout.decode().strip()  # fmt: skip
    layer = blob_dir / upper_digest.split(":")[1]
    staged.rename(layer)
    assert layer.stat().st_size < 100_000  # the 2 MiB were not stored again
    with open_artifact(layer, blob_dir) as artifact:
        assert [b.id for b in artifact.image.blobs][1:] == [digest.split(":")[1]]
        assert read_file(artifact.blobs, artifact.image.lookup("/copy")) == shared
    merged = tmp_path / "merged.boot"
    listed = rafs("merge", str(layer), "-o", str(merged)).stdout.decode().split()
    assert sorted(listed) == sorted([digest, upper_digest])
    rafs("check", str(merged), "--blob-dir", str(blob_dir))


def test_cli_merge_names_layers_by_digest(tmp_path: Path, rafs: RafsRunner) -> None:
    stack = Stack(tmp_path)
    stack.add([("a", b"1", {})])
    stack.add([("b", b"2", {})])
    renamed = tmp_path / "second-layer.nydus"  # not named by digest: hashed instead
    stack.paths[1].rename(renamed)
    out = tmp_path / "merged"
    listed = rafs("merge", str(stack.paths[0]), str(renamed), "-o", str(out)).stdout.decode()
    assert listed.split() == [f"sha256:{stack.paths[0].name}", f"sha256:{stack.paths[1].name}"]


def test_cli_merge_bad_input_is_one_line(tmp_path: Path, rafs: RafsRunner) -> None:
    stack = Stack(tmp_path)
    good = stack.add([("a", b"1", {})])
    other = stack.add([("b", b"2", {})], chunk_size=0x10000)
    plain = tmp_path / "plain.tar"
    plain.write_bytes(make_tar([("a", b"1", {})]))
    cut = tmp_path / "cut"
    cut.write_bytes(good.read_bytes()[:-700])
    out = tmp_path / "out"
    for layers, code in (([good, other], InvalidArgument.exit_code),
                         ([good, plain], FormatError.exit_code),
                         ([cut], FormatError.exit_code),
                         ([tmp_path / "missing"], NotFound.exit_code)):  # fmt: skip
        result = rafs("merge", *map(str, layers), "-o", str(out), check=False)
        assert result.returncode == code, result.stderr
        assert result.stderr.count("\n") == 1 and result.stderr.startswith("rafs: ")
        assert "Traceback" not in result.stderr
        assert not out.exists()


# -- the byte-level merge gives the object path's bytes --------------------------------------

_DIRS = ["", "a", "a/b", "a/b/c", "d", "-x", ".-y", "wide"]
_LEAVES = ["f", "g", "-h", ".i", "j" * 120, "k", "a", "d"]


def _random_layer(rng: random.Random, contents: list[bytes], spec_bias: str) -> Entries:
    """Up to ~40 entries of every kind, whiteouts and opaque directories included; no path
    is used twice and nothing is put under a non-directory of the same layer."""
    entries: dict[str, tuple[bytes | None, dict[str, object]]] = {}
    files: list[str] = []

    def free(path: str, is_dir: bool) -> bool:
        parents = ["/".join(path.split("/")[:i]) for i in range(1, path.count("/") + 1)]
        if path in entries or any(p in entries and entries[p][0] is not None for p in parents):
            return False
        return is_dir or not any(other.startswith(path + "/") for other in entries)

    def attrs() -> dict[str, object]:
        chosen: dict[str, object] = {"mode": rng.choice([0o644, 0o755, 0o4750, 0o600]),
                                     "uid": rng.choice([0, 0, 1000]),
                                     "mtime": rng.choice([0, 1_700_000_000])}  # fmt: skip
        if rng.random() < 0.15:
            chosen["pax_headers"] = {"SCHILY.xattr.user.b": "2" * rng.randint(1, 9),
                                     "SCHILY.xattr.security.a": "1"}  # fmt: skip
        return chosen

    if rng.random() < 0.3:  # a directory of several dirent blocks
        for number in range(rng.randint(150, 400)):
            entries[f"wide/{'n' * rng.randint(1, 60)}{number}"] = (rng.choice(contents), {})
    for _ in range(rng.randint(3, 40)):
        parent = rng.choice(_DIRS)
        path = f"{parent}/{rng.choice(_LEAVES)}".lstrip("/")
        kind = rng.random()
        if kind < 0.3 and free(path, False):
            entries[path] = (rng.choice(contents), attrs())
            files.append(path)
        elif kind < 0.45 and free(path, True):
            implied = {"mode": 0o755, "uid": 0, "gid": 0, "mtime": 0}
            dir_attrs = implied if rng.random() < 0.5 else attrs()
            if spec_bias == "overlayfs" and rng.random() < 0.3:
                opaque = {"SCHILY.xattr.trusted.overlay.opaque": rng.choice(["y", "n"])}
                dir_attrs = {**dir_attrs, "pax_headers": opaque}
            entries[path] = (None, dir_attrs)
        elif kind < 0.55 and free(path, False):
            target = rng.choice(["f", "../a/b", "x" * rng.choice([10, 4000, 4096])])
            entries[path] = (None, {"type": tarfile.SYMTYPE, "linkname": target})
        elif kind < 0.62 and files and free(path, False):
            entries[path] = (None, {"type": tarfile.LNKTYPE, "linkname": rng.choice(files)})
        elif kind < 0.7 and free(path, False):
            kind_attrs: dict[str, object] = rng.choice([
                {"type": tarfile.CHRTYPE, "devmajor": 0, "devminor": 0},
                {"type": tarfile.CHRTYPE, "devmajor": 1, "devminor": 3},
                {"type": tarfile.BLKTYPE, "devmajor": 8, "devminor": 300},
                {"type": tarfile.FIFOTYPE},
            ])  # fmt: skip
            entries[path] = (None, kind_attrs)
        elif kind < 0.9:
            leaf = rng.choice([*_LEAVES, "zz"])
            whiteout = f"{parent}/.wh.{leaf}".lstrip("/")
            if free(whiteout, False):
                entries[whiteout] = (b"", {})
        else:
            marker = f"{parent}/.wh..wh..opq".lstrip("/")
            if free(marker, False):
                entries[marker] = (b"", {})
    return [(path, data, extra) for path, (data, extra) in entries.items()]


@pytest.mark.parametrize("seed", range(14))
def test_merge_matches_the_object_path(tmp_path: Path, seed: int) -> None:
    """Random stacks of every entry kind, whiteout and replacement, under each whiteout
    spec, with multi-chunk and shared chunks, chunk dictionaries and prefetch patterns."""
    rng = random.Random(seed)
    chunk_size = rng.choice([0x1000, 0x1000, 0x10000, 0x100000])
    shared = rng.randbytes(3 * 0x1000 + 5)
    one, two = rng.randbytes(0x1000), rng.randbytes(0x1000)  # whole chunks at 4 KiB
    contents = [b"", b"x", b"y" * 100, shared, b"a" * (2 * 0x10000 + 1), rng.randbytes(200),
                one, two + one, one + two + one]  # fmt: skip  # `one` at several file offsets
    spec = ["oci", "overlayfs", "none"][seed % 3]
    stack = Stack(tmp_path)
    chunk_dict = tmp_path / "dict.boot"
    for number in range(rng.randint(1, 5)):
        entries = _random_layer(rng, contents, spec)
        if number == 0:
            source = tmp_path / "dict.tar"
            source.write_bytes(make_tar([*entries, ("dict-only", shared + b"!", {})]))
            build_layer(source, tmp_path / "dict-layer", BuildOptions(chunk_size=chunk_size),
                        bootstrap_path=chunk_dict)  # fmt: skip
        options: dict[str, object] = {"chunk_size": chunk_size}
        if rng.random() < 0.3:
            options["chunk_dict_path"] = chunk_dict
        stack.add(entries, **options)
    patterns = rng.choice([("/",), (), ("/a", "/a/b", "/nope", "/d/f", "/wide", "/-x/f")])
    layers = [MergeLayer(f"sha256:{p.name}", p.open("rb")) for p in stack.paths]
    try:
        merged = merge_layers(layers, MergeOptions(spec, patterns))
        expected = reference_merge(layers, MergeOptions(spec, patterns))
    finally:
        for layer in layers:
            layer.reader.close()
    assert merged.blob_digests == expected.blob_digests
    assert merged.bootstrap == expected.bootstrap


def test_corrupt_layer_bootstraps_give_format_errors(tmp_path: Path) -> None:
    """A byte changed anywhere in a layer bootstrap: merge gives the object path's bytes or
    a `RafsError`, never another exception. (It may accept what the object path refuses
    when the damage is in inodes merge does not use, such as whiteouts.)"""
    rng = random.Random(5)
    entries = _random_layer(rng, [b"", b"x", rng.randbytes(5000), b"a" * 9000], "oci")
    entries += [("h/a", b"q", {}), ("h/b", None, {"type": tarfile.LNKTYPE, "linkname": "h/a"}),
                ("s", None, {"type": tarfile.SYMTYPE, "linkname": "x" * 4090})]  # fmt: skip
    source = tmp_path / "layer.tar"
    source.write_bytes(make_tar(entries))
    build_layer(source, tmp_path / "layer", BuildOptions(chunk_size=0x1000),
                bootstrap_path=tmp_path / "boot")  # fmt: skip
    boot = (tmp_path / "boot").read_bytes()
    for position in range(0, len(boot), 13):
        data = bytearray(boot)
        data[position] ^= rng.randrange(1, 256)
        results: list[bytes | None] = []
        for merge in (merge_layers, reference_merge):
            layer = MergeLayer("sha256:" + "1" * 64, io.BytesIO(bytes(data)))
            try:
                results.append(merge([layer], MergeOptions()).bootstrap)
            except RafsError:
                results.append(None)
        if results[0] is not None and results[1] is not None:
            assert results[0] == results[1], f"flip at {position}"
