"""Two more model families beside ALS: item-item nearest neighbours and an ALS blend.

Reads: a confidence matrix (the same r_ui ALS is fitted on), ALS factors, a split.
Writes: holdout metrics ``itemknn.<kind>.<metric>_at_<k>`` and ``blend.<...>`` in the names
:mod:`training.evaluate` uses, the blend weight chosen on a validation split, and the fitted
neighbour model.

The item-item model is implicit's ``BM25Recommender`` (``K`` neighbours per item) on r_ui: a
member's score for an item is the sum of the item's similarities to the member's history,
weighted by r_ui, over the ``history_items`` history items of largest r_ui (setting
``itemknn_history``: it bounds serving's cost per call, and on the generated data sets cutting
at 30 left NDCG@10 unchanged, docs/training.md). The blend ranks by ``w * als + (1 - w) *
itemknn``, each score divided by the member's largest score of that model so neither scale
dominates (``als_scale``); ``w`` is chosen on validation from :data:`WEIGHTS` (1 = ALS alone,
0 = item-item alone). The scores are computed by
``recsvc.engine.itemknn_source``, the functions serving ranks with; training/gate.py picks the
family that serves, and the bundle stores the neighbour table (:func:`table`) it needs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp
from threadpoolctl import threadpool_limits

from recsvc.bundle import KIND_NAMES
from recsvc.engine.itemknn_source import als_scale, blend, knn_scores_batch, neighbour_table
from recsvc.engine.trend_source import mix
from training.evaluate import KS, _metrics_for, sample_members

WEIGHTS = (0.0, 0.25, 0.5, 0.7, 0.85, 1.0)
NEIGHBOURS = 100


def fit(matrix: sp.csr_matrix, neighbours: int = NEIGHBOURS, num_threads: int = 0) -> Any:
    from implicit.nearest_neighbours import BM25Recommender, ItemItemRecommender, bm25_weight

    model = BM25Recommender(K=neighbours, num_threads=num_threads)
    # BM25Recommender.fit hands its base class the COO matrix bm25_weight returns, which implicit
    # converts with a warning per fit; weighting here and passing CSR is the same fit.
    counts = sp.csr_matrix(matrix, dtype=np.float32)
    weighted = bm25_weight(counts.T, model.K1, model.B).T.tocsr()
    ItemItemRecommender.fit(model, weighted, show_progress=False)
    return model


@dataclass
class _Scorer:
    """A ``recommend`` like implicit's over blended, per-member normalised scores."""

    user_factors: np.ndarray  # [members in the sample, f]
    item_factors: np.ndarray  # [items, f]
    history: sp.csr_matrix  # r_ui rows of the sampled members (item-item input)
    similarity: sp.csr_matrix | None  # [items x items]; None for ALS alone (weight 1)
    weight: float  # of ALS
    history_items: int | None = None  # the history cut (``itemknn_source.strongest_matrix``)
    trend: np.ndarray | None = None  # the trend prior's part per item (training/trend.py)
    trend_weight: float = 0.0

    def recommend(
        self, rows: np.ndarray, seen: sp.csr_matrix, N: int, filter_already_liked_items: bool = True
    ) -> tuple[np.ndarray, np.ndarray]:
        als, scale = None, None
        if self.weight > 0:
            members = self.user_factors[rows]
            als = members @ self.item_factors.T
            norm_max = float(np.linalg.norm(self.item_factors, axis=1).max(initial=0.0))
            scale = als_scale(als.max(axis=1, initial=0.0), np.linalg.norm(members, axis=1), norm_max)
        knn = (
            knn_scores_batch(self.history[rows], self.similarity, self.history_items)
            if self.weight < 1 and self.similarity is not None
            else None
        )
        scores = blend(als, knn, self.weight, scale)
        if self.trend_weight > 0:
            assert self.trend is not None
            scores = mix(scores, self.trend, self.trend_weight)
        if filter_already_liked_items:
            seen = sp.csr_matrix(seen)
            r = np.repeat(np.arange(rows.shape[0]), np.diff(seen.indptr))
            scores[r, seen.indices] = -np.inf
        n = min(N, scores.shape[1])
        top = np.argpartition(-scores, n - 1, axis=1)[:, :n]
        order = np.argsort(-np.take_along_axis(scores, top, axis=1), axis=1, kind="stable")
        ids = np.take_along_axis(top, order, axis=1)
        out = np.take_along_axis(scores, ids, axis=1)
        ids[~np.isfinite(out)] = -1
        return ids, out


def evaluate(
    member_factors: np.ndarray,
    item_factors: np.ndarray,
    matrix: sp.csr_matrix,
    similarity: sp.csr_matrix | None,
    seen: sp.csr_matrix,
    test: sp.csr_matrix,
    item_kind: np.ndarray,
    weight: float,
    *,
    max_members: int,
    seed: int,
    kinds: tuple[str, ...] | None = None,
    history_items: int | None = None,
    trend: np.ndarray | None = None,
    trend_weight: float = 0.0,
) -> dict[str, float]:
    """Metrics of the blend with ALS weight ``weight`` (1: ALS, 0: item-item), per kind, on the
    same member sample and with the same definitions as :func:`training.evaluate.evaluate`;
    ``history_items``: each member's history cut to that many strongest items (None: all).
    ``trend`` (an item's recent weighted events, training/trend.py) with ``trend_weight`` > 0:
    the trend prior mixed in, divided by its largest over the evaluated items: per kind for the
    ``product`` and ``content`` figures, as serving divides (recsvc/engine/trend_source.py); over
    both for ``all``, a joint ranking serving never makes (as ALS's ``all`` figure).
    ``similarity`` None: ALS alone."""
    users = sample_members(test, max_members, seed)
    out: dict[str, float] = {}
    kinds_cols: list[tuple[str, np.ndarray]] = [("all", np.arange(item_kind.shape[0]))]
    kinds_cols += [(name, np.flatnonzero(item_kind == code)) for code, name in KIND_NAMES.items()]
    seen_u, test_u, hist_u = (sp.csr_matrix(m[users]) for m in (seen, test, matrix))
    with threadpool_limits(limits=1, user_api="blas"):
        for name, cols in kinds_cols:
            if kinds is not None and name not in kinds:
                continue
            sub_test = sp.csr_matrix(test_u[:, cols])
            keep = np.flatnonzero(np.diff(sub_test.indptr) > 0)
            if keep.size == 0 or cols.size == 0:
                continue
            part = None
            if trend is not None and trend_weight > 0:
                sub = np.asarray(trend[cols], dtype=np.float32)
                part = sub / np.float32(max(float(sub.max(initial=0.0)), 1e-9))
            scorer = _Scorer(
                member_factors[users[keep]],
                item_factors[cols],
                sp.csr_matrix(hist_u[keep]),
                None if similarity is None or weight >= 1 else sp.csr_matrix(similarity[:, cols]),
                weight,
                history_items,
                part,
                trend_weight,
            )
            metrics = _metrics_for(
                scorer, sp.csr_matrix(seen_u[keep][:, cols]), sp.csr_matrix(sub_test[keep]), KS
            )
            out |= {f"{name}.{k}": v for k, v in metrics.items()}
            out[f"{name}.members"] = float(keep.size)
    return out


def choose_weight(
    member_factors: np.ndarray,
    item_factors: np.ndarray,
    matrix: sp.csr_matrix,
    similarity: sp.csr_matrix,
    seen: sp.csr_matrix,
    test: sp.csr_matrix,
    item_kind: np.ndarray,
    *,
    max_members: int,
    seed: int,
    history_items: int | None = None,
) -> tuple[float, dict[float, float]]:
    """(the ALS weight with the best validation NDCG@10 over all items, NDCG@10 per weight)."""
    scores = {
        w: evaluate(
            member_factors,
            item_factors,
            matrix,
            similarity,
            seen,
            test,
            item_kind,
            w,
            max_members=max_members,
            seed=seed,
            kinds=("all",),
            history_items=history_items,
        ).get("all.ndcg_at_10", 0.0)
        for w in WEIGHTS
    }
    return max(scores, key=lambda w: (scores[w], w)), scores


def table(model: Any) -> tuple[np.ndarray, np.ndarray]:
    """The fitted model's neighbour table (bundle ``item_neighbour_{item,score}.npy``)."""
    return neighbour_table(model.similarity)


def remeasure(
    trained: Any, data_split: Any, item_kind: np.ndarray, spec: Any, t: Any, trend: np.ndarray | None = None
) -> dict[str, float]:
    """Holdout metrics of an item-item, blend or trend champion (``spec``: its manifest's
    FamilySpec) refitted on this split: the neighbours on the refitted confidence, the champion's
    blend weight, and its trend weight over ``trend`` (this split's, training/trend.py)."""
    similarity = None
    if spec.family != "als":
        similarity = fit(trained.matrix, spec.neighbours or t.itemknn_neighbours, t.num_threads).similarity
    return evaluate(
        trained.member_factors,
        trained.item_factors,
        trained.matrix,
        similarity,
        data_split.seen,
        data_split.test,
        item_kind,
        1.0 - spec.knn_weight,
        max_members=t.eval_members,
        seed=t.random_state,
        history_items=spec.history_items,
        trend=trend,
        trend_weight=spec.trend_weight,
    )
