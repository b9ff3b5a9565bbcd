"""Service throughput at a fixed offered rate, measured with a lightweight ``grpc.aio`` client
or, so that the client does not compete with the server for the cores, a compiled one
(``bench.native_client.fixed_rate_native``: load/grpcload, C++ grpc++, same schedule and the same
``RateResult`` from ``summarize_calls``).

Open loop: call ``i`` is scheduled at ``t0 + i / rate`` and sent then whether or not earlier
calls have answered, so a slow server cannot slow the load down and hide its own latency
(coordinated omission). Latency is measured from the scheduled time (what a caller waiting in
line sees) and, separately, from the actual send. Calls are spread over several connections
because a multi-process server (SO_REUSEPORT) balances by connection.

The requests come from ``bench.traffic`` (the same traffic the Locust users send).
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from bench.cpu import cpu_ms_per_call
from bench.traffic import Traffic
from recsvc.v1 import outreach_pb2_grpc, recommender_pb2_grpc

# `bench service --client` and `bench catalog-propagation --client`: who sends the calls (recorded
# with the results).
LOAD_CLIENTS = {
    "python": "python (grpc.aio, in the benchmark process)",
    "native": "native (load/grpcload, C++ grpc++ async)",
}


def check_client(client: str) -> None:
    """A ``--client`` value is a LOAD_CLIENTS key."""
    if client not in LOAD_CLIENTS:
        raise ValueError(f"client must be one of {sorted(LOAD_CLIENTS)}, got {client!r}")


OUTREACH_RPCS = ("CheckOutreach", "ReserveOutreach")
SINGLE_RPCS = ("RecommendProducts", "SimilarItems", "RecommendContent", "RecordEvent", *OUTREACH_RPCS)


@dataclass
class RateResult:
    rpc: str
    offered_rps: float
    duration_s: float
    sent: int
    completed_ok: int
    achieved_rps: float  # answered OK per second over the measured window
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None
    p999_ms: float | None
    max_ms: float | None
    service_p50_ms: float | None  # from the actual send, without client-side queueing
    service_p99_ms: float | None
    max_send_lag_ms: float  # how far behind schedule the client itself fell
    error_pct: float
    codes: dict[str, int] = field(default_factory=dict)
    # CPU ms per measured call by role (client, redis, server, worker <pid>, workers): see bench/cpu.py
    cpu_ms_per_call: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


MARKDOWN_HEADER = (
    "| rpc | offered req/s | achieved req/s | p50 ms | p95 ms | p99 ms | p99.9 ms | max ms | "
    "errors % | codes | client lag ms | CPU ms per call |\n"
    "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---|"
)


def cpu_cell(cpu: dict[str, float]) -> str:
    """``client 0.71 · workers 1.52 (0.80 + 0.72) · redis 0.05``; empty when not measured."""
    if not cpu:
        return ""
    parts = [f"client {cpu['client']:.2f}"] if "client" in cpu else []
    # Children that did no work (multiprocessing's resource tracker) are left out of the split.
    split = [f"{v:.2f}" for k, v in sorted(cpu.items()) if k.startswith("worker ") and v >= 0.005]
    if "workers" in cpu:
        parts.append(f"workers {cpu['workers']:.2f} ({' + '.join(split)})")
    elif "server" in cpu:  # a single-process server
        parts.append(f"server {cpu['server']:.2f}")
    if "redis" in cpu:
        parts.append(f"redis {cpu['redis']:.2f}")
    return " · ".join(parts)


def _f(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.2f}"


def markdown_row(r: RateResult) -> str:
    codes = ", ".join(f"{c} {n}" for c, n in sorted(r.codes.items()))
    return (
        f"| {r.rpc} | {r.offered_rps:.0f} | {r.achieved_rps:.0f} | {_f(r.p50_ms)} | {_f(r.p95_ms)} | "
        f"{_f(r.p99_ms)} | {_f(r.p999_ms)} | {_f(r.max_ms)} | {r.error_pct:.3f} | {codes} | "
        f"{r.max_send_lag_ms:.1f} | {cpu_cell(r.cpu_ms_per_call)} |"
    )


def request_maker(traffic: Traffic, rpc: str) -> Callable[[], tuple[str, Any]]:
    """``rpc`` is one RPC name or ``mixed`` (the config's weights)."""
    builders: dict[str, Callable[[], Any]] = {
        "RecommendProducts": traffic.recommend_products,
        "SimilarItems": traffic.similar_items,
        "RecommendContent": traffic.recommend_content,
        "RecordEvent": traffic.record_event,
        "CheckOutreach": traffic.check_outreach,
        "ReserveOutreach": traffic.reserve_outreach,
    }
    if rpc in builders:
        build = builders[rpc]
        return lambda: (rpc, build())
    if rpc != "mixed":
        raise ValueError(f"unknown rpc {rpc!r}; use one of {[*SINGLE_RPCS, 'mixed']}")
    weights = traffic.config.weights.by_rpc()
    names = [n for n, w in weights.items() if w > 0]
    p = np.array([weights[n] for n in names], dtype=np.float64)
    p /= p.sum()
    rng = np.random.default_rng(traffic.config.members.seed + 17)

    def mixed() -> tuple[str, Any]:
        name = names[int(rng.choice(len(names), p=p))]
        return name, builders[name]()

    return mixed


def _pct(values: np.ndarray, q: float) -> float | None:
    """Percentile of the calls that completed (NaN: a call the native client never saw end)."""
    values = values[~np.isnan(values)]
    if values.shape[0] == 0:
        return None
    return float(np.percentile(values, q, method="inverted_cdf"))


@dataclass(frozen=True)
class RateRun:
    """One open-loop run: ``rate`` calls/s of ``make_request()``'s calls to ``target`` for
    ``warmup_s + duration_s``, reported on the last ``duration_s`` under ``label``. What both
    senders take (``fixed_rate``, ``native_client.fixed_rate_native``)."""

    target: str
    make_request: Callable[[], tuple[str, Any]]
    rate: float
    duration_s: float
    label: str
    connections: int = 4
    deadline_s: float = 1.0
    warmup_s: float = 2.0
    metadata: tuple[tuple[str, str], ...] = ()
    # () -> CPU seconds by role, sampled when the measured window starts and ends
    cpu_probe: Callable[[], dict[str, float]] | None = None

    def __post_init__(self) -> None:
        if self.rate <= 0 or self.duration_s <= 0:
            raise ValueError("rate and duration must be > 0")


async def fixed_rate(run: RateRun) -> RateResult:
    """Offer ``run.rate`` calls/s from this process's event loop (``grpc.aio``)."""
    target, make_request, rate, duration_s = run.target, run.make_request, run.rate, run.duration_s
    connections, deadline_s, warmup_s = run.connections, run.deadline_s, run.warmup_s
    metadata, cpu_probe = run.metadata, run.cpu_probe
    options = [("grpc.use_local_subchannel_pool", 1)]
    channels = [grpc.aio.insecure_channel(target, options=options) for _ in range(connections)]
    stubs = [(recommender_pb2_grpc.RecommenderStub(c), outreach_pb2_grpc.OutreachStub(c)) for c in channels]
    for c in channels:
        await asyncio.wait_for(c.channel_ready(), timeout=10)
    loop = asyncio.get_running_loop()
    total = int(rate * (warmup_s + duration_s))
    latency = np.full(total, np.nan)
    service = np.full(total, np.nan)
    codes: list[str] = [""] * total
    lag_max = 0.0
    pending: set[asyncio.Task[None]] = set()

    async def one(i: int, name: str, request: Any, scheduled: float) -> None:
        nonlocal lag_max
        rec, out = stubs[i % connections]
        method = getattr(out if name in OUTREACH_RPCS else rec, name)
        sent = loop.time()
        lag_max = max(lag_max, sent - scheduled)
        try:
            await method(request, timeout=deadline_s, metadata=metadata)
            code = "OK"
        except grpc.aio.AioRpcError as exc:
            code = exc.code().name
        done = loop.time()
        latency[i] = (done - scheduled) * 1000
        service[i] = (done - sent) * 1000
        codes[i] = code

    t0 = loop.time() + 0.05
    i = 0
    warm_n = round(rate * warmup_s)
    cpu_before: dict[str, float] = {}
    cpu_after: dict[str, float] = {}
    try:
        while i < total:
            if cpu_probe is not None and not cpu_before and i >= warm_n:
                cpu_before = cpu_probe()
            due = min(total, int((loop.time() - t0) * rate) + 1)
            while i < due:
                scheduled = t0 + i / rate
                name, request = make_request()
                task = asyncio.create_task(one(i, name, request, scheduled))
                pending.add(task)
                task.add_done_callback(pending.discard)
                i += 1
            # Sleep until the next call is due (not a fixed tick: waking the loop thousands of
            # times a second costs the client CPU it needs for sending).
            await asyncio.sleep(max(0.0, t0 + i / rate - loop.time()))
        if cpu_probe is not None and cpu_before:
            cpu_after = cpu_probe()
        if pending:
            await asyncio.gather(*pending)
    finally:
        for c in channels:
            await c.close()
    return summarize_calls(
        run.label, rate, duration_s, latency, service, codes, warm_n, lag_max * 1000, cpu_before, cpu_after
    )


def summarize_calls(
    label: str,
    rate: float,
    duration_s: float,
    latency_ms: np.ndarray,
    service_ms: np.ndarray,
    codes: list[str],
    warm_n: int,
    max_send_lag_ms: float,
    cpu_before: dict[str, float],
    cpu_after: dict[str, float],
) -> RateResult:
    """Percentiles, status codes and CPU per call over the calls after the first ``warm_n``."""
    window = np.arange(latency_ms.shape[0]) >= warm_n
    lat = latency_ms[window]
    svc = service_ms[window]
    code_arr = np.array(codes, dtype=object)[window]
    ok = code_arr == "OK"
    counts = Counter(str(c) for c in code_arr)
    sent_n = int(window.sum())
    return RateResult(
        rpc=label,
        offered_rps=rate,
        duration_s=duration_s,
        sent=sent_n,
        completed_ok=int(ok.sum()),
        achieved_rps=float(ok.sum()) / duration_s,
        p50_ms=_pct(lat, 50),
        p95_ms=_pct(lat, 95),
        p99_ms=_pct(lat, 99),
        p999_ms=_pct(lat, 99.9),
        max_ms=float(np.nanmax(lat)) if sent_n else None,
        service_p50_ms=_pct(svc, 50),
        service_p99_ms=_pct(svc, 99),
        max_send_lag_ms=max_send_lag_ms,
        error_pct=100.0 * (sent_n - int(ok.sum())) / sent_n if sent_n else 0.0,
        codes={k: v for k, v in counts.items() if k != "OK"},
        cpu_ms_per_call=cpu_ms_per_call(cpu_before, cpu_after, sent_n),
    )


def run_fixed_rates(
    target: str,
    traffic: Traffic,
    rpc: str,
    rates: list[float],
    duration_s: float,
    *,
    client: str = "python",
    native_binary: Path | None = None,
    **kwargs: Any,
) -> list[RateResult]:
    """One open-loop run per offered rate, lowest first, sent by the ``grpc.aio`` client
    (``client="python"``) or the compiled one (``"native"``, load/grpcload)."""
    make = request_maker(traffic, rpc)
    runs = [RateRun(target, make, rate, duration_s, label=rpc, **kwargs) for rate in sorted(rates)]
    if client == "native":
        from bench.native_client import find_native_client, fixed_rate_native

        binary = find_native_client(native_binary)
        return [fixed_rate_native(run, binary=binary) for run in runs]
    check_client(client)
    return [asyncio.run(fixed_rate(run)) for run in runs]
