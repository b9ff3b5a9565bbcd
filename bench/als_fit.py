"""Time the pipeline's ALS fit next to a bare ``implicit`` fit of the same matrix.

Reads: a data folder (through the same loader and :mod:`training.prepare` as ``recsvc train``)
and the training settings. Writes: one JSON line to stdout with both timings, their ratio (the
goal is <= 1.2), matrix size and peak RSS. Nothing else runs while it times: run it on an idle
machine, e.g.::

    OPENBLAS_NUM_THREADS=1 .venv/bin/python -m bench.als_fit --data var/data/big --repeat 2

The bare fit is exactly ``AlternatingLeastSquares(...).fit(matrix, show_progress=False)`` with BLAS
limited to one thread; the pipeline fit is :func:`training.fit.fit_als` as the refit step calls it.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

from threadpoolctl import threadpool_limits


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--data", type=Path, required=True, help="data folder (events, catalog, members)")
    parser.add_argument("--config", type=Path, default=None, help="TOML settings file")
    parser.add_argument("--repeat", type=int, default=1, help="alternating repetitions; the best time counts")
    args = parser.parse_args(argv)

    from implicit.cpu.als import AlternatingLeastSquares

    from recsvc.settings import load_settings
    from training import prepare
    from training.confidence import confidence_matrix
    from training.fit import AlsParams, fit_als, resolve_weighting

    settings = load_settings(args.config)
    t = settings.training
    started = time.perf_counter()
    prepared = prepare.prepare(prepare.load(args.data, settings.data))
    load_seconds = time.perf_counter() - started
    params = AlsParams.from_settings(t)
    shape = (len(prepared.members), len(prepared.items))
    matrix = confidence_matrix(
        prepared.events, shape, params.event_weights, params.half_life_days, prepared.cutoff
    )
    params, _ = resolve_weighting(params, matrix, t.bm25_auto_items)

    bare: list[float] = []
    ours: list[float] = []
    for _ in range(args.repeat):
        model = AlternatingLeastSquares(
            factors=params.factors,
            regularization=params.regularization,
            alpha=params.alpha,
            iterations=params.iterations,
            num_threads=t.num_threads,
            random_state=params.random_state,
        )
        with threadpool_limits(limits=1, user_api="blas"):
            s = time.perf_counter()
            model.fit(matrix, show_progress=False)
            bare.append(time.perf_counter() - s)
        del model
        s = time.perf_counter()
        fit_als(matrix, params, num_threads=t.num_threads, track_loss=False)
        ours.append(time.perf_counter() - s)
    result = {
        "members": shape[0],
        "items": shape[1],
        "nnz": int(matrix.nnz),
        "events": len(prepared.events),
        "load_seconds": round(load_seconds, 2),
        "bare_fit_seconds": round(min(bare), 3),
        "pipeline_fit_seconds": round(min(ours), 3),
        "ratio": round(min(ours) / min(bare), 3),
        "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
