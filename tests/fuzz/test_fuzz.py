"""The short fuzz pass (`make test`) and the replay of every crash the fuzzers ever found.

Each target is fuzzed by atheris in a child process for a few thousand inputs (`make fuzz`
runs the long pass: `python -m tests.fuzz.run TARGET --runs 200000`). Every file under
`regressions/TARGET/` is an input that once broke a rule; it is replayed here in-process
under the same rules: only a `RafsError` escapes, at most `TIME_LIMIT` of CPU time, and a
tracemalloc peak under `MEMORY_LIMIT`.
"""

from __future__ import annotations

import importlib.util
import resource
import signal
import tracemalloc
from pathlib import Path
from types import FrameType

import pytest
import zstandard

from rafs.codecs import decompress
from rafs.errors import FormatError
from rafs.format.blobtable import Compressor
from tests.fuzz import run
from tests.fuzz.targets import MEMORY_LIMIT, TARGETS, TIME_LIMIT, run_one, setup

SHORT_RUNS = 1500  # per target: a few seconds each
SHORT_SECONDS = 10
REGRESSIONS = Path(__file__).parent / "regressions"


def _regressions() -> list[tuple[str, Path]]:
    return [(path.parent.name, path) for path in sorted(REGRESSIONS.glob("*/*"))
            if path.parent.name in TARGETS]  # fmt: skip


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_short_fuzz_pass(name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    if importlib.util.find_spec("atheris") is None:
        pytest.fail("atheris is missing: it is in the dev extra (pip install -e '.[dev]')")
    code = run.fuzz(name, SHORT_RUNS, SHORT_SECONDS, None, tmp_path / "artifacts")
    out = capsys.readouterr().out
    crashes = sorted(p.name for p in (tmp_path / "artifacts").iterdir())
    assert code == 0 and not crashes, f"fuzz target {name} crashed: {crashes}\n{out}"


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_seeds_are_accepted(name: str, tmp_path: Path) -> None:
    """The seeds are valid inputs: the fuzzer starts deep inside each parser."""
    target = setup(name, tmp_path)
    for seed in TARGETS[name][1]():
        target(seed)


class _Slow(Exception):
    pass


def _alarm(signum: int, frame: FrameType | None) -> None:
    raise _Slow


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


@pytest.mark.parametrize(("name", "path"), _regressions(),
                         ids=lambda v: v if isinstance(v, str) else v.name)  # fmt: skip
def test_regression(name: str, path: Path, tmp_path: Path) -> None:
    """Timed first (CPU time, as the fuzzer counts it), then again under tracemalloc."""
    target = setup(name, tmp_path)
    data = path.read_bytes()
    previous = signal.signal(signal.SIGPROF, _alarm)
    started = _cpu()
    signal.setitimer(signal.ITIMER_PROF, TIME_LIMIT)
    try:
        run_one(target, data)
    except _Slow:
        pytest.fail(f"{path.name}: takes more than {TIME_LIMIT} s of CPU")
    finally:
        signal.setitimer(signal.ITIMER_PROF, 0)
        signal.signal(signal.SIGPROF, previous)
    assert _cpu() - started < TIME_LIMIT
    tracemalloc.start()
    try:
        run_one(target, data)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < MEMORY_LIMIT, f"{path.name}: allocated {peak >> 20} MiB"


def test_zstd_frame_claiming_a_huge_size() -> None:
    """A chunk's zstd frame header claims 1 TiB: zstandard would allocate that up front
    (whatever `max_output_size` says), so the claim is checked first."""
    frame = bytearray(zstandard.ZstdCompressor().compress(bytes(5000)))
    assert frame[4] == 0x60  # single segment, 2-byte content size
    claim = b"\xe0" + (1 << 40).to_bytes(8, "little")  # single segment, 8-byte content size
    crafted = bytes(frame[:4] + claim + frame[7:])
    assert zstandard.frame_content_size(crafted) == 1 << 40
    tracemalloc.start()
    try:
        with pytest.raises(FormatError, match="holds 1099511627776 bytes"):
            decompress(crafted, Compressor.ZSTD, 5000)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20
