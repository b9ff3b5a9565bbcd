"""Step 5: ranking metrics on the holdout, for products and content separately, beside popularity.

Reads: member and item factors, the training confidence matrix (items a member already had are
filtered from its recommendations), the test matrix from :mod:`training.split`, item kinds and
a popularity score per item (the baseline).
Writes: a flat dict of metrics ``"<kind>.<metric>_at_<k>"`` for kind in all/product/content and
metric in precision, recall, ndcg, map, hit_rate, coverage, plus ``"<kind>.members"`` (members
evaluated). Recommendations come from implicit's ``recommend`` (one batched top-k pass per kind
and model); NDCG and MAP use the definitions of ``implicit.evaluation.ranking_metrics_at_k``
(tests check the two agree) and precision (hits / k), recall (hits / relevant), hit rate and
catalog coverage, which implicit does not report, come from the same pass.

Members are sampled (``max_members``) and scored in batches so the cost stays bounded at any
scale; the same sample serves the model and the baseline.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import scipy.sparse as sp
from threadpoolctl import threadpool_limits

from recsvc.bundle import KIND_NAMES
from training.fit import model_from_factors

log = logging.getLogger(__name__)

KS = (10, 20)
METRICS = ("precision", "recall", "ndcg", "map", "hit_rate", "coverage")
BATCH = 512  # members per recommend call: bounds the dense [batch x items] score block


def sample_members(test: sp.csr_matrix, max_members: int, seed: int) -> np.ndarray:
    users = np.flatnonzero(np.diff(test.indptr) > 0)
    if users.size > max_members:
        users = np.sort(np.random.default_rng(seed).choice(users, size=max_members, replace=False))
    return users


def _metrics_for(
    model: Any, train: sp.csr_matrix, test: sp.csr_matrix, ks: tuple[int, ...]
) -> dict[str, float]:
    """All metrics from ONE top-k pass (``model.recommend``, already-seen items filtered).

    NDCG and MAP follow ``implicit.evaluation.ranking_metrics_at_k`` exactly (gain 1/log2(i+2),
    ideal over min(k, relevant), AP divided by min(k, relevant)); a test checks they agree with
    it. Calling it once per k would rank every member again for each k and each metric set.
    """
    n_items = test.shape[1]
    k_max = min(max(ks), n_items)
    hits, recommended = _ranked(model, train, test, k_max)
    relevant = np.diff(test.indptr).astype(np.float64)
    out: dict[str, float] = {}
    for k in ks:
        kk = min(k, k_max)
        h = hits[:, :kk]
        n_hits = h.sum(axis=1)
        denom = np.minimum(relevant, kk)
        ndcg = _ndcg(h, relevant, kk)
        precision_at = np.cumsum(h, axis=1) / np.arange(1, kk + 1)
        ap = (precision_at * h).sum(axis=1) / np.maximum(denom, 1)
        top = recommended[:, :kk]
        out[f"precision_at_{k}"] = float((n_hits / k).mean())
        out[f"recall_at_{k}"] = float((n_hits / np.maximum(relevant, 1)).mean())
        out[f"hit_rate_at_{k}"] = float((n_hits > 0).mean())
        out[f"coverage_at_{k}"] = float(np.unique(top[top >= 0]).size / max(n_items, 1))
        out[f"ndcg_at_{k}"] = float(ndcg.mean())
        out[f"map_at_{k}"] = float(ap.mean())
    return out


def _ndcg(hits: np.ndarray, relevant: np.ndarray, k: int) -> np.ndarray:
    """Per member: implicit's NDCG@k from the hit flags of the top ``k``."""
    discount = 1.0 / np.log2(np.arange(2, k + 2))
    ideal = np.cumsum(discount)
    dcg = (hits[:, :k] * discount).sum(axis=1)
    return dcg / ideal[np.maximum(np.minimum(relevant, k).astype(int), 1) - 1]


def _ranked(
    model: Any, train: sp.csr_matrix, test: sp.csr_matrix, k_max: int
) -> tuple[np.ndarray, np.ndarray]:
    """Each member's top ``k_max`` (seen items filtered): hit flags and item columns (-1 = none)."""
    n_users = test.shape[0]
    hits = np.zeros((n_users, k_max), dtype=bool)
    recommended = np.full((n_users, k_max), -1, dtype=np.int64)
    for lo in range(0, n_users, BATCH):
        rows = np.arange(lo, min(lo + BATCH, n_users))
        ids, _ = model.recommend(rows, train[rows], N=k_max, filter_already_liked_items=True)
        ids = np.asarray(ids).reshape(len(rows), -1)[:, :k_max]
        valid = ids >= 0
        r = np.broadcast_to(rows[:, None], ids.shape)
        hit = np.zeros(ids.shape, dtype=bool)
        if valid.any():
            hit[valid] = np.asarray(test[r[valid], ids[valid]]).ravel() > 0
        hits[rows, : ids.shape[1]] = hit
        recommended[rows, : ids.shape[1]] = ids
    return hits, recommended


def member_ndcg(
    user_factors: np.ndarray,
    item_factors: np.ndarray,
    train: sp.csr_matrix,
    test: sp.csr_matrix,
    *,
    k: int = 10,
    max_members: int = 10_000,
    seed: int = 0,
) -> np.ndarray:
    """NDCG@k over all items for each sampled test member (the sample and order of
    :func:`evaluate`; its mean is evaluate's ``all.ndcg_at_<k>``): per member, so two models
    scored on the same members can be compared pair by pair."""
    users = sample_members(test, max_members, seed)
    test_u = sp.csr_matrix(test[users])
    with threadpool_limits(limits=1, user_api="blas"):
        model = model_from_factors(user_factors[users], item_factors)
        k_max = min(k, test.shape[1])
        hits, _ = _ranked(model, sp.csr_matrix(train[users]), test_u, k_max)
    return _ndcg(hits, np.diff(test_u.indptr).astype(np.float64), k_max)


def evaluate(
    user_factors: np.ndarray,
    item_factors: np.ndarray,
    train: sp.csr_matrix,
    test: sp.csr_matrix,
    item_kind: np.ndarray,
    popularity: np.ndarray | None,
    *,
    max_members: int = 10_000,
    seed: int = 0,
    ks: tuple[int, ...] = KS,
    kinds: tuple[str, ...] | None = None,
) -> dict[str, float]:
    """Metrics of the model (``"<kind>.<name>"``) and, if ``popularity`` is given, of the
    baseline (``"baseline.<kind>.<name>"``). ``kinds``: only these of all/product/content
    (tuning needs ``("all",)`` alone)."""
    users = sample_members(test, max_members, seed)
    train_u = sp.csr_matrix(train[users])
    test_u = sp.csr_matrix(test[users])
    out: dict[str, float] = {}
    kinds_cols: list[tuple[str, np.ndarray]] = [("all", np.arange(item_kind.shape[0]))]
    kinds_cols += [(name, np.flatnonzero(item_kind == code)) for code, name in KIND_NAMES.items()]
    with threadpool_limits(limits=1, user_api="blas"):
        for name, cols in kinds_cols:
            if kinds is not None and name not in kinds:
                continue
            sub_test = sp.csr_matrix(test_u[:, cols])
            keep = np.flatnonzero(np.diff(sub_test.indptr) > 0)
            out[f"{name}.members"] = float(keep.size)
            if keep.size == 0 or cols.size == 0:
                log.warning("no holdout interactions with kind=%s: its metrics are skipped", name)
                continue
            sub_test = sp.csr_matrix(sub_test[keep])
            sub_train = sp.csr_matrix(train_u[keep][:, cols])
            model = model_from_factors(user_factors[users[keep]], item_factors[cols])
            for key, value in _metrics_for(model, sub_train, sub_test, ks).items():
                out[f"{name}.{key}"] = value
            if popularity is not None:
                base = model_from_factors(
                    np.ones((keep.size, 1), dtype=np.float32), popularity[cols].reshape(-1, 1)
                )
                for key, value in _metrics_for(base, sub_train, sub_test, ks).items():
                    out[f"baseline.{name}.{key}"] = value
    return out


def popularity_scores(train: sp.csr_matrix) -> np.ndarray:
    """Baseline score per item: total (decayed, weighted) confidence in the training period."""
    return np.asarray(train.sum(axis=0), dtype=np.float32).ravel()
