"""Holdout NDCG@10 of several hyper-parameter files on one data folder, as ``recsvc train``
measures it (same holdout, same evaluation), without MLflow: how the defaults were chosen.

    python -m training.compare --data var/data/sample defaults var/tune/sample.toml other.toml

``defaults`` stands for the settings' own values; a file is a ``--params`` file (``[training]``).
Prints one JSON line per configuration.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from recsvc.settings import Settings, load_settings
from training import evaluate, prepare, split
from training.confidence import weight_table
from training.factors import train_factors
from training.fit import AlsParams, resolve_weighting
from training.tune import read_params


def _settings(name: str) -> Settings:
    if name == "defaults":
        return load_settings()
    return load_settings(overrides={"training": read_params(Path(name))})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("configs", nargs="+", help="'defaults' or --params files")
    args = ap.parse_args()
    base = load_settings()
    data = prepare.load(args.data, base.data)
    prepared = prepare.prepare(data)
    del data
    for name in args.configs:
        s = _settings(name)
        t = s.training
        params = AlsParams.from_settings(t)
        positive = weight_table(params.event_weights) > 0
        holdout = split.holdout(prepared, t.holdout_days, positive)
        params, _ = resolve_weighting(params, holdout.seen, t.bm25_auto_items)
        started = time.perf_counter()
        trained = train_factors(prepared, holdout.train, holdout.start, params, num_threads=t.num_threads)
        seconds = time.perf_counter() - started
        m = evaluate.evaluate(
            trained.member_factors,
            trained.item_factors,
            holdout.seen,
            holdout.test,
            prepared.item_kind,
            evaluate.popularity_scores(trained.matrix),
            max_members=t.eval_members,
            seed=t.random_state,
        )
        row = {
            "data": str(args.data),
            "config": name,
            "all.ndcg_at_10": round(m.get("all.ndcg_at_10", float("nan")), 4),
            "product.ndcg_at_10": round(m.get("product.ndcg_at_10", float("nan")), 4),
            "content.ndcg_at_10": round(m.get("content.ndcg_at_10", float("nan")), 4),
            "baseline.all.ndcg_at_10": round(m.get("baseline.all.ndcg_at_10", float("nan")), 4),
            "fit_seconds": round(seconds, 1),
            "params": {k: v for k, v in params.as_dict().items() if k != "event_weights"},
        }
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
