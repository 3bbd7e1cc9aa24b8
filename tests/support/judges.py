"""The real Nydus tools as judges: where `make judges` put them, and how tests run them.

`judges/build` builds each tool once into `$RAFS_JUDGES_DIR/<tool>-<version>/` (default
`~/.cache/rafs-judges`), with the versions `judges/versions` names; the judge crate's folder
is keyed by a hash of its sources. A judge that is missing fails its test with one line
saying to run `make judges`: none of them skips.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
JUDGES_SOURCE = REPO_ROOT / "judges"


def judges_dir() -> Path:
    return Path(os.environ.get("RAFS_JUDGES_DIR") or Path.home() / ".cache" / "rafs-judges")


def versions() -> dict[str, str]:
    """`judges/versions`: NAME=VALUE lines, comments skipped."""
    pairs = {}
    for line in (JUDGES_SOURCE / "versions").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, value = line.split("=", 1)
            pairs[name.strip()] = value.strip()
    return pairs


def judge_crate_key() -> str:
    """The same hash `judges/build` names the judge crate's build by."""
    crate = JUDGES_SOURCE / "nydus-judge"
    files = [crate / "Cargo.toml", crate / "Cargo.lock",
             *sorted((crate / "src").rglob("*"), key=lambda p: str(p.relative_to(crate)))]
    hasher = hashlib.sha256()
    for path in files:
        if path.is_file():
            hasher.update(path.read_bytes())
    return hasher.hexdigest()[:12]


def _tool(folder: str, name: str) -> Path:
    path = judges_dir() / folder / name
    if not os.access(path, os.X_OK):
        pytest.fail(f"{name} is not built (expected {path}): run `make judges`", pytrace=False)
    return path


def nydus_image() -> Path:
    """`nydus-image` of the crate nydus-rs (2.2)."""
    return _tool(f"nydus-rs-{versions()['NYDUS_RS_VERSION']}/bin", "nydus-image")


def nydusd() -> Path:
    return _tool(f"nydus-rs-{versions()['NYDUS_RS_VERSION']}/bin", "nydusd")


def nydus_judge() -> Path:
    """Our judge on the published nydus library crates (`judges/nydus-judge`)."""
    return _tool(f"nydus-judge-{judge_crate_key()}", "nydus-judge")


def containerd_nydus_grpc() -> Path:
    folder = f"nydus-snapshotter-{versions()['NYDUS_SNAPSHOTTER_VERSION']}"
    return _tool(folder, "containerd-nydus-grpc")


def crictl() -> Path:
    """`crictl` of cri-tools: pulls through containerd's CRI plugin, which labels each layer
    snapshot as remote snapshotters expect (`containerd.io/snapshot/cri.*`)."""
    return _tool(f"cri-tools-{versions()['CRI_TOOLS_VERSION']}", "crictl")


def buildkitd() -> Path:
    """`buildkitd` built with `-tags nydus` (exports `compression=nydus` with nydus-image)."""
    return _tool(f"buildkit-{versions()['BUILDKIT_VERSION']}", "buildkitd")


def buildctl() -> Path:
    return _tool(f"buildkit-{versions()['BUILDKIT_VERSION']}", "buildctl")


@dataclass(frozen=True)
class Ran:
    stdout: str
    stderr: str


def run_judge(command: list[str | os.PathLike[str]], timeout: float = 600) -> Ran:
    """Run a judge; a non-zero exit fails the test with the command and its stderr."""
    argv = [os.fspath(part) for part in command]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    if result.returncode != 0:
        pytest.fail(f"{' '.join(argv)} exited {result.returncode}:\n"
                    f"{result.stderr.strip()}\n{result.stdout.strip()[-2000:]}", pytrace=False)
    return Ran(result.stdout, result.stderr)


def judge_walk(bootstrap: Path) -> list[dict[str, Any]]:
    """`nydus-judge walk`: one dict per entry, as the published nydus-rafs crate reads it."""
    out = run_judge([nydus_judge(), "walk", bootstrap]).stdout
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def judge_check(bootstrap: Path) -> dict[str, Any]:
    """`nydus-judge check`: the summary it prints once every inode validated."""
    return dict(json.loads(run_judge([nydus_judge(), "check", bootstrap]).stdout))


def nydus_image_check(bootstrap: Path, work: Path) -> str:
    """`nydus-image check` (2.2): loads and validates the bootstrap, walks every inode."""
    work.mkdir(parents=True, exist_ok=True)
    return run_judge([nydus_image(), "check", "--bootstrap", bootstrap,
                      "--log-level", "warn", "--output-json", work / "check.json"]).stdout
