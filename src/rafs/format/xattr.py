"""EROFS inline extended attributes as RAFS v6 stores them.

Right after the fixed inode comes a 12-byte ibody header, then entries: a 4-byte entry
header (suffix length, name index, value size), the name suffix, the value, zero padding to
4 bytes. A name is stored as a prefix index plus the suffix after that prefix. RAFS never
uses shared xattrs. `i_xattr_icount` is `(body_size - 12) / 4 + 1`, or 0 without xattrs.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from rafs.errors import FormatError, InvalidArgument
from rafs.format.record import Record, align_up

# (name index, prefix) in the order nydus matches them; the first prefix that matches wins.
XATTR_PREFIXES: tuple[tuple[int, bytes], ...] = (
    (1, b"user."),  # EROFS_XATTR_INDEX_USER
    (2, b"system.posix_acl_access"),  # EROFS_XATTR_INDEX_POSIX_ACL_ACCESS
    (3, b"system.posix_acl_default"),  # EROFS_XATTR_INDEX_POSIX_ACL_DEFAULT
    (4, b"trusted."),  # EROFS_XATTR_INDEX_TRUSTED
    (6, b"security."),  # EROFS_XATTR_INDEX_SECURITY
)
_PREFIX_OF_INDEX = dict(XATTR_PREFIXES)
XATTR_MAX_VALUE = 0xFFFF


@dataclass(frozen=True, slots=True)
class XattrIbodyHeader(Record):
    """`erofs_xattr_ibody_header`, 12 bytes (no name filter, no shared xattrs)."""

    STRUCT = struct.Struct("<IB7s")

    h_name_filter: int = 0
    h_shared_count: int = 0
    h_reserved: bytes = bytes(7)


@dataclass(frozen=True, slots=True)
class XattrEntry(Record):
    """`erofs_xattr_entry`, 4 bytes, followed by suffix and value."""

    STRUCT = struct.Struct("<BBH")

    e_name_len: int
    e_name_index: int
    e_value_size: int


def find_namespace(name: bytes) -> tuple[int, bytes] | None:
    """(name index, suffix) of a full xattr name in one of the five RAFS namespaces, else
    None."""
    for index, prefix in XATTR_PREFIXES:
        if name.startswith(prefix):
            return index, name[len(prefix) :]
    return None


def split_name(name: bytes) -> tuple[int, bytes]:
    """(name index, suffix) of a full xattr name; only the five RAFS namespaces are allowed."""
    split = find_namespace(name)
    if split is None:
        raise InvalidArgument(f"xattr {name!r}: namespace not supported by RAFS v6")
    return split


def sorted_xattrs(xattrs: dict[bytes, bytes]) -> list[tuple[int, bytes, bytes]]:
    """(index, suffix, value) in the stable order this package writes: by index then suffix."""
    items = []
    for name, value in xattrs.items():
        index, suffix = split_name(name)
        if len(suffix) > 255:
            raise InvalidArgument(f"xattr {name!r}: name too long")
        if len(value) > XATTR_MAX_VALUE:
            raise InvalidArgument(f"xattr {name!r}: value of {len(value)} bytes is too large")
        items.append((index, suffix, value))
    items.sort(key=lambda item: (item[0], item[1]))
    return items


def xattr_body_size(xattrs: dict[bytes, bytes]) -> int:
    """Bytes of the inline xattr body (0 without xattrs)."""
    if not xattrs:
        return 0
    return XattrIbodyHeader.SIZE + sum(
        align_up(XattrEntry.SIZE + len(split_name(name)[1]) + len(value), 4)
        for name, value in xattrs.items()
    )


def xattr_icount(body_size: int) -> int:
    """`i_xattr_icount` for an inline body of `body_size` bytes."""
    return 0 if body_size == 0 else (body_size - XattrIbodyHeader.SIZE) // 4 + 1


def body_size_of_icount(icount: int) -> int:
    """Inverse of `xattr_icount`."""
    return 0 if icount == 0 else XattrIbodyHeader.SIZE + (icount - 1) * 4


def pack_xattrs(xattrs: dict[bytes, bytes]) -> bytes:
    """Encode the inline xattr body."""
    if not xattrs:
        return b""
    parts = [XattrIbodyHeader().pack()]
    for index, suffix, value in sorted_xattrs(xattrs):
        entry = XattrEntry(len(suffix), index, len(value)).pack() + suffix + value
        parts.append(entry.ljust(align_up(len(entry), 4), b"\0"))
    return b"".join(parts)


def unpack_xattrs(body: bytes | memoryview) -> dict[bytes, bytes]:
    """Decode an inline xattr body into full names and values."""
    header = XattrIbodyHeader.unpack(body)
    if header.h_shared_count:
        raise FormatError("shared xattrs are not supported by RAFS v6")
    result: dict[bytes, bytes] = {}
    pos = XattrIbodyHeader.SIZE
    while pos + XattrEntry.SIZE <= len(body):
        entry = XattrEntry.unpack(body, pos)
        prefix = _PREFIX_OF_INDEX.get(entry.e_name_index)
        if prefix is None:
            raise FormatError(f"unknown xattr name index {entry.e_name_index}")
        start = pos + XattrEntry.SIZE
        end = start + entry.e_name_len + entry.e_value_size
        if end > len(body):
            raise FormatError("xattr entry runs past the inode's xattr body")
        suffix = bytes(body[start : start + entry.e_name_len])
        result[prefix + suffix] = bytes(body[start + entry.e_name_len : end])
        pos = align_up(end, 4)
    return result

