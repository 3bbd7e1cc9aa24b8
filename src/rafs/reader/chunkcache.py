"""The chunk cache: file reads served from a cache directory, filled from a blob backend.

A read of a file touches only the chunks its byte range covers. Each chunk is served from
its blob's cache file (`rafs.reader.cachefile`) when ready there; the others are fetched
together: their stored ranges are grouped by blob, adjacent ones merged into one
`read_into` call (one HTTP request for a registry backend), then each chunk is
decompressed, checked against its digest and written to the cache before use. A chunk
whose data does not match gives an `IntegrityError` (EIO in a mount) for the reads that
need it and one log line, never wrong bytes; other chunks are unaffected.

Digests are checked for every chunk fetched, and for every chunk taken from the cache the
first time this process uses it (the cache survives across mounts and could have been
damaged in between); a cached chunk that fails the check is fetched again.

Two ways in serve a mount's event loop without blocking it: `read_ready` answers a read
whose chunks are all cached and verified (a `preadv` into the caller's buffer), and
`request` starts fetching what a read lacks on a small pool of fetch threads, returning
futures to wait on. A read whose missing chunks are small (INLINE_FETCH stored bytes) and at
hand in the backend (`read_into_nowait`: a local blob in the page cache) is fetched by
`request` itself: handing it to a fetch thread and waking the loop again would take longer
than the fetch (about 0.3 ms of the 0.5 ms a small file took here). A read of at least
STREAMING_READ bytes (the kernel reading ahead: a file read sequentially) also has the
chunks after it, up to READAHEAD_BYTES of the file, fetched in the background, so the
kernel's next requests find them ready. A fetch for a read also takes the chunks stored
right after it in the blob, up to `amplify_io` stored bytes in all (the backend's choice: 0
for local files, 128 KiB for a registry, where a request is a round trip). `read` is the
blocking path for any other thread; `fetch` fills the cache (prefetch, `--kernel`).

Fetch threads read stored bytes and decompress into per-thread buffers they reuse (no
allocation and copy per chunk); zstd, BLAKE3, SHA-256 and file I/O release the GIL, so
fetch threads overlap with each other and with the loop.

Several threads may read at once. One lock guards the chunk maps, the LRU list, the
counters and cache reads (so eviction never punches a chunk being read); fetching,
decompressing, digests and cache writes run outside it, and a chunk being fetched by one
thread is waited for, not fetched again, by the others.

The cache directory may be given a size limit: before a chunk is stored, least recently
used chunks are punched out of their data files (files of blobs this image does not use go
first, oldest first), and a chunk that cannot fit is served without being stored. Chunks
found in the cache at start count as least recently used. One process should use a cache
directory at a time.
"""

from __future__ import annotations

import bisect
import hashlib
import logging
import threading
from collections import OrderedDict
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass
from itertools import islice, pairwise
from pathlib import Path

from rafs.codecs import decompress_into, digest_function
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
STREAMING_READ = 128 << 10
"""Reads at least this large come from the kernel's read-ahead: the file is being streamed."""
READAHEAD_BYTES = 8 << 20
"""How far past a streaming read the cache fetches (a quarter of a cache limit at most)."""
READAHEAD_JOB = 1 << 20
"""File bytes per background fetch: several jobs per window keep every fetch thread busy."""
FETCH_THREADS = 4
INLINE_FETCH = 64 << 10
"""Most stored bytes a read's missing chunks may take to be fetched on the reading thread
(when the backend has them at hand; see `request`)."""
READ_ATTEMPTS = 3
"""Rounds a blocking read makes when chunks are evicted as soon as they are fetched."""
MAX_STREAMS = 4096
"""Files whose read-ahead position is remembered."""

_Key = tuple[int, int]  # (blob index, chunk index within the blob)
_Piece = tuple[ChunkInfo, int, int]  # a chunk, and the [start, end) of it a read needs
_Future = Future[bytes | None]
"""A chunk being fetched: its bytes, or None once they are in the cache file."""
_Claim = dict[_Key, tuple[ChunkInfo, _Future]]
"""Chunks one thread fetches, each with the future it settles."""


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
                 limit: int | None = None, amplify_io: int | None = None) -> None:  # fmt: skip
        """`amplify_io`: stored bytes a read's fetch may take in all, with the chunks that
        follow in the blob (default: the backend's `amplify_io`)."""
        self.image = image
        self.backend = backend
        self.directory = directory
        self.limit = limit
        self.amplify_io = backend.amplify_io if amplify_io is None else amplify_io
        self.stats = CacheStats()
        self._lock = threading.Lock()
        self._inflight: dict[_Key, _Future] = {}
        self._lru: OrderedDict[_Key, ChunkInfo] = OrderedDict()  # least recently used first
        self._ahead: dict[int, int] = {}  # nid -> file chunk index read-ahead has reached
        self._scratch = threading.local()
        self._pool = ThreadPoolExecutor(FETCH_THREADS, thread_name_prefix="chunk-fetch")
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

    # -- reads from an event loop ----------------------------------------------------------

    def read_ready(self, nid: int, offset: int, size: int, into: bytearray) -> memoryview | None:
        """A file range when every chunk it needs is cached and verified, else None.

        Cheap enough for an event loop thread: no fetching, no digest computation, no
        copy when it can be helped. Without a cache limit nothing is ever punched out of a
        data file, so a range lying in one is answered with the file's mapped memory (the
        kernel copies the reply straight from the page cache); otherwise it is read into
        `into` (at least `size` bytes).
        """
        pieces = self._pieces(nid, offset, size)
        with self._lock:
            if not all(self._usable(info) for info, _, _ in pieces):
                return None
            for info, _, _ in pieces:
                self._touch(info)
            if self.limit is None and pieces and _contiguous(pieces):
                first, lo, _ = pieces[0]
                length = sum(hi - lo for _, lo, hi in pieces)
                data = self._files[first.blob_index].view(first.uncompressed_offset + lo, length)
            else:
                data = self._read_pieces(pieces, memoryview(into))
            self.stats.cache_hits += len(pieces)
            self.stats.reads += 1
            self.stats.bytes_read += len(data)
        if size >= STREAMING_READ:
            self._read_ahead(nid, offset + size)
        return data

    def _read_pieces(self, pieces: list[_Piece], into: memoryview) -> memoryview:
        """Read cached pieces one after the other into `into` (the lock held)."""
        length = 0
        for info, lo, hi in pieces:
            cache, at = self._files[info.blob_index], info.uncompressed_offset + lo
            length += cache.read_into(at, into[length : length + hi - lo])
        return into[:length]

    def request(self, nid: int, offset: int, size: int) -> list[_Future]:
        """Start fetching the chunks a file range lacks, in the background, without waiting:
        the futures to wait on before `read_ready` can answer (each may hold an error)."""
        pieces = self._pieces(nid, offset, size)
        mine, theirs = self._claim(info for info, _, _ in pieces)
        if mine and not self._fetched_inline(mine):
            self._submit(mine | self._amplified(mine))
        if size >= STREAMING_READ:
            self._read_ahead(nid, offset + size)
        return [*theirs.values(), *(future for _, future in mine.values())]

    # -- fetching ahead of reads -----------------------------------------------------------

    def _amplified(self, claim: _Claim) -> _Claim:
        """Claim the chunks stored right after the last chunk of a claim, in its blob, up to
        `amplify_io` stored bytes for the claim in all, stopping at one already cached or
        being fetched: one backend read fetches them along (one request instead of several
        for a registry, where files read together are mostly stored together)."""
        if not self.amplify_io:
            return {}
        last = max((info for info, _ in claim.values()),
                   key=lambda info: (info.blob_index, info.compressed_offset))  # fmt: skip
        chunks = self.image.blob_chunks(last.blob_index)  # in stored order
        budget = self.amplify_io - sum(info.compressed_size for info, _ in claim.values())
        end = last.compressed_offset + last.compressed_size
        following = []
        with self._lock:
            after = bisect.bisect_left(chunks, end, key=lambda info: info.compressed_offset)
            for info in islice(chunks, after, None):  # no copy of the blob's chunk list
                if info.compressed_offset < end:
                    continue  # the same chunk listed again
                key = (info.blob_index, info.index)
                if (info.compressed_offset != end or info.compressed_size > budget
                        or key in self._inflight or self._usable(info)):  # fmt: skip
                    break
                following.append(info)
                budget -= info.compressed_size
                end += info.compressed_size
        return self._claim(following)[0]

    @property
    def readahead_window(self) -> int:
        """How far a streaming read fetches ahead: READAHEAD_BYTES, or a quarter of a
        cache limit when that is less."""
        return READAHEAD_BYTES if self.limit is None else min(READAHEAD_BYTES, self.limit // 4)

    def warm(self, files: Iterable[tuple[int, int]]) -> None:
        """Fetch in the background the chunks of the first `size` bytes of each (nid, size)
        (at most the read-ahead window of each): files expected to be read next. Chunks of
        several small files share a job, and adjacent ones one backend read."""
        chunk_size, window = self.image.chunk_size, self.readahead_window
        infos: list[ChunkInfo] = []
        for nid, size in files:
            infos += self._not_ahead_yet(nid, 0, min(align_up(size, chunk_size), window))
        self._fetch_in_background(infos)

    def _read_ahead(self, nid: int, end: int) -> None:
        """Fetch in the background the read-ahead window of `nid` after byte `end` of a
        streaming read, what of it is not under way yet."""
        following = align_up(end, self.image.chunk_size)
        self._fetch_in_background(self._not_ahead_yet(nid, following, self.readahead_window))

    def _not_ahead_yet(self, nid: int, start: int, size: int) -> list[ChunkInfo]:
        """The chunks of file bytes [start, start+size) (whole chunks from `start`, a chunk
        boundary) not read ahead before, now counted as read ahead; [] where they are bad
        (the read that needs them reports it)."""
        chunk_size = self.image.chunk_size
        total = (self.image.stat(nid).size + chunk_size - 1) // chunk_size
        first = start // chunk_size
        with self._lock:
            begin = max(self._ahead.get(nid, 0), first)
            stop = min(total, first + size // chunk_size)
            if begin >= stop:
                return []
            if len(self._ahead) >= MAX_STREAMS:
                self._ahead.clear()
            self._ahead[nid] = stop
        try:
            return self._checked_chunks(nid, begin, stop)
        except FormatError:
            return []

    def _fetch_in_background(self, infos: list[ChunkInfo]) -> None:
        """Claim chunks and fetch them on the fetch threads, in jobs of about READAHEAD_JOB
        bytes: enough jobs to keep every thread busy, few enough to be cheap."""
        job: list[ChunkInfo] = []
        size = 0
        for count, info in enumerate(infos, 1):
            job.append(info)
            size += info.uncompressed_size
            if size >= READAHEAD_JOB or count == len(infos):
                mine, _ = self._claim(job)
                if mine:
                    self._submit(mine)
                job, size = [], 0

    def _submit(self, claim: _Claim) -> None:
        job = self._pool.submit(self._fetch_claimed, claim, False)
        job.add_done_callback(lambda done: self._job_done(done, claim))

    def _job_done(self, job: Future[None], claim: _Claim) -> None:
        """Settle what a background job left unsettled (it failed, or was cancelled)."""
        if not job.cancelled() and (error := job.exception()) is not None:
            log.error("chunk fetch failed: %s", error)
        self._abandon(claim)

    # -- blocking reads --------------------------------------------------------------------

    def read(self, nid: int, offset: int, size: int) -> bytes:
        """Bytes [offset, offset+size) of a regular file, fetching what the cache lacks."""
        pieces = self._pieces(nid, offset, size)
        parts: list[bytes | None] = [None] * len(pieces)
        for _ in range(READ_ATTEMPTS):
            for i, (info, lo, hi) in enumerate(pieces):
                if parts[i] is None:
                    parts[i] = self._read_cached(info, lo, hi)
            missing = [i for i, part in enumerate(parts) if part is None]
            if not missing:
                done = [part for part in parts if part is not None]
                with self._lock:
                    self.stats.reads += 1
                    self.stats.bytes_read += sum(len(part) for part in done)
                return b"".join(done)
            fetched = self._fetch([pieces[i][0] for i in missing], keep=True)
            for i in missing:
                info, lo, hi = pieces[i]
                data = fetched.get((info.blob_index, info.index))
                if data is not None:  # else in the cache by now: read in the next round
                    parts[i] = data[lo:hi]
        raise RafsError(f"{self.image.source}: nid {nid}: chunks were evicted as soon as they "
                        "were fetched; the cache limit is too small")  # fmt: skip

    def _pieces(self, nid: int, offset: int, size: int) -> list[_Piece]:
        """(chunk, start, end within the chunk) for each chunk [offset, offset+size) covers."""
        st = self.image.stat(nid)
        end = min(st.size, offset + size)
        if offset >= end:
            return []
        chunk_size = self.image.chunk_size
        first, stop = offset // chunk_size, (end - 1) // chunk_size + 1
        pieces = []
        for index, info in enumerate(self._checked_chunks(nid, first, stop), first):
            base = index * chunk_size
            pieces.append((info, max(offset, base) - base, min(end, base + chunk_size) - base))
        return pieces

    def _checked_chunks(self, nid: int, first: int, stop: int) -> list[ChunkInfo]:
        """Chunks [first, stop) of a regular file, each checked to fit the file and its blob."""
        image = self.image
        size, chunk_size = image.stat(nid).size, image.chunk_size
        infos = list(image.file_chunks(nid, first, stop))
        for index, info in enumerate(infos, first):
            expected = min(chunk_size, size - index * chunk_size)
            if info.uncompressed_size != expected:
                raise FormatError(f"{image.source}: nid {nid} chunk {index} has "
                                  f"{info.uncompressed_size} bytes, not {expected}")
            self._check_index(info)
        return infos

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
        with self._lock:
            cache = self._files[info.blob_index]
            if not cache.is_ready(info.index):
                return None
            self._touch(info)
            if self._verified[info.blob_index][info.index]:
                self.stats.cache_hits += 1
                return cache.read(info.uncompressed_offset + lo, hi - lo)
            whole = cache.read(info.uncompressed_offset, info.uncompressed_size)
        if not self._verify(info, whole):
            return None
        with self._lock:
            self.stats.cache_hits += 1
        return whole[lo:hi]

    def _verify(self, info: ChunkInfo, data: bytes | memoryview) -> bool:
        """Check a chunk read back from the cache; one that fails is dropped (fetched anew)."""
        if self._digest(info, data):
            with self._lock:
                self._verified[info.blob_index][info.index] = 1
            return True
        log.warning("%s: cached chunk %s does not match its digest; fetching it again",
                    self._files[info.blob_index].data_path, info.block_id.hex())  # fmt: skip
        with self._lock:
            self._drop((info.blob_index, info.index), info)
        return False

    def _digest(self, info: ChunkInfo, data: bytes | memoryview) -> bool:
        algo = self.image.blobs[info.blob_index].digest_algo
        return len(data) == info.uncompressed_size and digest_function(algo)(data) == info.block_id

    # -- state of chunks (called with the lock held) -----------------------------------------

    def _usable(self, info: ChunkInfo) -> bool:
        """Whether a chunk is cached and verified: readable as it is."""
        b, c = info.blob_index, info.index
        return bool(self._verified[b][c]) and self._files[b].is_ready(c)

    def _touch(self, info: ChunkInfo) -> None:
        key = (info.blob_index, info.index)
        if key in self._lru:
            self._lru.move_to_end(key)

    # -- fetching ----------------------------------------------------------------------

    def fetch(self, infos: Iterable[ChunkInfo]) -> None:
        """Fetch (or await) chunks into the cache. Raises the error of the first chunk that
        cannot be had (`IntegrityError` for data that does not match its digest)."""
        self._fetch(infos, keep=False)

    def _fetch(self, infos: Iterable[ChunkInfo], keep: bool) -> dict[_Key, bytes | None]:
        """Fetch chunks in this thread, or await those others are fetching: for each, its
        bytes, or None when it is in the cache (always its bytes for the ones fetched
        here when `keep`). Chunks already usable are left out."""
        mine, theirs = self._claim(infos)
        try:
            self._fetch_claimed(mine, keep)
        finally:
            self._abandon(mine)
        futures = theirs | {key: future for key, (_, future) in mine.items()}
        return {key: future.result() for key, future in futures.items()}

    def _claim(self, infos: Iterable[ChunkInfo]) -> tuple[_Claim, dict[_Key, _Future]]:
        """Take on the chunks that are neither usable nor being fetched: (those, with a new
        future each; the futures of those other threads are fetching)."""
        mine: _Claim = {}
        theirs: dict[_Key, _Future] = {}
        with self._lock:
            for info in infos:
                key = (info.blob_index, info.index)
                if key in mine or key in theirs or self._usable(info):
                    continue
                future = self._inflight.get(key)
                if future is None:
                    mine[key] = (info, self._inflight.setdefault(key, Future()))
                else:
                    theirs[key] = future
            self.stats.cache_misses += len(mine)
        return mine, theirs

    def _settle(self, claim: _Claim, info: ChunkInfo, result: bytes | None = None,
                error: BaseException | None = None) -> None:  # fmt: skip
        """Hand a claimed chunk's outcome to whoever waits for it."""
        key = (info.blob_index, info.index)
        _, future = claim[key]
        with self._lock:
            if self._inflight.get(key) is future:
                del self._inflight[key]
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)

    def _abandon(self, claim: _Claim) -> None:
        """Fail the chunks of a claim left unsettled (their fetch raised or was cancelled)."""
        for info, future in claim.values():
            if not future.done():
                self._settle(claim, info, error=RafsError("chunk fetch was interrupted"))

    def _fetch_claimed(self, claim: _Claim, keep: bool) -> None:
        """Fetch the chunks of a claim, settling each one's future (`keep`: with its bytes).
        A chunk in the cache that has not been verified yet is checked, not fetched."""
        todo = []
        for info, _ in claim.values():
            whole = self._read_cached(info, 0, info.uncompressed_size)
            if whole is None:
                todo.append(info)
            else:
                self._settle(claim, info, whole if keep else None)
        for run in _merged_runs(todo):
            self._fetch_run(claim, run, keep)

    def _fetch_run(self, claim: _Claim, run: list[ChunkInfo], keep: bool) -> None:
        """Fetch chunks whose stored bytes are adjacent: one backend read, then each chunk
        decompressed, verified and stored in turn."""
        start, size = _stored_range(run)
        blob = self.image.blobs[run[0].blob_index]
        stored = self._buffer("stored", size)[:size]
        try:
            self.backend.read_into(blob.id, start, stored)
        except (RafsError, OSError) as exc:
            log.error("blob %s: %s", blob.id, exc)
            for info in run:
                self._settle(claim, info, error=exc)
            return
        self._unpack_run(claim, run, stored, keep)

    def _fetched_inline(self, claim: _Claim) -> bool:
        """Fetch a small claim on the calling thread if the backend has its stored bytes at
        hand (a local blob in the page cache): the hand-over to a fetch thread and back is
        then most of a small file's read. False, with nothing done, otherwise (the bytes
        need waiting for, or are cached but not yet verified: a fetch thread's work)."""
        runs = _merged_runs([info for info, _ in claim.values()])
        if len(runs) != 1:
            return False
        [run] = runs
        start, size = _stored_range(run)
        if size > INLINE_FETCH:
            return False
        with self._lock:
            if any(self._files[info.blob_index].is_ready(info.index) for info in run):
                return False
        stored = self._buffer("stored", size)[:size]
        try:
            if not self.backend.read_into_nowait(self.image.blobs[run[0].blob_index].id,
                                                 start, stored):  # fmt: skip
                return False
        except (RafsError, OSError):
            return False  # a fetch thread tries again, and reports it
        try:
            self._unpack_run(claim, run, stored, keep=False)
        finally:
            self._abandon(claim)
        return True

    def _unpack_run(self, claim: _Claim, run: list[ChunkInfo], stored: memoryview,
                    keep: bool) -> None:  # fmt: skip
        """Decompress, verify, store and settle each chunk of a run from its stored bytes."""
        start = run[0].compressed_offset
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
                self._settle(claim, info, error=exc)
                continue
            kept = self._store(info, data)
            self._settle(claim, info, bytes(data) if keep or not kept else None)

    def _buffer(self, name: str, size: int) -> memoryview:
        """This thread's reusable buffer `name`, at least `size` bytes."""
        buffer: bytearray | None = getattr(self._scratch, name, None)
        if buffer is None or len(buffer) < size:
            buffer = bytearray(size)
            setattr(self._scratch, name, buffer)
        return memoryview(buffer)

    def _unpack(self, info: ChunkInfo, stored: memoryview) -> memoryview:
        """A chunk's verified bytes, decompressed into this thread's buffer."""
        blob = self.image.blobs[info.blob_index]
        algo = blob.compression_algo if info.compressed else 0
        out = self._buffer("data", info.uncompressed_size)
        try:
            data = decompress_into(stored, algo, info.uncompressed_size, out)
        except FormatError as exc:
            problem = str(exc)
        else:
            if self._digest(info, data):
                return data
            problem = "data does not match the chunk digest"
        raise IntegrityError(f"blob {blob.id}: chunk {info.block_id.hex()}: {problem}")

    # -- storing and eviction --------------------------------------------------------------

    def _store(self, info: ChunkInfo, data: memoryview) -> bool:
        """Write a verified chunk to the cache; False if it could not be kept there."""
        key = (info.blob_index, info.index)
        cache = self._files[info.blob_index]
        need = _footprint(info)
        with self._lock:
            self.stats.chunks_fetched += 1
            if cache.is_ready(info.index):
                return True
            if self.limit is not None and not self._make_room(need):
                return False
            self._usage += need  # reserved while the chunk is written, outside the lock
        try:
            cache.write(info.uncompressed_offset, data)
        except OSError as exc:
            log.error("%s: cannot store chunk: %s", cache.data_path, exc)
            with self._lock:
                self._usage -= need
            return False
        with self._lock:
            cache.set_ready(info.index, True)
            self._verified[key[0]][key[1]] = 1
            self._lru[key] = info
        return True

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
        self._pool.shutdown(wait=True, cancel_futures=True)
        with self._lock:
            for cache in self._files:
                cache.close()
            self._files = []


def _footprint(info: ChunkInfo) -> int:
    """Disk a cached chunk takes: whole 4 KiB blocks (chunks start block-aligned)."""
    return align_up(info.uncompressed_size, 4096)


def _contiguous(pieces: list[_Piece]) -> bool:
    """Whether the pieces lie back to back in one blob's uncompressed data."""
    return all(
        b.blob_index == a.blob_index
        and b.uncompressed_offset == a.uncompressed_offset + a.uncompressed_size
        for (a, _, _), (b, _, _) in pairwise(pieces)
    )


def _stored_range(run: list[ChunkInfo]) -> tuple[int, int]:
    """(offset, size) of the stored bytes of a run of adjacent chunks."""
    start = run[0].compressed_offset
    return start, run[-1].compressed_offset + run[-1].compressed_size - start


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
