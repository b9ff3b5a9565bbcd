"""Is a refit that starts from the candidate's factors as good as one from scratch?

The pipeline fits a candidate on the events before the holdout, evaluates it, then refits on all
events up to the cutoff. This replays that one step earlier so the refit can be judged: the
"candidate" is fitted on the events before the validation window (the holdout's start minus
``validation_days``), the "refit" on the events before the holdout, from scratch
(``iterations``) and from the candidate's factors (``--warm`` iterations each), and every refit
is evaluated on the holdout it has not seen. One JSON line per fit:

    python -m bench.experiments.warm_refit --data DIR [--warm 3,5,8]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

from bench.experiments import holdout
from training import measure, prepare, split
from training.factors import TrainedFactors, train_factors
from training.fit import AlsParams


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--warm", default="3,5,8", help="iterations of the warm refits, comma-separated")
    args = ap.parse_args()
    h = holdout.load(args.data)
    t, prepared, params, positive, shape, hold = (
        h.settings.training,
        h.prepared,
        h.params,
        h.positive,
        h.shape,
        h.split,
    )
    earlier = split.validation(hold, shape, t.validation_days, positive)

    def report(name: str, trained: TrainedFactors, seconds: float) -> None:
        m = measure.holdout_metrics(prepared, hold, trained, t.eval_members, t.random_state)
        row = {
            "data": str(args.data),
            "fit": name,
            "all.ndcg_at_10": round(m["all.ndcg_at_10"], 4),
            "all.recall_at_20": round(m.get("all.recall_at_20", float("nan")), 4),
            "fit_seconds": round(seconds, 1),
        }
        print(json.dumps(row), flush=True)

    def fit(
        events: prepare.EventArrays, as_of: int, p: AlsParams, init: TrainedFactors | None = None
    ) -> tuple[TrainedFactors, float]:
        started = time.perf_counter()
        got = train_factors(
            prepared,
            events,
            as_of,
            p,
            num_threads=t.num_threads,
            init=None if init is None else (init.member_factors, init.item_factors),
        )
        return got, time.perf_counter() - started

    candidate, seconds = fit(earlier.train, earlier.start, params)
    report(f"candidate ({params.iterations} it., events before the validation window)", candidate, seconds)
    cold, seconds = fit(hold.train, hold.start, params)
    report(f"refit from scratch ({params.iterations} it.)", cold, seconds)
    for n in (int(x) for x in args.warm.split(",")):
        warm, seconds = fit(hold.train, hold.start, dataclasses.replace(params, iterations=n), candidate)
        report(f"refit from the candidate ({n} it.)", warm, seconds)
    for seed in (1, 2):
        other, seconds = fit(hold.train, hold.start, dataclasses.replace(params, random_state=seed))
        report(f"refit from scratch, seed {seed} ({params.iterations} it.)", other, seconds)


if __name__ == "__main__":
    main()
