"""Recommendation filters: validated once from the request, applied vectorised over candidates.

``FilterSpec.from_proto`` checks the request (raising ``InvalidArgument`` with a named reason)
and applies the documented defaults: ``in_stock_only``, ``exclude_purchased`` and
``exclude_seen`` are on when unset, ``diversity`` comes from settings. ``FilterSpec.mask`` works
on a candidate row array.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from recsvc.bounds import MAX_PRICE
from recsvc.engine.kernels import stock_and_not_excluded
from recsvc.errors import InvalidArgument
from recsvc.idmap import id_problem, normalize_id
from recsvc.v1 import common_pb2

if TYPE_CHECKING:
    from recsvc.catalog.view import CatalogView


@dataclass(frozen=True)
class FilterSpec:
    include_categories: frozenset[str] = frozenset()
    exclude_categories: frozenset[str] = frozenset()
    include_brands: frozenset[str] = frozenset()
    exclude_brands: frozenset[str] = frozenset()
    min_price: float | None = None
    max_price: float | None = None
    in_stock_only: bool = True
    exclude_item_ids: frozenset[str] = frozenset()
    exclude_purchased: bool = True
    exclude_seen: bool = True
    diversity: float = 0.3
    # (catalog view, include-category codes, include-brand codes) for the last view seen
    _cache: list[tuple[CatalogView, np.ndarray | None, np.ndarray | None]] = field(
        default_factory=list, compare=False, hash=False, repr=False
    )

    @classmethod
    def from_proto(
        cls,
        f: common_pb2.RecommendationFilters | None,
        *,
        default_diversity: float,
        max_values: int,
        max_id_length: int,
    ) -> FilterSpec:
        if f is None:
            return _defaults(default_diversity)
        lists = {
            "include_categories": f.include_categories,
            "exclude_categories": f.exclude_categories,
            "include_brands": f.include_brands,
            "exclude_brands": f.exclude_brands,
            "exclude_item_ids": f.exclude_item_ids,
        }
        for name, values in lists.items():
            if len(values) > max_values:
                raise InvalidArgument(
                    f"filters.{name} has {len(values)} values; at most {max_values} are allowed",
                    reason="TOO_MANY_FILTER_VALUES",
                )
        for iid in f.exclude_item_ids:
            if id_problem(normalize_id(iid), max_id_length) is not None:
                raise InvalidArgument(
                    f"filters.exclude_item_ids has an invalid item id {iid[:80]!r}", reason="INVALID_ITEM_ID"
                )
        min_price = f.min_price if f.HasField("min_price") else None
        max_price = f.max_price if f.HasField("max_price") else None
        for name, price in (("min_price", min_price), ("max_price", max_price)):
            # NaN and infinity included (docs/api.md "Accepted ranges").
            if price is not None and not (math.isfinite(price) and 0 <= price <= MAX_PRICE):
                raise InvalidArgument(
                    f"filters.{name} must be a number within 0..{MAX_PRICE:g}, got {price}",
                    reason="INVALID_PRICE_RANGE",
                )
        if min_price is not None and max_price is not None and min_price > max_price:
            raise InvalidArgument(
                f"filters.min_price {min_price} is above max_price {max_price}", reason="INVALID_PRICE_RANGE"
            )
        diversity = f.diversity if f.HasField("diversity") else default_diversity
        if math.isnan(diversity) or not 0.0 <= diversity <= 1.0:
            raise InvalidArgument(
                f"filters.diversity must be between 0 and 1, got {diversity}", reason="INVALID_DIVERSITY"
            )
        return cls(
            include_categories=frozenset(f.include_categories),
            exclude_categories=frozenset(f.exclude_categories),
            include_brands=frozenset(f.include_brands),
            exclude_brands=frozenset(f.exclude_brands),
            min_price=min_price,
            max_price=max_price,
            in_stock_only=f.in_stock_only if f.HasField("in_stock_only") else True,
            exclude_item_ids=frozenset(normalize_id(i) for i in f.exclude_item_ids),
            exclude_purchased=f.exclude_purchased if f.HasField("exclude_purchased") else True,
            exclude_seen=f.exclude_seen if f.HasField("exclude_seen") else True,
            diversity=diversity,
        )

    @functools.cached_property
    def only_defaults(self) -> bool:
        """Whether the filters are the defaults (in stock, purchases and seen items excluded,
        nothing else), whatever the diversity: the filters the stored member lists were made with."""
        return (
            self.in_stock_only
            and self.exclude_purchased
            and self.exclude_seen
            and not (
                self.include_categories
                or self.exclude_categories
                or self.include_brands
                or self.exclude_brands
                or self.exclude_item_ids
            )
            and self.min_price is None
            and self.max_price is None
        )

    def _codes(self, model: CatalogView) -> tuple[np.ndarray | None, np.ndarray | None]:
        """Category/brand codes allowed (include) as arrays; None = no include filter."""
        if self._cache and self._cache[0][0] is model:
            return self._cache[0][1], self._cache[0][2]
        inc_cat = (
            np.array([model.category_code[c] for c in self.include_categories if c in model.category_code])
            if self.include_categories
            else None
        )
        inc_brand = (
            np.array([model.brand_code[b] for b in self.include_brands if b in model.brand_code])
            if self.include_brands
            else None
        )
        self._cache[:] = [(model, inc_cat, inc_brand)]
        return inc_cat, inc_brand

    def mask(self, model: CatalogView, rows: np.ndarray, excluded_rows: np.ndarray | None) -> np.ndarray:
        """Boolean mask over ``rows``: True = the item passes every filter and is not in
        ``excluded_rows`` (sorted, as ``np.unique`` returns them). ``model``: the live catalog's
        view of the model (recsvc.catalog.view), whose arrays hold the live values."""
        if rows.shape[0] == 0:
            return np.ones(0, dtype=bool)
        excluded = _NONE_EXCLUDED if excluded_rows is None else excluded_rows.astype(np.int64, copy=False)
        # Stock (or, without in_stock_only, just listed and published) and exclusions, which
        # every request has, in one compiled pass; the rest below.
        keep: np.ndarray = stock_and_not_excluded(
            rows.astype(np.int64, copy=False),
            model.item_stock_ok if self.in_stock_only else model.item_visible,
            True,
            excluded,
        )
        inc_cat, inc_brand = self._codes(model)
        if inc_cat is not None or self.exclude_categories:
            cats = model.item_category[rows]
            if inc_cat is not None:
                keep &= np.isin(cats, inc_cat)
            if self.exclude_categories:
                exc = [model.category_code[c] for c in self.exclude_categories if c in model.category_code]
                if exc:
                    keep &= ~np.isin(cats, exc)
        if inc_brand is not None or self.exclude_brands:
            brands = model.item_brand[rows]
            if inc_brand is not None:
                keep &= np.isin(brands, inc_brand)
            if self.exclude_brands:
                exc = [model.brand_code[b] for b in self.exclude_brands if b in model.brand_code]
                if exc:
                    keep &= ~np.isin(brands, exc)
        if self.min_price is not None or self.max_price is not None:
            prices = model.item_price[rows]
            if self.min_price is not None:
                keep &= prices >= self.min_price
            if self.max_price is not None:
                keep &= prices <= self.max_price
        return keep


@functools.lru_cache(maxsize=8)
def _defaults(diversity: float) -> FilterSpec:
    """The filters of a request that sets none (most requests): one shared, immutable spec."""
    return FilterSpec(diversity=diversity)


_NONE_EXCLUDED = np.zeros(0, dtype=np.int64)
_NONE_EXCLUDED.flags.writeable = False
