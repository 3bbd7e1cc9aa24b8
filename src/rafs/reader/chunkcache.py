"""The chunk cache: file reads served from a cache directory, filled from a blob backend.

A read of a file touches only the chunks its byte range covers. Each chunk is served from
its blob's cache file (`rafs.reader.cachefile`) when ready there; the others are fetched
together: their stored ranges are grouped by blob, adjacent ones merged into one
`read_range` call (one HTTP request for a registry backend), then each chunk is
decompressed, checked against its digest and written to the cache before use. A chunk
whose data does not match gives an `IntegrityError` (EIO in a mount) for the reads that
need it and one log line, never wrong bytes; other chunks are unaffected.

Digests are checked for every chunk fetched, and for every chunk taken from the cache the
first time this process uses it (the cache survives across mounts and could have been
damaged in between); a cached chunk that fails the check is fetched again.

Several threads may read at once. One lock guards the cache files, the LRU list and the
counters; fetching and decompressing run outside it, and a chunk being fetched by one
thread is waited for, not fetched again, by the others.

The cache directory may be given a size limit: before a chunk is stored, least recently
used chunks are punched out of their data files (files of blobs this image does not use go
first, oldest first), and a chunk that cannot fit is served without being stored. Chunks
found in the cache at start count as least recently used. One process should use a cache
directory at a time.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from concurrent.futures import Future
from dataclasses import asdict, dataclass
from itertools import pairwise
from pathlib import Path

from rafs.codecs import decompress, digest_function
from rafs.errors import FormatError, IntegrityError, RafsError
from rafs.format.blobtable import PLACEHOLDER_BLOB_ID
from rafs.format.chunktable import ChunkInfo
from rafs.format.record import align_up
from rafs.reader.backend import BlobBackend
from rafs.reader.cachefile import BlobCacheFile, data_file_name, map_file_name
from rafs.reader.image import RafsImage

log = logging.getLogger(__name__)

MAX_MERGED_RANGE = 8 << 20
"""Largest stored range one backend request fetches when merging adjacent chunks."""

_Key = tuple[int, int]  # (blob index, chunk index within the blob)


@dataclass
class CacheStats:
    """Counters of one mount; `bytes_fetched` counts stored (compressed) bytes."""

    reads: int = 0
    bytes_read: int = 0
    requests: int = 0
    bytes_fetched: int = 0
    chunks_fetched: int = 0
    cache_hits: int = 0
    cache_misses: int = 0
    corrupt_chunks: int = 0
    evicted_chunks: int = 0


def cache_key(image: RafsImage, blob_index: int) -> str:
    """The name of a blob's cache files: its blob id, or for a blob that is a layer file
    with the placeholder id, the sha256 of the bootstrap (which holds every chunk digest)."""
    blob_id = image.blobs[blob_index].id
    if blob_id == PLACEHOLDER_BLOB_ID:
        return "layer-" + hashlib.sha256(image.data).hexdigest()
    return blob_id


class ChunkCache:
    """File reads of one image through a cache directory and a blob backend."""

    def __init__(self, image: RafsImage, backend: BlobBackend, directory: Path,
                 limit: int | None = None) -> None:  # fmt: skip
        self.image = image
        self.backend = backend
        self.directory = directory
        self.limit = limit
        self.stats = CacheStats()
        self._lock = threading.Lock()
        self._inflight: dict[_Key, Future[bytes]] = {}
        self._lru: OrderedDict[_Key, ChunkInfo] = OrderedDict()  # least recently used first
        directory.mkdir(parents=True, exist_ok=True)
        self._keys = [cache_key(image, i) for i in range(len(image.blobs))]
        self._files: list[BlobCacheFile] = []
        self._verified: list[bytearray] = []
        for index, blob in enumerate(image.blobs):
            size = align_up(blob.uncompressed_size, image.block_size)
            cache = BlobCacheFile(directory, self._keys[index], blob.chunk_count, size)
            if cache.reset:
                log.info("%s: new cache for blob %s", cache.data_path, blob.id)
            self._files.append(cache)
            self._verified.append(bytearray(blob.chunk_count))
        self._usage = sum(p.stat().st_blocks * 512 for p in directory.glob("*.blob.data"))
        for index in range(len(image.blobs)):
            by_index = {c.index: c for c in image.blob_chunks(index)}
            for chunk_index in self._files[index].ready_indexes():
                info = by_index.get(chunk_index)
                if info is not None:
                    self._lru[(index, chunk_index)] = info

    # -- reads -------------------------------------------------------------------------

    def read_ready(self, nid: int, offset: int, size: int) -> bytes | None:
        """Bytes of a file range when every chunk it needs is cached and verified, else None.

        Cheap enough for an event loop thread: no fetching, no digest computation.
        """
        pieces = self._pieces(nid, offset, size)
        parts = []
        with self._lock:
            for info, _, _ in pieces:
                b, c = info.blob_index, info.index
                if not (self._verified[b][c] and self._files[b].is_ready(c)):
                    return None
            for info, _, _ in pieces:
                key = (info.blob_index, info.index)
                if key in self._lru:
                    self._lru.move_to_end(key)
            if pieces and _contiguous(pieces):  # the usual case: one read, nothing to join
                info, lo, _ = pieces[0]
                length = sum(hi - lo for _, lo, hi in pieces)
                cache = self._files[info.blob_index]
                parts.append(cache.read(info.uncompressed_offset + lo, length))
            else:
                for info, lo, hi in pieces:
                    cache = self._files[info.blob_index]
                    parts.append(cache.read(info.uncompressed_offset + lo, hi - lo))
            self.stats.cache_hits += len(pieces)
            self._count_read(parts)
        return b"".join(parts)

    def read(self, nid: int, offset: int, size: int) -> bytes:
        """Bytes [offset, offset+size) of a regular file, fetching what the cache lacks."""
        pieces = self._pieces(nid, offset, size)
        parts: list[bytes | None] = [self._read_cached(info, lo, hi) for info, lo, hi in pieces]
        missing = [i for i, part in enumerate(parts) if part is None]
        if missing:
            fetched = self.fetch([pieces[i][0] for i in missing])
            for i in missing:
                info, lo, hi = pieces[i]
                parts[i] = fetched[(info.blob_index, info.index)][lo:hi]
        done = [part for part in parts if part is not None]
        with self._lock:
            self._count_read(done)
        return b"".join(done)

    def _count_read(self, parts: Sequence[bytes]) -> None:
        self.stats.reads += 1
        self.stats.bytes_read += sum(len(p) for p in parts)

    def _pieces(self, nid: int, offset: int, size: int) -> list[tuple[ChunkInfo, int, int]]:
        """(chunk, start, end within the chunk) for each chunk [offset, offset+size) covers."""
        image = self.image
        st = image.stat(nid)
        end = min(st.size, offset + size)
        if offset >= end:
            return []
        chunk_size = image.chunk_size
        first, stop = offset // chunk_size, (end - 1) // chunk_size + 1
        pieces = []
        for index, info in enumerate(image.file_chunks(nid, first, stop), first):
            expected = min(chunk_size, st.size - index * chunk_size)
            if info.uncompressed_size != expected:
                raise FormatError(f"{image.source}: nid {nid} chunk {index} has "
                                  f"{info.uncompressed_size} bytes, not {expected}")
            self._check_index(info)
            base = index * chunk_size
            pieces.append((info, max(offset, base) - base, min(end, base + chunk_size) - base))
        return pieces

    def _check_index(self, info: ChunkInfo) -> None:
        blob = self.image.blobs[info.blob_index]
        if info.index >= blob.chunk_count:
            raise FormatError(f"{self.image.source}: chunk {info.block_id.hex()[:16]} has "
                              f"index {info.index}, past the {blob.chunk_count} of blob {blob.id}")
        if info.uncompressed_offset + info.uncompressed_size > blob.uncompressed_size:
            raise FormatError(f"{self.image.source}: chunk {info.block_id.hex()[:16]} lies "
                              f"past the end of blob {blob.id}")  # fmt: skip

    def _read_cached(self, info: ChunkInfo, lo: int, hi: int) -> bytes | None:
        """Part of a chunk from the cache, verifying it on its first use; None if absent."""
        key = (info.blob_index, info.index)
        cache = self._files[info.blob_index]
        with self._lock:
            if not cache.is_ready(info.index):
                return None
            if key in self._lru:
                self._lru.move_to_end(key)
            if self._verified[key[0]][key[1]]:
                self.stats.cache_hits += 1
                return cache.read(info.uncompressed_offset + lo, hi - lo)
            whole = cache.read(info.uncompressed_offset, info.uncompressed_size)
        if self._digest(info, whole):
            with self._lock:
                self._verified[key[0]][key[1]] = 1
                self.stats.cache_hits += 1
            return whole[lo:hi]
        log.warning("%s: cached chunk %s does not match its digest; fetching it again",
                    cache.data_path, info.block_id.hex())  # fmt: skip
        with self._lock:
            self._drop(key, info)
        return None

    def _digest(self, info: ChunkInfo, data: bytes) -> bool:
        algo = self.image.blobs[info.blob_index].digest_algo
        return len(data) == info.uncompressed_size and digest_function(algo)(data) == info.block_id

    # -- fetching ----------------------------------------------------------------------

    def fetch(self, infos: Iterable[ChunkInfo]) -> dict[_Key, bytes]:
        """The uncompressed, verified bytes of chunks, fetched (or awaited) and cached.

        Raises the error of the first chunk that cannot be had (`IntegrityError` for data
        that does not match its digest).
        """
        unique = {(c.blob_index, c.index): c for c in infos}
        mine: list[ChunkInfo] = []
        theirs: dict[_Key, Future[bytes]] = {}
        with self._lock:
            for key, info in unique.items():
                if key in self._inflight:
                    theirs[key] = self._inflight[key]
                else:
                    self._inflight[key] = Future()
                    mine.append(info)
            self.stats.cache_misses += len(mine)
        try:
            self._fetch_claimed(mine)
        finally:
            with self._lock:
                for info in mine:
                    future = self._inflight.pop((info.blob_index, info.index))
                    if not future.done():
                        future.set_exception(RafsError("chunk fetch was interrupted"))
                    theirs[(info.blob_index, info.index)] = future
        return {key: future.result() for key, future in theirs.items()}

    def _fetch_claimed(self, infos: list[ChunkInfo]) -> None:
        """Fetch chunks this thread claimed, settling each one's future."""
        for run in _merged_runs(infos):
            first = run[0]
            start = first.compressed_offset
            size = run[-1].compressed_offset + run[-1].compressed_size - start
            blob = self.image.blobs[first.blob_index]
            try:
                stored = self.backend.read_range(blob.id, start, size)
            except RafsError as exc:
                log.error("%s", exc)
                for info in run:
                    self._future(info).set_exception(exc)
                continue
            with self._lock:
                self.stats.requests += 1
                self.stats.bytes_fetched += len(stored)
            for info in run:
                at = info.compressed_offset - start
                try:
                    data = self._unpack(info, stored[at : at + info.compressed_size])
                except IntegrityError as exc:
                    log.error("%s", exc)
                    with self._lock:
                        self.stats.corrupt_chunks += 1
                    self._future(info).set_exception(exc)
                    continue
                with self._lock:
                    self._store(info, data)
                self._future(info).set_result(data)

    def _future(self, info: ChunkInfo) -> Future[bytes]:
        with self._lock:
            return self._inflight[(info.blob_index, info.index)]

    def _unpack(self, info: ChunkInfo, stored: bytes) -> bytes:
        blob = self.image.blobs[info.blob_index]
        where = f"blob {blob.id}: chunk {info.block_id.hex()}"
        try:
            algo = blob.compression_algo if info.compressed else 0
            data = decompress(stored, algo, info.uncompressed_size)
        except FormatError as exc:
            raise IntegrityError(f"{where}: {exc}") from None
        if not self._digest(info, data):
            raise IntegrityError(f"{where}: data does not match the chunk digest")
        return data

    # -- storing and eviction (called with the lock held) --------------------------------

    def _store(self, info: ChunkInfo, data: bytes) -> None:
        key = (info.blob_index, info.index)
        self.stats.chunks_fetched += 1
        cache = self._files[info.blob_index]
        need = _footprint(info)
        if cache.is_ready(info.index) or (self.limit is not None and not self._make_room(need)):
            return
        try:
            cache.write(info.uncompressed_offset, data)
        except OSError as exc:
            log.error("%s: cannot store chunk: %s", cache.data_path, exc)
            return
        cache.set_ready(info.index, True)
        self._verified[key[0]][key[1]] = 1
        self._lru[key] = info
        self._usage += need

    def _make_room(self, need: int) -> bool:
        assert self.limit is not None
        if need > self.limit:
            return False
        while self._usage + need > self.limit:
            if not self._evict_foreign_file():
                if not self._lru:
                    return False
                key, info = next(iter(self._lru.items()))
                self._drop(key, info)
                self.stats.evicted_chunks += 1
        return True

    def _drop(self, key: _Key, info: ChunkInfo) -> None:
        """Forget a cached chunk and give its blocks back."""
        cache = self._files[key[0]]
        cache.set_ready(key[1], False)
        self._verified[key[0]][key[1]] = 0
        if self._lru.pop(key, None) is not None:
            self._usage -= _footprint(info)
        try:
            cache.punch(info.uncompressed_offset, _footprint(info))
        except OSError as exc:
            log.warning("%s: cannot free an evicted chunk: %s", cache.data_path, exc)

    def _evict_foreign_file(self) -> bool:
        """Delete the oldest cache files of a blob this image does not use; False if none."""
        own = {data_file_name(key) for key in self._keys}
        foreign = [p for p in self.directory.glob("*.blob.data") if p.name not in own]
        if not foreign:
            return False
        oldest = min(foreign, key=lambda p: p.stat().st_mtime)
        self._usage -= oldest.stat().st_blocks * 512
        key = oldest.name.removesuffix(".blob.data")
        log.info("%s: evicted (cache limit)", oldest)
        oldest.unlink()
        (self.directory / map_file_name(key)).unlink(missing_ok=True)
        return True

    # -- whole files and blobs -----------------------------------------------------------

    def missing_chunks(self, infos: Iterable[ChunkInfo]) -> list[ChunkInfo]:
        """The chunks among `infos` not in the cache (validated)."""
        result = []
        for info in infos:
            self._check_index(info)
            with self._lock:
                ready = self._files[info.blob_index].is_ready(info.index)
            if not ready:
                result.append(info)
        return result

    def fill_blob(self, blob_index: int, batch: int = 64) -> None:
        """Fetch every chunk of one blob into the cache and flush it to disk."""
        chunks = self.missing_chunks(self.image.blob_chunks(blob_index))
        for start in range(0, len(chunks), batch):
            self.fetch(chunks[start : start + batch])
        self._files[blob_index].sync()

    def data_path(self, blob_index: int) -> Path:
        return self._files[blob_index].data_path

    @property
    def usage(self) -> int:
        return self._usage

    def stats_dict(self) -> dict[str, int]:
        with self._lock:
            counters = asdict(self.stats)
        blob_bytes = sum(blob.compressed_size for blob in self.image.blobs)
        return counters | {
            "image_bytes": len(self.image.data) + blob_bytes,
            "bootstrap_bytes": len(self.image.data),
            "blob_bytes": blob_bytes,
            "cache_bytes": self._usage,
        }

    def close(self) -> None:
        with self._lock:
            for cache in self._files:
                cache.close()
            self._files = []


def _footprint(info: ChunkInfo) -> int:
    """Disk a cached chunk takes: whole 4 KiB blocks (chunks start block-aligned)."""
    return align_up(info.uncompressed_size, 4096)


def _contiguous(pieces: list[tuple[ChunkInfo, int, int]]) -> bool:
    """Whether the pieces lie back to back in one blob's uncompressed data."""
    return all(
        b.blob_index == a.blob_index
        and b.uncompressed_offset == a.uncompressed_offset + a.uncompressed_size
        for (a, _, _), (b, _, _) in pairwise(pieces)
    )


def _merged_runs(infos: list[ChunkInfo]) -> list[list[ChunkInfo]]:
    """Chunks grouped into runs whose stored ranges are adjacent in one blob."""
    runs: list[list[ChunkInfo]] = []
    ordered = sorted(infos, key=lambda c: (c.blob_index, c.compressed_offset))
    for info in ordered:
        if runs:
            last = runs[-1][-1]
            end = last.compressed_offset + last.compressed_size
            if (info.blob_index == last.blob_index and info.compressed_offset == end
                    and end - runs[-1][0].compressed_offset < MAX_MERGED_RANGE):  # fmt: skip
                runs[-1].append(info)
                continue
        runs.append([info])
    return runs

