"""The shared shape of a fixed-size on-disk record.

A record class declares `STRUCT` (a little-endian `struct.Struct`) whose items map one to one
onto the dataclass fields, in order. `unpack` refuses short buffers with a `FormatError`;
`pack` is the exact inverse, so unknown or reserved bytes survive a round trip.
"""

from __future__ import annotations

import operator
import struct
from collections.abc import Callable
from dataclasses import fields
from typing import Any, ClassVar, Self

from rafs.errors import FormatError


def align_up(value: int, alignment: int) -> int:
    """Round `value` up to a multiple of `alignment` (a power of two or any positive int)."""
    return (value + alignment - 1) // alignment * alignment


class Record:
    """Mixin for frozen dataclasses that are one `struct` on disk."""

    __slots__ = ()

    STRUCT: ClassVar[struct.Struct]
    SIZE: ClassVar[int]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.SIZE = cls.STRUCT.size

    @classmethod
    def unpack(cls, buf: bytes | bytearray | memoryview, offset: int = 0) -> Self:
        """Decode one record from `buf` at `offset`."""
        if offset < 0 or len(buf) - offset < cls.SIZE:
            raise FormatError(
                f"{cls.__name__}: need {cls.SIZE} bytes at offset {offset}, "
                f"have {max(0, len(buf) - offset)}"
            )
        return cls(*cls.STRUCT.unpack_from(buf, offset))

    def pack(self) -> bytes:
        """Encode the record; `unpack(pack())` gives back an equal record."""
        return self.STRUCT.pack(*_field_getter(type(self))(self))

    def validate(self) -> None:
        """Raise `FormatError` when a field breaks the format's rules. Default: no rules."""


_GETTERS: dict[type, Callable[[Any], tuple[Any, ...]]] = {}


def _field_getter(kind: type) -> Callable[[Any], tuple[Any, ...]]:
    """A function giving a record's field values in order (made once per class)."""
    getter = _GETTERS.get(kind)
    if getter is None:
        names = [f.name for f in fields(kind)]
        single = operator.attrgetter(names[0])
        getter = operator.attrgetter(*names) if len(names) > 1 else lambda obj: (single(obj),)
        _GETTERS[kind] = getter
    return getter


def fixed_str(raw: bytes) -> bytes:
    """A NUL-padded fixed-width name field without its padding."""
    end = raw.find(b"\0")
    return raw if end < 0 else raw[:end]
