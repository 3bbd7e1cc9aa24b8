"""The on-disk cache of one data blob: a sparse data file plus a readiness bitmap.

`<key>.blob.data` holds the blob *uncompressed*, every chunk at its uncompressed offset:
the very bytes `rafs export --blob-data` writes, so once every chunk is there the file is
the blob device a kernel EROFS mount takes with `-o device=`. Chunks not fetched yet are
holes; evicted chunks are punched back into holes (`fallocate(PUNCH_HOLE)`), so the file
uses disk only for what it holds.

`<key>.chunk_map` says which chunks the data file holds: a 16-byte header (magic
`RAFSCMAP`, version, chunk count; little-endian) and one bit per chunk, indexed by the
chunk's index within its blob (`ChunkInfo.index`, as nydusd's chunk map does). A bit is set
only after the chunk's bytes are written, and the cache above verifies a chunk's digest the
first time it uses it in a process, so a torn write or a later corruption is fetched again,
never served. A map that does not fit the blob (other count, other data size) is reset.
"""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
import struct
from collections.abc import Iterator
from pathlib import Path

MAGIC = b"RAFSCMAP"
VERSION = 1
HEADER = struct.Struct("<8sII")  # magic, version, chunk count

FALLOC_FL_KEEP_SIZE = 0x01  # do not change the file size
FALLOC_FL_PUNCH_HOLE = 0x02  # deallocate the range (reads give zeros)

_libc = ctypes.CDLL(None, use_errno=True)
_libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]


def punch_hole(fd: int, offset: int, size: int) -> None:
    """Give the blocks of [offset, offset+size) back to the filesystem."""
    if _libc.fallocate(fd, FALLOC_FL_KEEP_SIZE | FALLOC_FL_PUNCH_HOLE, offset, size) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def data_file_name(key: str) -> str:
    return f"{key}.blob.data"


def map_file_name(key: str) -> str:
    return f"{key}.chunk_map"


class BlobCacheFile:
    """One blob's data file and chunk map, open for reading and writing (not thread-safe:
    the caller serialises access to the map, and keeps a chunk's reads and writes apart
    from its punching)."""

    def __init__(self, directory: Path, key: str, chunk_count: int, data_size: int) -> None:
        self.data_path = directory / data_file_name(key)
        self.map_path = directory / map_file_name(key)
        self.chunk_count = chunk_count
        map_size = HEADER.size + (chunk_count + 7) // 8
        self._fd = os.open(self.data_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        map_fd = os.open(self.map_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            header = os.pread(map_fd, HEADER.size, 0)
            fits = (
                header == HEADER.pack(MAGIC, VERSION, chunk_count)
                and os.fstat(map_fd).st_size == map_size
                and os.fstat(self._fd).st_size == data_size
            )
            if not fits:  # new, or made for another blob: start empty
                os.ftruncate(map_fd, 0)
                os.ftruncate(map_fd, map_size)
                os.pwrite(map_fd, HEADER.pack(MAGIC, VERSION, chunk_count), 0)
                os.ftruncate(self._fd, 0)
                os.ftruncate(self._fd, data_size)
            self._map = mmap.mmap(map_fd, map_size)
        finally:
            os.close(map_fd)
        self.reset = not fits
        self._data = mmap.mmap(self._fd, data_size, prot=mmap.PROT_READ) if data_size else None

    def is_ready(self, index: int) -> bool:
        return bool(self._map[HEADER.size + index // 8] & (1 << index % 8))

    def set_ready(self, index: int, ready: bool) -> None:
        at = HEADER.size + index // 8
        bit = 1 << index % 8
        self._map[at] = self._map[at] | bit if ready else self._map[at] & ~bit

    def ready_indexes(self) -> Iterator[int]:
        for byte_index, byte in enumerate(self._map[HEADER.size :]):
            for bit in range(8):
                if byte & (1 << bit):
                    yield byte_index * 8 + bit

    def read(self, offset: int, size: int) -> bytes:
        return os.pread(self._fd, size, offset)

    def read_into(self, offset: int, buffer: memoryview) -> int:
        return os.preadv(self._fd, [buffer], offset)

    def view(self, offset: int, size: int) -> memoryview:
        """The data file's bytes [offset, offset+size) as mapped memory, without a copy:
        valid as long as nothing punches them (or the file is closed)."""
        assert self._data is not None
        return memoryview(self._data)[offset : offset + size]

    def write(self, offset: int, data: bytes | memoryview) -> None:
        if os.pwrite(self._fd, data, offset) != len(data):
            raise OSError(errno.ENOSPC, f"short write of {len(data)} bytes at {offset}")

    def punch(self, offset: int, size: int) -> None:
        punch_hole(self._fd, offset, size)

    def sync(self) -> None:
        os.fsync(self._fd)
        self._map.flush()

    def close(self) -> None:
        self._map.close()
        if self._data is not None:
            self._data.close()
        os.close(self._fd)
