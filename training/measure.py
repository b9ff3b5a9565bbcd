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
import scipy.sparse as sp

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


class Fits:
    """The fits the candidates beside ALS share, each made on first use: the validation split and
    ALS on its training part (with the candidate's engine), item-item neighbours on that and on
    the candidate's confidence."""

    def __init__(
        self,
        prepared: prepare.Prepared,
        data_split: split.Split,
        candidate: TrainedFactors,
        params: AlsParams,
        t: TrainingSettings,
        positive: np.ndarray,
        spark: SparkAls | None = None,
    ) -> None:
        self.prepared, self.data_split, self.candidate = prepared, data_split, candidate
        self.params, self.t, self.positive, self.spark = params, t, positive, spark
        self._cache: dict[str, Any] = {}

    def _once(self, key: str, make: Any) -> Any:
        if key not in self._cache:
            self._cache[key] = make()
        return self._cache[key]

    @property
    def validation(self) -> split.Split:
        shape = (len(self.prepared.members), len(self.prepared.items))
        return self._once(
            "val", lambda: split.validation(self.data_split, shape, self.t.validation_days, self.positive)
        )

    @property
    def validation_fit(self) -> TrainedFactors:
        val = self.validation
        return self._once(
            "val_fit",
            lambda: train_factors(
                self.prepared,
                val.train,
                val.start,
                self.params,
                num_threads=self.t.num_threads,
                new_product_days=self.t.new_product_days,
                spark=self.spark,  # the engine the candidate was fitted with, at any scale
            ),
        )

    def similarity(self, on_validation: bool) -> sp.csr_matrix:
        from training import itemknn

        matrix = self.validation_fit.matrix if on_validation else self.candidate.matrix
        key = "val_knn" if on_validation else "knn"
        return self._once(
            key, lambda: itemknn.fit(matrix, self.t.itemknn_neighbours, self.t.num_threads).similarity
        )


def other_candidates(fits: Fits) -> dict[str, float]:
    """Holdout metrics of item-item neighbours (``itemknn.*``) and of the ALS blend
    (``blend.*``, weight chosen on the validation split before the holdout) beside ALS's."""
    from training import itemknn

    prepared, data_split, candidate, t = fits.prepared, fits.data_split, fits.candidate, fits.t
    out: dict[str, float] = {}
    if t.blend_als_weight is not None:
        weight = t.blend_als_weight
    elif fits.validation.test.nnz:
        val, fitted = fits.validation, fits.validation_fit
        weight, by_weight = itemknn.choose_weight(
            fitted.member_factors,
            fitted.item_factors,
            fitted.matrix,
            fits.similarity(on_validation=True),
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
    for name, w in (("itemknn", 0.0), ("blend", weight)):
        metrics = itemknn.evaluate(
            candidate.member_factors,
            candidate.item_factors,
            candidate.matrix,
            fits.similarity(on_validation=False),
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


def trend_candidate(fits: Fits, metrics: dict[str, float]) -> dict[str, float]:
    """The trend prior (training/trend.py) over the family the gate would choose from
    ``metrics``: its weight chosen on the validation split (``trend.val.ndcg_at_10.t<t>``, or
    ``training.trend_weight``), its holdout metrics (``trend.*``) when the weight is above 0,
    and the last ``trend_days``' popularity alone (``recent.*``), the baseline it moves towards.
    Nothing more is measured (no validation fit) when that baseline's NDCG@10 is below
    ``training.trend_min_share`` of the family's (``trend.recent_share``) and no weight is set."""
    from training import itemknn, trend

    prepared, data_split, candidate, t = fits.prepared, fits.data_split, fits.candidate, fits.t
    family = gate.choose_family(metrics, t.family, t.family_margin).family
    als_weight = {"als": 1.0, "itemknn": 0.0}.get(family, metrics.get("blend.als_weight", 1.0))
    n_items = len(prepared.items)
    weights = fits.params.event_weights
    history_items = t.itemknn_history or None
    out: dict[str, float] = {}

    def measured(
        model: TrainedFactors,
        on: split.Split,
        on_validation: bool,
        recent: np.ndarray,
        weight: float,
        **kw: Any,
    ) -> dict[str, float]:
        return itemknn.evaluate(
            model.member_factors,
            model.item_factors,
            model.matrix,
            fits.similarity(on_validation) if als_weight < 1 else None,
            on.seen,
            on.test,
            prepared.item_kind,
            als_weight,
            seed=t.random_state,
            history_items=history_items,
            trend=recent,
            trend_weight=weight,
            **kw,
        )

    recent = trend.item_trend(data_split.train, weights, data_split.start, t.trend_days, n_items)
    popular = evaluate.evaluate(
        np.ones((len(prepared.members), 1), dtype=np.float32),
        recent.reshape(-1, 1),
        data_split.seen,
        data_split.test,
        prepared.item_kind,
        None,
        max_members=t.eval_members,
        seed=t.random_state,
    )
    if not recent.any():  # nothing in the window: all-zero scores rank in index order, not by use
        popular = {k: v if k.endswith(".members") else 0.0 for k, v in popular.items()}
    out |= {f"recent.{k}": v for k, v in popular.items()}
    out["trend.days"] = float(t.trend_days)
    family_ndcg = float(metrics.get(gate.family_metric(family), 0.0))
    share = popular.get("all.ndcg_at_10", 0.0) / family_ndcg if family_ndcg > 0 else 1.0
    out["trend.recent_share"] = share
    if t.trend_weight is None and share < t.trend_min_share:
        # what sells now predicts little of this holdout next to the model: no validation fit
        log.info("trend prior not measured: recent popularity %.0f%% of %s's NDCG@10", 100 * share, family)
        out["trend.weight"] = 0.0
        return out
    if t.trend_weight is not None:
        weight = t.trend_weight
    elif fits.validation.test.nnz:
        val = fits.validation
        val_recent = trend.item_trend(val.train, weights, val.start, t.trend_days, n_items)
        # chosen per kind, as serving divides the trend (gate.by_kind)
        per_weight = {
            w: measured(
                fits.validation_fit,
                val,
                True,
                val_recent,
                w,
                max_members=t.tune_eval_members,
                kinds=gate.SERVED_KINDS,
            )
            for w in trend.WEIGHTS
        }
        off = trend.kinds_off(per_weight)
        by_weight = {w: trend.with_kinds_off(per_weight, w, off) for w in trend.WEIGHTS}
        out |= {f"trend.val.ndcg_at_10.t{w:g}": v for w, v in by_weight.items()}
        out |= {f"trend.{kind}.off": 1.0 for kind in off}
        weight = trend.choose(by_weight)
        recent = trend.zero_kinds(recent, prepared.item_kind, off)
    else:
        weight = 0.0
    out["trend.weight"] = weight
    if weight > 0:
        got = measured(candidate, data_split, False, recent, weight, max_members=t.eval_members)
        out |= {f"trend.{k}": v for k, v in got.items()}
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
    logged = manifest.metrics.get(gate.spec_metric(manifest.family))
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
            new_product_days=settings.training.new_product_days,
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
        if manifest.family.family != "als" or manifest.family.trend_weight:
            from training import itemknn, trend

            recent = None
            if manifest.family.trend_weight:
                days = manifest.family.trend_days or settings.training.trend_days
                recent = trend.zero_kinds(
                    trend.item_trend(
                        data_split.train, params.event_weights, data_split.start, days, len(prepared.items)
                    ),
                    prepared.item_kind,
                    trend.off_in(manifest.metrics),
                )
            metrics = itemknn.remeasure(
                trained, data_split, prepared.item_kind, manifest.family, settings.training, recent
            )
    return float(metrics.get(gate.GATE_METRIC, 0.0)), "champion_refit", str(mv.version)
