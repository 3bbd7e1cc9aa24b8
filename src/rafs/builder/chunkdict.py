"""A chunk dictionary: chunks of an existing image that a build references, not stores.

`create --chunk-dict BOOTSTRAP` looks every new chunk up by (digest, size) in the chunk table
of another image. A hit becomes a reference into that image's blob, which joins the new
bootstrap's blob table, after the layer's own blob, the first time one of its chunks is
used (nydus `Node::deduplicate_chunk`). The dictionary's blobs must be named by their real
ids (a merged bootstrap, or one written by `create --bootstrap`), and its digester must be
the build's, or digests would not compare.
"""

from __future__ import annotations

from pathlib import Path

from rafs.builder.tree import Chunk
from rafs.errors import InvalidArgument
from rafs.format.blobtable import PLACEHOLDER_BLOB_ID, BlobEntry, BlobFeatures
from rafs.format.chunktable import ChunkFlags
from rafs.reader.artifact import open_artifact


class ChunkDict:
    """Lookup of existing chunks; remembers which of its blobs a build came to use."""

    def __init__(self, blobs: list[BlobEntry], chunks: dict[tuple[bytes, int], Chunk],
                 first_index: int) -> None:  # fmt: skip
        self._blobs = blobs
        self._chunks = chunks  # blob_index: the index in the dictionary's own blob table
        self._first_index = first_index
        self._index_of: dict[int, int] = {}
        self.used_blobs: list[BlobEntry] = []

    @classmethod
    def load(cls, path: Path, digester: int, chunk_size: int, first_index: int = 1) -> ChunkDict:
        """The dictionary of a bootstrap file; its blobs get indexes from `first_index` on."""
        with open_artifact(path) as artifact:
            image = artifact.image
        if image.chunk_size != chunk_size:
            raise InvalidArgument(f"chunk dict {path}: chunk size {image.chunk_size:#x} is not "
                                  f"this build's {chunk_size:#x}")  # fmt: skip
        for blob in image.blobs:
            if blob.id == PLACEHOLDER_BLOB_ID or blob.features & BlobFeatures.INLINED_FS_META:
                raise InvalidArgument(
                    f"chunk dict {path}: blob {blob.blob_index} has no real id; use a merged "
                    "bootstrap or one written by `rafs create --bootstrap`"
                )
            if blob.digest_algo != digester:
                raise InvalidArgument(f"chunk dict {path}: its chunk digests use another "
                                      "digester than this build")  # fmt: skip
        chunks = {
            (info.block_id, info.uncompressed_size): Chunk(
                info.block_id, info.blob_index, info.index, info.compressed_offset,
                info.compressed_size, info.uncompressed_offset, info.uncompressed_size,
                bool(info.flags & ChunkFlags.COMPRESSED), info.crc32,
            )
            for info in image.chunk_table()
        }
        return cls(image.blobs, chunks, first_index)

    def lookup(self, digest: bytes, size: int) -> Chunk | None:
        """The existing chunk with this content, indexed for the new image, or None."""
        chunk = self._chunks.get((digest, size))
        if chunk is None:
            return None
        index = self._index_of.get(chunk.blob_index)
        if index is None:
            index = self._index_of[chunk.blob_index] = self._first_index + len(self.used_blobs)
            self.used_blobs.append(self._blobs[chunk.blob_index])
        return chunk._replace(blob_index=index)
