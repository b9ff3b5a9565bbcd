"""The orchestrator behind ``recsvc train``: chains the steps and records everything in MLflow.

ingest and validate (:mod:`training.prepare`) -> holdout (:mod:`training.split`) -> [tune
(:mod:`training.tune`)] -> confidence + ALS on the training split (:mod:`training.factors`) ->
evaluate against popularity (:mod:`training.evaluate`) -> replenishment intervals and their
holdout effect (:mod:`training.replenish`) -> gate against the champion
(:mod:`training.gate`) -> refit on all data up to the cutoff -> segments and popularity tables
(:mod:`training.segments`) -> FAISS indexes (:mod:`training.ann`) -> bundle
(:mod:`training.assemble`) -> MLflow run, model version and alias (:mod:`training.tracking`).

Reads: a data folder (or a loaded dataset) and Settings. Writes: a bundle folder (``bundle_out``
or a temporary one), one MLflow run (params, metrics, fingerprint, counts, plots, the bundle under
artifact path ``bundle``), a registered model version and, if the gate passes, the champion alias.
Only counts reach MLflow outside the bundle: no member id is logged.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from recsvc.bundle import LIFECYCLE_STAGES
from recsvc.errors import BundleError, DataContractError
from recsvc.security.audit import AuditLog
from recsvc.security.privacy import ErasureList, apply_erasures
from recsvc.settings import Settings, TrainingSettings
from training import (
    ann,
    assemble,
    evaluate,
    gate,
    member_lists,
    plots,
    prepare,
    profiles,
    replenish,
    segments,
    split,
    tracking,
)
from training.confidence import purchased_matrix, weight_table
from training.factors import TrainedFactors, train_factors
from training.fit import AlsParams
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


class Steps:
    """Progress bars (a rich ``Progress`` if given) and wall time per step."""

    def __init__(self, progress: Any | None = None) -> None:
        self.progress = progress
        self.timings: dict[str, float] = {}

    @contextmanager
    def step(self, name: str, total: float | None = None) -> Iterator[Callable[[float], None]]:
        progress = self.progress
        task = progress.add_task(name, total=total) if progress is not None else None
        started = time.perf_counter()

        def advance(n: float = 1) -> None:
            if progress is not None and task is not None:
                progress.advance(task, n)

        try:
            yield advance
        finally:
            self.timings[name] = time.perf_counter() - started
            if progress is not None and task is not None:
                progress.update(task, total=total or 1, completed=total or 1)
            log.info("step=%r seconds=%.2f", name, self.timings[name])


def _holdout_metrics(
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


def _other_candidates(
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
        )
        out |= {f"{name}.{k}": v for k, v in metrics.items()}
    return out


def _champion_score(
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


def _log_params(params: AlsParams, settings: Settings, options: TrainOptions, fingerprint: str) -> None:
    import mlflow

    t = settings.training
    flat: dict[str, Any] = {k: v for k, v in params.as_dict().items() if k != "event_weights"}
    flat |= {f"weight.{k}": v for k, v in params.event_weights.items()}
    flat |= {
        "holdout_days": t.holdout_days,
        "eval_members": t.eval_members,
        "tune": options.tune,
        "refit": options.refit,
        "data_fingerprint": fingerprint,
    }
    mlflow.log_params(flat)
    mlflow.set_tag("data_fingerprint", fingerprint)


def _log_figures(
    item_kind: np.ndarray, item_totals: np.ndarray, losses: list[float], metrics: dict[str, float]
) -> None:
    import matplotlib.pyplot as plt
    import mlflow

    figures = {
        "plots/long_tail_popularity.png": plots.long_tail(item_totals, item_kind),
        "plots/metrics_vs_baseline.png": plots.metrics_vs_baseline(metrics),
    }
    if losses:
        figures["plots/loss_per_iteration.png"] = plots.loss_curve(losses)
    for name, fig in figures.items():
        mlflow.log_figure(fig, name)
        plt.close(fig)


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
    with steps.step("ingest and validate"):
        catalog_as_of = assemble.catalog_as_of(
            None if dataset is not None else options.data_dir, datetime.now(UTC)
        )
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
        # Erased members (ForgetMember) never reach a model again (docs/privacy.md).
        data = apply_erasures(data, ErasureList(settings.security.erasure_list).read())
        prepared = prepare.prepare(data)
        zones = profiles.member_timezones(data.members, prepared.members) if t.profiles else None
        del data  # the string tables are the largest thing in memory; arrays replace them
    shape = (len(prepared.members), len(prepared.items))
    params = AlsParams.from_settings(t)
    positive = weight_table(params.event_weights) > 0
    with steps.step("time-based holdout"):
        data_split = split.holdout(prepared, t.holdout_days, positive)
    if data_split.test.nnz == 0:
        raise DataContractError(
            f"the holdout (last {t.holdout_days} days) has no new interactions of members with earlier "
            "history: the data covers too short a period for training.holdout_days"
        )

    client = tracking.client_for(settings.mlflow)
    experiment_id = tracking.ensure_experiment(client, settings.mlflow)
    bundle_id = assemble.new_bundle_id(prepared)
    tmp_root = Path(tempfile.mkdtemp(prefix="recsvc-train-"))
    # the one engine switch (training/factors.py); the session starts at the first fit
    spark = SparkAls(t) if t.engine == "spark" else None
    try:
        with mlflow.start_run(experiment_id=experiment_id, run_name=f"train-{bundle_id}") as active:
            run_id = active.info.run_id
            mlflow.set_tag("bundle_id", bundle_id)
            trials: list[dict[str, Any]] = []
            if options.tune:
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
                params, trials = tuned.params, tuned.trials
                if options.params_out is not None:
                    tune.write_params(options.params_out, tuned)
                    log.info("tuned parameters saved to %s", options.params_out)
            _log_params(params, settings, options, prepared.fingerprint)

            with steps.step("fit ALS on the training split", total=params.iterations) as adv:
                candidate = train_factors(
                    prepared,
                    data_split.train,
                    data_split.start,
                    params,
                    num_threads=t.num_threads,
                    track_loss=t.track_loss,
                    on_iteration=lambda _i, _loss: adv(1),
                    spark=spark,
                )
            with steps.step("evaluate on the holdout"):
                metrics = _holdout_metrics(prepared, data_split, candidate, t.eval_members, t.random_state)
            if (
                t.itemknn == "on"
                or t.family in ("itemknn", "blend")
                or (t.itemknn == "auto" and shape[0] < t.itemknn_auto_members)
            ):
                with steps.step("item-item and blend candidates"):
                    metrics |= _other_candidates(prepared, data_split, candidate, params, t, positive)
            family = gate.choose_family(metrics, t.family, t.family_margin)
            log.info("family=%s %s", family.family, family.reason)
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
            with steps.step("gate against the champion"):
                champion_score, method, champion_version = _champion_score(
                    client, settings, prepared, data_split, steps, spark
                )
                decision = gate.decide(
                    metrics.get(gate.family_metric(family.family), 0.0),
                    champion_score,
                    baseline=metrics.get(gate.BASELINE_METRIC),
                    tolerance=t.gate_tolerance,
                    force=options.force,
                    method=method,
                    champion_version=champion_version,
                )
            log.info("gate promote=%s %s", decision.promote, decision.reason)
            window = data_split.window
            candidate_losses, candidate_seconds = list(candidate.fit.losses), candidate.fit.seconds
            item_totals = np.asarray(candidate.matrix.sum(axis=0)).ravel()

            if options.refit:
                # the split and the candidate are done with: free them before the second fit
                del candidate, data_split
                served_events, served_as_of = prepared.events, prepared.cutoff
                with steps.step("refit on all data up to the cutoff", total=params.iterations) as adv:
                    final = train_factors(
                        prepared,
                        prepared.events,
                        prepared.cutoff,
                        params,
                        num_threads=t.num_threads,
                        on_iteration=lambda _i, _loss: adv(1),
                        spark=spark,
                    )
                if spark is not None:
                    spark.stop()  # every fit is done: the JVM's memory goes back before FAISS
            else:
                final = candidate
                # The bundle is the model as of the split: it must not know the holdout's purchases
                # either (else "exclude purchased" hides exactly the items the holdout looks for),
                # nor its events through segments and popular lists (cold start would be served
                # what the holdout bought), so those tables are computed as of the holdout start.
                served_events, served_as_of = data_split.train, data_split.start
                del data_split
            with steps.step("segments and popularity tables"):
                seg_table, member_segment = segments.member_segments(
                    prepared, t, events=served_events, as_of=served_as_of
                )
                popular = segments.popularity_tables(
                    prepared,
                    member_segment,
                    t,
                    t.popular_window_days,
                    events=served_events,
                    as_of=served_as_of,
                )
            with steps.step("FAISS indexes"):
                indexes, index_info = ann.indexes_for(
                    final.item_factors, prepared.item_kind, final.member_factors, t
                )
            served_purchases = purchased_matrix(served_events, shape)
            # the bundle's intervals and last purchase times know exactly the bundle's purchases
            served_learned = replenish.learn(served_events, prepared.item_category, prepared.categories, t)
            served_last = replenish.last_purchase(served_events, shape)
            segment_counts = np.bincount(member_segment, minlength=len(LIFECYCLE_STAGES))
            counts = dict(prepared.counts)
            counts |= {f"segment.{s}": int(n) for s, n in zip(LIFECYCLE_STAGES, segment_counts, strict=True)}
            counts["fresh_content_filled"] = final.fresh_content_filled
            counts["members_with_factors"] = int((np.abs(final.member_factors).sum(axis=1) > 0).sum())

            neighbours = None
            if family.family != "als":
                from training import itemknn

                with steps.step("item-item neighbours for serving"):
                    neighbours = itemknn.table(itemknn.fit(final.matrix, t.itemknn_neighbours, t.num_threads))
            with steps.step("write the bundle"):
                contents = assemble.assemble(
                    prepared,
                    bundle_id=bundle_id,
                    params=params,
                    member_factors=final.member_factors,
                    item_factors=final.item_factors,
                    history=final.matrix,
                    purchased=served_purchases,
                    member_segment=member_segment,
                    segments=seg_table,
                    popular=popular,
                    indexes=indexes,
                    index_info=index_info,
                    metrics=metrics,
                    counts=counts,
                    replenish=(served_learned, served_last),
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
                        # the time the catalog was read as of: a bundle swap retires the live
                        # catalog changes older than it and keeps the newer ones
                        "catalog_as_of": catalog_as_of,
                        "family": gate.family_spec(family.family, metrics, neighbours),
                    },
                )
                if neighbours is not None:
                    contents.item_neighbour_item, contents.item_neighbour_score = neighbours
                bundle_dir = options.bundle_out or tmp_root / "bundle"
                assemble.write(bundle_dir, contents)
            if zones is not None:
                with steps.step("member profiles"):
                    profiles.write(
                        bundle_dir, prepared, t, zones, member_segment, settings, served_events, served_as_of
                    )
            lists_info = None
            if t.member_lists:  # a step of its own only when there is one
                with steps.step("member lists"):
                    lists_info = member_lists.for_settings(bundle_dir, t, settings.serving)

            with steps.step("log to MLflow and register"):
                ann_metrics = {
                    f"ann.{kind}.recall_at_{info['k']}": info["recall_at_k"]
                    for kind, info in index_info.items()
                    if isinstance(info, dict) and np.isfinite(info.get("recall_at_k", np.nan))
                }
                ann_metrics |= {
                    f"ann.{kind}.{param}": info[param]
                    for kind, info in index_info.items()
                    for param in ("ef_search", "nprobe", "nlist")
                    if isinstance(info, dict) and param in info
                }
                mlflow.log_metrics(
                    {k: v for k, v in metrics.items() if np.isfinite(v)}
                    | {f"count.{k}": float(v) for k, v in counts.items()}
                    | ann_metrics
                    | ({"member_lists.stored": float(lists_info["stored"])} if lists_info else {})
                    | {
                        "gate.candidate_ndcg_at_10": decision.candidate,
                        "gate.promoted": float(decision.promote),
                        "fit_seconds.candidate": candidate_seconds,
                        "fit_seconds.final": final.fit.seconds,
                    }
                    | (
                        {"gate.champion_ndcg_at_10": decision.champion}
                        if decision.champion is not None
                        else {}
                    )
                )
                for i, loss in enumerate(candidate_losses):
                    mlflow.log_metric("train_loss", loss, step=i + 1)
                mlflow.log_dict(decision.as_dict(), "gate.json")
                mlflow.log_dict(family.as_dict(), "family.json")
                mlflow.set_tag("family", family.family)
                mlflow.log_dict({"index": index_info, "holdout": window}, "summary.json")
                mlflow.log_dict({"categories": learned.categories}, "replenish/categories.json")
                mlflow.set_tag("gate.decision", decision.reason)
                mlflow.set_tag("gate.promote", str(decision.promote).lower())
                _log_figures(prepared.item_kind, item_totals, candidate_losses, metrics)
                mlflow.log_artifacts(str(bundle_dir), artifact_path=tracking.BUNDLE_ARTIFACT_PATH)
                source = f"{active.info.artifact_uri.rstrip('/')}/{tracking.BUNDLE_ARTIFACT_PATH}"
                version = None
                if options.register:
                    version = tracking.register(
                        client,
                        settings.mlflow,
                        run_id=run_id,
                        source=source,
                        bundle_id=bundle_id,
                        tags={
                            "gate.decision": decision.reason,
                            "gate.promote": str(decision.promote).lower(),
                            "gate.forced": str(decision.forced).lower(),
                            "data_fingerprint": prepared.fingerprint,
                        },
                        promote=decision.promote,
                    )
                    mlflow.set_tag("model_version", version)
                    if decision.promote:
                        # Promotions are part of the tamper-evident audit trail (docs/security.md).
                        AuditLog(settings.security.audit_log).append(
                            "model_promotion",
                            model=settings.mlflow.model_name,
                            version=version,
                            alias=settings.mlflow.champion_alias,
                            bundle_id=bundle_id,
                            forced=decision.forced,
                            gate=decision.reason,
                        )
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
