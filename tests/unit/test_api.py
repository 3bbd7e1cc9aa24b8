"""The Go-shaped API: pack and merge over streams."""

from __future__ import annotations

import gzip
import hashlib
import io
import tarfile

import pytest

from rafs.api import Layer, MergeOption, PackOption, merge, pack, unpack
from rafs.errors import InvalidArgument
from rafs.reader.image import RafsImage
from tests.support.tarballs import make_tar


def test_pack_streams_a_layer_and_merge_stacks_them() -> None:
    lower, upper = io.BytesIO(), io.BytesIO()
    lower_digest = pack(io.BytesIO(gzip.compress(make_tar([("a", b"1", {}), ("b", b"2", {})]))),
                        lower)  # fmt: skip
    upper_digest = pack(io.BytesIO(make_tar([(".wh.a", b"", {}), ("c", b"3", {})])), upper,
                        PackOption(compressor="lz4_block", chunk_size=0x10000))  # fmt: skip
    assert lower_digest == "sha256:" + hashlib.sha256(lower.getvalue()).hexdigest()
    assert upper_digest == "sha256:" + hashlib.sha256(upper.getvalue()).hexdigest()

    with pytest.raises(InvalidArgument, match="chunk size"):
        merge([Layer(lower_digest, lower), Layer(upper_digest, upper)], io.BytesIO())

    upper = io.BytesIO()
    upper_digest = pack(io.BytesIO(make_tar([(".wh.a", b"", {}), ("c", b"3", {})])), upper,
                        PackOption(compressor="lz4_block"))  # fmt: skip
    out = io.BytesIO()
    blobs = merge([Layer(lower_digest, lower), Layer(upper_digest, upper)], out,
                  MergeOption(with_tar=True))  # fmt: skip
    assert blobs == [lower_digest, upper_digest]
    with tarfile.open(fileobj=io.BytesIO(out.getvalue())) as archive:
        boot = archive.extractfile("image/image.boot").read()  # type: ignore[union-attr]
    image = RafsImage(boot, "merged")
    assert [e.name for e in image.children(image.root_nid)] == [b"b", b"c"]
    assert image.blobs[1].compression_algo == 1  # lz4_block, kept per blob

    tar = io.BytesIO()
    unpack(upper, tar)
    with tarfile.open(fileobj=io.BytesIO(tar.getvalue())) as archive:
        # The source tar named no root, so the layer's tar names none either.
        assert [m.name for m in archive.getmembers()] == ["./.wh.a", "./c"]
        assert archive.extractfile("./c").read() == b"3"  # type: ignore[union-attr]


BAD_OPTIONS = [PackOption(fs_version="5"), PackOption(compressor="gzip"),
               PackOption(digester="md5")]  # fmt: skip


@pytest.mark.parametrize("option", BAD_OPTIONS)
def test_bad_pack_options_are_refused(option: PackOption) -> None:
    with pytest.raises(InvalidArgument):
        pack(io.BytesIO(make_tar([("a", b"1", {})])), io.BytesIO(), option)
