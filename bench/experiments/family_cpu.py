"""Per-call CPU of ``RecommendationEngine.recommend`` on an ALS bundle against an item-item or
blend bundle (docs/benchmarks.md, "Model families"): both without stored lists (the live path),
the same members interleaved call by call, thread CPU time (time spent waiting for a core on a
busy machine is left out), FAISS on one thread as the server runs it; p50, p99 and mean per call.

    python -m bench.experiments.family_cpu ALS_BUNDLE OTHER_BUNDLE [--calls N] [--seed S]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np


def main() -> None:
    import faiss

    from recsvc.bundle import KIND_PRODUCT
    from recsvc.engine.filters import FilterSpec
    from recsvc.engine.recommender import RecommendationEngine, SingleModel
    from recsvc.engine.served_model import ServedModel
    from recsvc.settings import load_settings

    parser = argparse.ArgumentParser()
    parser.add_argument("als", type=Path)
    parser.add_argument("other", type=Path)
    parser.add_argument("--calls", type=int, default=3000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    faiss.omp_set_num_threads(1)
    serving = load_settings().serving
    engines = {}
    for path in (args.als, args.other):
        model = ServedModel.load(path, version=path.name, source_uri=str(path))
        model.member_lists = None
        engines[path.name] = RecommendationEngine(SingleModel(model), None, serving)
    first = ServedModel.load(args.als, version="ids", source_uri=str(args.als))
    rows = np.random.default_rng(args.seed).choice(len(first.members), args.calls)
    members = first.members.ids(rows.tolist())
    filters = FilterSpec(diversity=serving.default_diversity)
    for engine in engines.values():  # untimed: page faults, caches
        for member in members[:300]:
            engine.recommend(member, KIND_PRODUCT, serving.default_k, "", filters)
    cpu: dict[str, list[int]] = {name: [] for name in engines}
    for member in members:
        for name, engine in engines.items():
            t0 = time.thread_time_ns()
            engine.recommend(member, KIND_PRODUCT, serving.default_k, "", filters)
            cpu[name].append(time.thread_time_ns() - t0)
    (a_name, a), (b_name, b) = ((n, np.array(v) / 1e6) for n, v in cpu.items())
    print(
        f"{a_name} p50 {np.median(a):.3f} ms p99 {np.percentile(a, 99):.3f} mean {a.mean():.3f} | "
        f"{b_name} p50 {np.median(b):.3f} ms p99 {np.percentile(b, 99):.3f} mean {b.mean():.3f} | "
        f"ratio p50 {np.median(b) / np.median(a):.2f} p99 {np.percentile(b, 99) / np.percentile(a, 99):.2f} "
        f"mean {b.mean() / a.mean():.2f}"
    )


if __name__ == "__main__":
    main()
