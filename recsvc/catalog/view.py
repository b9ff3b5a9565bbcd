"""One loaded bundle seen through the live catalog: the per-item arrays the engine filters and
ranks on, with every live change applied, and the new items with their vectors.

A ``CatalogView`` is immutable and built off the request path (by the catalog follower's thread,
or once per newly loaded bundle); the engine reads ``view_for(model)`` once per call, so a call
sees one consistent catalog. Item rows ``0..n-1`` are the bundle's; new items (created live, not
in the bundle) get rows ``n..n+m-1``, with their vectors kept here (the bundle's factors are
read-only memory maps shared between processes).

Retirement: a change to a trained item older than the bundle's catalog (manifest
``catalog_as_of``, else ``created_at``) is not applied: that bundle was trained on a catalog that
already had it. Newer changes, new items not in the bundle, and delistings (which no catalog file
holds: ``store.NEVER_RETIRED``) stay in force.
"""

from __future__ import annotations

import logging
import time
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import numpy as np

from recsvc.bundle import KIND_CONTENT, KIND_NAMES, KIND_PRODUCT
from recsvc.catalog.store import ItemRecord
from recsvc.engine import kernels
from recsvc.engine.empty_arrays import NO_ROWS, NO_WEIGHTS
from recsvc.engine.entries import ItemEntries
from recsvc.engine.served_model import KIND_CODES, ServedModel
from recsvc.v1 import common_pb2

log = logging.getLogger(__name__)

_PB_KIND = {KIND_PRODUCT: common_pb2.PRODUCT, KIND_CONTENT: common_pb2.CONTENT}
# The per-item arrays live fields are written into, with the value a new item's row starts at.
WRITTEN_ARRAYS: dict[str, Any] = {
    "item_kind": KIND_PRODUCT,
    "item_category": -1,
    "item_brand": -1,
    "item_price": 0.0,
    "item_in_stock": True,
    "item_published_at": 0,
    "item_listed": True,
}
# A trained item's fields shown in its response entry: live changes to them override its title
# (and so its entry, ``titles_override``).
RENDERED = frozenset({"title", "category", "brand", "kind"})
# A view's per-item arrays (row -> live value), the ones filters and ranking read: those, and
# what is shown and what ``in_stock_only`` keeps, derived from them (``set_visibility``).
ITEM_ARRAYS = (*WRITTEN_ARRAYS, "item_visible", "item_stock_ok")


def catalog_as_of_ms(model: ServedModel) -> int:
    """When the bundle's catalog was read (ms since the epoch): changes before it are retired."""
    raw = getattr(model.manifest, "catalog_as_of", None) or model.manifest.created_at
    try:
        ts = datetime.fromisoformat(str(raw))
    except ValueError:
        return 0
    if ts.tzinfo is None:
        ts = ts.replace(tzinfo=UTC)
    return int(ts.timestamp() * 1000)


class GroupMeans:
    """The vector a new item starts with (``CatalogView.new_vector``), per (kind, category, brand)
    and per (kind, category), computed once per bundle. Direction: the sum of the category's
    trained vectors, each weighted by its length (ALS gives items with more interactions longer
    vectors, so the sellers count most), the brand's own products counting ``BRAND_WEIGHT`` times;
    length: the average of the category's ``TOP`` longest vectors (its best sellers'). A new
    product is thus shown to the members who buy its category, leaning to its brand's buyers.

    Why the category and not the brand alone: a brand with few trained products or few sales
    has short, scattered vectors, and a vector built from them alone reached almost no one. Why
    every seller and not the top few: at the same reach among members who do not buy the
    category, the weighted sum reaches more of those who do (bench/experiments/new_product_reach.py,
    docs/operations.md "New items"). A plain unweighted mean would be short and dominated by the
    long tail: scores are inner products.

    ``best_sellers=True`` is the quieter rule training uses for products published lately without
    interactions (``training.coldstart.fill_new_products``): the mean direction of the group's
    ``TOP`` longest vectors at their average length, (category, brand) else category. The
    category rule placed in the evaluation fit cost 11-30 % of holdout NDCG@10 on generated data
    (few buyers of those products in the holdout), the best sellers' rule about 2 %: a retrain
    keeps a launch recommendable, and the live catalog pushes launches created since."""

    TOP = 5
    BRAND_WEIGHT = 2.0

    def __init__(
        self,
        f: np.ndarray,
        kind_a: np.ndarray,
        cat_a: np.ndarray,
        brand_a: np.ndarray,
        trained: np.ndarray,
        *,
        best_sellers: bool = False,
    ) -> None:
        """From item arrays (``trained``: the rows with interactions): a served bundle's
        (:meth:`of_model`), or a training run's (with ``best_sellers``, the quieter rule)."""
        kind = np.asarray(kind_a, dtype=np.int64)
        cat = np.asarray(cat_a, dtype=np.int64)
        brand = np.asarray(brand_a, dtype=np.int64)
        n_b = int(brand.max(initial=0)) + 2
        n_c = int(cat.max(initial=0)) + 2
        self._n_b, self._n_c = n_b, n_c
        self.by_brand: dict[int, np.ndarray] = {}
        self.by_category: dict[int, np.ndarray] = {}
        rows = np.flatnonzero(np.asarray(trained, dtype=bool))
        if rows.shape[0] == 0:
            return
        if best_sellers:
            self.by_brand = self._top_means(f, rows, (kind * n_c + cat) * n_b + brand)
            self.by_category = self._top_means(f, rows, kind * n_c + cat)
            return
        vectors = np.asarray(f[rows], dtype=np.float64)
        norms = np.linalg.norm(vectors, axis=1)
        weighted = vectors * norms[:, None]
        cat_key = kind[rows] * n_c + cat[rows]
        brand_key = cat_key * n_b + brand[rows]
        cats, cat_of = np.unique(cat_key, return_inverse=True)
        cat_sum = np.zeros((cats.shape[0], f.shape[1]), dtype=np.float64)
        np.add.at(cat_sum, cat_of, weighted)
        length = self._top_length(norms, cat_of, cats.shape[0])
        brands, first, brand_of = np.unique(brand_key, return_index=True, return_inverse=True)
        brand_sum = np.zeros((brands.shape[0], f.shape[1]), dtype=np.float64)
        np.add.at(brand_sum, brand_of, weighted)
        brand_cat = cat_of[first]  # each brand group's category
        by_cat = self._rescale(cat_sum, length)
        by_brand = self._rescale(
            cat_sum[brand_cat] + (self.BRAND_WEIGHT - 1.0) * brand_sum, length[brand_cat]
        )
        self.by_category = {int(k): by_cat[i] for i, k in enumerate(cats.tolist())}
        self.by_brand = {int(k): by_brand[i] for i, k in enumerate(brands.tolist())}

    @classmethod
    def of_model(cls, model: ServedModel) -> GroupMeans:
        f = model.item_factors
        trained = np.asarray(model.item_norms) > 0
        trained &= np.asarray(np.abs(f).sum(axis=1) > 0)
        return cls(f, model.item_kind, model.item_category, model.item_brand, trained)

    @classmethod
    def _top(cls, norms: np.ndarray, group: np.ndarray, n_groups: int) -> np.ndarray:
        """The positions of each group's ``TOP`` longest vectors, by group, longest first."""
        order = np.lexsort((-norms, group))
        sorted_group = group[order]
        start = np.searchsorted(sorted_group, np.arange(n_groups))
        return order[np.arange(order.shape[0]) - start[sorted_group] < cls.TOP]

    @staticmethod
    def _mean_length(norms: np.ndarray, group: np.ndarray, top: np.ndarray, n_groups: int) -> np.ndarray:
        """Per group, the average length of the vectors at ``top``."""
        counts = np.bincount(group[top], minlength=n_groups).astype(np.float64)
        total = np.bincount(group[top], weights=norms[top], minlength=n_groups)
        return total / np.maximum(counts, 1.0)

    @classmethod
    def _top_length(cls, norms: np.ndarray, group: np.ndarray, n_groups: int) -> np.ndarray:
        """Per group, the average length of its ``TOP`` longest vectors."""
        return cls._mean_length(norms, group, cls._top(norms, group, n_groups), n_groups)

    @classmethod
    def _top_means(cls, f: np.ndarray, rows: np.ndarray, key: np.ndarray) -> dict[int, np.ndarray]:
        """Per group of ``key``: the mean direction of its ``TOP`` longest vectors, at their
        average length."""
        vectors = np.asarray(f[rows], dtype=np.float64)
        norms = np.linalg.norm(vectors, axis=1)
        groups, inverse = np.unique(key[rows], return_inverse=True)
        n_groups = groups.shape[0]
        top = cls._top(norms, inverse, n_groups)
        sums = np.zeros((n_groups, f.shape[1]), dtype=np.float64)
        np.add.at(sums, inverse[top], vectors[top])
        means = cls._rescale(sums, cls._mean_length(norms, inverse, top, n_groups))
        return {int(k): means[i] for i, k in enumerate(groups.tolist())}

    @staticmethod
    def _rescale(sums: np.ndarray, length: np.ndarray) -> np.ndarray:
        size = np.linalg.norm(sums, axis=1)
        scale = np.divide(length, size, out=np.zeros_like(size), where=size > 0)
        return (sums * scale[:, None]).astype(np.float32)

    def vector(self, kind: int, category: int | None, brand: int | None) -> np.ndarray | None:
        if category is None:
            return None
        # Python ints: codes read from uint8/int32 arrays would overflow in the key arithmetic.
        kind, category = int(kind), int(category)
        brand = None if brand is None else int(brand)
        # a brand code no trained array holds would alias the next category's key
        if brand is not None and -1 <= brand < self._n_b - 1:
            found = self.by_brand.get((kind * self._n_c + category) * self._n_b + brand)
            if found is not None:
                return found
        return self.by_category.get(kind * self._n_c + category)


def group_means(means: GroupMeans | Callable[[], GroupMeans] | None, model: ServedModel) -> GroupMeans:
    """The starting vectors' table: ``means`` as given, asked of a provider (the owner's cached
    one: computed only when new items need it), or computed here."""
    if isinstance(means, GroupMeans):
        return means
    return means() if means is not None else GroupMeans.of_model(model)


class _LiveTitles(Sequence[str]):
    """A view's titles by row when live changes rename items or add new ones."""

    def __init__(self, view: CatalogView) -> None:
        self._view = view

    def __getitem__(self, row: int) -> str:  # type: ignore[override]
        return self._view.title(row)

    def __len__(self) -> int:
        return self._view.n + len(self._view.new_ids)


class CatalogView:
    """The arrays the engine uses (``item_*`` by row, ``category_code``/``brand_code``) and the
    new items, for one ``ServedModel`` and one state of the live catalog."""

    def __init__(
        self,
        model: ServedModel,
        records: Mapping[str, ItemRecord] | None = None,
        now: float | None = None,
        means: GroupMeans | Callable[[], GroupMeans] | None = None,
        version: int = 0,
    ) -> None:
        now = time.time() if now is None else now
        self._model = weakref.ref(model)
        self.version = version
        self.n = n = len(model.items)
        self.categories: list[str] = list(model.categories)
        self.brands: list[str] = list(model.brands)
        self.category_code: dict[str, int] = dict(model.category_code)
        self.brand_code: dict[str, int] = dict(model.brand_code)
        self.titles_override: dict[int, str] = {}
        self.new_ids: list[str] = []
        self.new_row: dict[str, int] = {}
        self.new_featured: dict[int, list[str]] = {}
        self.records: Mapping[str, ItemRecord] = records or {}
        records = records or {}
        as_of = catalog_as_of_ms(model)
        # Which records touch this bundle's items (with changes newer than its catalog), which are new.
        bundle_changes: list[tuple[int, dict[str, Any]]] = []
        new_records: list[tuple[int, str, dict[str, Any]]] = []
        if records:
            pairs = list(records.items())
            rows = model.items.rows([item_id for item_id, _ in pairs])
            for (item_id, rec), row in zip(pairs, rows.tolist(), strict=True):
                if row >= 0:
                    fresh = rec.fresh(as_of)
                    if fresh:
                        bundle_changes.append((row, fresh))
                elif rec.fields.get("kind") in KIND_CODES:
                    new_records.append((rec.created, item_id, rec.fields))
        # In creation order, so a batch of new items takes the next rows (``delta.advance``).
        new_records.sort(key=lambda r: (r[0], r[1]))
        self.last_new: tuple[int, str] | None = new_records[-1][:2] if new_records else None
        m = len(new_records)
        total = n + m
        self.changed = bool(bundle_changes or new_records)

        def grow(arr: np.ndarray, dtype: Any, fill: Any) -> np.ndarray:
            out = np.full(total, fill, dtype=dtype)
            out[:n] = arr
            return out

        if self.changed:
            self.item_kind = grow(model.item_kind, np.uint8, KIND_PRODUCT)
            self.item_category = grow(model.item_category, np.int32, -1)
            self.item_brand = grow(model.item_brand, np.int32, -1)
            self.item_price = grow(model.item_price, np.float32, 0.0)
            self.item_in_stock = grow(model.item_in_stock, bool, True)
            self.item_published_at = grow(model.bundle.arrays["item_published_at"], np.int64, 0)
            self.item_listed = np.ones(total, dtype=bool)
        else:
            self.item_kind = np.asarray(model.item_kind)
            self.item_category = np.asarray(model.item_category)
            self.item_brand = np.asarray(model.item_brand)
            self.item_price = np.asarray(model.item_price)
            self.item_in_stock = np.asarray(model.item_in_stock)
            self.item_published_at = np.asarray(model.bundle.arrays["item_published_at"])
            self.item_listed = np.ones(total, dtype=bool)
        for row, fields in bundle_changes:
            self.set_fields(row, fields)
            self.set_title(row, fields)
        for j, (_, item_id, fields) in enumerate(new_records):
            self.add_item(n + j, item_id, fields)
        self.set_visibility(now)
        self.new_factors = np.zeros((m, model.factors), dtype=np.float32)
        if m:
            self.set_vectors(range(n, total), group_means(means, model))
        self.index_new()
        # The compiled kernels are typed by their arrays' flags too: read-only like the bundle's
        # memory maps, so no new machine code is compiled (seconds) when the first change arrives.
        self.item_category.flags.writeable = False
        if self.live:
            kernels.warm_up(model.item_factors, model.item_norms, self.item_category, self.item_stock_ok)
        self.choose_fast_paths()

    @property
    def model(self) -> ServedModel:
        """The bundle this view shows. Held weakly: views are cached per model in weak-keyed maps
        (``LiveCatalog``), and a value that held its key would keep every swapped-out bundle, and
        its memory, alive for good. A call holds its model while it uses the view."""
        model = self._model()
        if model is None:
            raise RuntimeError("the model of this catalog view was unloaded")
        return model

    def set_visibility(self, now: float) -> None:
        """What is shown at ``now``: listed and published; and what ``in_stock_only`` keeps:
        shown, and in stock unless not a product."""
        published = self.item_published_at
        scheduled = published > int(now)
        self.item_visible: np.ndarray = self.item_listed & ~scheduled
        future = published[scheduled]
        self.next_publish: float | None = float(future.min()) if future.shape[0] else None
        if self.changed or scheduled.any():
            self.item_stock_ok: np.ndarray = self.item_visible & (
                self.item_in_stock.astype(bool) | (self.item_kind != KIND_PRODUCT)
            )
        else:
            self.item_stock_ok = self.model.item_stock_ok
        self.live = self.changed or bool(scheduled.any())

    def choose_fast_paths(self) -> None:
        """What the hot path reads per item, chosen once per view: the bundle's own titles and
        serialized items when no live change touches any of them (no per-row check then), else
        the checking methods. And whether a stored member list can have gone stale: only when a
        bundle item the bundle has as available (``model.item_stock_ok``) is not available here,
        or a new item exists; else the per-call check is skipped (``stored_lists_intact``)."""
        plain = not self.titles_override and not self.new_ids
        # Subscripted per item (``titles[row]``, ``entries[row]``): no call for the bundle's own.
        self.titles: Sequence[str] = self.model.titles if plain else _LiveTitles(self)
        self.entries: Mapping[int, tuple[bytes, str]] = (
            self.model.item_entries if plain else ItemEntries(self._build_entry)
        )
        bundle_ok = np.asarray(self.model.item_stock_ok, dtype=bool)
        self.stored_lists_intact: bool = not self.live or (
            not self.new_ids and not bool((bundle_ok & ~self.item_stock_ok[: self.n]).any())
        )

    # ---- building --------------------------------------------------------------------------
    def _code(self, names: list[str], codes: dict[str, int], name: Any) -> int:
        name = str(name)
        code = codes.get(name)
        if code is None:
            code = codes[name] = len(names)
            names.append(name)
        return code

    def set_fields(self, row: int, fields: Mapping[str, Any]) -> None:
        for key, value in fields.items():
            if key == "kind":
                self.item_kind[row] = KIND_CODES.get(str(value), KIND_PRODUCT)
            elif key == "category":
                self.item_category[row] = self._code(self.categories, self.category_code, value)
            elif key == "brand":
                self.item_brand[row] = self._code(self.brands, self.brand_code, value) if value else -1
            elif key == "price":
                self.item_price[row] = float(value)
            elif key == "in_stock":
                self.item_in_stock[row] = bool(value)
            elif key == "published_at":
                self.item_published_at[row] = int(value or 0)
            elif key == "listed":
                self.item_listed[row] = bool(value)

    def add_item(self, row: int, item_id: str, fields: Mapping[str, Any]) -> None:
        """A new item at ``row`` (the arrays already have the row)."""
        self.new_ids.append(item_id)
        self.new_row[item_id] = row
        self.set_fields(row, fields)
        self.set_title(row, fields)
        self.set_featured(row, fields.get("featured_item_ids"))

    def set_title(self, row: int, fields: Mapping[str, Any]) -> None:
        """``row``'s title as its live ``fields`` give it: always for a new item (its id when it
        has none), for a trained one when they touch what its response entry shows."""
        if row >= self.n:
            self.titles_override[row] = str(fields.get("title", self.item_id(row)))
        elif fields.keys() & RENDERED:
            self.titles_override[row] = str(fields.get("title", self.model.titles[row]))

    def set_featured(self, row: int, featured: Any) -> None:
        if isinstance(featured, list) and featured:
            self.new_featured[row] = [str(x) for x in featured]
        else:
            self.new_featured.pop(row, None)

    def set_vectors(self, rows: Iterable[int], means: GroupMeans) -> None:
        """The starting vectors of the new items at ``rows``. Products: where their category's
        sellers are, leaning to their brand's (``GroupMeans``).
        Content: the mean of the products it features (as training does for fresh content, new
        products included, so products go first), else of its category's content."""
        n = self.n
        rows = sorted(rows, key=lambda r: (int(self.item_kind[r]) == KIND_CONTENT, r))
        for row in rows:
            kind = int(self.item_kind[row])
            vec: np.ndarray | None = None
            if kind == KIND_CONTENT and row in self.new_featured:
                feat = [self.factor_row(r) for r in self.rows(self.new_featured[row]).tolist() if r >= 0]
                feat = [v for v in feat if v.any()]
                if feat:
                    vec = np.mean(np.stack(feat), axis=0)
            if vec is None:
                cat = int(self.item_category[row])
                brand = int(self.item_brand[row])
                vec = means.vector(
                    kind,
                    cat if cat < len(self.model.categories) else None,
                    brand if 0 <= brand < len(self.model.brands) else None,
                )
            self.new_factors[row - n] = 0.0 if vec is None else vec

    def index_new(self) -> None:
        """The new items' vectors by kind: rows and a small matrix each, searched exactly."""
        n = self.n
        norms = np.linalg.norm(self.new_factors, axis=1).astype(np.float32)
        self.new_norms = np.where(norms > 0, norms, np.float32(1.0)).astype(np.float32)
        self.new_rows: dict[int, np.ndarray] = {}
        self.new_kind_factors: dict[int, np.ndarray] = {}
        for code in (KIND_PRODUCT, KIND_CONTENT):
            local = np.flatnonzero((self.item_kind[n:] == code) & (norms > 0))
            self.new_rows[code] = (local + n).astype(np.int64)
            self.new_kind_factors[code] = np.ascontiguousarray(self.new_factors[local])

    # ---- lookups ---------------------------------------------------------------------------
    def row(self, item_id: str) -> int | None:
        r = self.model.items.row(item_id)
        if r is not None:
            return r
        return self.new_row.get(item_id)

    def rows(self, item_ids: Sequence[str] | np.ndarray) -> np.ndarray:
        """Rows of ``item_ids`` (bundle or new), -1 for unknown ones."""
        rows = self.model.items.rows(item_ids)
        if self.new_row and rows.shape[0]:
            for i in np.flatnonzero(rows < 0).tolist():
                rows[i] = self.new_row.get(str(item_ids[i]), -1)
        return rows

    def item_id(self, row: int) -> str:
        return self.model.items.id(row) if row < self.n else self.new_ids[row - self.n]

    def factor_row(self, row: int) -> np.ndarray:
        if row < self.n:
            return np.asarray(self.model.item_factors[row], dtype=np.float32)
        return self.new_factors[row - self.n]

    def factors(self, rows: np.ndarray) -> np.ndarray:
        """The vectors of ``rows`` (bundle or new) as one small matrix."""
        rows = np.asarray(rows, dtype=np.int64)
        out = np.empty((rows.shape[0], self.model.factors), dtype=np.float32)
        old = rows < self.n
        out[old] = self.model.item_factors[rows[old]]
        if not old.all():
            out[~old] = self.new_factors[rows[~old] - self.n]
        out.flags.writeable = False  # typed like the bundle's factors by the compiled kernels
        return out

    def norms(self, rows: np.ndarray) -> np.ndarray:
        rows = np.asarray(rows, dtype=np.int64)
        if self.new_ids and rows.shape[0] and int(rows.max()) >= self.n:
            out = np.empty(rows.shape[0], dtype=np.float32)
            old = rows < self.n
            out[old] = self.model.item_norms[rows[old]]
            out[~old] = self.new_norms[rows[~old] - self.n]
            return out
        return np.asarray(self.model.item_norms[rows])

    def title(self, row: int) -> str:
        found = self.titles_override.get(row)
        return found if found is not None else self.model.titles[row]

    def category_name(self, row: int) -> str:
        cat = int(self.item_category[row])
        return self.categories[cat] if 0 <= cat < len(self.categories) else ""

    def is_new(self, row: int) -> bool:
        return row >= self.n

    def item_fields(self, row: int) -> bytes:
        """A response item's own fields (see ``ServedModel.item_fields``), with live changes."""
        return self.item_entry(row)[0]

    def item_entry(self, row: int) -> tuple[bytes, str]:
        """(``item_fields(row)``, item id), with live changes (``ServedModel.item_entry``)."""
        return self.entries[row]

    def _build_entry(self, row: int) -> tuple[bytes, str]:
        if row < self.n and row not in self.titles_override:
            return self.model.item_entry(row)
        brand = int(self.item_brand[row])
        item_id = self.item_id(row)
        fields = common_pb2.RecommendedItem(
            item_id=item_id,
            kind=_PB_KIND.get(int(self.item_kind[row]), common_pb2.ITEM_KIND_UNSPECIFIED),
            category=self.category_name(row),
            brand=self.brands[brand] if 0 <= brand < len(self.brands) else "",
            title=self.title(row),
        ).SerializeToString()
        return fields, item_id

    def search_new(self, vector: np.ndarray, kind: int) -> tuple[np.ndarray, np.ndarray]:
        """Every new item of ``kind`` with its score for ``vector`` (exact: the set is small)."""
        rows = self.new_rows.get(kind, NO_ROWS)
        if rows.shape[0] == 0:
            return NO_ROWS, NO_WEIGHTS
        return rows, self.new_kind_factors[kind] @ vector.astype(np.float32)

    def kind_name(self, row: int) -> str:
        return KIND_NAMES.get(int(self.item_kind[row]), "product")
