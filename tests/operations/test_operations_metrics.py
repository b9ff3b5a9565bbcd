"""Metrics an on-call engineer alerts on: every RPC counted by method and status code, outreach
and process metrics on /metrics with one worker, model age, real-time and throttle-store
failures, the metrics endpoint's own host, and the documented metric list and alert rules
(docs/operations.md, checked with promtool)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import grpc
import pytest
from bundle_factory import PlantedBundle, make_bundle
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families
from serving_harness import running_server, serve_subprocess, serving_settings, stop_subprocess, wait_serving

from recsvc.localstack import free_port
from recsvc.v1 import outreach_pb2, outreach_pb2_grpc, recommender_pb2

ROOT = Path(__file__).resolve().parents[2]
OPERATIONS = ROOT / "docs" / "operations.md"
REC = "recsvc.v1.Recommender"


def test_every_rpc_of_every_service_is_counted_by_method_and_code(
    planted: PlantedBundle, redis_url: str, tmp_path: Path
) -> None:
    settings = serving_settings(str(planted.path), redis_url, tmp_path)
    with running_server(settings, with_outreach=True) as srv:
        get = srv.deps.metrics.registry.get_sample_value

        def handled(service: str, method: str, code: str) -> float:
            labels = {"service": service, "method": method, "code": code}
            return get("recsvc_grpc_server_handled_total", labels) or 0.0

        def timed(service: str, method: str) -> float:
            labels = {"service": service, "method": method}
            return get("recsvc_grpc_server_handling_seconds_count", labels) or 0.0

        stub = srv.stub
        member = planted.warm_members()[0]
        stub.RecommendProducts(recommender_pb2.RecommendProductsRequest(member_id=member, k=3), timeout=5)
        with pytest.raises(grpc.RpcError):
            stub.RecommendProducts(recommender_pb2.RecommendProductsRequest(member_id="", k=3), timeout=5)
        stub.GetModelInfo(recommender_pb2.GetModelInfoRequest(), timeout=5)
        stub.ReloadModel(recommender_pb2.ReloadModelRequest(), timeout=30)
        list(stub.BatchRecommend(recommender_pb2.BatchRecommendRequest(member_ids=[member], k=2), timeout=5))
        outreach = outreach_pb2_grpc.OutreachStub(srv.channel)
        outreach.CheckOutreach(
            outreach_pb2.OutreachRequest(member_id="M1", channel="app_push", campaign_id="c1"), timeout=5
        )
        with pytest.raises(grpc.RpcError):
            outreach.CheckOutreach(outreach_pb2.OutreachRequest(member_id="M1", channel="fax"), timeout=5)
        health_pb2_grpc.HealthStub(srv.channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        with pytest.raises(grpc.RpcError) as unknown:
            srv.channel.unary_unary("/no.Such/Method")(b"", timeout=5)
        assert unknown.value.code() == grpc.StatusCode.UNIMPLEMENTED

        assert handled(REC, "RecommendProducts", "OK") == 1
        assert handled(REC, "RecommendProducts", "INVALID_ARGUMENT") == 1
        assert timed(REC, "RecommendProducts") == 2
        for method in ("GetModelInfo", "ReloadModel", "BatchRecommend"):
            assert handled(REC, method, "OK") == 1, method
            assert timed(REC, method) == 1, method
        assert handled("recsvc.v1.Outreach", "CheckOutreach", "OK") == 1
        assert handled("recsvc.v1.Outreach", "CheckOutreach", "INVALID_ARGUMENT") == 1
        assert handled("grpc.health.v1.Health", "Check", "OK") == 1
        # Names callers make up share one label: their number cannot grow the metric.
        assert handled("unknown", "unknown", "UNIMPLEMENTED") == 1


def test_model_age_is_the_time_since_the_bundle_data(srv: object) -> None:
    from serving_harness import RunningServer

    assert isinstance(srv, RunningServer)
    _, model = srv.deps.models.default()
    assert model.cutoff_ts is not None
    age = srv.deps.metrics.registry.get_sample_value("recsvc_rec_model_age_seconds", {"variant": "default"})
    assert age == pytest.approx(time.time() - model.cutoff_ts, abs=30)


def test_realtime_failures_are_counted_by_operation(planted: PlantedBundle, tmp_path: Path) -> None:
    from recsvc.localstack import LocalRedis

    redis = LocalRedis(tmp_path / "redis")
    redis.start()
    try:
        with running_server(serving_settings(str(planted.path), redis.url, tmp_path)) as srv:
            member = planted.warm_members()[0]
            get = srv.deps.metrics.registry.get_sample_value
            srv.stub.RecommendProducts(recommender_pb2.RecommendProductsRequest(member_id=member), timeout=5)
            redis.stop()
            # The first failed call opens the store's breaker; later calls skip Redis (no error
            # counted) until it answers again, so each operation is counted on a fresh outage.
            srv.stub.RecordEvent(
                recommender_pb2.RecordEventRequest(member_id=member, item_id="P0-003", event_type="view"),
                timeout=5,
            )
            assert get("recsvc_rec_realtime_errors_total", {"operation": "write"}) == 1
            redis.start()  # same port
            store = srv.deps.realtime
            assert store is not None
            deadline = time.monotonic() + 5
            while store.degraded and time.monotonic() < deadline:
                time.sleep(0.05)
            assert not store.degraded
            redis.stop()
            srv.stub.RecommendProducts(recommender_pb2.RecommendProductsRequest(member_id=member), timeout=5)
            assert get("recsvc_rec_realtime_errors_total", {"operation": "read"}) == 1
            assert get("recsvc_rec_realtime_errors_total", {"operation": "write"}) == 1
    finally:
        redis.stop()


def test_throttle_store_failures_are_counted_and_flip_availability(tmp_path: Path) -> None:
    from outreach_support import WalkClock, ask, local, make_throttle
    from prometheus_client import REGISTRY

    from recsvc.localstack import LocalRedis

    redis = LocalRedis(tmp_path / "redis")
    redis.start()
    try:
        t = make_throttle(redis.url, WalkClock(local(2026, 6, 1, 10)))
        t.check(ask("M1", "app_push"))
        assert REGISTRY.get_sample_value("recsvc_outreach_store_available") == 1
        before = REGISTRY.get_sample_value("recsvc_outreach_store_errors_total", {"kind": "connection"}) or 0
        redis.stop()
        assert t.check(ask("M1", "app_push")).reason == "THROTTLE_UNAVAILABLE"
        assert REGISTRY.get_sample_value("recsvc_outreach_store_available") == 0
        after = REGISTRY.get_sample_value("recsvc_outreach_store_errors_total", {"kind": "connection"})
        assert after == before + 1
    finally:
        redis.stop()


def _scrape(host: str, port: int) -> dict[str, object]:
    text = urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=10).read().decode()
    return {f.name: f for f in text_string_to_metric_families(text)}


@pytest.mark.integration
@pytest.mark.slow
def test_one_worker_serves_every_metric_on_its_own_metrics_host(redis_url: str, tmp_path: Path) -> None:
    """With --workers 1 the outreach metrics (another registry) and the process metrics are on
    /metrics too, and the endpoint binds serving.metrics_host, not serving.host."""
    planted = make_bundle(tmp_path / "b1")
    port, metrics_port = free_port(), free_port()
    env = {
        "RECSVC_SERVING__MODEL_URI": str(planted.path),
        "RECSVC_SERVING__PORT": str(port),
        "RECSVC_SERVING__WORKERS": "1",
        "RECSVC_SERVING__POLL_INTERVAL_S": "0",
        "RECSVC_SERVING__BUNDLE_CACHE_DIR": str(tmp_path / "cache"),
        "RECSVC_SERVING__METRICS_PORT": str(metrics_port),
        "RECSVC_SERVING__METRICS_HOST": "127.0.0.2",
        "RECSVC_REDIS__URL": redis_url,
        "RECSVC_SECURITY__AUDIT_LOG": str(tmp_path / "audit.log"),
        "RECSVC_SECURITY__ERASURE_LIST": str(tmp_path / "erasures.txt"),
    }
    proc = serve_subprocess(env)
    try:
        wait_serving(f"127.0.0.1:{port}")
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        outreach_pb2_grpc.OutreachStub(channel).CheckOutreach(
            outreach_pb2.OutreachRequest(member_id="M1", channel="app_push", campaign_id="c1"), timeout=5
        )
        channel.close()
        families = _scrape("127.0.0.2", metrics_port)
        with pytest.raises(urllib.error.URLError):
            _scrape("127.0.0.1", metrics_port)  # serving.host: not where the metrics are
        assert_every_metric_present(families)
        assert_documented(families)
    finally:
        stop_subprocess(proc)


def assert_every_metric_present(families: dict[str, object]) -> None:
    from prometheus_client import Metric

    def samples(name: str) -> list[object]:
        family = families[name]
        assert isinstance(family, Metric)
        return list(family.samples)

    decisions = samples("recsvc_outreach_decisions")
    assert any(s.name == "recsvc_outreach_decisions_total" and s.value >= 1 for s in decisions)  # type: ignore[attr-defined]
    handled = samples("recsvc_grpc_server_handled")
    assert any(s.labels.get("method") == "CheckOutreach" for s in handled)  # type: ignore[attr-defined]
    cpu = [s for s in samples("recsvc_process_cpu_seconds") if s.name.endswith("_total")]  # type: ignore[attr-defined]
    assert cpu and all(s.value > 0 for s in cpu)  # type: ignore[attr-defined]
    assert samples("recsvc_process_resident_memory_bytes")
    assert samples("recsvc_rec_model_age_seconds")


def documented_metrics() -> set[str]:
    """Metric names in the table of docs/operations.md ("| `recsvc_...` |" rows)."""
    return set(re.findall(r"^\| `(recsvc_[a-z0-9_]+)`", OPERATIONS.read_text(), re.MULTILINE))


def assert_documented(families: dict[str, object]) -> None:
    from prometheus_client import Metric

    served = set()
    for name, family in families.items():
        assert isinstance(family, Metric)
        # (prometheus_client's ``_created`` series come with their counter)
        if name.startswith("recsvc_") and not name.endswith("_created"):
            served.add(f"{name}_total" if family.type == "counter" else name)
    documented = documented_metrics()
    assert served <= documented, f"served but not documented: {sorted(served - documented)}"


def test_the_documented_metrics_exist() -> None:
    """Every metric docs/operations.md lists is defined (none renamed without the docs)."""
    from prometheus_client import generate_latest

    import recsvc.outreach.throttle_metrics  # noqa: F401  (registers the outreach metrics)
    from recsvc.eventlog.log import EventLogMetrics
    from recsvc.eventlog.sink import SinkMetrics
    from recsvc.metrics import ServingMetrics, served_registry

    registry = ServingMetrics().registry
    EventLogMetrics(registry)  # what build_deps adds to a server's registry
    text = generate_latest(served_registry(registry)).decode()
    text += generate_latest(SinkMetrics().registry).decode()  # the sink's own endpoint
    defined = set(re.findall(r"^# TYPE (recsvc_[a-z0-9_]+) ", text, re.MULTILINE))
    defined |= {n + "_total" for n in defined}
    missing = documented_metrics() - defined
    assert not missing, f"documented but not defined: {sorted(missing)}"


def alert_rules() -> str:
    """The ```yaml block of docs/operations.md that holds the example alert rules."""
    blocks = re.findall(r"```yaml\n(.*?)```", OPERATIONS.read_text(), re.DOTALL)
    rules = [b for b in blocks if "groups:" in b and "alert:" in b]
    assert len(rules) == 1, "docs/operations.md must hold one ```yaml block of alert rules"
    return rules[0]


def test_the_documented_alert_rules_are_valid_and_use_real_metrics(tmp_path: Path) -> None:
    rules = alert_rules()
    used = set(re.findall(r"\b(recsvc_[a-z0-9_]+)", rules))
    documented = documented_metrics()
    known = documented | {n + s for n in documented for s in ("_bucket", "_count", "_sum")}
    assert used and used <= known, f"alert rules use undocumented metrics: {sorted(used - known)}"
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed (Debian package 'prometheus'; `make test` installs it under CI)")
    path = tmp_path / "rules.yml"
    path.write_text(rules)
    check = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr


def test_record_event_says_whether_the_served_model_knows_the_item(
    srv: object, planted: PlantedBundle
) -> None:
    from serving_harness import RunningServer

    assert isinstance(srv, RunningServer)
    member = planted.warm_members()[0]

    def record(item: str) -> recommender_pb2.RecordEventResponse:
        req = recommender_pb2.RecordEventRequest(member_id=member, item_id=item, event_type="view")
        return srv.stub.RecordEvent(req, timeout=5)

    known = record("P0-003")
    assert known.stored and known.item_known
    unknown = record("NEW-ITEM-1")
    assert unknown.stored and not unknown.item_known


def test_serve_refuses_a_model_folder_that_does_not_exist(redis_url: str, tmp_path: Path) -> None:
    """Not NOT_SERVING forever: a bundle folder cannot appear by itself (a registry alias can)."""
    missing = tmp_path / "no-such-bundle"
    proc = serve_subprocess(
        {
            "RECSVC_SERVING__MODEL_URI": str(missing),
            "RECSVC_SERVING__PORT": str(free_port()),
            "RECSVC_SERVING__WORKERS": "2",
            "RECSVC_REDIS__URL": redis_url,
        }
    )
    try:
        code = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            stop_subprocess(proc)
    assert proc.stderr is not None
    err = proc.stderr.read().decode()
    assert code == 2, err
    assert "error" in err and str(missing) in err and "is not a directory" in err


def test_loading_faiss_prints_no_module_not_found_noise() -> None:
    """Every command sets up logging this way; faiss's search for builds it does not ship
    (``swigfaiss_avx2``...) used to print a ModuleNotFoundError on every training run."""
    import sys

    code = "from recsvc.cli.common import setup_logging; setup_logging('INFO'); import faiss"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert "ModuleNotFoundError" not in out.stderr and "swigfaiss" not in out.stderr, out.stderr


def test_a_cluster_slot_without_primary_counts_as_the_store_down(tmp_path: Path) -> None:
    """CLUSTERDOWN / TRYAGAIN during a failover: the breaker counts it and the metrics say so."""
    import redis as redis_py
    from outreach_support import WalkClock, local, make_throttle
    from prometheus_client import REGISTRY

    from recsvc.localstack import LocalRedis
    from recsvc.outreach import throttle_metrics

    with LocalRedis(tmp_path / "redis") as r:
        t = make_throttle(r.url, WalkClock(local(2026, 6, 1, 10)))
        before = REGISTRY.get_sample_value("recsvc_outreach_store_errors_total", {"kind": "cluster"}) or 0
        for exc in (
            redis_py.exceptions.ClusterDownError("CLUSTERDOWN The cluster is down"),
            redis_py.exceptions.TryAgainError("TRYAGAIN"),
        ):

            def fail(exc: Exception = exc) -> None:
                raise exc

            with pytest.raises(type(exc)):
                t._guarded(fail)
            throttle_metrics.store_failed(exc)
        after = REGISTRY.get_sample_value("recsvc_outreach_store_errors_total", {"kind": "cluster"})
        assert after == before + 2
        assert REGISTRY.get_sample_value("recsvc_outreach_store_available") == 0
        # a script's error reply is an answer: it neither opens the breaker nor counts as down
        t.breaker.success()
        for _ in range(5):
            with pytest.raises(redis_py.ResponseError):
                t._guarded(lambda: (_ for _ in ()).throw(redis_py.ResponseError("ERR in script")))
        assert t.breaker.allow()
        for _ in range(3):  # the breaker's threshold
            with pytest.raises(redis_py.exceptions.ClusterDownError):
                t._guarded(lambda: (_ for _ in ()).throw(redis_py.exceptions.ClusterDownError("CLUSTERDOWN")))
        assert not t.breaker.allow()


def test_the_store_gauge_reads_up_before_any_outreach_decision(
    planted: PlantedBundle, redis_url: str, tmp_path: Path
) -> None:
    """A replica without outreach traffic whose Redis answers reads 1 (the documented alert on 0
    paged on it): the gauge starts from, and follows, the throttle's circuit breaker."""
    from prometheus_client import REGISTRY

    from recsvc.outreach import throttle_metrics

    throttle_metrics.STORE_AVAILABLE.set(0)  # as a fresh process's gauge reads
    with running_server(serving_settings(str(planted.path), redis_url, tmp_path), with_outreach=True) as srv:
        assert REGISTRY.get_sample_value("recsvc_outreach_store_available") == 1
        breaker = srv.deps.outreach_servicer.throttle.breaker  # type: ignore[union-attr]
        for listener in breaker._listeners:  # what an opening tells them
            listener(True)
        assert REGISTRY.get_sample_value("recsvc_outreach_store_available") == 0


def test_with_several_workers_the_version_swapped_out_reads_zero(tmp_path: Path) -> None:
    """Worker metrics live in files that cannot drop a series: after a swap the old version
    reads 0 and the new one 1 (it read 1 for every version ever served)."""
    import subprocess
    import sys

    script = """
import sys
from prometheus_client import CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector
from recsvc.metrics import ServingMetrics
m = ServingMetrics(CollectorRegistry())
m.set_model("default", "v1", None)
m.set_model("default", "v2", "v1")
merged = CollectorRegistry()
MultiProcessCollector(merged, path=sys.argv[1])
for metric in merged.collect():
    for s in metric.samples:
        if s.name == "recsvc_rec_model_info":
            print(s.labels["model_version"], s.value)
"""
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    out = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path)], env=env, capture_output=True, text=True, check=True
    )
    assert sorted(out.stdout.split("\n")[:-1]) == ["v1 0.0", "v2 1.0"], out.stdout + out.stderr
