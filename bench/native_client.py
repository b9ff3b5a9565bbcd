"""The native load client (load/grpcload, C++ grpc++ async): the requests file it reads, the
results file it writes, and ``fixed_rate_native``, which runs it on the same open-loop schedule as
``bench.ratebench.fixed_rate`` and summarises its results into the same ``RateResult``, so the
client does not compete with the server for the cores.
"""

from __future__ import annotations

import os
import struct
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import grpc
import numpy as np

from bench.cpu import cpu_seconds
from bench.ratebench import OUTREACH_RPCS, RateResult, RateRun, summarize_calls
from recsvc.errors import RecsvcError
from recsvc.v1 import catalog_pb2, outreach_pb2, recommender_pb2

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
    "Catalog": catalog_pb2.DESCRIPTOR.services_by_name["Catalog"].full_name,
}
CATALOG_RPCS = frozenset(m.name for m in catalog_pb2.DESCRIPTOR.services_by_name["Catalog"].methods)


class NativeClientError(RecsvcError):
    reason = "NATIVE_LOAD_CLIENT"


def method_path(rpc: str) -> str:
    """``/recsvc.v1.Outreach/CheckOutreach`` for the outreach RPCs, ``/recsvc.v1.Catalog/SetStock``
    for the catalog's, else under Recommender."""
    service = "Outreach" if rpc in OUTREACH_RPCS else "Catalog" if rpc in CATALOG_RPCS else "Recommender"
    return f"/{_SERVICES[service]}/{rpc}"


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
    return summarize_calls(
        label, rate, duration_s, latency, service, codes, warm_n, lag, cpu_before, cpu_after
    )


def _native_command(
    binary: Path, run: RateRun, connect_timeout_s: float, requests: Path, out: Path
) -> list[str]:
    cmd = [
        str(binary), "--target", run.target, "--requests", str(requests), "--out", str(out),
        "--rate", repr(run.rate), "--duration", repr(run.duration_s), "--warmup", repr(run.warmup_s),
        "--connections", str(run.connections), "--deadline", repr(run.deadline_s),
        "--connect-timeout", repr(connect_timeout_s),
    ]  # fmt: skip
    for key, value in run.metadata:
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
    run: RateRun, *, binary: Path | None = None, connect_timeout_s: float = 10.0
) -> RateResult:
    """``fixed_rate`` with the compiled client (load/grpcload) sending: the same schedule,
    requests (built here, in call order), warm-up exclusion and result.

    The client prints its t0 once its connections are up; this process then sleeps until the
    first measured call is due and until the call after the last would be, sampling CPU there
    (``run.cpu_probe``'s roles, and ``client`` = the native client's CPU, measured even without
    a probe). A connection not up after ``connect_timeout_s`` is not an error: its calls fail
    (UNAVAILABLE) and are counted."""
    rate, duration_s, warmup_s, deadline_s = run.rate, run.duration_s, run.warmup_s, run.deadline_s
    exe = find_native_client(binary)
    total = int(rate * (warmup_s + duration_s))
    warm_n = round(rate * warmup_s)
    with tempfile.TemporaryDirectory(prefix="recsvc-grpcload-") as tmp:
        work = Path(tmp)
        calls = (run.make_request() for _ in range(total))
        write_requests(work / "requests.bin", ((method_path(n), r.SerializeToString()) for n, r in calls))
        cmd = _native_command(exe, run, connect_timeout_s, work / "requests.bin", work / "results.bin")
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
                cpu_before = _cpu_at(t0 + warm_n / rate, proc.pid, run.cpu_probe)
                cpu_after = _cpu_at(t0 + total / rate, proc.pid, run.cpu_probe)
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
        records, label=run.label, rate=rate, duration_s=duration_s, warm_n=warm_n,
        cpu_before=cpu_before, cpu_after=cpu_after,
    )  # fmt: skip
