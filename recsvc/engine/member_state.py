"""Stage 1 and 3 of a member call: who the member is for this call.

``trained_state`` reads the bundle's view of the member (row, trained history and purchases,
vector; none: cold start). ``add_recent`` then folds in their recent events from Redis (the
vector recomputed from trained history + events, recent purchases excluded like trained ones).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from recsvc.catalog.view import CatalogView
from recsvc.engine.empty_arrays import NO_ROWS, NO_WEIGHTS
from recsvc.engine.served_model import ServedModel
from recsvc.realtime import RecentActivity, event_weights_by_item, recalculate_member

if TYPE_CHECKING:
    from recsvc.engine.filters import FilterSpec

SOURCE_PERSONALIZED = "personalized"
SOURCE_REALTIME = "realtime"


@dataclass(slots=True)
class MemberState:
    """Who the member is for this call: the bundle's view (row, trained history and purchases,
    vector), then updated with their recent events (``ev_*``, more purchases, a recomputed vector).
    Built with every field given (no default factories: this is made once per call)."""

    row: int | None
    segment: str
    bought: np.ndarray  # rows no list may hold because the member bought them
    bought_sorted: bool  # ``bought`` is ascending and unique (a bundle's own purchase rows)
    vector: np.ndarray | None  # None: no personal vector (popular lists)
    source: str
    ev_rows: np.ndarray
    ev_w: np.ndarray
    answered: bool  # Redis answered the recent-events read
    recent_bought: np.ndarray  # bought since the bundle
    # The trained history (rows, weights), read from ``model`` on first use: a call served from
    # a stored list never needs it.
    history: tuple[np.ndarray, np.ndarray] | None
    model: ServedModel | None

    @property
    def hist_rows(self) -> np.ndarray:
        return self._trained_history()[0]

    @property
    def hist_w(self) -> np.ndarray:
        return self._trained_history()[1]

    def excluded(self, filters: FilterSpec) -> tuple[np.ndarray, bool]:
        """The member's rows no list may hold under ``filters``, and whether they are ascending
        and unique: with ``exclude_purchased`` what they bought; with ``exclude_seen`` the other
        items of their trained history and recent events (views, carts: with both, the defaults,
        every item training's evaluation leaves out)."""
        if not filters.exclude_seen:
            if filters.exclude_purchased:
                return self.bought, self.bought_sorted
            return NO_ROWS, True
        parts = [self.ev_rows.astype(np.int64)]
        if self.row is not None and self.model is not None:
            parts.append(self.hist_rows.astype(np.int64))
        if filters.exclude_purchased:
            parts.append(self.bought.astype(np.int64))
            rows = np.unique(np.concatenate(parts))
        else:  # seen, but what they bought may come back
            rows = np.setdiff1d(np.concatenate(parts), self.bought)
        return rows[rows >= 0], True

    def excluded_count(self, filters: FilterSpec) -> int:
        """At least as many rows as :meth:`excluded` holds, without merging them (the first
        search's size)."""
        if filters.exclude_seen:
            trained = self.hist_rows.shape[0] if self.row is not None and self.model is not None else 0
            return trained + self.bought.shape[0] + self.ev_rows.shape[0]
        return self.bought.shape[0] if filters.exclude_purchased else 0

    def _trained_history(self) -> tuple[np.ndarray, np.ndarray]:
        if self.history is None:
            assert self.model is not None and self.row is not None
            self.history = self.model.history(self.row)
        return self.history


_NO_HISTORY = (NO_ROWS, NO_WEIGHTS)


def trained_state(model: ServedModel, row: int | None) -> MemberState:
    """The member as the bundle knows them (row None: unknown, erased or cold)."""
    if row is None:
        return MemberState(
            None,
            model.segment_of(None),
            NO_ROWS,
            False,
            None,
            SOURCE_PERSONALIZED,
            NO_ROWS,
            NO_WEIGHTS,
            False,
            NO_ROWS,
            _NO_HISTORY,
            None,
        )
    vector = model.member_vector(row)
    return MemberState(
        row,
        model.segment_of(row),
        model.purchased_rows(row),
        model.purchased_sorted,
        vector if vector.any() else None,
        SOURCE_PERSONALIZED,
        NO_ROWS,
        NO_WEIGHTS,
        False,
        NO_ROWS,
        None,
        model,
    )


def add_recent(
    view: CatalogView, state: MemberState, activity: RecentActivity, clock: Callable[[], float]
) -> bool:
    """Recent events recompute the vector from trained history + events; recent purchases join
    the excluded rows. True when the vector changed (candidates found for the trained vector are
    then not this member's any more)."""
    model = view.model
    if activity.purchased:
        recent_bought = view.rows(sorted(activity.purchased))
        state.recent_bought = recent_bought[recent_bought >= 0].astype(np.int64)
        state.bought = np.concatenate([state.bought.astype(np.int64), state.recent_bought])
        state.bought_sorted = False
    if not activity.events:
        return False
    now = clock()
    ev_rows, ev_w = event_weights_by_item(
        activity.events, view.rows, model.event_weights, model.half_life_days, now
    )
    if not ev_rows.shape[0]:
        return False
    # Trained weights were decayed to the bundle's data_as_of; decay them on to now, as a
    # retrain now would, so recent events weigh what they should next to old history.
    age_days = max(0.0, now - model.cutoff_ts) / 86400.0 if model.cutoff_ts is not None else 0.0
    decay = np.float32(0.5 ** (age_days / model.half_life_days))
    rows_all = np.concatenate([state.hist_rows.astype(np.int64), ev_rows])
    w_all = np.concatenate([state.hist_w.astype(np.float32) * decay, ev_w])
    uniq, inv = np.unique(rows_all, return_inverse=True)
    w_sum = np.bincount(inv, weights=w_all).astype(np.float32)
    confidence = model.confidence(uniq, w_sum)
    if view.new_ids and int(uniq[-1]) >= view.n:  # a new item's vector counts too
        factors, uniq = view.factors(uniq), np.arange(uniq.shape[0])
    else:
        factors = model.item_factors
    vector = fold_in(model, factors, uniq, confidence)
    state.ev_rows, state.ev_w = ev_rows, ev_w
    state.vector = vector if vector.any() else None
    state.source = SOURCE_REALTIME
    return True


def fold_in(model: ServedModel, factors: np.ndarray, rows: np.ndarray, confidence: np.ndarray) -> np.ndarray:
    """A member's vector from their ``confidence`` values (``ServedModel.confidence``) on item
    ``rows`` (of ``factors``), as the bundle's training solved members: its alpha,
    regularization and the engine's own solve (``ServedModel.fold_in``)."""
    return recalculate_member(
        factors,
        model.yty,
        rows,
        confidence,
        model.alpha,
        model.regularization,
        model.fold_in,
    )
