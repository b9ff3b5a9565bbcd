"""A catalog view moved on by a batch of changes, without building it again.

The common live change is a stock flip, a delisting, a price or a publication time: values of
one item's row. ``advance`` applies such a batch to a copy of the few arrays it touches (a
memory copy each, no Python loop over the catalog) and shares everything else with the previous
view, which stays as it was for calls still reading it. Anything else (a new item, a changed
title, category, brand or kind, featured products: things that move vectors, codes or rendered
fields) returns None, and the caller builds the view whole (``CatalogView``). A view that has no
live change yet is built whole too (its arrays are the bundle's own, of the bundle's types).

The result equals the view ``CatalogView(model, records, now)`` would build, array for array
(tests/test_catalog_delta.py compares the two over random change sequences).
"""

from __future__ import annotations

import copy
from collections.abc import Collection, Mapping
from typing import Any

import numpy as np

from recsvc.bundle import KIND_PRODUCT
from recsvc.catalog.store import ItemRecord
from recsvc.catalog.view import CatalogView, catalog_as_of_ms

# The fields a batch may change to be applied here: each sets one value of one row.
ROW_VALUES = {
    "in_stock": "item_in_stock",
    "listed": "item_listed",
    "price": "item_price",
    "published_at": "item_published_at",
}


def advance(
    view: CatalogView,
    records: Mapping[str, ItemRecord],
    changed: Collection[str],
    now: float,
    version: int,
) -> CatalogView | None:
    """``view`` with the records of the ``changed`` items applied, or None when the batch needs a
    whole build (see the module docstring)."""
    if not view.changed or (view.next_publish is not None and view.next_publish <= now):
        return None  # no live change yet, or a scheduled item's time came: every row moves
    model = view.model
    as_of = catalog_as_of_ms(model)
    updates: list[tuple[int, str, Any]] = []
    for item_id in changed:
        rec = records.get(item_id)
        if rec is None:
            return None  # a record gone: only a full re-read removes records
        row = view.row(item_id)
        if row is None:
            return None  # a new item
        new = _applied(rec, as_of, row < view.n)
        old_rec = view.records.get(item_id)
        old = _applied(old_rec, as_of, row < view.n) if old_rec is not None else {}
        if old.keys() - new.keys():
            return None  # a field no longer applied (the change script never removes one)
        for key, value in new.items():
            if key in old and old[key] == value:
                continue
            if key not in ROW_VALUES:
                return None
            updates.append((row, key, value))
    out = copy.copy(view)  # shares the arrays and caches the batch leaves alone
    out.records = records
    out.version = version
    touched: dict[str, np.ndarray] = {}
    for row, key, value in updates:
        name = ROW_VALUES[key]
        arr = touched.get(name)
        if arr is None:
            arr = touched[name] = getattr(view, name).copy()
            setattr(out, name, arr)
        arr[row] = _value(key, value)
    if not touched:
        return out
    rows = np.array(sorted({row for row, _, _ in updates}), dtype=np.int64)
    visible = view.item_visible.copy()
    stock_ok = np.array(view.item_stock_ok, dtype=bool, copy=True)
    published = out.item_published_at[rows]
    scheduled = published > int(now)
    visible[rows] = out.item_listed[rows] & ~scheduled
    stock_ok[rows] = visible[rows] & (
        out.item_in_stock[rows].astype(bool) | (out.item_kind[rows] != KIND_PRODUCT)
    )
    out.item_visible, out.item_stock_ok = visible, stock_ok
    if scheduled.any():
        first = float(published[scheduled].min())
        out.next_publish = first if view.next_publish is None else min(view.next_publish, first)
    out.live = True
    out.choose_fast_paths()
    return out


def _applied(rec: ItemRecord, as_of: int, in_bundle: bool) -> dict[str, Any]:
    """The fields of ``rec`` a view applies: for a bundle item those changed after its catalog."""
    if not in_bundle:
        return dict(rec.fields)
    return {k: v for k, v in rec.fields.items() if rec.field_ts_ms.get(k, rec.ts_ms) >= as_of}


def _value(key: str, value: Any) -> Any:
    """As ``CatalogView._set`` stores it."""
    if key == "price":
        return float(value)
    if key == "published_at":
        return int(value or 0)
    return bool(value)
