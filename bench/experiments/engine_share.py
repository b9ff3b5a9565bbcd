"""Where a served RecommendProducts call's CPU goes: the engine, or everything around it.

Starts the real server (one process, the real composition root, a real Redis) three ways and
drives each with a closed-loop grpc.aio client (4 calls in flight, 4,000 calls after 1,000
untimed), reporting the server's CPU per call:

- ``real``: the service as deployed;
- ``stub``: the engine answers every call with one precomputed response, so what is left is
  gRPC, interceptors, validation and metrics;
- ``timed``: the real engine, with the engine's own thread CPU time per call measured inside the
  server.

Usage (a trained bundle; takes about a minute):

    .venv/bin/python bench/experiments/engine_share.py var/bench/bundle1m64-l2 real,stub,timed

A one-off experiment for docs/benchmarks.md, not part of the test suite.
"""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # before numpy loads

import numpy as np

from bench.cpu import cpu_seconds
from bench.probe import probe_line, speed_probe
from recsvc.bundle import KIND_PRODUCT
from recsvc.engine.filters import FilterSpec
from recsvc.localstack import LocalRedis
from recsvc.server.app import build_deps, build_server, shutdown
from recsvc.settings import load_settings


def run_server(bundle: Path, redis_url: str, mode: str, port_q: Any, stop: Any, report_q: Any) -> None:
    tmp = Path(tempfile.mkdtemp())
    settings = load_settings(
        None,
        {
            "serving": {
                "model_uri": str(bundle),
                "bundle_cache_dir": str(tmp / "b"),
                "port": 0,
                "workers": 1,
            },
            "redis": {"url": redis_url},
            "security": {"audit_log": str(tmp / "a.log"), "allow_insecure_dev": True},
        },
    )
    deps = build_deps(settings, with_outreach=False)
    engine: Any = deps.engine
    acc = [0.0, 0]
    if mode == "stub":
        deps.models.reload()
        canned = engine.recommend("unknown-member", KIND_PRODUCT, 20, "", FilterSpec())
        engine.recommend = lambda *a, **k: canned
    elif mode == "timed":
        inner = engine.recommend

        def timed(*a: Any, **k: Any) -> Any:
            c = time.thread_time()
            try:
                return inner(*a, **k)
            finally:
                acc[0] += time.thread_time() - c
                acc[1] += 1

        engine.recommend = timed
    server = build_server(settings, deps)
    server.start()
    deps.models.reload()
    port_q.put(deps.bound_port)
    stop.wait()
    report_q.put(1000 * acc[0] / acc[1] if acc[1] else None)
    shutdown(server, deps, 0)


async def drive(port: int, members: list[str], n: int, in_flight: int) -> None:
    import grpc

    from recsvc.v1 import recommender_pb2, recommender_pb2_grpc

    channels = [grpc.aio.insecure_channel(f"127.0.0.1:{port}") for _ in range(4)]
    stubs = [recommender_pb2_grpc.RecommenderStub(c) for c in channels]
    reqs = [recommender_pb2.RecommendProductsRequest(member_id=m, k=20) for m in members]

    async def worker(j: int) -> None:
        for i in range(j, n, in_flight):
            await stubs[i % 4].RecommendProducts(reqs[i % len(reqs)], timeout=2)

    await asyncio.gather(*[worker(j) for j in range(in_flight)])
    for c in channels:
        await c.close()


def main() -> None:
    bundle = Path(sys.argv[1]).resolve()
    modes = sys.argv[2].split(",") if len(sys.argv) > 2 else ["real", "stub", "timed"]
    ids = np.load(bundle / "member_ids.npy", mmap_mode="r")
    pick = np.random.default_rng(0).choice(ids.shape[0], 3000)
    members = [bytes(x).decode() for x in ids[pick]]
    print(probe_line(speed_probe()))
    with tempfile.TemporaryDirectory() as tmp, LocalRedis(Path(tmp) / "redis") as redis_server:
        for mode in modes:
            ctx = mp.get_context("fork")
            port_q, report_q, stop = ctx.Queue(), ctx.Queue(), ctx.Event()
            proc = ctx.Process(
                target=run_server, args=(bundle, redis_server.url, mode, port_q, stop, report_q)
            )
            proc.start()
            assert proc.pid is not None
            port = port_q.get(timeout=180)
            asyncio.run(drive(port, members, 1000, 4))
            before, t0, n = cpu_seconds(proc.pid), time.perf_counter(), 4000
            asyncio.run(drive(port, members, n, 4))
            elapsed, used = time.perf_counter() - t0, cpu_seconds(proc.pid) - before
            stop.set()
            engine_ms = report_q.get(timeout=60)
            proc.join(60)
            extra = f", engine thread CPU {engine_ms:.3f} ms/call" if engine_ms is not None else ""
            print(
                f"{mode}: {n / elapsed:.0f} calls/s, server CPU {1000 * used / n:.3f} ms/call{extra}",
                flush=True,
            )


if __name__ == "__main__":
    main()
