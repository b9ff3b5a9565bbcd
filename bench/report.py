"""Turn Locust's CSV output into the short summary a load tester reads first.

Long on purpose: one reader of Locust's CSVs and the exact samples, and the verdict against the
targets built from both.

Reads ``<prefix>_stats.csv``, ``<prefix>_failures.csv`` and ``<prefix>_stats_history.csv`` (written
by ``locust --csv <prefix> --csv-full-history``) and writes ``summary.md`` (and ``summary.json``
with the same figures): req/s, p50/p95/p99 and failures per RPC with failures split by gRPC status
code; per-phase figures for ramp and spike shapes (p99 during and after the spike, errors, and
the recovery time). Locust records response times in whole milliseconds, so sub-millisecond
figures come from the fixed-rate aio client (``recsvc load bench service``), not from here.
"""

from __future__ import annotations

import csv
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bench.loadconfig import Targets
from bench.shapes import Phase
from bench.timeline import OK, Samples, percentile_ms, rolling_p99

AGGREGATED = "Aggregated"


@dataclass
class RpcStats:
    name: str
    requests: int
    failures: int
    rps: float
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None
    max_ms: float | None
    failures_by_code: dict[str, int] = field(default_factory=dict)

    @property
    def failure_pct(self) -> float:
        return 100.0 * self.failures / self.requests if self.requests else 0.0


@dataclass
class PhaseStats:
    name: str
    start_s: float
    end_s: float
    users: int
    requests: int
    failures: int
    rps: float
    p99_max_ms: float | None  # worst 10-second-window p99 seen in the phase
    p99_median_ms: float | None


@dataclass
class Verdict:
    """One target of the load config against what the run measured."""

    target: str  # e.g. "p99_ms", "rpc_p99_ms.RecommendProducts"
    limit: float
    measured: float | None
    passed: bool

    def describe(self) -> str:
        value = "n/a" if self.measured is None else f"{self.measured:.2f}"
        relation = ">=" if self.target == "min_rps" else "<="
        return f"{self.target}: measured {value}, target {relation} {self.limit:g}"


@dataclass
class Summary:
    title: str
    rpcs: list[RpcStats]
    total: RpcStats
    phases: list[PhaseStats] = field(default_factory=list)
    recovery_s: float | None = None
    notes: list[str] = field(default_factory=list)
    exact: bool = False  # latency percentiles from the per-call timeline, not Locust's rounding
    warmup_s: float = 0.0  # calls that ended this long after the start are not in the figures
    verdicts: list[Verdict] = field(default_factory=list)
    # The live-stream scenario's counts (bench/livestream.py LiveStreamCounts), when it ran.
    live_stream: dict[str, Any] | None = None

    @property
    def passed(self) -> bool:
        return all(v.passed for v in self.verdicts)

    @property
    def missed(self) -> list[Verdict]:
        return [v for v in self.verdicts if not v.passed]

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["total"]["failure_pct"] = self.total.failure_pct
        for rpc, src in zip(out["rpcs"], self.rpcs, strict=True):
            rpc["failure_pct"] = src.failure_pct
        out["passed"] = self.passed if self.verdicts else None
        return out


def _num(value: str | None) -> float | None:
    if value is None or value in ("", "N/A"):
        return None
    return float(value)


def read_stats(prefix: Path) -> tuple[list[RpcStats], RpcStats]:
    stats_file = Path(f"{prefix}_stats.csv")
    failures_file = Path(f"{prefix}_failures.csv")
    by_code: dict[str, dict[str, int]] = {}
    if failures_file.exists():
        with failures_file.open(newline="") as fh:
            for row in csv.DictReader(fh):
                codes = by_code.setdefault(row["Name"], {})
                error = row["Error"].strip()
                codes[error] = codes.get(error, 0) + int(row["Occurrences"])
    rpcs: list[RpcStats] = []
    total: RpcStats | None = None
    with stats_file.open(newline="") as fh:
        for row in csv.DictReader(fh):
            stats = RpcStats(
                name=row["Name"],
                requests=int(row["Request Count"]),
                failures=int(row["Failure Count"]),
                rps=float(row["Requests/s"]),
                p50_ms=_num(row.get("50%")),
                p95_ms=_num(row.get("95%")),
                p99_ms=_num(row.get("99%")),
                max_ms=_num(row.get("Max Response Time")),
                failures_by_code=by_code.get(row["Name"], {}),
            )
            if row["Name"] == AGGREGATED:
                merged: dict[str, int] = {}
                for codes in by_code.values():
                    for code, n in codes.items():
                        merged[code] = merged.get(code, 0) + n
                stats.failures_by_code = merged
                total = stats
            else:
                rpcs.append(stats)
    if total is None:
        raise ValueError(f"{stats_file} has no Aggregated row: did Locust finish?")
    return rpcs, total


def read_history(prefix: Path) -> list[dict[str, Any]]:
    """Aggregated rows of the history file: t (s since first row), users, rps, p99, counts."""
    history_file = Path(f"{prefix}_stats_history.csv")
    if not history_file.exists():
        return []
    rows: list[dict[str, Any]] = []
    with history_file.open(newline="") as fh:
        for row in csv.DictReader(fh):
            if row["Name"] != AGGREGATED:
                continue
            rows.append(
                {
                    "ts": int(row["Timestamp"]),
                    "users": int(row["User Count"]),
                    "rps": float(row["Requests/s"]),
                    "p99": _num(row.get("99%")),
                    "requests": int(row["Total Request Count"]),
                    "failures": int(row["Total Failure Count"]),
                }
            )
    if rows:
        t0 = rows[0]["ts"]
        for r in rows:
            r["t"] = r["ts"] - t0
    return rows


def phase_stats(history: list[dict[str, Any]], phases: list[Phase]) -> list[PhaseStats]:
    """Requests and failures between the history rows at a phase's start and end (counts are
    cumulative), and the windowed p99 of the rows inside it."""
    out: list[PhaseStats] = []
    for ph in phases:
        rows = [r for r in history if ph.start_s <= r["t"] < ph.end_s]
        if not rows:
            continue
        first = rows[0]
        last = next((r for r in history if r["t"] >= ph.end_s), history[-1])
        requests = last["requests"] - first["requests"]
        span = max(last["t"] - first["t"], 1)
        p99s = sorted(r["p99"] for r in rows if r["p99"] is not None)
        out.append(
            PhaseStats(
                name=ph.name,
                start_s=ph.start_s,
                end_s=ph.end_s,
                users=ph.users,
                requests=requests,
                failures=last["failures"] - first["failures"],
                rps=requests / span,
                p99_max_ms=p99s[-1] if p99s else None,
                p99_median_ms=p99s[len(p99s) // 2] if p99s else None,
            )
        )
    return out


def recovery_time(history: list[dict[str, Any]], spike: Phase, baseline_p99_ms: float) -> float | None:
    """Seconds after the spike ends until the windowed p99 is back near the pre-spike level
    (within 1.5x or +2 ms) and stays there; None if it never comes back during the run."""
    limit = max(1.5 * baseline_p99_ms, baseline_p99_ms + 2.0)
    after = [r for r in history if r["t"] >= spike.end_s and r["p99"] is not None]
    for i, r in enumerate(after):
        if all(x["p99"] <= limit for x in after[i:]):
            return float(r["t"] - spike.end_s)
    return None


def exact_phase_stats(samples: Samples, phases: list[Phase]) -> list[PhaseStats]:
    rel = samples.t - samples.started_at
    windows = rolling_p99(samples)
    out = []
    for ph in phases:
        part = samples.select((rel >= ph.start_s) & (rel < ph.end_s))
        in_phase = [p99 for end, p99, _ in windows if ph.start_s < end <= ph.end_s]
        out.append(
            PhaseStats(
                name=ph.name,
                start_s=ph.start_s,
                end_s=ph.end_s,
                users=ph.users,
                requests=len(part),
                failures=int((part.code != OK).sum()),
                rps=len(part) / (ph.end_s - ph.start_s),
                p99_max_ms=max(in_phase) if in_phase else None,
                p99_median_ms=percentile_ms(part.ms, 99),
            )
        )
    return out


def exact_recovery(samples: Samples, spike: Phase, baseline_p99_ms: float) -> float | None:
    """Seconds after the spike ends until the 3-second rolling p99 is within 1.5x (or +2 ms) of
    the pre-spike p99 and stays there; None if it does not within the run."""
    limit = max(1.5 * baseline_p99_ms, baseline_p99_ms + 2.0)
    after = [(end, p99) for end, p99, _ in rolling_p99(samples) if end >= spike.end_s]
    for i, (end, _) in enumerate(after):
        if all(p99 <= limit for _, p99 in after[i:]):
            return max(0.0, end - spike.end_s)
    return None


def _apply_exact(stats: RpcStats, ms: np.ndarray) -> None:
    stats.p50_ms = percentile_ms(ms, 50)
    stats.p95_ms = percentile_ms(ms, 95)
    stats.p99_ms = percentile_ms(ms, 99)
    stats.max_ms = float(ms.max()) if ms.shape[0] else None


def measured_stats(samples: Samples, names: list[str], warmup_s: float) -> tuple[list[RpcStats], RpcStats]:
    """Counts, rates, failures by code and exact percentiles of the calls that ended after the
    first ``warmup_s`` seconds, per RPC (``names`` first, in that order) and in total."""
    rel = samples.t - samples.started_at
    part = samples.select(rel >= warmup_s)
    span = float(part.t[-1] - samples.started_at - warmup_s) if len(part) else 0.0
    span = max(span, 1e-9)

    def stats(name: str, sel: Samples) -> RpcStats:
        failed = sel.code[sel.code != OK]
        codes, counts = np.unique(failed, return_counts=True)
        out = RpcStats(
            name=name,
            requests=len(sel),
            failures=int(failed.shape[0]),
            rps=len(sel) / span,
            p50_ms=None,
            p95_ms=None,
            p99_ms=None,
            max_ms=None,
            failures_by_code={str(c): int(n) for c, n in zip(codes, counts, strict=True)},
        )
        _apply_exact(out, sel.ms)
        return out

    all_names = [*names, *sorted(set(part.rpc.tolist()) - set(names))]
    rpcs = [stats(n, part.select(part.rpc == n)) for n in all_names]
    return rpcs, stats(AGGREGATED, part)


def evaluate(summary: Summary, targets: Targets) -> list[Verdict]:
    """A verdict for every target that is set (none when no target is)."""
    total = summary.total
    out: list[Verdict] = []

    def at_most(target: str, limit: float | None, measured: float | None) -> None:
        if limit is not None:
            out.append(Verdict(target, limit, measured, measured is not None and measured <= limit))

    at_most("p50_ms", targets.p50_ms, total.p50_ms)
    at_most("p99_ms", targets.p99_ms, total.p99_ms)
    at_most("max_error_pct", targets.max_error_pct, total.failure_pct if total.requests else None)
    if targets.min_rps is not None:
        out.append(Verdict("min_rps", targets.min_rps, total.rps, total.rps >= targets.min_rps))
    by_name = {r.name: r for r in summary.rpcs}
    for rpc, limit in targets.rpc_p99_ms.items():
        found = by_name.get(rpc)
        at_most(f"rpc_p99_ms.{rpc}", limit, found.p99_ms if found is not None else None)
    if targets.max_sold_out_past_bound is not None:
        live = summary.live_stream
        # Not judged as met without a live stream that sold something out: nothing was checked.
        measured = float(live["past_bound"]) if live and live.get("sold_out") else None
        at_most("max_sold_out_past_bound", targets.max_sold_out_past_bound, measured)
    return out


def summarize(
    prefix: Path,
    title: str,
    phases: list[Phase] | None = None,
    samples: Samples | None = None,
    warmup_s: float = 0.0,
    targets: Targets | None = None,
    live_stream: dict[str, Any] | None = None,
) -> Summary:
    """Counts, rates and failures from Locust's CSVs; latency percentiles exact from ``samples``
    (the timeline) when given, else Locust's whole-millisecond ones. With ``warmup_s`` and
    ``samples``, every figure covers only the calls after the warm-up. ``targets``: a verdict each."""
    rpcs, total = read_stats(prefix)
    summary = Summary(title=title, rpcs=rpcs, total=total)
    if warmup_s > 0 and samples is not None and len(samples):
        rpcs, total = measured_stats(samples, [r.name for r in rpcs], warmup_s)
        summary = Summary(title=title, rpcs=rpcs, total=total, exact=True, warmup_s=warmup_s)
        summary.notes.append(
            f"warm-up: calls in the first {warmup_s:g} s are not in these figures "
            f"({len(samples) - total.requests} calls); Locust's CSVs and report.html include them"
        )
    elif warmup_s > 0:
        summary.notes.append("no per-call timeline: the warm-up could not be left out of these figures")
    elif samples is not None and len(samples):
        for s in rpcs:
            _apply_exact(s, samples.ms[samples.rpc == s.name])
        _apply_exact(total, samples.ms)
        summary.exact = True
    multi = phases is not None and len(phases) > 1
    spike = next((p for p in phases or [] if p.name == "spike"), None)
    if multi and phases is not None and samples is not None and len(samples):
        summary.phases = exact_phase_stats(samples, phases)
        before = next((p for p in summary.phases if p.name == "before"), None)
        if spike is not None and before is not None and before.p99_median_ms is not None:
            summary.recovery_s = exact_recovery(samples, spike, before.p99_median_ms)
            summary.notes.append(
                "recovery: seconds after the spike until the 3-second rolling p99 is within 1.5x "
                "(or +2 ms) of the pre-spike p99 and stays there"
            )
    elif multi and phases is not None:
        history = read_history(prefix)
        summary.phases = phase_stats(history, phases)
        before = next((p for p in summary.phases if p.name == "before"), None)
        if spike is not None and before is not None and before.p99_median_ms is not None:
            summary.recovery_s = recovery_time(history, spike, before.p99_median_ms)
            summary.notes.append(
                "recovery: seconds after the spike until Locust's 10-second-window p99 is within 1.5x "
                "(or +2 ms) of the pre-spike median and stays there"
            )
    if total.requests == 0:
        summary.notes.append("no requests were made: check the host and the locust log")
    summary.live_stream = live_stream
    if targets is not None:
        summary.verdicts = evaluate(summary, targets)
    return summary


def _ms(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.1f}"


def _codes(codes: dict[str, int]) -> str:
    return ", ".join(f"{c} {n}" for c, n in sorted(codes.items(), key=lambda kv: -kv[1])) or "-"


def to_markdown(summary: Summary, context: dict[str, str] | None = None) -> str:
    lines = [f"# {summary.title}", ""]
    for key, value in (context or {}).items():
        lines.append(f"- {key}: {value}")
    if context:
        lines.append("")
    lines += [
        "| RPC | requests | req/s | p50 ms | p95 ms | p99 ms | max ms | failures | failure % | by code |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for s in [*summary.rpcs, summary.total]:
        name = "**all**" if s.name == AGGREGATED else s.name
        lines.append(
            f"| {name} | {s.requests} | {s.rps:.1f} | {_ms(s.p50_ms)} | {_ms(s.p95_ms)} | "
            f"{_ms(s.p99_ms)} | {_ms(s.max_ms)} | {s.failures} | {s.failure_pct:.2f} | "
            f"{_codes(s.failures_by_code)} |"
        )
    if summary.phases:
        lines += [
            "",
            "## Phases",
            "",
            "| phase | window s | users | requests | req/s | failures | p99 ms (phase) | "
            "p99 ms (worst window) |",
            "|---|---|---:|---:|---:|---:|---:|---:|",
        ]
        for p in summary.phases:
            lines.append(
                f"| {p.name} | {p.start_s:.0f}-{p.end_s:.0f} | {p.users} | {p.requests} | {p.rps:.1f} | "
                f"{p.failures} | {_ms(p.p99_median_ms)} | {_ms(p.p99_max_ms)} |"
            )
        if any(p.name == "spike" for p in summary.phases):
            rec = "not within the run" if summary.recovery_s is None else f"{summary.recovery_s:.0f} s"
            lines += ["", f"Recovery after the spike: {rec}."]
    if summary.live_stream is not None:
        lines += live_stream_markdown(summary.live_stream)
    if summary.verdicts:
        lines += [
            "",
            "## Verdict",
            "",
            "| target | limit | measured | verdict |",
            "|---|---:|---:|---|",
        ]
        for v in summary.verdicts:
            relation = ">=" if v.target == "min_rps" else "<="
            verdict = "pass" if v.passed else "**FAIL**"
            lines.append(f"| {v.target} | {relation} {v.limit:g} | {_ms(v.measured)} | {verdict} |")
        missed = summary.missed
        lines += [
            "",
            f"**FAIL**: missed {len(missed)} of {len(summary.verdicts)} targets: "
            + "; ".join(v.describe() for v in missed)
            if missed
            else f"**PASS**: all {len(summary.verdicts)} targets met.",
        ]
    if summary.notes:
        lines += ["", *[f"_{n}_" for n in summary.notes]]
    precision = (
        "exact per-call latencies (timeline-*.npz)"
        if summary.exact
        else "Locust's whole-millisecond response times"
    )
    lines += [
        "",
        f"Latency percentiles: {precision}; load generator on the same machine. Counts, req/s and "
        "failures by gRPC status code from Locust's CSVs.",
        "",
    ]
    return "\n".join(lines)


def live_stream_markdown(live: dict[str, Any]) -> list[str]:
    worst = live.get("worst_lag_s")
    errors = ", ".join(f"{k} {v}" for k, v in sorted(live.get("errors", {}).items())) or "none"
    return [
        "",
        "## Live stream",
        "",
        f"A host pinned {len(live['pinned'])} products and sold {len(live['sold_out'])} of them out one at "
        "a time (Catalog/SetStock); members asked for RecommendProducts with in_stock_only. A sold-out "
        "product counts when a call sent after its SetStock answered still got it.",
        "",
        "| checked answers | pinned products served in stock | sold-out served within "
        f"{live['bound_s']:g} s | sold-out served past {live['bound_s']:g} s | latest send still served "
        "(s after the change) | host errors |",
        "|---:|---:|---:|---:|---:|---|",
        f"| {live['checked_calls']} | {live['pinned_served']} | {live['within_bound']} | "
        f"{live['past_bound']} | {'-' if worst is None else f'{worst:.3f}'} | {errors} |",
    ]


def write_summary(summary: Summary, out_dir: Path, context: dict[str, str] | None = None) -> Path:
    path = out_dir / "summary.md"
    path.write_text(to_markdown(summary, context))
    payload = summary.to_json()
    payload["context"] = context or {}
    (out_dir / "summary.json").write_text(json.dumps(payload, indent=2))
    return path
