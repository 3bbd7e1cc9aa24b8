"""EROFS directory entries and directory blocks.

A directory's data is a sequence of blocks. Each block starts with 12-byte dirents
(`nid`, `nameoff`, `file_type`), followed by the names back to back without NULs, then zero
padding. `nameoff` is relative to the block; a name ends where the next one starts, and the
last name of a block ends at the first NUL or at the end of the block (or of the directory's
`i_size` in its final block). Entries, including "." and "..", are sorted by raw bytes.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass

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
    """Split sorted entry names into blocks as nydus does.

    Returns the number of entries in each block and the directory `i_size` (the byte count
    up to the end of the last entry's name).
    """
    counts: list[int] = []
    used = 0
    size = 0
    for name in names:
        cost = Dirent.SIZE + len(name)
        if not counts or used + cost > block_size:
            if counts:
                size += block_size
            counts.append(0)
            used = 0
        counts[-1] += 1
        used += cost
    return counts, size + used


def pack_dirent_block(
    entries: Sequence[tuple[bytes, int, int]], block_size: int, pad: bool = True
) -> bytes:
    """Encode (name, nid, file_type) entries as one directory block."""
    nameoff = Dirent.SIZE * len(entries)
    heads = []
    for name, nid, file_type in entries:
        heads.append(Dirent(nid, nameoff, file_type).pack())
        nameoff += len(name)
    if nameoff > block_size:
        raise FormatError(f"directory block overflows: {nameoff} > {block_size}")
    data = b"".join(heads) + b"".join(name for name, _, _ in entries)
    return data.ljust(block_size, b"\0") if pad else data


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
