"""The end-of-run summary: rich tables built from a :class:`training.pipeline.TrainingReport`.

Reads: the report. Writes: nothing (returns tables for the CLI to print).
"""

from __future__ import annotations

import math
from typing import Any

from rich.table import Table


def summary_tables(report: Any) -> list[Table]:
    m = report.metrics
    metrics = Table(title="Holdout metrics: ALS vs popularity baseline")
    metrics.add_column("kind")
    metrics.add_column("metric")
    for k in (10, 20):
        metrics.add_column(f"ALS @{k}", justify="right")
        metrics.add_column(f"popular @{k}", justify="right")
    for kind in ("all", "product", "content"):
        if f"{kind}.ndcg_at_10" not in m:
            continue
        for i, name in enumerate(("ndcg", "precision", "recall", "map", "hit_rate", "coverage")):
            cells = []
            for k in (10, 20):
                cells.append(f"{m[f'{kind}.{name}_at_{k}']:.4f}")
                cells.append(f"{m.get(f'baseline.{kind}.{name}_at_{k}', float('nan')):.4f}")
            label = f"{kind} ({int(m.get(f'{kind}.members', 0))} members)" if i == 0 else ""
            metrics.add_row(label, name, *cells, end_section=name == "coverage")

    tables = [metrics]
    if "itemknn.all.ndcg_at_10" in m or "recent.all.ndcg_at_10" in m:
        cand = Table(title="Candidates on the holdout (NDCG@10 / recall@20)")
        cand.add_column("model")
        kinds = [k for k in ("all", "product", "content") if f"{k}.ndcg_at_10" in m]
        for kind in kinds:
            cand.add_column(kind, justify="right")
        w = m.get("blend.als_weight", float("nan"))
        trend_weight = report.family.trend_weight if report.family else 0.0
        serves = report.family.family if report.family else "als"
        rows: list[tuple[str, str, str | None]] = [
            ("popularity", "baseline.", None),
            (f"popularity of the last {m.get('trend.days', 0):g} days", "recent.", None),
            ("ALS", "", "als"),
        ]
        if "itemknn.all.ndcg_at_10" in m:
            rows += [
                ("item-item BM25", "itemknn.", "itemknn"),
                (f"blend, ALS weight {w:g}", "blend.", "blend"),
            ]
        if "trend.all.ndcg_at_10" in m:
            name = report.family.family if report.family else "als"
            rows.append((f"{name} + trend prior {m.get('trend.weight', 0):g}", "trend.", "trend"))
        if trend_weight:
            serves = "trend"
        for label, prefix, family in rows:
            if f"{prefix}all.ndcg_at_10" not in m:
                continue
            cand.add_row(
                f"{label} (serves)" if family == serves else label,
                *(
                    f"{m.get(f'{prefix}{k}.ndcg_at_10', float('nan')):.4f} / "
                    f"{m.get(f'{prefix}{k}.recall_at_20', float('nan')):.4f}"
                    for k in kinds
                ),
            )
        tables.append(cand)
    rk = [key for key in m if key.startswith("replenish.on.repeat_recall_at_")]
    if rk:
        k = rk[0].rsplit("_", 1)[-1]
        rep = Table(title=f"Replenishment on the holdout (product lists of {k})")
        rep.add_column("")
        rep.add_column("without", justify="right")
        rep.add_column("with", justify="right")
        rep.add_row(
            f"recall of repeat purchases ({int(m.get('replenish.repeat_members', 0))} members)",
            f"{m.get(f'replenish.off.repeat_recall_at_{k}', float('nan')):.4f}",
            f"{m[rk[0]]:.4f}",
        )
        rep.add_row(
            "NDCG@10 of new products",
            f"{m.get('replenish.off.ndcg_at_10', float('nan')):.4f}",
            f"{m.get('replenish.on.ndcg_at_10', float('nan')):.4f}",
        )
        tables.append(rep)

    run = Table(title="Training run", show_header=False)
    run.add_column("what")
    run.add_column("value")
    d = report.decision
    run.add_row("bundle", report.bundle_id)
    run.add_row("bundle folder", str(report.bundle_dir) if report.bundle_dir else "(MLflow only)")
    run.add_row("MLflow run", str(report.run_id))
    run.add_row("model version", str(report.model_version) if report.model_version else "(not registered)")
    if report.family is not None:
        run.add_row("serves", report.family.reason)
    verdict = "PROMOTED" if d.promote else "NOT PROMOTED"
    if d.promote and not report.model_version:
        verdict = "WOULD PROMOTE (not registered)"  # --no-register: the gate passed, nothing moved
    run.add_row("gate", f"{verdict}: {d.reason}")
    p = report.params
    run.add_row(
        "params",
        f"factors={p.factors} regularization={p.regularization:.4g} alpha={p.alpha:.4g} "
        f"iterations={p.iterations} half_life_days={p.half_life_days:g} "
        f"confidence_scale={p.confidence_scale} confidence_weighting={p.confidence_weighting}",
    )
    c = report.counts
    run.add_row(
        "data",
        f"events={c.get('events', 0)} members={c.get('members', 0)} products={c.get('products', 0)} "
        f"content={c.get('content', 0)} quarantined_rows={c.get('quarantined_rows', 0)}",
    )
    for kind in ("product", "content"):
        info = report.index_info.get(kind)
        if isinstance(info, dict):
            run.add_row(
                f"index {kind}",
                f"{info['type']} size={info['size']} recall@{info['k']}={info['recall_at_k']:.3f}"
                + (f" efSearch={info['ef_search']}" if "ef_search" in info else "")
                + (f" nlist={info['nlist']} nprobe={info['nprobe']}" if "nprobe" in info else ""),
            )
    if "profiles.auc_active" in m:
        run.add_row(
            "member profiles",
            (
                f"holdout: predicted/actual purchases={m['profiles.calibration_ratio']:.2f} "
                f"AUC={m['profiles.auc_active']:.3f} "
                if math.isfinite(m["profiles.calibration_ratio"])
                else "holdout: no purchases to judge the predictions by "
            )
            + "buy rate likely_active="
            f"{_share(m.get('profiles.holdout_buy_rate.likely_active'))} "
            f"likely_lost={_share(m.get('profiles.holdout_buy_rate.likely_lost'))}",
        )
    run.add_row("time", " ".join(f"{k}={v:.1f}s" for k, v in report.timings.items()))
    return [*tables, run]


def _share(value: float | None) -> str:
    """A share as a percentage; "n/a" when there was nothing to measure (no such members)."""
    return "n/a" if value is None or value != value else f"{value:.1%}"
