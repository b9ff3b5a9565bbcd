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

from recsvc.engine.trend_source import TREND_WEIGHTS
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
