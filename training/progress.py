"""Progress of a training run: a bar per step (a rich ``Progress`` if given) and each step's wall
time, which the report and the log carry."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

log = logging.getLogger(__name__)


class Steps:
    """Progress bars (a rich ``Progress`` if given) and wall time per step."""

    def __init__(self, progress: Any | None = None) -> None:
        self.progress = progress
        self.timings: dict[str, float] = {}

    @contextmanager
    def step(self, name: str, total: float | None = None) -> Iterator[Callable[[float], None]]:
        progress = self.progress
        task = progress.add_task(name, total=total) if progress is not None else None
        started = time.perf_counter()

        def advance(n: float = 1) -> None:
            if progress is not None and task is not None:
                progress.advance(task, n)

        try:
            yield advance
        finally:
            self.timings[name] = time.perf_counter() - started
            if progress is not None and task is not None:
                progress.update(task, total=total or 1, completed=total or 1)
            log.info("step=%r seconds=%.2f", name, self.timings[name])
