"""Compiled loops of the per-call hot path (numba), each over the few hundred candidates of one
request: MMR selection, the "because you ..." history item, and the stock and exclusion filter.

Written as plain loops because, at this size, numpy spends more time entering its functions than
computing: MMR was a Python loop of ``k`` argmax/minimum calls on top of a candidate-by-candidate
similarity matrix, and each step now costs one pass over the candidates. Item vectors are read
straight from the bundle's memory-mapped factors by row, so no per-call copy is made.

``cache=True`` keeps the machine code beside this file (or in ``NUMBA_CACHE_DIR``), so a process
compiles once per machine and later ones load it; ``warm_up`` compiles at model load, never in a
request. The wrappers live in ``recsvc.engine.diversity`` and ``recsvc.engine.filters``; the tests
(tests/test_serving_kernels.py) check them against MMR written straight from its definition and
against numpy.
"""

from __future__ import annotations

import numpy as np
from numba import njit

# Reassociation lets the dot products use SIMD; no "finite math only": -inf marks picked items.
_FAST = {"reassoc", "contract"}


@njit(cache=True, nogil=True, fastmath=_FAST)
def mmr_rows(
    relevance: np.ndarray,
    rows: np.ndarray,
    factors: np.ndarray,
    norms: np.ndarray,
    k: int,
    diversity: float,
    categories: np.ndarray,
    max_per_category: int,
) -> np.ndarray:  # pragma: no cover - compiled; exercised through recsvc.engine.diversity
    """Positions (into ``rows``) of ``k`` MMR picks; see ``recsvc.engine.diversity.mmr``.

    ``factors[rows[i]] / norms[rows[i]]`` is candidate ``i``'s unit vector; ``categories`` is
    indexed by row too, and only read when ``max_per_category > 0``.
    """
    n = relevance.shape[0]
    k = min(k, n)
    picks = np.empty(k, dtype=np.int64)
    if k <= 0:
        return picks
    lo = relevance[0]
    hi = relevance[0]
    for i in range(n):
        lo = min(lo, relevance[i])
        hi = max(hi, relevance[i])
    span = hi - lo
    keep = np.float32(1.0 - diversity)
    d = np.float32(diversity)
    base = np.empty(n, dtype=np.float32)
    for i in range(n):
        r = (relevance[i] - lo) / span if span > 0 else np.float32(1.0)
        base[i] = keep * r
    gain = base.copy()
    capped = max_per_category > 0
    counts = np.zeros(1, dtype=np.int64)
    if capped:
        top = 0
        for i in range(n):
            top = max(top, int(categories[rows[i]]))
        counts = np.zeros(top + 1, dtype=np.int64)
    f = factors.shape[1]
    picked = 0
    while picked < k:
        best = -1
        best_gain = np.float32(-np.inf)
        for i in range(n):  # the first maximum, as numpy's argmax
            if gain[i] > best_gain:
                best = i
                best_gain = gain[i]
        if best < 0:  # everything left is picked or capped
            break
        picks[picked] = best
        picked += 1
        gain[best] = -np.inf
        if picked == k:
            break
        if diversity > 0:
            b = rows[best]
            inv_b = np.float32(1.0) / norms[b]
            for i in range(n):
                if gain[i] == -np.inf:
                    continue
                r = rows[i]
                dot = np.float32(0.0)
                for j in range(f):
                    dot += factors[r, j] * factors[b, j]
                sim = dot * inv_b / norms[r]
                if sim > 0:
                    drop = base[i] - d * sim
                    if drop < gain[i]:
                        gain[i] = drop
        if capped:
            cat = int(categories[rows[best]])
            counts[cat] += 1
            if counts[cat] >= max_per_category:
                for i in range(n):
                    if int(categories[rows[i]]) == cat:
                        gain[i] = -np.inf
    return picks[:picked]


@njit(cache=True, nogil=True, fastmath=_FAST)
def best_history_rows(
    factors: np.ndarray, history_rows: np.ndarray, pick_rows: np.ndarray
) -> np.ndarray:  # pragma: no cover - compiled; exercised through the engine's reasons
    """For each picked row, the history row whose vector has the largest dot product with it
    (the first such, as numpy's argmax); ``history_rows`` must not be empty."""
    out = np.empty(pick_rows.shape[0], dtype=np.int64)
    f = factors.shape[1]
    for p in range(pick_rows.shape[0]):
        q = pick_rows[p]
        best = history_rows[0]
        best_dot = np.float32(-np.inf)
        for h in range(history_rows.shape[0]):
            r = history_rows[h]
            dot = np.float32(0.0)
            for j in range(f):
                dot += factors[r, j] * factors[q, j]
            if dot > best_dot:
                best = r
                best_dot = dot
        out[p] = best
    return out


@njit(cache=True, nogil=True)
def stock_and_not_excluded(
    rows: np.ndarray, stock_ok: np.ndarray, in_stock_only: bool, excluded_sorted: np.ndarray
) -> np.ndarray:  # pragma: no cover - compiled; exercised through FilterSpec.mask
    """The filters every request has, in one pass: True where ``rows[i]`` is in stock (when
    ``in_stock_only``; ``stock_ok`` by row) and not in ``excluded_sorted`` (ascending)."""
    n = rows.shape[0]
    keep = np.ones(n, dtype=np.bool_)
    m = excluded_sorted.shape[0]
    for i in range(n):
        r = rows[i]
        if in_stock_only and not stock_ok[r]:
            keep[i] = False
            continue
        if m:
            pos = np.searchsorted(excluded_sorted, r)
            if pos < m and excluded_sorted[pos] == r:
                keep[i] = False
    return keep


def warm_up(factors: np.ndarray, norms: np.ndarray, categories: np.ndarray, stock_ok: np.ndarray) -> None:
    """Compile (or load from the cache) the kernels for this bundle's array types, so no request
    pays for it. Called when a model is loaded."""
    if factors.shape[0] == 0:
        return
    rows = np.zeros(1, dtype=np.int64)
    rel = np.ones(1, dtype=np.float32)
    mmr_rows(rel, rows, factors, norms, 1, 0.3, categories, 0)
    mmr_rows(rel, rows, factors, norms, 1, 0.3, categories, 1)
    best_history_rows(factors, rows, rows)
    read_only = rows.copy()
    read_only.flags.writeable = False
    for excluded in (rows, read_only):
        stock_and_not_excluded(rows, stock_ok, True, excluded)
