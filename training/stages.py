"""The steps of ``recsvc train``, one function each, in the order :func:`training.pipeline.run`
chains them: ingest -> split -> tune -> fit the candidate -> evaluate -> gate -> refit -> segments
and popularity tables -> counts -> bundle. Each step runs under its own progress bar and timing
(:class:`training.progress.Steps`).
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from recsvc.bundle import LIFECYCLE_STAGES
from recsvc.errors import ConfigError, DataContractError
from recsvc.security.privacy import ErasureList, apply_erasures
from recsvc.settings import EVENT_TYPES, Settings, TrainingSettings
from training import assemble, gate, measure, prepare, profiles, replenish, segments, split
from training.confidence import purchased_matrix
from training.factors import TrainedFactors, train_factors
from training.fit import AlsParams, warm_refit_iterations
from training.prepare import EventArrays
from training.progress import Steps
from training.spark_als import SparkAls

if TYPE_CHECKING:
    from training.pipeline import TrainOptions

log = logging.getLogger(__name__)


@dataclass
class Served:
    """The events the served tables know, and the time they are as of."""

    events: EventArrays
    as_of: int  # epoch seconds
    end: int  # epoch seconds: ``events`` are before it (the cutoff + 1, or the holdout start)


@dataclass
class Tables:
    seg_table: pd.DataFrame
    member_segment: np.ndarray
    popular: pd.DataFrame


def ingest(
    settings: Settings,
    options: TrainOptions,
    dataset: prepare.DatasetLike | None,
    steps: Steps,
    spark: SparkAls | None = None,
) -> tuple[prepare.Prepared, Any, str | None]:
    """(prepared data, member time zones or None, the time the catalog was read as of). With the
    Spark engine and a data folder, Spark reads and checks the events itself
    (training/spark_ingest.py) and keeps the clean events for the fits; otherwise the pandas data
    contract does."""
    with steps.step("ingest and validate"):
        # the data folder's catalog file also when the events come in memory (the folder merged
        # with the event log): its time, not this run's, is what the catalog knows
        catalog_as_of = assemble.catalog_as_of(options.data_dir, datetime.now(UTC))
        # Erased members (ForgetMember) never reach a model again (docs/privacy.md).
        erased = frozenset(ErasureList(settings.security.erasure_list).read())
        if spark is not None and dataset is None:
            from pipelines.mapping import load_mapping
            from recsvc.errors import SparkUnavailable
            from training import spark_ingest
            from training.spark_als import first_line, is_spark_error

            try:
                ingested = spark_ingest.load(
                    spark.session(),
                    options.data_dir,
                    settings.data,
                    erased,
                    mapping=load_mapping(options.mapping),
                    encoding=options.encoding,
                    allow_quarantine=options.allow_quarantine,
                )
            except Exception as exc:  # a Spark job failing (e.g. its heap too small) is no data error
                if not is_spark_error(exc):
                    raise
                raise SparkUnavailable(
                    f"Spark failed reading {options.data_dir} on {spark.master!r}: {first_line(exc)}"
                ) from exc
            spark.attach(ingested.prepared.events, ingested.events)
            prepared, members = ingested.prepared, ingested.members
        else:
            data = (
                dataset
                if dataset is not None
                else prepare.load(
                    options.data_dir,
                    settings.data,
                    mapping=options.mapping,
                    encoding=options.encoding,
                    allow_quarantine=options.allow_quarantine,
                )
            )
            data = apply_erasures(data, erased)
            prepared = prepare.prepare(data)
            members = data.members
            del data  # the string tables are the largest thing in memory; arrays replace them
        zones = profiles.member_timezones(members, prepared.members) if settings.training.profiles else None
    return prepared, zones, catalog_as_of


def holdout(
    prepared: prepare.Prepared, t: TrainingSettings, positive: np.ndarray, steps: Steps
) -> split.Split:
    present = np.unique(prepared.events.etype)
    if present.size and not positive[present].any():
        names = ", ".join(EVENT_TYPES[int(c)] for c in present)
        raise ConfigError(
            f"every event type in the data ({names}) weighs 0 in training.event_weights: no event "
            "counts as an interaction, so there is nothing to train on or to test; give at least "
            "one of them a weight above 0"
        )
    with steps.step("time-based holdout"):
        data_split = split.holdout(prepared, t.holdout_days, positive)
    if data_split.test.nnz == 0:
        raise DataContractError(
            f"the holdout (last {t.holdout_days} days) has no new interactions of members with earlier "
            f"history: {_why_no_holdout(prepared, data_split.start, t.holdout_days)}"
        )
    return data_split


def _why_no_holdout(prepared: prepare.Prepared, start: int, days: int) -> str:
    """What the data lacks for a holdout, in the user's terms."""
    ev = prepared.events
    if ev.ts.size == 0 or int(ev.ts.min()) >= start:
        short = f"the data covers too short a period for training.holdout_days ({days})"
        return short + ": lower it, or add history"
    before, inside = np.unique(ev.member[ev.ts < start]), np.unique(ev.member[ev.ts >= start])
    if inside.size == 0:
        return f"no events fall in the last {days} days; lower training.holdout_days"
    if np.intersect1d(before, inside, assume_unique=True).size == 0:
        return (
            f"none of the {inside.size} members active in it was active before it (a member's events "
            "all fall on one side); a longer training.holdout_days, or data with returning members"
        )
    return (
        "every interaction in it is with an item the member already had (the holdout counts new "
        "items only), or carries an event type of weight 0; data with more items per member is needed"
    )


def tune_params(
    prepared: prepare.Prepared,
    data_split: split.Split,
    params: AlsParams,
    t: TrainingSettings,
    options: TrainOptions,
    positive: np.ndarray,
    steps: Steps,
    spark: SparkAls | None,
) -> tuple[AlsParams, list[dict[str, Any]]]:
    from training import tune

    n_trials = options.trials or t.tune_trials
    with steps.step(f"tune ({n_trials} trials on a validation split)", total=n_trials) as adv:
        tuned = tune.search(
            prepared,
            data_split,
            params,
            t,
            trials=n_trials,
            positive_types=positive,
            on_trial=lambda _n, _s: adv(1),
            spark=spark,
        )
    if options.params_out is not None:
        tune.write_params(options.params_out, tuned)
        log.info("tuned parameters saved to %s", options.params_out)
    return tuned.params, tuned.trials


def fit_candidate(
    prepared: prepare.Prepared,
    data_split: split.Split,
    params: AlsParams,
    t: TrainingSettings,
    steps: Steps,
    spark: SparkAls | None,
) -> TrainedFactors:
    with steps.step("fit ALS on the training split", total=params.iterations) as adv:
        return train_factors(
            prepared,
            data_split.train,
            data_split.start,
            params,
            num_threads=t.num_threads,
            new_product_days=t.new_product_days,
            track_loss=t.track_loss,
            on_iteration=lambda _i, _loss: adv(1),
            spark=spark,
        )


def evaluate_candidate(
    prepared: prepare.Prepared,
    data_split: split.Split,
    candidate: TrainedFactors,
    params: AlsParams,
    settings: Settings,
    positive: np.ndarray,
    steps: Steps,
    spark: SparkAls | None = None,
) -> tuple[dict[str, float], replenish.Learned]:
    """Holdout metrics of the candidate, the item-item and blend candidates (when asked for or the
    data is small), replenishment and member profiles; and the replenishment intervals learnt on the
    training split."""
    t = settings.training
    with steps.step("evaluate on the holdout"):
        metrics = measure.holdout_metrics(prepared, data_split, candidate, t.eval_members, t.random_state)
    members = len(prepared.members)
    fits = measure.Fits(prepared, data_split, candidate, params, t, positive, spark)
    if (
        t.itemknn == "on"
        or t.family in ("itemknn", "blend")
        or (t.itemknn == "auto" and members < t.itemknn_auto_members)
    ):
        with steps.step("item-item and blend candidates"):
            metrics |= measure.other_candidates(fits)
    if t.trend != "off":
        with steps.step("trend prior"):
            metrics |= measure.trend_candidate(fits, metrics)
    with steps.step("replenishment: learn intervals, evaluate on the holdout"):
        learned = replenish.learn(data_split.train, prepared.item_category, prepared.categories, t)
        metrics |= replenish.evaluate(
            prepared,
            data_split.train,
            data_split.start,
            data_split.end,
            candidate.member_factors,
            candidate.item_factors,
            data_split.seen,
            data_split.test,
            learned,
            settings.serving,
            max_members=t.eval_members,
            seed=t.random_state,
        )
    if t.profiles:
        with steps.step("evaluate member profiles on the holdout"):
            metrics |= profiles.evaluate_holdout(prepared, data_split, t)
    return metrics, learned


def gate_decision(
    client: Any,
    settings: Settings,
    options: TrainOptions,
    prepared: prepare.Prepared,
    data_split: split.Split,
    metrics: dict[str, float],
    family: gate.FamilyChoice,
    steps: Steps,
    spark: SparkAls | None,
) -> gate.GateDecision:
    with steps.step("gate against the champion"):
        champion_score, method, champion_version = measure.champion_score(
            client, settings, prepared, data_split, steps, spark
        )
        decision = gate.decide(
            metrics.get(gate.spec_metric(family), 0.0),
            champion_score,
            baseline=metrics.get(gate.BASELINE_METRIC),
            tolerance=settings.training.gate_tolerance,
            force=options.force,
            method=method,
            champion_version=champion_version,
        )
    tested = int(metrics.get("all.members", 0))
    if tested < settings.training.gate_min_test_members:
        caution = (
            f"caution: judged on {tested} test members only (fewer than "
            f"training.gate_min_test_members = {settings.training.gate_min_test_members}), a weak "
            "comparison; a longer training.holdout_days gives a firmer one"
        )
        log.warning("event=gate_weak_holdout test_members=%d", tested)
        decision = dataclasses.replace(decision, reason=f"{decision.reason}; {caution}")
    log.info("gate promote=%s %s", decision.promote, decision.reason)
    return decision


def warm_start(
    candidate: TrainedFactors, params: AlsParams, t: TrainingSettings
) -> tuple[np.ndarray, np.ndarray] | None:
    """The (member, item) factors the refit starts from: the candidate's, when a warm refit is
    asked for and possible (``fit.warm_refit_iterations``); else None, a refit from scratch."""
    if warm_refit_iterations(t, params) == 0:
        return None
    return candidate.member_factors, candidate.item_factors


def refit(
    prepared: prepare.Prepared,
    params: AlsParams,
    t: TrainingSettings,
    steps: Steps,
    spark: SparkAls | None,
    warm: tuple[np.ndarray, np.ndarray] | None = None,
) -> TrainedFactors:
    """The fit on all events up to the cutoff with the candidate's parameters: from ``warm``
    (:func:`warm_start`) for ``fit.warm_refit_iterations`` iterations, else from scratch."""
    label = "refit on all data up to the cutoff"
    if warm is not None:
        params = dataclasses.replace(params, iterations=warm_refit_iterations(t, params))
        label += " (from the candidate's factors)"
    with steps.step(label, total=params.iterations) as adv:
        final = train_factors(
            prepared,
            prepared.events,
            prepared.cutoff,
            params,
            num_threads=t.num_threads,
            new_product_days=t.new_product_days,
            on_iteration=lambda _i, _loss: adv(1),
            spark=spark,
            init=warm,
        )
    if spark is not None:
        spark.stop()  # every fit is done: the JVM's memory goes back before FAISS
    return final


def segments_and_tables(
    prepared: prepare.Prepared, t: TrainingSettings, served: Served, steps: Steps
) -> Tables:
    with steps.step("segments and popularity tables"):
        seg_table, member_segment = segments.member_segments(
            prepared, t, events=served.events, as_of=served.as_of
        )
        popular = segments.popularity_tables(
            prepared,
            member_segment,
            t,
            t.popular_window_days,
            events=served.events,
            as_of=served.as_of,
        )
    return Tables(seg_table, member_segment, popular)


def bundle_counts(
    prepared: prepare.Prepared, final: TrainedFactors, member_segment: np.ndarray
) -> dict[str, int]:
    segment_counts = np.bincount(member_segment, minlength=len(LIFECYCLE_STAGES))
    counts = dict(prepared.counts)
    counts |= {f"segment.{s}": int(n) for s, n in zip(LIFECYCLE_STAGES, segment_counts, strict=True)}
    counts["fresh_content_filled"] = final.fresh_content_filled
    counts["members_with_factors"] = int((np.abs(final.member_factors).sum(axis=1) > 0).sum())
    return counts


def write_bundle(
    bundle_dir: Path,
    prepared: prepare.Prepared,
    final: TrainedFactors,
    tables: Tables,
    served: Served,
    settings: Settings,
    *,
    bundle_id: str,
    params: AlsParams,
    indexes: dict[str, Any],
    index_info: dict[str, Any],
    metrics: dict[str, float],
    counts: dict[str, int],
    extra: dict[str, Any],
    neighbours: tuple[np.ndarray, np.ndarray] | None,
    steps: Steps,
    trend_weights: dict[str, float] | None = None,
) -> None:
    """The bundle of ``final`` and the tables; ``trend_weights``: the event weights of the trend
    prior's ``item_trend`` (counted over the ``trend_days`` before the served events end), when
    it serves."""
    t = settings.training
    shape = (len(prepared.members), len(prepared.items))
    served_purchases: sp.csr_matrix = purchased_matrix(served.events, shape)
    # the bundle's intervals and last purchase times know exactly the bundle's purchases
    served_learned = replenish.learn(served.events, prepared.item_category, prepared.categories, t)
    served_last = replenish.last_purchase(served.events, shape)
    with steps.step("write the bundle"):
        contents = assemble.assemble(
            prepared,
            bundle_id=bundle_id,
            params=params,
            member_factors=final.member_factors,
            item_factors=final.item_factors,
            history=final.matrix,
            purchased=served_purchases,
            member_segment=tables.member_segment,
            segments=tables.seg_table,
            popular=tables.popular,
            indexes=indexes,
            index_info=index_info,
            metrics=metrics,
            counts=counts,
            replenish=(served_learned, served_last),
            extra=extra,
        )
        if neighbours is not None:
            contents.item_neighbour_item, contents.item_neighbour_score = neighbours
        if trend_weights is not None:
            from training import trend

            # the window training measured the trend over: the trend_days before the events end
            contents.item_trend = trend.zero_kinds(
                trend.item_trend(served.events, trend_weights, served.end, t.trend_days, shape[1]),
                prepared.item_kind,
                trend.off_in(metrics),
            )
        assemble.write(bundle_dir, contents)


def family_neighbours(
    family: gate.FamilyChoice, final: TrainedFactors, t: TrainingSettings, steps: Steps
) -> tuple[np.ndarray, np.ndarray] | None:
    """The item-item neighbour table an itemknn or blend bundle serves from, fitted on the
    history the bundle serves (None for ALS)."""
    if family.family == "als":
        return None
    from training import itemknn

    with steps.step("item-item neighbours for serving"):
        return itemknn.table(itemknn.fit(final.matrix, t.itemknn_neighbours, t.num_threads))
