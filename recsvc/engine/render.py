"""The last stage of every call, render: response items from rows, scores, reasons and a source,
and the ids of the items shown (for the impression the response is logged with).

Each item is added with its per-call fields and merged with the item's own, serialized once per
process (``ServedModel.item_entry``; through the live catalog's view only when a live change
touches items' own fields): a third of building every field each call.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from typing import Any

import numpy as np

from recsvc.catalog.view import CatalogView
from recsvc.engine.entries import ItemEntries
from recsvc.engine.replenish import placement
from recsvc.engine.restock import Due

_ITEM_ID = operator.itemgetter(1)  # an entry's item id, read in C
SOURCE_NEW = "new"  # an item created in the live catalog after the bundle was trained
SOURCE_REPLENISH = "replenish"


def items(
    into: Any,
    ids: list[str],
    view: CatalogView,
    rows: np.ndarray | Sequence[int],
    scores: np.ndarray | Sequence[float],
    reasons: Sequence[str],
    source: str,
) -> None:
    """Response items for ``rows`` added to ``into`` (a response's ``items``), their ids to ``ids``."""
    entries = view.entries
    row_list = rows.tolist() if isinstance(rows, np.ndarray) else rows
    got = entries.take(row_list) if isinstance(entries, ItemEntries) else [entries[row] for row in row_list]
    score_list = np.asarray(scores, dtype=np.float64).tolist()
    add = into.add
    # Fields set one by one after the merge: keyword arguments to ``add`` cost more (each call
    # builds a dict of them, then looks every name up again).
    if not view.new_ids:
        for (fields, _), score, reason in zip(got, score_list, reasons, strict=True):
            item = add()
            item.MergeFromString(fields)
            item.score, item.reason, item.source = score, reason, source
    else:
        n = view.n
        for row, (fields, _), score, reason in zip(row_list, got, score_list, reasons, strict=True):
            item = add()
            item.MergeFromString(fields)
            item.score, item.reason, item.source = score, reason, source if row < n else SOURCE_NEW
    ids.extend(map(_ITEM_ID, got))


def items_with_due(
    into: Any,
    ids: list[str],
    view: CatalogView,
    picks: np.ndarray,
    scores: np.ndarray,
    reasons: list[str],
    source: str,
    due: Due,
    k: int,
    after: int,
) -> None:
    """The list of ``k`` with the due items after ``after`` picks (earlier in a shorter list),
    each with source ``replenish`` and a restock reason."""
    at, n = placement(picks.shape[0], due.rows.shape[0], k, after)
    rest = k - at - n
    titles = view.titles
    texts = [
        f"time to restock: you bought {titles[r]} {int(d)} days ago"
        for r, d in zip(due.rows[:n].tolist(), due.days[:n].tolist(), strict=True)
    ]
    items(into, ids, view, picks[:at], scores[:at], reasons[:at], source)
    items(into, ids, view, due.rows[:n], due.scores[:n], texts, SOURCE_REPLENISH)
    items(into, ids, view, picks[at : at + rest], scores[at : at + rest], reasons[at : at + rest], source)
