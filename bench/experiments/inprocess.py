"""One in-process server for the experiments that time a server process's own work: the real
composition root over a bundle, with its own local redis-server, the model loaded and the heap
settled as ``recsvc serve`` does before serving."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


@contextmanager
def in_process_server(bundle: str) -> Iterator[tuple[Any, Any, Any]]:
    """(server, deps, redis) serving ``bundle`` on a free port (``deps.bound_port``), with no API
    keys (loopback only); stopped, and its temporary folder removed, afterwards."""
    from recsvc.localstack import LocalRedis
    from recsvc.server.app import build_deps, build_server, settle_heap, shutdown
    from recsvc.settings import load_settings

    with tempfile.TemporaryDirectory() as tmp_name, LocalRedis(Path(tmp_name) / "redis") as redis:
        tmp = Path(tmp_name)
        settings = load_settings(
            overrides={
                "serving": {"model_uri": bundle, "bundle_cache_dir": str(tmp / "b"), "port": 0},
                "redis": {"url": redis.url},
                "security": {"audit_log": str(tmp / "audit.log"), "allow_insecure_dev": True},
            }
        )
        deps = build_deps(settings, with_outreach=False)
        server = build_server(settings, deps)
        server.start()
        try:
            deps.models.reload()
            settle_heap()
            yield server, deps, redis
        finally:
            shutdown(server, deps, grace_s=0)
