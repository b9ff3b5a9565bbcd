"""What one training run leaves behind: its MLflow parameters, metrics, plots, summaries and bundle
artifact, the registered model version, and an audit entry for a promotion.

Reads: the run's parameters, holdout metrics, counts, index info, gate decision and bundle folder.
Writes: into the active MLflow run (params, metrics, tags, figures, ``gate.json``,
``summary.json``, ``replenish/categories.json``, the bundle under artifact path ``bundle``), a
model version (:func:`training.tracking.register`) and, when the gate promotes, one
``model_promotion`` line in the audit log. Only counts reach MLflow outside the bundle: no member id.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from recsvc.security.audit import AuditLog
from recsvc.settings import Settings
from training import gate, plots, tracking
from training.fit import AlsParams, warm_refit_iterations


def log_params(params: AlsParams, settings: Settings, *, tune: bool, refit: bool, fingerprint: str) -> None:
    import mlflow

    t = settings.training
    flat: dict[str, Any] = {k: v for k, v in params.as_dict().items() if k != "event_weights"}
    flat |= {f"weight.{k}": v for k, v in params.event_weights.items()}
    flat |= {
        "holdout_days": t.holdout_days,
        "eval_members": t.eval_members,
        "tune": tune,
        "refit": refit,
        # iterations of a refit from the candidate's factors; 0: from scratch (training/stages.py)
        "refit_warm_iterations": warm_refit_iterations(t, params) if refit else 0,
        "data_fingerprint": fingerprint,
    }
    mlflow.log_params(flat)
    mlflow.set_tag("data_fingerprint", fingerprint)


@dataclass
class RunFigures:
    """What a run measured, as MLflow gets it (see :func:`run_metrics`)."""

    metrics: dict[str, float]
    counts: dict[str, int]
    index_info: dict[str, Any]
    decision: gate.GateDecision
    family: gate.FamilyChoice
    candidate_losses: list[float]
    candidate_seconds: float
    final_seconds: float
    stored_member_lists: int | None  # None: no member lists step


def ann_metrics(index_info: dict[str, Any]) -> dict[str, float]:
    """Each index's measured recall (when it was measured) and its search parameters."""
    out = {
        f"ann.{kind}.recall_at_{info['k']}": info["recall_at_k"]
        for kind, info in index_info.items()
        if isinstance(info, dict) and np.isfinite(info.get("recall_at_k", np.nan))
    }
    out |= {
        f"ann.{kind}.{param}": info[param]
        for kind, info in index_info.items()
        for param in ("ef_search", "nprobe", "nlist")
        if isinstance(info, dict) and param in info
    }
    return out


def run_metrics(f: RunFigures) -> dict[str, float]:
    """The run's metrics as one flat dict: holdout metrics (finite ones), ``count.*``, ``ann.*``,
    ``gate.*``, ``fit_seconds.*`` and ``member_lists.stored``."""
    out = {k: v for k, v in f.metrics.items() if np.isfinite(v)}
    out |= {f"count.{k}": float(v) for k, v in f.counts.items()}
    out |= ann_metrics(f.index_info)
    if f.stored_member_lists is not None:
        out["member_lists.stored"] = float(f.stored_member_lists)
    out |= {
        "gate.candidate_ndcg_at_10": f.decision.candidate,
        "gate.promoted": float(f.decision.promote),
        "fit_seconds.candidate": f.candidate_seconds,
        "fit_seconds.final": f.final_seconds,
    }
    if f.decision.champion is not None:
        out["gate.champion_ndcg_at_10"] = f.decision.champion
    return out


def log_figures(
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


def log_run(
    f: RunFigures,
    *,
    window: dict[str, Any],
    replenish_categories: Any,
    item_kind: np.ndarray,
    item_totals: np.ndarray,
    bundle_dir: Path,
) -> None:
    """Metrics, loss curve, summaries, gate tags, plots and the bundle artifact of the active run."""
    import mlflow

    mlflow.log_metrics(run_metrics(f))
    for i, loss in enumerate(f.candidate_losses):
        mlflow.log_metric("train_loss", loss, step=i + 1)
    mlflow.log_dict(f.decision.as_dict(), "gate.json")
    mlflow.log_dict(f.family.as_dict(), "family.json")
    mlflow.set_tag("family", f.family.family)
    mlflow.log_dict({"index": f.index_info, "holdout": window}, "summary.json")
    mlflow.log_dict({"categories": replenish_categories}, "replenish/categories.json")
    mlflow.set_tag("gate.decision", f.decision.reason)
    mlflow.set_tag("gate.promote", str(f.decision.promote).lower())
    log_figures(item_kind, item_totals, f.candidate_losses, f.metrics)
    mlflow.log_artifacts(str(bundle_dir), artifact_path=tracking.BUNDLE_ARTIFACT_PATH)


def register_and_audit(
    client: Any,
    settings: Settings,
    *,
    run_id: str,
    artifact_uri: str,
    bundle_id: str,
    fingerprint: str,
    decision: gate.GateDecision,
) -> str:
    """Registers the run's bundle as a model version (the champion alias moves when the gate
    promotes) and writes a promotion to the audit log. Returns the version."""
    import mlflow

    version = tracking.register(
        client,
        settings.mlflow,
        run_id=run_id,
        source=f"{artifact_uri.rstrip('/')}/{tracking.BUNDLE_ARTIFACT_PATH}",
        bundle_id=bundle_id,
        tags={
            "gate.decision": decision.reason,
            "gate.promote": str(decision.promote).lower(),
            "gate.forced": str(decision.forced).lower(),
            "data_fingerprint": fingerprint,
        },
        promote=decision.promote,
        # the alias moves only if it still names the champion the gate measured (compare-and-set:
        # a concurrent training may have promoted another version meanwhile)
        expected_champion=decision.champion_version,
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
    return version
