"""Test helpers that turn a hang into a failure."""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator
from types import FrameType


@contextlib.contextmanager
def fail_if_blocked(what: str, seconds: int) -> Iterator[None]:
    """Fail with "`what` blocked" if the body is still running after `seconds` (SIGALRM)."""
    def hung(_sig: int, _frame: FrameType | None) -> None:
        raise AssertionError(f"{what} blocked")

    old = signal.signal(signal.SIGALRM, hung)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
