"""Latency statistics for in-process call costs: call a function many times, keep every
duration, report percentiles (nearest rank, so each figure is a real call) and calls per second."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class LatencyStats:
    name: str
    calls: int
    mean_us: float
    p50_us: float
    p95_us: float
    p99_us: float
    p999_us: float
    max_us: float
    calls_per_s: float  # one caller, back to back

    @classmethod
    def from_ns(cls, name: str, durations_ns: np.ndarray, wall_s: float | None = None) -> LatencyStats:
        if durations_ns.shape[0] == 0:
            raise ValueError(f"{name}: no calls measured")
        us = durations_ns.astype(np.float64) / 1000.0

        def q(p: float) -> float:
            return float(np.percentile(us, p, method="inverted_cdf"))

        total_s = wall_s if wall_s is not None else float(us.sum()) / 1e6
        return cls(
            name=name,
            calls=int(us.shape[0]),
            mean_us=float(us.mean()),
            p50_us=q(50),
            p95_us=q(95),
            p99_us=q(99),
            p999_us=q(99.9),
            max_us=float(us.max()),
            calls_per_s=us.shape[0] / total_s if total_s > 0 else float("inf"),
        )

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def markdown_row(self) -> str:
        return (
            f"| {self.name} | {self.calls} | {self.p50_us / 1000:.3f} | {self.p95_us / 1000:.3f} | "
            f"{self.p99_us / 1000:.3f} | {self.p999_us / 1000:.3f} | {self.max_us / 1000:.3f} | "
            f"{self.calls_per_s:,.0f} |"
        )


MARKDOWN_HEADER = (
    "| call | calls | p50 ms | p95 ms | p99 ms | p99.9 ms | max ms | calls/s (one caller) |\n"
    "|---|---:|---:|---:|---:|---:|---:|---:|"
)


def measure(name: str, fn: Callable[[], object], calls: int, warmup: int = 100) -> LatencyStats:
    """Time ``calls`` calls of ``fn`` after ``warmup`` untimed ones (caches, lazy loads, JIT-free
    but page-faulting mmap'd arrays)."""
    for _ in range(warmup):
        fn()
    out = np.empty(calls, dtype=np.int64)
    clock = time.perf_counter_ns
    start = clock()
    for i in range(calls):
        t0 = clock()
        fn()
        out[i] = clock() - t0
    wall = (clock() - start) / 1e9
    return LatencyStats.from_ns(name, out, wall)
