"""Digest parsing, hashing helpers, chain ids and content filter parsing."""

from __future__ import annotations

import hashlib
import io

import pytest

from rafs.content import apply_label_update, validate_labels
from rafs.content.filters import matcher, parse
from rafs.digest import Digest, HashingReader, chain_id, digest_stream
from rafs.errors import InvalidArgument

A = "sha256:" + "a" * 64
B = "sha256:" + "b" * 64
C = "sha256:" + "c" * 64


def test_digest_parse() -> None:
    d = Digest(A)
    assert (d, d.algorithm, d.hex) == (A, "sha256", "a" * 64)
    assert Digest(d) is d
    assert Digest.from_hex("b" * 64) == B
    assert Digest.of(b"x") == "sha256:" + hashlib.sha256(b"x").hexdigest()
    for bad in ("", "sha256:", "sha256:" + "A" * 64, "sha512:" + "a" * 128, "a" * 64,
                "sha256:" + "a" * 63, " " + A):  # fmt: skip
        with pytest.raises(InvalidArgument):
            Digest(bad)


def test_hashing_helpers() -> None:
    reader = HashingReader(io.BytesIO(b"hello world"))
    assert reader.read(5) + reader.read() == b"hello world"
    assert (reader.digest(), reader.size) == (Digest.of(b"hello world"), 11)
    assert digest_stream(io.BytesIO(b"abc")) == (Digest.of(b"abc"), 3)


def test_chain_id() -> None:
    assert chain_id([A]) == A
    ab = "sha256:" + hashlib.sha256(f"{A} {B}".encode()).hexdigest()
    assert chain_id([A, B]) == ab
    assert chain_id([A, B, C]) == "sha256:" + hashlib.sha256(f"{ab} {C}".encode()).hexdigest()
    with pytest.raises(InvalidArgument):
        chain_id([])
    with pytest.raises(InvalidArgument):
        chain_id([A, "sha256:nope"])


def test_filter_parse() -> None:
    assert [(t.field, t.operator, t.value) for t in parse('labels."a.b/c"==" x,y ",ref~=/^n/')] \
        == [("labels.a.b/c", "==", " x,y "), ("ref", "~=", "^n")]  # fmt: skip
    labels = {"k": "v"}
    match = matcher(["labels.k==v,labels.z!=1"])
    assert match(lambda p: labels.get(p.removeprefix("labels.")))
    assert not matcher(["labels.k==w"])(lambda p: labels.get(p.removeprefix("labels.")))
    assert matcher([])(lambda p: None)


def test_label_rules() -> None:
    validate_labels({"k": "v" * 4095})
    with pytest.raises(InvalidArgument):
        validate_labels({"k": "v" * 4096})
    with pytest.raises(InvalidArgument):
        validate_labels({"": "v"})
    assert apply_label_update({"a": "1"}, {"b": "2"}, ("labels.b",)) == {"a": "1", "b": "2"}
    assert apply_label_update({"a": "1"}, {"b": "2"}, ()) == {"b": "2"}
    with pytest.raises(InvalidArgument):
        apply_label_update({}, {}, ("labels.",))
