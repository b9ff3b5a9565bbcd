"""Helpers for serving tests: settings for a test server, an in-process server on a free port,
and ``recsvc serve`` as a real subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from settings_factory import build_settings

from recsvc.server.aio_host import AioServerHost
from recsvc.server.app import ServerDeps, build_deps, build_server, shutdown
from recsvc.settings import Settings
from recsvc.v1 import recommender_pb2, recommender_pb2_grpc

ROOT = Path(__file__).resolve().parents[2]


def serving_settings(model_uri: str, redis_url: str, tmp: Path, **serving: Any) -> Settings:
    return build_settings(tmp, redis_url=redis_url, model_uri=model_uri, serving=serving)


@dataclass
class RunningServer:
    server: AioServerHost
    deps: ServerDeps
    channel: grpc.Channel

    @property
    def stub(self) -> recommender_pb2_grpc.RecommenderStub:
        return recommender_pb2_grpc.RecommenderStub(self.channel)

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.deps.bound_port}"


@contextmanager
def running_server(
    settings: Settings, load: bool = True, with_outreach: bool = False, **deps_kwargs: Any
) -> Iterator[RunningServer]:
    deps = build_deps(settings, with_outreach=with_outreach, **deps_kwargs)
    server = build_server(settings, deps)
    server.start()
    if load:
        deps.models.reload()
    channel = grpc.insecure_channel(f"127.0.0.1:{deps.bound_port}")
    try:
        yield RunningServer(server, deps, channel)
    finally:
        channel.close()
        shutdown(server, deps, grace_s=0)


def serve_env(bundle: Path, redis_url: str, port: int, tmp: Path, workers: int = 1) -> dict[str, str]:
    """The environment of a `recsvc serve` subprocess on `port` over `bundle` and `redis_url`."""
    return {
        "RECSVC_SERVING__MODEL_URI": str(bundle),
        "RECSVC_SERVING__PORT": str(port),
        "RECSVC_SERVING__WORKERS": str(workers),
        "RECSVC_SERVING__POLL_INTERVAL_S": "0",
        "RECSVC_SERVING__BUNDLE_CACHE_DIR": str(tmp / "cache"),
        "RECSVC_REDIS__URL": redis_url,
        "RECSVC_SECURITY__AUDIT_LOG": str(tmp / "audit.log"),
        "RECSVC_SECURITY__ERASURE_LIST": str(tmp / "erasures.txt"),
        "OPENBLAS_NUM_THREADS": "1",
    }


def serve_subprocess(env_overrides: dict[str, str], *args: str) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RECSVC_") or k == "RECSVC_HOME"}
    env["RECSVC_SECURITY__ALLOW_INSECURE_DEV"] = "true"  # loopback test servers without API keys
    env.update(env_overrides)
    return subprocess.Popen(
        [sys.executable, "-c", "from recsvc.cli import main; main()", "serve", *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def wait_serving(target: str, timeout_s: float = 60.0) -> None:
    """Until a real RecommendProducts call succeeds (model loaded) or time runs out."""
    channel = grpc.insecure_channel(target)
    stub = recommender_pb2_grpc.RecommenderStub(channel)
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            try:
                stub.GetModelInfo(recommender_pb2.GetModelInfoRequest(), timeout=2)
                return
            except grpc.RpcError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
    finally:
        channel.close()


def stop_subprocess(proc: subprocess.Popen[bytes], timeout_s: float = 20.0) -> int:
    proc.terminate()
    try:
        return proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()
