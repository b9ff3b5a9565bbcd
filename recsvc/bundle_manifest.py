"""The bundle's manifest: what a bundle is, what its optional parts were computed with, and the
constants both training and serving name its contents by (recsvc/bundle.py reads and writes the
arrays). Format: docs/bundle.md.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from recsvc.errors import BundleError
from recsvc.settings import CONFIDENCE_SCALES, CONFIDENCE_WEIGHTINGS, ServingSettings

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
KIND_PRODUCT = 1
KIND_CONTENT = 2
KIND_NAMES = {KIND_PRODUCT: "product", KIND_CONTENT: "content"}
# Manifest index type of the norm-augmented (MIPS-to-L2) IVF index, training/ann.py.
INDEX_L2_AUGMENTED = "ivf_flat_l2_augmented"
INDEX_FLAT = "flat_ip"  # exact: every item scored (kinds below training.exact_index_below)
LIFECYCLE_STAGES = ("new", "active", "at_risk", "dormant", "churned")
ALL = "all"
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


class StoredListSpec(BaseModel):
    """What the stored member lists (training/member_lists.py) were computed for: the page size,
    the item kind and the serving settings that shape a list. It records itself in the manifest,
    and it is the one place that decides whether a server's settings (``mismatches``) and a call
    (``covers``) may use the lists; anything it does not cover is computed live."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    k: int = Field(ge=1)
    # Picks stored beyond k, in the order MMR chose them, to stand in for picks the live catalog
    # has since made unavailable (sold out, delisted): the arrays hold k + spare per member.
    spare: int = Field(0, ge=0)
    kind: Literal["product"] = "product"
    diversity: float
    max_per_category: int
    ann_candidates: int
    hnsw_ef_search: int | None = None  # None: no HNSW index took part
    # the lists leave out every item the member interacted with (``exclude_seen``, the default
    # filters); lists of bundles without it left out purchases only and answer no call
    exclude_seen: bool = False

    @classmethod
    def for_serving(
        cls, serving: ServingSettings, k: int, hnsw_ef_search: int | None, spare: int = 0
    ) -> StoredListSpec:
        return cls(
            k=k,
            spare=spare,
            diversity=serving.default_diversity,
            max_per_category=serving.max_per_category,
            ann_candidates=serving.ann_candidates,
            hnsw_ef_search=hnsw_ef_search,
            exclude_seen=True,
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
        return (
            kind == KIND_PRODUCT
            and k == self.k
            and default_filters
            and diversity == self.diversity
            and self.exclude_seen
        )


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


FAMILIES = ("als", "itemknn", "blend")
ModelFamily = Literal["als", "itemknn", "blend"]


class FoldInSpec(BaseModel):
    """How the engine that fitted the factors solved a member's vector, so serving recomputes a
    member from their events (recent ones included) as that engine would have
    (``recsvc.realtime.recalculate_member``). Both solve ``(YtY + Yt(C - I)Y + lambda I) x = Yt C p``
    over the member's items; they differ in C and lambda.

    implicit (the defaults): ``C = alpha * r`` on the member's items and the same ``lambda =
    regularization`` for everyone. Spark MLlib: ``C = 1 + alpha * r`` and ``lambda = regParam *
    n``, n the member's items with a positive r (ALS-WR); ``reg_per_item`` is that regParam.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    confidence_offset: float = Field(0.0, ge=0)
    reg_per_item: float = Field(0.0, ge=0)


class FamilySpec(BaseModel):
    """Which model family serves the bundle's personal lists (training/gate.py chooses it) and
    what its scoring needs beyond the ALS arrays (recsvc/engine/itemknn_source.py scores it).

    ``als``: the member vector's inner products (the FAISS indexes). ``itemknn``: the sum of the
    item-item similarities of the member's history items, weighted by their confidence r_ui
    (``item_neighbour_{item,score}.npy``, ``neighbours`` per item). ``blend``: ``als_weight *
    als / max(als) + (1 - als_weight) * itemknn / max(itemknn)``, maxima over the requested
    kind's items (``itemknn_source.als_scale``: a member without a positive ALS score divides by
    ``|u| max|v|`` instead).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    family: ModelFamily = "als"
    neighbours: int | None = Field(None, ge=1)  # columns of the neighbour arrays
    als_weight: float | None = Field(None, ge=0.0, le=1.0)  # blend only
    # The member history items an item-item score sums over: the N of largest confidence
    # (``itemknn_source.strongest``); None: all of them (bundles from before the setting).
    history_items: int | None = Field(None, ge=1)
    # The trend prior over the family's score (recsvc/engine/trend_source.py, ``item_trend.npy``):
    # ``(1 - trend_weight) * score + trend_weight * trend / max(trend)``; 0 = none.
    trend_weight: float = Field(0.0, ge=0.0, lt=1.0)
    trend_days: int | None = Field(None, ge=1)  # the days of events ``item_trend.npy`` counts

    @model_validator(mode="after")
    def _complete(self) -> FamilySpec:
        if (self.trend_weight > 0) != (self.trend_days is not None):
            raise ValueError("trend_days is set exactly when trend_weight is above 0")
        if self.family != "als" and self.neighbours is None:
            raise ValueError(f"family {self.family!r} needs neighbours (the neighbour arrays' width)")
        if (self.family == "blend") != (self.als_weight is not None):
            raise ValueError("als_weight is set exactly when the family is 'blend'")
        return self

    @property
    def knn_weight(self) -> float:
        """The item-item share of a score (1 for ``itemknn``, 0 for ``als``)."""
        if self.family == "als":
            return 0.0
        return 1.0 if self.als_weight is None else 1.0 - self.als_weight


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

    # The model family that serves personal lists; bundles from before the field serve ALS.
    family: FamilySpec = FamilySpec()
    # Which library fitted the factors ("implicit" or "spark", training.engine). Serving does not
    # read it: both write the same arrays. Bundles from before the field were all implicit's.
    engine: str = "implicit"
    # The engine's member solve (bundles from before the field were implicit's).
    fold_in: FoldInSpec = FoldInSpec()

    @field_validator("member_lists", mode="before")
    @classmethod
    def _no_lists(cls, value: Any) -> Any:
        return value or None  # bundles record "no lists" as {}

    @field_validator("params")
    @classmethod
    def _known_scale(cls, value: dict[str, Any]) -> dict[str, Any]:
        # serving folds recent events in on this scale: an unknown one must stop the load, not a call
        scale = value.get("confidence_scale", "linear")
        if scale not in CONFIDENCE_SCALES:
            raise ValueError(f"params.confidence_scale is {scale!r}; expected one of {CONFIDENCE_SCALES}")
        weighting = value.get("confidence_weighting", "none")
        if weighting not in CONFIDENCE_WEIGHTINGS:
            raise ValueError(
                f"params.confidence_weighting is {weighting!r}; expected one of {CONFIDENCE_WEIGHTINGS}"
            )
        if weighting == "bm25":
            k1, b = value.get("bm25_k1"), value.get("bm25_b")
            if not (_in_range(k1, 0.0, 1e6) and k1 != 0):
                raise ValueError(f"params.bm25_k1 is {k1!r}; BM25 weighting needs a number in (0, 1e6]")
            if not _in_range(b, 0.0, 1.0):
                raise ValueError(f"params.bm25_b is {b!r}; BM25 weighting needs a number in [0, 1]")
            length = value.get("bm25_avg_length")
            if not (_in_range(length, 0.0, math.inf) and length != 0):
                raise ValueError(
                    f"params.bm25_avg_length is {length!r}; BM25 weighting needs the average length above 0"
                )
        return value


def _in_range(value: Any, low: float, high: float) -> bool:
    """A JSON number (not a bool) in [low, high]."""
    if not isinstance(value, int | float) or isinstance(value, bool):
        return False
    return math.isfinite(value) and low <= value <= high


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
