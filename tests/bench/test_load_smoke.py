"""The documented load command, run for real for a few seconds at a tiny rate.

``recsvc load run`` generates a tiny sample, trains and registers a champion, starts a real
redis-server and ``recsvc serve``, runs Locust headless in its own process, writes the report
folder and stops everything. A second test points the command at a scripted gRPC server whose
answers are known in advance, to prove that every failure is counted under its real status code.
Locust itself is never imported here (it monkey-patches the standard library through gevent).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
import numpy as np
import pytest

from bench.timeline import load_samples
from recsvc.v1 import outreach_pb2, outreach_pb2_grpc, recommender_pb2, recommender_pb2_grpc

pytestmark = pytest.mark.integration

REPORT_FILES = (
    "stats_stats.csv",
    "stats_failures.csv",
    "stats_stats_history.csv",
    "report.html",
    "summary.md",
    "summary.json",
    "config.json",
)
RPCS = (
    "RecommendProducts",
    "SimilarItems",
    "RecommendContent",
    "RecordEvent",
    "CheckOutreach",
    "ReserveOutreach",
)


def _load_run(args: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "recsvc", "load", "run", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def _one_results_dir(root: Path) -> Path:
    dirs = [p for p in root.iterdir() if p.is_dir()]
    assert len(dirs) == 1, dirs
    for name in REPORT_FILES:
        assert (dirs[0] / name).is_file(), f"{name} missing from {dirs[0]}"
    assert "Locust" in (dirs[0] / "report.html").read_text()[:20000]
    return dirs[0]


def _port_closed(host: str) -> bool:
    addr, port = host.rsplit(":", 1)
    with socket.socket() as s:
        s.settimeout(1.0)
        return s.connect_ex((addr, int(port))) != 0


def _equal_weights_config(tmp_path: Path, extra: str = "", similar_items: int = 1) -> Path:
    cfg = tmp_path / "load.toml"
    cfg.write_text(
        "[weights]\n"
        + "".join(
            f"{k} = {similar_items if k == 'similar_items' else 1}\n"
            for k in (
                "recommend_products",
                "similar_items",
                "recommend_content",
                "record_event",
                "check_outreach",
                "reserve_outreach",
            )
        )
        + extra
    )
    return cfg


@pytest.mark.slow
def test_documented_load_command_writes_a_real_report(tmp_path: Path) -> None:
    # Half of product pages are for delisted items (every other one, the first included): the
    # real server must answer NOT_FOUND to those and nothing else to the rest.
    # Product pages weigh 3 of 8, so a 6 s run cannot miss them (~40 calls: P(none) < 1e-8).
    cfg = _equal_weights_config(tmp_path, "[requests]\nstale_item_share = 0.5\n", similar_items=3)
    results = tmp_path / "results"
    proc = _load_run(
        [
            "--load-config", str(cfg), "--members", "300", "--users", "2", "--rate-per-user", "5",
            "--duration", "6", "--workers", "1", "--results", str(results),
            "--workdir", str(tmp_path / "work"),
        ],
        timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = _one_results_dir(results)
    summary = json.loads((out / "summary.json").read_text())
    by_rpc = {r["name"]: r for r in summary["rpcs"]}
    assert summary["total"]["requests"] > 20
    assert set(by_rpc) == set(RPCS), by_rpc.keys()
    # Failure counts are the real ones: the summary agrees with every call recorded after the
    # warm-up (5 s by default, not measured).
    samples = load_samples(out)
    assert samples is not None
    samples = samples.select(samples.t - samples.started_at >= 5.0)
    assert len(samples) == summary["total"]["requests"]
    for name, stats in by_rpc.items():
        codes = samples.code[samples.rpc == name]
        assert stats["failures"] == int((codes != "OK").sum()), name
        assert sum(stats["failures_by_code"].values()) == stats["failures"], name
    similar = by_rpc["SimilarItems"]
    assert similar["failures_by_code"].get("NOT_FOUND", 0) > 0, similar
    assert set(similar["failures_by_code"]) == {"NOT_FOUND"}, similar
    assert similar["failures"] < similar["requests"], similar  # the listed pages were answered
    assert by_rpc["RecommendProducts"]["failures"] == 0, by_rpc["RecommendProducts"]
    # Everything the command started is gone.
    assert _port_closed(summary["context"]["host"])
    assert "RecommendProducts" in (out / "summary.md").read_text()


class _ScriptedRecommender(recommender_pb2_grpc.RecommenderServicer):
    def __init__(self) -> None:
        self.api_keys: set[str] = set()

    def RecommendProducts(self, request, context):  # type: ignore[no-untyped-def]
        self.api_keys.update(v for k, v in context.invocation_metadata() if k == "x-api-key")
        return recommender_pb2.RecommendResponse(model_version="scripted")

    def RecommendContent(self, request, context):  # type: ignore[no-untyped-def]
        return recommender_pb2.RecommendResponse(model_version="scripted")

    def SimilarItems(self, request, context):  # type: ignore[no-untyped-def]
        context.abort(grpc.StatusCode.NOT_FOUND, f"unknown item {request.item_id}")

    def RecordEvent(self, request, context):  # type: ignore[no-untyped-def]
        context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "scripted overload")


class _ScriptedOutreach(outreach_pb2_grpc.OutreachServicer):
    def CheckOutreach(self, request, context):  # type: ignore[no-untyped-def]
        return outreach_pb2.OutreachDecision(allowed=False, reason=outreach_pb2.NO_CONSENT)

    def ReserveOutreach(self, request, context):  # type: ignore[no-untyped-def]
        context.abort(grpc.StatusCode.UNAVAILABLE, "scripted outage")


# The generated stubs declare every RPC abstract, but at runtime the base servicer answers the ones
# not scripted here with UNIMPLEMENTED, which is all these servers need.
SCRIPTED = _ScriptedRecommender()  # type: ignore[abstract]


@pytest.fixture
def scripted_server() -> Iterator[str]:
    """A gRPC server whose answers are fixed per RPC, so the expected failure table is known."""
    SCRIPTED.api_keys.clear()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    recommender_pb2_grpc.add_RecommenderServicer_to_server(SCRIPTED, server)
    outreach_pb2_grpc.add_OutreachServicer_to_server(_ScriptedOutreach(), server)  # type: ignore[abstract]
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield f"127.0.0.1:{port}"
    server.stop(grace=0)


def _id_bundle(tmp_path: Path) -> Path:
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    np.save(bundle / "member_ids.npy", np.array([f"M{i:04d}" for i in range(50)], dtype="S"))
    items = [f"C{i:03d}" for i in range(5)] + [f"P{i:03d}" for i in range(20)]
    np.save(bundle / "item_ids.npy", np.array(items, dtype="S"))
    np.save(bundle / "item_kind.npy", np.array([2] * 5 + [1] * 20, dtype=np.uint8))
    return bundle


def test_failures_are_counted_under_their_status_code(tmp_path: Path, scripted_server: str) -> None:
    results = tmp_path / "results"
    proc = _load_run(
        [
            "--host", scripted_server, "--bundle", str(_id_bundle(tmp_path)),
            "--load-config", str(_equal_weights_config(tmp_path)),
            "--users", "2", "--rate-per-user", "10", "--duration", "3", "--results", str(results),
            "--api-key", "sk-load-test-secret",
        ],
        timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = _one_results_dir(results)
    recorded = (out / "config.json").read_text()
    assert "sk-load-test-secret" not in recorded and '"x-api-key": "<redacted>"' in recorded
    assert SCRIPTED.api_keys == {"sk-load-test-secret"}  # sent with the calls, recorded nowhere
    summary = json.loads((out / "summary.json").read_text())
    by_rpc = {r["name"]: r for r in summary["rpcs"]}
    expected = {
        "SimilarItems": "NOT_FOUND",
        "RecordEvent": "RESOURCE_EXHAUSTED",
        "ReserveOutreach": "UNAVAILABLE",
    }
    for name in RPCS:
        stats = by_rpc[name]
        assert stats["requests"] > 0, name
        if name in expected:
            assert stats["failures_by_code"] == {expected[name]: stats["requests"]}, stats
        else:
            assert stats["failures"] == 0, stats
    assert summary["total"]["failures"] == sum(by_rpc[n]["requests"] for n in expected)


def test_host_without_bundle_is_refused_with_a_clear_message(tmp_path: Path) -> None:
    proc = _load_run(["--host", "127.0.0.1:1", "--results", str(tmp_path)], timeout=60)
    assert proc.returncode == 2
    assert "--bundle is required with --host" in proc.stderr
    assert "Traceback" not in proc.stderr
    proc = _load_run(["--bundle", str(tmp_path), "--results", str(tmp_path / "r")], timeout=60)
    assert proc.returncode == 2 and "is not a model bundle" in proc.stderr, proc.stderr
    assert not (tmp_path / "r").exists()  # refused before anything started


def test_fixed_rate_client_sends_on_schedule_and_counts_codes(scripted_server: str, tmp_path: Path) -> None:
    import asyncio

    from bench.cpu import cpu_probe
    from bench.loadconfig import LoadConfig
    from bench.ratebench import RateRun, fixed_rate, request_maker
    from bench.traffic import ServedIds, Traffic

    traffic = Traffic(ServedIds.from_bundle(_id_bundle(tmp_path)), LoadConfig())
    result = asyncio.run(
        fixed_rate(
            RateRun(
                scripted_server,
                request_maker(traffic, "SimilarItems"),
                50,
                1.0,
                label="SimilarItems",
                warmup_s=0.5,
            )
        )
    )
    assert result.sent == 50  # exactly rate x measured window, warm-up excluded
    assert result.codes == {"NOT_FOUND": 50} and result.completed_ok == 0 and result.error_pct == 100.0
    ok = asyncio.run(
        fixed_rate(
            RateRun(
                scripted_server,
                request_maker(traffic, "RecommendProducts"),
                40,
                1.0,
                label="RP",
                warmup_s=0.2,
                cpu_probe=cpu_probe(None, None),
            )
        )
    )
    assert ok.sent == 40 and ok.completed_ok == 40 and ok.codes == {}
    assert ok.cpu_ms_per_call["client"] > 0  # this process's CPU over the measured window, per call
    assert ok.p50_ms is not None and ok.p99_ms is not None and 0 < ok.p50_ms <= ok.p99_ms


def _processes_mentioning(text: str) -> list[int]:
    found = []
    for env_file in Path("/proc").glob("[0-9]*/environ"):
        try:
            blob = env_file.read_bytes() + (env_file.parent / "cmdline").read_bytes()
        except OSError:
            continue
        if text.encode() in blob:
            found.append(int(env_file.parent.name))
    return found


def test_a_server_that_never_serves_is_stopped_with_everything_else(tmp_path: Path) -> None:
    # A bundle of an unknown schema version: the server refuses to load it and never reports SERVING.
    not_a_bundle = _id_bundle(tmp_path)
    (not_a_bundle / "manifest.json").write_text(json.dumps({"schema_version": 999}))
    work = tmp_path / "work"
    proc = _load_run(
        ["--bundle", str(not_a_bundle), "--workers", "1", "--startup-timeout", "8",
         "--results", str(tmp_path / "results"), "--workdir", str(work)],
        timeout=180,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert (
        "error" in proc.stderr and "Traceback (most recent call last)" not in proc.stderr.split("log tail")[0]
    )
    # Neither the server (its environment names the work folder) nor redis-server is left running.
    assert _processes_mentioning(str(work)) == []


def test_an_impossible_target_fails_the_run_and_is_named(tmp_path: Path, scripted_server: str) -> None:
    """A release gate: --fail-on-miss exits 1 naming the missed target; the warm-up is left out;
    the report folder has the plots and one page with them."""
    results = tmp_path / "results"
    proc = _load_run(
        [
            "--host", scripted_server, "--bundle", str(_id_bundle(tmp_path)),
            "--load-config", str(_equal_weights_config(tmp_path, "[targets]\nmax_error_pct = 100\n")),
            "--users", "2", "--rate-per-user", "10", "--duration", "2", "--warmup", "1",
            "--target", "p99_ms=0.001", "--fail-on-miss", "--results", str(results),
        ],
        timeout=120,
    )  # fmt: skip
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "missed target p99_ms: measured" in proc.stderr and "target <= 0.001" in proc.stderr
    out = _one_results_dir(results)
    summary = json.loads((out / "summary.json").read_text())
    verdicts = {v["target"]: v["passed"] for v in summary["verdicts"]}
    assert verdicts == {"p99_ms": False, "max_error_pct": True} and summary["passed"] is False
    assert "**FAIL**: missed 1 of 2 targets: p99_ms" in (out / "summary.md").read_text()
    samples = load_samples(out)
    assert samples is not None
    measured = int((samples.t - samples.started_at >= 1.0).sum())
    assert summary["total"]["requests"] == measured < len(samples)  # the first second is not in it
    assert {p.name for p in (out / "plots").iterdir()} == {"latency.png", "throughput.png", "errors.png"}
    assert (out / "report-plots.html").read_text().count("data:image/png;base64,") == 3


def test_plain_locust_honours_users_rate_and_time_and_finds_a_bundle(
    tmp_path: Path, scripted_server: str
) -> None:
    """`locust -f load/locustfile.py --headless -u N -r N -t T --host ...` as Locust users expect:
    no shape unless --shape, the bundle `recsvc load run` cached when --bundle is not given, and
    a clear message when there is none."""
    root = Path(__file__).resolve().parents[2]
    copy = tmp_path / "checkout" / "load" / "locustfile.py"  # its default bundles: checkout/var/load
    copy.parent.mkdir(parents=True)
    copy.write_text((root / "load" / "locustfile.py").read_text())
    locust = [str(Path(sys.executable).parent / "locust"), "-f", str(copy), "--headless"]
    args = ["-u", "3", "-r", "3", "-t", "3s", "--host", scripted_server, "--exit-code-on-error", "0"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])}
    missing = subprocess.run([*locust, *args], capture_output=True, text=True, timeout=120, env=env)
    assert missing.returncode == 2, missing.stderr[-2000:]
    assert "no --bundle given and no bundle cached under" in missing.stderr
    cached = tmp_path / "checkout" / "var" / "load" / "sample" / "bundle"
    cached.parent.mkdir(parents=True)
    _id_bundle(tmp_path).rename(cached)
    (cached / "manifest.json").write_text("{}")
    prefix = tmp_path / "stats"
    t0 = time.monotonic()
    run = subprocess.run(
        [*locust, *args, "--csv", str(prefix), "--only-summary"],
        capture_output=True, text=True, timeout=120, env=env,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    assert time.monotonic() - t0 < 60  # -t 3s, not the config shape's 60 s
    assert "(3 total users)" in run.stderr, run.stderr[-3000:]  # -u 3, not the config shape's 20
    assert str(cached) in run.stderr  # said where the ids came from


def test_a_run_whose_every_call_failed_exits_2_without_fail_on_miss(tmp_path: Path) -> None:
    """A server that refuses every call (here: it serves nothing, as a wrong key or target
    would look) measured nothing: the run says so and exits 2, not 0 with a FAIL table."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        proc = _load_run(
            [
                "--host", f"127.0.0.1:{port}", "--bundle", str(_id_bundle(tmp_path)),
                "--load-config", str(_equal_weights_config(tmp_path)),
                "--users", "1", "--rate-per-user", "5", "--duration", "2",
                "--results", str(tmp_path / "results"),
            ],
            timeout=120,
        )  # fmt: skip
    finally:
        server.stop(grace=0)
    assert proc.returncode == 2, proc.stdout[-3000:] + proc.stderr[-3000:]
    said = proc.stdout + proc.stderr
    assert "error NOTHING_MEASURED" in said and "UNIMPLEMENTED" in said, said[-2000:]
    assert "Traceback" not in said
