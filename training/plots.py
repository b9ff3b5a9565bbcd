"""Plots logged with each run (matplotlib, Agg backend: no display needed).

Reads: per-item interaction totals, the metrics dict from :mod:`training.evaluate`, the loss per
iteration from :mod:`training.fit`.
Writes: matplotlib figures; the orchestrator logs them with ``mlflow.log_figure``. No member ids
appear in any plot.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def long_tail(item_totals: np.ndarray, item_kind: np.ndarray) -> Any:
    """Interactions per item, items sorted by popularity, per kind, log scale."""
    from recsvc.bundle import KIND_NAMES

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    for code, name in KIND_NAMES.items():
        values = np.sort(item_totals[item_kind == code])[::-1]
        if values.size:
            ax.plot(np.arange(1, values.size + 1), np.maximum(values, 1e-3), label=f"{name} ({values.size})")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("item rank by popularity")
    ax.set_ylabel("training confidence (sum of r_ui)")
    ax.set_title("Long-tail popularity")
    ax.legend()
    fig.tight_layout()
    return fig


def metrics_vs_baseline(metrics: dict[str, float], k: int = 10) -> Any:
    plt = _pyplot()
    names = ("precision", "recall", "ndcg", "map", "hit_rate", "coverage")
    kinds = [kd for kd in ("all", "product", "content") if f"{kd}.ndcg_at_{k}" in metrics]
    fig, axes = plt.subplots(1, max(len(kinds), 1), figsize=(5 * max(len(kinds), 1), 4), squeeze=False)
    x = np.arange(len(names))
    for ax, kind in zip(axes[0], kinds, strict=False):
        model = [metrics.get(f"{kind}.{n}_at_{k}", 0.0) for n in names]
        base = [metrics.get(f"baseline.{kind}.{n}_at_{k}", 0.0) for n in names]
        ax.bar(x - 0.2, model, width=0.4, label="ALS")
        ax.bar(x + 0.2, base, width=0.4, label="popularity")
        ax.set_xticks(x, [f"{n}@{k}" for n in names], rotation=45, ha="right")
        ax.set_title(kind)
        ax.legend()
    fig.tight_layout()
    return fig


def loss_curve(losses: list[float]) -> Any:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(np.arange(1, len(losses) + 1), losses, marker="o")
    ax.set_xlabel("iteration")
    ax.set_ylabel("training loss")
    ax.set_title("ALS loss per iteration")
    fig.tight_layout()
    return fig
