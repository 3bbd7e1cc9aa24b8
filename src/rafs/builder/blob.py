"""The data blob writer: chunking, digesting, deduplication, compression, blob.meta.

File data is cut into fixed-size chunks. Each chunk is digested, CRC'd and compressed in a
pool of threads (zstd, lz4, blake3 and hashlib release the GIL), in batches so that small
files cost little, and results are consumed strictly in submission order so the output is
deterministic. A chunk whose (digest, size) was already stored is referenced, not stored
again. Stored chunks are packed back to back; their uncompressed offsets advance in 4 KiB
steps (RAFS v6 maps them to EROFS blocks).

After the chunk data the writer appends, each closed by a section tar header:
`image.blob` (the chunk data), `blob.meta` (the v1 chunk-info table plus its 4096-byte
header) and `blob.digest` (the chunk digests in CI order).
"""

from __future__ import annotations

import hashlib
import os
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Protocol

from rafs.builder.chunkdict import ChunkDict
from rafs.builder.options import BuildOptions
from rafs.builder.tree import Chunk, Inode
from rafs.codecs import compress, crc32c_of, digest_function
from rafs.errors import FormatError, InvalidArgument
from rafs.format.blobmeta import BLOB_META_HEADER_SIZE, BlobMetaHeader, ChunkInfoV1
from rafs.format.blobtable import MAX_CHUNKS_PER_BLOB, BlobFeatures, Compressor
from rafs.format.toc import (
    SECTION_BLOB,
    SECTION_BLOB_DIGEST,
    SECTION_BLOB_META,
    SECTION_BLOB_META_HEADER,
    TocEntry,
    TocFlags,
    pack_section_header,
)

# Features of a blob written as the Go converter's layer (`tar-rafs --blob-inline-meta
# --features blob-toc`).
LAYER_BLOB_FEATURES = (
    BlobFeatures.ALIGNED
    | BlobFeatures.INLINED_FS_META
    | BlobFeatures.INLINED_CHUNK_DIGEST
    | BlobFeatures.HAS_TAR_HEADER
    | BlobFeatures.HAS_TOC
    | BlobFeatures.CAP_TAR_TOC
)
TOC_FLAGS = {
    Compressor.NONE: TocFlags.COMPRESSION_NONE,
    Compressor.ZSTD: TocFlags.COMPRESSION_ZSTD,
    Compressor.LZ4_BLOCK: TocFlags.COMPRESSION_LZ4_BLOCK,
}
_BATCH_BYTES = 2 << 20
_BATCH_COUNT = 256


class Readable(Protocol):
    """A source of file data: `read(n)` returns at most n bytes, b"" at the end."""

    def read(self, size: int, /) -> bytes: ...


class Sink(Protocol):
    """Where blob bytes go, from its first byte: knows its position and running SHA-256."""

    def write(self, data: bytes, /) -> int: ...

    def tell(self) -> int: ...

    def running_sha256(self) -> bytes: ...


@dataclass(frozen=True)
class BlobSummary:
    """What the bootstrap's blob table and the layer's ToC need to know about the blob."""

    chunk_count: int
    compressed_size: int  # bytes of chunk data
    uncompressed_size: int
    features: int
    ci_compressor: Compressor
    ci_offset: int
    ci_compressed_size: int
    ci_uncompressed_size: int
    toc_entries: tuple[TocEntry, ...]


def toc_entry(name: bytes, flags: int, digest: bytes, offset: int, csize: int,
              usize: int) -> TocEntry:  # fmt: skip
    return TocEntry(flags, 0, name.ljust(16, b"\0"), digest, offset, csize, usize)


def store_compressed(data: bytes, algo: Compressor) -> tuple[bytes, Compressor]:
    """`data` compressed with `algo`, or raw when compression does not make it smaller."""
    packed = compress(data, algo)
    return (packed, algo) if len(packed) < len(data) else (data, Compressor.NONE)


def _process_batch(
    pieces: list[bytes], algo: Compressor, digest: Callable[[bytes], bytes]
) -> list[tuple[bytes, int, bytes | None]]:
    """Worker: (digest, crc32c, compressed bytes or None if not smaller) per piece."""
    results = []
    for data in pieces:
        packed = compress(data, algo) if algo != Compressor.NONE else data
        smaller = packed if len(packed) < len(data) else None
        results.append((digest(data), crc32c_of(data), smaller))
    return results


class BlobWriter:
    """Writes the chunk data of one blob and, on `finish`, its blob.meta and digests."""

    def __init__(
        self,
        out: Sink,
        options: BuildOptions,
        blob_index: int = 0,
        threads: int | None = None,
        chunk_dict: ChunkDict | None = None,
    ) -> None:
        self._out = out
        self._chunk_dict = chunk_dict
        self._options = options
        self._blob_index = blob_index
        self._digest = digest_function(options.digester)
        self._pool = ThreadPoolExecutor(max_workers=threads or os.cpu_count() or 1)
        self._max_inflight = 2 * (threads or os.cpu_count() or 1) + 2
        self._batch: list[tuple[Inode, bytes]] = []
        self._batch_bytes = 0
        self._inflight: deque[tuple[list[tuple[Inode, bytes]], Future[list[tuple[
            bytes, int, bytes | None]]]]] = deque()  # fmt: skip
        self._known: dict[tuple[bytes, int], Chunk] = {}
        self._chunks: list[Chunk] = []
        if out.tell() != 0:
            raise InvalidArgument("a blob must start at the beginning of its output")
        self._compressed_end = 0
        self._uncompressed_end = 0

    def add_file(self, inode: Inode, reader: Readable, size: int, name: str) -> None:
        """Read exactly `size` bytes of file data and queue its chunks for `inode`."""
        remaining = size
        chunk_size = self._options.chunk_size
        while remaining:
            data = reader.read(min(chunk_size, remaining))
            if not data:
                raise FormatError(f"{name} ends {remaining} bytes early")
            while len(data) < min(chunk_size, remaining):
                more = reader.read(min(chunk_size, remaining) - len(data))
                if not more:
                    raise FormatError(f"{name} ends early")
                data += more
            remaining -= len(data)
            self._batch.append((inode, data))
            self._batch_bytes += len(data)
            if self._batch_bytes >= _BATCH_BYTES or len(self._batch) >= _BATCH_COUNT:
                self._submit()

    def _submit(self) -> None:
        if not self._batch:
            return
        batch = self._batch
        future = self._pool.submit(
            _process_batch, [data for _, data in batch], self._options.compressor, self._digest
        )
        self._inflight.append((batch, future))
        self._batch, self._batch_bytes = [], 0
        while len(self._inflight) > self._max_inflight:
            self._drain_one()

    def _drain_one(self) -> None:
        """Take the oldest batch's results: dedup, place and write its new chunks."""
        batch, future = self._inflight.popleft()
        known, chunks, blob_index = self._known, self._chunks, self._blob_index
        stored_pieces = []
        for (inode, data), (digest, crc, packed) in zip(batch, future.result(), strict=True):
            key = (digest, len(data))
            chunk = known.get(key)
            if chunk is None and self._chunk_dict is not None:
                chunk = self._chunk_dict.lookup(digest, len(data))
                if chunk is not None:
                    known[key] = chunk
            if chunk is None:
                if len(chunks) >= MAX_CHUNKS_PER_BLOB:
                    raise FormatError(f"more than {MAX_CHUNKS_PER_BLOB} chunks in one blob")
                stored = data if packed is None else packed
                chunk = Chunk(digest, blob_index, len(chunks), self._compressed_end,
                              len(stored), self._uncompressed_end, len(data),
                              packed is not None, crc)  # fmt: skip
                chunks.append(chunk)
                known[key] = chunk
                stored_pieces.append(stored)
                self._compressed_end += len(stored)
                self._uncompressed_end += (len(data) + 4095) & ~4095
            inode.chunks.append(chunk)
        if stored_pieces:
            self._out.write(b"".join(stored_pieces))

    def flush(self) -> None:
        """Store every queued chunk, so all inodes have their complete chunk lists."""
        self._submit()
        while self._inflight:
            self._drain_one()

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    def finish(self) -> BlobSummary | None:
        """Write the sections after the chunk data; None if the blob holds no chunk."""
        self.flush()
        self.close()
        if not self._chunks:
            return None
        out = self._out
        out.write(pack_section_header(SECTION_BLOB, self._compressed_end))
        # The blob starts the sink, so the sink's running hash is that of the chunk data and
        # its header: the image.blob ToC digest (which, quirk, includes the header).
        entries = [toc_entry(SECTION_BLOB, TocFlags.COMPRESSION_NONE, out.running_sha256(),
                             0, self._compressed_end, self._uncompressed_end)]

        ci_data = b"".join(
            ChunkInfoV1.make(c.compressed_offset, c.compressed_size,
                             c.uncompressed_offset, c.uncompressed_size).pack()
            for c in self._chunks
        )  # fmt: skip
        ci_stored, ci_compressor = store_compressed(ci_data, self._options.compressor)
        ci_offset = out.tell()
        features = int(LAYER_BLOB_FEATURES)
        meta_header = BlobMetaHeader.make(features, ci_compressor, len(self._chunks), ci_offset,
                                          len(ci_stored), len(ci_data)).pack()  # fmt: skip
        out.write(ci_stored)
        out.write(meta_header)
        out.write(pack_section_header(SECTION_BLOB_META, len(ci_stored) + BLOB_META_HEADER_SIZE))
        entries.append(toc_entry(SECTION_BLOB_META, TOC_FLAGS[ci_compressor],
                                 hashlib.sha256(ci_data).digest(), ci_offset, len(ci_stored),
                                 len(ci_data)))  # fmt: skip
        entries.append(toc_entry(SECTION_BLOB_META_HEADER, TocFlags.COMPRESSION_NONE,
                                 hashlib.sha256(meta_header).digest(), ci_offset + len(ci_stored),
                                 BLOB_META_HEADER_SIZE, BLOB_META_HEADER_SIZE))  # fmt: skip

        digests = b"".join(c.digest for c in self._chunks)
        digests_offset = out.tell()
        out.write(digests)
        out.write(pack_section_header(SECTION_BLOB_DIGEST, len(digests)))
        entries.append(toc_entry(SECTION_BLOB_DIGEST, TocFlags.COMPRESSION_NONE,
                                 hashlib.sha256(digests).digest(), digests_offset, len(digests),
                                 len(digests)))  # fmt: skip
        return BlobSummary(
            chunk_count=len(self._chunks),
            compressed_size=self._compressed_end,
            uncompressed_size=self._uncompressed_end,
            features=features,
            ci_compressor=ci_compressor,
            ci_offset=ci_offset,
            ci_compressed_size=len(ci_stored),
            ci_uncompressed_size=len(ci_data),
            toc_entries=tuple(entries),
        )
