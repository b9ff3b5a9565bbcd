"""What the event log costs: the CPU an impression adds to a recommendation call, and how many
records per second the sink writes to Parquet.

1. ``impressions``: the real servicer, engine and planted test bundle in one process, a real
   Redis; ``RecommendProducts`` called directly (no gRPC) N times with the event log and N times
   without, alternating in blocks (paired, so machine noise hits both alike); process CPU per
   call of each and the difference. The log's writer thread runs, so its batched writes count.
2. ``sink``: R events written straight into the streams as the service writes them, then one
   ``Sink.run(once=True)``; records per second of sink wall time.

Usage (about 20 s):

    .venv/bin/python -m bench.experiments.eventlog_cost [calls=20000] [records=100000]

A one-off experiment for docs/benchmarks.md, not part of the test suite.
"""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "tests" / "support")]
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("RECSVC_SECURITY__ALLOW_INSECURE_DEV", "true")


class _Context:
    def time_remaining(self) -> None:
        return None


def impressions(tmp: Path, url: str, calls: int) -> None:
    from bundle_factory import make_bundle
    from serving_harness import serving_settings

    from recsvc.server.app import build_deps
    from recsvc.server.recommender_servicer import RecommenderServicer
    from recsvc.v1 import recommender_pb2

    planted = make_bundle(tmp / "bundle")
    settings = serving_settings(str(planted.path), url, tmp)
    deps = build_deps(settings, with_outreach=False)
    deps.models.reload()
    with_log = RecommenderServicer(
        settings, deps.engine, deps.models, deps.realtime, deps.metrics, None, deps.event_log
    )
    without = RecommenderServicer(settings, deps.engine, deps.models, deps.realtime, deps.metrics, None, None)
    members = planted.warm_members()
    requests = [recommender_pb2.RecommendProductsRequest(member_id=m, k=20, channel="app") for m in members]
    ctx = _Context()
    loop = asyncio.new_event_loop()

    def block(servicer: RecommenderServicer, n: int) -> float:
        t0 = time.process_time()
        for i in range(n):
            loop.run_until_complete(servicer.RecommendProducts(requests[i % len(requests)], ctx))  # type: ignore[arg-type]
        return time.process_time() - t0

    block(with_log, 500), block(without, 500)  # warm up
    totals = {"with": 0.0, "without": 0.0}
    pairs = []
    size = 1000
    for _ in range(calls // size):
        a, b = block(without, size), block(with_log, size)
        totals["without"] += a
        totals["with"] += b
        pairs.append((b - a) / size * 1000)
    pairs.sort()
    n = (calls // size) * size
    diff = (totals["with"] - totals["without"]) / n * 1000
    print(
        f"impressions: {n} calls each; CPU per call without {totals['without'] / n * 1000:.4f} ms, "
        f"with {totals['with'] / n * 1000:.4f} ms, difference {diff:+.4f} ms "
        f"(median of {len(pairs)} paired blocks {pairs[len(pairs) // 2]:+.4f} ms)"
    )
    shutdown_deps(deps)


def shutdown_deps(deps: object) -> None:
    for close in getattr(deps, "on_close", []):
        close()


def sink(tmp: Path, url: str, records: int) -> None:
    import redis

    from recsvc.eventlog.log import dumps, shard_of, stream_key
    from recsvc.eventlog.sink import Sink
    from recsvc.settings import load_settings

    settings = load_settings(overrides={"redis": {"url": url}, "events": {"log_dir": str(tmp / "log")}})
    client = redis.Redis.from_url(url)
    pipe = client.pipeline(transaction=False)
    now = time.time()
    for i in range(records):
        member = f"M{i % 50_000:06d}"
        record = {
            "member_id": member,
            "item_id": f"P{i % 9973}",
            "event_type": "click",
            "ts": now,
            "channel": "app",
            "quantity": 1,
            "amount": 0.0,
            "recommendation_id": "",
            "variant": "a",
            "member": "p_" + member,
        }
        pipe.xadd(
            stream_key("recsvc", shard_of(member, settings.events.shards), "event"), {"d": dumps(record)}
        )
        if len(pipe) >= 5000:
            pipe.execute()
    pipe.execute()
    t0, c0 = time.perf_counter(), time.process_time()
    stats = Sink(client, settings).run(once=True)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    done = stats.written["event"]
    print(
        f"sink: {done} records in {wall:.2f} s wall ({done / wall:,.0f}/s), "
        f"{cpu:.2f} s CPU ({done / cpu:,.0f}/s of one core), {stats.files} files"
    )


def main() -> None:
    from recsvc.localstack import LocalRedis

    calls = int(sys.argv[1]) if len(sys.argv) > 1 else 20_000
    records = int(sys.argv[2]) if len(sys.argv) > 2 else 100_000
    with tempfile.TemporaryDirectory() as tmp, LocalRedis(Path(tmp) / "redis") as local:
        impressions(Path(tmp), local.url, calls)
        sink(Path(tmp), local.url, records)


if __name__ == "__main__":
    main()
