"""Holdout NDCG@10 of the item-item model and the blend with each member's history cut to its N
strongest items (``training.itemknn_history``; docs/training.md, "The history cut"): one ALS
fit and one neighbour fit on a data folder, then every cut scored on the same holdout sample.

    python -m bench.experiments.history_cut DATA_DIR [--cuts 0,50,30] [--weights 0,0.5,0.7]
        [--neighbours 100,50]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np


def main() -> None:
    from recsvc.settings import load_settings
    from training import itemknn, prepare, split
    from training.confidence import weight_table
    from training.factors import train_factors
    from training.fit import AlsParams, resolve_weighting

    parser = argparse.ArgumentParser()
    parser.add_argument("data", type=Path)
    parser.add_argument("--cuts", default="0,50,30", help="history cuts; 0 = none")
    parser.add_argument(
        "--weights", default="0,0.5,0.7", help="the blend's ALS weights (0 = item-item alone)"
    )
    parser.add_argument("--neighbours", default=None, help="neighbours per item; default: the setting")
    args = parser.parse_args()

    s = load_settings()
    t = s.training
    prepared = prepare.prepare(prepare.load(args.data, s.data))
    params = AlsParams.from_settings(t)
    holdout = split.holdout(prepared, t.holdout_days, weight_table(params.event_weights) > 0)
    params, _ = resolve_weighting(params, holdout.seen, t.bm25_auto_items)
    trained = train_factors(prepared, holdout.train, holdout.start, params, num_threads=t.num_threads)
    lengths = np.diff(trained.matrix.indptr)
    p50, p90, p99 = np.percentile(lengths, [50, 90, 99])
    print(f"history items per member: p50 {p50:.0f} p90 {p90:.0f} p99 {p99:.0f} max {lengths.max()}")
    widths = [int(k) for k in args.neighbours.split(",")] if args.neighbours else [t.itemknn_neighbours]
    print("| neighbours | cut | " + " | ".join(f"w {w}" for w in args.weights.split(",")) + " |")
    for width, cut in ((k, int(c)) for k in widths for c in args.cuts.split(",")):
        knn = itemknn.fit(trained.matrix, width, t.num_threads)
        fixed = (trained.member_factors, trained.item_factors, trained.matrix, knn.similarity)
        row = []
        for w in (float(x) for x in args.weights.split(",")):
            metrics = itemknn.evaluate(
                *fixed,
                holdout.seen,
                holdout.test,
                prepared.item_kind,
                w,
                max_members=t.eval_members,
                seed=t.random_state,
                history_items=cut or None,
            )
            row.append(f"{metrics.get('all.ndcg_at_10', 0.0):.4f}")
        print(f"| {width} | {cut or 'none'} | " + " | ".join(row) + " |", flush=True)


if __name__ == "__main__":
    main()
