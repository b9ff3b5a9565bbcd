"""The load-test pieces that need no server and no Locust: config, shapes, traffic, timeline and
the summary built from Locust's CSV files."""

from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from bench import shapes
from bench.loadconfig import LoadConfig, load_config
from bench.loadrun import DEFAULT_CONFIG, find_bundle, new_results_dir
from bench.report import summarize, to_markdown
from bench.timeline import Timeline, load_samples, percentile_ms
from bench.traffic import ServedIds, Traffic, ZipfSampler
from recsvc.errors import BundleError, ConfigError
from recsvc.v1 import outreach_pb2

# -- config ---------------------------------------------------------------------------------------


def test_documented_config_file_is_valid_and_matches_defaults() -> None:
    from_file = load_config(DEFAULT_CONFIG)
    assert from_file.weights == LoadConfig().weights
    assert from_file.requests == LoadConfig().requests
    assert from_file.shape.kind == "steady"


def test_config_names_every_bad_key(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('host = "nohostport"\n[weights]\nrecomend_products = 3\n[members]\nunknown_share = 2\n')
    with pytest.raises(ConfigError) as err:
        load_config(bad)
    message = str(err.value)
    assert "host" in message and "recomend_products" in message and "unknown_share" in message
    assert str(bad) in message


def test_config_rejects_unknown_channel_and_all_zero_weights() -> None:
    with pytest.raises(ConfigError, match="carrier_pigeon"):
        load_config(None, {"requests": {"channels": {"carrier_pigeon": 1}}})
    zero = dict.fromkeys(LoadConfig().weights.model_dump(), 0)
    with pytest.raises(ConfigError, match="at least one RPC weight"):
        load_config(None, {"weights": zero})


def test_config_refuses_a_scene_the_server_would_refuse() -> None:
    with pytest.raises(ConfigError, match="only printable characters"):
        load_config(None, {"requests": {"scenes": ["home\nfeed"]}})
    with pytest.raises(ConfigError, match="64 bytes"):
        load_config(None, {"requests": {"scenes": ["x" * 65]}})
    assert load_config(None, {"requests": {"scenes": ["home feed", "直播间"]}}).requests.scenes[1] == "直播间"


def test_config_missing_and_broken_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.toml")
    broken = tmp_path / "broken.toml"
    broken.write_text("[shape\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(broken)


def test_overrides_win_over_file(tmp_path: Path) -> None:
    f = tmp_path / "c.toml"
    f.write_text("[shape]\nkind = 'ramp'\n[shape.steady]\nusers = 3\n")
    cfg = load_config(f, {"shape": {"kind": "spike"}})
    assert cfg.shape.kind == "spike" and cfg.shape.steady.users == 3


# -- shapes ---------------------------------------------------------------------------------------


def test_spike_is_ten_times_for_a_minute_then_back() -> None:
    cfg = LoadConfig().shape.model_copy(update={"kind": "spike"})
    base = cfg.spike.base_users
    assert shapes.target(cfg, 0)[0] == base  # type: ignore[index]
    assert shapes.target(cfg, cfg.spike.before_s - 0.1)[0] == base  # type: ignore[index]
    assert shapes.target(cfg, cfg.spike.before_s)[0] == 10 * base  # type: ignore[index]
    assert shapes.target(cfg, cfg.spike.before_s + 59.9)[0] == 10 * base  # type: ignore[index]
    assert cfg.spike.spike_s == 60
    assert shapes.target(cfg, cfg.spike.before_s + 60)[0] == base  # type: ignore[index]
    end = shapes.duration_s(cfg)
    assert shapes.target(cfg, end - 0.01) is not None
    assert shapes.target(cfg, end) is None
    assert [p.name for p in shapes.phases(cfg)] == ["before", "spike", "after"]


def test_ramp_steps_up_to_the_cap() -> None:
    cfg = load_config(
        None,
        {
            "shape": {
                "kind": "ramp",
                "ramp": {"start_users": 5, "step_users": 10, "step_s": 2, "max_users": 30},
            }
        },
    ).shape
    users = [p.users for p in shapes.phases(cfg)]
    assert users == [5, 15, 25, 30]
    assert shapes.target(cfg, 4.5) == (25, cfg.ramp.spawn_rate)
    assert shapes.duration_s(cfg) == 8
    assert shapes.target(cfg, 8) is None


def test_steady_shape_and_negative_time() -> None:
    cfg = load_config(None, {"shape": {"steady": {"users": 7, "duration_s": 3}}}).shape
    assert shapes.target(cfg, 2.9) == (7, cfg.steady.spawn_rate)
    assert shapes.target(cfg, 3.0) is None
    with pytest.raises(ValueError):
        shapes.target(cfg, -1)


# -- traffic --------------------------------------------------------------------------------------


def _ids(tmp_path: Path, members: int = 1000, products: int = 200, content: int = 20) -> Path:
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    m = np.array(sorted(f"M{i:06d}" for i in range(members)), dtype="S")
    items = sorted([f"P{i:05d}" for i in range(products)] + [f"C{i:04d}" for i in range(content)])
    kind = np.array([2 if i.startswith("C") else 1 for i in items], dtype=np.uint8)
    np.save(bundle / "member_ids.npy", m)
    np.save(bundle / "item_ids.npy", np.array(items, dtype="S"))
    np.save(bundle / "item_kind.npy", kind)
    return bundle


def test_zipf_sampler_has_a_long_tail() -> None:
    sampler = ZipfSampler(1000, 1.1, np.random.default_rng(1))
    draws = Counter(sampler.draw() for _ in range(20_000))
    top = sampler.top(10)
    top_share = sum(draws[int(i)] for i in top) / 20_000
    # Under 1/r^1.1 over 1000 ranks the top 1% takes about 40% of calls; uniform would be 1%.
    assert 0.3 < top_share < 0.5
    assert draws[int(top[0])] > draws[int(top[9])] > 0
    assert len(draws) > 400  # the tail is visited too
    assert int(top[0]) != 0 or int(top[1]) != 1  # ranks are shuffled onto ids


def test_traffic_draws_bundle_members_and_a_share_of_unknown_ones(tmp_path: Path) -> None:
    ids = ServedIds.from_bundle(_ids(tmp_path))
    cfg = load_config(None, {"members": {"unknown_share": 0.2, "seed": 3}})
    traffic = Traffic(ids, cfg)
    known = {m.decode() for m in ids.members}
    members = [traffic.recommend_products().member_id for _ in range(5000)]
    unknown = [m for m in members if m not in known]
    assert all(m.startswith("LT-NEW-") for m in unknown)
    assert 0.17 < len(unknown) / len(members) < 0.23
    req = traffic.recommend_products()
    assert req.k == cfg.requests.recommend_k and req.channel in cfg.requests.channels
    assert req.scene in cfg.requests.scenes


def test_traffic_is_deterministic_for_a_seed(tmp_path: Path) -> None:
    ids = ServedIds.from_bundle(_ids(tmp_path))
    cfg = LoadConfig()
    a = [Traffic(ids, cfg, seed=5).record_event().SerializeToString() for _ in range(1)]
    b = [Traffic(ids, cfg, seed=5).record_event().SerializeToString() for _ in range(1)]
    assert a == b


def test_events_and_pages_use_items_of_the_right_kind(tmp_path: Path) -> None:
    ids = ServedIds.from_bundle(_ids(tmp_path))
    traffic = Traffic(ids, LoadConfig())
    products = {p.decode() for p in ids.products}
    for _ in range(500):
        assert traffic.similar_items().item_id in products
        ev = traffic.record_event()
        if ev.event_type in ("content_view", "live_watch"):
            assert ev.item_id.startswith("C")
        elif ev.event_type != "share":
            assert ev.item_id.startswith("P")
        assert (ev.amount > 0) == (ev.event_type == "purchase")


def test_stale_product_pages_and_outreach_requests(tmp_path: Path) -> None:
    ids = ServedIds.from_bundle(_ids(tmp_path))
    cfg = load_config(None, {"requests": {"stale_item_share": 1.0, "transactional_share": 0.0}})
    traffic = Traffic(ids, cfg)
    assert traffic.similar_items().item_id.startswith("LT-DELISTED-")
    check = traffic.check_outreach()
    assert check.message_class == outreach_pb2.MARKETING
    assert check.channel in cfg.requests.outreach_channels and 0 <= check.priority <= 9
    keys = {traffic.reserve_outreach().idempotency_key for _ in range(50)}
    assert len(keys) == 50  # every reservation is a new send


@pytest.mark.parametrize("share", [0.0, 0.3, 0.5, 0.97, 1.0])
def test_stale_product_pages_are_an_exact_evenly_spread_share(tmp_path: Path, share: float) -> None:
    ids = ServedIds.from_bundle(_ids(tmp_path))
    traffic = Traffic(ids, load_config(None, {"requests": {"stale_item_share": share}}))
    stale = np.array([traffic.similar_items().item_id.startswith("LT-DELISTED-") for _ in range(1000)])
    n = np.arange(1, 1001)
    # After every page, not just at the end, the count is the share rounded half up.
    assert (np.cumsum(stale) == np.floor(n * share + 0.5)).all()
    assert stale[0] == (share >= 0.5)


def test_a_folder_without_ids_is_not_a_bundle(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match=r"member_ids\.npy"):
        ServedIds.from_bundle(tmp_path)


# -- timeline and report --------------------------------------------------------------------------


def _write_locust_csvs(
    prefix: Path, rows: list[tuple[str, int, int]], failures: list[tuple[str, str, int]]
) -> None:
    cols = [
        "Type", "Name", "Request Count", "Failure Count", "Median Response Time", "Average Response Time",
        "Min Response Time", "Max Response Time", "Average Content Size", "Requests/s", "Failures/s",
        "50%", "66%", "75%", "80%", "90%", "95%", "98%", "99%", "99.9%", "99.99%", "100%",
    ]  # fmt: skip
    with Path(f"{prefix}_stats.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(cols)
        total_r = sum(r for _, r, _ in rows)
        total_f = sum(f for _, _, f in rows)
        for name, r, f in [*rows, ("Aggregated", total_r, total_f)]:
            w.writerow(
                [
                    "grpc" if name != "Aggregated" else "",
                    name,
                    r,
                    f,
                    3,
                    3.2,
                    1,
                    40,
                    100,
                    r / 10,
                    f / 10,
                    3,
                    3,
                    4,
                    4,
                    5,
                    6,
                    8,
                    12,
                    30,
                    40,
                    40,
                ]
            )
    with Path(f"{prefix}_failures.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["Method", "Name", "Error", "Occurrences", "First Seen", "Last Seen"])
        for name, code, n in failures:
            w.writerow(["grpc", name, code, n, "", ""])


def test_summary_counts_failures_by_code_from_locust_csvs(tmp_path: Path) -> None:
    prefix = tmp_path / "stats"
    _write_locust_csvs(
        prefix,
        [("RecommendProducts", 1000, 3), ("SimilarItems", 200, 7)],
        [("RecommendProducts", "UNAVAILABLE", 2), ("RecommendProducts", "DEADLINE_EXCEEDED", 1),
         ("SimilarItems", "NOT_FOUND", 7)],
    )  # fmt: skip
    s = summarize(prefix, "t")
    by = {r.name: r for r in s.rpcs}
    assert by["RecommendProducts"].failures_by_code == {"UNAVAILABLE": 2, "DEADLINE_EXCEEDED": 1}
    assert by["SimilarItems"].failure_pct == pytest.approx(3.5)
    assert s.total.requests == 1200 and s.total.failures == 10
    assert s.total.failures_by_code == {"UNAVAILABLE": 2, "DEADLINE_EXCEEDED": 1, "NOT_FOUND": 7}
    assert by["RecommendProducts"].p99_ms == 12 and not s.exact
    md = to_markdown(s)
    assert "| SimilarItems | 200 | 20.0 |" in md and "NOT_FOUND 7" in md


def test_timeline_round_trip_and_exact_spike_phases(tmp_path: Path) -> None:
    # Two "processes": 10 s before at 2 ms, 5 s spike at 20 ms with UNAVAILABLE errors,
    # then 3 s slow (15 ms) and back to 2 ms: recovery should be about 3 s.
    t0 = 1_000_000.0
    shape = load_config(
        None,
        {"shape": {"kind": "spike", "spike": {"base_users": 1, "before_s": 10, "spike_s": 5, "after_s": 10}}},
    ).shape
    for proc in range(2):
        tl = Timeline()
        tl.started_at = t0
        for i in range(2500):
            t = t0 + i * 0.01 + proc * 0.001
            rel = t - t0
            if rel < 10:
                tl.add("RecommendProducts", 2.0, at=t)
            elif rel < 15:
                err = type("E", (), {"code": "UNAVAILABLE"})() if i % 10 == 0 else None
                tl.add("RecommendProducts", 20.0, err, at=t)
            elif rel < 18:
                tl.add("SimilarItems", 15.0, at=t)
            else:
                tl.add("SimilarItems", 2.0, at=t)
        tl.save(tmp_path, str(proc))
    samples = load_samples(tmp_path)
    assert samples is not None and len(samples) == 5000
    assert bool(np.all(np.diff(samples.t) >= 0))
    prefix = tmp_path / "stats"
    _write_locust_csvs(prefix, [("RecommendProducts", 3000, 100), ("SimilarItems", 2000, 0)],
                       [("RecommendProducts", "UNAVAILABLE", 100)])  # fmt: skip
    s = summarize(prefix, "spike", shapes.phases(shape), samples)
    assert s.exact
    by = {r.name: r for r in s.rpcs}
    assert by["RecommendProducts"].p50_ms == 2.0 and by["RecommendProducts"].p99_ms == 20.0
    phases = {p.name: p for p in s.phases}
    assert phases["before"].requests == 2000 and phases["before"].p99_median_ms == 2.0
    assert phases["spike"].failures == 100 and phases["spike"].p99_median_ms == 20.0
    assert phases["spike"].rps == pytest.approx(200.0)
    assert s.recovery_s is not None and 2.0 <= s.recovery_s <= 6.0
    assert "Recovery after the spike" in to_markdown(s)


def test_percentile_is_a_real_sample() -> None:
    assert percentile_ms(np.array([1.0, 2.0, 3.0, 100.0]), 99) == 100.0
    assert percentile_ms(np.array([]), 50) is None


def test_results_dirs_are_unique_and_bundles_are_found(tmp_path: Path) -> None:
    a = new_results_dir(tmp_path)
    b = new_results_dir(tmp_path)
    assert a != b and a.is_dir() and b.is_dir()
    bundle = _ids(tmp_path)
    (bundle / "manifest.json").write_text("{}")
    assert find_bundle(tmp_path) == bundle


def test_memory_of_a_process_tree_includes_children() -> None:
    import os
    import subprocess
    import sys

    from bench.memory import children, tree_memory

    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        assert child.pid in children(os.getpid())
        rows = tree_memory(os.getpid())
        pids = {r.pid for r in rows}
        assert {os.getpid(), child.pid} <= pids
        me = next(r for r in rows if r.pid == os.getpid())
        assert me.rss_kib > 10_000 and 0 < me.pss_kib <= me.rss_kib
        assert me.shared_kib + me.private_kib == pytest.approx(me.rss_kib, rel=0.05)
    finally:
        child.kill()
        child.wait()


def test_measure_times_every_call() -> None:
    from bench.timing import measure

    calls = []
    stats = measure("append", lambda: calls.append(1), calls=200, warmup=20)
    assert len(calls) == 220 and stats.calls == 200
    assert 0 < stats.p50_us <= stats.p99_us <= stats.max_us
    assert stats.calls_per_s > 1000


def test_daytime_timezone_is_outside_default_quiet_hours() -> None:
    from datetime import UTC, datetime
    from zoneinfo import ZoneInfo

    from bench.campaign import daytime_timezone

    for hour in range(24):
        now = datetime(2026, 11, 23, hour, 30, tzinfo=UTC)
        local = now.astimezone(ZoneInfo(daytime_timezone(now)))
        assert 10 <= local.hour < 19, (hour, local)


def test_campaign_audience_ids_are_distinct_and_bounded() -> None:
    from bench.campaign import audience

    ids = list(audience(1234))
    assert len(ids) == len(set(ids)) == 1234
    assert ids[0] == "BENCH-C0000000"


def test_cpu_accounting_reads_proc_and_divides_per_call() -> None:
    import subprocess
    import sys
    import time

    from bench.cpu import cpu_ms_per_call, cpu_probe, cpu_seconds
    from bench.ratebench import cpu_cell

    # A "server" of its own whose one child, the "worker", spins 0.6 s: pytest's own children (a
    # fixture's redis-server) would count as workers of this process.
    spin = "import time\nt=time.time()\nwhile time.time()-t<0.6: pass"
    code = (
        f"import subprocess, sys\np = subprocess.Popen([sys.executable, '-c', {spin!r}])\n"
        "print(p.pid, flush=True)\np.wait()\nsys.stdin.read()"
    )
    server = subprocess.Popen(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert server.stdout is not None and server.stdin is not None
        worker = int(server.stdout.readline())
        probe = cpu_probe(server.pid, None)
        before = probe()
        while cpu_seconds(worker) > 0 or f"worker {worker}" in probe():
            time.sleep(0.05)  # until the worker is gone
        after = {**probe(), f"worker {worker}": before.get(f"worker {worker}", 0.0) + 0.5}
        server.stdin.close()
        server.wait(timeout=10)
    finally:
        server.kill()
    assert cpu_seconds(worker) == 0.0  # gone: no error
    per_call = cpu_ms_per_call(before, after, calls=100)
    assert per_call[f"worker {worker}"] == pytest.approx(5.0) and per_call["workers"] == pytest.approx(5.0)
    assert per_call["client"] >= 0 and cpu_ms_per_call(before, after, calls=0) == {}
    assert cpu_cell({"client": 0.7, "worker 1": 0.8, "worker 2": 0.6, "workers": 1.4, "redis": 0.05}) == (
        "client 0.70 · workers 1.40 (0.80 + 0.60) · redis 0.05"
    )


def test_echo_server_answers_the_fixed_response_over_grpc() -> None:
    import asyncio
    import contextlib
    import threading

    import grpc

    from bench.echo import serve_echo
    from recsvc.localstack import free_port
    from recsvc.v1 import recommender_pb2, recommender_pb2_grpc

    port = free_port()
    loop = asyncio.new_event_loop()
    task = loop.create_task(serve_echo("127.0.0.1", port, k=7))

    def run() -> None:
        with contextlib.suppress(asyncio.CancelledError):
            loop.run_until_complete(task)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            grpc.channel_ready_future(channel).result(timeout=10)
            stub = recommender_pb2_grpc.RecommenderStub(channel)
            resp = stub.RecommendProducts(recommender_pb2.RecommendProductsRequest(member_id="M1"), timeout=5)
            assert len(resp.items) == 7 and resp.model_version == "echo"
            with pytest.raises(grpc.RpcError) as err:
                stub.SimilarItems(recommender_pb2.SimilarItemsRequest(item_id="P1"), timeout=5)
            assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED
    finally:
        loop.call_soon_threadsafe(task.cancel)
        thread.join(timeout=10)


def test_speed_probe_reports_three_positive_figures_and_a_line() -> None:
    from bench.probe import probe_line, speed_probe

    p = speed_probe()
    assert set(p) == {"python_us", "numpy_us", "switch_us"}
    assert all(v > 0 for v in p.values())
    line = probe_line(p)
    assert line.startswith("machine probe, µs:") and f"python {p['python_us']:.0f}" in line


# -- warm-up, targets, plots ----------------------------------------------------------------------


def _warm_start_run(tmp_path: Path) -> Path:
    """10 s at 100 calls/s: the first 3 s slow (50 ms) with UNAVAILABLE failures, then 2 ms, all OK."""
    t0 = 1_000_000.0
    tl = Timeline()
    tl.started_at = t0
    for i in range(1000):
        t = t0 + 0.005 + i * 0.01
        cold = t - t0 < 3
        err = type("E", (), {"code": "UNAVAILABLE"})() if cold and i % 5 == 0 else None
        tl.add("RecommendProducts" if i % 2 else "SimilarItems", 50.0 if cold else 2.0, err, at=t)
    tl.save(tmp_path, "1")
    _write_locust_csvs(tmp_path / "stats", [("RecommendProducts", 500, 30), ("SimilarItems", 500, 30)],
                       [("SimilarItems", "UNAVAILABLE", 60)])  # fmt: skip
    return tmp_path / "stats"


def test_the_warm_up_is_not_measured(tmp_path: Path) -> None:
    prefix = _warm_start_run(tmp_path)
    samples = load_samples(tmp_path)
    s = summarize(prefix, "t", samples=samples, warmup_s=3.0)
    assert s.total.requests == 700 and s.total.failures == 0 and s.total.failures_by_code == {}
    assert s.total.p99_ms == 2.0 and s.total.rps == pytest.approx(100, rel=0.02)
    assert {r.name: r.requests for r in s.rpcs} == {"RecommendProducts": 350, "SimilarItems": 350}
    assert "warm-up" in to_markdown(s)
    # Without the warm-up the slow, failing start is in the figures.
    whole = summarize(prefix, "t", samples=samples)
    assert whole.total.failures == 60 and whole.total.p99_ms == 50.0


def test_every_target_gets_a_verdict(tmp_path: Path) -> None:
    from bench.loadconfig import Targets

    prefix = _warm_start_run(tmp_path)
    samples = load_samples(tmp_path)
    targets = Targets(
        p99_ms=10, max_error_pct=1, min_rps=150, p50_ms=0.5, rpc_p99_ms={"RecommendProducts": 5}
    )
    s = summarize(prefix, "t", samples=samples, warmup_s=3.0, targets=targets)
    verdicts = {v.target: v.passed for v in s.verdicts}
    assert verdicts == {
        "p99_ms": True,
        "max_error_pct": True,
        "min_rps": False,  # ~100 calls/s
        "p50_ms": False,  # 2 ms
        "rpc_p99_ms.RecommendProducts": True,
    }
    assert not s.passed and [v.target for v in s.missed] == ["p50_ms", "min_rps"]
    md = to_markdown(s)
    assert "## Verdict" in md and "**FAIL**: missed 2 of 5 targets" in md and "min_rps: measured" in md
    assert s.to_json()["passed"] is False
    assert summarize(prefix, "t", samples=samples, warmup_s=3.0, targets=Targets(p99_ms=10)).passed
    assert summarize(prefix, "t", targets=Targets()).verdicts == []  # nothing set: nothing judged


def test_targets_in_the_config_are_validated() -> None:
    with pytest.raises(ConfigError, match=r"targets\.rpc_p99_ms"):
        load_config(None, {"targets": {"rpc_p99_ms": {"Nope": 3}}})
    with pytest.raises(ConfigError, match=r"targets\.p99"):
        load_config(None, {"targets": {"p99": 3}})
    assert load_config(DEFAULT_CONFIG).targets.p99_ms == 10.0


def test_plots_and_one_self_contained_page(tmp_path: Path) -> None:
    from bench.plots import write_html, write_plots

    _warm_start_run(tmp_path)
    samples = load_samples(tmp_path)
    assert samples is not None
    plots = write_plots(samples, tmp_path / "plots", warmup_s=3.0)
    assert [p.name for p in plots] == ["latency.png", "throughput.png", "errors.png"]
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in plots)
    page = write_html("| RPC |", plots, tmp_path / "report-plots.html", "t").read_text()
    assert page.count("src='data:image/png;base64,") == 3 and "| RPC |" in page


def test_the_locust_shape_is_used_only_when_asked_for() -> None:
    asked = shapes.shape_asked
    assert not asked(["locust", "-f", "x", "-u", "5", "-r", "5", "-t", "10s"], {})
    assert asked(["locust", "--shape", "spike"], {}) and asked(["locust", "--shape=ramp"], {})
    assert not asked(["locust", "--shape="], {}) and asked(["locust"], {"LOCUST_SHAPE": "steady"})


def test_command_line_shape_options_reach_the_config_over_file_overrides() -> None:
    from bench.loadconfig import load_config, shape_overrides

    base = {"shape": {"steady": {"users": 3, "duration_s": 9.0}}, "deadline_s": 1.5}
    merged = shape_overrides(base, kind="ramp", users=7, rate_per_user=4.0)
    config = load_config(None, merged)
    assert config.shape.kind == "ramp"
    assert (config.shape.steady.users, config.shape.steady.duration_s) == (7, 9.0)
    assert (config.think.mode, config.think.per_user_rate) == ("constant_throughput", 4.0)
    assert config.deadline_s == 1.5
    assert base == {"shape": {"steady": {"users": 3, "duration_s": 9.0}}, "deadline_s": 1.5}
    assert shape_overrides() == {}


# -- command-line checks: a bad flag is one line and exit 2, before anything starts ---------------


def _load_cli(*args: str) -> tuple[int, str]:
    from typer.testing import CliRunner

    from recsvc.cli import app

    res = CliRunner().invoke(app, ["load", *args])
    assert isinstance(res.exception, SystemExit), res.exception  # never a traceback
    return res.exit_code, res.output


def test_diversities_that_are_not_numbers_are_one_line(tmp_path: Path) -> None:
    folders = ["--bundle", str(tmp_path), "--data", str(tmp_path), "--results", str(tmp_path / "r")]
    code, output = _load_cli("bench", "diversity", *folders, "--diversities", "0,abc")
    assert code == 2
    assert "error INVALID_ARGUMENT: --diversities takes numbers separated by commas, got 'abc'" in output
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("command", ["throttle", "inproc"])
@pytest.mark.parametrize("url", ["bogus", "redis://localhost:99999/0"])
def test_a_bad_redis_url_is_one_line(tmp_path: Path, command: str, url: str) -> None:
    bundle = ["--bundle", str(tmp_path)] if command == "inproc" else []
    code, output = _load_cli("bench", command, *bundle, "--redis-url", url, "--results", str(tmp_path / "r"))
    assert code == 2
    assert "error INVALID_ARGUMENT: --redis-url:" in output
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("pid", ["999999999", "-1", "0"])
def test_memory_of_no_process_is_an_error_not_an_empty_table(pid: str) -> None:
    code, output = _load_cli("bench", "memory", "--pid", pid)
    assert code == 2
    assert f"error NO_SUCH_PROCESS: --pid {pid}: no such process" in output
    assert "total" not in output


@pytest.mark.parametrize(
    ("host", "why"),
    [
        ("127.0.0.1", "host:port with a port 1..65535"),
        ("127.0.0.1:0", "host:port with a port 1..65535"),
        ("127.0.0.1:70000", "host:port with a port 1..65535"),
        (":50051", "host:port with a port 1..65535"),
        ("::1:50051", "goes in brackets"),
    ],
)
def test_load_run_refuses_a_host_without_a_port_before_starting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, host: str, why: str
) -> None:
    import bench.loadrun

    def must_not_run(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("the load test started")

    monkeypatch.setattr(bench.loadrun, "run_load", must_not_run)
    code, output = _load_cli("run", "--host", host, "--results", str(tmp_path / "r"))
    assert code == 2
    assert "error INVALID_TARGET: --host" in output and why in output


def test_check_host_takes_what_the_load_config_takes() -> None:
    from bench.cli import _check_host

    for good in ("127.0.0.1:50051", "grpc://127.0.0.1:50051", "[::1]:50051", "server.example:443"):
        _check_host(good)
