"""EROFS directory entries and directory blocks.

A directory's data is a sequence of blocks. Each block starts with 12-byte dirents
(`nid`, `nameoff`, `file_type`), followed by the names back to back without NULs, then zero
padding. `nameoff` is relative to the block; a name ends where the next one starts, and the
last name of a block ends at the first NUL or at the end of the block (or of the directory's
`i_size` in its final block). Entries, including "." and "..", are sorted by raw bytes.
"""

from __future__ import annotations

import struct
from bisect import bisect_right
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cache
from itertools import accumulate, chain, repeat
from operator import add

from rafs.errors import FormatError
from rafs.format.record import Record

EROFS_NAME_LEN = 255


@dataclass(frozen=True, slots=True)
class Dirent(Record):
    """`erofs_dirent` (`RafsV6Dirent`), 12 bytes."""

    STRUCT = struct.Struct("<QHBB")

    e_nid: int
    e_nameoff: int
    e_file_type: int
    e_reserved: int = 0


def dirent_blocks(names: Sequence[bytes], block_size: int) -> tuple[list[int], int]:
    """Split sorted entry names into blocks as nydus does: each block takes as many entries
    (12 + name length bytes each) as fit.

    Returns the number of entries in each block and the directory `i_size` (the byte count
    up to the end of the last entry's name).
    """
    # ends[i]: the bytes entries 0..i would take in one block
    steps = range(Dirent.SIZE, Dirent.SIZE * (len(names) + 1), Dirent.SIZE)
    ends = list(map(add, accumulate(map(len, names)), steps))
    counts: list[int] = []
    start = block_start = 0
    while start < len(ends):
        stop = max(bisect_right(ends, block_start + block_size, start), start + 1)
        counts.append(stop - start)
        if stop == len(ends):
            return counts, block_size * (len(counts) - 1) + ends[-1] - block_start
        block_start = ends[stop - 1]
        start = stop
    return counts, 0


@cache
def _dirent_array(count: int) -> struct.Struct:
    """`count` dirents back to back."""
    return struct.Struct("<" + "QHBB" * count)


def pack_dirent_block(
    names: Sequence[bytes],
    nids: Iterable[int],
    file_types: Iterable[int],
    block_size: int,
    pad: bool = True,
) -> bytes:
    """Encode one directory block: entry i is (names[i], nids[i], file_types[i])."""
    count = len(names)
    nameoffs = list(accumulate(map(len, names), initial=Dirent.SIZE * count))
    if nameoffs[-1] > block_size:
        raise FormatError(f"directory block overflows: {nameoffs[-1]} > {block_size}")
    heads = _dirent_array(count).pack(
        *chain.from_iterable(zip(nids, nameoffs, file_types, repeat(0)))
    )
    data = heads + b"".join(names)
    return data.ljust(block_size, b"\0") if pad else data


def pack_dirent_blocks(
    names: Sequence[bytes],
    nids: Sequence[int],
    file_types: Sequence[int],
    counts: Sequence[int],
    block_size: int,
) -> list[bytes]:
    """A directory's blocks, `counts[i]` entries in block i (`dirent_blocks`); every block
    but the last padded to `block_size`."""
    blocks = []
    start = 0
    for number, count in enumerate(counts):
        end = start + count
        blocks.append(pack_dirent_block(names[start:end], nids[start:end], file_types[start:end],
                                        block_size, pad=number + 1 < len(counts)))  # fmt: skip
        start = end
    return blocks


def unpack_dirent_block(block: bytes | memoryview, used: int) -> list[tuple[bytes, Dirent]]:
    """Decode one directory block of which the first `used` bytes are meaningful."""
    view = memoryview(block)[:used]
    if used < Dirent.SIZE:
        raise FormatError(f"directory block of {used} bytes holds no dirent")
    first = Dirent.unpack(view, 0)
    if first.e_nameoff % Dirent.SIZE or not Dirent.SIZE <= first.e_nameoff <= used:
        raise FormatError(f"bad first name offset {first.e_nameoff} in directory block")
    count = first.e_nameoff // Dirent.SIZE
    dirents = [first] + [Dirent.unpack(view, i * Dirent.SIZE) for i in range(1, count)]
    result = []
    for i, dirent in enumerate(dirents):
        start = dirent.e_nameoff
        if i + 1 < count:
            end = dirents[i + 1].e_nameoff
        else:
            tail = bytes(view[start:used])
            nul = tail.find(b"\0")
            end = used if nul < 0 else start + nul
        if not dirent.e_nameoff <= end <= used or end - start > EROFS_NAME_LEN or end == start:
            raise FormatError(f"bad name bounds [{start}, {end}) in directory block")
        result.append((bytes(view[start:end]), dirent))
    return result
