"""Step 1: ingest and validate, then turn the clean tables into arrays the other steps share.

Reads: a data folder through ``pipelines.ingest.load_dataset`` (the data contract; bad rows are
quarantined there) or an already loaded dataset with the same attributes (``events``,
``catalog``, ``members``, ``quarantine``, ``counts``).
Writes: a :class:`Prepared` in memory: the member and item id maps (``recsvc.idmap``), one
vectorised row per clean event (member row, item row, event-type code, epoch seconds, channel
code, amount), catalog attributes by item row, the featured-products matrix of content, the
training cutoff, a data fingerprint and row counts (including quarantined rows).
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd
import scipy.sparse as sp

from recsvc.bounds import MAX_AMOUNT
from recsvc.bundle import KIND_CONTENT, KIND_PRODUCT
from recsvc.errors import DataContractError
from recsvc.idmap import IdMap
from recsvc.settings import EVENT_CHANNELS, EVENT_TYPES, MAX_EVENT_CHANNELS, DataSettings

log = logging.getLogger(__name__)

DAY_S = 86_400
PURCHASE_CODE = EVENT_TYPES.index("purchase")


class DatasetLike(Protocol):
    """What training needs from ``pipelines.ingest.Dataset``."""

    events: pd.DataFrame
    catalog: pd.DataFrame
    members: pd.DataFrame
    quarantine: pd.DataFrame
    counts: dict[str, Any]


@dataclass
class EventArrays:
    """One entry per clean event, aligned arrays (struct of arrays keeps 50M events compact)."""

    member: np.ndarray  # int32 member row
    item: np.ndarray  # int32 item row
    etype: np.ndarray  # int8 index into EVENT_TYPES
    ts: np.ndarray  # int64 epoch seconds
    channel: np.ndarray  # int8 index into Prepared.channels (-1 unknown)
    amount: np.ndarray  # float32, 0 where missing

    def __len__(self) -> int:
        return int(self.member.shape[0])

    def select(self, mask: np.ndarray) -> EventArrays:
        return EventArrays(
            self.member[mask],
            self.item[mask],
            self.etype[mask],
            self.ts[mask],
            self.channel[mask],
            self.amount[mask],
        )


@dataclass
class Prepared:
    members: IdMap
    items: IdMap
    events: EventArrays
    item_kind: np.ndarray  # uint8 KIND_PRODUCT / KIND_CONTENT
    item_category: np.ndarray  # int32 into categories
    item_brand: np.ndarray  # int32 into brands
    item_price: np.ndarray
    item_in_stock: np.ndarray
    item_published_at: np.ndarray  # int64 epoch seconds, 0 unknown
    item_titles: list[str]
    categories: list[str]
    brands: list[str]
    featured: sp.csr_matrix  # [items x items]: row = content item, columns = featured products
    member_registered_at: np.ndarray  # int64 epoch seconds, 0 unknown
    cutoff: int  # epoch seconds of the last clean event: training uses data up to here
    fingerprint: str
    counts: dict[str, int] = field(default_factory=dict)
    # The event channels the events' channel codes index: data.event_channels and any the mapping
    # file declared (the validated events' categories), so each gets its own popular lists.
    channels: tuple[str, ...] = EVENT_CHANNELS

    @property
    def cutoff_iso(self) -> str:
        return datetime.fromtimestamp(self.cutoff, UTC).isoformat(timespec="seconds")


def load(
    data_dir: Path,
    data_settings: DataSettings,
    *,
    mapping: Path | None = None,
    encoding: str | None = None,
    allow_quarantine: bool = False,
) -> DatasetLike:
    """Read and validate a data folder with the data contract's loader; stop when more than
    ``data.max_quarantined_share`` of the events or catalog was quarantined (data-quality gate)
    unless ``allow_quarantine``. Quarantined rows are written to ``<data_dir>/quarantine/`` either
    way (``pipelines.ingest.keep_quarantine_files``)."""
    from pipelines.ingest import load_dataset
    from pipelines.mapping import load_mapping

    if not data_dir.is_dir():
        raise DataContractError(f"data folder not found: {data_dir}")
    return load_dataset(
        data_dir,
        data_settings,
        encoding=encoding,
        mapping=load_mapping(mapping),
        max_quarantined_share=None if allow_quarantine else data_settings.max_quarantined_share,
        keep_quarantine=True,
    )


def epoch_seconds(values: pd.Series) -> np.ndarray:
    """Datetimes (any unit, tz-aware or naive UTC) to int64 epoch seconds; NaT -> 0."""
    ts = pd.to_datetime(values, utc=True)
    out = ts.dt.tz_convert(None).to_numpy(dtype="datetime64[s]").astype(np.int64)
    out[ts.isna().to_numpy()] = 0
    return out


def _codes(values: pd.Series, vocabulary: tuple[str, ...]) -> np.ndarray:
    return pd.Categorical(values, categories=list(vocabulary)).codes.astype(np.int8)


def _channel_vocabulary(values: pd.Series) -> tuple[str, ...]:
    """Validated events carry their accepted channels as categories (pipelines.validate); a frame
    built in code gets the built-in channels and then the others it holds, in sorted order."""
    if isinstance(values.dtype, pd.CategoricalDtype):
        names = tuple(str(c) for c in values.cat.categories)
    else:
        seen = pd.unique(values.dropna().astype(str))
        names = EVENT_CHANNELS + tuple(sorted(c for c in seen if c and c not in EVENT_CHANNELS))
    if len(names) > MAX_EVENT_CHANNELS:
        raise DataContractError(f"{len(names)} event channels; at most {MAX_EVENT_CHANNELS} are supported")
    return names


def _rows(idmap: IdMap, values: pd.Series) -> np.ndarray:
    # factorize first: converting 50M strings to bytes one by one is the slow part
    codes, uniques = pd.factorize(values)
    rows = idmap.rows(np.asarray(uniques, dtype=object).astype(str))
    return np.where(codes >= 0, rows[codes], -1)


def _vocab(values: pd.Series) -> tuple[np.ndarray, list[str]]:
    codes, uniques = pd.factorize(values.fillna("").astype(str), sort=True)
    return codes.astype(np.int32), [str(u) for u in uniques]


def _featured_lists(catalog: pd.DataFrame) -> pd.Series:
    if "featured_item_ids" not in catalog:
        return pd.Series([[] for _ in range(len(catalog))], index=catalog.index)

    def as_list(v: Any) -> list[str]:
        if v is None or (isinstance(v, float) and np.isnan(v)):
            return []
        if isinstance(v, str):
            return [x for x in v.split("|") if x]
        return [str(x) for x in v]

    return catalog["featured_item_ids"].map(as_list)


def _fingerprint(parts: list[np.ndarray]) -> str:
    h = hashlib.blake2b(digest_size=16)
    for arr in parts:
        h.update(str(arr.dtype).encode())
        h.update(np.ascontiguousarray(arr).view(np.uint8).tobytes())
    return h.hexdigest()


def _amounts(column: pd.Series) -> np.ndarray:
    """Amounts as float32 within 0..MAX_AMOUNT (NaN = 0). Validated data already is; a frame built
    in code (tests, ``training.synthetic``) is clamped here, before the float32 cast would turn a
    huge value into inf and the monetary sums in segments with it."""
    raw = pd.to_numeric(column, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    finite = np.isfinite(raw)
    clamped = np.where(finite, np.clip(raw, 0.0, MAX_AMOUNT), 0.0)
    changed = int(np.count_nonzero(~finite & ~np.isnan(raw)) + np.count_nonzero(finite & (clamped != raw)))
    if changed:
        log.warning("clamped amounts=%d outside 0..%g or not finite", changed, MAX_AMOUNT)
    return clamped.astype(np.float32)


def prepare(dataset: DatasetLike) -> Prepared:
    """Build id maps and event arrays. Raises DataContractError if nothing is left to train on."""
    events, catalog, members = dataset.events, dataset.catalog, dataset.members
    missing = [c for c in ("member_id", "item_id", "event_type", "ts") if c not in events]
    if missing:
        raise DataContractError(f"events table lacks columns {missing}")
    catalog, items = catalog_items(catalog)
    if len(events) == 0:
        raise DataContractError("no clean events: nothing to train on (see the quarantine counts)")
    # unique first, then str: converting 50M categorical ids to str first costs GBs
    member_map = member_map_of(members, np.asarray(pd.unique(events["member_id"]), dtype=object))

    m_rows = _rows(member_map, events["member_id"])
    i_rows = _rows(items, events["item_id"])
    etype = _codes(events["event_type"], EVENT_TYPES)
    keep = (i_rows >= 0) & (m_rows >= 0) & (etype >= 0)
    dropped = int((~keep).sum())
    if dropped:
        log.warning("dropped events=%d not matching the catalog or event types", dropped)
    if "channel" in events:
        channels = _channel_vocabulary(events["channel"])
        channel = _codes(events["channel"], channels)
    else:
        channels, channel = EVENT_CHANNELS, np.full(len(events), -1, dtype=np.int8)
    amount = _amounts(events["amount"]) if "amount" in events else np.zeros(len(events), dtype=np.float32)
    ev = EventArrays(
        member=m_rows.astype(np.int32),
        item=i_rows.astype(np.int32),
        etype=etype,
        ts=epoch_seconds(events["ts"]),
        channel=channel,
        amount=amount,
    )
    if dropped:
        ev = ev.select(keep)
    prepared = from_events(catalog, items, members, member_map, ev, channels)
    quarantine = dataset.quarantine
    reasons = (
        {str(k): int(v) for k, v in quarantine["reason"].value_counts().items()}
        if quarantine is not None and len(quarantine) and "reason" in quarantine
        else {}
    )
    prepared.counts = row_counts(
        dataset.counts or {}, len(quarantine) if quarantine is not None else 0, reasons, prepared, dropped
    )
    return prepared


def catalog_items(catalog: pd.DataFrame) -> tuple[pd.DataFrame, IdMap]:
    """The clean catalog in item-row order and its item id map."""
    if len(catalog) == 0:
        raise DataContractError("the catalog has no clean rows: nothing to recommend")
    catalog = catalog.sort_values("item_id", kind="stable").reset_index(drop=True)
    items = IdMap.from_values(catalog["item_id"].astype(str).to_numpy())
    if len(items) != len(catalog):
        raise DataContractError("catalog item ids are not unique")
    return catalog, items


def member_map_of(members: pd.DataFrame, event_member_ids: np.ndarray) -> IdMap:
    """The member id map: every member of the members table and every member the events name."""
    member_ids = np.concatenate(
        [
            members["member_id"].astype(str).unique() if len(members) else np.array([], dtype=str),
            event_member_ids.astype(str),
        ]
    )
    return IdMap.from_values(member_ids.astype(str))


def from_events(
    catalog: pd.DataFrame,
    items: IdMap,
    members: pd.DataFrame,
    member_map: IdMap,
    ev: EventArrays,
    channels: tuple[str, ...],
) -> Prepared:
    """A :class:`Prepared` (without counts) from the sorted catalog (:func:`catalog_items`), the
    members table and the clean events as arrays of rows in ``member_map`` and ``items``."""
    if len(ev) == 0:
        raise DataContractError("no clean events refer to catalog items: nothing to train on")
    kind = np.where(catalog["kind"].astype(str).to_numpy() == "content", KIND_CONTENT, KIND_PRODUCT)
    category, categories = _vocab(catalog["category"]) if "category" in catalog else (None, [""])
    brand, brands = _vocab(catalog["brand"]) if "brand" in catalog else (None, [""])
    n_items = len(items)
    featured_lists = _featured_lists(catalog)
    lengths = featured_lists.map(len).to_numpy()
    flat = np.concatenate([np.asarray(x, dtype=object) for x in featured_lists if x] or [np.array([])])
    f_cols = items.rows(flat.astype(str)) if flat.size else np.zeros(0, dtype=np.int64)
    f_rows = np.repeat(np.arange(n_items), lengths)
    ok = f_cols >= 0
    ok &= kind[np.clip(f_cols, 0, None)] == KIND_PRODUCT if f_cols.size else ok
    featured = sp.csr_matrix(
        (np.ones(int(ok.sum()), dtype=np.float32), (f_rows[ok], f_cols[ok])), shape=(n_items, n_items)
    )

    registered = np.zeros(len(member_map), dtype=np.int64)
    if len(members) and "registered_at" in members:
        rows = _rows(member_map, members["member_id"])
        registered[rows] = epoch_seconds(members["registered_at"])

    prepared = Prepared(
        members=member_map,
        items=items,
        events=ev,
        item_kind=kind.astype(np.uint8),
        item_category=category if category is not None else np.zeros(n_items, dtype=np.int32),
        item_brand=brand if brand is not None else np.zeros(n_items, dtype=np.int32),
        item_price=pd.to_numeric(catalog["price"], errors="coerce").fillna(0).to_numpy(np.float32)
        if "price" in catalog
        else np.zeros(n_items, dtype=np.float32),
        item_in_stock=catalog["in_stock"].fillna(False).astype(bool).to_numpy()
        if "in_stock" in catalog
        else np.ones(n_items, dtype=bool),
        item_published_at=epoch_seconds(catalog["published_at"])
        if "published_at" in catalog
        else np.zeros(n_items, dtype=np.int64),
        item_titles=catalog["title"].fillna("").astype(str).tolist()
        if "title" in catalog
        else [""] * n_items,
        categories=categories,
        brands=brands,
        featured=featured,
        member_registered_at=registered,
        cutoff=int(ev.ts.max()),
        fingerprint="",
        channels=channels,
    )
    prepared.fingerprint = _fingerprint(
        [
            member_map.array,
            items.array,
            ev.member,
            ev.item,
            ev.etype,
            ev.ts,
            ev.channel,
            ev.amount,
            prepared.item_kind,
            featured.indptr,
            featured.indices,
        ]
    )
    return prepared


def row_counts(
    ingest: dict[str, Any], quarantined: int, reasons: dict[str, int], prepared: Prepared, dropped: int
) -> dict[str, int]:
    """Counts only (never ids): what was read (``ingest``: "<table>.rows_read" ...), quarantined
    (rows, and rows by reason) and kept."""
    counts: dict[str, int] = {}
    for key, value in ingest.items():
        if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
            counts[f"ingest.{key}"] = int(value)
    counts["quarantined_rows"] = quarantined
    for reason, n in sorted(reasons.items()):
        counts[f"quarantined.{reason}"] = int(n)
    counts["events"] = len(prepared.events)
    counts["events_dropped_by_training"] = dropped
    counts["members"] = len(prepared.members)
    counts["items"] = len(prepared.items)
    counts["products"] = int((prepared.item_kind == KIND_PRODUCT).sum())
    counts["content"] = int((prepared.item_kind == KIND_CONTENT).sum())
    counts["purchases"] = int((prepared.events.etype == PURCHASE_CODE).sum())
    return counts
