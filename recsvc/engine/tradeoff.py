"""Measuring the diversity trade-off: NDCG@k against intra-list diversity for several MMR
settings, on held-out interactions. Used to choose ``serving.default_diversity`` (the numbers go
to docs/benchmarks.md); reads a served model and a holdout, writes nothing."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from recsvc.bundle import KIND_PRODUCT
from recsvc.engine.diversity import intra_list_diversity
from recsvc.engine.filters import FilterSpec
from recsvc.engine.recommender import RecommendationEngine
from recsvc.engine.served_model import ServedModel


@dataclass(frozen=True)
class TradeoffPoint:
    diversity: float
    ndcg: float
    intra_list_diversity: float
    members: int


def ndcg_at_k(recommended: Sequence[str], relevant: set[str], k: int) -> float:
    """Binary-relevance NDCG@k."""
    gains = [1.0 / np.log2(i + 2) for i, item in enumerate(recommended[:k]) if item in relevant]
    ideal = sum(1.0 / np.log2(i + 2) for i in range(min(k, len(relevant))))
    return float(sum(gains) / ideal) if ideal > 0 else 0.0


def diversity_tradeoff(
    engine: RecommendationEngine,
    model: ServedModel,
    holdout: Mapping[str, set[str]],
    diversities: Sequence[float] = (0.0, 0.1, 0.2, 0.3, 0.5, 0.7),
    k: int = 10,
    kind: int = KIND_PRODUCT,
) -> list[TradeoffPoint]:
    """Mean NDCG@k and intra-list diversity over the holdout's members, per diversity value.

    ``holdout`` maps member id -> items they interacted with after the model's training cutoff.
    Use an engine without a real-time store so only the bundle answers.
    """
    points = []
    for d in diversities:
        spec = FilterSpec(diversity=d, in_stock_only=False)
        ndcgs, ilds = [], []
        for member, relevant in holdout.items():
            items = engine.recommend(member, kind, k, "", spec).response.items
            ids = [it.item_id for it in items]
            ndcgs.append(ndcg_at_k(ids, relevant, k))
            rows = model.items.rows(ids) if ids else np.zeros(0, dtype=np.int64)
            ilds.append(intra_list_diversity(np.asarray(model.item_factors[rows[rows >= 0]])))
        points.append(
            TradeoffPoint(
                diversity=d,
                ndcg=float(np.mean(ndcgs)) if ndcgs else 0.0,
                intra_list_diversity=float(np.mean(ilds)) if ilds else 0.0,
                members=len(ndcgs),
            )
        )
    return points
