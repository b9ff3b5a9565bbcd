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
                             [members, K]: each member's whole default product list of K
                             (items, scores, the history row each reason names, -1 = none),
                             exactly as serving computes it for a member without recent events;
                             item -1 in column 0 = no stored list. Manifest.member_lists holds the
                             serving settings it was computed with; serving uses it only when
                             they are its own (training/member_lists.py).
    item_repurchase_days.npy  optional, float32 [items]: typical days between repeat purchases
                             (0 = not repurchased: durables never come back); with
    purchased_last_ts.npy    int64, aligned with purchased_indices: the epoch seconds of the
                             member's last purchase of the item (recsvc/engine/replenish.py).
                             Manifest.replenish lists the repurchased categories.
    profile_*.npy            optional, together (PROFILE_ARRAYS, training/profiles.py): member
                             profile material, row i <-> member i; Manifest.profiles (ProfileSpec)
                             says what it was computed with. Bundles without them still load;
                             the Members service then answers FAILED_PRECONDITION.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import scipy.sparse as sp
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from recsvc.errors import BundleError
from recsvc.idmap import IdMap
from recsvc.mapped import load_array
from recsvc.settings import ServingSettings

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
# Member profile material (training/profiles.py): all or none; name -> (dtype, columns or None
# for one value per member; a string names the ProfileSpec field holding the column count).
PROFILE_ARRAYS: dict[str, tuple[type, int | str | None]] = {
    "profile_purchases_30d": (np.float32, None),  # BG/NBD expected purchase days, next 30 days
    "profile_purchases_90d": (np.float32, None),
    "profile_p_alive": (np.float32, None),  # NaN: never bought (outside the model)
    "profile_value": (np.float32, None),  # Gamma-Gamma expected spend per purchase; NaN: no buyer
    "profile_value_tier": (np.uint8, None),  # index into VALUE_TIERS
    "profile_outlook": (np.uint8, None),  # index into OUTLOOKS
    "profile_tag": (np.int32, "tags"),  # tag code (ProfileSpec.tag_name), -1 = none; by weight
    "profile_tag_weight": (np.float32, "tags"),
    "profile_channel": (np.float32, "channels"),  # engagement share per event channel
    "profile_hours": (np.uint16, 24),  # events per local hour of day (member's own time zone)
    "profile_timezone": (np.int16, None),  # index into ProfileSpec.timezones, -1 = unknown
    "profile_recent": (np.int32, "recent"),  # events in 7 / 30 days, purchases in 30 days
}
VALUE_TIERS = ("none", "low", "mid", "high")
OUTLOOKS = ("no_purchase_yet", "likely_lost", "uncertain", "likely_active")
RECENT_COUNTS = ("events_7d", "events_30d", "purchases_30d")
# Arrays a bundle may hold; serving works without them (training/member_lists.py writes these).
_OPTIONAL_ARRAYS = (
    "member_list_item",
    "member_list_score",
    "member_list_reason",
    "item_repurchase_days",
    "purchased_last_ts",
    *PROFILE_ARRAYS,
)
# The stored default lists (training/member_lists.py): all three or none, each [members, K].
MEMBER_LIST_ARRAYS = {
    "member_list_item": np.int32,
    "member_list_score": np.float32,
    "member_list_reason": np.int32,
}


class StoredListSpec(BaseModel):
    """What the stored member lists (training/member_lists.py) were computed for: the page size,
    the item kind and the serving settings that shape a list. It records itself in the manifest,
    and it is the one place that decides whether a server's settings (``mismatches``) and a call
    (``covers``) may use the lists; anything it does not cover is computed live."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    k: int = Field(ge=1)
    kind: Literal["product"] = "product"
    diversity: float
    max_per_category: int
    ann_candidates: int
    hnsw_ef_search: int | None = None  # None: no HNSW index took part

    @classmethod
    def for_serving(cls, serving: ServingSettings, k: int, hnsw_ef_search: int | None) -> StoredListSpec:
        return cls(
            k=k,
            diversity=serving.default_diversity,
            max_per_category=serving.max_per_category,
            ann_candidates=serving.ann_candidates,
            hnsw_ef_search=hnsw_ef_search,
        )

    def mismatches(self, serving: ServingSettings, hnsw_ef_search: int | None) -> list[str]:
        """The serving settings that differ from the recorded ones, as "name serving!=stored";
        while any do, the lists are not used. ``default_k`` counts: lists of another length than
        the default page would only serve callers who happen to ask for that length."""
        pairs = (
            ("default_k", serving.default_k, self.k),
            ("default_diversity", serving.default_diversity, self.diversity),
            ("max_per_category", serving.max_per_category, self.max_per_category),
            ("ann_candidates", serving.ann_candidates, self.ann_candidates),
            ("hnsw_ef_search", hnsw_ef_search, self.hnsw_ef_search),
        )
        return [f"{name} {mine}!={theirs}" for name, mine, theirs in pairs if mine != theirs]

    def covers(self, kind: int, k: int, default_filters: bool, diversity: float) -> bool:
        """Whether a call (item kind code, k, filters all default, diversity) is the one the
        lists answer."""
        return kind == KIND_PRODUCT and k == self.k and default_filters and diversity == self.diversity


class ReplenishSpec(BaseModel):
    """What training learned about repeat purchases (training/replenish.py)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    # repurchased category -> its median days between repeat purchases
    categories: dict[str, float] = {}
    items_with_own_interval: int = 0


class ProfileSpec(BaseModel):
    """What the member profile arrays (``PROFILE_ARRAYS``) were computed with: the purchase
    models' parameters, the vocabularies their codes index, and the cut points of the derived
    labels, so a profile can say why (training/profiles.py, docs/profiles.md)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    data_as_of: str  # the events the profiles know end here
    bgnbd: dict[str, float]  # r, alpha, a, b (days)
    gamma_gamma: dict[str, float] | None = None  # p, q, v; None: too few repeat buyers
    tags: int = Field(ge=1)  # interest tags kept per member
    categories: int = Field(ge=0)  # tag codes below this are categories, the rest brands
    channels: list[str]  # columns of profile_channel (event channels)
    timezones: list[str]
    recent: int = len(RECENT_COUNTS)
    # expected 90-day spend (purchases_90d * value) at which the low/mid and mid/high tiers start
    value_tier_cuts: tuple[float, float]
    # P(alive) below the first: likely_lost; from the second: likely_active
    outlook_cuts: tuple[float, float] = (0.3, 0.7)
    # fallback send-time rhythms: share of events per local hour, per lifecycle stage and overall
    segment_hours: dict[str, list[float]]
    all_hours: list[float]

    def columns(self, spec: int | str | None) -> int | None:
        if isinstance(spec, str):
            value = getattr(self, spec)
            return len(value) if isinstance(value, list) else int(value)
        return spec

    def tag_name(self, code: int, categories: list[str], brands: list[str]) -> tuple[str, str]:
        """(kind, name) of a tag code: ("category", "tea") or ("brand", "B12")."""
        if code < self.categories:
            return "category", categories[code]
        return "brand", brands[code - self.categories]


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
    # What the stored default lists were computed for (None = no lists).
    member_lists: StoredListSpec | None = None
    # Repeat-purchase intervals in the bundle (None: an older bundle; nothing comes back).
    replenish: ReplenishSpec | None = None
    # What the member profile arrays were computed with (None = the bundle has none).
    profiles: ProfileSpec | None = None

    @field_validator("member_lists", mode="before")
    @classmethod
    def _no_lists(cls, value: Any) -> Any:
        return value or None  # bundles record "no lists" as {}
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
    # Replenishment: days between repeat purchases per item, and the last purchase time with the
    # same pattern as ``purchased`` (both or neither).
    item_repurchase_days: np.ndarray | None = None
    purchased_last_ts: sp.csr_matrix | None = None

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
        if self.item_repurchase_days is not None:
            checks.append((self.item_repurchase_days.shape == (n_i,), "item_repurchase_days length != items"))
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


# Files every bundle holds besides manifest.json and the arrays in _ARRAYS.
_FILES = (
    "member_ids.npy",
    "item_ids.npy",
    "item_titles.json",
    "vocab.json",
    "segments.parquet",
    "popular.parquet",
)


def required_files(manifest: Manifest) -> list[str]:
    """The files a bundle with this manifest must hold (before looking at its arrays): the fixed
    ones, the stored member lists when the manifest has them, and the ANN index of every kind the
    manifest's ``index`` section describes. ``load_bundle`` also requires the index of every kind
    that has items with a vector, whatever the manifest says."""
    names = [*_FILES, *(f"{name}.npy" for name in _ARRAYS)]
    if manifest.member_lists:
        names += [f"{name}.npy" for name in MEMBER_LIST_ARRAYS]
    names += [
        f"index_{kind}.faiss" for kind in KIND_NAMES.values() if isinstance(manifest.index.get(kind), dict)
    ]
    return names


def _check_files(bundle_dir: Path, names: list[str]) -> None:
    """Each of ``names`` exists in ``bundle_dir`` as a non-empty file, before anything is loaded:
    a reload must refuse a half-copied bundle, naming the file, while the old model serves."""
    for name in names:
        path = bundle_dir / name
        try:
            size = path.stat().st_size if path.is_file() else -1
        except OSError:
            size = -1
        if size < 0:
            raise BundleError(f"bundle {bundle_dir} is incomplete: {name} is missing")
        if size == 0:
            raise BundleError(f"bundle {bundle_dir} is incomplete: {name} is empty")


def _check_indexes(bundle_dir: Path, arrays: dict[str, np.ndarray], indexes: dict[str, Any]) -> None:
    """An index for every kind with items that have a vector (training builds exactly those), each
    holding between 1 and that kind's item count vectors. Without the check a bundle missing
    ``index_product.faiss`` loaded and served from exact search, unnoticed."""
    kind, factors = arrays["item_kind"], arrays["item_factors"]
    for code, name in KIND_NAMES.items():
        rows = np.flatnonzero(kind == code)
        has_vectors = rows.size > 0 and bool(np.any(factors[rows] != 0))
        index = indexes.get(name)
        if index is None:
            if has_vectors:
                raise BundleError(f"bundle {bundle_dir} is incomplete: index_{name}.faiss is missing")
            continue
        if not 0 < int(index.ntotal) <= rows.size:
            raise BundleError(
                f"bundle {bundle_dir} is inconsistent: index_{name}.faiss holds {int(index.ntotal)} "
                f"vectors for {rows.size} {name} items"
            )


def load_bundle(bundle_dir: Path, mmap: bool = True) -> LoadedBundle:
    """Open a bundle. Raises BundleError naming what is wrong (missing or empty file, schema
    mismatch, inconsistent contents)."""
    import faiss

    bundle_dir = Path(bundle_dir)
    manifest = read_manifest(bundle_dir)
    present_indexes = [p.name for p in sorted(bundle_dir.glob("index_*.faiss"))]
    _check_files(bundle_dir, required_files(manifest) + present_indexes)
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
    _check_member_lists(bundle_dir, manifest, arrays, len(members))
    _check_indexes(bundle_dir, arrays, indexes)
    if ("purchased_last_ts" in arrays) != ("item_repurchase_days" in arrays) or (
        "purchased_last_ts" in arrays
        and (
            arrays["purchased_last_ts"].shape != arrays["purchased_indices"].shape
            or arrays["item_repurchase_days"].shape != (len(items),)
        )
    ):
        raise BundleError(f"bundle {bundle_dir} is inconsistent: replenishment arrays do not match purchases")
    _check_profiles(bundle_dir, manifest, arrays, len(members))
    return bundle


def _check_profiles(
    bundle_dir: Path, manifest: Manifest, arrays: dict[str, np.ndarray], n_members: int
) -> None:
    present = [name for name in PROFILE_ARRAYS if name in arrays]
    spec = manifest.profiles
    if not present and spec is None:
        return
    problems = []
    if len(present) != len(PROFILE_ARRAYS):
        problems.append(f"has {len(present)} of the {len(PROFILE_ARRAYS)} profile arrays")
    if spec is None:
        problems.append("the manifest records no profiles")
    else:
        for name in present:
            dtype, cols = PROFILE_ARRAYS[name]
            width = spec.columns(cols)
            want = (n_members,) if width is None else (n_members, width)
            arr = arrays[name]
            if arr.dtype != np.dtype(dtype) or arr.shape != want:
                problems.append(f"{name} is {arr.dtype} {arr.shape}, expected {np.dtype(dtype)} {want}")
    if problems:
        raise BundleError(f"bundle {bundle_dir} is inconsistent: member profiles " + "; ".join(problems))


def add_profiles(bundle_dir: Path, arrays: dict[str, np.ndarray], spec: ProfileSpec) -> None:
    """Add the member profile arrays (training/profiles.py) to a written bundle, replacing any,
    and check that the bundle still loads."""
    manifest = read_manifest(bundle_dir)
    missing = sorted(set(PROFILE_ARRAYS) - set(arrays))
    if missing:
        raise BundleError(f"profile arrays missing: {missing}")
    for name, (dtype, _) in PROFILE_ARRAYS.items():
        np.save(bundle_dir / f"{name}.npy", np.ascontiguousarray(arrays[name], dtype=dtype))
    manifest.profiles = spec
    (bundle_dir / MANIFEST).write_text(manifest.model_dump_json(indent=2))
    load_bundle(bundle_dir)


def _check_member_lists(
    bundle_dir: Path, manifest: Manifest, arrays: dict[str, np.ndarray], n_members: int
) -> None:
    present = [name for name in MEMBER_LIST_ARRAYS if name in arrays]
    if not present and manifest.member_lists is None:
        return
    k = manifest.member_lists.k if manifest.member_lists is not None else None
    problems = []
    if len(present) != len(MEMBER_LIST_ARRAYS):
        problems.append(f"has {present or 'none'} of {list(MEMBER_LIST_ARRAYS)}")
    if k is None:
        problems.append("the manifest records no member_lists")
    for name in present:
        arr, want = arrays[name], np.dtype(MEMBER_LIST_ARRAYS[name])
        if arr.dtype != want or arr.shape != (n_members, k):
            problems.append(f"{name} is {arr.dtype} {arr.shape}, expected {want} ({n_members}, {k})")
    if problems:
        raise BundleError(f"bundle {bundle_dir} is inconsistent: stored member lists " + "; ".join(problems))


def add_member_lists(
    bundle_dir: Path, items: np.ndarray, scores: np.ndarray, reasons: np.ndarray, spec: StoredListSpec
) -> None:
    """Add the stored default lists (training/member_lists.py) to a written bundle, replacing any,
    and check that the bundle still loads."""
    manifest = read_manifest(bundle_dir)
    arrays = {"member_list_item": items, "member_list_score": scores, "member_list_reason": reasons}
    for name, arr in arrays.items():
        np.save(bundle_dir / f"{name}.npy", np.ascontiguousarray(arr, dtype=MEMBER_LIST_ARRAYS[name]))
    manifest.member_lists = spec
    (bundle_dir / MANIFEST).write_text(manifest.model_dump_json(indent=2))
    load_bundle(bundle_dir)


def drop_member_lists(bundle_dir: Path) -> None:
    """Remove the stored default lists from a bundle (they belong to the index they came from)."""
    manifest = read_manifest(bundle_dir)
    for name in MEMBER_LIST_ARRAYS:
        (bundle_dir / f"{name}.npy").unlink(missing_ok=True)
    if manifest.member_lists is not None:
        manifest.member_lists = None
        (bundle_dir / MANIFEST).write_text(manifest.model_dump_json(indent=2))
