"""A bundle prepared for serving.

Reads a ``LoadedBundle`` (arrays stay memory-mapped) and precomputes, once per process and
bundle, the small lookups every request needs: rows per item kind, category/brand name -> code,
popular lists per (segment, channel, kind) as row arrays, ``YtY`` for member-vector recomputation.
Nothing here runs per request over all items.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from recsvc import mapped
from recsvc.bundle import (
    ALL,
    INDEX_FLAT,
    INDEX_L2_AUGMENTED,
    KIND_CONTENT,
    KIND_NAMES,
    KIND_PRODUCT,
    LoadedBundle,
    StoredListSpec,
    load_bundle,
)
from recsvc.confidence_scale import BUNDLE_DEFAULT, BUNDLE_DEFAULT_WEIGHTING, Bm25, scaled, unseen_item_idf
from recsvc.engine import kernels
from recsvc.engine.empty_arrays import NO_F64, NO_ROWS
from recsvc.engine.entries import ItemEntries
from recsvc.engine.itemknn_source import Neighbours
from recsvc.engine.replenish import DAY_S, due_mask, due_windows
from recsvc.engine.trend_source import Trend
from recsvc.errors import BundleError, RecsvcError
from recsvc.v1 import common_pb2

log = logging.getLogger(__name__)

KIND_CODES = {name: code for code, name in KIND_NAMES.items()}
_PB_KIND = {KIND_PRODUCT: common_pb2.PRODUCT, KIND_CONTENT: common_pb2.CONTENT}


@dataclass(frozen=True, eq=False)
class MemberLists:
    """Each member's stored default product list (bundle ``member_list_*``, training/member_lists.py)
    and what it was computed for (``spec``: the one judge of when it may be used)."""

    # int32 [members, k + spare]; -1 in column 0 = no stored list for the member, -1 after the
    # last spare pick the member's candidate pool had
    items: np.ndarray
    scores: np.ndarray  # float32 [members, k + spare]
    reasons: np.ndarray  # int32 [members, k + spare]: the history row each reason names, -1 = none
    spec: StoredListSpec

    @property
    def k(self) -> int:
        return self.spec.k

    @classmethod
    def from_bundle(cls, bundle: LoadedBundle) -> MemberLists | None:
        spec = bundle.manifest.member_lists
        if spec is None:
            return None
        a = bundle.arrays
        return cls(
            items=a["member_list_item"],
            scores=a["member_list_score"],
            reasons=a["member_list_reason"],
            spec=spec,
        )


@dataclass(frozen=True)
class PopularList:
    rows: np.ndarray  # item rows, best first
    scores: np.ndarray


class ServedModel:
    """One loaded bundle plus per-process lookups. Immutable once built; swapped as a whole."""

    def __init__(
        self,
        bundle: LoadedBundle,
        version: str,
        source_uri: str,
        hnsw_ef_search: int = 128,
        prefault: bool = False,
    ) -> None:
        self.bundle = bundle
        self.version = version
        self.source_uri = source_uri
        self.manifest = bundle.manifest
        self.members = bundle.members
        self.items = bundle.items
        a = bundle.arrays
        if prefault:  # settings.serving.prefault_bundle
            for arr in (*a.values(), bundle.members.array, bundle.items.array):
                mapped.prefault(arr)
        self.member_factors: np.ndarray = a["member_factors"]
        self.member_segment: np.ndarray = a["member_segment"]
        self.item_factors: np.ndarray = a["item_factors"]
        self.item_kind: np.ndarray = a["item_kind"]
        self.item_category: np.ndarray = a["item_category"]
        self.item_brand: np.ndarray = a["item_brand"]
        self.item_price: np.ndarray = a["item_price"]
        self.item_in_stock: np.ndarray = a["item_in_stock"]
        # What ``in_stock_only`` keeps, in one look-up: stock is a product notion, so content
        # is never left out by it.
        self.item_stock_ok: np.ndarray = np.asarray(self.item_in_stock, dtype=bool) | (
            np.asarray(self.item_kind) != KIND_PRODUCT
        )
        self.history_indptr: np.ndarray = a["history_indptr"]
        self.history_indices: np.ndarray = a["history_indices"]
        self.history_data: np.ndarray = a["history_data"]
        self.purchased_indptr: np.ndarray = a["purchased_indptr"]
        self.purchased_indices: np.ndarray = a["purchased_indices"]
        # Whether every member's purchased rows are ascending and unique (training writes them
        # so): then they are the member's exclusions as they are, with no sort per request.
        self.purchased_sorted = _rows_ascending(self.purchased_indptr, self.purchased_indices)
        self.titles = bundle.item_titles
        self.categories = bundle.categories
        self.brands = bundle.brands
        self.category_code = {name: i for i, name in enumerate(self.categories)}
        self.brand_code = {name: i for i, name in enumerate(self.brands)}
        self.segments: list[str] = list(bundle.manifest.segments)
        self.segment_code = {name: i for i, name in enumerate(self.segments)}
        params = bundle.manifest.params
        self.regularization = float(params.get("regularization", 0.05))
        self.alpha = float(params.get("alpha", 1.0))
        self.event_weights: dict[str, float] = dict(params.get("event_weights", {}))
        # how the fitting engine solved a member: recent events are folded in the same way
        self.fold_in = bundle.manifest.fold_in
        # r -> confidence as training applied it (bundles without the field: linear)
        self.confidence_scale = str(params.get("confidence_scale", BUNDLE_DEFAULT))
        # BM25's numbers as training computed them over the history it fitted (item_idf.npy,
        # memory-mapped like the factors), so serving weighs a member's values as training did
        self.bm25: Bm25 | None = None
        if str(params.get("confidence_weighting", BUNDLE_DEFAULT_WEIGHTING)) == "bm25":
            self.bm25 = Bm25(
                k1=float(params["bm25_k1"]),
                b=float(params["bm25_b"]),
                idf=a["item_idf"],
                new_item_idf=unseen_item_idf(int(self.member_factors.shape[0])),
                avg_length=float(params["bm25_avg_length"]),
            )
        # 0 = no decay (training/confidence.py): an infinite half-life decays nothing, so every
        # formula of the form 0.5 ** (age / half_life) stays as it is
        half_life = float(params.get("half_life_days", 60.0))
        self.half_life_days = half_life if half_life > 0 else float("inf")
        self.factors = int(bundle.manifest.factors)
        # The time the trained history weights were decayed to: the holdout start for a bundle
        # trained without refit (``data_as_of``), else the training cutoff. Serving decays them
        # on from there to now before adding recent events.
        as_of = getattr(bundle.manifest, "data_as_of", None)
        self.cutoff_ts = _epoch_seconds(str(as_of) if as_of else bundle.manifest.training_cutoff)
        self.kind_rows = {
            code: np.flatnonzero(self.item_kind == code) for code in (KIND_PRODUCT, KIND_CONTENT)
        }
        # Normalised item vectors for cosine similarity (MMR, similar items, diversity metric).
        norms = np.linalg.norm(self.item_factors, axis=1)
        self.item_norms = np.where(norms > 0, norms, 1.0).astype(np.float32)
        # Every item of a kind, for a member without a vector once the popular lists (their top
        # ``popular_per_table``) are filtered away: by vector norm, which follows how much an
        # item was bought and viewed in training (ALS gives rarely seen items small vectors).
        self.popular_tail = {
            code: rows[np.argsort(-norms[rows], kind="stable")] for code, rows in self.kind_rows.items()
        }
        kernels.warm_up(self.item_factors, self.item_norms, self.item_category, self.item_stock_ok)
        # YtY as implicit's ALS caches it; used to recompute member vectors from events.
        y = np.asarray(self.item_factors, dtype=np.float32)
        self.yty: np.ndarray = y.T.dot(y)
        self.indexes: dict[int, Any] = {}
        # Norm-augmented (MIPS-to-L2) indexes answer squared L2 distances d on the augmented
        # vectors; d = |q|^2 + M^2 - 2 q.x, so the inner product is (|q|^2 + M^2 - d) / 2.
        self._l2_max_norm_sq: dict[int, float] = {}
        # Exact (flat) indexes are searched here instead: the same items' vectors, copied
        # contiguous (small kinds only), scored with one matrix-vector product. FAISS's flat
        # search keeps a heap of the n best per item, twice the time for the n a call asks for.
        self._flat: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        index_info = bundle.manifest.index or {}
        for name, index in bundle.indexes.items():
            code = KIND_CODES.get(name)
            if code is None:
                continue
            _tune_index(index, hnsw_ef_search)
            self.indexes[code] = index
            info = index_info.get(name) or {}
            if info.get("type") == INDEX_L2_AUGMENTED:
                self._l2_max_norm_sq[code] = float(info["max_norm"]) ** 2
            elif info.get("type") == INDEX_FLAT:
                rows = np.sort(faiss_ids(index))
                self._flat[code] = (rows, np.ascontiguousarray(self.item_factors[rows], dtype=np.float32))
        self.popular = _popular_lists(bundle, self.items)
        # row -> (item_fields, item id), built on first use: at most one entry per item
        self.item_entries = ItemEntries(self._build_entry)
        # Replenishment (recsvc/engine/replenish.py): None in bundles without it.
        self.item_repurchase_days: np.ndarray | None = a.get("item_repurchase_days")
        self.purchased_last_ts: np.ndarray | None = a.get("purchased_last_ts")
        self._due_windows: dict[tuple[float, float], tuple[memoryview, memoryview]] = {}
        # Each member's whole default product list, when training stored them; the engine uses
        # them only under the serving settings they were computed with.
        self.member_lists = MemberLists.from_bundle(bundle)
        # The item-item neighbours when the bundle's family is itemknn or blend (None: ALS).
        self.neighbours = Neighbours.from_bundle(bundle)
        # The trend prior over the family's scores (None: the bundle has none).
        self.trend = Trend.from_bundle(bundle)
        # The efSearch HNSW indexes search with here (None: no HNSW index): part of those settings.
        self.hnsw_ef_search = hnsw_ef_in_use(bundle.indexes.values(), hnsw_ef_search)

    @classmethod
    def load(
        cls, path: Path, version: str, source_uri: str, hnsw_ef_search: int = 128, prefault: bool = False
    ) -> ServedModel:
        bundle = load_bundle(path)
        try:
            return cls(
                bundle,
                version=version,
                source_uri=source_uri,
                hnsw_ef_search=hnsw_ef_search,
                prefault=prefault,
            )
        except (RecsvcError, MemoryError):
            raise
        except Exception as exc:
            # load_bundle's checks should leave nothing here to fail; if a bundle still does, it
            # is refused (BAD_BUNDLE, the old model keeps serving), not an INTERNAL reload
            log.warning("event=bundle_unservable path=%s", path, exc_info=True)
            raise BundleError(
                f"bundle {path} cannot be served: {type(exc).__name__}: {exc}", reason="BAD_BUNDLE"
            ) from exc

    # ---- members -------------------------------------------------------------------------
    def member_row(self, member_id: str) -> int | None:
        return self.members.row(member_id)

    def confidence(self, rows: np.ndarray, r: np.ndarray) -> np.ndarray:
        """A member's summed weights ``r`` on item ``rows`` (trained items, or live catalog rows
        past them) as training turned r_ui into what its fit took: scale, then weighting."""
        x = scaled(np.asarray(r, dtype=np.float32), self.confidence_scale)
        return x if self.bm25 is None else self.bm25.weigh(rows, x)

    def member_vector(self, row: int) -> np.ndarray:
        return np.asarray(self.member_factors[row], dtype=np.float32)

    def segment_of(self, row: int | None) -> str:
        if row is None:
            return "new"
        idx = int(self.member_segment[row])
        return self.segments[idx] if idx < len(self.segments) else "new"

    def history(self, row: int) -> tuple[np.ndarray, np.ndarray]:
        lo, hi = int(self.history_indptr[row]), int(self.history_indptr[row + 1])
        return np.asarray(self.history_indices[lo:hi]), np.asarray(self.history_data[lo:hi])

    def purchased_rows(self, row: int) -> np.ndarray:
        lo, hi = int(self.purchased_indptr[row]), int(self.purchased_indptr[row + 1])
        return np.asarray(self.purchased_indices[lo:hi])

    def due_purchases(self, row: int, now: float, early: float, late: float) -> tuple[np.ndarray, np.ndarray]:
        """The member's bought items due again at ``now`` (``recsvc.engine.replenish.due_mask``):
        (rows, days since the last purchase); empty without replenishment data. Most members
        have nothing due at a given moment: ``due_window`` answers that with two look-ups, and
        only the others pay for the array operations over their purchases."""
        if self.item_repurchase_days is None or self.purchased_last_ts is None:
            return NO_ROWS, NO_F64
        first, last = self.due_window(early, late)
        now_days = now / DAY_S
        if not first[row] <= now_days <= last[row]:
            return NO_ROWS, NO_F64
        lo, hi = int(self.purchased_indptr[row]), int(self.purchased_indptr[row + 1])
        rows = self.purchased_indices[lo:hi]
        days = (now - self.purchased_last_ts[lo:hi]) / DAY_S
        due = due_mask(self.item_repurchase_days[rows], days, early, late)
        if not due.any():
            return NO_ROWS, NO_F64
        return np.asarray(rows[due], dtype=np.int64), days[due]

    def due_window(self, early: float, late: float) -> tuple[memoryview, memoryview]:
        """Per member, the first and last day (since the epoch) on which any of their purchases
        can be due under ``early``/``late`` (``replenish.due_windows``): outside it nothing is,
        ``due_purchases``' quick answer. Computed once per process and setting pair, 8 bytes per
        member; memoryviews, whose items are Python floats (no numpy scalar per look-up)."""
        key = (early, late)
        found = self._due_windows.get(key)
        if found is None:
            assert self.item_repurchase_days is not None and self.purchased_last_ts is not None
            first, last = due_windows(
                np.asarray(self.purchased_indptr),
                np.asarray(self.purchased_indices),
                np.asarray(self.purchased_last_ts),
                np.asarray(self.item_repurchase_days),
                early,
                late,
            )
            found = self._due_windows[key] = (first.data, last.data)
        return found

    # ---- items ---------------------------------------------------------------------------
    def kind_of(self, row: int) -> int:
        return int(self.item_kind[row])

    def search(self, vector: np.ndarray, kind: int, n: int) -> tuple[np.ndarray, np.ndarray]:
        """Top ``n`` item rows of ``kind`` by inner product, best first: FAISS index, else exact.

        Scores are inner products for every index type: an inner-product index returns them; a
        norm-augmented IVF index (training/ann.py) returns L2 distances on the augmented
        vectors, turned back into inner products here (exact up to float32 rounding of the
        distance, about 1e-7 x (|q|^2 + M^2); the order is the index's, already best first).
        """
        n = min(n, len(self.kind_rows[kind]))
        if n <= 0:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
        flat = self._flat.get(kind)
        if flat is not None:
            rows, factors = flat
            return _top(rows, factors.dot(vector.astype(np.float32, copy=False)), n)
        index = self.indexes.get(kind)
        if index is None:
            return self.exact_search(vector, kind, n)
        q = np.ascontiguousarray(vector.reshape(1, -1), dtype=np.float32)
        found, ids = index.search(q, n)
        keep = ids[0] >= 0
        rows, scores = ids[0][keep].astype(np.int64), found[0][keep]
        max_norm_sq = self._l2_max_norm_sq.get(kind)
        if max_norm_sq is not None:
            scores = ((float(q[0] @ q[0]) + max_norm_sq - scores) * 0.5).astype(np.float32)
        return rows, scores

    def exact_search(self, vector: np.ndarray, kind: int, n: int) -> tuple[np.ndarray, np.ndarray]:
        """The reference: score every item of ``kind`` (used to widen after filters, and in tests)."""
        rows = self.kind_rows[kind]
        if min(n, len(rows)) <= 0:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
        # every item's score, then the kind's: a product over the whole matrix beats copying
        # the kind's rows out of it
        return _top(rows, self.item_factors.dot(vector.astype(np.float32, copy=False))[rows], n)

    def item_fields(self, row: int) -> bytes:
        """The fields of a response item that depend on the item alone (id, kind, category,
        brand, title), serialized once per process and item: a response adds the per-call fields
        and merges these bytes, instead of looking up and setting five fields per item."""
        return self.item_entry(row)[0]

    def item_entry(self, row: int) -> tuple[bytes, str]:
        """(``item_fields(row)``, the item's id): what rendering one response item needs, the
        id for the impression the response is logged with."""
        return self.item_entries[row]

    def _build_entry(self, row: int) -> tuple[bytes, str]:
        cat, brand = int(self.item_category[row]), int(self.item_brand[row])
        item_id = self.items.id(row)
        fields = common_pb2.RecommendedItem(
            item_id=item_id,
            kind=_PB_KIND.get(int(self.item_kind[row]), common_pb2.ITEM_KIND_UNSPECIFIED),
            category=self.categories[cat] if 0 <= cat < len(self.categories) else "",
            brand=self.brands[brand] if 0 <= brand < len(self.brands) else "",
            title=self.titles[row],
        ).SerializeToString()
        return fields, item_id

    def popular_for(self, segment: str, channel: str, kind: int) -> list[PopularList]:
        """Popular lists to try in order: (segment, channel), (segment, all), (all, channel), (all, all)."""
        kind_name = KIND_NAMES[kind]
        order = [(segment, channel), (segment, ALL), (ALL, channel), (ALL, ALL)]
        seen: set[tuple[str, str]] = set()
        out = []
        for key in order:
            if key in seen:
                continue
            seen.add(key)
            found = self.popular.get((key[0], key[1], kind_name))
            if found is not None:
                out.append(found)
        return out

    def info_counts(self) -> dict[str, int]:
        return {
            "members": len(self.members),
            "products": len(self.kind_rows[KIND_PRODUCT]),
            "content": len(self.kind_rows[KIND_CONTENT]),
        }


def _rows_ascending(indptr: np.ndarray, indices: np.ndarray) -> bool:
    """True when the indices of every CSR row are strictly ascending."""
    if indices.shape[0] < 2:
        return True
    rising = np.diff(np.asarray(indices, dtype=np.int64)) > 0
    # A fall is allowed only where a new row starts (between the last of one and the first of the next).
    row_starts = np.asarray(indptr[1:-1], dtype=np.int64)
    row_starts = row_starts[(row_starts > 0) & (row_starts < indices.shape[0])]
    rising[row_starts - 1] = True
    return bool(rising.all())


def _top(rows: np.ndarray, scores: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``n`` of ``rows`` with the largest ``scores``, best first: (rows int64, scores
    float32)."""
    n = min(n, scores.shape[0])
    top = np.argpartition(-scores, n - 1)[:n] if n < scores.shape[0] else np.arange(scores.shape[0])
    top = top[np.argsort(-scores[top], kind="stable")]
    return rows[top].astype(np.int64), scores[top].astype(np.float32)


def faiss_ids(index: Any) -> np.ndarray:
    """The ids (item rows) an ``IndexIDMap`` holds."""
    import faiss

    return faiss.vector_to_array(index.id_map).astype(np.int64)


def hnsw_ef_in_use(indexes: Iterable[Any], ef_search: int) -> int | None:
    """``ef_search`` (the serving setting) when one of ``indexes`` is HNSW, else None: whether
    the setting changes what a search returns."""
    import faiss

    for index in indexes:
        try:
            inner = faiss.downcast_index(index.index) if hasattr(index, "index") else index
        except (AttributeError, RuntimeError):
            continue
        if hasattr(inner, "hnsw"):
            return ef_search
    return None


def _tune_index(index: Any, ef_search: int) -> None:
    import faiss

    try:
        inner = faiss.downcast_index(index.index) if hasattr(index, "index") else index
        if hasattr(inner, "hnsw"):
            inner.hnsw.efSearch = max(int(inner.hnsw.efSearch), ef_search)
    except (AttributeError, RuntimeError):  # not an HNSW index: nothing to tune
        pass


def _popular_lists(bundle: LoadedBundle, items: Any) -> dict[tuple[str, str, str], PopularList]:
    df = bundle.popular
    out: dict[tuple[str, str, str], PopularList] = {}
    if df.empty:
        return out
    rows_all = items.rows(df["item_id"].astype(str).to_numpy())
    df = df.assign(_row=rows_all)
    df = df[df["_row"] >= 0]
    for (segment, channel, kind), group in df.groupby(["segment", "channel", "kind"], sort=False):
        group = group.sort_values("rank", kind="stable")
        out[(str(segment), str(channel), str(kind))] = PopularList(
            rows=group["_row"].to_numpy(dtype=np.int64),
            scores=group["score"].to_numpy(dtype=np.float32),
        )
    return out


def _epoch_seconds(iso: str) -> float | None:
    from datetime import UTC, datetime

    try:
        ts = datetime.fromisoformat(iso)
    except ValueError:
        log.warning("event=bad_training_cutoff value=%r history is not decayed to now", iso)
        return None
    if ts.tzinfo is None:
        ts = ts.replace(tzinfo=UTC)
    return ts.timestamp()
