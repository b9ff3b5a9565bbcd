"""The trend prior's scoring, one definition for training and serving (training/trend.py chooses
its weight and measures it).

A personal score becomes ``(1 - t) * family + t * trend / max(trend)``: ``family`` the score the
bundle's family ranks by already (ALS divided by the member's largest, ``als_scale``; the
item-item or blend score of recsvc/engine/itemknn_source.py), ``trend`` the item's weighted events
in the ``trend_days`` before the bundle's data ends (``item_trend.npy``), its maximum over the
requested kind's items. An item outside the ANN's best can rank on its trend alone, so serving
scores the kind's :data:`TOP` most trending items (or as many as the search's) beside the ANN's
candidates, and widens both while an item in neither could still reach the list
(:meth:`Trend.bound`, the threshold algorithm); new items of the live catalog have no trend yet
(0).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np

from recsvc.engine.empty_arrays import NO_ROWS, NO_WEIGHTS
from recsvc.engine.itemknn_source import als_scale, kind_norm_max, mix

if TYPE_CHECKING:
    from recsvc.bundle import LoadedBundle

# The trend weights validation chooses from (0 = off).
TREND_WEIGHTS = (0.0, 0.1, 0.2, 0.35, 0.5, 0.7, 0.85)
# Most trending items of a kind scored beside the ANN's candidates on every call (more when the
# threshold says items beyond them could still enter the list).
TOP = 200
__all__ = ["TOP", "TREND_WEIGHTS", "Trend", "mix"]


@dataclass(frozen=True, eq=False)
class Trend:
    """The bundle's trend prior: the weight, each item's trend divided by its kind's largest, and
    each kind's most trending rows, best first."""

    weight: float
    part: np.ndarray  # float32 [items]
    top: dict[int, np.ndarray]  # kind -> int64 rows with a trend > 0, most trending first
    norm_max: dict[int, float]  # the largest item vector norm per kind (``als_scale``'s bound)
    # each kind's first TOP trending rows' item vectors, contiguous: one small product a call
    # instead of gathering them from the memory-mapped factors
    top_factors: dict[int, np.ndarray]
    days: int = 14  # the days of events the trend counts (reasons name them)

    @classmethod
    def from_bundle(cls, bundle: LoadedBundle) -> Trend | None:
        spec = bundle.manifest.family
        if not spec.trend_weight:
            return None
        a = bundle.arrays
        prior = cls.of(spec.trend_weight, a["item_trend"], a["item_kind"], a["item_factors"])
        return replace(prior, days=spec.trend_days or prior.days)

    @classmethod
    def of(cls, weight: float, trend: np.ndarray, item_kind: np.ndarray, item_factors: np.ndarray) -> Trend:
        trend = np.asarray(trend, dtype=np.float32)
        part = np.zeros(trend.shape[0], dtype=np.float32)
        top: dict[int, np.ndarray] = {}
        for kind in np.unique(item_kind).tolist():
            rows = np.flatnonzero(item_kind == kind)
            largest = float(trend[rows].max(initial=0.0))
            if largest <= 0:
                top[int(kind)] = NO_ROWS
                continue
            part[rows] = trend[rows] / np.float32(largest)
            live = rows[trend[rows] > 0]
            order = np.argsort(-trend[live], kind="stable")
            top[int(kind)] = live[order].astype(np.int64)
        factors = {
            kind: np.ascontiguousarray(item_factors[rows[:TOP]], dtype=np.float32)
            for kind, rows in top.items()
        }
        return cls(float(weight), part, top, kind_norm_max(item_factors, item_kind), factors)

    def of_rows(self, rows: np.ndarray) -> np.ndarray:
        """The trend part of ``rows``; 0 for rows past the bundle's items (live catalog's new)."""
        if not rows.shape[0] or int(rows.max()) < self.part.shape[0]:
            return self.part[rows]
        out = np.zeros(rows.shape[0], dtype=np.float32)
        known = rows < self.part.shape[0]
        out[known] = self.part[rows[known]]
        return out

    def rank_als(
        self,
        rows: np.ndarray,
        als: np.ndarray,
        extra_als: np.ndarray,
        extra: np.ndarray,
        vector_norm: float,
        kind: int,
        als_floor: float,
        depth: int,
    ) -> tuple[np.ndarray, np.ndarray, float]:
        """``rows`` with their ALS scores ``als`` and the trending rows ``extra`` (the kind's
        first ``depth``, less those among ``rows``) with theirs, ranked by the mixed score, best
        first: (rows, scores, bound). ``als_floor``: the lowest ALS score of the search's rows
        (-inf when it scored every item); ``bound`` (:meth:`bound`) is the most an item in
        neither set can score."""
        all_rows = np.concatenate([rows.astype(np.int64, copy=False), extra])
        n_new = int(np.count_nonzero(rows >= self.part.shape[0]))
        all_als = np.concatenate([als.astype(np.float32), extra_als.astype(np.float32)])
        # the bundle's items alone, as training and the item-item path divide (new items have none)
        known = all_als if n_new == 0 else all_als[all_rows < self.part.shape[0]]
        top = float(known.max(initial=0.0))
        scale = top if top > 0 else float(als_scale(top, vector_norm, self.norm_max.get(kind, 0.0)))
        scores = mix(all_als / np.float32(scale), self.of_rows(all_rows), self.weight)
        order = np.argsort(-scores, kind="stable")
        return all_rows[order], scores[order], self.bound(als_floor / scale, kind, depth)

    def bound(self, family_floor: float, kind: int, depth: int) -> float:
        """The most an item outside a search (family score at most ``family_floor``) and outside
        the kind's ``depth`` most trending items can score: a list whose candidates at or above
        it are enough is the list every item scored would give (the threshold algorithm)."""
        rows = self.top.get(kind)
        beyond = float(self.part[rows[depth]]) if rows is not None and depth < rows.shape[0] else 0.0
        return (1.0 - self.weight) * family_floor + self.weight * beyond

    @staticmethod
    def exact(scores: np.ndarray, keep: np.ndarray, bound: float, pool_size: int) -> bool:
        """Whether ``pool_size`` of the kept candidates score at least ``bound``: then no item
        left unscored can enter the pool."""
        return int(np.count_nonzero(keep & (scores >= np.float32(bound)))) >= pool_size

    def led(self, rows: np.ndarray, scores: np.ndarray) -> np.ndarray:
        """Which of ``rows`` (ranked with ``scores``) owe more of their score to the trend than
        to the member: their reason names the trend."""
        part = self.of_rows(rows.astype(np.int64)) * np.float32(self.weight)
        return (part > 0) & (part > np.asarray(scores, dtype=np.float32) - part)

    @staticmethod
    def depth(n: int) -> int:
        """How many of a kind's most trending items a call scores beside a search of ``n``."""
        return max(TOP, n)

    def extra_rows(self, kind: int, have: np.ndarray, depth: int = TOP) -> np.ndarray:
        """The kind's ``depth`` most trending rows not in ``have``."""
        top, absent = self._extra(kind, have, depth)
        return top[absent]

    def extra_als(
        self, kind: int, have: np.ndarray, depth: int, vector: np.ndarray, item_factors: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`extra_rows` and their ALS scores for ``vector``."""
        top, absent = self._extra(kind, have, depth)
        if not top.shape[0]:
            return top, NO_WEIGHTS
        stored = self.top_factors[kind]
        if top.shape[0] <= stored.shape[0]:
            return top[absent], (stored[: top.shape[0]] @ vector.astype(np.float32))[absent]
        rows = top[absent]
        return rows, item_factors[rows] @ vector.astype(np.float32)

    def _extra(self, kind: int, have: np.ndarray, depth: int) -> tuple[np.ndarray, np.ndarray]:
        """The kind's first ``depth`` trending rows, and which of them are not in ``have``; a
        sorted look-up (np.isin's general path costs ~0.15 ms a call at these sizes)."""
        top = self.top.get(kind, NO_ROWS)[:depth]
        if not have.shape[0] or not top.shape[0]:
            return top, np.ones(top.shape[0], dtype=bool)
        ordered = np.sort(have.astype(np.int64, copy=False))
        at = np.minimum(np.searchsorted(ordered, top), ordered.shape[0] - 1)
        return top, ordered[at] != top
