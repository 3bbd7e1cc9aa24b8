"""containerd filter expressions (`pkg/filters`), the subset content stores use.

A filter is terms joined by commas, all of which must hold; `walk` and `list_statuses`
return what matches *any* of their filters. A term is `FIELD OP VALUE` or a bare `FIELD`
(present). Operators: `==`, `!=` (also true when the field is absent), `~=` (regex search).
Fields: `digest` and `labels.KEY` for blobs, `ref` for ingests. A label key may be quoted
(`labels."containerd.io/uncompressed"==...`) but need not be: everything after `labels.` is
the key. Values may be quoted with `"..."` (backslash escapes) or, for `~=`, `/.../`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from rafs.errors import InvalidArgument

if TYPE_CHECKING:
    from rafs.content import Info, Status

Field = Callable[[str], str | None]
"""Look up a field path in one object; `None` when absent."""

_OPERATORS = ("==", "!=", "~=")


@dataclass(frozen=True)
class Term:
    field: str
    operator: str | None
    value: str = ""

    def matches(self, lookup: Field) -> bool:
        found = lookup(self.field)
        if self.operator is None:
            return found is not None
        if self.operator == "==":
            return found is not None and found == self.value
        if self.operator == "!=":
            return (found or "") != self.value
        return re.search(self.value, found or "") is not None


def _unquote(text: str, what: str) -> str:
    text = text.strip()
    if len(text) >= 2 and text[0] == text[-1] == '"':
        return re.sub(r"\\(.)", r"\1", text[1:-1])
    if '"' in text:
        raise InvalidArgument(f"filter: unbalanced quote in {what} {text!r}")
    return text


def _split(text: str, separator: str) -> list[str]:
    """Split on `separator` outside double quotes."""
    parts: list[str] = []
    current: list[str] = []
    quoted = escaped = False
    for char in text:
        if escaped:
            escaped = False
        elif char == "\\" and quoted:
            escaped = True
        elif char == '"':
            quoted = not quoted
        elif char == separator and not quoted:
            parts.append("".join(current))
            current = []
            continue
        current.append(char)
    parts.append("".join(current))
    return parts


def _parse_term(text: str) -> Term:
    quoted, index = False, 0
    while index < len(text) - 1:
        if text[index] == '"':
            quoted = not quoted
        elif not quoted and text[index : index + 2] in _OPERATORS:
            field, op, value = text[:index], text[index : index + 2], text[index + 2 :]
            value = value.strip()
            if op == "~=" and len(value) >= 2 and value[0] == value[-1] == "/":
                value = value[1:-1]
            else:
                value = _unquote(value, "value")
            if op == "~=":
                try:
                    re.compile(value)
                except re.error as exc:
                    raise InvalidArgument(f"filter: bad regex {value!r}: {exc}") from None
            return Term(_parse_field(field), op, value)
        index += 1
    return Term(_parse_field(text), None)


def _parse_field(text: str) -> str:
    text = text.strip()
    if text.startswith("labels."):
        key = _unquote(text[len("labels.") :], "label key")
        if key:
            return f"labels.{key}"
    elif text and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", text):
        return text
    raise InvalidArgument(f"filter: bad field {text!r}")


def parse(expression: str) -> list[Term]:
    """Parse one filter (`InvalidArgument` if malformed)."""
    if not expression.strip():
        raise InvalidArgument("filter: empty expression")
    return [_parse_term(term) for term in _split(expression, ",")]


def matcher(filters: Iterable[str]) -> Callable[[Field], bool]:
    """A predicate true when any filter's terms all match (always true with no filters)."""
    parsed = [parse(expression) for expression in filters]
    if not parsed:
        return lambda lookup: True
    return lambda lookup: any(all(t.matches(lookup) for t in terms) for terms in parsed)


def info_lookup(info: Info) -> Field:
    """containerd's `AdaptInfo`: fields `digest` and `labels.KEY` (`size` is not filterable)."""

    def lookup(path: str) -> str | None:
        if path == "digest":
            return str(info.digest)
        if path.startswith("labels."):
            return info.labels.get(path[len("labels.") :])
        return None

    return lookup


def status_lookup(status: Status) -> Field:
    """containerd's `adaptStatus`: field `ref`."""
    return lambda path: status.ref if path == "ref" else None
