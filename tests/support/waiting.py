"""Waiting in tests for something another thread or process does (a change reaching a follower,
a server process, a list): poll until it holds, fail with ``what`` after ``seconds``."""

from __future__ import annotations

import time
from collections.abc import Callable


def within(seconds: float, ok: Callable[[], bool], what: str, poll_s: float = 0.01) -> float:
    """Poll ``ok`` until it is true; the seconds it took. AssertionError(``what``) past ``seconds``."""
    t0 = time.monotonic()
    while not ok():
        assert time.monotonic() - t0 < seconds, what
        time.sleep(poll_s)
    return time.monotonic() - t0
