"""Stage 5b of a product call, replenishment: the member's bought consumables that are due again
(the rule: recsvc/engine/replenish.py), as they pass the call's filters, best first. The render
stage places them after the first ``replenish_after`` picks.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from recsvc.bundle import KIND_PRODUCT
from recsvc.catalog.view import CatalogView
from recsvc.engine.filters import FilterSpec
from recsvc.engine.member_state import MemberState
from recsvc.engine.ranking import excluded_rows
from recsvc.settings import ServingSettings


@dataclass(slots=True)
class Due:
    """Bought consumables due again: rows, scores, days since bought."""

    rows: np.ndarray
    scores: np.ndarray
    days: np.ndarray


def due(
    settings: ServingSettings,
    view: CatalogView,
    state: MemberState,
    kind: int,
    filters: FilterSpec,
    clock: Callable[[], float],
) -> Due | None:
    """At most ``replenish_max_items`` due items; None when there are none or the call is not a
    product list that excludes purchases. Items bought since the bundle (Redis) are not due."""
    s = settings
    if not s.replenish or kind != KIND_PRODUCT or not filters.exclude_purchased or state.vector is None:
        return None
    if state.row is None:
        return None
    rows, days = view.model.due_purchases(state.row, clock(), s.replenish_early, s.replenish_late)
    if not rows.shape[0]:
        return None
    excluded = excluded_rows(view, filters, state.recent_bought)
    keep = filters.mask(view, rows, excluded) & (view.item_kind[rows] == KIND_PRODUCT)
    if not keep.any():
        return None
    rows, days = rows[keep], days[keep]
    scores = np.asarray(view.model.item_factors[rows], dtype=np.float32) @ state.vector
    order = np.argsort(-scores, kind="stable")[: s.replenish_max_items]
    return Due(rows[order], scores[order], days[order])
