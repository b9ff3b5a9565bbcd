"""Per-call thread CPU of in-process ``RecommendProducts`` (the real servicer and engine on a real
Redis, as ``bench inproc`` sets it up): every request is timed ``--passes`` times and its best
kept, so a busy machine's waits for a core drop out; prints the median and mean of those bests.
docs/benchmarks.md, "Serving CPU per call", runs it against a checkout of the round's start, whose
harness lived in ``recsvc.bench`` (imported from there when ``bench`` is absent).

    python -m bench.experiments.call_cpu BUNDLE [--calls 1000] [--passes 10] [--label now]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np


def _harness() -> Any:
    try:
        from bench import inproc, loadconfig, traffic
    except ImportError:  # the round's start: the harness was inside the package
        from recsvc.bench import inproc, loadconfig, traffic  # type: ignore[import-not-found,no-redef]
    return inproc, loadconfig, traffic


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle")
    parser.add_argument("--calls", type=int, default=1000)
    parser.add_argument("--passes", type=int, default=10)
    parser.add_argument("--label", default="now")
    args = parser.parse_args()
    inproc, loadconfig, traffic = _harness()
    from recsvc.localstack import LocalRedis
    from recsvc.server.app import build_deps, settle_heap
    from recsvc.server.recommender_servicer import RecommenderServicer
    from recsvc.settings import load_settings

    with tempfile.TemporaryDirectory() as tmp_name, LocalRedis(Path(tmp_name) / "redis") as redis:
        tmp = Path(tmp_name)
        settings = load_settings(
            overrides={
                "serving": {"model_uri": args.bundle, "bundle_cache_dir": str(tmp / "bundles")},
                "redis": {"url": redis.url},
                "security": {"audit_log": str(tmp / "audit.log"), "allow_insecure_dev": True},
            }
        )
        deps = build_deps(settings, with_outreach=True)
        deps.models.reload()
        settle_heap()
        servicer = RecommenderServicer(settings, deps.engine, deps.models, deps.realtime, deps.metrics)
        _, model = deps.models.default()
        config = loadconfig.load_config(None, {"members": {"unknown_share": 0.0}})
        source = traffic.Traffic(inproc.served_ids(model), config)
        requests = [source.recommend_products() for _ in range(args.calls)]
        call, context, run_inline = servicer.RecommendProducts, inproc.BenchContext(), inproc.run_inline
        for _ in range(2):  # warm every code path and page before timing
            for request in requests:
                run_inline(call(request, context))
        cpu = np.full((args.passes, args.calls), np.inf)
        for p in range(args.passes):
            for i, request in enumerate(requests):
                started = time.thread_time_ns()
                run_inline(call(request, context))
                cpu[p, i] = time.thread_time_ns() - started
        for close in deps.on_close:
            close()
    best = cpu.min(axis=0) / 1e3
    print(
        f"{args.label}: per-request best of {args.passes}: cpu median {np.median(best):.1f} "
        f"mean {best.mean():.1f} us | load {os.getloadavg()[0]:.1f}"
    )


if __name__ == "__main__":
    main()
