"""A wheel built from the tree is a complete rafs: installed into a fresh venv (no source tree,
no `make venv`), its `rafs content --containerd` talks to a real containerd, which needs the
gRPC stubs that the build generates."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import venv
from pathlib import Path

import pytest

from tests.support.containerd import Containerd, containerd  # noqa: F401  (fixture)

REPO_ROOT = Path(__file__).resolve().parents[2]


def _run(argv: list[str], cwd: Path, timeout: float = 600) -> str:
    """Run without PYTHONPATH, so a source tree on it cannot stand in for the install."""
    env = {name: value for name, value in os.environ.items() if name != "PYTHONPATH"}
    result = subprocess.run(argv, capture_output=True, text=True, cwd=cwd, timeout=timeout,
                            env=env, check=False)  # fmt: skip
    if result.returncode != 0:
        pytest.fail(f"{' '.join(argv)} exited {result.returncode}:\n{result.stderr[-3000:]}",
                    pytrace=False)  # fmt: skip
    return result.stdout


@pytest.mark.slow
def test_a_wheel_installed_in_a_fresh_venv_talks_to_containerd(
    containerd: Containerd, tmp_path: Path  # noqa: F811
) -> None:
    wheels = tmp_path / "wheels"
    _run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", str(REPO_ROOT),
          "-w", str(wheels)], cwd=tmp_path)  # fmt: skip
    (wheel,) = wheels.glob("rafs-*.whl")
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    _run([str(env_dir / "bin" / "python"), "-m", "pip", "install", "--quiet", str(wheel)],
         cwd=tmp_path)  # fmt: skip
    # Run from a folder without the source tree, so nothing but the installed wheel is imported.
    rafs = str(env_dir / "bin" / "rafs")
    where = ["content", "--containerd", str(containerd.socket), "--namespace", "rafs-wheel"]
    payload = tmp_path / "payload"
    payload.write_bytes(b"from an installed wheel\n" * 100)
    digest = "sha256:" + hashlib.sha256(payload.read_bytes()).hexdigest()

    assert _run([rafs, *where, "ingest", str(payload)], cwd=tmp_path).strip() == digest
    info = json.loads(_run([rafs, *where, "info", digest, "--json"], cwd=tmp_path))
    assert (info["digest"], info["size"]) == (digest, payload.stat().st_size)
    origin = _run([str(env_dir / "bin" / "python"), "-c",
                   "import rafs.content.containerd as m; print(m.GENERATED)"], cwd=tmp_path)
    assert Path(origin.strip()).is_relative_to(env_dir), origin
