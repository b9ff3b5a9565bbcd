"""CPU time spent by the server, its workers, Redis and the load client while a benchmark runs.

On a machine where the load generator shares the cores with the server, throughput is decided
by CPU: this tells how many milliseconds of CPU one call costs on each side, and whether the
kernel spread the connections evenly over the workers (``SO_REUSEPORT`` balances by connection).
Read from ``/proc/<pid>/stat`` (user + system time, all threads).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from bench.memory import PROC, children

_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int, proc: Path = PROC) -> float:
    """User + system CPU seconds of ``pid`` so far (0.0 when it is gone)."""
    try:
        text = (proc / str(pid) / "stat").read_text()
    except OSError:
        return 0.0
    # Fields after the command's closing parenthesis; utime and stime are fields 14 and 15.
    fields = text[text.rfind(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS


def cpu_probe(server_pid: int | None, redis_pid: int | None) -> Callable[[], dict[str, float]]:
    """A function returning CPU seconds so far per role: ``client`` (this process), ``redis``,
    ``server`` (the supervisor) and ``worker <pid>`` for each of its children."""

    def probe() -> dict[str, float]:
        t = os.times()
        out = {"client": t.user + t.system}
        if redis_pid:
            out["redis"] = cpu_seconds(redis_pid)
        if server_pid:
            out["server"] = cpu_seconds(server_pid)
            for pid in children(server_pid):
                out[f"worker {pid}"] = cpu_seconds(pid)
        return out

    return probe


def cpu_ms_per_call(before: dict[str, float], after: dict[str, float], calls: int) -> dict[str, float]:
    """CPU milliseconds per call for each role seen at both ends, plus ``workers`` (all of them)."""
    if calls <= 0:
        return {}
    out = {k: 1000.0 * (after[k] - before[k]) / calls for k in after if k in before}
    workers = [v for k, v in out.items() if k.startswith("worker ")]
    if workers:
        out["workers"] = sum(workers)
    return out
