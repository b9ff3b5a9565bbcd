"""The model bundle: a versioned folder that training writes and the service loads.

The service loads it without importing training code. Arrays are ``.npy`` files opened with
``mmap_mode="r"`` so every server process on a machine shares their pages. The format is
documented in docs/bundle.md; bump ``SCHEMA_VERSION`` on any incompatible change.

Layout (schema 1)::

    manifest.json            Manifest below
    member_ids.npy           sorted ASCII ids (bytes), row i <-> member_factors[i]
    member_factors.npy       float32 [members, factors]; all-zero row = no trained history
    member_segment.npy       uint8 [members], index into manifest.segments (lifecycle stage)
    item_ids.npy             sorted ASCII ids (bytes), row i <-> item_factors[i]
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
    member_top_product.npy   optional: int32 [members, N], each member's first N products by the
                             product index (the search serving would make), leaving out the
                             member's trained purchases and out-of-stock products; -1 pads.
                             Serving answers default-filter product calls from it (no search).
    member_list_{item,score,reason}.npy   optional, together: int32 / float32 / int32
                             [members, K]: each member's whole default product list of K
                             (items, scores, the history row each reason names, -1 = none),
                             exactly as serving computes it for a member without recent events;
                             item -1 in column 0 = no stored list. Manifest.member_lists holds the
                             serving settings it was computed with; serving uses it only when
                             they are its own (training/member_lists.py).
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
from pydantic import BaseModel, ConfigDict, ValidationError

from recsvc.errors import BundleError
from recsvc.idmap import IdMap
from recsvc.mapped import load_array

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
KIND_PRODUCT = 1
KIND_CONTENT = 2
KIND_NAMES = {KIND_PRODUCT: "product", KIND_CONTENT: "content"}
# Manifest index type of the norm-augmented (MIPS-to-L2) IVF index, training/ann.py.
INDEX_L2_AUGMENTED = "ivf_flat_l2_augmented"
LIFECYCLE_STAGES = ("new", "active", "at_risk", "dormant", "churned")
ALL = "all"

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
# Arrays a bundle may hold; serving works without them (training.candidates writes these).
_OPTIONAL_ARRAYS = ("member_top_product", "member_list_item", "member_list_score", "member_list_reason")
# The stored default lists (training/member_lists.py): all three or none, each [members, K].
MEMBER_LIST_ARRAYS = {
    "member_list_item": np.int32,
    "member_list_score": np.float32,
    "member_list_reason": np.int32,
}


class Manifest(BaseModel):
    """What a bundle is, where it came from, and how well it did."""

    model_config = ConfigDict(extra="allow")

    schema_version: int
    bundle_id: str
    created_at: str
    training_cutoff: str
    data_fingerprint: str
    factors: int
    # Hyper-parameters serving needs to recompute member vectors the way training did:
    # regularization, alpha, event_weights, half_life_days, iterations.
    params: dict[str, Any]
    metrics: dict[str, float] = {}
    counts: dict[str, int] = {}
    segments: list[str] = list(LIFECYCLE_STAGES)
    index: dict[str, Any] = {}
    # The serving settings the stored default lists were computed with ({} = no lists):
    # k, kind, diversity, max_per_category, ann_candidates, hnsw_ef_search.
    member_lists: dict[str, Any] = {}
    # Which library fitted the factors ("implicit" or "spark", training.engine). Serving does not
    # read it: both write the same arrays. Bundles from before the field were all implicit's.
    engine: str = "implicit"


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
    # Optional: int32 [members, N] precomputed product candidates (training/candidates.py).
    member_top_product: np.ndarray | None = None

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
        ]
        if self.member_top_product is not None:
            top = self.member_top_product
            checks.append(
                (top.ndim == 2 and top.shape[0] == n_m, f"member_top_product {top.shape}: rows != members")
            )
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
    if contents.member_top_product is not None:
        arrays["member_top_product"] = np.asarray(contents.member_top_product, dtype=np.int32)
    for prefix, m in (("history", contents.history.tocsr()), ("purchased", contents.purchased.tocsr())):
        m.sort_indices()
        arrays[f"{prefix}_indptr"] = m.indptr.astype(np.int64)
        arrays[f"{prefix}_indices"] = m.indices.astype(np.int32)
        if prefix == "history":
            arrays["history_data"] = m.data.astype(np.float32)
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


def read_manifest(bundle_dir: Path) -> Manifest:
    path = bundle_dir / MANIFEST
    if not path.is_file():
        raise BundleError(f"not a bundle: {path} is missing")
    try:
        raw = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise BundleError(f"unreadable manifest {path}: {exc}") from exc
    version = raw.get("schema_version") if isinstance(raw, dict) else None
    if version != SCHEMA_VERSION:
        raise BundleError(
            f"bundle {bundle_dir} has schema version {version!r}; this recsvc reads schema version "
            f"{SCHEMA_VERSION}. Retrain with this version or run a matching recsvc.",
            reason="BUNDLE_SCHEMA_MISMATCH",
        )
    try:
        return Manifest.model_validate(raw)
    except ValidationError as exc:
        raise BundleError(f"invalid manifest {path}: {exc}") from exc


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

    @property
    def purchased(self) -> sp.csr_matrix:
        a = self.arrays
        data = np.ones(a["purchased_indices"].shape[0], dtype=np.float32)
        return sp.csr_matrix(
            (data, a["purchased_indices"], a["purchased_indptr"]), shape=(len(self.members), len(self.items))
        )


def load_bundle(bundle_dir: Path, mmap: bool = True) -> LoadedBundle:
    """Open a bundle. Raises BundleError naming what is wrong (missing file, schema mismatch)."""
    import faiss

    bundle_dir = Path(bundle_dir)
    manifest = read_manifest(bundle_dir)
    try:
        arrays = {name: load_array(bundle_dir / f"{name}.npy", mmap=mmap) for name in _ARRAYS}
        for name in _OPTIONAL_ARRAYS:
            if (bundle_dir / f"{name}.npy").is_file():
                arrays[name] = load_array(bundle_dir / f"{name}.npy", mmap=mmap)
        members = IdMap.load(bundle_dir / "member_ids.npy", mmap=mmap)
        items = IdMap.load(bundle_dir / "item_ids.npy", mmap=mmap)
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
    except (ValueError, OSError, RuntimeError) as exc:
        raise BundleError(f"bundle {bundle_dir} is corrupt: {exc}") from exc
    bundle = LoadedBundle(
        path=bundle_dir,
        manifest=manifest,
        members=members,
        items=items,
        arrays=arrays,
        item_titles=titles,
        categories=vocab["categories"],
        brands=vocab["brands"],
        segments=segments,
        popular=popular,
        indexes=indexes,
        loaded_at=datetime.now(UTC).isoformat(timespec="seconds"),
    )
    if arrays["member_factors"].shape[0] != len(members) or arrays["item_factors"].shape[0] != len(items):
        raise BundleError(f"bundle {bundle_dir} is inconsistent: factor rows do not match id maps")
    top = arrays.get("member_top_product")
    if top is not None and (top.ndim != 2 or top.shape[0] != len(members) or top.dtype != np.int32):
        raise BundleError(
            f"bundle {bundle_dir} is inconsistent: member_top_product is {top.dtype} {top.shape}, "
            f"expected int32 ({len(members)}, N)"
        )
    _check_member_lists(bundle_dir, manifest, arrays, len(members))
    return bundle


def _check_member_lists(
    bundle_dir: Path, manifest: Manifest, arrays: dict[str, np.ndarray], n_members: int
) -> None:
    present = [name for name in MEMBER_LIST_ARRAYS if name in arrays]
    if not present and not manifest.member_lists:
        return
    k = manifest.member_lists.get("k")
    problems = []
    if len(present) != len(MEMBER_LIST_ARRAYS):
        problems.append(f"has {present or 'none'} of {list(MEMBER_LIST_ARRAYS)}")
    if not isinstance(k, int) or k < 1:
        problems.append(f"manifest member_lists.k is {k!r}")
    for name in present:
        arr, want = arrays[name], np.dtype(MEMBER_LIST_ARRAYS[name])
        if arr.dtype != want or arr.shape != (n_members, k):
            problems.append(f"{name} is {arr.dtype} {arr.shape}, expected {want} ({n_members}, {k})")
    if problems:
        raise BundleError(f"bundle {bundle_dir} is inconsistent: stored member lists " + "; ".join(problems))


def add_member_lists(
    bundle_dir: Path, items: np.ndarray, scores: np.ndarray, reasons: np.ndarray, params: dict[str, Any]
) -> None:
    """Add the stored default lists (training/member_lists.py) to a written bundle, replacing any,
    and check that the bundle still loads."""
    manifest = read_manifest(bundle_dir)
    arrays = {"member_list_item": items, "member_list_score": scores, "member_list_reason": reasons}
    for name, arr in arrays.items():
        np.save(bundle_dir / f"{name}.npy", np.ascontiguousarray(arr, dtype=MEMBER_LIST_ARRAYS[name]))
    manifest.member_lists = dict(params)
    (bundle_dir / MANIFEST).write_text(manifest.model_dump_json(indent=2))
    load_bundle(bundle_dir)


def drop_member_lists(bundle_dir: Path) -> None:
    """Remove the stored default lists from a bundle (they belong to the index they came from)."""
    manifest = read_manifest(bundle_dir)
    for name in MEMBER_LIST_ARRAYS:
        (bundle_dir / f"{name}.npy").unlink(missing_ok=True)
    if manifest.member_lists:
        manifest.member_lists = {}
        (bundle_dir / MANIFEST).write_text(manifest.model_dump_json(indent=2))
