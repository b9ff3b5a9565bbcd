"""Throttle decisions per second pipelined from one client (PlanCampaign-style batches through
``Throttle.decide_many``): a single redis-server beside a 3-primary Redis Cluster, both started
here on loopback, same members, same policy, same batches. Prints a Markdown table for
docs/benchmarks.md ("Redis Cluster").

    OPENBLAS_NUM_THREADS=1 .venv/bin/python -m bench.cluster_throttle --decisions 20000

Keep runs short on a shared machine: the defaults take about half a minute per backend.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

from bench.inproc import ThrottleRates, throttle_rates
from recsvc.localstack import LocalRedis, LocalRedisCluster, redis_server_binary
from recsvc.redis_client import connect
from recsvc.settings import load_settings


def measure(url: str, args: argparse.Namespace) -> ThrottleRates:
    # a generous throttle timeout: on a shared machine a 50 ms stall would fail a seeding chunk
    settings = load_settings(None, {"redis": {"url": url}, "outreach": {"redis_timeout_ms": 2000}})
    client = connect(url)
    try:
        return throttle_rates(
            settings,
            client,
            members=args.members,
            decisions=args.decisions,
            batch=args.batch,
            single_calls=args.single_calls,
        )
    finally:
        client.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", type=int, default=20_000)
    parser.add_argument("--decisions", type=int, default=20_000, help="per mode (check, reserve)")
    parser.add_argument("--batch", type=int, default=500, help="decisions per pipelined round trip")
    parser.add_argument("--single-calls", type=int, default=2_000)
    args = parser.parse_args()
    rows = []
    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="recsvc-cluster-bench-")))
        single = stack.enter_context(LocalRedis(tmp / "single"))
        cluster = stack.enter_context(LocalRedisCluster(tmp / "cluster", primaries=3))
        for name, url in (("single redis-server", single.url), ("Redis Cluster, 3 primaries", cluster.url)):
            started = time.time()
            rates = measure(url, args)
            rows.append((name, rates, os.getloadavg()[0], time.time() - started))
    machine = f"{platform.node()} {platform.machine()}, {os.cpu_count()} CPUs"
    print(f"machine: {machine}, redis-server {redis_server_binary()}")
    print(f"{args.members:,} members, {args.decisions:,} decisions per mode, {args.batch} per round trip\n")
    print(
        "| backend | pipelined check/s | pipelined reserve/s | single decision p50 / p99 ms | load | run s |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    for name, r, load, seconds in rows:
        print(
            f"| {name} | {r.pipelined_check_per_s:,.0f} | {r.pipelined_reserve_per_s:,.0f} | "
            f"{r.single.p50_us / 1000:.3f} / {r.single.p99_us / 1000:.3f} | {load:.1f} | {seconds:.0f} |"
        )
    for name, r, _, _ in rows:
        print(f"\n{name} reasons: {r.reasons}")


if __name__ == "__main__":
    main()
