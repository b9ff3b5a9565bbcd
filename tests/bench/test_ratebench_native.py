"""The native load client (load/grpcload) and its Python driver, ``fixed_rate_native``.

The file formats and the result computation are tested without the binary. The end-to-end tests
run the built binary against the echo server and against in-process servers. They are skipped,
with the build command as the reason, when it is not built.
"""

from __future__ import annotations

import itertools
import re
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from bench.cpu import cpu_probe
from bench.native_client import (
    NATIVE_CLIENT,
    REQUESTS_MAGIC,
    RESULT_DTYPE,
    NativeClientError,
    find_native_client,
    fixed_rate_native,
    method_path,
    read_requests,
    read_results,
    status_name,
    summarize_native,
    write_requests,
)
from bench.ratebench import RateRun
from recsvc.v1 import outreach_pb2, recommender_pb2

needs_binary = pytest.mark.skipif(
    not NATIVE_CLIENT.is_file(), reason=f"{NATIVE_CLIENT} not built: run `make -C load/grpcload`"
)


# --- formats and the result computation (no binary) ----------------------------------------------


def test_requests_file_round_trips_with_its_method_table(tmp_path: Path) -> None:
    reqs = [
        (
            method_path("RecommendProducts"),
            recommender_pb2.RecommendProductsRequest(member_id="M1").SerializeToString(),
        ),
        (method_path("CheckOutreach"), outreach_pb2.OutreachRequest(member_id="M2").SerializeToString()),
        (method_path("RecommendProducts"), b""),  # an all-defaults message serializes to nothing
    ]
    path = tmp_path / "requests.bin"
    assert write_requests(path, reqs) == 3
    assert read_requests(path) == reqs
    data = path.read_bytes()
    # The layout grpcload.cc parses: magic, uint32 method count, (uint16 length, name) per method...
    assert data.startswith(REQUESTS_MAGIC + (2).to_bytes(4, "little"))
    first = b"/recsvc.v1.Recommender/RecommendProducts"
    assert data[12:14] == len(first).to_bytes(2, "little") and data[14 : 14 + len(first)] == first
    # ...then (uint8 method index, uint32 length, bytes) per request; the last one is empty.
    assert data.endswith(b"\x00" + (0).to_bytes(4, "little"))


def test_method_paths_and_status_names() -> None:
    assert method_path("RecommendProducts") == "/recsvc.v1.Recommender/RecommendProducts"
    assert method_path("SimilarItems") == "/recsvc.v1.Recommender/SimilarItems"
    assert method_path("CheckOutreach") == "/recsvc.v1.Outreach/CheckOutreach"
    assert method_path("ReserveOutreach") == "/recsvc.v1.Outreach/ReserveOutreach"
    assert method_path("SetStock") == "/recsvc.v1.Catalog/SetStock"
    assert [status_name(c) for c in (0, 4, 12, 14, -1, 99)] == [
        "OK", "DEADLINE_EXCEEDED", "UNIMPLEMENTED", "UNAVAILABLE", "NOT_COMPLETED", "CODE_99",
    ]  # fmt: skip


def _records(rows: list[tuple[int, int, int, int]]) -> np.ndarray:
    """(scheduled, sent, done, status) in ms, as the native client writes them (ns)."""
    out = np.zeros(len(rows), dtype=RESULT_DTYPE)
    for i, (scheduled, sent, done, status) in enumerate(rows):
        out[i] = (scheduled * 10**6, sent * 10**6, done * 10**6 if done >= 0 else -1, status, 0)
    return out


def test_results_file_is_read_and_summarized_like_the_python_client(tmp_path: Path) -> None:
    rows = [
        (0, 9, 100, 14),  # warm-up: left out of everything but the client lag
        (10, 11, 12, 0),
        (20, 21, 24, 0),
        (30, 30, 31, 4),
        (40, 41, -1, -1),  # never completed: counted as an error, no latency
    ]
    path = tmp_path / "results.bin"
    _records(rows).tofile(path)
    assert path.stat().st_size == 32 * len(rows)  # the documented record size
    records = read_results(path)
    assert records.shape == (5,) and records["status"].tolist() == [14, 0, 0, 4, -1]
    r = summarize_native(
        records, label="RP", rate=100.0, duration_s=0.04, warm_n=1,
        cpu_before={"client": 1.0, "server": 2.0}, cpu_after={"client": 1.004, "server": 2.02},
    )  # fmt: skip
    assert (r.rpc, r.offered_rps, r.sent, r.completed_ok) == ("RP", 100.0, 4, 2)
    assert r.achieved_rps == pytest.approx(50.0)
    assert r.codes == {"DEADLINE_EXCEEDED": 1, "NOT_COMPLETED": 1} and r.error_pct == pytest.approx(50.0)
    # Percentiles over the calls that completed: latency from the schedule, service from the send.
    assert r.p50_ms == pytest.approx(2.0) and r.max_ms == pytest.approx(4.0)
    assert r.service_p50_ms == pytest.approx(1.0)
    assert r.max_send_lag_ms == pytest.approx(9.0)  # the warm-up's lag counts, as in fixed_rate
    assert r.cpu_ms_per_call == pytest.approx({"client": 1.0, "server": 5.0})


def test_a_missing_binary_names_the_build_command(tmp_path: Path) -> None:
    with pytest.raises(NativeClientError, match=r"make -C load/grpcload"):
        find_native_client(tmp_path / "grpcload")


def test_a_client_that_fails_to_start_raises_with_its_message(tmp_path: Path) -> None:
    fake = tmp_path / "grpcload"
    fake.write_text("#!/bin/sh\necho 'grpcload: error: cannot read requests file x' >&2\nexit 2\n")
    fake.chmod(0o755)
    make = itertools.repeat(("RecommendProducts", recommender_pb2.RecommendProductsRequest())).__next__
    with pytest.raises(NativeClientError, match=r"exit code 2\).*cannot read requests file"):
        fixed_rate_native(RateRun("127.0.0.1:1", make, 10, 1.0, label="RP", warmup_s=0), binary=fake)


# --- end to end, with the built binary ------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def echo_server() -> Iterator[tuple[str, int]]:
    """``recsvc load bench echo`` on a free port: (target, pid)."""
    cmd = [sys.executable, "-m", "recsvc", "load", "bench", "echo", "--port", "0"]
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as proc:
        try:
            assert proc.stdout is not None
            lines = []
            for line in proc.stdout:  # its first line names the port (after any warnings)
                lines.append(line)
                if found := re.search(r"echo server on (\S+:\d+)", line):
                    break
            else:
                pytest.fail(f"echo server did not start: {''.join(lines)[-2000:]}")
            yield found.group(1), proc.pid
        finally:
            proc.terminate()


def _cycle(*calls: tuple[str, Any]) -> Callable[[], tuple[str, Any]]:
    return itertools.cycle(calls).__next__


def _recommend(member: str = "M0001") -> tuple[str, Any]:
    return "RecommendProducts", recommender_pb2.RecommendProductsRequest(member_id=member, k=20)


@needs_binary
@pytest.mark.integration
def test_native_client_offers_the_rate_and_every_call_answers(echo_server: tuple[str, int]) -> None:
    target, pid = echo_server
    r = fixed_rate_native(
        RateRun(
            target, _cycle(_recommend("M1"), _recommend("M2")), 200, 1.5,
            label="RecommendProducts", warmup_s=0.5, connections=2, cpu_probe=cpu_probe(pid, None),
        )
    )  # fmt: skip
    assert r.sent == 300 and r.completed_ok == 300 and r.codes == {} and r.error_pct == 0.0
    assert r.achieved_rps == pytest.approx(200.0)
    assert r.p50_ms is not None and r.p99_ms is not None and r.max_ms is not None
    assert 0 < r.p50_ms <= r.p99_ms <= r.max_ms < 1000
    assert r.service_p50_ms is not None and 0 < r.service_p50_ms <= r.p50_ms  # sent at or after schedule
    assert 0 <= r.max_send_lag_ms < 500
    # The client role is the native client's CPU (a child process), not this one's.
    assert r.cpu_ms_per_call["client"] > 0 and r.cpu_ms_per_call["server"] > 0


@needs_binary
@pytest.mark.integration
def test_each_request_goes_to_its_own_method(echo_server: tuple[str, int]) -> None:
    target, _ = echo_server
    outreach = ("CheckOutreach", outreach_pb2.OutreachRequest(member_id="M1", channel="sms"))
    r = fixed_rate_native(
        RateRun(target, _cycle(_recommend(), outreach), 100, 1.0, label="mixed", warmup_s=0.2)
    )
    # The echo server has no Outreach service: those calls, every second one, are UNIMPLEMENTED.
    assert r.sent == 100 and r.completed_ok == 50 and r.codes == {"UNIMPLEMENTED": 50}


@needs_binary
@pytest.mark.integration
def test_an_unreachable_server_is_counted_not_raised() -> None:
    run = RateRun(
        f"127.0.0.1:{_free_port()}", _cycle(_recommend()), 50, 1.0, label="RP", warmup_s=0, deadline_s=0.2
    )
    r = fixed_rate_native(run, connect_timeout_s=0.2)
    assert r.sent == 50 and r.completed_ok == 0 and r.error_pct == 100.0
    assert set(r.codes) <= {"UNAVAILABLE", "DEADLINE_EXCEEDED"} and sum(r.codes.values()) == 50


@needs_binary
@pytest.mark.integration
def test_metadata_is_sent_over_separate_connections() -> None:
    seen: list[tuple[dict[str, str], str]] = []

    def recommend(request: object, context: grpc.ServicerContext) -> recommender_pb2.RecommendResponse:
        seen.append(({k: str(v) for k, v in context.invocation_metadata()}, context.peer()))
        return recommender_pb2.RecommendResponse(model_version="test")

    handler = grpc.method_handlers_generic_handler(
        "recsvc.v1.Recommender",
        {
            "RecommendProducts": grpc.unary_unary_rpc_method_handler(
                recommend,
                request_deserializer=recommender_pb2.RecommendProductsRequest.FromString,
                response_serializer=recommender_pb2.RecommendResponse.SerializeToString,
            )
        },
    )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        r = fixed_rate_native(
            RateRun(
                f"127.0.0.1:{port}", _cycle(_recommend()), 60, 0.5, label="RP", warmup_s=0,
                connections=3, metadata=(("x-api-key", "sk-native"), ("x-tenant", "t1")),
            )
        )  # fmt: skip
    finally:
        server.stop(0)
    assert r.completed_ok == 30 and len(seen) == 30
    assert all(md["x-api-key"] == "sk-native" and md["x-tenant"] == "t1" for md, _ in seen)
    assert len({peer for _, peer in seen}) == 3  # one TCP connection per channel


@needs_binary
def test_binary_refuses_bad_input_with_a_clear_message(tmp_path: Path) -> None:
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(NATIVE_CLIENT), *args], capture_output=True, text=True, timeout=30)

    base = ["--target", "127.0.0.1:1", "--out", str(tmp_path / "out.bin"), "--rate", "10", "--duration", "1"]
    missing = run(*base, "--requests", str(tmp_path / "nope.bin"))
    assert missing.returncode == 2 and "cannot read requests file" in missing.stderr
    (tmp_path / "junk.bin").write_bytes(b"not a requests file")
    junk = run(*base, "--requests", str(tmp_path / "junk.bin"))
    assert junk.returncode == 2 and "not a grpcload requests file" in junk.stderr
    write_requests(tmp_path / "cut.bin", [_as_bytes(_recommend())])
    (tmp_path / "cut.bin").write_bytes((tmp_path / "cut.bin").read_bytes()[:-3])
    cut = run(*base, "--requests", str(tmp_path / "cut.bin"))
    assert cut.returncode == 2 and "truncated" in cut.stderr
    bad_rate = run(*base[:4], "--rate", "fast", "--duration", "1", "--requests", "x")
    assert bad_rate.returncode == 2 and "--rate wants a number" in bad_rate.stderr
    assert not (tmp_path / "out.bin").exists()


def _as_bytes(call: tuple[str, Any]) -> tuple[str, bytes]:
    return method_path(call[0]), call[1].SerializeToString()
