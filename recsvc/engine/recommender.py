"""Recommendations for one member or one item, on whichever model the member's variant serves.

``RecommendationEngine.recommend`` reads as its stages, one module each:

1. member state (``member_state.trained_state``): bundle row, trained history and purchases,
   vector; none: cold start, served the popular lists of the member's segment and channel;
2. candidate source (``candidates``): the member's stored default list when it covers the call,
   else a first FAISS search with the trained vector, overlapping the Redis read of recent events;
3. member state updated with recent events (``member_state.add_recent``: vector recomputed,
   recent purchases excluded; drops candidates found for the old state);
4. filter and rank (``ranking``: vectorised filters, widening the search when they remove too
   many, then MMR; a bundle whose family is item-item or the blend adds the item-item candidates
   of the member's history and recent events to the first search's in ``family_ranking``);
5. explain (``explain``: the history item that contributed most to each pick), and the bought
   consumables due again (``restock``);
6. render (``render``): response items, and the ids shown for the impression.

Training stores the lists with the same stages (``trained_list``). Every stage reads items through
the live catalog's view of the model (``recsvc.catalog``): live stock, prices, categories, brands,
delistings, publication times and new items, which come back with ``source`` "new". The view
tells the stages when nothing live touches what they read, so a catalog without such changes
costs the hot path nothing (``CatalogView.titles``, ``entries``, ``stored_lists_intact``).

``EnginePort`` implements ``recsvc.outreach.ports.RecommendationPort`` for in-process callers
(outreach).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Container, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from recsvc.catalog.live import StaticCatalog
from recsvc.catalog.view import CatalogView
from recsvc.engine import explain, family_ranking, ranking, render, restock
from recsvc.engine.candidates import Searched, StoredList, StoredLists, first_search
from recsvc.engine.empty_arrays import NO_ROWS
from recsvc.engine.filters import FilterSpec
from recsvc.engine.member_state import (
    SOURCE_PERSONALIZED,
    SOURCE_REALTIME,
    MemberState,
    add_recent,
    trained_state,
)
from recsvc.engine.served_model import KIND_CODES, ServedModel
from recsvc.errors import InvalidArgument, NotFound
from recsvc.realtime import RealtimeStore
from recsvc.settings import ServingSettings
from recsvc.v1 import common_pb2, recommender_pb2

__all__ = [
    "SOURCE_NEW",
    "SOURCE_PERSONALIZED",
    "SOURCE_POPULAR",
    "SOURCE_REALTIME",
    "SOURCE_REPLENISH",
    "SOURCE_SIMILAR",
    "EnginePort",
    "ModelProvider",
    "Recommendation",
    "RecommendationEngine",
    "SingleModel",
]

SOURCE_POPULAR = "popular"
SOURCE_SIMILAR = "similar"
SOURCE_NEW = render.SOURCE_NEW
SOURCE_REPLENISH = render.SOURCE_REPLENISH


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


@dataclass(slots=True)
class Recommendation:
    response: recommender_pb2.RecommendResponse
    source: str  # the source of the list as a whole, for metrics
    stored: bool = False  # read from the bundle's stored default lists (no search), for metrics
    item_ids: list[str] = field(default_factory=list)  # the response's items' ids, in order


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
        self._stored = StoredLists(settings)

    # ---- members ---------------------------------------------------------------------------
    def recommend(
        self,
        member_id: str,
        kind: int,
        k: int,
        channel: str,
        filters: FilterSpec,
        models: ModelProvider | None = None,
    ) -> Recommendation:
        """The stages in order (module docstring). Redis is asked for the recent events first and
        read only after the candidate source, so its round trip overlaps the search. ``models``:
        the models to choose from instead of the ones serving now (a batch's fixed set)."""
        s = self._settings
        variant, model = (models or self._models).for_member(member_id)
        view = self.catalog.view(model)
        row = None if member_id in self.forgotten else model.member_row(member_id)
        pending = self._realtime.start_recent(member_id) if self._realtime is not None else None
        try:
            state = trained_state(model, row)
            candidates = self._candidate_source(view, state, kind, k, filters)
        finally:
            activity = pending.result() if pending is not None else None
        if activity is not None:
            state.answered = True
            if not (activity.events or activity.purchased):
                pass  # nothing recent: the trained state and its candidates stand
            elif add_recent(view, state, activity, self._clock):
                candidates = None  # found for the trained vector or purchases: not this member's now
            elif isinstance(candidates, StoredList) and activity.purchased:
                candidates = None

        resp = recommender_pb2.RecommendResponse(
            model_version=model.version,
            variant=variant,
            realtime=state.answered,
            member_segment=state.segment,
        )
        shown: list[str] = []
        if state.vector is None:
            excluded = ranking.excluded_rows(view, filters, *state.excluded(filters))
            top, top_scores = ranking.popular(view, state.segment, channel, kind, k, filters, excluded)
            render.items(
                resp.items,
                shown,
                view,
                top,
                top_scores,
                _popular_reasons(state.segment, top_scores),
                SOURCE_POPULAR,
            )
            return Recommendation(resp, SOURCE_POPULAR, item_ids=shown)
        if isinstance(candidates, StoredList):
            picks, scores, because = candidates.items, candidates.scores, candidates.reasons
        else:  # ranked here, without the rows no list may hold (a stored list already is)
            excluded = ranking.excluded_rows(view, filters, *state.excluded(filters))
            if model.neighbours is not None:
                picks, scores, because = family_ranking.rank(
                    s, view, state, kind, k, filters, excluded, self._clock, first=candidates
                )
            else:
                picks, scores = ranking.rank(
                    s, view, state.vector, kind, k, filters, excluded, first=candidates
                )
                because = explain.explain(view, picks, state)
        reasons = explain.reason_texts(view, picks, because, state, scores)
        due = restock.due(s, view, state, kind, filters, self._clock)
        if due is None:
            render.items(resp.items, shown, view, picks, scores, reasons, state.source)
        else:
            render.items_with_due(
                resp.items, shown, view, picks, scores, reasons, state.source, due, k, s.replenish_after
            )
        return Recommendation(resp, state.source, isinstance(candidates, StoredList), shown)

    def _candidate_source(
        self, view: CatalogView, state: MemberState, kind: int, k: int, filters: FilterSpec
    ) -> StoredList | Searched | None:
        """The member's stored list when it covers this call, else the first search with the
        trained vector; None for a member without one (popular lists)."""
        if state.vector is None:
            return None
        stored = self._stored.get(view, state, kind, k, filters)
        if stored is not None:
            return stored
        # item-item and blend too: their candidates include the ALS search's best (family_ranking)
        return self._first_search(view.model, state.vector, kind, k, filters, state.excluded_count(filters))

    def _first_search(
        self, model: ServedModel, vector: np.ndarray, kind: int, k: int, filters: FilterSpec, bought: int
    ) -> Searched:
        return first_search(self._settings, model, vector, kind, k, filters, bought)

    def trained_list(
        self, model: ServedModel, row: int, kind: int, k: int, filters: FilterSpec, spare: int = 0
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        """What ``recommend`` picks for the member at ``row`` when they have no recent events and
        their list is not stored: (items, scores, reason rows, -1 = none), fewer than ``k`` when
        the filters leave fewer; None for a member without a trained vector (cold start). Used by
        training to store the lists (training/member_lists.py)."""
        state = trained_state(model, row)
        if state.vector is None:
            return None
        view = self.catalog.view(model)
        excluded = ranking.excluded_rows(view, filters, *state.excluded(filters))
        if model.neighbours is not None:
            return family_ranking.rank(
                self._settings, view, state, kind, k, filters, excluded, self._clock, spare=spare
            )
        first = self._first_search(model, state.vector, kind, k, filters, state.excluded_count(filters))
        picks, scores = ranking.rank(
            self._settings, view, state.vector, kind, k, filters, excluded, first=first, spare=spare
        )
        return picks, scores, explain.explain(view, picks, state)

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
        excluded = ranking.excluded_rows(view, filters, NO_ROWS)

        def cosine(rows: np.ndarray, scores: np.ndarray) -> np.ndarray:
            # float32 rounding puts two equal vectors (new items of one category) at 1.0000001
            return np.clip(scores / (view.norms(rows) * norm), -1.0, 1.0).astype(np.float32)

        picks, scores = ranking.rank(
            self._settings,
            view,
            vector,
            target_kind,
            k,
            filters,
            excluded,
            drop_row=row,
            relevance=cosine,
            trend=False,
        )
        reason = f"similar to {view.title(row)}"
        resp = recommender_pb2.RecommendResponse(model_version=model.version, variant=variant)
        shown: list[str] = []
        render.items(resp.items, shown, view, picks, scores, [reason] * picks.shape[0], SOURCE_SIMILAR)
        return Recommendation(resp, SOURCE_SIMILAR, item_ids=shown)


def _popular_reasons(segment: str, scores: list[float]) -> list[str]:
    where = f"{segment} members" if segment != "all" else "members"
    # score 0: beyond the popular lists (ranking.popular's tail), nothing counted recently
    return [f"popular with {where}" if sc > 0 else "more from the catalog" for sc in scores]


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
