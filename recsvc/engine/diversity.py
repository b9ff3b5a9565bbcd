"""Diversity: MMR re-ranking on item vectors, an optional per-category cap, and the intra-list
diversity measure used to choose the default trade-off (docs/benchmarks.md)."""

from __future__ import annotations

import numpy as np


def unit_rows(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.where(norms > 0, norms, 1.0)


def mmr(
    relevance: np.ndarray,
    vectors: np.ndarray,
    k: int,
    diversity: float,
    categories: np.ndarray | None = None,
    max_per_category: int = 0,
    unit: bool = False,
) -> np.ndarray:
    """Maximal marginal relevance: positions (into ``relevance``) of ``k`` picks.

    Each step picks ``argmax (1 - d) * rel_i - d * max_j cos(i, j)`` over picked ``j``; relevance
    is rescaled to 0..1 over the candidates so ``d`` means the same for every member. ``d = 0``
    (and no cap) is plain top-k by relevance. ``unit=True``: ``vectors`` are already unit length.
    """
    n = relevance.shape[0]
    k = min(k, n)
    if k <= 0:
        return np.zeros(0, dtype=np.int64)
    if diversity <= 0 and max_per_category <= 0:
        return np.argsort(-relevance, kind="stable")[:k]
    lo, hi = float(relevance.min()), float(relevance.max())
    rel = (relevance - lo) / (hi - lo) if hi > lo else np.ones(n, dtype=np.float32)
    u = np.asarray(vectors, dtype=np.float32) if unit else unit_rows(np.asarray(vectors, dtype=np.float32))
    sims = np.maximum(u @ u.T, 0.0)  # one small matmul instead of one per step
    base = ((1.0 - diversity) * rel).astype(np.float32)
    # gain_i = base_i - d * max_{j picked} sim_ij. Picking b turns that into
    # min(gain_i, base_i - d * sim_ib): one row of ``drop`` per step, so each step is an argmax
    # and an elementwise minimum. ``drop``'s diagonal is -inf, so that minimum also takes the
    # picked item out; capped items are set to -inf too, and stay there.
    drop = base[None, :] - diversity * sims
    np.fill_diagonal(drop, -np.inf)
    gain = base.copy()
    minimum = np.minimum
    picks: list[int] = []
    if categories is None or max_per_category <= 0:
        for _ in range(k):  # n >= k items, each picked once: never out of candidates
            best = int(gain.argmax())
            picks.append(best)
            minimum(gain, drop[best], out=gain)
        return np.asarray(picks, dtype=np.int64)
    cats = categories.tolist()
    counts: dict[int, int] = {}
    for _ in range(k):
        best = int(gain.argmax())
        if gain[best] == -np.inf:  # everything left is capped
            break
        picks.append(best)
        minimum(gain, drop[best], out=gain)
        cat = cats[best]
        counts[cat] = counts.get(cat, 0) + 1
        if counts[cat] >= max_per_category:
            gain[categories == cat] = -np.inf
    return np.asarray(picks, dtype=np.int64)


def intra_list_diversity(vectors: np.ndarray) -> float:
    """Mean pairwise cosine distance (1 - cos) of a list's item vectors; 0 for fewer than 2."""
    n = vectors.shape[0]
    if n < 2:
        return 0.0
    unit = unit_rows(np.asarray(vectors, dtype=np.float64))
    sims = unit @ unit.T
    off = sims[~np.eye(n, dtype=bool)]
    return float(np.mean(1.0 - off))
