"""Reading and writing the JSON documents of the OCI image spec, keeping what we don't know.

Manifests, indexes, configs and descriptors are JSON objects that other tools extend freely
(new spec fields, vendor keys). A document parsed here keeps every key it does not model in
an `extra` mapping and writes it back, so a round trip loses nothing. New documents are
written as canonical JSON: keys sorted, no insignificant whitespace, UTF-8 (the form of
go-canonical/json). Parsing errors are `FormatError`s naming the document and the key.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

from rafs.digest import Digest
from rafs.errors import FormatError, InvalidArgument

MAX_DEPTH = 100
"""Deepest nesting of objects and arrays a document may have (real ones have under 10)."""


def canonical_json(value: object) -> bytes:
    """`value` as canonical JSON bytes (a lone surrogate, which UTF-8 cannot hold, is
    written as its `\\uXXXX` escape)."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return text.encode("utf-8", "backslashreplace")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text[:40]} is out of range")
    return value


def _no_constant(text: str) -> None:
    raise ValueError(f"{text} is not a JSON number")


def load_object(data: bytes, what: str) -> dict[str, Any]:
    """Parse `data` (UTF-8) as one JSON object, nested at most `MAX_DEPTH` deep."""
    try:
        value = json.loads(data.decode(), parse_float=_finite, parse_constant=_no_constant)
    except ValueError as exc:  # also bad UTF-8, and integers over 4300 digits
        raise FormatError(f"{what}: not JSON ({str(exc)[:200]})") from None
    except RecursionError:
        raise FormatError(f"{what}: nested deeper than {MAX_DEPTH}") from None
    if not isinstance(value, dict):
        raise FormatError(f"{what}: not a JSON object")
    level: list[Any] = [value]
    for _ in range(MAX_DEPTH):
        level = [v for c in level for v in (c.values() if isinstance(c, dict) else c)
                 if isinstance(v, dict | list)]  # fmt: skip
        if not level:
            return value
    raise FormatError(f"{what}: nested deeper than {MAX_DEPTH}")


class Fields:
    """Typed access to the keys of one JSON object; `extra()` is every key not asked for."""

    def __init__(self, value: object, what: str) -> None:
        if not isinstance(value, dict):
            raise FormatError(f"{what}: not a JSON object")
        self._value: dict[str, Any] = value
        self._what = what
        self._used: set[str] = set()

    def _get(self, key: str, kind: type | tuple[type, ...], required: bool) -> Any:
        self._used.add(key)
        value = self._value.get(key)
        if value is None:
            if required:
                raise FormatError(f"{self._what}: {key!r} is missing")
            return None
        if not isinstance(value, kind) or (isinstance(value, bool) and kind is int):
            raise FormatError(f"{self._what}: {key!r} has the wrong type")
        return value

    def text(self, key: str, required: bool = False) -> str | None:
        value: str | None = self._get(key, str, required)
        return value

    def integer(self, key: str, required: bool = False) -> int | None:
        value: int | None = self._get(key, int, required)
        return value

    def flag(self, key: str) -> bool:
        return bool(self._get(key, bool, False))

    def digest(self, key: str) -> Digest:
        value = self._get(key, str, True)
        try:
            return Digest(value)
        except InvalidArgument:
            raise FormatError(f"{self._what}: {key!r} is not a sha256 digest: {value!r}") from None

    def digests(self, key: str) -> tuple[Digest, ...]:
        values = self._get(key, list, True)
        try:
            return tuple(Digest(v) for v in values)
        except InvalidArgument:
            raise FormatError(f"{self._what}: {key!r} is not a list of sha256 digests") from None

    def str_list(self, key: str) -> tuple[str, ...]:
        values = self._get(key, list, False) or []
        if not all(isinstance(v, str) for v in values):
            raise FormatError(f"{self._what}: {key!r} is not a list of strings")
        return tuple(values)

    def str_map(self, key: str) -> dict[str, str]:
        values = self._get(key, dict, False) or {}
        if not all(isinstance(v, str) for v in values.values()):
            raise FormatError(f"{self._what}: {key!r} is not a map of strings")
        return dict(values)

    def object(self, key: str, required: bool = False) -> dict[str, Any] | None:
        value: dict[str, Any] | None = self._get(key, dict, required)
        return value

    def objects(self, key: str, required: bool = False) -> list[Any]:
        value: list[Any] | None = self._get(key, list, required)
        return value or []

    def extra(self) -> dict[str, Any]:
        return {k: v for k, v in self._value.items() if k not in self._used}


def with_extra(known: Mapping[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    """The JSON object for a document: its known keys (None values left out), then `extra`."""
    out = {k: v for k, v in known.items() if v is not None}
    for key, value in extra.items():
        out.setdefault(key, value)
    return out
