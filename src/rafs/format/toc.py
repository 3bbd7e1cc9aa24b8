"""The ToC at the end of a Nydus blob, and the tar headers that close each section.

A Nydus layer is "tar-like": each section's bytes come first, then a 512-byte GNU tar
header naming the section (`image.blob`, `blob.meta`, `blob.digest`, `image.boot`,
`rafs.blob.toc`). Readers walk from the end. The ToC section is an array of 128-byte
entries giving each section's offset, sizes, compression and SHA-256.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass

from rafs.errors import FormatError
from rafs.format.record import Record, fixed_str

TAR_BLOCK = 512
TOC_NAME = b"rafs.blob.toc"
SECTION_BLOB = b"image.blob"
SECTION_BLOB_META = b"blob.meta"
SECTION_BLOB_META_HEADER = b"blob.meta.header"
SECTION_BLOB_DIGEST = b"blob.digest"
SECTION_BOOTSTRAP = b"image.boot"


class TocFlags(enum.IntFlag):
    """How a ToC entry's data is stored."""

    COMPRESSION_NONE = 0x1  # raw
    COMPRESSION_ZSTD = 0x2  # one zstd frame
    COMPRESSION_LZ4_BLOCK = 0x4  # raw LZ4 block


@dataclass(frozen=True, slots=True)
class TocEntry(Record):
    """`TocEntry`, 128 bytes."""

    STRUCT = struct.Struct("<II16s32sQQQ48s")

    flags: int
    reserved1: int
    name: bytes
    uncompressed_digest: bytes
    compressed_offset: int
    compressed_size: int
    uncompressed_size: int
    reserved2: bytes = bytes(48)

    @property
    def section(self) -> bytes:
        return fixed_str(self.name)

    def validate(self) -> None:
        if self.flags not in (TocFlags.COMPRESSION_NONE, TocFlags.COMPRESSION_ZSTD,
                              TocFlags.COMPRESSION_LZ4_BLOCK):  # fmt: skip
            raise FormatError(f"ToC entry {self.section!r}: bad flags {self.flags:#x}")


def _octal(value: int, width: int) -> bytes:
    return b"%0*o\0" % (width - 1, value)


def pack_section_header(name: bytes, size: int) -> bytes:
    """A GNU tar header as nydus writes after a section (no mode, owner or mtime)."""
    if len(name) > 100:
        raise FormatError(f"section name {name!r} too long")
    header = bytearray(TAR_BLOCK)
    header[0 : len(name)] = name
    if size < 8**11:
        header[124:136] = _octal(size, 12)
    else:  # GNU base-256 for sizes of 8 GiB and more
        header[124:136] = b"\x80" + size.to_bytes(11, "big")
    header[136:148] = _octal(0, 12)
    header[156:157] = b"0"
    header[257:265] = b"ustar  \0"
    header[148:156] = b" " * 8
    header[148:156] = b"%07o\0" % sum(header)
    return bytes(header)


def parse_section_header(header: bytes | memoryview, where: str) -> tuple[bytes, int]:
    """(name, size) of a section tar header; a `FormatError` if it is not a valid header."""
    if len(header) != TAR_BLOCK:
        raise FormatError(f"{where}: truncated tar header")
    raw = bytes(header)
    stored = raw[148:156].split(b"\0", 1)[0].strip(b" ")
    try:
        checksum = int(stored, 8)
    except ValueError:
        raise FormatError(f"{where}: tar header has no valid checksum") from None
    if checksum != sum(raw[:148]) + 8 * 32 + sum(raw[156:]):
        raise FormatError(f"{where}: tar header checksum mismatch")
    size_field = raw[124:136]
    if size_field[0] & 0x80:
        size = int.from_bytes(size_field[1:], "big")
    else:
        digits = size_field.split(b"\0", 1)[0].strip(b" ")
        try:
            size = int(digits, 8) if digits else 0
        except ValueError:
            raise FormatError(f"{where}: tar header has a bad size field") from None
    return fixed_str(raw[:100]), size
