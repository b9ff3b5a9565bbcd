"""What a person reaches by hand-tuning bare ``implicit`` on recsvc's own holdout.

The reference for ``recsvc train`` and ``--tune``: the same data folder, the same holdout (the
last ``holdout_days``), the same evaluation (``training.evaluate``, ``eval_members`` sampled test
members), but the model an expert would fit by hand: ``implicit``'s ALS on the interaction matrix
as they would build it (no event weights, no recency decay: one per (member, item), the count of
events, or the count BM25-weighted as implicit's last.fm example does), over a grid of factors,
regularization and alpha. Prints one JSON line per fit, recsvc's defaults first (and each
``--params`` file, such as the one ``--tune`` saved), and the best grid line last:

    python -m bench.experiments.expert_grid --data DIR [--params var/tune/params.toml ...]
        [--mapping export.toml] [--encoding gb18030] [--allow-quarantine]

A retailer's export is read as ``recsvc train`` reads it: ``--mapping``, ``--encoding`` and
``--allow-quarantine`` mean what they mean there, and an unusable folder (or one over the
quarantine limit) stops with the same one-line message and exit code 2, not a traceback.

On small data one holdout holds few members (MovieLens 100K's last 14 days: 71): ``--windows
8`` also judges on the seven earlier 14-day windows (the data cut back 14, 28, ... days, each
split as ``recsvc train`` would) and ends with each fit's NDCG@10 pooled over them.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path

import numpy as np
import scipy.sparse as sp
from threadpoolctl import threadpool_limits

from bench.experiments import holdout
from recsvc.errors import DataContractError
from recsvc.settings import load_settings
from training import measure, prepare, split
from training.factors import TrainedFactors, train_factors
from training.fit import AlsParams

FACTORS = (64, 128)
REGULARIZATION = (0.1, 1.0, 10.0, 100.0, 1000.0)
ALPHA = (1.0, 5.0, 20.0)
MATRICES = ("binary", "count", "bm25")


def interactions(hold: split.Split, shape: tuple[int, int], how: str) -> sp.csr_matrix:
    """The training events as an expert's matrix: every event type alike, no decay."""
    tr = hold.train
    m = sp.csr_matrix((np.ones(len(tr.member), np.float32), (tr.member, tr.item)), shape=shape)
    m.sum_duplicates()
    if how == "binary":
        m.data[:] = 1.0
    elif how == "bm25":
        from implicit.nearest_neighbours import bm25_weight

        m = sp.csr_matrix(bm25_weight(m, K1=100, B=0.8), dtype=np.float32)
    return m


def _window(
    h: holdout.Holdout,
    window: int,
    configs: list[tuple[str, AlsParams]],
    args: argparse.Namespace,
    pooled: dict[tuple[str, str], list[float]],
) -> None:
    """Every configuration and the grid on one holdout window."""
    from implicit.cpu.als import AlternatingLeastSquares

    t, prepared, shape, hold = h.settings.training, h.prepared, h.shape, h.split
    test_members = split.tested_members(hold)

    def report(name: str, trained: TrainedFactors, seconds: float, **extra: object) -> float:
        m = measure.holdout_metrics(prepared, hold, trained, t.eval_members, t.random_state)
        row = {
            "data": str(args.data),
            "window": window,
            "fit": name,
            **extra,
            "all.ndcg_at_10": round(m["all.ndcg_at_10"], 4),
            "all.recall_at_20": round(m["all.recall_at_20"], 4),
            "test_members": test_members,
            "fit_seconds": round(seconds, 1),
        }
        print(json.dumps(row), flush=True)
        total = pooled.setdefault((name, json.dumps(extra)), [0.0, 0.0])
        total[0] += m["all.ndcg_at_10"] * test_members
        total[1] += test_members
        return float(m["all.ndcg_at_10"])

    for name, p in configs:
        started = time.perf_counter()
        got = train_factors(prepared, hold.train, hold.start, p, num_threads=1)
        report(name, got, time.perf_counter() - started)

    best: tuple[float, dict[str, object]] = (-1.0, {})
    for how in filter(None, args.matrices.split(",")):
        matrix = interactions(hold, shape, how)
        for factors, reg, alpha in itertools.product(FACTORS, REGULARIZATION, ALPHA):
            started = time.perf_counter()
            model = AlternatingLeastSquares(
                factors=factors,
                regularization=reg,
                alpha=alpha,
                iterations=args.iterations,
                random_state=t.random_state,
                num_threads=1,
            )
            model.fit(matrix, show_progress=False)
            trained = TrainedFactors(
                matrix=matrix,
                fit=None,  # type: ignore[arg-type]
                member_factors=np.asarray(model.user_factors),
                item_factors=np.asarray(model.item_factors),
                fresh_content_filled=0,
            )
            cfg = {"matrix": how, "factors": factors, "regularization": reg, "alpha": alpha}
            ndcg = report("bare implicit", trained, time.perf_counter() - started, **cfg)
            if ndcg > best[0]:
                best = (ndcg, cfg)
    if best[1]:
        last = {"data": str(args.data), "window": window, "fit": "best bare implicit", **best[1]}
        print(json.dumps(last | {"all.ndcg_at_10": round(best[0], 4)}), flush=True)


def _load(args: argparse.Namespace) -> holdout.Holdout:
    """``holdout.load`` with the mapping, encoding and quarantine limit ``recsvc train`` takes."""
    s = load_settings()
    data = prepare.load(
        args.data,
        s.data,
        mapping=args.mapping,
        encoding=args.encoding,
        allow_quarantine=args.allow_quarantine,
    )
    return holdout.split_at(prepare.prepare(data), s, 0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--params", type=Path, nargs="*", default=[], help="settings fragments to compare too")
    ap.add_argument("--matrices", default=",".join(MATRICES))
    ap.add_argument("--iterations", type=int, default=15)
    ap.add_argument(
        "--windows",
        type=int,
        default=1,
        help="holdout windows, each holdout_days before the last; >1 adds pooled lines (small data)",
    )
    ap.add_argument("--mapping", type=Path, help="the export's mapping file (docs/data.md, Mapping file)")
    ap.add_argument("--encoding", help="the CSV files' encoding (default: detected)")
    ap.add_argument(
        "--allow-quarantine",
        action="store_true",
        help="go on when more than data.max_quarantined_share was quarantined (as recsvc train)",
    )
    args = ap.parse_args()
    threadpool_limits(1, "blas")
    try:
        first = _load(args)
    except DataContractError as exc:  # what recsvc train prints for the same folder, exit code 2
        print(f"expert_grid: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    configs: list[tuple[str, AlsParams]] = [("recsvc defaults", first.params)]
    for path in args.params:
        fragment = load_settings(path).training
        configs.append((f"recsvc {path.name}", AlsParams.from_settings(fragment)))
    # (fit, config as JSON) -> [sum of NDCG@10 x test members, test members]
    pooled: dict[tuple[str, str], list[float]] = {}

    for window in range(args.windows):
        back_days = window * first.settings.training.holdout_days
        h = holdout.split_at(first.prepared, first.settings, back_days)
        _window(h, window, configs, args, pooled)

    if args.windows > 1:
        # every fit over all windows, NDCG@10 weighted by each window's test members
        rows = [
            {
                "fit": f"pooled {name}",
                **json.loads(cfg),
                "all.ndcg_at_10": round(s / n, 4),
                "test_members": int(n),
            }
            for (name, cfg), (s, n) in pooled.items()
            if n
        ]
        for row in sorted(rows, key=lambda r: str(r["fit"]).startswith("pooled bare")):
            print(json.dumps({"data": str(args.data), "windows": args.windows} | row), flush=True)
        best_grid = max(
            (r for r in rows if r["fit"] == "pooled bare implicit"),
            key=lambda r: r["all.ndcg_at_10"],
            default=None,
        )
        if best_grid:
            print(
                json.dumps(
                    {"data": str(args.data), "windows": args.windows}
                    | best_grid
                    | {"fit": "pooled best bare implicit"}
                ),
                flush=True,
            )


if __name__ == "__main__":
    main()
