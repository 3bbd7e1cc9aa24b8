"""`rafs content --containerd SOCKET`: the same commands against a real containerd."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from rafs.cli import main
from rafs.errors import NotFound
from tests.support.containerd import Containerd, containerd  # noqa: F401  (fixture)


def _run(capsys: pytest.CaptureFixture[bytes], *args: str) -> tuple[int, bytes, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err.decode()


def test_content_cli_against_containerd(
    containerd: Containerd, tmp_path: Path, capsysbinary: pytest.CaptureFixture[bytes]  # noqa: F811
) -> None:
    where = ("content", "--containerd", str(containerd.socket), "--namespace", "rafs-cli")
    payload = b"blob for containerd\n" * 1000
    source = tmp_path / "payload"
    source.write_bytes(payload)
    digest = "sha256:" + hashlib.sha256(payload).hexdigest()

    code, out, _ = _run(capsysbinary, *where, "ingest", str(source), "--label", "kind=test")
    assert (code, out.decode().strip()) == (0, digest)
    code, out, _ = _run(capsysbinary, *where, "info", digest, "--json")
    info = json.loads(out)
    assert (info["digest"], info["size"], info["labels"]) == (digest, len(payload),
                                                             {"kind": "test"})  # fmt: skip
    code, out, _ = _run(capsysbinary, *where, "get", digest)
    assert out == payload
    code, out, _ = _run(capsysbinary, *where, "label", digest, "kind=", "other=x")
    code, out, _ = _run(capsysbinary, *where, "ls", "labels.other==x")
    assert digest in out.decode() and "kind=" not in out.decode()
    code, _, _ = _run(capsysbinary, *where, "rm", digest)
    assert code == 0
    code, _, err = _run(capsysbinary, *where, "info", digest)
    assert code == NotFound.exit_code and err.startswith("rafs: ") and err.count("\n") == 1
