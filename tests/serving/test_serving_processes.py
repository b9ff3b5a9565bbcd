"""Real `recsvc serve` processes: two servers sharing Redis, `--workers 2` on one port, a restarted
worker and its pin, SIGHUP, and workers outliving their supervisor."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

import grpc
import psutil
import pytest
from bundle_factory import make_bundle
from prometheus_client.parser import text_string_to_metric_families
from serving_harness import serve_env, serve_subprocess, stop_subprocess, wait_serving
from waiting import within

from recsvc.localstack import free_port
from recsvc.v1 import outreach_pb2, outreach_pb2_grpc, recommender_pb2, recommender_pb2_grpc

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_purchase_through_one_server_leaves_the_list_of_another_within_a_second(
    redis_backend: str, tmp_path: Path
) -> None:
    redis_url = redis_backend  # a single server, then a Redis Cluster
    planted = make_bundle(tmp_path / "b1")
    ports = [free_port(), free_port()]
    procs = [serve_subprocess(serve_env(planted.path, redis_url, p, tmp_path)) for p in ports]
    try:
        for p in ports:
            wait_serving(f"127.0.0.1:{p}")
        a, b = (recommender_pb2_grpc.RecommenderStub(grpc.insecure_channel(f"127.0.0.1:{p}")) for p in ports)
        member = planted.warm_members(cluster=1)[0]
        req = recommender_pb2.RecommendProductsRequest(member_id=member, k=5)
        top = b.RecommendProducts(req, timeout=5).items[0].item_id
        a.RecordEvent(
            recommender_pb2.RecordEventRequest(member_id=member, item_id=top, event_type="purchase"),
            timeout=5,
        )
        t0 = time.monotonic()
        while top in {it.item_id for it in b.RecommendProducts(req, timeout=5).items}:
            assert time.monotonic() - t0 < 1.0, "purchase still recommended by the other server after 1 s"
            time.sleep(0.02)
    finally:
        for proc in procs:
            stop_subprocess(proc)


def test_serve_with_two_workers_answers_on_one_port(redis_url: str, tmp_path: Path) -> None:
    planted = make_bundle(tmp_path / "b1")
    port, metrics_port = free_port(), free_port()
    env = {
        **serve_env(planted.path, redis_url, port, tmp_path, workers=2),
        "RECSVC_SERVING__METRICS_PORT": str(metrics_port),
    }
    proc = serve_subprocess(env)
    try:
        deadline = time.monotonic() + 90
        listeners: set[int] = set()
        while len(listeners) < 2:
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
            assert time.monotonic() < deadline, f"workers listening: {listeners}"
            listeners = {
                child.pid
                for child in psutil.Process(proc.pid).children(recursive=True)
                for conn in child.net_connections(kind="tcp")
                if conn.status == psutil.CONN_LISTEN and conn.laddr.port == port
            }
            time.sleep(0.3)
        wait_serving(f"127.0.0.1:{port}")
        # Fresh connections are spread over both workers by the kernel; every one gets an answer.
        channels = [
            grpc.insecure_channel(f"127.0.0.1:{port}", options=[("grpc.use_local_subchannel_pool", 1)])
            for _ in range(20)
        ]
        for channel in channels:
            resp = recommender_pb2_grpc.RecommenderStub(channel).RecommendProducts(
                recommender_pb2.RecommendProductsRequest(member_id=planted.warm_members()[0], k=3), timeout=30
            )
            assert len(resp.items) == 3
        answered = {
            pid
            for pid in listeners
            for conn in psutil.Process(pid).net_connections(kind="tcp")
            if conn.status == psutil.CONN_ESTABLISHED and conn.laddr.port == port
        }
        assert answered == listeners  # both workers hold (and answered) connections
        # The supervisor's /metrics merges both workers' samples.
        text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).read().decode()
        families = {f.name: f for f in text_string_to_metric_families(text)}
        calls = sum(
            s.value
            for s in families["recsvc_rec_requests"].samples
            if s.name == "recsvc_rec_requests_total" and s.labels["method"] == "RecommendProducts"
        )
        assert calls == 20
        pids = {s.labels.get("pid") for s in families["recsvc_rec_model_info"].samples}
        assert len(pids) == 2  # one model_info sample per live worker
        # Outreach metrics (the default registry) and each worker's process metrics merge too.
        outreach_pb2_grpc.OutreachStub(channels[0]).CheckOutreach(
            outreach_pb2.OutreachRequest(member_id="M1", channel="app_push", campaign_id="c1"), timeout=10
        )
        text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).read().decode()
        families = {f.name: f for f in text_string_to_metric_families(text)}
        assert sum(s.value for s in families["recsvc_outreach_decisions"].samples) == 1
        handled = families["recsvc_grpc_server_handled"].samples
        assert {s.labels["method"] for s in handled} >= {"RecommendProducts", "CheckOutreach"}
        cpu = families["recsvc_process_cpu_seconds"].samples
        assert {s.labels["worker"] for s in cpu if s.name.endswith("_total")} == {"0", "1"}
        memory = families["recsvc_process_resident_memory_bytes"].samples
        assert {s.labels["worker"] for s in memory} == {"0", "1"}
        # A second server on the same port (SO_REUSEPORT would let it share the traffic) refuses
        # to start, by name, before any worker; on a busy metrics port too.
        for busy in ({}, {"RECSVC_SERVING__PORT": str(free_port())}):
            second = serve_subprocess({**env, **busy})
            _, err = second.communicate(timeout=60)
            text = (err or b"").decode()
            assert second.returncode == 2 and "PORT_IN_USE" in text and "Traceback" not in text, text
            assert "listens there" in text
        for channel in channels:
            channel.close()
        assert stop_subprocess(proc) == 0  # graceful SIGTERM shutdown
        for pid in listeners:
            assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    finally:
        if proc.poll() is None:
            stop_subprocess(proc)


def test_a_port_lent_to_an_outgoing_connection_is_named_as_such() -> None:
    """A port in the ephemeral range can be the local end of one of this machine's connections:
    nobody listens there, and the refusal must not send the operator looking for a server."""
    import socket

    from recsvc.errors import ConfigError
    from recsvc.server.runner import check_ports_free
    from recsvc.settings import load_settings

    with (
        socket.create_server(("127.0.0.1", 0)) as server,
        socket.create_connection(server.getsockname()) as out,
    ):
        lent = out.getsockname()[1]
        settings = load_settings(overrides={"serving": {"port": lent, "metrics_port": 0}})
        with pytest.raises(ConfigError) as err:
            check_ports_free(settings)
    assert err.value.reason == "PORT_IN_USE" and "no server listens there" in str(err.value)


def test_a_host_it_cannot_listen_on_is_named_as_the_host(tmp_path: Path) -> None:
    """Regression: `recsvc serve --host 999.1.1.1` failed as `error FILE: Name or service not
    known` (the port check took the bad host for a busy port, then failed asking who holds it)."""
    from typer.testing import CliRunner

    from recsvc.cli import app

    planted = make_bundle(tmp_path / "b1")
    # no address at all; an address (TEST-NET-1) that is none of this machine's
    # and with any free port (0), which skips the check of a port in use, not of the host
    for host, port in (("999.1.1.1", free_port()), ("192.0.2.1", free_port()), ("999.1.1.1", 0)):
        args = ["serve", "--host", host, "--port", str(port), "--model-uri", str(planted.path)]
        result = CliRunner().invoke(app, args, env={"COLUMNS": "250"})
        out = " ".join(result.output.split())
        assert result.exit_code == 2, out
        assert f"INVALID_HOST: serving.host (--host) '{host}' is not an address" in out
        assert "FILE" not in out and "in use" not in out and "Traceback" not in out


def test_a_malformed_registry_uri_at_start_is_a_settings_error() -> None:
    from typer.testing import CliRunner

    from recsvc.cli import app

    args = ["serve", "--port", str(free_port()), "--model-uri", "models:/recsvc/1"]
    result = CliRunner().invoke(app, args, env={"COLUMNS": "250"})
    out = " ".join(result.output.split())
    assert result.exit_code == 2, out
    assert "INVALID_CONFIG" in out and "must look like models:/<name>@<alias>" in out
    assert "Traceback" not in out


def _ipv6_loopback_port() -> int | None:
    """A free port on ::1, or None when this machine has no IPv6 loopback."""
    import socket

    if not socket.has_ipv6:
        return None
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
            return int(s.getsockname()[1])
    except OSError:
        return None


@pytest.mark.parametrize(("host", "workers"), [("::1", 1), ("[::1]", 2)])
def test_a_server_on_the_ipv6_loopback_answers(
    redis_url: str, tmp_path: Path, host: str, workers: int
) -> None:
    """An IPv6 serving.host used to fail with a traceback (grpc cannot bind ``::1:PORT``), ``[::1]``
    was refused as INVALID_HOST, and the CLI dialled ``::1:PORT``. Two workers: the shared port
    (SO_REUSEPORT) on IPv6."""
    from typer.testing import CliRunner

    from recsvc.cli import app

    port = _ipv6_loopback_port()
    if port is None:
        pytest.skip("no IPv6 loopback on this machine")
    planted = make_bundle(tmp_path / "b1")
    env = {
        **serve_env(planted.path, redis_url, port, tmp_path, workers=workers),
        "RECSVC_SERVING__HOST": host,
    }
    proc = serve_subprocess(env)
    try:
        wait_serving(f"[::1]:{port}")
        with grpc.insecure_channel(f"[::1]:{port}") as channel:
            info = recommender_pb2_grpc.RecommenderStub(channel).GetModelInfo(
                recommender_pb2.GetModelInfoRequest(), timeout=5
            )
        assert info.model_version == "test-bundle-1"
        # the CLI's default target (serving.host:serving.port) and an explicit one
        cli_env = {"COLUMNS": "250", "RECSVC_SERVING__HOST": host, "RECSVC_SERVING__PORT": str(port)}
        for args in (["query", "info"], ["query", "info", "--target", f"[::1]:{port}"]):
            result = CliRunner().invoke(app, args, env=cli_env)
            assert result.exit_code == 0, result.output
            assert "test-bundle-1" in result.output
        # unbracketed, host and port cannot be told apart: refused, naming the form to use
        result = CliRunner().invoke(app, ["query", "info", "--target", f"::1:{port}"], env=cli_env)
        out = " ".join(result.output.split())
        assert result.exit_code == 2, out
        assert (
            f"INVALID_TARGET: --target '::1:{port}': an IPv6 address goes in brackets, e.g. [::1]:{port}"
            in out
        )
        assert stop_subprocess(proc) == 0
        err = proc.stderr.read().decode() if proc.stderr else ""
        assert "Traceback" not in err and f"address=[::1]:{port}" in err, err
    finally:
        if proc.poll() is None:
            stop_subprocess(proc)


def test_the_port_check_takes_ipv6_hosts() -> None:
    """A port in use on ::1 is PORT_IN_USE, whether the host is written ``::1`` or ``[::1]``."""
    import socket

    from recsvc.errors import ConfigError
    from recsvc.server.runner import check_ports_free
    from recsvc.settings import load_settings

    if _ipv6_loopback_port() is None:
        pytest.skip("no IPv6 loopback on this machine")
    with socket.create_server(("::1", 0), family=socket.AF_INET6) as taken:
        port = taken.getsockname()[1]
        for host in ("::1", "[::1]"):
            check_ports_free(
                load_settings(overrides={"serving": {"host": host, "port": 0, "metrics_port": 0}})
            )
            settings = load_settings(overrides={"serving": {"host": host, "port": port, "metrics_port": 0}})
            with pytest.raises(ConfigError) as err:
                check_ports_free(settings)
            assert err.value.reason == "PORT_IN_USE", err.value


def test_a_damaged_bundle_folder_is_refused_at_start(tmp_path: Path) -> None:
    """A bundle folder whose arrays are damaged used to start a server that logged BAD_BUNDLE and
    stayed NOT_SERVING, asking for a model to be trained and promoted."""
    planted = make_bundle(tmp_path / "b1")
    factors = planted.path / "item_factors.npy"
    factors.write_bytes(factors.read_bytes()[:200])  # truncated
    env = {
        "RECSVC_SERVING__MODEL_URI": str(planted.path),
        "RECSVC_SERVING__PORT": str(free_port()),
        "RECSVC_SECURITY__AUDIT_LOG": str(tmp_path / "audit.log"),
        "RECSVC_SECURITY__ERASURE_LIST": str(tmp_path / "erasures.txt"),
        "OPENBLAS_NUM_THREADS": "1",
        "COLUMNS": "250",
    }
    proc = serve_subprocess(env)
    try:
        assert proc.wait(timeout=120) == 2
    finally:
        if proc.poll() is None:
            stop_subprocess(proc)
    err = " ".join((proc.stderr.read().decode() if proc.stderr else "").split())
    assert f"error BAD_BUNDLE: cannot serve model {planted.path}" in err, err
    assert "item_factors.npy" in err and "Traceback" not in err and "waiting_for_model" not in err, err


def _listening(proc: subprocess.Popen[bytes], port: int) -> set[int]:
    """The pids of the server processes under ``proc`` listening on ``port``."""
    return {
        child.pid
        for child in psutil.Process(proc.pid).children(recursive=True)
        if child.is_running() and child.status() != psutil.STATUS_ZOMBIE
        for conn in child.net_connections(kind="tcp")
        if conn.status == psutil.CONN_LISTEN and conn.laddr.port == port
    }


def _wait_listening(proc: subprocess.Popen[bytes], port: int, n: int, without: int = 0) -> set[int]:
    deadline = time.monotonic() + 90
    while True:
        assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
        pids = _listening(proc, port) - {without}
        if len(pids) == n:
            return pids
        assert time.monotonic() < deadline, f"listening: {pids}"
        time.sleep(0.3)


def _versions(port: int, calls: int = 16) -> tuple[set[str], set[int]]:
    """The model versions fresh connections (spread over the workers by the kernel) are served,
    and the pids of the workers holding those connections."""
    channels = [
        grpc.insecure_channel(f"127.0.0.1:{port}", options=[("grpc.use_local_subchannel_pool", 1)])
        for _ in range(calls)
    ]
    try:
        versions = {
            recommender_pb2_grpc.RecommenderStub(c)
            .GetModelInfo(recommender_pb2.GetModelInfoRequest(), timeout=30)
            .model_version
            for c in channels
        }
        holders = {
            conn.pid
            for conn in psutil.net_connections(kind="tcp")
            if conn.status == psutil.CONN_ESTABLISHED and conn.laddr.port == port and conn.pid
        }
        return versions, holders
    finally:
        for c in channels:
            c.close()


def _gone(pids: set[int]) -> bool:
    def alive(pid: int) -> bool:
        try:
            return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False

    return not any(alive(pid) for pid in pids)


def _kill_left(pids: set[int]) -> None:
    """A failed test leaves no server process of its own behind (by pid)."""
    for pid in pids:
        with contextlib.suppress(psutil.NoSuchProcess):
            psutil.Process(pid).kill()


def test_a_restarted_worker_keeps_the_pin_and_sighup_stops_every_process(
    redis_url: str, tmp_path: Path
) -> None:
    """A worker restarted after kill -9 used to load the configured source while its sibling
    kept a rollback pin; SIGHUP used to kill the supervisor alone, leaving both workers serving,
    orphaned, on the port."""
    b1 = make_bundle(tmp_path / "b1", bundle_id="v1")
    b2 = make_bundle(tmp_path / "b2", bundle_id="v2", flip_clusters=True)
    port = free_port()
    # Polls every 0.5 s, so a pin taken for the source having moved would be dropped.
    env = {
        **serve_env(b1.path, redis_url, port, tmp_path, workers=2),
        "RECSVC_SERVING__POLL_INTERVAL_S": "0.5",
    }
    proc = serve_subprocess(env)
    everyone: set[int] = set()
    try:
        workers = _wait_listening(proc, port, 2)
        wait_serving(f"127.0.0.1:{port}")
        time.sleep(1.0)  # both reload listeners subscribed
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            reply = recommender_pb2_grpc.RecommenderStub(channel).ReloadModel(
                recommender_pb2.ReloadModelRequest(model_uri=str(b2.path)), timeout=30
            )
        assert reply.model_version == "v2"
        within(10, lambda: _versions(port)[0] == {"v2"}, "the sibling did not follow the pin", poll_s=0.2)
        victim = min(workers)
        os.kill(victim, signal.SIGKILL)
        workers = _wait_listening(proc, port, 2, without=victim)
        assert victim not in workers
        time.sleep(1.5)  # three polls
        versions, holders = _versions(port, calls=24)
        assert versions == {"v2"}
        assert workers <= holders  # the restarted worker answered too
        everyone = {p.pid for p in psutil.Process(proc.pid).children(recursive=True)}
        proc.send_signal(signal.SIGHUP)
        assert proc.wait(timeout=60) == 0
        within(15, lambda: _gone(everyone), f"left behind: {everyone}", poll_s=0.2)
        err = proc.stderr.read().decode() if proc.stderr else ""
        assert "event=signal" in err and "signal=SIGHUP" in err and "Traceback" not in err, err
    finally:
        if proc.poll() is None:
            stop_subprocess(proc)
        _kill_left(everyone)


def test_workers_stop_when_their_supervisor_is_killed(redis_url: str, tmp_path: Path) -> None:
    """Orphaned workers used to keep serving (metrics gone) and hold the port until each was
    killed by pid; now they drain and exit (PR_SET_PDEATHSIG)."""
    planted = make_bundle(tmp_path / "b1")
    port = free_port()
    proc = serve_subprocess(serve_env(planted.path, redis_url, port, tmp_path, workers=2))
    workers: set[int] = set()
    try:
        workers = _wait_listening(proc, port, 2)
        proc.kill()
        proc.wait(timeout=10)
        within(30, lambda: _gone(workers), f"orphaned workers still running: {workers}", poll_s=0.2)
    finally:
        if proc.poll() is None:
            stop_subprocess(proc)
        _kill_left(workers)
