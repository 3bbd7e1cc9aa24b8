"""A streaming reader of tar archives, made for building layers fast.

Python's `tarfile` reads stream-mode data in 10 KiB pieces through several wrappers and
keeps every header it has seen; on a kernel source tree (84k entries) that is most of the
cost of a build. This reader parses each 512-byte header directly, hands file data out as a
bounded view of the underlying stream (large reads go straight through), and keeps nothing.

Understood: POSIX ustar (with `prefix`), GNU (`L`/`K` long names and links, base-256
numbers), PAX local (`x`) and global (`g`) records: `path`, `linkpath`, `size`, `uid`, `gid`,
`mtime` (exact decimal), `SCHILY.xattr.*` (raw bytes). libarchive's `LIBARCHIVE.xattr.*`
records are not read, as GNU tar, Go's archive/tar (containerd) and nydus do not: bsdtar
writes each xattr as a `SCHILY.xattr.*` record too. Old-style names ending in "/" are
directories. Checksums are verified. The archive ends at the first zero block; a stream
that ends before one is truncated. The rest of the stream is read, so that a compressed
source verifies its own trailer.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import IO

from rafs.errors import FormatError

BLOCK = 512
MAX_META_SIZE = 16 << 20  # PAX records or GNU long names larger than this are refused
XATTR_PREFIX = b"SCHILY.xattr."
_ZERO_BLOCK = bytes(BLOCK)

# Entry types (typeflag).
REGULAR = b"0"
HARDLINK = b"1"
SYMLINK = b"2"
CHARDEV = b"3"
BLOCKDEV = b"4"
DIRECTORY = b"5"
FIFO = b"6"
CONTIGUOUS = b"7"
PAX_LOCAL = b"x"
PAX_GLOBAL = b"g"
GNU_LONGNAME = b"L"
GNU_LONGLINK = b"K"
GNU_SPARSE = b"S"
# Entry types whose header is never followed by data, whatever their size field says.
_NO_DATA = frozenset((HARDLINK, SYMLINK, CHARDEV, BLOCKDEV, DIRECTORY, FIFO))


@dataclass(slots=True)
class TarEntry:
    """One archive member, after long names and PAX records are applied."""

    name: bytes
    type: bytes
    mode: int
    uid: int
    gid: int
    size: int
    mtime: int
    mtime_nsec: int
    linkname: bytes
    devmajor: int
    devminor: int
    xattrs: dict[bytes, bytes] = field(default_factory=dict)
    sparse: bool = False


def _number(field_bytes: bytes, what: str, offset: int) -> int:
    """An octal (NUL/space padded) or GNU base-256 numeric header field."""
    try:  # the common case: octal digits, maybe space padded, ended by NUL
        return int(field_bytes.partition(b"\0")[0] or b"0", 8)
    except ValueError:
        pass
    if field_bytes[0] & 0x80:
        value = int.from_bytes(field_bytes[1:], "big")
        return value if field_bytes[0] == 0x80 else value - (1 << (8 * len(field_bytes) - 1))
    digits = field_bytes.strip(b" \0")
    if not digits:
        return 0
    try:
        return int(digits.split(b"\0", 1)[0].strip(), 8)
    except ValueError:
        raise FormatError(f"tar header at {offset}: bad {what} field {field_bytes!r}") from None


def _check_checksum(header: bytes, offset: int) -> None:
    stored = _number(header[148:156], "checksum", offset)
    unsigned = sum(header[:148]) + sum(header[156:]) + 8 * 32
    if stored != unsigned:
        signed = unsigned - 256 * sum(1 for b in header[:148] + header[156:] if b > 127)
        if stored != signed:
            raise FormatError(f"tar header at {offset}: checksum mismatch")


def _parse_pax(data: bytes, offset: int) -> dict[bytes, bytes]:
    """PAX records `"<len> <key>=<value>\\n"`; values are kept as raw bytes."""
    records: dict[bytes, bytes] = {}
    pos = 0
    while pos < len(data):
        if data[pos] == 0:  # some writers pad the block with NULs
            break
        space = data.find(b" ", pos)
        try:
            length = int(data[pos:space]) if space > pos else -1
        except ValueError:
            length = -1
        if length <= 0 or pos + length > len(data) or data[pos + length - 1] != 0x0A:
            raise FormatError(f"tar header at {offset}: malformed PAX record")
        key, sep, value = data[space + 1 : pos + length - 1].partition(b"=")
        if not sep:
            raise FormatError(f"tar header at {offset}: PAX record without '='")
        records[key] = value
        pos += length
    return records


_XATTR_ESCAPE = re.compile(rb"%(25|3D)")


def _unescape_xattr_name(name: bytes) -> bytes:
    """GNU tar writes "=" and "%" in xattr names as %3D and %25 (they delimit PAX records)."""
    if b"%" not in name:
        return name
    return _XATTR_ESCAPE.sub(lambda m: b"%" if m.group(1) == b"25" else b"=", name)


def _pax_int(records: dict[bytes, bytes], key: bytes, default: int, offset: int) -> int:
    if key not in records:
        return default
    try:
        return int(records[key])
    except ValueError:
        raise FormatError(f"tar header at {offset}: bad PAX {key.decode()}") from None


def _pax_mtime(text: bytes, offset: int) -> tuple[int, int]:
    whole, _, fraction = text.partition(b".")
    try:
        seconds = int(whole)
        nanoseconds = int((fraction + b"000000000")[:9]) if fraction else 0
    except ValueError:
        raise FormatError(f"tar header at {offset}: bad PAX mtime {text!r}") from None
    if whole.startswith(b"-") and nanoseconds:
        seconds, nanoseconds = seconds - 1, 1_000_000_000 - nanoseconds
    return seconds, nanoseconds


class EntryData:
    """The data of the current entry: reads never go past its end."""

    __slots__ = ("_remaining", "_stream")

    def __init__(self, stream: IO[bytes], size: int) -> None:
        self._stream = stream
        self._remaining = size

    def read(self, size: int = -1) -> bytes:
        if size < 0 or size > self._remaining:
            size = self._remaining
        data = self._stream.read(size)
        self._remaining -= len(data)
        return data

    def skip_rest(self) -> None:
        while self._remaining:
            if not self.read(min(self._remaining, 1 << 20)):
                raise FormatError("tar archive ends inside a file's data")


class TarStream:
    """Iterate over the entries of a tar stream; see the module docstring."""

    def __init__(self, stream: IO[bytes]) -> None:
        self._stream = stream
        self._offset = 0
        self._global: dict[bytes, bytes] = {}

    def _read_exact(self, size: int) -> bytes:
        data = self._stream.read(size)
        while len(data) < size:
            more = self._stream.read(size - len(data))
            if not more:
                raise FormatError(f"tar archive truncated at offset {self._offset + len(data)}")
            data += more
        self._offset += size
        return data

    def _drain(self) -> None:
        """Read to the end, so a compressed stream checks its trailer (gzip CRC, zstd frame)."""
        while self._stream.read(1 << 20):
            pass

    def _read_meta(self, size: int, offset: int) -> bytes:
        if size > MAX_META_SIZE:
            raise FormatError(f"tar header at {offset}: extended header of {size} bytes")
        data = self._read_exact(size)
        self._read_exact(-size % BLOCK)
        return data

    def __iter__(self) -> Iterator[tuple[TarEntry, EntryData]]:
        long_name = long_link = None
        pax: dict[bytes, bytes] = {}
        while True:
            offset = self._offset
            header = self._stream.read(BLOCK)
            while 0 < len(header) < BLOCK:
                more = self._stream.read(BLOCK - len(header))
                if not more:
                    break
                header += more
            if header == _ZERO_BLOCK:
                self._drain()
                return
            if len(header) < BLOCK:
                if not header:
                    raise FormatError(f"tar archive ends at offset {offset} without its "
                                      "end-of-archive marker (truncated?)")  # fmt: skip
                raise FormatError(f"tar archive truncated at offset {offset}")
            self._offset += BLOCK
            _check_checksum(header, offset)
            kind = header[156:157]
            size = _number(header[124:136], "size", offset)
            if size < 0:
                raise FormatError(f"tar header at {offset}: negative size")
            if kind == PAX_LOCAL:
                pax.update(_parse_pax(self._read_meta(size, offset), offset))
                continue
            if kind == PAX_GLOBAL:
                self._global.update(_parse_pax(self._read_meta(size, offset), offset))
                continue
            if kind == GNU_LONGNAME:
                long_name = self._read_meta(size, offset).split(b"\0", 1)[0]
                continue
            if kind == GNU_LONGLINK:
                long_link = self._read_meta(size, offset).split(b"\0", 1)[0]
                continue
            entry = self._entry(header, kind, size, offset, long_name, long_link, pax)
            long_name = long_link = None
            pax = {}
            stored = 0 if entry.type in _NO_DATA else entry.size
            data = EntryData(self._stream, stored)
            yield entry, data
            data.skip_rest()
            self._offset += stored
            self._read_exact(-stored % BLOCK)

    def _entry(self, header: bytes, kind: bytes, size: int, offset: int,
               long_name: bytes | None, long_link: bytes | None,
               local: dict[bytes, bytes]) -> TarEntry:  # fmt: skip
        records = {**self._global, **local} if self._global else local
        name = header[0:100].split(b"\0", 1)[0]
        if header[257:263] == b"ustar\0" and header[345] != 0:
            name = header[345:500].split(b"\0", 1)[0] + b"/" + name
        name = records.get(b"path", long_name or name)
        linkname = records.get(b"linkpath", long_link or header[157:257].split(b"\0", 1)[0])
        if kind == b"\0" and name.endswith(b"/"):
            kind = DIRECTORY
        mtime, mtime_nsec = _number(header[136:148], "mtime", offset), 0
        if b"mtime" in records:
            mtime, mtime_nsec = _pax_mtime(records[b"mtime"], offset)
        entry = TarEntry(
            name=name,
            type=REGULAR if kind == b"\0" else kind,
            mode=_number(header[100:108], "mode", offset),
            uid=_pax_int(records, b"uid", _number(header[108:116], "uid", offset), offset),
            gid=_pax_int(records, b"gid", _number(header[116:124], "gid", offset), offset),
            size=_pax_int(records, b"size", size, offset),
            mtime=mtime,
            mtime_nsec=mtime_nsec,
            linkname=linkname,
            devmajor=0,
            devminor=0,
            sparse=kind == GNU_SPARSE
            or bool(records and any(k.startswith(b"GNU.sparse.") for k in records)),
        )
        if kind in (CHARDEV, BLOCKDEV):
            entry.devmajor = _number(header[329:337], "devmajor", offset)
            entry.devminor = _number(header[337:345], "devminor", offset)
        if entry.size < 0:
            raise FormatError(f"tar header at {offset}: negative size")
        if records:
            for key, value in records.items():
                if key.startswith(XATTR_PREFIX):
                    entry.xattrs[_unescape_xattr_name(key[len(XATTR_PREFIX) :])] = value
        return entry
