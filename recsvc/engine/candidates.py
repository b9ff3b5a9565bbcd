"""Stage 2 of a member call, the candidate source: the member's stored default list when it
covers the call, else a first ANN search with the trained vector.

The stored list (training/member_lists.py) is used only under the serving settings it was made
with (``StoredListSpec``, decided once per loaded bundle), for a call it covers, and when the live
catalog has not made it stale: no new item that would score above its last one, and k of its
picks still available. A list stores ``spare`` picks after its k, in the order MMR chose them: an
item sold out or delisted since is skipped and the next pick moves up, so a sell-out during a live
stream keeps its buyers on the stored path instead of sending them all to the live one. (A live
computation without the item could choose the later picks differently: the stored order is
MMR's with the item taken out.) The search asks for enough candidates that the filters rarely
need a second one (``candidate_sizes``); its result is what ranking (recsvc/engine/ranking.py)
starts from.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from recsvc.catalog.view import CatalogView
from recsvc.engine.filters import FilterSpec
from recsvc.engine.member_state import MemberState
from recsvc.engine.served_model import MemberLists, ServedModel
from recsvc.settings import ServingSettings

# A first ANN search: (item rows, scores, how many were asked for).
Searched = tuple[np.ndarray, np.ndarray, int]


@dataclass(slots=True)
class StoredList:
    """A member's stored default list (training/member_lists.py): item rows, scores, reason rows."""

    items: np.ndarray
    scores: np.ndarray
    reasons: np.ndarray


class StoredLists:
    """Which loaded bundles' stored lists this engine's settings may use, decided once per
    bundle. A plain dict by ``id`` holding the lists themselves (so an id is never reused while
    its entry lives); cleared when it grows past a handful of bundles (model swaps)."""

    _MAX = 8

    def __init__(self, settings: ServingSettings) -> None:
        self._settings = settings
        self._usable: dict[int, tuple[MemberLists, bool]] = {}

    def usable(self, lists: MemberLists, model: ServedModel) -> bool:
        found = self._usable.get(id(lists))
        if found is not None and found[0] is lists:
            return found[1]
        usable = not lists.spec.mismatches(self._settings, model.hnsw_ef_search)
        if len(self._usable) >= self._MAX:
            self._usable = {}
        self._usable[id(lists)] = (lists, usable)
        return usable

    def get(
        self, view: CatalogView, state: MemberState, kind: int, k: int, filters: FilterSpec
    ) -> StoredList | None:
        """The member's stored list (items, scores, reason rows) when there is one this call may
        serve; None: compute the list live."""
        model, row = view.model, state.row
        lists = model.member_lists
        if (
            lists is None
            or row is None
            or not lists.spec.covers(kind, k, filters.only_defaults, filters.diversity)
            or not self.usable(lists, model)
        ):
            return None
        items = lists.items[row]
        if items[0] < 0:
            return None
        k = lists.k
        if view.stored_lists_intact:
            return StoredList(items[:k], lists.scores[row][:k], lists.reasons[row][:k])
        head = items[:k]
        if view.item_stock_ok[head].all():  # one vectorised look-up of k rows
            scores, reasons = lists.scores[row][:k], lists.reasons[row][:k]
        else:  # the spare picks stand in for the unavailable ones, in MMR's order
            stored = items[items >= 0]
            keep = np.flatnonzero(view.item_stock_ok[stored])[:k]
            if keep.shape[0] < k:
                return None
            head, scores, reasons = stored[keep], lists.scores[row][keep], lists.reasons[row][keep]
        new_rows, new_scores = view.search_new(state.vector, kind)  # type: ignore[arg-type]
        if new_rows.shape[0] and (model.neighbours is not None or model.trend is not None):
            return None  # the list's scores are on the family's or the trend's scale, not ALS's
        if new_rows.shape[0]:
            beats = new_scores > scores[-1]
            if beats.any() and view.item_stock_ok[new_rows[beats]].any():
                return None
        return StoredList(head, scores, reasons)


def candidate_sizes(
    settings: ServingSettings, k: int, excluded: int, drop_row: bool = False
) -> tuple[int, int]:
    """(MMR pool size, first ANN request size) for a list of ``k`` with ``excluded`` rows."""
    pool_size = max(4 * k, 50)
    n = max(settings.ann_candidates, 2 * pool_size) + excluded + (1 if drop_row else 0)
    return pool_size, n


def first_search(
    settings: ServingSettings,
    model: ServedModel,
    vector: np.ndarray,
    kind: int,
    k: int,
    filters: FilterSpec,
    bought: int,
) -> Searched:
    """The first candidates for the member's trained vector, searched before their recent events
    are known (the Redis round trip overlaps it)."""
    excluded = bought + len(filters.exclude_item_ids)
    _, n = candidate_sizes(settings, k, excluded)
    rows, scores = search(model, vector, kind, n)
    return rows, scores, n


def search(model: ServedModel, vector: np.ndarray, kind: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Top ``n`` rows of ``kind``: the ANN index, or every item when ``n`` covers them all."""
    if n >= len(model.kind_rows[kind]):
        return model.exact_search(vector, kind, n)
    return model.search(vector, kind, n)
