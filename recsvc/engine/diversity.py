"""Diversity: MMR re-ranking on item vectors, an optional per-category cap, and the intra-list
diversity measure used to choose the default trade-off (docs/benchmarks.md). The MMR loop itself
is compiled (``recsvc.engine.kernels``)."""

from __future__ import annotations

import numpy as np

from recsvc.engine.kernels import mmr_rows


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
    With ``max_per_category``, an item whose category already has that many picks is skipped.
    """
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.ones(vectors.shape[0], dtype=np.float32) if unit else _norms(vectors)
    rows = np.arange(vectors.shape[0], dtype=np.int64)
    cats = np.zeros(vectors.shape[0], dtype=np.int64) if categories is None else categories
    return mmr_by_rows(relevance, rows, vectors, norms, k, diversity, cats, max_per_category)


def mmr_by_rows(
    relevance: np.ndarray,
    rows: np.ndarray,
    factors: np.ndarray,
    norms: np.ndarray,
    k: int,
    diversity: float,
    categories: np.ndarray,
    max_per_category: int = 0,
) -> np.ndarray:
    """``mmr`` for candidates given as rows of ``factors`` (a bundle's item factors, with their
    ``norms`` and ``categories`` by row): no per-call copy of the candidates' vectors."""
    if k <= 0 or relevance.shape[0] == 0:
        return np.zeros(0, dtype=np.int64)
    if diversity <= 0 and max_per_category <= 0:
        return np.argsort(-relevance, kind="stable")[:k]
    return mmr_rows(
        np.asarray(relevance, dtype=np.float32),
        np.asarray(rows, dtype=np.int64),
        factors,
        norms,
        k,
        float(diversity),
        categories,
        max_per_category,
    )


def _norms(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=1).astype(np.float32)
    return np.where(norms > 0, norms, np.float32(1.0))


def intra_list_diversity(vectors: np.ndarray) -> float:
    """Mean pairwise cosine distance (1 - cos) of a list's item vectors; 0 for fewer than 2."""
    n = vectors.shape[0]
    if n < 2:
        return 0.0
    unit = unit_rows(np.asarray(vectors, dtype=np.float64))
    sims = unit @ unit.T
    off = sims[~np.eye(n, dtype=bool)]
    return float(np.mean(1.0 - off))
