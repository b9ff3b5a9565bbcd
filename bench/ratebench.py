"""Service throughput at a fixed offered rate, measured with a lightweight ``grpc.aio`` client
or, so that the client does not compete with the server for the cores, a compiled one
(``fixed_rate_native``: load/grpcload, C++ grpc++, same schedule and result).

Long on purpose: the Python and the native client share one schedule, one result type and one
summary, which is what makes their figures comparable.

Open loop: call ``i`` is scheduled at ``t0 + i / rate`` and sent then whether or not earlier
calls have answered, so a slow server cannot slow the load down and hide its own latency
(coordinated omission). Latency is measured from the scheduled time (what a caller waiting in
line sees) and, separately, from the actual send. Calls are spread over several connections
because a multi-process server (SO_REUSEPORT) balances by connection.

The requests come from ``bench.traffic`` (the same traffic the Locust users send).
"""

from __future__ import annotations

import asyncio
import os
import struct
import subprocess
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from bench.cpu import cpu_ms_per_call, cpu_seconds
from bench.traffic import Traffic
from recsvc.errors import RecsvcError
from recsvc.v1 import outreach_pb2, outreach_pb2_grpc, recommender_pb2, recommender_pb2_grpc

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


async def fixed_rate(
    target: str,
    make_request: Callable[[], tuple[str, Any]],
    rate: float,
    duration_s: float,
    *,
    label: str,
    connections: int = 4,
    deadline_s: float = 1.0,
    warmup_s: float = 2.0,
    metadata: tuple[tuple[str, str], ...] = (),
    cpu_probe: Callable[[], dict[str, float]] | None = None,
) -> RateResult:
    """Offer ``rate`` calls/s for ``warmup_s + duration_s``; report on the last ``duration_s``."""
    if rate <= 0 or duration_s <= 0:
        raise ValueError("rate and duration must be > 0")
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
    return _summarize(
        label, rate, duration_s, latency, service, codes, warm_n, lag_max * 1000, cpu_before, cpu_after
    )


def _summarize(
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


# --- the native client (load/grpcload): same schedule and result, a compiled sender ---------------

NATIVE_CLIENT = Path(__file__).resolve().parents[1] / "load" / "grpcload" / "grpcload"
REQUESTS_MAGIC = b"GRPCLDQ1"
# One record per call in the native client's results file (load/grpcload/README.md).
RESULT_DTYPE = np.dtype(
    [
        ("scheduled_ns", "<i8"),  # from t0: call i is scheduled at i / rate
        ("sent_ns", "<i8"),
        ("done_ns", "<i8"),  # -1: never completed
        ("status", "<i4"),  # grpc status code; -1: never completed
        ("method", "<i4"),  # index into the requests file's method table
    ]
)
_STATUS_NAMES = {int(c.value[0]): c.name for c in grpc.StatusCode}
_SERVICES = {
    "Recommender": recommender_pb2.DESCRIPTOR.services_by_name["Recommender"].full_name,
    "Outreach": outreach_pb2.DESCRIPTOR.services_by_name["Outreach"].full_name,
}


class NativeClientError(RecsvcError):
    reason = "NATIVE_LOAD_CLIENT"


def method_path(rpc: str) -> str:
    """``/recsvc.v1.Outreach/CheckOutreach`` for the outreach RPCs, else under Recommender."""
    return f"/{_SERVICES['Outreach' if rpc in OUTREACH_RPCS else 'Recommender']}/{rpc}"


def status_name(code: int) -> str:
    """``grpc.StatusCode`` name of a status code int (``NOT_COMPLETED`` for -1)."""
    if code == -1:
        return "NOT_COMPLETED"
    return _STATUS_NAMES.get(code, f"CODE_{code}")


def write_requests(path: Path, requests: Iterable[tuple[str, bytes]]) -> int:
    """Write ``(full method path, serialized request)`` pairs as the native client's requests
    file: magic, uint32 method count, per method (uint16 length, UTF-8 name), then per request
    (uint8 method index, uint32 length, bytes); little-endian. Returns the number of requests."""
    methods: dict[str, int] = {}
    body: list[bytes] = []
    for method, payload in requests:
        index = methods.setdefault(method, len(methods))
        if index > 255:
            raise ValueError("the requests file holds at most 256 methods")
        body += [struct.pack("<BI", index, len(payload)), payload]
    header = [REQUESTS_MAGIC, struct.pack("<I", len(methods))]
    for name in methods:
        encoded = name.encode()
        header += [struct.pack("<H", len(encoded)), encoded]
    path.write_bytes(b"".join(header + body))
    return len(body) // 2


def read_requests(path: Path) -> list[tuple[str, bytes]]:
    """The inverse of ``write_requests`` (for tests and for looking into a file)."""
    data = path.read_bytes()
    if not data.startswith(REQUESTS_MAGIC):
        raise ValueError(f"{path}: not a requests file")
    pos = len(REQUESTS_MAGIC)
    (n_methods,) = struct.unpack_from("<I", data, pos)
    pos += 4
    methods = []
    for _ in range(n_methods):
        (length,) = struct.unpack_from("<H", data, pos)
        methods.append(data[pos + 2 : pos + 2 + length].decode())
        pos += 2 + length
    out = []
    while pos < len(data):
        index, length = struct.unpack_from("<BI", data, pos)
        out.append((methods[index], data[pos + 5 : pos + 5 + length]))
        pos += 5 + length
    return out


def read_results(path: Path) -> np.ndarray:
    """The native client's per-call records (``RESULT_DTYPE``)."""
    return np.fromfile(path, dtype=RESULT_DTYPE)


def find_native_client(binary: Path | None = None) -> Path:
    """``binary``, or the one built in load/grpcload; a clear error when it is not built."""
    path = binary if binary is not None else NATIVE_CLIENT
    if not (path.is_file() and os.access(path, os.X_OK)):
        raise NativeClientError(
            f"native load client {path} not found: build it with `make -C load/grpcload` "
            "(needs g++, pkg-config and libgrpc++-dev)"
        )
    return path


def summarize_native(
    records: np.ndarray,
    *,
    label: str,
    rate: float,
    duration_s: float,
    warm_n: int,
    cpu_before: dict[str, float],
    cpu_after: dict[str, float],
) -> RateResult:
    """The ``RateResult`` of a native run: the same computation as ``fixed_rate``'s."""
    done = records["done_ns"]
    completed = done >= 0
    latency = np.where(completed, (done - records["scheduled_ns"]) / 1e6, np.nan)
    service = np.where(completed, (done - records["sent_ns"]) / 1e6, np.nan)
    lag = float((records["sent_ns"] - records["scheduled_ns"]).max()) / 1e6 if records.shape[0] else 0.0
    codes = [status_name(int(c)) for c in records["status"]]
    return _summarize(label, rate, duration_s, latency, service, codes, warm_n, lag, cpu_before, cpu_after)


def _native_command(
    binary: Path,
    target: str,
    rate: float,
    duration_s: float,
    warmup_s: float,
    connections: int,
    deadline_s: float,
    connect_timeout_s: float,
    metadata: tuple[tuple[str, str], ...],
    requests: Path,
    out: Path,
) -> list[str]:
    cmd = [
        str(binary), "--target", target, "--requests", str(requests), "--out", str(out),
        "--rate", repr(rate), "--duration", repr(duration_s), "--warmup", repr(warmup_s),
        "--connections", str(connections), "--deadline", repr(deadline_s),
        "--connect-timeout", repr(connect_timeout_s),
    ]  # fmt: skip
    for key, value in metadata:
        cmd += ["--metadata", f"{key}={value}"]
    return cmd


def _start_time(proc: subprocess.Popen[str]) -> float | None:
    """The client's t0 (CLOCK_MONOTONIC seconds, ``time.monotonic``'s clock) from its first
    line; None when it exited without starting."""
    assert proc.stdout is not None
    line = proc.stdout.readline()
    return float(line.split()[1]) if line.startswith("start ") else None


def _failure(proc: subprocess.Popen[str], stderr_log: Path) -> NativeClientError:
    """The client's exit code and the end of what it wrote to stderr, as one error."""
    stderr = " ".join(stderr_log.read_text().split())[-2000:]
    return NativeClientError(f"native load client failed (exit code {proc.returncode}): {stderr}")


def _cpu_at(when: float, pid: int, probe: Callable[[], dict[str, float]] | None) -> dict[str, float]:
    """Sleep until ``when`` (monotonic), then CPU seconds so far per role, ``client`` being the
    native client (this process only sleeps)."""
    time.sleep(max(0.0, when - time.monotonic()))
    out = probe() if probe is not None else {}
    out["client"] = cpu_seconds(pid)
    return out


def fixed_rate_native(
    target: str,
    make_request: Callable[[], tuple[str, Any]],
    rate: float,
    duration_s: float,
    *,
    label: str,
    connections: int = 4,
    deadline_s: float = 1.0,
    warmup_s: float = 2.0,
    metadata: tuple[tuple[str, str], ...] = (),
    cpu_probe: Callable[[], dict[str, float]] | None = None,
    binary: Path | None = None,
    connect_timeout_s: float = 10.0,
) -> RateResult:
    """``fixed_rate`` with the compiled client (load/grpcload) sending: the same schedule,
    requests (built here, in call order), warm-up exclusion and result.

    The client prints its t0 once its connections are up; this process then sleeps until the
    first measured call is due and until the call after the last would be, sampling CPU there
    (``cpu_probe``'s roles, and ``client`` = the native client's CPU, measured even without a
    probe). A connection not up after ``connect_timeout_s`` is not an error: its calls fail
    (UNAVAILABLE) and are counted."""
    if rate <= 0 or duration_s <= 0:
        raise ValueError("rate and duration must be > 0")
    exe = find_native_client(binary)
    total = int(rate * (warmup_s + duration_s))
    warm_n = round(rate * warmup_s)
    with tempfile.TemporaryDirectory(prefix="recsvc-grpcload-") as tmp:
        work = Path(tmp)
        calls = (make_request() for _ in range(total))
        write_requests(work / "requests.bin", ((method_path(n), r.SerializeToString()) for n, r in calls))
        cmd = _native_command(
            exe, target, rate, duration_s, warmup_s, connections, deadline_s, connect_timeout_s,
            metadata, work / "requests.bin", work / "results.bin",
        )  # fmt: skip
        stderr_log = work / "stderr.log"
        with (
            stderr_log.open("w") as err,
            subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, text=True) as proc,
        ):
            try:
                t0 = _start_time(proc)
                if t0 is None:
                    proc.wait(timeout=30)
                    raise _failure(proc, stderr_log)
                cpu_before = _cpu_at(t0 + warm_n / rate, proc.pid, cpu_probe)
                cpu_after = _cpu_at(t0 + total / rate, proc.pid, cpu_probe)
                proc.communicate(timeout=deadline_s + 60)  # every call has a deadline
            except BaseException:
                proc.kill()  # no-op when it has exited; Popen's exit reaps it
                raise
        if proc.returncode != 0:
            raise _failure(proc, stderr_log)
        records = read_results(work / "results.bin")
    if records.shape[0] != total:
        raise NativeClientError(f"native load client recorded {records.shape[0]} calls, expected {total}")
    return summarize_native(
        records, label=label, rate=rate, duration_s=duration_s, warm_n=warm_n,
        cpu_before=cpu_before, cpu_after=cpu_after,
    )  # fmt: skip


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
    if client == "native":
        binary = find_native_client(native_binary)
        return [
            fixed_rate_native(target, make, rate, duration_s, label=rpc, binary=binary, **kwargs)
            for rate in sorted(rates)
        ]
    if client != "python":
        raise ValueError(f"unknown load client {client!r}; use python or native")
    return [
        asyncio.run(fixed_rate(target, make, rate, duration_s, label=rpc, **kwargs)) for rate in sorted(rates)
    ]
