"""Shared fixtures: a real redis-server on a free port, a real 3-primary Redis Cluster, free ports,
BLAS on one thread, and a planted bundle served by a real gRPC server (``planted``, ``srv``).

``redis_backend`` runs a test once per backend (a single server, then the cluster), like gorse's
storage tests: the contract tests of everything recsvc keeps in Redis use it (directly, or by
overriding ``redis_url`` in their module); the rest use ``redis_url`` (single server only)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from recsvc.localstack import LocalRedis, LocalRedisCluster

if TYPE_CHECKING:  # imported in the fixtures: numpy must not load before BLAS is set to one thread
    from bundle_factory import PlantedBundle
    from serving_harness import RunningServer

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
# Tests must not pick up a developer's RECSVC_* environment.
for _key in [k for k in os.environ if k.startswith("RECSVC_")]:
    del os.environ[_key]


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalRedis]:
    server = LocalRedis(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server: LocalRedis) -> Iterator[str]:
    """A clean database on the shared real server for each test."""
    import redis

    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    client.close()
    yield redis_server.url


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalRedisCluster]:
    """A real Redis Cluster (3 primaries, no replicas), started once per session (~2 s)."""
    cluster = LocalRedisCluster(tmp_path_factory.mktemp("redis-cluster"), primaries=3)
    cluster.start()
    yield cluster
    cluster.stop()


@pytest.fixture(params=["single", "cluster"])
def redis_backend(request: pytest.FixtureRequest) -> Iterator[str]:
    """A clean Redis for each test, once as a single server and once as a cluster; the URL is what
    ``redis.url`` takes (``redis://`` or ``redis+cluster://``)."""
    if request.param == "single":
        yield request.getfixturevalue("redis_url")
        return
    cluster: LocalRedisCluster = request.getfixturevalue("redis_cluster")
    cluster.flush()
    yield cluster.url


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[Any]:
    """A client for the test's ``redis_url`` (single server or cluster: ``recsvc.redis_client.connect``),
    with a socket timeout long enough for a busy machine."""
    from recsvc.redis_client import connect

    client = connect(redis_url, socket_timeout=5)
    yield client
    client.close()


@pytest.fixture(scope="session", autouse=True)
def _state_in_tmp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Default state paths point into a tmp folder, never into the work tree (session-wide, so
    module-scoped fixtures that train or serve are covered too)."""
    state = tmp_path_factory.mktemp("state")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RECSVC_SECURITY__AUDIT_LOG", str(state / "audit.log"))
        mp.setenv("RECSVC_SECURITY__ERASURE_LIST", str(state / "erasures.txt"))
        mp.setenv("RECSVC_SERVING__BUNDLE_CACHE_DIR", str(state / "bundles"))
        mp.setenv("RECSVC_HOME", str(state))  # the default MLflow store: never the checkout's
        # Test servers bind loopback without API keys, which needs the explicit development switch.
        mp.setenv("RECSVC_SECURITY__ALLOW_INSECURE_DEV", "true")
        yield


@pytest.fixture(autouse=True)
def _fresh_privacy_state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test gets its own erasure list and audit log, so one test's ForgetMember cannot
    change what another test trains or serves."""
    monkeypatch.setenv("RECSVC_SECURITY__AUDIT_LOG", str(tmp_path / "state" / "audit.log"))
    monkeypatch.setenv("RECSVC_SECURITY__ERASURE_LIST", str(tmp_path / "state" / "erasures.txt"))


@pytest.fixture(scope="module")
def planted(tmp_path_factory: pytest.TempPathFactory) -> PlantedBundle:
    """A small bundle whose recommendations are known in advance (tests/support/bundle_factory.py)."""
    from bundle_factory import make_bundle

    return make_bundle(tmp_path_factory.mktemp("bundle") / "b1")


@pytest.fixture
def srv(planted: PlantedBundle, redis_url: str, tmp_path: Path) -> Iterator[RunningServer]:
    """A real server (aio, free port) on ``planted`` and a real Redis; health SERVING."""
    from serving_harness import running_server, serving_settings

    with running_server(serving_settings(str(planted.path), redis_url, tmp_path)) as s:
        yield s
