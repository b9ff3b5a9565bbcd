"""Stage 4 of a call, filter and rank: the rows no list may hold, the vectorised filters over the
candidates (widening the search when they remove too many), the live catalog's new items scored
exactly beside the ANN's, then MMR for diversity. Cold-start members get the popular lists of
their segment and channel, filtered the same way.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from recsvc.catalog.view import CatalogView
from recsvc.engine.candidates import Searched, candidate_sizes, search
from recsvc.engine.diversity import mmr_by_rows
from recsvc.engine.empty_arrays import NO_ROWS, NO_WEIGHTS
from recsvc.engine.filters import FilterSpec
from recsvc.engine.itemknn_source import search_floor
from recsvc.settings import ServingSettings


def excluded_rows(
    view: CatalogView, filters: FilterSpec, member_rows: np.ndarray, member_sorted: bool = False
) -> np.ndarray:
    """Rows no list may hold, ascending and unique: ``member_rows`` (the member's own, as
    ``MemberState.excluded`` chose them for the filters) and the call's ``exclude_item_ids``.
    ``member_sorted``: ``member_rows`` already are ascending and unique."""
    if not filters.exclude_item_ids and member_sorted:
        return member_rows
    parts = []
    if filters.exclude_item_ids:
        r = view.rows(sorted(filters.exclude_item_ids))
        parts.append(r[r >= 0])
    if member_rows.shape[0]:
        parts.append(member_rows)
    if not parts:
        return NO_ROWS
    return np.unique(np.concatenate(parts).astype(np.int64))


def rank(
    settings: ServingSettings,
    view: CatalogView,
    vector: np.ndarray,
    kind: int,
    k: int,
    filters: FilterSpec,
    excluded: np.ndarray,
    drop_row: int | None = None,
    relevance: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None,
    first: Searched | None = None,
    new_items: bool = True,
    spare: int = 0,
    trend: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Top-k rows after filters and MMR; widens the candidate set when filters remove too many.
    ``first``: the result of a search already made with ``vector`` (rows, scores, n). New items
    of the live catalog are scored exactly and merged with the ANN's (``new_items`` False: ``first``
    already holds them). ``spare``: MMR goes on for that many picks after the k, from the same
    pool (the first k are the list of k; stored lists keep the rest, candidates.py). ``trend``:
    the bundle's trend prior, if it has one, mixes into the ALS scores with its most trending
    items beside the ANN's (False: the scores are not ALS's, or ``first`` has it already)."""
    model = view.model
    prior = model.trend if trend else None
    total = len(model.kind_rows[kind])
    pool_size, n = candidate_sizes(settings, k, excluded.shape[0], drop_row is not None)
    if first is not None:
        rows, scores, n = first
    else:
        rows, scores = search(model, vector, kind, n)
    new_rows, new_scores = view.search_new(vector, kind) if new_items else (NO_ROWS, NO_WEIGHTS)
    while True:
        bound = -np.inf
        if prior is not None:  # before the new items join: the search's own lowest score
            floor = search_floor(scores, n, n >= total)
            depth = prior.depth(n)
            extra, extra_als = prior.extra_als(kind, rows, depth, vector, model.item_factors)
        if new_rows.shape[0]:
            rows, scores = merged(rows, scores, new_rows, new_scores)
        if prior is not None:
            rows, scores, bound = prior.rank_als(
                rows, scores, extra_als, extra, float(np.linalg.norm(vector)), kind, floor, depth
            )
        keep = filters.mask(view, rows, excluded)
        if drop_row is not None:
            keep &= rows != drop_row
        if n >= total or (
            int(np.count_nonzero(keep)) >= pool_size
            and (prior is None or prior.exact(scores, keep, bound, pool_size))
        ):
            break
        n *= 4
        rows, scores = search(model, vector, kind, n)
    rows, scores = rows[keep][:pool_size], scores[keep][:pool_size]
    if relevance is not None:
        scores = relevance(rows, scores)
        order = np.argsort(-scores, kind="stable")
        rows, scores = rows[order], scores[order]
    if rows.shape[0] and int(rows.max()) >= view.n:
        # New items' vectors are not in the bundle's factors: MMR over a small gathered copy.
        local = np.arange(rows.shape[0], dtype=np.int64)
        picks = mmr_by_rows(
            scores,
            local,
            view.factors(rows),
            view.norms(rows).astype(np.float32),
            k + spare,
            filters.diversity,
            read_only(np.ascontiguousarray(view.item_category[rows], dtype=np.int32)),
            settings.max_per_category,
        )
    else:
        picks = mmr_by_rows(
            scores,
            rows,
            model.item_factors,
            model.item_norms,
            k + spare,
            filters.diversity,
            view.item_category,
            settings.max_per_category,
        )
    return rows[picks], scores[picks]


def popular(
    view: CatalogView,
    segment: str,
    channel: str,
    kind: int,
    k: int,
    filters: FilterSpec,
    excluded: np.ndarray,
) -> tuple[list[int], list[float]]:
    """Up to ``k`` rows of the popular lists (segment and channel first, then wider), as the
    filters and the live catalog leave them, with their scores; when the filters leave fewer
    than ``k``, the rest of the kind's items (``ServedModel.popular_tail``) with score 0."""
    rows: list[int] = []
    scores: list[float] = []
    taken: set[int] = set()
    for plist in view.model.popular_for(segment, channel or "all", kind):
        keep = filters.mask(view, plist.rows, excluded)
        for r, sc in zip(plist.rows[keep].tolist(), plist.scores[keep].tolist(), strict=True):
            if r in taken:
                continue
            taken.add(r)
            rows.append(r)
            scores.append(sc)
            if len(rows) >= k:
                return rows, scores
    tail = view.model.popular_tail[kind]
    start, chunk = 0, 4 * k
    while len(rows) < k and start < tail.shape[0]:
        part = tail[start : start + chunk]
        for r in part[filters.mask(view, part, excluded)].tolist():
            if r not in taken:
                taken.add(r)
                rows.append(r)
                scores.append(0.0)
                if len(rows) >= k:
                    break
        start, chunk = start + chunk, chunk * 4
    return rows, scores


def merged(
    rows: np.ndarray, scores: np.ndarray, new_rows: np.ndarray, new_scores: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """ANN results and the exactly scored new items as one list, best first."""
    rows = np.concatenate([rows.astype(np.int64), new_rows])
    scores = np.concatenate([scores.astype(np.float32), new_scores.astype(np.float32)])
    order = np.argsort(-scores, kind="stable")
    return rows[order], scores[order]


def read_only(a: np.ndarray) -> np.ndarray:
    a.flags.writeable = False  # the compiled kernels' types include it: as the bundle's arrays
    return a
