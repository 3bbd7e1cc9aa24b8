"""`rafs content`: ls, info, get, ingest, label, rm and their one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rafs.cli import main
from rafs.content.local import LocalStore
from rafs.digest import Digest


def run(capsysbinary: pytest.CaptureFixture[bytes], *args: object) -> tuple[int, bytes, str]:
    code = main([str(a) for a in args])
    out, err = capsysbinary.readouterr()
    return code, out, err.decode()


def test_content_cli_round_trip(tmp_path: Path, capsysbinary: pytest.CaptureFixture[bytes]
                                ) -> None:  # fmt: skip
    store = tmp_path / "store"
    src = tmp_path / "file"
    src.write_bytes(b"payload\n" * 1000)
    digest = Digest.of(src.read_bytes())

    code, out, _ = run(capsysbinary, "content", "--store", store, "ingest", src,
                       "--label", "a=1", "--label", "b=x=y")  # fmt: skip
    assert (code, out.decode()) == (0, f"{digest}\n")
    blob = store / "blobs" / "sha256" / digest.hex
    assert blob.read_bytes() == src.read_bytes()

    # present already: success, and the labels are set on the existing blob
    code, out, _ = run(capsysbinary, "content", "--store", store, "ingest", src, "--ref", "r",
                       "--label", "c=3")  # fmt: skip
    assert (code, out.decode()) == (0, f"{digest}\n")
    assert LocalStore(store).list_statuses() == []

    code, out, _ = run(capsysbinary, "content", "--store", store, "info", digest, "--json")
    info = json.loads(out)
    assert (info["digest"], info["size"]) == (digest, 8000)
    assert info["labels"] == {"a": "1", "b": "x=y", "c": "3"}

    code, out, _ = run(capsysbinary, "content", "--store", store, "label", digest, "a=", "d=4")
    assert code == 0
    assert dict(LocalStore(store).info(digest).labels) == {"b": "x=y", "c": "3", "d": "4"}

    code, out, _ = run(capsysbinary, "content", "--store", store, "ls")
    assert out.decode() == f"{digest}\t8000\tb=x=y,c=3,d=4\n"
    code, out, _ = run(capsysbinary, "content", "--store", store, "ls", "labels.d==5")
    assert (code, out) == (0, b"")
    code, out, _ = run(capsysbinary, "content", "--store", store, "info", digest)
    assert f"digest: {digest}" in out.decode()

    code, out, _ = run(capsysbinary, "content", "--store", store, "get", digest)
    assert (code, out) == (0, src.read_bytes())

    code, out, _ = run(capsysbinary, "content", "--store", store, "rm", digest)
    assert (code, out) == (0, b"")
    assert not blob.exists()


@pytest.mark.parametrize(
    ("args", "exit_code", "message"),
    [
        (["info", "sha256:" + "0" * 64], 3, "not found"),
        (["get", "sha256:abc"], 2, "not a digest"),
        (["rm", "sha256:" + "0" * 64], 3, "not found"),
        (["label", "sha256:" + "0" * 64, "novalue"], 2, "want KEY=VALUE"),
        (["ls", "labels.k~=("], 2, "bad regex"),
    ],
)
def test_content_cli_errors(tmp_path: Path, capsysbinary: pytest.CaptureFixture[bytes],
                            args: list[str], exit_code: int, message: str) -> None:  # fmt: skip
    LocalStore(tmp_path)
    code, _, err = run(capsysbinary, "content", "--store", tmp_path, *args)
    assert code == exit_code
    assert message in err and err.count("\n") == 1 and err.startswith("rafs: ")


def test_content_cli_missing_store(tmp_path: Path, capsysbinary: pytest.CaptureFixture[bytes]
                                   ) -> None:  # fmt: skip
    code, _, err = run(capsysbinary, "content", "--store", tmp_path / "absent", "ls")
    assert code == 3 and "no such content store" in err
    assert not (tmp_path / "absent").exists()
