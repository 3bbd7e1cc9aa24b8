"""Where a bootstrap's data blobs are found, and reading chunks out of them.

An image opened from a Nydus layer reads the layer's own blob from the layer file itself,
whatever id the blob table gives it: the entry marked as inlined (INLINED_FS_META or the
placeholder id), or for layers of nydus-image before 2.2 the one whose sizes fit the
layer's sections (`reader.layer.own_blob_index`). Any other blob is looked up by id in the
blob folder: a file named `<blob id>`, or `sha256/<blob id>`.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import BinaryIO

from rafs.codecs import decompress, digest_function
from rafs.errors import FormatError, IntegrityError, NotFound
from rafs.format.blobtable import BlobEntry
from rafs.format.chunktable import ChunkInfo
from rafs.reader.image import RafsImage
from rafs.reader.layer import own_blob_index


class BlobSet:
    """The open data blobs of one image, by blob index."""

    def __init__(self, image: RafsImage, layer: Path | BinaryIO | None,
                 blob_dir: Path | None) -> None:  # fmt: skip
        """`layer` is the file (or an open reader) that is the image's own inlined blob."""
        self.image = image
        self._layer = layer
        self._blob_dir = blob_dir
        self._files: dict[int, BinaryIO] = {}
        self._sizes: dict[int, int] = {}
        self._borrowed: set[int] = set()  # files the caller owns: not closed here

    @property
    def holds_layer(self) -> bool:
        """Whether the image is a single Nydus layer (its bootstrap inlined in its blob)."""
        return self._layer is not None

    @functools.cached_property
    def _own_index(self) -> int | None:
        """The index of the layer's own blob; None when the image is not a layer, or the
        layer stores no chunks of its own. Found when first needed."""
        if self._layer is None:
            return None
        if isinstance(self._layer, Path):
            with self._layer.open("rb") as f:
                return own_blob_index(f, self.image.blobs, self.image.source)
        return own_blob_index(self._layer, self.image.blobs, self.image.source)

    def _is_layer(self, index: int) -> bool:
        return index == self._own_index

    def path(self, index: int) -> Path:
        blob = self.image.blobs[index]
        if self._is_layer(index) and isinstance(self._layer, Path):
            return self._layer
        if self._blob_dir is None:
            raise NotFound(f"{self.image.source}: blob {blob.id} needs --blob-dir")
        for candidate in (self._blob_dir / blob.id, self._blob_dir / "sha256" / blob.id):
            if candidate.is_file():
                return candidate
        raise NotFound(f"{self.image.source}: blob {blob.id} not found in {self._blob_dir}")

    def open(self, index: int) -> BinaryIO:
        f = self._files.get(index)
        if f is None:
            if self._is_layer(index) and not isinstance(self._layer, Path):
                f = self._layer
                assert f is not None
                self._borrowed.add(index)
            else:
                f = self.path(index).open("rb")
            blob = self.image.blobs[index]
            size = f.seek(0, 2)
            if size < blob.compressed_size:
                if index not in self._borrowed:
                    f.close()
                raise FormatError(
                    f"{getattr(f, 'name', self.image.source)}: blob is {size} bytes, shorter "
                    f"than the {blob.compressed_size} its table entry says"
                )
            self._files[index] = f
            self._sizes[index] = size
        return f

    def close(self) -> None:
        for index, f in self._files.items():
            if index not in self._borrowed:
                f.close()
        self._files.clear()

    def read_chunk(self, info: ChunkInfo, verify: bool = True) -> bytes:
        """The uncompressed bytes of one chunk, its digest checked when `verify`."""
        if info.blob_index >= len(self.image.blobs):
            raise FormatError(f"{self.image.source}: chunk names missing blob {info.blob_index}")
        blob: BlobEntry = self.image.blobs[info.blob_index]
        f = self.open(info.blob_index)
        return read_stored_chunk(f, self._sizes[info.blob_index], info, blob.compression_algo,
                                 blob.digest_algo, verify)  # fmt: skip


def read_stored_chunk(f: BinaryIO, blob_size: int, info: ChunkInfo, compressor: int,
                      digester: int, verify: bool = True) -> bytes:  # fmt: skip
    """Read, decompress and (when `verify`) check one chunk of an open blob file."""
    where = f"{getattr(f, 'name', 'blob')}: chunk {info.block_id.hex()[:16]}"
    # Checked before seeking: a corrupt offset can lie past what the OS lets us seek to.
    if info.compressed_offset + info.compressed_size > blob_size:
        raise FormatError(f"{where}: [{info.compressed_offset}, +{info.compressed_size}) "
                          "lies past the end of the blob")  # fmt: skip
    f.seek(info.compressed_offset)
    stored = f.read(info.compressed_size)
    if len(stored) != info.compressed_size:
        raise FormatError(f"{where}: blob ends inside the chunk")
    return unpack_chunk(stored, info, compressor, digester, verify, where)


def unpack_chunk(stored: bytes, info: ChunkInfo, compressor: int, digester: int, verify: bool,
                 where: str) -> bytes:  # fmt: skip
    """Decompress one chunk's stored bytes and (when `verify`) check its digest."""
    try:
        data = decompress(stored, compressor if info.compressed else 0, info.uncompressed_size)
    except FormatError as exc:
        raise IntegrityError(f"{where}: {exc}") from None
    if verify and digest_function(digester)(data) != info.block_id:
        raise IntegrityError(f"{where}: data does not match the chunk digest")
    return data


def read_file(blobs: BlobSet, nid: int, offset: int = 0, size: int | None = None) -> bytes:
    """Bytes [offset, offset+size) of a regular file (to its end when size is None)."""
    image = blobs.image
    st = image.stat(nid)
    end = st.size if size is None else min(st.size, offset + size)
    if offset >= end:
        return b""
    chunk_size = image.chunk_size
    first, stop = offset // chunk_size, (end - 1) // chunk_size + 1
    parts = []
    for index, info in enumerate(image.file_chunks(nid, first, stop), first):
        expected = min(chunk_size, st.size - index * chunk_size)
        if info.uncompressed_size != expected:
            raise FormatError(f"{image.source}: nid {nid} chunk {index} has "
                              f"{info.uncompressed_size} bytes, expected {expected}")  # fmt: skip
        data = blobs.read_chunk(info)
        base = index * chunk_size
        parts.append(data[max(0, offset - base) : end - base])
    return b"".join(parts)
