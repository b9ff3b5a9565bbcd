"""The orchestrator behind ``recsvc train``: chains the steps and records everything in MLflow.

ingest and validate (:mod:`training.prepare`) -> holdout (:mod:`training.split`) -> [tune
(:mod:`training.tune`)] -> confidence + ALS on the training split (:mod:`training.factors`) ->
evaluate against popularity (:mod:`training.evaluate`) -> replenishment intervals and their
holdout effect (:mod:`training.replenish`) -> gate against the champion
(:mod:`training.gate`) -> refit on all data up to the cutoff -> segments and popularity tables
(:mod:`training.segments`) -> FAISS indexes (:mod:`training.ann`) -> bundle
(:mod:`training.assemble`) -> MLflow run, model version, alias and audit entry (:mod:`training.record`).

``run`` reads as that chain: one function per step in :mod:`training.stages`; measurements for the gate are in
:mod:`training.measure`, what reaches MLflow and the audit log in :mod:`training.record`.

Reads: a data folder (or a loaded dataset) and Settings. Writes: a bundle folder (``bundle_out``
or a temporary one), one MLflow run (params, metrics, fingerprint, counts, plots, the bundle under
artifact path ``bundle``), a registered model version and, if the gate passes and the champion
is still the version it measured, the champion alias.
Only counts reach MLflow outside the bundle: no member id is logged.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from recsvc.errors import BundleError
from recsvc.settings import Settings
from training import (
    ann,
    assemble,
    gate,
    member_lists,
    prepare,
    profiles,
    record,
    stages,
    tracking,
)
from training.confidence import weight_table
from training.fit import AlsParams, resolve_weighting
from training.progress import Steps
from training.spark_als import SparkAls

log = logging.getLogger(__name__)


@dataclass
class TrainOptions:
    data_dir: Path
    tune: bool = False
    trials: int | None = None
    force: bool = False
    refit: bool = True
    register: bool = True
    bundle_out: Path | None = None
    mapping: Path | None = None  # a mapping file (pipelines.mapping)
    encoding: str | None = None  # CSV encoding; None: detected (pipelines.encoding)
    allow_quarantine: bool = False  # train even above data.max_quarantined_share
    params_out: Path | None = None  # --tune writes the chosen parameters here (a settings fragment)


@dataclass
class TrainingReport:
    bundle_id: str
    bundle_dir: Path | None
    run_id: str | None
    model_version: str | None
    decision: gate.GateDecision
    params: AlsParams
    metrics: dict[str, float]
    counts: dict[str, int]
    index_info: dict[str, Any]
    timings: dict[str, float] = field(default_factory=dict)
    trials: list[dict[str, Any]] = field(default_factory=list)
    family: gate.FamilyChoice | None = None  # the family that serves and why (gate.choose_family)


def run(
    settings: Settings,
    options: TrainOptions,
    *,
    dataset: prepare.DatasetLike | None = None,
    progress: Any | None = None,
) -> TrainingReport:
    import mlflow

    t = settings.training
    if options.bundle_out is not None and options.bundle_out.exists() and any(options.bundle_out.iterdir()):
        raise BundleError(f"--bundle-out folder is not empty: {options.bundle_out}")
    steps = Steps(progress)
    # the store is asked first: a wrong URI or a server that is down fails in seconds, not after
    # the ingest of a large export
    client = tracking.client_for(settings.mlflow)
    experiment_id = tracking.ensure_experiment(client, settings.mlflow)
    # the one engine switch (training/factors.py); the session starts at the first Spark step
    spark = SparkAls(t) if t.engine == "spark" else None
    try:
        prepared, zones, catalog_as_of = stages.ingest(settings, options, dataset, steps, spark)
    except BaseException:
        if spark is not None:
            spark.stop()
        raise
    params = AlsParams.from_settings(t)
    positive = weight_table(params.event_weights) > 0
    data_split = stages.holdout(prepared, t, positive, steps)
    params, weighting_reason = resolve_weighting(params, data_split.seen, t.bm25_auto_items)
    log.info("confidence weighting %s", weighting_reason)

    bundle_id = assemble.new_bundle_id(prepared)
    tmp_root = Path(tempfile.mkdtemp(prefix="recsvc-train-"))
    try:
        with mlflow.start_run(experiment_id=experiment_id, run_name=f"train-{bundle_id}") as active:
            run_id = active.info.run_id
            mlflow.set_tag("bundle_id", bundle_id)
            trials: list[dict[str, Any]] = []
            if options.tune:
                params, trials = stages.tune_params(
                    prepared, data_split, params, t, options, positive, steps, spark
                )
            record.log_params(
                params, settings, tune=options.tune, refit=options.refit, fingerprint=prepared.fingerprint
            )
            mlflow.set_tag("confidence_weighting_reason", weighting_reason)
            candidate = stages.fit_candidate(prepared, data_split, params, t, steps, spark)
            metrics, learned = stages.evaluate_candidate(
                prepared, data_split, candidate, params, settings, positive, steps, spark
            )
            family = gate.with_trend(
                gate.choose_family(metrics, t.family, t.family_margin),
                metrics,
                forced=t.trend_weight is not None,
                margin=t.family_margin,
            )
            log.info("family=%s %s", family.family, family.reason)
            metrics |= gate.served_metrics(metrics, family)
            decision = stages.gate_decision(
                client, settings, options, prepared, data_split, metrics, family, steps, spark
            )
            window = data_split.window
            candidate_losses, candidate_seconds = list(candidate.fit.losses), candidate.fit.seconds
            item_totals = np.asarray(candidate.matrix.sum(axis=0)).ravel()

            if options.refit:
                warm = stages.warm_start(candidate, params, t)
                # the split and the rest of the candidate are done with: free them before the refit
                del candidate, data_split
                served = stages.Served(prepared.events, prepared.cutoff, prepared.cutoff + 1)
                final = stages.refit(prepared, params, t, steps, spark, warm)
            else:
                final = candidate
                # The bundle is the model as of the split: it must not know the holdout's purchases
                # either (else "exclude purchased" hides exactly the items the holdout looks for),
                # nor its events through segments and popular lists (cold start would be served
                # what the holdout bought), so those tables are computed as of the holdout start.
                served = stages.Served(data_split.train, data_split.start, data_split.start)
                del data_split
            tables = stages.segments_and_tables(prepared, t, served, steps)
            with steps.step("FAISS indexes"):
                indexes, index_info = ann.indexes_for(
                    final.item_factors, prepared.item_kind, final.member_factors, t
                )
            counts = stages.bundle_counts(prepared, final, tables.member_segment)
            neighbours = stages.family_neighbours(family, final, t, steps)
            bundle_dir = options.bundle_out or tmp_root / "bundle"
            stages.write_bundle(
                bundle_dir,
                prepared,
                final,
                tables,
                served,
                settings,
                bundle_id=bundle_id,
                params=params,
                indexes=indexes,
                index_info=index_info,
                metrics=metrics,
                counts=counts,
                extra={
                    "holdout": window,
                    "gate_metric": gate.GATE_METRIC,
                    "refit": options.refit,
                    # the time the bundle's factors, history, purchases, segments and popular
                    # lists are as of: the cutoff, or without refit the holdout start (they
                    # know no event from there on); training_cutoff stays the data's cutoff
                    "data_as_of": prepared.cutoff_iso if options.refit else window["start"],
                    "run_id": run_id,
                    "engine": t.engine,
                    "fold_in": final.fit.fold_in,
                    # the time the catalog was read as of: a bundle swap retires the live
                    # catalog changes older than it and keeps the newer ones
                    "catalog_as_of": catalog_as_of,
                    "family": gate.family_spec(
                        family.family, metrics, neighbours, t.itemknn_history, family.trend_weight
                    ),
                },
                neighbours=neighbours,
                trend_weights=params.event_weights if family.trend_weight else None,
                steps=steps,
            )
            if zones is not None:
                with steps.step("member profiles"):
                    profiles.write(
                        bundle_dir,
                        prepared,
                        t,
                        zones,
                        tables.member_segment,
                        settings,
                        served.events,
                        served.as_of,
                    )
            lists_info = None
            if t.member_lists:  # a step of its own only when there is one
                with steps.step("member lists"):
                    lists_info = member_lists.for_settings(bundle_dir, t, settings.serving)

            with steps.step("log to MLflow and register"):
                figures = record.RunFigures(
                    metrics=metrics,
                    counts=counts,
                    index_info=index_info,
                    decision=decision,
                    family=family,
                    candidate_losses=candidate_losses,
                    candidate_seconds=candidate_seconds,
                    final_seconds=final.fit.seconds,
                    stored_member_lists=lists_info["stored"] if lists_info else None,
                )
                record.log_run(
                    figures,
                    window=window,
                    replenish_categories=learned.categories,
                    item_kind=prepared.item_kind,
                    item_totals=item_totals,
                    bundle_dir=bundle_dir,
                )
                version = None
                if options.register:
                    try:
                        version = record.register_and_audit(
                            client,
                            settings,
                            run_id=run_id,
                            artifact_uri=active.info.artifact_uri,
                            bundle_id=bundle_id,
                            fingerprint=prepared.fingerprint,
                            decision=decision,
                        )
                    except tracking.ChampionMoved as moved:
                        version, decision = moved.version, _stale_champion(decision, moved)
        timings = dict(steps.timings)
        timings["fit_seconds.final"] = final.fit.seconds
        return TrainingReport(
            bundle_id=bundle_id,
            bundle_dir=options.bundle_out,
            run_id=run_id,
            model_version=version,
            decision=decision,
            params=params,
            metrics=metrics,
            counts=counts,
            index_info=index_info,
            timings=timings,
            trials=trials,
            family=family,
        )
    finally:
        if spark is not None:
            spark.stop()
        shutil.rmtree(tmp_root, ignore_errors=True)


def _stale_champion(decision: gate.GateDecision, moved: tracking.ChampionMoved) -> gate.GateDecision:
    """The decision once the champion moved between the gate and the promotion: not promoted
    (registered without the alias, no audit entry; training.tracking logged it), said so in the
    active run's tags, metric ``gate.promoted`` and ``gate.json``, as a refused gate is."""
    import mlflow

    refused = dataclasses.replace(
        decision, promote=False, forced=False, reason=moved.decision_reason(decision.reason)
    )
    mlflow.set_tags(
        {
            "model_version": moved.version,
            tracking.STALE_CHAMPION_TAG: "true",
            "gate.decision": refused.reason,
            "gate.promote": "false",
        }
    )
    mlflow.log_metric("gate.promoted", 0.0, step=1)
    mlflow.log_dict(refused.as_dict() | {"stale_champion": moved.current}, "gate.json")
    return refused


def report_json(report: TrainingReport) -> str:
    return json.dumps(
        {
            "bundle_id": report.bundle_id,
            "run_id": report.run_id,
            "model_version": report.model_version,
            "gate": report.decision.as_dict(),
            "params": report.params.as_dict(),
            "metrics": report.metrics,
            "family": report.family.as_dict() if report.family else None,
        },
        indent=2,
        default=str,
    )
