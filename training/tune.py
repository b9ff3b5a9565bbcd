"""``--tune``: search ALS hyper-parameters on a validation split carved from the training period.

Reads: :class:`training.prepare.Prepared`, the holdout :class:`training.split.Split` (only its
training events are used: the validation window is its last ``validation_days``; the holdout is
never seen here), the starting :class:`training.fit.AlsParams` and the trial count.
Writes: the best parameters found, and one nested MLflow run per trial (parameters and the
validation NDCG@10) under the active run.

Search space, log scale because good values differ by orders of magnitude between data sets:
factors 16..256, regularization 1e-3..10, alpha 0.1..100, iterations 5..50, and event-weight
sharpness g in 0.25..4 (each weight becomes ``w ** g``: the order purchase > add_to_cart >
favorite/share > view is kept while the contrast between them is searched).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import numpy as np

from training.evaluate import evaluate
from training.factors import train_factors
from training.fit import AlsParams
from training.gate import GATE_METRIC
from training.prepare import Prepared
from training.split import Split, validation

if TYPE_CHECKING:
    from training.spark_als import SparkAls

log = logging.getLogger(__name__)


def sharpen(weights: dict[str, float], sharpness: float) -> dict[str, float]:
    return {k: float(w**sharpness) if w > 0 else 0.0 for k, w in weights.items()}


def suggest(trial: Any, base: AlsParams) -> AlsParams:
    sharpness = trial.suggest_float("weight_sharpness", 0.25, 4.0, log=True)
    return replace(
        base,
        factors=trial.suggest_int("factors", 16, 256, log=True),
        regularization=trial.suggest_float("regularization", 1e-3, 10.0, log=True),
        alpha=trial.suggest_float("alpha", 0.1, 100.0, log=True),
        iterations=trial.suggest_int("iterations", 5, 50, log=True),
        event_weights=sharpen(base.event_weights, sharpness),
    )


def search(
    prepared: Prepared,
    split: Split,
    base: AlsParams,
    *,
    trials: int,
    validation_days: int,
    positive_types: np.ndarray,
    eval_members: int,
    num_threads: int = 0,
    log_trials: bool = True,
    on_trial: Callable[[int, float], None] | None = None,
    spark: SparkAls | None = None,
) -> tuple[AlsParams, list[dict[str, Any]]]:
    """Return (best params, one row per trial). The first trial is ``base`` itself, so tuning
    never returns something worse on validation than the defaults."""
    import optuna

    shape = (len(prepared.members), len(prepared.items))
    val = validation(split, shape, validation_days, positive_types)
    if val.test.nnz == 0:
        from recsvc.errors import DataContractError

        raise DataContractError(
            f"the validation window ({validation_days} days before the holdout) has no interactions "
            "of members with earlier history: tuning needs a longer history or fewer validation_days"
        )
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sampler = optuna.samplers.TPESampler(seed=base.random_state)
    study = optuna.create_study(direction="maximize", sampler=sampler)
    study.enqueue_trial(
        {
            "weight_sharpness": 1.0,
            "factors": base.factors,
            "regularization": base.regularization,
            "alpha": base.alpha,
            "iterations": base.iterations,
        },
        skip_if_exists=True,
    )
    rows: list[dict[str, Any]] = []
    candidates: dict[int, AlsParams] = {}

    def objective(trial: Any) -> float:
        params = suggest(trial, base)
        candidates[trial.number] = params
        trained = train_factors(prepared, val.train, val.start, params, num_threads=num_threads, spark=spark)
        metrics = evaluate(
            trained.member_factors,
            trained.item_factors,
            val.seen,
            val.test,
            prepared.item_kind,
            None,
            max_members=eval_members,
            seed=base.random_state,
        )
        score = float(metrics.get(GATE_METRIC, 0.0))
        row = {
            "trial": trial.number,
            **trial.params,
            "val_ndcg_at_10": score,
            "fit_seconds": trained.fit.seconds,
        }
        rows.append(row)
        if log_trials:
            import mlflow

            parent = mlflow.active_run()
            experiment_id = parent.info.experiment_id if parent is not None else None
            with mlflow.start_run(run_name=f"trial-{trial.number}", nested=True, experiment_id=experiment_id):
                mlflow.log_params(trial.params)
                mlflow.log_metrics(
                    {f"val.{k}": v for k, v in metrics.items() if np.isfinite(v)}
                    | {"fit_seconds": trained.fit.seconds}
                )
        log.info("trial=%d val_ndcg_at_10=%.4f params=%s", trial.number, score, trial.params)
        if on_trial is not None:
            on_trial(trial.number, score)
        return score

    study.optimize(objective, n_trials=trials)
    return candidates[study.best_trial.number], rows
