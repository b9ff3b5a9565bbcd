"""The compiled hot-path loops (recsvc.engine.kernels) against plain numpy written from the
definition, on random inputs with fixed seeds (so a case that passes always passes)."""

from __future__ import annotations

import numpy as np
import pytest

from recsvc.engine.diversity import mmr, mmr_by_rows
from recsvc.engine.kernels import best_history_rows, stock_and_not_excluded


def _mmr_capped_by_definition(
    rel: np.ndarray, unit: np.ndarray, k: int, d: float, cats: np.ndarray, cap: int
) -> list[int]:
    r = (rel - rel.min()) / (rel.max() - rel.min())
    picks: list[int] = []
    counts: dict[int, int] = {}
    for _ in range(k):
        best, best_gain = -1, -np.inf
        for i in range(len(rel)):
            if i in picks or (cap and counts.get(int(cats[i]), 0) >= cap):
                continue
            sim = max((max(0.0, float(unit[i] @ unit[j])) for j in picks), default=0.0)
            gain = (1 - d) * r[i] - d * sim
            if gain > best_gain + 1e-9:
                best, best_gain = i, gain
        if best < 0:
            break
        picks.append(best)
        counts[int(cats[best])] = counts.get(int(cats[best]), 0) + 1
    return picks


@pytest.mark.parametrize("cap", [1, 2, 3])
def test_mmr_with_category_cap_matches_its_definition(cap: int) -> None:
    rng = np.random.default_rng(100 + cap)
    for _ in range(20):
        rel = rng.random(30).astype(np.float32)
        vecs = rng.normal(size=(30, 8)).astype(np.float32)
        unit = vecs / np.linalg.norm(vecs, axis=1, keepdims=True)
        cats = rng.integers(0, 4, 30)
        got = mmr(rel, vecs, 10, 0.4, categories=cats, max_per_category=cap).tolist()
        assert got == _mmr_capped_by_definition(rel, unit, 10, 0.4, cats, cap)
        assert max(np.bincount(cats[got])) <= cap


def test_mmr_by_rows_reads_candidates_from_the_factor_rows() -> None:
    rng = np.random.default_rng(7)
    factors = rng.normal(size=(500, 16)).astype(np.float32)
    factors[3] = 0.0  # a zero vector: its norm is taken as 1, as ServedModel does
    norms = np.linalg.norm(factors, axis=1).astype(np.float32)
    norms[norms == 0] = 1.0
    cats = rng.integers(0, 9, 500).astype(np.int32)
    for _ in range(20):
        rows = np.concatenate([[3], rng.choice(np.arange(4, 500), 59, replace=False)]).astype(np.int64)
        rel = rng.random(60).astype(np.float32)
        for d, cap in ((0.3, 0), (0.7, 2), (0.0, 1)):
            by_rows = mmr_by_rows(rel, rows, factors, norms, 12, d, cats, cap)
            gathered = mmr(rel, factors[rows], 12, d, categories=cats[rows], max_per_category=cap)
            assert by_rows.tolist() == gathered.tolist()


def test_mmr_edge_cases() -> None:
    vecs = np.eye(3, dtype=np.float32)
    assert mmr(np.zeros(0, dtype=np.float32), np.zeros((0, 3), dtype=np.float32), 5, 0.3).tolist() == []
    assert mmr(np.ones(3, dtype=np.float32), vecs, 0, 0.3).tolist() == []
    # equal relevance: every item is as relevant; all are returned once, in a valid order
    assert sorted(mmr(np.ones(3, dtype=np.float32), vecs, 5, 0.3).tolist()) == [0, 1, 2]


def test_best_history_rows_is_the_argmax_of_the_dot_products() -> None:
    rng = np.random.default_rng(11)
    factors = rng.normal(size=(300, 32)).astype(np.float32)
    for n_hist in (1, 5, 100):
        hist = rng.choice(300, n_hist, replace=False).astype(np.int64)
        picks = rng.choice(300, 20, replace=False).astype(np.int64)
        expected = hist[(factors[hist] @ factors[picks].T).argmax(axis=0)]
        assert best_history_rows(factors, hist, picks).tolist() == expected.tolist()


def test_stock_and_not_excluded_matches_numpy() -> None:
    rng = np.random.default_rng(5)
    stock_ok = rng.random(1000) < 0.8
    for n_excluded in (0, 1, 50):
        excluded = np.unique(rng.choice(1000, n_excluded, replace=False)).astype(np.int64)
        rows = rng.choice(1000, 200, replace=False).astype(np.int64)
        rows[:3] = excluded[:3] if n_excluded >= 3 else rows[:3]
        for in_stock_only in (True, False):
            expected = ~np.isin(rows, excluded)
            if in_stock_only:
                expected &= stock_ok[rows]
            got = stock_and_not_excluded(rows, stock_ok, in_stock_only, excluded)
            assert got.tolist() == expected.tolist()
