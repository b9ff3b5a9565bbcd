"""Pipeline stage timings at scale: run ``recsvc data generate`` and ``recsvc train`` as the user
would, timing each command and sampling the peak memory of its whole process tree (PSS sum and
RSS sum, once a second), and keep each command's output (training prints its per-step summary)."""

from __future__ import annotations

import subprocess
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench.memory import tree_memory


@dataclass
class StepRun:
    name: str
    command: list[str]
    seconds: float
    exit_code: int
    peak_pss_mib: float
    peak_rss_mib: float
    log: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def run_measured(
    name: str, command: list[str], env: dict[str, str], log_path: Path, interval_s: float = 1.0
) -> StepRun:
    """Run ``command`` to the end, sampling its process tree's memory every ``interval_s``."""
    peak = {"pss": 0, "rss": 0}
    done = threading.Event()
    with log_path.open("w") as log:
        t0 = time.perf_counter()
        proc = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)

        def sample() -> None:
            while not done.is_set():
                rows = tree_memory(proc.pid)
                peak["pss"] = max(peak["pss"], sum(r.pss_kib for r in rows))
                peak["rss"] = max(peak["rss"], sum(r.rss_kib for r in rows))
                done.wait(interval_s)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        try:
            code = proc.wait()
        finally:
            done.set()
            if proc.poll() is None:
                proc.terminate()
                proc.wait(timeout=30)
        seconds = time.perf_counter() - t0
        sampler.join(timeout=5)
    return StepRun(
        name=name,
        command=command,
        seconds=seconds,
        exit_code=code,
        peak_pss_mib=peak["pss"] / 1024,
        peak_rss_mib=peak["rss"] / 1024,
        log=str(log_path),
    )


def markdown(steps: list[StepRun]) -> str:
    lines = [
        "| step | seconds | peak PSS MiB (tree) | peak RSS MiB (tree) | exit |",
        "|---|---:|---:|---:|---:|",
    ]
    for s in steps:
        lines.append(
            f"| {s.name} | {s.seconds:.1f} | {s.peak_pss_mib:.0f} | {s.peak_rss_mib:.0f} | {s.exit_code} |"
        )
    return "\n".join(lines)
