"""Every call of a load test, kept exactly: end time, RPC, latency (ms, float) and status code.

Locust rounds response times to whole milliseconds and its per-interval percentiles cover a
sliding 10-second window, too coarse for "p50 <= 3 ms" or for a spike's recovery time. Each
Locust process records a ``Timeline`` and saves ``timeline-<pid>.npz`` into the results folder at
the end of the test; ``load_samples`` merges them for the report (exact percentiles per RPC, per
phase and per second).
"""

from __future__ import annotations

import time
from array import array
from dataclasses import dataclass
from pathlib import Path

import numpy as np

OK = "OK"
SHAPE_START_FILE = "shape-start.txt"  # wall-clock start of the load shape, written by the master


class Timeline:
    """Append-only record of calls in one process (cheap: four array appends per call)."""

    def __init__(self) -> None:
        self.started_at = time.time()
        self._t = array("d")
        self._ms = array("f")
        self._rpc = array("H")
        self._code = array("H")
        self._rpc_names: dict[str, int] = {}
        self._code_names: dict[str, int] = {OK: 0}

    def __len__(self) -> int:
        return len(self._t)

    def add(self, rpc: str, latency_ms: float, error: object | None = None, at: float | None = None) -> None:
        code = OK if error is None else (getattr(error, "code", None) or repr(error))
        self._t.append(time.time() if at is None else at)
        self._ms.append(latency_ms)
        self._rpc.append(self._rpc_names.setdefault(rpc, len(self._rpc_names)))
        self._code.append(self._code_names.setdefault(str(code), len(self._code_names)))

    def save(self, out_dir: Path, tag: str) -> Path:
        out_dir.mkdir(parents=True, exist_ok=True)
        path = out_dir / f"timeline-{tag}.npz"
        np.savez(
            path,
            started_at=np.float64(self.started_at),
            t=np.frombuffer(self._t, dtype=np.float64),
            ms=np.frombuffer(self._ms, dtype=np.float32),
            rpc=np.frombuffer(self._rpc, dtype=np.uint16),
            code=np.frombuffer(self._code, dtype=np.uint16),
            rpc_names=np.array(list(self._rpc_names), dtype=str),
            code_names=np.array(list(self._code_names), dtype=str),
        )
        return path


@dataclass
class Samples:
    """All calls of a run, merged: parallel arrays, labels decoded."""

    started_at: float
    t: np.ndarray  # end time, epoch seconds
    ms: np.ndarray  # latency
    rpc: np.ndarray  # str
    code: np.ndarray  # str; "OK" for success

    def __len__(self) -> int:
        return int(self.t.shape[0])

    def select(self, mask: np.ndarray) -> Samples:
        return Samples(self.started_at, self.t[mask], self.ms[mask], self.rpc[mask], self.code[mask])


def load_samples(results_dir: Path) -> Samples | None:
    files = sorted(results_dir.glob("timeline-*.npz"))
    if not files:
        return None
    parts = []
    started = []
    for f in files:
        with np.load(f) as z:
            rpc_names, code_names = z["rpc_names"], z["code_names"]
            parts.append((z["t"], z["ms"], rpc_names[z["rpc"]], code_names[z["code"]]))
            started.append(float(z["started_at"]))
    order_t = np.concatenate([p[0] for p in parts])
    order = np.argsort(order_t, kind="stable")
    shape_start = results_dir / SHAPE_START_FILE
    return Samples(
        started_at=float(shape_start.read_text()) if shape_start.exists() else min(started),
        t=order_t[order],
        ms=np.concatenate([p[1] for p in parts]).astype(np.float64)[order],
        rpc=np.concatenate([p[2] for p in parts])[order],
        code=np.concatenate([p[3] for p in parts])[order],
    )


def percentile_ms(ms: np.ndarray, q: float) -> float | None:
    """The q-th percentile (0..100) by the nearest-rank method, None without samples."""
    if ms.shape[0] == 0:
        return None
    return float(np.percentile(ms, q, method="inverted_cdf"))


def rolling_p99(
    samples: Samples, width_s: float = 3.0, step_s: float = 1.0
) -> list[tuple[float, float, int]]:
    """(seconds since start, p99 over the trailing ``width_s`` window, calls in it) every ``step_s``."""
    if len(samples) == 0:
        return []
    rel = samples.t - samples.started_at
    out = []
    end = step_s
    last = float(rel[-1])
    while end <= last + step_s:
        lo, hi = np.searchsorted(rel, [end - width_s, end])
        window = samples.ms[lo:hi]
        if window.shape[0]:
            out.append((end, float(np.percentile(window, 99, method="inverted_cdf")), int(window.shape[0])))
        end += step_s
    return out
