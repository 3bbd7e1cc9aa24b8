"""Running a real server for the tests: started in its own session with its output in a log
file, waited for until it answers, and stopped (terminate, then kill) however the test ends."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import pytest


@contextmanager
def run_daemon(argv: list[str], log: Path, answers: Callable[[], bool], name: str, *,
               timeout: float, poll: float = 0.05, stop_timeout: float = 10.0,
               env: Mapping[str, str] | None = None) -> Iterator[None]:  # fmt: skip
    """Run `argv` (in `env`, default ours) until the block ends; fail the test with the
    log's tail if it exits or does not answer within `timeout` seconds."""
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True, env=env)  # fmt: skip
    try:
        deadline = time.monotonic() + timeout
        while not answers():
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"{name} did not start:\n{log.read_text()[-4000:]}")
            time.sleep(poll)
        yield
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=stop_timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
