"""The model bundle: a versioned folder that training writes and the service loads.

The service loads it without importing training code. Arrays are ``.npy`` files opened with
``mmap_mode="r"`` so every server process on a machine shares their pages. The format is
documented in docs/bundle.md; bump ``SCHEMA_VERSION`` on any incompatible change.

Layout (schema 1)::

    manifest.json            Manifest below
    member_ids.npy           sorted UTF-8 ids (bytes), row i <-> member_factors[i]
    member_factors.npy       float32 [members, factors]; all-zero row = no trained history
    member_segment.npy       uint8 [members], index into manifest.segments (lifecycle stage)
    item_ids.npy             sorted UTF-8 ids (bytes), row i <-> item_factors[i]
    item_factors.npy         float32 [items, factors] (fresh content: mean of featured products)
    item_kind.npy            uint8 [items]: 1 product, 2 content
    item_category.npy        int32 [items], index into vocab.json "categories"
    item_brand.npy           int32 [items], index into vocab.json "brands"
    item_price.npy           float32 [items]
    item_in_stock.npy        bool [items]
    item_published_at.npy    int64 [items], epoch seconds (0 = unknown)
    item_titles.json         list[str] [items], for reasons ("because you bought ...")
    vocab.json               {"categories": [...], "brands": [...]}
    history_{indptr,indices,data}.npy    CSR [members x items] training confidence weights
    purchased_{indptr,indices}.npy       CSR [members x items] items the member bought
    segments.parquet         member_id, lifecycle, recency_days, frequency, monetary, r, f, m, rfm_score
    popular.parquet          segment, channel, kind, rank, item_id, score   ("all" = any)
    index_product.faiss      FAISS index ranking product rows by inner product (ids = item rows)
    index_content.faiss      the same over content rows
    member_list_{item,score,reason}.npy   optional, together: int32 / float32 / int32
                             [members, K + spare]: each member's whole default product list of K
                             (items, scores, the history row each reason names, -1 = none),
                             exactly as serving computes it for a member without recent events,
                             then up to `spare` more MMR picks that stand in for items the live
                             catalog makes unavailable; item -1 in column 0 = no stored list.
                             Manifest.member_lists holds the serving settings it was computed
                             with; serving uses it only when they are its own
                             (training/member_lists.py).
    item_repurchase_days.npy  optional, float32 [items]: typical days between repeat purchases
                             (0 = not repurchased: durables never come back); with
    purchased_last_ts.npy    int64, aligned with purchased_indices: the epoch seconds of the
                             member's last purchase of the item (recsvc/engine/replenish.py).
                             Manifest.replenish lists the repurchased categories.
    profile_*.npy            optional, together (PROFILE_ARRAYS, training/profiles.py): member
                             profile material, row i <-> member i; Manifest.profiles (ProfileSpec)
                             says what it was computed with. Bundles without them still load;
                             the Members service then answers FAILED_PRECONDITION.
    item_neighbour_{item,score}.npy  with family itemknn or blend (NEIGHBOUR_ARRAYS): int32 /
                             float32 [items, Manifest.family.neighbours], each item's item-item
                             neighbours best first (-1 = none) and similarities.
    item_trend.npy           float32 [items], exactly when Manifest.family.trend_weight > 0: each
                             item's weighted events in the family's trend_days before data_as_of
                             (recsvc/engine/trend_source.py, training/trend.py).
    item_idf.npy             float32 [items], exactly when params.confidence_weighting is bm25:
                             BM25's item weights over the history training fitted (with
                             params.bm25_avg_length, recsvc/confidence_scale.py), so serving
                             weighs a member's values with training's numbers.
    item_featured_{indptr,indices}.npy  optional, together: CSR [items x items] int64 / int32,
                             the products each content item features (the catalog's
                             featured_item_ids), so the live catalog shows and exports them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from recsvc.bundle_manifest import (
    ALL,
    FAMILIES,
    INDEX_FLAT,
    INDEX_L2_AUGMENTED,
    KIND_CONTENT,
    KIND_NAMES,
    KIND_PRODUCT,
    LIFECYCLE_STAGES,
    MANIFEST,
    OUTLOOKS,
    PROFILE_ARRAYS,
    RECENT_COUNTS,
    SCHEMA_VERSION,
    VALUE_TIERS,
    FamilySpec,
    Manifest,
    ProfileSpec,
    ReplenishSpec,
    StoredListSpec,
    read_manifest,
)
from recsvc.bundle_parts import (
    MEMBER_LIST_ARRAYS,
    NEIGHBOUR_ARRAYS,
    _check_arrays,
    _check_csr,
    _check_files,
    _check_ids,
    _check_indexes,
    _check_manifest_values,
    _check_member_lists,
    _check_neighbours,
    _check_profiles,
    _check_side_files,
    _check_values,
    _check_weighting,
    add_member_lists,
    add_profiles,
    drop_member_lists,
    required_files,
)
from recsvc.errors import BundleError
from recsvc.idmap import IdMap
from recsvc.mapped import load_array

# Re-exported: callers name the bundle's constants and manifest types through this module.
__all__ = [
    "ALL",
    "FAMILIES",
    "INDEX_FLAT",
    "INDEX_L2_AUGMENTED",
    "KIND_CONTENT",
    "KIND_NAMES",
    "KIND_PRODUCT",
    "LIFECYCLE_STAGES",
    "MANIFEST",
    "MEMBER_LIST_ARRAYS",
    "NEIGHBOUR_ARRAYS",
    "OUTLOOKS",
    "PROFILE_ARRAYS",
    "RECENT_COUNTS",
    "SCHEMA_VERSION",
    "VALUE_TIERS",
    "BundleContents",
    "FamilySpec",
    "LoadedBundle",
    "Manifest",
    "ProfileSpec",
    "ReplenishSpec",
    "StoredListSpec",
    "add_member_lists",
    "add_profiles",
    "drop_member_lists",
    "load_bundle",
    "read_manifest",
    "required_files",
    "write_bundle",
]


_ARRAYS = (
    "member_factors",
    "member_segment",
    "item_factors",
    "item_kind",
    "item_category",
    "item_brand",
    "item_price",
    "item_in_stock",
    "item_published_at",
    "history_indptr",
    "history_indices",
    "history_data",
    "purchased_indptr",
    "purchased_indices",
)
# Arrays a bundle may hold; serving works without them (training/member_lists.py writes these).
_OPTIONAL_ARRAYS = (
    "member_list_item",
    "member_list_score",
    "member_list_reason",
    "item_repurchase_days",
    "purchased_last_ts",
    *PROFILE_ARRAYS,
    *NEIGHBOUR_ARRAYS,
    "item_trend",
    "item_idf",
    "item_featured_indptr",
    "item_featured_indices",
)


@dataclass
class BundleContents:
    """Everything a bundle holds, in memory; ``write_bundle`` puts it on disk."""

    manifest: Manifest
    members: IdMap
    member_factors: np.ndarray
    member_segment: np.ndarray
    items: IdMap
    item_factors: np.ndarray
    item_kind: np.ndarray
    item_category: np.ndarray
    item_brand: np.ndarray
    item_price: np.ndarray
    item_in_stock: np.ndarray
    item_published_at: np.ndarray
    item_titles: list[str]
    categories: list[str]
    brands: list[str]
    history: sp.csr_matrix
    purchased: sp.csr_matrix
    segments: pd.DataFrame
    popular: pd.DataFrame
    # FAISS indexes by kind name ("product", "content"); written with faiss.write_index.
    indexes: dict[str, Any] = field(default_factory=dict)
    # Replenishment: days between repeat purchases per item, and the last purchase time with the
    # same pattern as ``purchased`` (both or neither).
    item_repurchase_days: np.ndarray | None = None
    purchased_last_ts: sp.csr_matrix | None = None
    # Item-item neighbours (NEIGHBOUR_ARRAYS), [items, manifest.family.neighbours]: given exactly
    # when the manifest's family is not "als".
    item_neighbour_item: np.ndarray | None = None
    item_neighbour_score: np.ndarray | None = None
    # The trend prior's per-item trend: given exactly when manifest.family.trend_weight > 0.
    item_trend: np.ndarray | None = None
    # [items x items]: a content item's row holds the products it features (None: none do).
    item_featured: sp.csr_matrix | None = None
    # BM25's item weights: given exactly when manifest.params' confidence_weighting is bm25.
    item_idf: np.ndarray | None = None

    def validate(self) -> None:
        n_m, n_i = len(self.members), len(self.items)
        f = self.manifest.factors
        checks = [
            (
                self.member_factors.shape == (n_m, f),
                f"member_factors {self.member_factors.shape} != {(n_m, f)}",
            ),
            (self.item_factors.shape == (n_i, f), f"item_factors {self.item_factors.shape} != {(n_i, f)}"),
            (self.member_segment.shape == (n_m,), "member_segment length != members"),
            (self.history.shape == (n_m, n_i), f"history {self.history.shape} != {(n_m, n_i)}"),
            (self.purchased.shape == (n_m, n_i), f"purchased {self.purchased.shape} != {(n_m, n_i)}"),
            (len(self.item_titles) == n_i, "item_titles length != items"),
            (
                (self.item_repurchase_days is None) == (self.purchased_last_ts is None),
                "item_repurchase_days and purchased_last_ts go together",
            ),
        ]
        knn = self.manifest.family
        nbr = (self.item_neighbour_item, self.item_neighbour_score)
        if knn.family == "als":
            checks.append((nbr == (None, None), "neighbour arrays given for family 'als'"))
        else:
            want = (n_i, knn.neighbours)
            checks += [(a is not None and a.shape == want, f"neighbour arrays are not {want}") for a in nbr]
        if knn.trend_weight > 0:
            has = self.item_trend is not None and self.item_trend.shape == (n_i,)
            checks.append((has, f"family trend_weight {knn.trend_weight:g} needs item_trend of {n_i} items"))
        else:
            checks.append((self.item_trend is None, "item_trend given without a trend_weight"))
        if self.manifest.params.get("confidence_weighting") == "bm25":
            has = self.item_idf is not None and self.item_idf.shape == (n_i,)
            checks.append((has, f"BM25 weighting needs item_idf of {n_i} items"))
        else:
            checks.append((self.item_idf is None, "item_idf given without BM25 weighting"))
        if self.item_repurchase_days is not None:
            checks.append((self.item_repurchase_days.shape == (n_i,), "item_repurchase_days length != items"))
        if self.item_featured is not None:
            checks.append((self.item_featured.shape == (n_i, n_i), "item_featured is not [items x items]"))
        if self.purchased_last_ts is not None:
            last, bought = self.purchased_last_ts.tocsr(), self.purchased.tocsr()
            last.sort_indices()
            bought.sort_indices()
            same = np.array_equal(last.indptr, bought.indptr) and np.array_equal(last.indices, bought.indices)
            checks.append((same, "purchased_last_ts has another pattern than purchased"))
        for arr_name in (
            "item_kind",
            "item_category",
            "item_brand",
            "item_price",
            "item_in_stock",
            "item_published_at",
        ):
            checks.append((getattr(self, arr_name).shape == (n_i,), f"{arr_name} length != items"))
        bad = [msg for ok, msg in checks if not ok]
        if bad:
            raise BundleError("inconsistent bundle contents: " + "; ".join(bad))


def write_bundle(out_dir: Path, contents: BundleContents) -> Path:
    """Write ``contents`` to ``out_dir`` (created; must be empty or absent). Returns the path."""
    import faiss

    contents.validate()
    out_dir.mkdir(parents=True, exist_ok=True)
    if any(out_dir.iterdir()):
        raise BundleError(f"bundle folder is not empty: {out_dir}")
    contents.members.save(out_dir / "member_ids.npy")
    contents.items.save(out_dir / "item_ids.npy")
    arrays: dict[str, np.ndarray] = {
        "member_factors": np.asarray(contents.member_factors, dtype=np.float32),
        "member_segment": np.asarray(contents.member_segment, dtype=np.uint8),
        "item_factors": np.asarray(contents.item_factors, dtype=np.float32),
        "item_kind": np.asarray(contents.item_kind, dtype=np.uint8),
        "item_category": np.asarray(contents.item_category, dtype=np.int32),
        "item_brand": np.asarray(contents.item_brand, dtype=np.int32),
        "item_price": np.asarray(contents.item_price, dtype=np.float32),
        "item_in_stock": np.asarray(contents.item_in_stock, dtype=bool),
        "item_published_at": np.asarray(contents.item_published_at, dtype=np.int64),
    }
    for prefix, m in (("history", contents.history.tocsr()), ("purchased", contents.purchased.tocsr())):
        m.sort_indices()
        arrays[f"{prefix}_indptr"] = m.indptr.astype(np.int64)
        arrays[f"{prefix}_indices"] = m.indices.astype(np.int32)
        if prefix == "history":
            arrays["history_data"] = m.data.astype(np.float32)
    if contents.item_repurchase_days is not None and contents.purchased_last_ts is not None:
        last = contents.purchased_last_ts.tocsr()
        last.sort_indices()
        arrays["item_repurchase_days"] = np.asarray(contents.item_repurchase_days, dtype=np.float32)
        arrays["purchased_last_ts"] = last.data.astype(np.int64)
    if contents.item_neighbour_item is not None and contents.item_neighbour_score is not None:
        arrays["item_neighbour_item"] = np.asarray(contents.item_neighbour_item, dtype=np.int32)
        arrays["item_neighbour_score"] = np.asarray(contents.item_neighbour_score, dtype=np.float32)
    if contents.item_trend is not None:
        arrays["item_trend"] = np.asarray(contents.item_trend, dtype=np.float32)
    if contents.item_idf is not None:
        arrays["item_idf"] = np.asarray(contents.item_idf, dtype=np.float32)
    if contents.item_featured is not None and contents.item_featured.nnz:
        featured = contents.item_featured.tocsr()
        featured.sort_indices()
        arrays["item_featured_indptr"] = featured.indptr.astype(np.int64)
        arrays["item_featured_indices"] = featured.indices.astype(np.int32)
    for name, arr in arrays.items():
        np.save(out_dir / f"{name}.npy", np.ascontiguousarray(arr))
    (out_dir / "item_titles.json").write_text(json.dumps(contents.item_titles, ensure_ascii=False))
    (out_dir / "vocab.json").write_text(
        json.dumps({"categories": contents.categories, "brands": contents.brands}, ensure_ascii=False)
    )
    contents.segments.to_parquet(out_dir / "segments.parquet", index=False)
    contents.popular.to_parquet(out_dir / "popular.parquet", index=False)
    for kind, index in contents.indexes.items():
        faiss.write_index(index, str(out_dir / f"index_{kind}.faiss"))
    (out_dir / MANIFEST).write_text(contents.manifest.model_dump_json(indent=2))
    return out_dir


@dataclass
class LoadedBundle:
    """A bundle opened for serving: arrays memory-mapped, small tables in memory."""

    path: Path
    manifest: Manifest
    members: IdMap
    items: IdMap
    arrays: dict[str, np.ndarray]
    item_titles: list[str]
    categories: list[str]
    brands: list[str]
    segments: pd.DataFrame
    popular: pd.DataFrame
    indexes: dict[str, Any]
    loaded_at: str

    def __getattr__(self, name: str) -> np.ndarray:
        arrays = self.__dict__.get("arrays", {})
        if name in arrays:
            return arrays[name]
        raise AttributeError(name)

    @property
    def history(self) -> sp.csr_matrix:
        a = self.arrays
        return sp.csr_matrix(
            (a["history_data"], a["history_indices"], a["history_indptr"]),
            shape=(len(self.members), len(self.items)),
        )

    def featured(self, row: int) -> np.ndarray:
        """The item rows content item ``row`` features (empty for a product, or a bundle that
        predates the arrays)."""
        a = self.arrays
        if "item_featured_indptr" not in a or not 0 <= row < len(self.items):
            return np.empty(0, dtype=np.int32)
        return np.asarray(
            a["item_featured_indices"][a["item_featured_indptr"][row] : a["item_featured_indptr"][row + 1]]
        )

    @property
    def purchased(self) -> sp.csr_matrix:
        a = self.arrays
        data = np.ones(a["purchased_indices"].shape[0], dtype=np.float32)
        return sp.csr_matrix(
            (data, a["purchased_indices"], a["purchased_indptr"]), shape=(len(self.members), len(self.items))
        )


def load_bundle(bundle_dir: Path, mmap: bool = True) -> LoadedBundle:
    """Open a bundle. Raises BundleError (``BAD_BUNDLE``, or ``BUNDLE_SCHEMA_MISMATCH``) naming
    what is wrong: a missing or empty file, an unreadable one, a manifest number that is not a
    finite number, an array of the wrong dtype or shape, a CSR whose pointers are not rising or
    whose item rows are out of range, a NaN or an infinity in an array serving scores with
    (``bundle_parts.FINITE_ARRAYS``, popular.parquet's scores), a side file of another type or
    length, inconsistent optional parts. Nothing is copied: the checks over memory-mapped arrays
    are vectorised and read the large ones (the CSR item rows, the stored lists) once, about
    25 ms per 50M entries, and the float arrays once in steps of 16 MB, 10-20 ms per 100 MB
    (docs/bundle.md)."""
    import faiss

    bundle_dir = Path(bundle_dir)
    manifest = read_manifest(bundle_dir)
    _check_manifest_values(bundle_dir, manifest)
    present_indexes = [p.name for p in sorted(bundle_dir.glob("index_*.faiss"))]
    _check_files(bundle_dir, required_files(manifest, _ARRAYS) + present_indexes)
    try:
        arrays = {name: load_array(bundle_dir / f"{name}.npy", mmap=mmap) for name in _ARRAYS}
        for name in _OPTIONAL_ARRAYS:
            if (bundle_dir / f"{name}.npy").is_file():
                arrays[name] = load_array(bundle_dir / f"{name}.npy", mmap=mmap)
        id_arrays = {
            name: load_array(bundle_dir / name, mmap=mmap) for name in ("member_ids.npy", "item_ids.npy")
        }
        titles = json.loads((bundle_dir / "item_titles.json").read_text())
        vocab = json.loads((bundle_dir / "vocab.json").read_text())
        segments = pd.read_parquet(bundle_dir / "segments.parquet")
        popular = pd.read_parquet(bundle_dir / "popular.parquet")
        indexes = {
            p.stem.removeprefix("index_"): faiss.read_index(str(p))
            for p in sorted(bundle_dir.glob("index_*.faiss"))
        }
    except FileNotFoundError as exc:
        raise BundleError(f"bundle {bundle_dir} is incomplete: {exc.filename} is missing") from exc
    except Exception as exc:  # whatever a damaged file makes a reader raise: refused, not INTERNAL
        raise BundleError(f"bundle {bundle_dir} is corrupt: {type(exc).__name__}: {exc}") from exc
    for name, ids in id_arrays.items():
        _check_ids(bundle_dir, name, ids)
    members, items = IdMap(id_arrays["member_ids.npy"]), IdMap(id_arrays["item_ids.npy"])
    n_members, n_items = len(members), len(items)
    categories, brands = _check_side_files(bundle_dir, titles, vocab, segments, popular, n_items)
    if ("purchased_last_ts" in arrays) != ("item_repurchase_days" in arrays):
        raise BundleError(
            f"bundle {bundle_dir} is inconsistent: replenishment arrays do not match purchases "
            "(item_repurchase_days.npy and purchased_last_ts.npy go together)"
        )
    _check_arrays(bundle_dir, manifest, arrays, n_members, n_items)
    _check_values(bundle_dir, manifest, arrays, n_items, categories, brands)
    bundle = LoadedBundle(
        path=bundle_dir,
        manifest=manifest,
        members=members,
        items=items,
        arrays=arrays,
        item_titles=titles,
        categories=categories,
        brands=brands,
        segments=segments,
        popular=popular,
        indexes=indexes,
        loaded_at=datetime.now(UTC).isoformat(timespec="seconds"),
    )
    _check_member_lists(bundle_dir, manifest, arrays, n_members, n_items)
    _check_indexes(bundle_dir, arrays, indexes)
    _check_profiles(bundle_dir, manifest, arrays, n_members, len(brands))
    _check_neighbours(bundle_dir, manifest, arrays, n_items)
    _check_weighting(bundle_dir, manifest, arrays)
    _check_featured(bundle_dir, arrays, n_items)
    return bundle


def _check_featured(bundle_dir: Path, arrays: dict[str, np.ndarray], n_items: int) -> None:
    """The featured-products CSR: both arrays or neither, a row pointer per item, rows in range."""
    have = [n for n in ("item_featured_indptr", "item_featured_indices") if n in arrays]
    if not have:
        return
    ok = len(have) == 2
    if ok:
        indptr, indices = arrays["item_featured_indptr"], arrays["item_featured_indices"]
        ok = indptr.shape == (n_items + 1,) and indices.ndim == 1
    if not ok:
        raise BundleError(
            f"bundle {bundle_dir} is inconsistent: item_featured_indptr / item_featured_indices are "
            f"not a row pointer per item over {n_items} item rows"
        )
    _check_csr(bundle_dir, "item_featured", arrays, n_items, rows="item")
