"""The item-item and blend families' scoring, one definition for training and serving.

Training evaluates the families with :func:`knn_scores_batch` and :func:`blend`
(training/itemknn.py); serving ranks a member's items with :func:`knn_scores` and the same
:func:`blend` (:func:`candidates`, called by the engine when the bundle's ``FamilySpec`` is not
ALS). Both read the same neighbour table: each item's ``neighbours`` best neighbour rows and
similarities (bundle ``item_neighbour_{item,score}.npy``).

A member's item-item score for item j is ``sum_h r_h * sim(h, j)`` over the member's history
items h, weighted by their confidence r_h (the bundle's history row, plus recent events weighted
as the engine weighs them for the ALS vector). Sums are taken in float64 and stored as float32 in
both places, so training and serving compute the same numbers whatever order they add in. The
blend divides each model's scores by the member's largest one over the requested kind's items
(ALS by its largest absolute value), so neither scale dominates.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import scipy.sparse as sp

from recsvc.bundle import FamilySpec, LoadedBundle

if TYPE_CHECKING:
    from recsvc.catalog.view import CatalogView
    from recsvc.engine.filters import FilterSpec

_TINY = 1e-9  # a member without any score of a model: its part is 0, not NaN
REASON_HISTORY_MAX = 100  # history items a reason may name (heaviest first), as for ALS reasons


@dataclass(frozen=True, eq=False)
class Neighbours:
    """The bundle's neighbour table and the family that uses it."""

    items: np.ndarray  # int32 [items, K], best first, -1 = none
    scores: np.ndarray  # float32 [items, K]
    spec: FamilySpec

    @classmethod
    def from_bundle(cls, bundle: LoadedBundle) -> Neighbours | None:
        spec = bundle.manifest.family
        if spec.family == "als":
            return None
        a = bundle.arrays
        return cls(a["item_neighbour_item"], a["item_neighbour_score"], spec)

    @property
    def als_weight(self) -> float:
        return 1.0 - self.spec.knn_weight


def neighbour_table(similarity: sp.csr_matrix) -> tuple[np.ndarray, np.ndarray]:
    """(items, scores) [rows, K] of a similarity matrix, K its fullest row, each row best first;
    :func:`similarity_matrix` gives the matrix back."""
    sim = sp.csr_matrix(similarity, dtype=np.float32)
    sim.eliminate_zeros()
    counts = np.diff(sim.indptr)
    width = max(int(counts.max()) if counts.size else 0, 1)
    items = np.full((sim.shape[0], width), -1, dtype=np.int32)
    scores = np.zeros((sim.shape[0], width), dtype=np.float32)
    row = np.repeat(np.arange(sim.shape[0]), counts)
    order = np.lexsort((-sim.data, row))  # by row, then similarity descending
    col = np.arange(sim.nnz) - np.repeat(sim.indptr[:-1], counts)
    items[row, col] = sim.indices[order]
    scores[row, col] = sim.data[order]
    return items, scores


def similarity_matrix(items: np.ndarray, scores: np.ndarray, n_items: int) -> sp.csr_matrix:
    """The [items x items] similarity matrix of a neighbour table."""
    valid = items >= 0
    rows = np.broadcast_to(np.arange(items.shape[0])[:, None], items.shape)[valid]
    return sp.csr_matrix(
        (scores[valid].astype(np.float32), (rows, items[valid])), shape=(items.shape[0], n_items)
    )


def knn_scores_batch(history: sp.csr_matrix, similarity: sp.csr_matrix) -> np.ndarray:
    """Item-item scores of several members at once (training): float32 [members, items]."""
    product = sp.csr_matrix(history, dtype=np.float64) @ sp.csr_matrix(similarity, dtype=np.float64)
    return np.asarray(product.todense(), dtype=np.float32)


def knn_scores(rows: np.ndarray, weights: np.ndarray, neighbours: Neighbours, n_items: int) -> np.ndarray:
    """Item-item scores of one member with history ``rows`` weighted ``weights`` (serving):
    float32 [n_items]. Rows outside the table (items new since the bundle) have no neighbours."""
    inside = (rows >= 0) & (rows < neighbours.items.shape[0])
    rows, weights = rows[inside], weights[inside]
    ids = np.asarray(neighbours.items[rows])
    contrib = np.asarray(neighbours.scores[rows], dtype=np.float64) * np.asarray(weights, np.float64)[:, None]
    valid = ids >= 0
    summed = np.bincount(ids[valid], weights=contrib[valid], minlength=n_items)
    return summed.astype(np.float32)


def blend(als: np.ndarray | None, knn: np.ndarray | None, als_weight: float) -> np.ndarray:
    """``als_weight * als / max|als| + (1 - als_weight) * knn / max(knn)`` along the last axis
    (one member's items, or [members, items]); a part whose weight is 0 may be None."""
    shape = (als if als is not None else knn).shape  # type: ignore[union-attr]
    out = np.zeros(shape, dtype=np.float32)
    if als_weight > 0:
        assert als is not None
        out += als_weight * als / np.maximum(np.abs(als).max(axis=-1, keepdims=True), _TINY)
    if als_weight < 1:
        assert knn is not None
        out += (1 - als_weight) * knn / np.maximum(knn.max(axis=-1, keepdims=True), _TINY)
    return out


def history_with_events(
    hist_rows: np.ndarray, hist_w: np.ndarray, ev_rows: np.ndarray, ev_w: np.ndarray, decay: float
) -> tuple[np.ndarray, np.ndarray]:
    """The member's trained history (decayed on to now by ``decay``, as the engine does for the
    ALS vector) and recent events, as one (rows, weights); sums are linear, so a row twice counts
    as its summed weight."""
    if not ev_rows.shape[0]:
        return hist_rows.astype(np.int64), hist_w.astype(np.float32)
    rows = np.concatenate([hist_rows.astype(np.int64), ev_rows.astype(np.int64)])
    weights = np.concatenate([hist_w.astype(np.float32) * np.float32(decay), ev_w.astype(np.float32)])
    return rows, weights


def candidates(
    view: CatalogView,
    neighbours: Neighbours,
    vector: np.ndarray,
    rows: np.ndarray,
    weights: np.ndarray,
    kind: int,
    filters: FilterSpec,
    excluded: np.ndarray,
    n: int,
    pool_size: int,
) -> tuple[np.ndarray, np.ndarray]:
    """The member's items of ``kind`` ranked by the family's score, best first, at least enough
    for ``pool_size`` to pass the filters (all when fewer do), with their scores. New items of
    the live catalog join with their ALS part (they have no neighbours yet).

    For item-item alone, the items without any neighbour score (all tie at 0) follow in ALS order
    with scores in [-1, 0]: a member with a short history still gets a full list, and training's
    ranking, for which they tie, is unchanged above them."""
    model = view.model
    kind_rows = model.kind_rows[kind]
    w = neighbours.als_weight
    knn = knn_scores(rows, weights, neighbours, view.n)[kind_rows]
    als = (np.asarray(model.item_factors) @ vector)[kind_rows]
    scores = blend(als if w > 0 else None, knn, w)
    new_rows, new_als = view.search_new(vector, kind)
    if new_rows.shape[0]:
        top = float(np.abs(als).max()) if als.shape[0] else 0.0
        new_scores = (w * new_als / max(top, _TINY)).astype(np.float32)
        kind_rows = np.concatenate([kind_rows.astype(np.int64), new_rows.astype(np.int64)])
        scores = np.concatenate([scores, new_scores])
        als = np.concatenate([als, new_als.astype(np.float32)])
        knn = np.concatenate([knn, np.zeros(new_rows.shape[0], dtype=np.float32)])
    if w == 0:
        fallback = knn <= 0
        scores = np.where(fallback, (blend(als, None, 1.0) - 1) / 2, scores).astype(np.float32)
    total = kind_rows.shape[0]
    while True:
        if n >= total:
            top_idx = np.argsort(-scores, kind="stable")
        else:
            part = np.argpartition(-scores, n - 1)[:n]
            top_idx = part[np.argsort(-scores[part], kind="stable")]
        picked = kind_rows[top_idx]
        if n >= total or int(np.count_nonzero(filters.mask(view, picked, excluded))) >= pool_size:
            return picked.astype(np.int64), scores[top_idx]
        n *= 4


def reason_rows(
    neighbours: Neighbours, picks: np.ndarray, rows: np.ndarray, weights: np.ndarray, fallback: np.ndarray
) -> np.ndarray:
    """For each pick, the history row (of the member's heaviest ``REASON_HISTORY_MAX``) that
    added most to its item-item score ("because you bought X"); ``fallback`` (the ALS reason)
    where none has the pick as a neighbour."""
    out = np.asarray(fallback, dtype=np.int64).copy()
    inside = (rows >= 0) & (rows < neighbours.items.shape[0])
    rows, weights = rows[inside].astype(np.int64), weights[inside]
    if not rows.shape[0] or not picks.shape[0]:
        return out
    if rows.shape[0] > REASON_HISTORY_MAX:  # the heaviest, as the ALS reasons consider
        top = np.argpartition(-weights, REASON_HISTORY_MAX - 1)[:REASON_HISTORY_MAX]
        rows, weights = rows[top], weights[top]
    ids = np.asarray(neighbours.items[rows]).ravel()
    contrib = (np.asarray(neighbours.scores[rows]) * weights[:, None]).ravel()
    source = np.repeat(rows, neighbours.items.shape[1])
    # each neighbour id's position among the picks (-1: not a pick), by one gather
    position = np.full(max(neighbours.items.shape[0], int(picks.max()) + 1), -1, dtype=np.int64)
    position[picks] = np.arange(picks.shape[0])
    pick_at = position[np.maximum(ids, 0)]
    hit = (pick_at >= 0) & (ids >= 0) & (contrib > 0)
    if not hit.any():
        return out
    pick_at, contrib, source = pick_at[hit], contrib[hit], source[hit]
    best = np.lexsort((-contrib, pick_at))  # per pick, the largest contribution first
    first = np.ones(best.shape[0], dtype=bool)
    first[1:] = pick_at[best][1:] != pick_at[best][:-1]
    out[pick_at[best][first]] = source[best][first]
    return out


def decay_to(model: Any, now: float) -> float:
    """The factor the engine decays trained history weights by from the bundle's data_as_of to
    ``now`` (recsvc/engine/recommender.py, recent events)."""
    if model.cutoff_ts is None:
        return 1.0
    age_days = max(0.0, now - model.cutoff_ts) / 86400.0
    return float(0.5 ** (age_days / model.half_life_days))
