"""A bound on the work a block of code does, counted in Python lines run instead of seconds.

The count is the same on a fast machine and a slow one, so a test can say "a corrupt input
costs at most ten times what the sound one does" without a wall-clock assertion; and code
that loops fails the test at the bound instead of hanging. Only the calling thread is
counted, and only Python lines (time spent inside one C call, such as a decompressor, is
bounded by the memory limits of the inputs instead).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

import pytest


class LineCount:
    """Python lines run so far in a `counting_lines` block."""

    def __init__(self, limit: int | None, what: str) -> None:
        self.count = 0
        self._limit, self._what = limit, what

    def _trace(self, frame: FrameType, event: str, arg: Any) -> Any:
        __tracebackhide__ = True  # the failure's traceback ends in the code that ran over
        if event == "line":
            self.count += 1
            if self._limit is not None and self.count > self._limit:
                # Failed is a BaseException: no `except Exception` in the code under test
                # swallows it; its traceback shows where the work went. Raising here also
                # ends the tracing (CPython drops the hook).
                pytest.fail(f"{self._what}: more than {self._limit} Python lines run"
                            " (a loop, or work out of proportion to the input)")  # fmt: skip
        return self._trace


@contextmanager
def counting_lines(limit: int | None = None, what: str = "the code") -> Iterator[LineCount]:
    """Count the Python lines this thread runs in the block; past `limit`, fail the test
    where it is, saying `what` ran over."""
    lines = LineCount(limit, what)
    previous = sys.gettrace()
    sys.settrace(lines._trace)
    try:
        yield lines
    finally:
        sys.settrace(previous)
