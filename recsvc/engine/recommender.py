"""Recommendations for one member or one item, on whichever model the member's variant serves.

Stages for a member (``recommend`` reads them top to bottom): member state (bundle row, trained
history and purchases, vector; none: cold start) -> candidate source (the member's stored default
list when ``StoredListSpec`` says it covers the call, else a first FAISS search of the requested
kind with the trained vector, overlapping the Redis read of recent events) -> member state updated
with recent events (vector recomputed, recent purchases excluded; drops candidates found for the
old state) -> filter and rank (vectorised filters, widening the search when they remove too many,
then MMR) -> explain (the history item that contributed most to each pick) -> render. Cold start
uses the bundle's popular lists for the member's segment and channel. Training stores the lists
with the same stages (``trained_list``). A bundle whose family is item-item or the blend
(``ServedModel.neighbours``) takes its candidates, after the recent events, from
``recsvc.engine.itemknn_source`` (``_family_rank``) instead of the FAISS search.

Every stage reads items through the live catalog's view of the model (``recsvc.catalog``): the
filters use live stock, prices, categories, brands, delistings and publication times; stored
lists and popular lists are checked against it when read (a stored list that lost an item, or
that a new item would enter, is computed live instead); new items are searched exactly beside
the ANN results and come back with ``source`` "new".

``EnginePort`` implements ``recsvc.outreach.ports.RecommendationPort`` for in-process callers
(outreach).
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Callable, Collection, Container, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from recsvc.bundle import KIND_PRODUCT
from recsvc.catalog.live import StaticCatalog
from recsvc.catalog.view import CatalogView
from recsvc.engine import itemknn_source
from recsvc.engine.diversity import mmr_by_rows
from recsvc.engine.filters import FilterSpec
from recsvc.engine.kernels import best_history_rows
from recsvc.engine.replenish import placement
from recsvc.engine.served_model import KIND_CODES, MemberLists, ServedModel
from recsvc.errors import InvalidArgument, NotFound
from recsvc.realtime import RealtimeStore, RecentActivity, event_weights_by_item, recalculate_member
from recsvc.settings import ServingSettings
from recsvc.v1 import common_pb2, recommender_pb2

SOURCE_PERSONALIZED = "personalized"
SOURCE_REALTIME = "realtime"
SOURCE_POPULAR = "popular"
SOURCE_SIMILAR = "similar"
SOURCE_NEW = "new"  # an item created in the live catalog after the bundle was trained
SOURCE_REPLENISH = "replenish"

_REASON_HISTORY_MAX = 100  # history items considered for reasons (heaviest first)
_NO_ROWS = np.zeros(0, dtype=np.int64)
_NO_WEIGHTS = np.zeros(0, dtype=np.float32)
_NO_ROWS.flags.writeable = False
_NO_WEIGHTS.flags.writeable = False


class ModelProvider(Protocol):
    """Which model serves a member (A/B variant) and which serves item-to-item calls."""

    def for_member(self, member_id: str) -> tuple[str, ServedModel]: ...

    def default(self) -> tuple[str, ServedModel]: ...


class SingleModel:
    """A ``ModelProvider`` serving one loaded bundle to everyone, under one variant name (for
    benchmarks, evaluations and tests that run the engine on a bundle without a registry)."""

    def __init__(self, model: ServedModel, variant: str = "control") -> None:
        self._model = model
        self._variant = variant

    def for_member(self, member_id: str) -> tuple[str, ServedModel]:
        return self._variant, self._model

    def default(self) -> tuple[str, ServedModel]:
        return self._variant, self._model


# A first ANN search: (item rows, scores, how many were asked for).
Searched = tuple[np.ndarray, np.ndarray, int]


@dataclass(slots=True)
class StoredList:
    """A member's stored default list (training/member_lists.py): item rows, scores, reason rows."""

    items: np.ndarray
    scores: np.ndarray
    reasons: np.ndarray


@dataclass(slots=True)
class MemberState:
    """Who the member is for this call: the bundle's view (row, trained history and purchases,
    vector), then updated with their recent events (``ev_*``, more purchases, a recomputed vector)."""

    row: int | None
    segment: str
    hist_rows: np.ndarray
    hist_w: np.ndarray
    bought: np.ndarray  # rows no list may hold because the member bought them
    bought_sorted: bool  # ``bought`` is ascending and unique (a bundle's own purchase rows)
    vector: np.ndarray | None  # None: no personal vector (popular lists)
    source: str = SOURCE_PERSONALIZED
    ev_rows: np.ndarray = field(default_factory=lambda: _NO_ROWS)
    ev_w: np.ndarray = field(default_factory=lambda: _NO_WEIGHTS)
    answered: bool = False  # Redis answered the recent-events read
    recent_bought: np.ndarray = field(default_factory=lambda: _NO_ROWS)  # bought since the bundle


@dataclass(slots=True)
class Due:
    """Bought consumables due again (replenishment stage): rows, scores, days since bought."""

    rows: np.ndarray
    scores: np.ndarray
    days: np.ndarray


@dataclass
class Recommendation:
    response: recommender_pb2.RecommendResponse
    source: str  # the source of the list as a whole, for metrics
    stored: bool = False  # read from the bundle's stored default lists (no search), for metrics


class RecommendationEngine:
    """Stateless per call; holds the model provider, the real-time store and serving settings."""

    def __init__(
        self,
        models: ModelProvider,
        realtime: RealtimeStore | None,
        settings: ServingSettings,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._models = models
        self._realtime = realtime
        self._settings = settings
        self._clock = clock
        # Members erased since the bundle was trained (recsvc.security.erasure.ForgottenMembers):
        # served like unknown members, never from their trained vector or history.
        self.forgotten: Container[str] = frozenset()
        # The catalog items are read through (recsvc.catalog): the bundle's own, or live changes.
        self.catalog: Any = StaticCatalog()
        self._usable_lists: weakref.WeakKeyDictionary[MemberLists, bool] = weakref.WeakKeyDictionary()

    # ---- members ---------------------------------------------------------------------------
    def recommend(
        self, member_id: str, kind: int, k: int, channel: str, filters: FilterSpec
    ) -> Recommendation:
        """The stages, in order: member state from the bundle -> candidate source (the stored
        list, or a first ANN search with the trained vector) -> member state updated with recent
        events -> filter and rank -> explain -> render. Redis is asked for the recent events
        first and read only after the candidate source, so its round trip overlaps the search."""
        variant, model = self._models.for_member(member_id)
        view = self.catalog.view(model)
        row = None if member_id in self.forgotten else model.member_row(member_id)
        pending = self._realtime.start_recent(member_id) if self._realtime is not None else None
        try:
            state = self._trained_state(model, row)
            candidates = self._candidate_source(view, state, kind, k, filters)
        finally:
            activity = pending.result() if pending is not None else None
        if activity is not None:
            state.answered = True
            if self._add_recent(view, state, activity):
                candidates = None  # found for the trained vector or purchases: not this member's now
            elif isinstance(candidates, StoredList) and activity.purchased:
                candidates = None
        excluded = self._excluded_rows(view, filters, state.bought, bought_sorted=state.bought_sorted)

        resp = recommender_pb2.RecommendResponse(
            model_version=model.version,
            variant=variant,
            realtime=state.answered,
            member_segment=state.segment,
        )
        if state.vector is None:
            self._popular(resp.items, view, state.segment, channel, kind, k, filters, excluded)
            return Recommendation(response=resp, source=SOURCE_POPULAR)
        from_stored = isinstance(candidates, StoredList)
        if isinstance(candidates, StoredList):
            picks, scores, because = candidates.items, candidates.scores, candidates.reasons
        elif model.neighbours is not None:
            picks, scores, because = self._family_rank(view, state, kind, k, filters, excluded)
        else:
            picks, scores = self._rank(view, state.vector, kind, k, filters, excluded, first=candidates)
            because = self._explain(view, picks, state)
        reasons = self._reason_texts(view, picks, because, state)
        due = self._due(view, state, kind, filters)
        if due is None:
            self._items(resp.items, view, picks, scores, reasons, state.source)
        else:
            self._render_with_due(resp.items, view, picks, scores, reasons, state.source, due, k)
        return Recommendation(response=resp, source=state.source, stored=from_stored)

    @staticmethod
    def _trained_state(model: ServedModel, row: int | None) -> MemberState:
        """Stage 1: the member as the bundle knows them (row None: unknown, erased or cold)."""
        if row is None:
            return MemberState(None, model.segment_of(None), _NO_ROWS, _NO_WEIGHTS, _NO_ROWS, False, None)
        vector = model.member_vector(row)
        hist_rows, hist_w = model.history(row)
        return MemberState(
            row,
            model.segment_of(row),
            hist_rows,
            hist_w,
            model.purchased_rows(row),
            model.purchased_sorted,
            vector if vector.any() else None,
        )

    def _candidate_source(
        self, view: CatalogView, state: MemberState, kind: int, k: int, filters: FilterSpec
    ) -> StoredList | Searched | None:
        """Stage 2: the member's stored list when it covers this call, else the first search with
        the trained vector; None for a member without one (popular lists)."""
        if state.vector is None:
            return None
        stored = self._stored_list(view, state, kind, k, filters)
        if stored is not None:
            return stored
        if view.model.neighbours is not None:
            return None  # item-item and blend rank after the recent events (_family_rank)
        return self._first_search(view.model, state.vector, kind, k, filters, state.bought.shape[0])

    def _add_recent(self, view: CatalogView, state: MemberState, activity: RecentActivity) -> bool:
        """Stage 3: recent events recompute the vector from trained history + events; recent
        purchases join the excluded rows. True when the vector changed."""
        model = view.model
        if activity.purchased:
            recent_bought = view.rows(sorted(activity.purchased))
            state.recent_bought = recent_bought[recent_bought >= 0].astype(np.int64)
            state.bought = np.concatenate([state.bought.astype(np.int64), state.recent_bought])
            state.bought_sorted = False
        if not activity.events:
            return False
        now = self._clock()
        ev_rows, ev_w = event_weights_by_item(
            activity.events, view.rows, model.event_weights, model.half_life_days, now
        )
        if not ev_rows.shape[0]:
            return False
        # Trained weights were decayed to the bundle's data_as_of; decay them on to now, as a
        # retrain now would, so recent events weigh what they should next to old history.
        age_days = max(0.0, now - model.cutoff_ts) / 86400.0 if model.cutoff_ts is not None else 0.0
        decay = np.float32(0.5 ** (age_days / model.half_life_days))
        rows_all = np.concatenate([state.hist_rows.astype(np.int64), ev_rows])
        w_all = np.concatenate([state.hist_w.astype(np.float32) * decay, ev_w])
        uniq, inv = np.unique(rows_all, return_inverse=True)
        w_sum = np.bincount(inv, weights=w_all).astype(np.float32)
        if view.new_ids and int(uniq[-1]) >= view.n:  # a new item's vector counts too
            factors, uniq = view.factors(uniq), np.arange(uniq.shape[0])
        else:
            factors = model.item_factors
        vector = recalculate_member(factors, model.yty, uniq, w_sum, model.alpha, model.regularization)
        state.ev_rows, state.ev_w = ev_rows, ev_w
        state.vector = vector if vector.any() else None
        state.source = SOURCE_REALTIME
        return True

    def _due(self, view: CatalogView, state: MemberState, kind: int, filters: FilterSpec) -> Due | None:
        """Stage 5b, replenishment (recsvc/engine/replenish.py): the member's bought consumables
        that are due now and pass the call's filters, best first, at most
        ``replenish_max_items``; None when there are none or the call is not a product list
        that excludes purchases. Items bought since the bundle (Redis) are not due."""
        s = self._settings
        if not s.replenish or kind != KIND_PRODUCT or not filters.exclude_purchased or state.vector is None:
            return None
        if state.row is None:
            return None
        rows, days = view.model.due_purchases(state.row, self._clock(), s.replenish_early, s.replenish_late)
        if not rows.shape[0]:
            return None
        excluded = self._excluded_rows(view, filters, state.recent_bought)
        keep = filters.mask(view, rows, excluded) & (view.item_kind[rows] == KIND_PRODUCT)
        if not keep.any():
            return None
        rows, days = rows[keep], days[keep]
        scores = np.asarray(view.model.item_factors[rows], dtype=np.float32) @ state.vector
        order = np.argsort(-scores, kind="stable")[: s.replenish_max_items]
        return Due(rows[order], scores[order], days[order])

    def _render_with_due(
        self,
        into: Any,
        view: CatalogView,
        picks: np.ndarray,
        scores: np.ndarray,
        reasons: list[str],
        source: str,
        due: Due,
        k: int,
    ) -> None:
        """The list of ``k`` with the due items after ``replenish_after`` picks (earlier in a
        shorter list), each with source ``replenish`` and a restock reason."""
        at, n = placement(picks.shape[0], due.rows.shape[0], k, self._settings.replenish_after)
        rest = k - at - n
        texts = [
            f"time to restock: you bought {view.title(r)} {int(d)} days ago"
            for r, d in zip(due.rows[:n].tolist(), due.days[:n].tolist(), strict=True)
        ]
        self._items(into, view, picks[:at], scores[:at], reasons[:at], source)
        self._items(into, view, due.rows[:n], due.scores[:n], texts, SOURCE_REPLENISH)
        self._items(
            into, view, picks[at : at + rest], scores[at : at + rest], reasons[at : at + rest], source
        )

    def _stored_list(
        self, view: CatalogView, state: MemberState, kind: int, k: int, filters: FilterSpec
    ) -> StoredList | None:
        """The member's stored default list (items, scores, reason rows) when the bundle has one
        that this server's settings may use, that covers this call (``StoredListSpec``) and that
        the live catalog has not made stale: every item still listed and in stock, and no new
        item that would score above its last one (else the list is computed live)."""
        model, row = view.model, state.row
        lists = model.member_lists
        if (
            lists is None
            or row is None
            or not lists.spec.covers(kind, k, filters.only_defaults, filters.diversity)
            or not self._lists_usable(lists, model)
        ):
            return None
        items = lists.items[row]
        if items[0] < 0:
            return None
        scores = lists.scores[row]
        if view.live:
            if not view.item_stock_ok[items].all():  # one vectorised look-up of k rows
                return None
            new_rows, new_scores = view.search_new(state.vector, kind)  # type: ignore[arg-type]
            if new_rows.shape[0] and model.neighbours is not None:
                return None  # the list's scores are on the family's scale, not ALS's
            if new_rows.shape[0]:
                beats = new_scores > scores[-1]
                if beats.any() and view.item_stock_ok[new_rows[beats]].any():
                    return None
        return StoredList(items, scores, lists.reasons[row])

    def _lists_usable(self, lists: MemberLists, model: ServedModel) -> bool:
        """Whether this engine's serving settings are the ones ``lists`` were made under; decided
        once per loaded bundle, not per call."""
        usable = self._usable_lists.get(lists)
        if usable is None:
            usable = not lists.spec.mismatches(self._settings, model.hnsw_ef_search)
            self._usable_lists[lists] = usable
        return usable

    def trained_list(
        self, model: ServedModel, row: int, kind: int, k: int, filters: FilterSpec
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        """What ``recommend`` picks for the member at ``row`` when they have no recent events and
        their list is not stored: (items, scores, reason rows, -1 = none), fewer than ``k`` when
        the filters leave fewer; None for a member without a trained vector (cold start). Used by
        training to store the lists (training/member_lists.py)."""
        state = self._trained_state(model, row)
        if state.vector is None:
            return None
        view = self.catalog.view(model)
        excluded = self._excluded_rows(view, filters, state.bought, bought_sorted=state.bought_sorted)
        if model.neighbours is not None:
            return self._family_rank(view, state, kind, k, filters, excluded)
        first = self._first_search(model, state.vector, kind, k, filters, state.bought.shape[0])
        picks, scores = self._rank(view, state.vector, kind, k, filters, excluded, first=first)
        return picks, scores, self._explain(view, picks, state)

    def _family_rank(
        self,
        view: CatalogView,
        state: MemberState,
        kind: int,
        k: int,
        filters: FilterSpec,
        excluded: np.ndarray,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Candidates, rank and explain for the item-item and blend families
        (recsvc/engine/itemknn_source.py): the member's history and recent events scored through
        the neighbour table, blended with the ALS vector's scores as training evaluated it, then
        the same filters and MMR as ALS; reasons name the history item that added most."""
        model = view.model
        neighbours = model.neighbours
        assert neighbours is not None and state.vector is not None
        decay = itemknn_source.decay_to(model, self._clock()) if state.ev_rows.shape[0] else 1.0
        rows, weights = itemknn_source.history_with_events(
            state.hist_rows, state.hist_w, state.ev_rows, state.ev_w, decay
        )
        pool_size, n = self._candidates(k, excluded.shape[0])
        ranked, ranked_scores = itemknn_source.candidates(
            view, neighbours, state.vector, rows, weights, kind, filters, excluded, n, pool_size
        )
        first = (ranked, ranked_scores, len(model.kind_rows[kind]))
        picks, scores = self._rank(
            view, state.vector, kind, k, filters, excluded, first=first, new_items=False
        )
        because = itemknn_source.reason_rows(
            neighbours, picks, rows, weights, self._explain(view, picks, state)
        )
        return picks, scores, because

    def _candidates(self, k: int, excluded: int, drop_row: bool = False) -> tuple[int, int]:
        """(MMR pool size, first ANN request size) for a list of ``k`` with ``excluded`` rows."""
        pool_size = max(4 * k, 50)
        n = max(self._settings.ann_candidates, 2 * pool_size) + excluded + (1 if drop_row else 0)
        return pool_size, n

    def _first_search(
        self, model: ServedModel, vector: np.ndarray, kind: int, k: int, filters: FilterSpec, bought: int
    ) -> Searched:
        """The first candidates for the member's trained vector, searched before their recent
        events are known (the Redis round trip overlaps it)."""
        excluded = bought + len(filters.exclude_item_ids)
        _, n = self._candidates(k, excluded)
        rows, scores = self._search(model, vector, kind, n)
        return rows, scores, n

    @staticmethod
    def _search(model: ServedModel, vector: np.ndarray, kind: int, n: int) -> tuple[np.ndarray, np.ndarray]:
        if n >= len(model.kind_rows[kind]):
            return model.exact_search(vector, kind, n)
        return model.search(vector, kind, n)

    def _excluded_rows(
        self, view: CatalogView, filters: FilterSpec, bought_rows: np.ndarray, bought_sorted: bool = False
    ) -> np.ndarray:
        """Rows no list may hold, ascending and unique. ``bought_sorted``: ``bought_rows`` already
        are (a member's trained purchases, when the bundle stores them so)."""
        if not filters.exclude_item_ids and bought_sorted:
            return bought_rows if filters.exclude_purchased else _NO_ROWS
        parts = []
        if filters.exclude_item_ids:
            r = view.rows(sorted(filters.exclude_item_ids))
            parts.append(r[r >= 0])
        if filters.exclude_purchased and bought_rows.shape[0]:
            parts.append(bought_rows)
        if not parts:
            return _NO_ROWS
        return np.unique(np.concatenate(parts).astype(np.int64))

    def _rank(
        self,
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
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k rows after filters and MMR; widens the candidate set when filters remove too
        many. ``first``: the result of a search already made with ``vector`` (rows, scores, n).
        New items of the live catalog are scored exactly and merged with the ANN's."""
        model = view.model
        total = len(model.kind_rows[kind])
        pool_size, n = self._candidates(k, excluded.shape[0], drop_row is not None)
        if first is not None:
            rows, scores, n = first
        else:
            rows, scores = self._search(model, vector, kind, n)
        # new_items False: ``first`` already holds the new items, scored on its own scale
        new_rows, new_scores = view.search_new(vector, kind) if new_items else (_NO_ROWS, _NO_WEIGHTS)
        while True:
            if new_rows.shape[0]:
                rows, scores = _merged(rows, scores, new_rows, new_scores)
            keep = filters.mask(view, rows, excluded)
            if drop_row is not None:
                keep &= rows != drop_row
            if n >= total or int(np.count_nonzero(keep)) >= pool_size:
                break
            n *= 4
            rows, scores = self._search(model, vector, kind, n)
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
                k,
                filters.diversity,
                _read_only(np.ascontiguousarray(view.item_category[rows], dtype=np.int32)),
                self._settings.max_per_category,
            )
        else:
            picks = mmr_by_rows(
                scores,
                rows,
                model.item_factors,
                model.item_norms,
                k,
                filters.diversity,
                view.item_category,
                self._settings.max_per_category,
            )
        return rows[picks], scores[picks]

    def _popular(
        self,
        into: Any,
        view: CatalogView,
        segment: str,
        channel: str,
        kind: int,
        k: int,
        filters: FilterSpec,
        excluded: np.ndarray,
    ) -> None:
        """The popular lists' items into ``into`` (a response's ``items``), as the live catalog
        leaves them."""
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
                    break
            if len(rows) >= k:
                break
        where = f"{segment} members" if segment != "all" else "members"
        reason = f"popular with {where}"
        self._items(into, view, rows, scores, [reason] * len(rows), SOURCE_POPULAR)

    def _explain(self, view: CatalogView, picks: np.ndarray, state: MemberState) -> np.ndarray:
        """Stage 5: the history row each pick's reason names (-1: none)."""
        return self._reason_rows(view, picks, state.hist_rows, state.hist_w, state.ev_rows, state.ev_w)

    def _reason_rows(
        self,
        view: CatalogView,
        picks: np.ndarray,
        hist_rows: np.ndarray,
        hist_w: np.ndarray,
        ev_rows: np.ndarray,
        ev_w: np.ndarray,
    ) -> np.ndarray:
        """For each pick, the history item whose vector has the largest dot product with the
        pick's vector (-1 for all when the member has no history)."""
        if ev_rows.shape[0]:
            rows = np.concatenate([hist_rows.astype(np.int64), ev_rows])
            weights = np.concatenate([hist_w.astype(np.float32), ev_w])
        else:
            rows, weights = hist_rows, hist_w
        if rows.shape[0] == 0 or picks.shape[0] == 0:
            return np.full(picks.shape[0], -1, dtype=np.int64)
        if rows.shape[0] > _REASON_HISTORY_MAX:
            rows = rows[np.argpartition(-weights, _REASON_HISTORY_MAX - 1)[:_REASON_HISTORY_MAX]]
        rows, picks = rows.astype(np.int64), picks.astype(np.int64)
        if view.new_ids and max(int(rows.max()), int(picks.max())) >= view.n:
            # New items' vectors live in the view: compare over a small gathered copy.
            both = np.concatenate([rows, picks])
            local = np.arange(both.shape[0], dtype=np.int64)
            found = best_history_rows(view.factors(both), local[: rows.shape[0]], local[rows.shape[0] :])
            return rows[np.asarray(found, dtype=np.int64)]
        # An item both in the history and in recent events appears twice: harmless for argmax.
        best: np.ndarray = best_history_rows(view.model.item_factors, rows, picks)
        return best

    @staticmethod
    def _reason_texts(
        view: CatalogView, picks: np.ndarray, because: np.ndarray, state: MemberState
    ) -> list[str]:
        """ "because you bought/viewed <title>" for each reason row; -1: "recommended for you";
        a new item: "new in <category>", ", which you buy" when the member bought in it."""
        bought = set(state.bought.tolist())
        out = [
            f"because you {'bought' if b in bought else 'viewed'} {view.title(b)}"
            if b >= 0
            else "recommended for you"
            for b in because.tolist()
        ]
        if view.new_ids:
            n = view.n
            for i, p in enumerate(np.asarray(picks).tolist()):
                if p >= n:
                    out[i] = _new_reason(view, p, state.bought)
        return out

    def _items(
        self,
        into: Any,
        view: CatalogView,
        rows: np.ndarray | Sequence[int],
        scores: np.ndarray | Sequence[float],
        reasons: Sequence[str],
        source: str,
    ) -> None:
        """Response items for ``rows``, added to ``into`` (a response's ``items``). Each item is
        added with its per-call fields and merged with the item's own, serialized once per
        process (``ServedModel.item_fields``): a third of building every field each call."""
        add, fields, n = into.add, view.item_fields, view.n
        for row, score, reason in zip(
            np.asarray(rows, dtype=np.int64).tolist(),
            np.asarray(scores, dtype=np.float64).tolist(),
            reasons,
            strict=True,
        ):
            add(score=score, reason=reason, source=source if row < n else SOURCE_NEW).MergeFromString(
                fields(row)
            )

    # ---- items -----------------------------------------------------------------------------
    def similar(self, item_id: str, kind: int | None, k: int, filters: FilterSpec) -> Recommendation:
        variant, model = self._models.default()
        view = self.catalog.view(model)
        row = view.row(item_id)
        if row is None:
            raise NotFound(f"item {item_id!r} is not in model {model.version}", reason="ITEM_NOT_FOUND")
        if not view.item_listed[row]:
            raise NotFound(f"item {item_id!r} is delisted", reason="ITEM_DELISTED")
        target_kind = kind or int(view.item_kind[row])
        vector = view.factor_row(row)
        if not np.any(vector):
            resp = recommender_pb2.RecommendResponse(model_version=model.version, variant=variant)
            return Recommendation(response=resp, source=SOURCE_SIMILAR)
        norm = float(view.norms(np.array([row]))[0])
        excluded = self._excluded_rows(view, filters, np.zeros(0, dtype=np.int64))

        def cosine(rows: np.ndarray, scores: np.ndarray) -> np.ndarray:
            return (scores / (view.norms(rows) * norm)).astype(np.float32)

        picks, scores = self._rank(
            view, vector, target_kind, k, filters, excluded, drop_row=row, relevance=cosine
        )
        reason = f"similar to {view.title(row)}"
        resp = recommender_pb2.RecommendResponse(model_version=model.version, variant=variant)
        self._items(resp.items, view, picks, scores, [reason] * picks.shape[0], SOURCE_SIMILAR)
        return Recommendation(response=resp, source=SOURCE_SIMILAR)


def _merged(
    rows: np.ndarray, scores: np.ndarray, new_rows: np.ndarray, new_scores: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """ANN results and the exactly scored new items as one list, best first."""
    rows = np.concatenate([rows.astype(np.int64), new_rows])
    scores = np.concatenate([scores.astype(np.float32), new_scores.astype(np.float32)])
    order = np.argsort(-scores, kind="stable")
    return rows[order], scores[order]


def _read_only(a: np.ndarray) -> np.ndarray:
    a.flags.writeable = False  # the compiled kernels' types include it: as the bundle's arrays
    return a


def _new_reason(view: CatalogView, row: int, bought: np.ndarray) -> str:
    """e.g. "new in Tea, which you buy" (the member bought in the item's category)."""
    category = view.category_name(row)
    cat = int(view.item_category[row])
    bought = bought[(bought >= 0) & (bought < view.item_category.shape[0])]
    if bought.shape[0] and bool((view.item_category[bought.astype(np.int64)] == cat).any()):
        return f"new in {category}, which you buy"
    return f"new in {category}"


class EnginePort:
    """``recsvc.outreach.ports.RecommendationPort`` over the engine, for in-process callers."""

    def __init__(self, engine: RecommendationEngine, models: ModelProvider, default_diversity: float) -> None:
        self._engine = engine
        self._models = models
        self._diversity = default_diversity

    def top_items(
        self, member_id: str, kind: str, k: int, exclude_item_ids: Collection[str]
    ) -> list[common_pb2.RecommendedItem]:
        code = KIND_CODES.get(kind)
        if code is None:
            raise InvalidArgument(f"kind must be 'product' or 'content', got {kind!r}", reason="INVALID_KIND")
        if k < 1:
            raise InvalidArgument(f"k must be >= 1, got {k}", reason="INVALID_K")
        filters = FilterSpec(exclude_item_ids=frozenset(exclude_item_ids), diversity=self._diversity)
        return list(self._engine.recommend(member_id, code, k, "", filters).response.items)

    def segment_members(self, segment: str) -> Iterator[str]:
        _, model = self._models.default()
        code = model.segment_code.get(segment)
        if code is None:
            raise NotFound(
                f"unknown segment {segment!r}; the model has {model.segments}", reason="SEGMENT_NOT_FOUND"
            )
        rows = np.flatnonzero(np.asarray(model.member_segment) == code)
        forgotten = self._engine.forgotten
        for start in range(0, rows.shape[0], 1024):
            for member_id in model.members.ids(rows[start : start + 1024].tolist()):
                if member_id not in forgotten:
                    yield member_id
