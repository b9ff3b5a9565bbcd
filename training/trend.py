"""A trend prior over the family that serves: what sells now, mixed into each personal score.

On data whose tastes move (new releases, seasons, a product of the week) the items popular in the
last days before a holdout predict it better than any model fitted on all of the past: on
MovieLens 100K the last 14 days' popularity alone beats ALS pooled over eight holdout windows
(docs/training.md, "Trend prior"). On data without such movement it adds nothing, so it is a
choice the validation split makes and the holdout confirms, like the model families.

Reads: the training events, the event weights, the chosen family's scorer (training/itemknn.py).
Writes: the per-item trend vector (:func:`item_trend`; the bundle's ``item_trend.npy``) and
metrics ``trend.<kind>.<metric>_at_<k>``, ``trend.weight`` and ``trend.val.ndcg_at_10.t<t>``.

Score: ``(1 - t) * family + t * trend / max(trend)``, the family's score as it ranks already
(ALS divided by the member's largest, ``itemknn_source.als_scale``; item-item or the blend as
``itemknn_source.blend`` gives them), the trend's maximum over the requested kind's items;
``t`` from :data:`WEIGHTS` (0 = off) by validation NDCG@10. Serving adds the kind's most trending
items to the ANN candidates and ranks by the same score (recsvc/engine/trend_source.py).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from recsvc.bundle import KIND_NAMES
from recsvc.engine.trend_source import TREND_WEIGHTS
from training import gate
from training.confidence import weight_table
from training.prepare import DAY_S, EventArrays

WEIGHTS = TREND_WEIGHTS


def item_trend(
    events: EventArrays, event_weights: Mapping[str, float], end: int, days: int, n_items: int
) -> np.ndarray:
    """Each item's events in the ``days`` before ``end`` (exclusive), weighted by event type as
    ALS weighs them, without decay: float32 [n_items]."""
    recent = (events.ts >= end - days * DAY_S) & (events.ts < end)
    weights = weight_table(event_weights)[events.etype[recent]]
    return np.bincount(events.item[recent], weights=weights, minlength=n_items).astype(np.float32)


def choose(by_weight: dict[float, float]) -> float:
    """The weight with the best validation NDCG@10; a tie goes to the smaller weight (0: off)."""
    return max(by_weight, key=lambda t: (by_weight[t], -t))


def kinds_off(per_weight: Mapping[float, Mapping[str, float]]) -> frozenset[str]:
    """The kinds whose own validation NDCG@10 is best without the prior (``per_weight``: weight ->
    per-kind metrics): what sells now among articles need not move with what sells among products
    (on the planted-trend test the prior lifted products 0.15 -> 0.26 and cut content 0.78 ->
    0.46). Such a kind's trend is zeroed in the bundle, so it ranks by its family alone."""
    off = set()
    for kind in gate.SERVED_KINDS:
        key = f"{kind}.ndcg_at_10"
        by_weight = {w: m[key] for w, m in per_weight.items() if key in m}
        if by_weight and choose(by_weight) == 0.0:
            off.add(kind)
    return frozenset(off)


def with_kinds_off(
    per_weight: Mapping[float, Mapping[str, float]], weight: float, off: frozenset[str]
) -> float:
    """The member-weighted NDCG@10 over the kinds (gate.by_kind) at ``weight``, the kinds in
    ``off`` scored as without the prior (weight 0), as they will serve."""
    merged = dict(per_weight[weight])
    for kind in off:
        merged |= {k: v for k, v in per_weight[0.0].items() if k.startswith(f"{kind}.")}
    return gate.by_kind(merged) or 0.0


def off_in(metrics: Mapping[str, float]) -> frozenset[str]:
    """The kinds a run turned the prior off for (``trend.<kind>.off``: :func:`kinds_off`)."""
    return frozenset(k for k in gate.SERVED_KINDS if metrics.get(f"trend.{k}.off"))


def zero_kinds(trend: np.ndarray, item_kind: np.ndarray, off: frozenset[str]) -> np.ndarray:
    """``trend`` with the items of the kinds in ``off`` at 0 (serving then finds no trend there)."""
    if not off:
        return trend
    out = np.array(trend, dtype=np.float32, copy=True)
    for code, name in KIND_NAMES.items():
        if name in off:
            out[item_kind == code] = 0.0
    return out
