"""What the gate compares, measured on the time-based holdout: the candidate's metrics against
popularity, the item-item and blend candidates beside it, and the champion's score on this same
holdout (logged when the holdout is the same, else re-measured by refitting its parameters).

Reads: the prepared data, the split, the candidate factors, settings, the MLflow champion.
Writes: nothing; returns metric dicts named as MLflow logs them.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from recsvc.settings import Settings, TrainingSettings
from training import evaluate, gate, prepare, split, tracking
from training.factors import TrainedFactors, train_factors
from training.fit import AlsParams
from training.progress import Steps
from training.spark_als import SparkAls

log = logging.getLogger(__name__)


def holdout_metrics(
    prepared: prepare.Prepared, data_split: split.Split, trained: TrainedFactors, eval_members: int, seed: int
) -> dict[str, float]:
    popularity = evaluate.popularity_scores(trained.matrix)
    return evaluate.evaluate(
        trained.member_factors,
        trained.item_factors,
        data_split.seen,
        data_split.test,
        prepared.item_kind,
        popularity,
        max_members=eval_members,
        seed=seed,
    )


def other_candidates(
    prepared: prepare.Prepared,
    data_split: split.Split,
    candidate: TrainedFactors,
    params: AlsParams,
    t: TrainingSettings,
    positive: np.ndarray,
) -> dict[str, float]:
    """Holdout metrics of item-item neighbours (``itemknn.*``) and of the ALS blend
    (``blend.*``, weight chosen on the validation split before the holdout) beside ALS's."""
    from training import itemknn

    shape = (len(prepared.members), len(prepared.items))
    val = split.validation(data_split, shape, t.validation_days, positive)
    out: dict[str, float] = {}
    if t.blend_als_weight is not None:
        weight = t.blend_als_weight
    elif val.test.nnz:
        fitted = train_factors(prepared, val.train, val.start, params, num_threads=t.num_threads)
        knn = itemknn.fit(fitted.matrix, t.itemknn_neighbours, t.num_threads)
        weight, by_weight = itemknn.choose_weight(
            fitted.member_factors,
            fitted.item_factors,
            fitted.matrix,
            knn.similarity,
            val.seen,
            val.test,
            prepared.item_kind,
            max_members=t.tune_eval_members,
            seed=t.random_state,
            history_items=t.itemknn_history or None,
        )
        out |= {f"blend.val.ndcg_at_10.w{w:g}": v for w, v in by_weight.items()}
    else:
        weight = 1.0
    out["blend.als_weight"] = weight
    knn = itemknn.fit(candidate.matrix, t.itemknn_neighbours, t.num_threads)
    for name, w in (("itemknn", 0.0), ("blend", weight)):
        metrics = itemknn.evaluate(
            candidate.member_factors,
            candidate.item_factors,
            candidate.matrix,
            knn.similarity,
            data_split.seen,
            data_split.test,
            prepared.item_kind,
            w,
            max_members=t.eval_members,
            seed=t.random_state,
            history_items=t.itemknn_history or None,
        )
        out |= {f"{name}.{k}": v for k, v in metrics.items()}
    return out


def champion_score(
    client: Any,
    settings: Settings,
    prepared: prepare.Prepared,
    data_split: split.Split,
    steps: Steps,
    spark: SparkAls | None,
) -> tuple[float | None, str, str | None]:
    """(champion NDCG@10 on this holdout, method, champion version) or (None, ...) if none."""
    found = tracking.champion(client, settings.mlflow)
    if found is None:
        return None, "first_model", None
    mv, manifest = found
    if manifest is None:
        return None, gate.UNCOMPARABLE, str(mv.version)
    logged = manifest.metrics.get(gate.family_metric(manifest.family.family))
    if logged is not None and gate.same_holdout(manifest, prepared.fingerprint, data_split.window):
        return float(logged), "same_holdout_logged", str(mv.version)
    try:
        params = AlsParams.from_manifest(manifest.params, manifest.factors)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        log.warning("champion v%s parameters unusable: %s", mv.version, exc)
        return None, gate.UNCOMPARABLE, str(mv.version)
    with steps.step(f"re-measure champion v{mv.version} on this holdout"):
        trained = train_factors(
            prepared,
            data_split.train,
            data_split.start,
            params,
            num_threads=settings.training.num_threads,
            spark=spark,
        )
        metrics = evaluate.evaluate(
            trained.member_factors,
            trained.item_factors,
            data_split.seen,
            data_split.test,
            prepared.item_kind,
            None,
            max_members=settings.training.eval_members,
            seed=settings.training.random_state,
        )
        if manifest.family.family != "als":
            from training import itemknn

            metrics = itemknn.remeasure(
                trained, data_split, prepared.item_kind, manifest.family, settings.training
            )
    return float(metrics.get(gate.GATE_METRIC, 0.0)), "champion_refit", str(mv.version)
