"""A catalog view moved on by a batch of changes, without building it again.

A whole build (``CatalogView``) re-applies every live record in a Python loop: most of a second
of CPU per process at 100k records, holding the GIL the serving threads need. ``advance`` applies
one batch instead, to copies of what the batch touches, and shares everything else with the
previous view, which stays as it was for calls still reading it:

- row values (stock, listing, price, publication time): a copy of each array they touch and a
  write per changed row, no Python loop over the catalog;
- new items: the arrays grown by their rows (new items take rows in creation order, so a batch's
  new items come after every item the view has), their vectors and the per-kind sets of new
  items rebuilt;
- titles, categories, brands and featured products: codes, titles and the starting vectors of
  the new items they move;
- a scheduled item's time coming: the visibility arrays computed again (vectorised).

Anything else returns None and the caller builds the view whole: a record gone (only a full
re-read removes records), a field no longer applied, a kind changed, a new item created before
one the view has (a record written without its creation version), and a view that has no live
change yet (its arrays are the bundle's own, of the bundle's types).

The result equals the view ``CatalogView(model, records, now)`` would build, array for array
(tests/catalog/test_catalog_delta.py compares the two over random change sequences).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Collection, Mapping
from typing import Any

import numpy as np

from recsvc.bundle import KIND_CONTENT, KIND_PRODUCT
from recsvc.catalog.store import ItemRecord
from recsvc.catalog.view import WRITTEN_ARRAYS, CatalogView, GroupMeans, catalog_as_of_ms, group_means
from recsvc.engine.served_model import KIND_CODES

# The fields a batch may change with a write per row: each sets one value of one row.
ROW_VALUES = {
    "in_stock": "item_in_stock",
    "listed": "item_listed",
    "price": "item_price",
    "published_at": "item_published_at",
}
# Fields that move codes, rendered fields or a new item's starting vector.
DESCRIPTIVE = frozenset({"title", "category", "brand", "featured_item_ids"})


def advance(
    view: CatalogView,
    records: Mapping[str, ItemRecord],
    changed: Collection[str],
    now: float,
    version: int,
    means: GroupMeans | Callable[[], GroupMeans] | None = None,
) -> CatalogView | None:
    """``view`` with the records of the ``changed`` items applied, or None when the batch needs a
    whole build (see the module docstring). ``means``: the model's ``GroupMeans``, or a callable
    giving it (only asked for when new items need vectors)."""
    if not view.changed:
        return None
    model = view.model
    as_of = catalog_as_of_ms(model)
    values: list[tuple[int, str, Any]] = []
    described: list[tuple[int, dict[str, Any]]] = []
    added: list[tuple[int, str, dict[str, Any]]] = []
    for item_id in changed:
        rec = records.get(item_id)
        if rec is None:
            return None
        row = view.row(item_id)
        if row is None:
            if rec.fields.get("kind") in KIND_CODES:
                added.append((rec.created, item_id, rec.fields))
            continue
        new = _applied(rec, as_of, row < view.n)
        old_rec = view.records.get(item_id)
        old = _applied(old_rec, as_of, row < view.n) if old_rec is not None else {}
        if old.keys() - new.keys():
            return None
        moved = {k: v for k, v in new.items() if k not in old or old[k] != v}
        for key, value in moved.items():
            if key in ROW_VALUES:
                values.append((row, key, value))
            elif key not in DESCRIPTIVE:
                return None  # a kind changed
        if moved.keys() & DESCRIPTIVE:
            described.append((row, new))
    added.sort(key=lambda r: (r[0], r[1]))
    if added and view.last_new is not None and (added[0][0], added[0][1]) <= view.last_new:
        return None
    out = copy.copy(view)  # shares the arrays and caches the batch leaves alone
    out.records = records
    out.version = version
    due = view.next_publish is not None and view.next_publish <= now
    if added or described:
        _describe(out, view, added, described, means)
    elif values:
        for name in {ROW_VALUES[key] for _, key, _ in values}:
            setattr(out, name, getattr(view, name).copy())
    for row, key, value in values:
        getattr(out, ROW_VALUES[key])[row] = _value(key, value)
    if added or described or due:
        out.set_visibility(now)
    elif values:
        _visibility_of_rows(out, view, np.array(sorted({row for row, _, _ in values}), dtype=np.int64), now)
    else:
        return out
    out.live = True
    out.choose_fast_paths()
    return out


def _describe(
    out: CatalogView,
    view: CatalogView,
    added: list[tuple[int, str, dict[str, Any]]],
    described: list[tuple[int, dict[str, Any]]],
    means: GroupMeans | Callable[[], GroupMeans] | None,
) -> None:
    """New items and descriptive changes applied to ``out``: every array copied (grown by the
    new rows), the code tables and per-item maps copied, the moved vectors set again."""
    n, total = view.n, view.n + len(view.new_ids) + len(added)
    for name, fill in WRITTEN_ARRAYS.items():
        arr = getattr(view, name)
        grown = np.full(total, fill, dtype=arr.dtype)
        grown[: arr.shape[0]] = arr
        setattr(out, name, grown)
    out.categories, out.brands = list(view.categories), list(view.brands)
    out.category_code, out.brand_code = dict(view.category_code), dict(view.brand_code)
    out.titles_override = dict(view.titles_override)
    out.new_ids, out.new_row, out.new_featured = (
        list(view.new_ids),
        dict(view.new_row),
        dict(view.new_featured),
    )
    first = n + len(view.new_ids)
    for j, (_, item_id, fields) in enumerate(added):
        out.add_item(first + j, item_id, fields)
    if added:
        out.last_new = (added[-1][0], added[-1][1])
    revector = set(range(first, total))
    for row, fields in described:
        out.set_fields(row, {k: v for k, v in fields.items() if k in ("category", "brand")})
        out.set_title(row, fields)
        if row >= n:
            out.set_featured(row, fields.get("featured_item_ids"))
            revector.add(row)
    # New content is placed at the products it features: when those move, it moves too.
    moved_products = {out.item_id(r) for r in revector if int(out.item_kind[r]) != KIND_CONTENT}
    if moved_products:
        revector.update(r for r, feat in out.new_featured.items() if moved_products.intersection(feat))
    out.new_factors = np.zeros((total - n, view.new_factors.shape[1]), dtype=np.float32)
    out.new_factors[: view.new_factors.shape[0]] = view.new_factors
    if revector:
        out.set_vectors(revector, group_means(means, out.model))
    out.index_new()
    # Read-only like the view's before: the compiled kernels are typed by their arrays' flags.
    out.item_category.flags.writeable = False


def _visibility_of_rows(out: CatalogView, view: CatalogView, rows: np.ndarray, now: float) -> None:
    """The visibility arrays moved on at ``rows`` only."""
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


def _applied(rec: ItemRecord, as_of: int, in_bundle: bool) -> dict[str, Any]:
    """The fields of ``rec`` a view applies (read-only): for a bundle item those changed after
    its catalog."""
    return rec.fresh(as_of) if in_bundle else rec.fields


def _value(key: str, value: Any) -> Any:
    """As ``CatalogView.set_fields`` stores it."""
    if key == "price":
        return float(value)
    if key == "published_at":
        return int(value or 0)
    return bool(value)
