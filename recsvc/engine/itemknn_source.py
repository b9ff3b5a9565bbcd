"""The item-item and blend families' scoring, one definition for training and serving.

Training evaluates the families with :func:`knn_scores_batch` and :func:`blend` over every item
(training/itemknn.py); serving ranks one member's items with :func:`candidates`, which computes
the same scores only where they can change the list, and the same :func:`blend`. Both read the
same neighbour table: each item's ``neighbours`` best neighbour rows and similarities (bundle
``item_neighbour_{item,score}.npy``).

A member's item-item score for item j is ``sum_h r_h * sim(h, j)`` over the member's history
items h, weighted by their confidence r_h (the bundle's history row, plus recent events weighted
as the engine weighs them for the ALS vector). Sums are taken in float64 and stored as float32 in
both places. The blend divides each model's scores by the member's largest one over the requested
kind's items (:func:`als_scale`, :func:`blend`), so neither scale dominates.

Serving's cost follows the member's history, not the catalog. Similarities and confidences are
never negative, so the item-item score is 0 outside C, the union of the history items' neighbour
lists (one scatter-add over them, :func:`gather`), and an item outside C scores
``w * als / scale``: the blend's best n therefore lie in C plus the ALS best n, which the ANN
search the ALS family makes finds. The ALS scale (the largest ALS score) is the best of that
search too, so serving ranks as training evaluated wherever the ANN finds the ALS top n, as for
the ALS family; with an exact search (small kinds, or filters that widen it to every item) the
lists are training's.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import scipy.sparse as sp
from numba import njit

from recsvc.bundle import FamilySpec, LoadedBundle
from recsvc.engine.empty_arrays import NO_ROWS

if TYPE_CHECKING:
    from recsvc.catalog.view import CatalogView
    from recsvc.engine.filters import FilterSpec

_TINY = 1e-9  # a member without any score of a model: its part is 0, not NaN


@dataclass(frozen=True, eq=False)
class Neighbours:
    """The bundle's neighbour table and the family that uses it."""

    items: np.ndarray  # int32 [items, K], best first, -1 = none (after a row's neighbours)
    scores: np.ndarray  # float32 [items, K]
    spec: FamilySpec
    item_kind: np.ndarray  # the bundle's item kinds: a list holds the requested kind only
    norm_max: dict[int, float]  # the largest item vector norm per kind (``als_scale``'s bound)
    # Per-thread accumulators of ``gather``, one row per item, allocated on a thread's first call.
    _scratch: threading.local = field(default_factory=threading.local, repr=False)

    @classmethod
    def from_bundle(cls, bundle: LoadedBundle) -> Neighbours | None:
        spec = bundle.manifest.family
        if spec.family == "als":
            return None
        a = bundle.arrays
        out = cls(
            a["item_neighbour_item"],
            a["item_neighbour_score"],
            spec,
            a["item_kind"],
            kind_norm_max(a["item_factors"], a["item_kind"]),
        )
        factors = a["item_factors"]
        for kind in out.norm_max:  # compile (or load) the kernels for these arrays: not in a request
            gather(out, factors, np.zeros(factors.shape[1]), NO_ROWS, np.zeros(0), kind)
        strongest(np.zeros(2, dtype=np.int64), np.zeros(2, dtype=np.float32), 1)
        reason_rows(out, NO_ROWS, np.zeros(0), NO_ROWS)
        return out

    @property
    def als_weight(self) -> float:
        return 1.0 - self.spec.knn_weight

    def scratch(self) -> np.ndarray:
        """This thread's float64 [items]: each item's item-item sum, NaN = untouched; ``gather``
        leaves it as it found it. Sums alone (8 bytes an item, 0.8 MB at 100k items) keep the
        scatter-add within a core's cache; reasons are found for the final picks only
        (:func:`reason_rows`)."""
        found: np.ndarray | None = getattr(self._scratch, "array", None)
        if found is None:
            found = np.full(self.items.shape[0], np.nan, np.float64)
            self._scratch.array = found
        return found


def kind_norm_max(item_factors: np.ndarray, item_kind: np.ndarray) -> dict[int, float]:
    """The largest item vector norm of each kind."""
    norms = np.linalg.norm(np.asarray(item_factors, dtype=np.float32), axis=1)
    kinds = np.asarray(item_kind)
    return {int(k): float(norms[kinds == k].max(initial=0.0)) for k in np.unique(kinds)}


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


def knn_scores_batch(
    history: sp.csr_matrix, similarity: sp.csr_matrix, history_items: int | None = None
) -> np.ndarray:
    """Item-item scores of several members at once (training): float32 [members, items], each
    member's history cut to its ``history_items`` strongest (:func:`strongest_matrix`)."""
    history = strongest_matrix(sp.csr_matrix(history, dtype=np.float64), history_items)
    product = history @ sp.csr_matrix(similarity, dtype=np.float64)
    return np.asarray(product.todense(), dtype=np.float32)


def strongest_matrix(history: sp.csr_matrix, history_items: int | None) -> sp.csr_matrix:
    """Each row's ``history_items`` entries of largest weight (ties: the lower item row), the
    rest dropped; None: every entry. Training's side of :func:`strongest`."""
    history = sp.csr_matrix(history)
    history.sum_duplicates()
    counts = np.diff(history.indptr)
    if history_items is None or not counts.size or int(counts.max()) <= history_items:
        return history
    member = np.repeat(np.arange(history.shape[0]), counts)
    order = np.lexsort((history.indices, -history.data, member))  # by member, strongest first
    rank = np.arange(history.nnz) - np.repeat(history.indptr[:-1], counts)
    keep = order[rank < history_items]
    kept = np.bincount(member[keep], minlength=history.shape[0])
    indptr = np.concatenate([[0], np.cumsum(kept)])
    keep.sort()  # row-major order of the kept entries
    return sp.csr_matrix((history.data[keep], history.indices[keep], indptr), shape=history.shape)


def strongest(
    rows: np.ndarray, weights: np.ndarray, history_items: int | None
) -> tuple[np.ndarray, np.ndarray]:
    """One member's history cut as :func:`strongest_matrix` cuts training's: its
    ``history_items`` rows of largest weight, a row listed twice counted once with its summed
    weight. Serving's cost per call then has a bound whatever the history's length."""
    if history_items is None or rows.shape[0] <= history_items:
        return rows, weights
    return _strongest(_own(rows, np.int64), _own(weights, np.float32), history_items)


@njit(cache=True, nogil=True)
def _strongest(
    rows: np.ndarray, weights: np.ndarray, cap: int
) -> tuple[np.ndarray, np.ndarray]:  # pragma: no cover - compiled
    """``strongest`` compiled: a call pays microseconds, not numpy's dozens of small calls."""
    by_row = np.argsort(rows, kind="mergesort")
    distinct = np.empty(rows.shape[0], dtype=np.int64)
    summed = np.empty(rows.shape[0], dtype=np.float64)
    m = 0
    for i in by_row:
        if m > 0 and distinct[m - 1] == rows[i]:
            summed[m - 1] += weights[i]
        else:
            distinct[m] = rows[i]
            summed[m] = weights[i]
            m += 1
    # stable: among equal weights the lower row (``distinct`` is ascending) comes first
    take = np.argsort(-summed[:m], kind="mergesort")[: min(cap, m)]
    return distinct[take], summed[take].astype(np.float32)


class Scored(NamedTuple):
    """One member's scored items (``gather``), float32 scores."""

    rows: np.ndarray  # item rows
    knn: np.ndarray  # item-item scores
    als: np.ndarray  # ALS scores, ``factors[row] @ vector``
    knn_max: float  # the largest of ``knn`` (0 when empty)
    als_max: float  # the largest of ``als`` (0 when empty or none is positive)


def gather(
    neighbours: Neighbours,
    factors: np.ndarray,
    vector: np.ndarray,
    rows: np.ndarray,
    weights: np.ndarray,
    kind: int,
    also: np.ndarray | None = None,
) -> Scored:
    """One member's scored items of ``kind``: those some history row has as a neighbour, then
    the rows of ``also`` not among them (the ALS search's best). ``rows`` outside the table
    (items new since the bundle) have no neighbours. Costs the history's neighbour entries and
    the scored items, whatever the catalog size."""
    out = _gather(
        neighbours.items,
        neighbours.scores,
        _own(rows, np.int64),
        _own(weights, np.float32),
        neighbours.item_kind,
        kind,
        _own(also if also is not None else NO_ROWS, np.int64),
        factors,
        _own(vector, np.float32),
        neighbours.scratch(),
    )
    return Scored(*out)


def reason_rows(
    neighbours: Neighbours, rows: np.ndarray, weights: np.ndarray, picks: np.ndarray
) -> np.ndarray:
    """For each of ``picks``, the history row (of ``rows``, weighted by ``weights``, as given to
    :func:`gather`) that added most to its item-item score; the first such row on a tie; -1 for
    a pick no history row adds to."""
    return _reason_rows(
        neighbours.items,
        neighbours.scores,
        _own(rows, np.int64),
        _own(weights, np.float32),
        _own(picks, np.int64),
    )


def _own(a: np.ndarray, dtype: type) -> np.ndarray:
    """``a`` as a writable C array of ``dtype`` (a copy only when it is not): the kernel is
    compiled once, for those types, when the model loads."""
    if a.dtype == dtype and a.flags.writeable and a.flags.c_contiguous:
        return a
    return np.array(a, dtype=dtype)


@njit(cache=True, nogil=True, fastmath={"reassoc", "contract"})
def _gather(
    items: np.ndarray,
    scores: np.ndarray,
    rows: np.ndarray,
    weights: np.ndarray,
    item_kind: np.ndarray,
    kind: int,
    also: np.ndarray,
    factors: np.ndarray,
    vector: np.ndarray,
    acc: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, float, float]:  # pragma: no cover - compiled
    """``gather`` over per-item sums (``acc[j]``, NaN = untouched), which it resets to NaN for
    the items it touched. Products are summed in float64, as training's sparse product."""
    table = items.shape[0]
    width = items.shape[1]
    cap = min(rows.shape[0] * width, table) + also.shape[0]
    out_rows = np.empty(cap, dtype=np.int64)
    m = 0
    for h in range(rows.shape[0]):
        r = rows[h]
        if r < 0 or r >= table:
            continue
        w = np.float64(weights[h])
        for c in range(width):
            j = items[r, c]
            if j < 0:  # a row's -1 padding follows its neighbours
                break
            if item_kind[j] != kind:
                continue
            v = np.float64(scores[r, c]) * w
            if np.isnan(acc[j]):
                out_rows[m] = j
                m += 1
                acc[j] = v
            else:
                acc[j] += v
    for i in range(also.shape[0]):
        j = also[i]
        if np.isnan(acc[j]):
            out_rows[m] = j
            m += 1
            acc[j] = 0.0
    out_knn = np.empty(m, dtype=np.float32)
    out_als = np.empty(m, dtype=np.float32)
    knn_max = np.float32(0.0)
    als_max = np.float32(0.0)
    f = vector.shape[0]
    for i in range(m):
        j = out_rows[i]
        knn = np.float32(acc[j])
        acc[j] = np.nan
        out_knn[i] = knn
        knn_max = max(knn_max, knn)
        dot = np.float32(0.0)
        for d in range(f):
            dot += factors[j, d] * vector[d]
        out_als[i] = dot
        als_max = max(als_max, dot)
    return out_rows[:m], out_knn, out_als, float(knn_max), float(als_max)


@njit(cache=True, nogil=True)
def _reason_rows(
    items: np.ndarray, scores: np.ndarray, rows: np.ndarray, weights: np.ndarray, picks: np.ndarray
) -> np.ndarray:  # pragma: no cover - compiled
    """``reason_rows``: one pass over the history's neighbour lists in ``_gather``'s order. A
    4,096-bit filter of the picks' rows (a list is tens of items) skips the entries of other
    items with one bit test; an entry that passes is looked up among the picks."""
    table = items.shape[0]
    width = items.shape[1]
    best = np.zeros(picks.shape[0], dtype=np.float64)
    source = np.full(picks.shape[0], -1, dtype=np.int64)
    bits = np.zeros(64, dtype=np.uint64)
    for p in range(picks.shape[0]):
        b = picks[p] & 4095
        bits[b >> 6] |= np.uint64(1) << np.uint64(b & 63)
    for h in range(rows.shape[0]):
        r = rows[h]
        if r < 0 or r >= table:
            continue
        w = np.float64(weights[h])
        for c in range(width):
            j = items[r, c]
            if j < 0:
                break
            b = j & 4095
            if (bits[b >> 6] >> np.uint64(b & 63)) & np.uint64(1) == 0:
                continue
            for p in range(picks.shape[0]):
                if picks[p] == j:
                    v = np.float64(scores[r, c]) * w
                    if v > best[p]:
                        best[p] = v
                        source[p] = r
    return source


def als_scale(top: Any, member_norm: Any, norm_max: float) -> Any:
    """What the blend divides a member's ALS scores by: their largest over the kind's items
    (``top``); for a member without a positive one (a vector facing away from every item) the
    Cauchy-Schwarz bound ``|u| max|v|``, which keeps the part within [-1, 1]. float32, one per
    member (arrays) or a scalar."""
    top = np.asarray(top, dtype=np.float32)
    bound = np.maximum(np.asarray(member_norm, dtype=np.float32) * np.float32(norm_max), np.float32(_TINY))
    return np.where(top > 0, top, bound).astype(np.float32)


def blend(
    als: np.ndarray | None, knn: np.ndarray | None, als_weight: float, scale: Any = None, knn_max: Any = None
) -> np.ndarray:
    """``als_weight / scale * als + (1 - als_weight) / max(knn) * knn`` along the last axis (one
    member's items with scalar ``scale`` and ``knn_max``, or [members, items] with one per
    member; :func:`als_scale`), in float32; a part whose weight is 0 may be None. ``knn_max``:
    ``knn``'s largest, when known."""
    out: np.ndarray | None = None
    if als_weight > 0:
        assert als is not None and scale is not None
        coef = np.float32(als_weight) / np.asarray(scale, dtype=np.float32)
        out = als * (coef[:, None] if coef.ndim else coef)
    if als_weight < 1:
        assert knn is not None
        if knn_max is None:
            knn_max = knn.max(axis=-1, initial=0.0)
        top = np.maximum(np.asarray(knn_max, dtype=np.float32), np.float32(_TINY))
        coef = np.float32(1 - als_weight) / top
        part = knn * (coef[:, None] if coef.ndim else coef)
        out = part if out is None else out + part
    assert out is not None
    return out.astype(np.float32, copy=False)


def mix(family: np.ndarray, trend_part: np.ndarray, weight: float) -> np.ndarray:
    """The trend prior (recsvc/engine/trend_source.py): ``(1 - weight) * family + weight *
    trend_part`` in float32, ``trend_part`` already divided by the kind's largest trend; a
    [items] trend broadcasts over [members, items] scores."""
    out = family * np.float32(1.0 - weight) + trend_part.astype(np.float32) * np.float32(weight)
    return out.astype(np.float32, copy=False)


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
    first: tuple[np.ndarray, np.ndarray, int] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The member's best ``n`` items of ``kind`` by the family's score, best first, widened
    (``n`` x 4) until ``pool_size`` of them pass the filters or every item is scored: (rows,
    scores); :func:`reason_rows` finds the final picks' reasons. Scored:
    the item-item candidates and the ALS search's best ``n`` (module docstring), and the live
    catalog's new items with their ALS part (they have no neighbours yet). ``first``: (rows,
    scores, n) of an ALS search already made with ``vector``: the first round uses it and its n.

    For item-item alone, the items without any neighbour score (all tie at 0) follow in ALS order
    with negative scores: a member with a short history still gets a full list, and training's
    ranking, for which they tie, is unchanged above them."""
    model = view.model
    w = neighbours.als_weight
    prior = model.trend
    new_rows, new_als = view.search_new(vector, kind)
    kind_total = len(model.kind_rows[kind])
    norm_max = neighbours.norm_max.get(kind, 0.0)
    while True:
        if first is not None:
            found, found_als, n = first
            first = None
        else:
            found, found_als = (model.exact_search if n >= kind_total else model.search)(vector, kind, n)
        covered = n >= kind_total  # the search scored every item of the kind
        als_floor = search_floor(found_als, n, covered)
        if prior is not None:  # the kind's most trending items are scored too
            depth = prior.depth(n)
            found = np.concatenate([found.astype(np.int64), prior.extra_rows(kind, found, depth)])
        scored, knn, als, knn_max, top = gather(
            neighbours, model.item_factors, vector, rows, weights, kind, found
        )
        # a float32's value: divides as training's float32 does
        scale = top if top > 0 else float(als_scale(top, np.linalg.norm(vector), norm_max))
        scores = blend(als if w > 0 else None, knn, w, scale, knn_max)
        if new_rows.shape[0]:  # no neighbours yet: their ALS part alone
            new_knn = np.zeros(new_rows.shape[0], dtype=np.float32)
            new_scores = blend(new_als.astype(np.float32), new_knn, w, scale, knn_max)
            scored = np.concatenate([scored, new_rows.astype(np.int64)])
            scores = np.concatenate([scores, new_scores])
            als = np.concatenate([als, new_als.astype(np.float32)])
            knn = np.concatenate([knn, new_knn])
        if w == 0 and prior is None:
            scores = np.where(knn <= 0, (als / scale - 1) / 2, scores).astype(np.float32)
        elif prior is not None:
            scores = mix(scores, prior.of_rows(scored), prior.weight)
        take = scored.shape[0] if covered else min(n, scored.shape[0])
        if prior is not None and w == 0:
            # item-item alone: equal scores (no neighbour score and the same trend) in ALS order,
            # training's ranking unchanged for every score that differs
            top_idx = np.lexsort((-als, -scores))[:take]
        elif take >= scored.shape[0]:
            top_idx = np.argsort(-scores, kind="stable")
        else:
            part = np.argpartition(-scores, take - 1)[:take]
            top_idx = part[np.argsort(-scores[part], kind="stable")]
        picked = scored[top_idx]
        keep = filters.mask(view, picked, excluded)
        enough = int(np.count_nonzero(keep)) >= pool_size
        if enough and prior is not None and not covered:
            # an unscored item: no neighbour score, ALS at most the search's lowest, trend beyond depth
            personal = w * als_floor / scale if w > 0 else 0.0
            enough = prior.exact(scores[top_idx], keep, prior.bound(personal, kind, depth), pool_size)
        if covered or enough:
            return picked, scores[top_idx]
        n *= 4


def search_floor(scores: np.ndarray, n: int, covered: bool) -> float:
    """The most an item the search did not return can score for ALS: its lowest score, or 0 when
    it returned fewer than ``n`` (items without a vector are not indexed and score 0); -inf when
    it scored every item."""
    if covered:
        return -np.inf
    lowest = float(scores.min()) if scores.shape[0] else 0.0
    return min(lowest, 0.0) if scores.shape[0] < n else lowest


def decay_to(model: Any, now: float) -> float:
    """The factor the engine decays trained history weights by from the bundle's data_as_of to
    ``now`` (recsvc/engine/recommender.py, recent events)."""
    if model.cutoff_ts is None:
        return 1.0
    age_days = max(0.0, now - model.cutoff_ts) / 86400.0
    return float(0.5 ** (age_days / model.half_life_days))
