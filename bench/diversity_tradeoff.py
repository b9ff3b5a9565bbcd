"""The diversity trade-off on a real holdout: NDCG@k against intra-list diversity per MMR setting.

Reads: a bundle trained WITHOUT the holdout period (``recsvc train --no-refit``, so the held-out
interactions are really unseen) and the data folder it was trained from (``events.parquet`` or
``events.csv``). The holdout is what ``training.split`` measures: positive events (event weight
> 0) in the last ``holdout_days`` before the newest event, of members the model knows, minus the
items those members already had in the bundle's history. Writes nothing; ``recsvc load bench
diversity`` puts the table in ``load/results/bench/<timestamp>/``.

Each setting runs the real engine (retrieval, filters, MMR) without a real-time store, with
``recsvc.engine.tradeoff.ndcg_at_k`` and ``recsvc.engine.diversity.intra_list_diversity``, plus one
measure a member sees directly: distinct categories among the top k. It does not call
``tradeoff.diversity_tradeoff``: that excludes only purchases, while training's evaluation
excludes every training-period item, which is what this bench mirrors.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from recsvc.bundle import KIND_PRODUCT
from recsvc.engine.diversity import intra_list_diversity
from recsvc.engine.filters import FilterSpec
from recsvc.engine.recommender import RecommendationEngine, SingleModel
from recsvc.engine.served_model import ServedModel
from recsvc.engine.tradeoff import ndcg_at_k
from recsvc.settings import Settings

DAY_S = 86_400


@dataclass(frozen=True)
class DiversityRow:
    diversity: float
    ndcg: float
    intra_list_diversity: float
    distinct_categories: float  # mean distinct categories in a top-k list
    members: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _item_ids(model: ServedModel, rows: Any) -> set[str]:
    """Item ids (str) of bundle rows; the id map stores ASCII bytes."""
    picked = model.items.array[np.asarray(rows, dtype=np.int64)]
    return {x.decode("utf-8") if isinstance(x, bytes) else str(x) for x in picked.tolist()}


def _read_events(data_dir: Path) -> Any:
    import pandas as pd

    parquet, csv = data_dir / "events.parquet", data_dir / "events.csv"
    cols = ["member_id", "item_id", "event_type", "ts"]
    if parquet.exists():
        df = pd.read_parquet(parquet, columns=cols)
    elif csv.exists():
        df = pd.read_csv(csv, usecols=cols)
    else:
        raise FileNotFoundError(f"no events.parquet or events.csv in {data_dir}")
    df["ts"] = pd.to_datetime(df["ts"], utc=True)
    return df


def product_holdout(
    model: ServedModel,
    data_dir: Path,
    holdout_days: int,
    event_weights: Mapping[str, float],
    max_members: int | None = None,
    seed: int = 0,
) -> dict[str, set[str]]:
    """member id -> products they interacted with (positively) in the holdout window and never
    before in the bundle's history; only members the bundle knows."""
    df = _read_events(data_dir)
    end = df["ts"].max()
    start = end - np.timedelta64(holdout_days * DAY_S, "s")
    positive = [t for t, w in event_weights.items() if w > 0]
    df = df[(df["ts"] >= start) & df["event_type"].isin(positive)]
    rows = model.items.rows(df["item_id"].astype(str).to_numpy())
    kinds = np.asarray(model.item_kind)
    keep = rows >= 0
    keep[keep] = kinds[rows[keep]] == KIND_PRODUCT
    df = df[keep]
    out: dict[str, set[str]] = {}
    for member, items in df.groupby("member_id", sort=True)["item_id"]:
        row = model.member_row(str(member))
        if row is None:
            continue
        seen_rows, _ = model.history(row)
        seen = _item_ids(model, seen_rows)
        fresh = {str(i) for i in items} - seen
        if fresh:
            out[str(member)] = fresh
    if max_members is not None and len(out) > max_members:
        rng = np.random.default_rng(seed)
        chosen = rng.choice(sorted(out), size=max_members, replace=False)
        out = {m: out[m] for m in chosen.tolist()}
    return out


def diversity_table(
    settings: Settings,
    bundle: Path,
    data_dir: Path,
    diversities: Sequence[float] = (0.0, 0.1, 0.3, 0.5, 0.8),
    k: int = 10,
    max_members: int | None = 5000,
) -> tuple[list[DiversityRow], dict[str, Any]]:
    """The table for docs/benchmarks.md, and what it was computed on."""
    model = ServedModel.load(
        bundle, version="bench", source_uri=str(bundle), hnsw_ef_search=settings.training.hnsw_ef_search
    )
    engine = RecommendationEngine(SingleModel(model, "bench"), None, settings.serving)
    weights = (
        model.event_weights if isinstance(model.event_weights, Mapping) else settings.training.event_weights
    )
    holdout = product_holdout(model, data_dir, settings.training.holdout_days, weights, max_members)
    rows = []
    for d in diversities:
        ndcgs, ilds, cats = [], [], []
        for member, relevant in holdout.items():
            # Rank what training's evaluation ranks: everything but the member's training-period
            # items (a superset of their purchases in a --no-refit bundle).
            row = model.member_row(member)
            seen_rows, _ = model.history(row) if row is not None else (np.zeros(0, np.int64), None)
            seen = frozenset(_item_ids(model, seen_rows))
            spec = FilterSpec(
                diversity=d, in_stock_only=False, exclude_purchased=False, exclude_item_ids=seen
            )
            ids = [it.item_id for it in engine.recommend(member, KIND_PRODUCT, k, "", spec).response.items]
            r = model.items.rows(ids) if ids else np.zeros(0, dtype=np.int64)
            r = r[r >= 0]
            ndcgs.append(ndcg_at_k(ids, relevant, k))
            ilds.append(intra_list_diversity(np.asarray(model.item_factors[r])))
            cats.append(len(np.unique(np.asarray(model.item_category)[r])))
        rows.append(
            DiversityRow(
                diversity=d,
                ndcg=float(np.mean(ndcgs)) if ndcgs else 0.0,
                intra_list_diversity=float(np.mean(ilds)) if ilds else 0.0,
                distinct_categories=float(np.mean(cats)) if cats else 0.0,
                members=len(ndcgs),
            )
        )
    context = {
        "bundle": str(bundle),
        "data": str(data_dir),
        "holdout_days": settings.training.holdout_days,
        "holdout_members": len(holdout),
        "k": k,
        "max_per_category": settings.serving.max_per_category,
        "default_diversity": settings.serving.default_diversity,
        "training_cutoff": model.cutoff_ts,
    }
    return rows, context


MARKDOWN_HEADER = (
    "| diversity | NDCG@k | NDCG vs 0 | intra-list diversity | distinct categories in top k | members |\n"
    "|---:|---:|---:|---:|---:|---:|"
)


def markdown(rows: list[DiversityRow]) -> str:
    base = rows[0].ndcg if rows and rows[0].diversity == 0 else None
    lines = [MARKDOWN_HEADER]
    for r in rows:
        rel = f"{r.ndcg / base:.3f}x" if base else "n/a"
        lines.append(
            f"| {r.diversity:.1f} | {r.ndcg:.4f} | {rel} | {r.intra_list_diversity:.3f} | "
            f"{r.distinct_categories:.2f} | {r.members} |"
        )
    return "\n".join(lines)
