"""Stage "filter and rank" for bundles whose family is item-item or the blend
(``ServedModel.neighbours``): the member's history and recent events, cut to the bundle's
``history_items`` strongest as training cut them, scored through the neighbour table
(recsvc/engine/itemknn_source.py: only the items that score there, beside the ALS search's best),
blended with the ALS vector's scores as training evaluated it, then the same filters and MMR as
ALS (``ranking.rank``); reasons name the history item that added most to each pick's item-item
score ("because you bought X"), found for the picks once the list is chosen, else the ALS reason."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from recsvc.catalog.view import CatalogView
from recsvc.engine import explain, itemknn_source, ranking
from recsvc.engine.candidates import Searched, candidate_sizes
from recsvc.engine.filters import FilterSpec
from recsvc.engine.member_state import MemberState
from recsvc.settings import ServingSettings


def rank(
    settings: ServingSettings,
    view: CatalogView,
    state: MemberState,
    kind: int,
    k: int,
    filters: FilterSpec,
    excluded: np.ndarray,
    clock: Callable[[], float],
    first: Searched | None = None,
    spare: int = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(picks, scores, reason rows) of the member's list under the bundle's family. ``first``:
    the ALS search already made with ``state.vector`` (the candidate stage's, overlapping the
    Redis read), else it is made here."""
    model = view.model
    neighbours = model.neighbours
    assert neighbours is not None and state.vector is not None
    decay = itemknn_source.decay_to(model, clock()) if state.ev_rows.shape[0] else 1.0
    rows, weights = itemknn_source.history_with_events(
        state.hist_rows, state.hist_w, state.ev_rows, state.ev_w, decay
    )
    rows, weights = itemknn_source.strongest(rows, weights, neighbours.spec.history_items)
    pool_size, n = candidate_sizes(settings, k, excluded.shape[0])
    ranked, ranked_scores = itemknn_source.candidates(
        view, neighbours, state.vector, rows, weights, kind, filters, excluded, n, pool_size, first
    )
    first = (ranked, ranked_scores, len(model.kind_rows[kind]))
    # new_items False: ``first`` already holds the live catalog's new items, on the family's scale
    picks, scores = ranking.rank(
        settings,
        view,
        state.vector,
        kind,
        k,
        filters,
        excluded,
        first=first,
        new_items=False,
        spare=spare,
        trend=False,
    )
    because = itemknn_source.reason_rows(neighbours, rows, weights, picks)
    missing = because < 0
    if missing.any():
        because[missing] = explain.explain(view, picks[missing], state)
    return picks, scores, because
