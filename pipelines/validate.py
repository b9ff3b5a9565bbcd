"""Row-level checks of the data contract: clean, typed tables plus quarantined rows with reasons.

Reads a data folder through ``pipelines.read`` (catalog, then members, then events, because
events are checked against the other two). Every row either comes out in a clean table or goes
to that table's quarantine with exactly one reason code (the first check it fails, in the order
listed in docs/data.md) and a short detail. Nothing is dropped silently: ``rows_read ==
len(clean) + len(quarantine)`` for every table. ``ValidationResult.write`` writes
``<out>/<table>.csv`` quarantine files and ``<out>/summary.json``.

Events are read and checked in chunks of ``data.validate_chunk_rows`` rows against the clean
member and item ids; only compact arrays of the accepted rows are kept, and the duplicate check
runs over all of them at the end (a 64-bit hash per row finds candidates, an exact comparison
decides), so 50M events fit in a few GiB.

Clean tables (the types later steps rely on):

- events: member_id, item_id (category: the ids that occur, in members/catalog order),
  event_type, channel (category over the contract's values), ts (datetime64[us, UTC]),
  quantity (int16, empty means 1), amount (float64, empty means 0 except for purchases)
- catalog: item_id, title, category, brand (str), kind (category), price (float64), in_stock
  (bool), published_at (datetime64[us, UTC], NaT = unknown), featured_item_ids (tuple of str)
- members: member_id, tier, timezone (str), registered_at (datetime64[us, UTC]),
  consent_<channel> (nullable boolean; <NA> = never asked, which outreach treats as no)
"""

from __future__ import annotations

import json
import logging
import zoneinfo
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipelines.contract import (
    CATALOG,
    CONSENT_COLUMNS,
    EARLIEST_EVENT_TS,
    EVENT_CHANNELS,
    EVENT_TYPES,
    EVENTS,
    FEATURED_SEPARATOR,
    ID_PATTERN,
    ITEM_KINDS,
    MAX_AMOUNT,
    MAX_LABEL_LENGTH,
    MAX_PRICE,
    MAX_QUANTITY,
    MAX_TITLE_LENGTH,
    MEMBERS,
    Reason,
    TableSpec,
)
from pipelines.read import REPLACEMENT_CHAR, count_rows, find_table_file, read_chunks, read_table
from recsvc.csvsafe import write_frame
from recsvc.settings import DataSettings

log = logging.getLogger(__name__)

QUARANTINE_DIRNAME = "quarantine"
SUMMARY_FILE = "summary.json"
_TRUE = frozenset({"true", "1", "yes", "y", "t"})
_FALSE = frozenset({"false", "0", "no", "n", "f"})
_DETAIL_MAX = 80
# Event columns read as categoricals: few distinct values per chunk, each checked once.
_EVENT_DICTIONARY = ("member_id", "item_id", "event_type", "channel", "quantity", "amount")
_PURCHASE = EVENT_TYPES.index("purchase")
_EARLIEST_EVENT = pd.Timestamp(EARLIEST_EVENT_TS)


@dataclass
class TableResult:
    """One table after validation."""

    name: str
    source: Path
    rows_read: int
    clean: pd.DataFrame
    # source_row (0-based data row in the file), reason, detail, then the row's values as text.
    quarantine: pd.DataFrame

    @property
    def reason_counts(self) -> dict[str, int]:
        if self.quarantine.empty:
            return {}
        counts = self.quarantine["reason"].value_counts()
        return {str(k): int(v) for k, v in sorted(counts.items())}

    def summary(self) -> dict[str, Any]:
        return {
            "file": str(self.source),
            "rows_read": self.rows_read,
            "rows_clean": len(self.clean),
            "rows_quarantined": len(self.quarantine),
            "reasons": self.reason_counts,
        }


@dataclass
class ValidationResult:
    data_dir: Path
    checked_at: datetime
    tables: dict[str, TableResult] = field(default_factory=dict)

    @property
    def events(self) -> pd.DataFrame:
        return self.tables[EVENTS.name].clean

    @property
    def catalog(self) -> pd.DataFrame:
        return self.tables[CATALOG.name].clean

    @property
    def members(self) -> pd.DataFrame:
        return self.tables[MEMBERS.name].clean

    @property
    def rows_quarantined(self) -> int:
        return sum(len(t.quarantine) for t in self.tables.values())

    def summary(self) -> dict[str, Any]:
        return {
            "data_dir": str(self.data_dir),
            "checked_at": self.checked_at.isoformat(),
            "rows_quarantined": self.rows_quarantined,
            "tables": {name: t.summary() for name, t in self.tables.items()},
        }

    def write(self, out_dir: Path) -> list[Path]:
        """Write one quarantine CSV per table (header only when nothing was quarantined, so a
        stale file from an earlier run never survives) and summary.json. The rows hold values
        exactly as a hostile file sent them, so cells a spreadsheet would run as a formula are
        escaped (recsvc.csvsafe)."""
        out_dir.mkdir(parents=True, exist_ok=True)
        written = []
        for name, table in self.tables.items():
            path = out_dir / f"{name}.csv"
            write_frame(table.quarantine, path)
            written.append(path)
        summary = out_dir / SUMMARY_FILE
        summary.write_text(json.dumps(self.summary(), indent=2) + "\n")
        written.append(summary)
        return written


def validate_dir(data_dir: Path, settings: DataSettings, now: datetime | None = None) -> ValidationResult:
    """Read and check every table in ``data_dir``. Raises DataContractError for unusable files."""
    now = now or datetime.now(UTC)
    result = ValidationResult(data_dir=data_dir, checked_at=now)
    paths = {spec.name: find_table_file(data_dir, spec) for spec in (CATALOG, MEMBERS, EVENTS)}
    catalog = validate_catalog(read_table(paths["catalog"], CATALOG), paths["catalog"], settings)
    members = validate_members(read_table(paths["members"], MEMBERS), paths["members"], settings, now)
    events_path = paths["events"]
    events = validate_events(
        lambda: read_chunks(events_path, EVENTS, settings.validate_chunk_rows, _EVENT_DICTIONARY),
        events_path,
        settings,
        now,
        item_ids=catalog.clean["item_id"],
        member_ids=members.clean["member_id"],
        rows_hint=count_rows(events_path),
    )
    for table in (catalog, members, events):
        result.tables[table.name] = table
        log.info(
            "validated table=%s rows=%d clean=%d quarantined=%d",
            table.name,
            table.rows_read,
            len(table.clean),
            len(table.quarantine),
        )
    return result


class _Verdicts:
    """The first failing check per row. Later checks never overwrite an earlier reason."""

    def __init__(self, raw: pd.DataFrame) -> None:
        self.raw = raw
        n = len(raw)
        self.reason = np.full(n, None, dtype=object)
        self.detail = np.full(n, None, dtype=object)
        self.ok = np.ones(n, dtype=bool)

    def flag(
        self, bad: pd.Series | np.ndarray, code: str, column: str | None = None, detail: str | None = None
    ) -> None:
        mask = np.asarray(bad, dtype=bool) & self.ok
        if not mask.any():
            return
        self.reason[mask] = code
        if detail is not None:
            self.detail[mask] = detail
        elif column is not None:
            values = _text(self.raw[column][mask]).to_numpy()
            self.detail[mask] = [f"{column}={_clip(v)!r}" for v in values]
        self.ok &= ~mask

    def flag_detail(self, bad: np.ndarray, code: str, details: np.ndarray) -> None:
        mask = np.asarray(bad, dtype=bool) & self.ok
        self.reason[mask] = code
        self.detail[mask] = details[mask]
        self.ok &= ~mask

    def quarantine(self, offset: int = 0) -> pd.DataFrame:
        """The failed rows: source_row (``offset`` = rows before this chunk), reason, detail, values."""
        bad = ~self.ok
        return _quarantine_rows(
            self.raw.loc[bad], np.flatnonzero(bad) + offset, self.reason[bad], self.detail[bad]
        )

    def result(self, spec: TableSpec, source: Path, clean: pd.DataFrame) -> TableResult:
        return TableResult(
            name=spec.name,
            source=source,
            rows_read=len(self.raw),
            clean=clean.loc[self.ok].reset_index(drop=True),
            quarantine=self.quarantine(),
        )


def _quarantine_rows(
    raw: pd.DataFrame, source_rows: np.ndarray, reasons: np.ndarray | str, details: np.ndarray | str
) -> pd.DataFrame:
    quarantine = raw.copy()
    for col in quarantine.columns:
        quarantine[col] = _text(quarantine[col])
    quarantine.insert(0, "detail", details)
    quarantine.insert(0, "reason", reasons)
    quarantine.insert(0, "source_row", source_rows.astype(np.int64))
    return quarantine.reset_index(drop=True)


def _clip(value: str) -> str:
    return value if len(value) <= _DETAIL_MAX else value[: _DETAIL_MAX - 1] + "…"


def _text(s: pd.Series) -> pd.Series:
    """Any column as text: NA becomes "", CSV columns are already text."""
    if pd.api.types.is_string_dtype(s.dtype) and not pd.api.types.is_object_dtype(s.dtype):
        return s.fillna("")
    if pd.api.types.is_object_dtype(s.dtype):
        return s.map(_cell_text).astype("str")
    return s.astype("str").where(s.notna(), "")


def _cell_text(v: object) -> str:
    if v is None or (isinstance(v, float) and np.isnan(v)):
        return ""
    if isinstance(v, list | tuple | np.ndarray):
        return FEATURED_SEPARATOR.join(str(x) for x in v)
    return str(v)


def _per_value(s: pd.Series, fn: Callable[[pd.Series], Any]) -> np.ndarray:
    """``fn`` of the column as text, one result per row; a categorical's distinct values are
    computed once each, then spread to the rows by code."""
    if not isinstance(s.dtype, pd.CategoricalDtype):
        return np.asarray(fn(_text(s)))
    categories = _text(pd.Series(s.cat.categories))
    # NA (code -1) is text "": appended last, so numpy's index -1 picks it.
    values = pd.concat([categories, pd.Series([""], dtype=categories.dtype)], ignore_index=True)
    return np.asarray(fn(values))[s.cat.codes.to_numpy()]


def _is_text(s: pd.Series) -> bool:
    if isinstance(s.dtype, pd.CategoricalDtype):
        return pd.api.types.is_string_dtype(s.cat.categories.dtype)
    return pd.api.types.is_string_dtype(s.dtype)


def _check_utf8(v: _Verdicts, columns: tuple[str, ...]) -> None:
    for col in columns:
        s = v.raw[col]
        if _is_text(s):
            bad = _per_value(s, lambda t: t.str.contains(REPLACEMENT_CHAR, regex=False).to_numpy(dtype=bool))
            v.flag(bad, Reason.INVALID_UTF8, col)


def _check_id(v: _Verdicts, column: str, missing: str, max_len: int) -> pd.Series:
    ids = _text(v.raw[column]).str.strip()
    v.flag(ids == "", missing, column)
    v.flag(ids.str.len() > max_len, Reason.ID_TOO_LONG, column)
    v.flag(~ids.str.fullmatch(ID_PATTERN.pattern).fillna(False).astype(bool), Reason.BAD_ID_CHARS, column)
    return ids


def _timestamps(s: pd.Series) -> pd.Series:
    """UTC timestamps; NaT where missing or unparsable. Naive values are taken to be UTC."""
    if isinstance(s.dtype, pd.DatetimeTZDtype):
        out = s.dt.tz_convert("UTC")
    elif pd.api.types.is_datetime64_dtype(s.dtype):
        out = s.dt.tz_localize("UTC")
    else:
        out = pd.to_datetime(_text(s).str.strip(), format="ISO8601", utc=True, errors="coerce")
    return out.dt.as_unit("us")


def _numbers(s: pd.Series) -> pd.Series:
    """float64 with NaN for empty cells and +-inf kept (so they can be rejected)."""
    if pd.api.types.is_numeric_dtype(s.dtype) and not pd.api.types.is_bool_dtype(s.dtype):
        return s.astype("float64")
    # "" and anything unparsable become NaN; _unparsable tells the two apart.
    parsed = _per_value(
        s, lambda t: pd.to_numeric(t.str.strip(), errors="coerce").astype("float64").to_numpy()
    )
    return pd.Series(parsed, index=s.index, dtype="float64")


def _unparsable(s: pd.Series, parsed: pd.Series) -> np.ndarray:
    """Non-empty cells that did not parse."""
    if pd.api.types.is_numeric_dtype(s.dtype) and not pd.api.types.is_bool_dtype(s.dtype):
        return np.zeros(len(s), dtype=bool)  # a typed number always parses; NaN is an empty cell
    nonempty = _per_value(s, lambda t: (t.str.strip() != "").to_numpy(dtype=bool))
    return parsed.isna().to_numpy(dtype=bool) & nonempty


def _booleans(s: pd.Series) -> tuple[pd.Series, np.ndarray]:
    """Nullable booleans (<NA> for empty) and a mask of cells that are not a boolean word."""
    if pd.api.types.is_bool_dtype(s.dtype):
        return s.astype("boolean"), np.zeros(len(s), dtype=bool)
    words = _text(s).str.strip().str.lower()
    is_true = words.isin(_TRUE).to_numpy(dtype=bool)
    is_false = words.isin(_FALSE).to_numpy(dtype=bool)
    empty = (words == "").to_numpy(dtype=bool)
    out = pd.Series(pd.array(np.where(is_true, True, False), dtype="boolean"), index=s.index)
    out[empty | ~(is_true | is_false)] = pd.NA
    return out, ~(is_true | is_false | empty)


def _check_label(v: _Verdicts, column: str, missing_code: str | None, required: np.ndarray) -> pd.Series:
    labels = _text(v.raw[column]).str.strip()
    if missing_code is not None:
        v.flag(required & (labels == "").to_numpy(dtype=bool), missing_code, column)
    v.flag(labels.str.len() > MAX_LABEL_LENGTH, Reason.LABEL_TOO_LONG, column)
    return labels


def _featured_lists(s: pd.Series) -> pd.Series:
    """Each cell as a tuple of ids: list<string> Parquet cells or "a|b|c" text."""

    def split(cell: object) -> tuple[str, ...]:
        if isinstance(cell, list | tuple | np.ndarray):
            return tuple(str(x).strip() for x in cell if str(x).strip())
        if cell is None or (isinstance(cell, float) and np.isnan(cell)):
            return ()
        return tuple(p.strip() for p in str(cell).split(FEATURED_SEPARATOR) if p.strip())

    return s.map(split).astype(object)


def validate_catalog(raw: pd.DataFrame, source: Path, settings: DataSettings) -> TableResult:
    v = _Verdicts(raw)
    _check_utf8(v, CATALOG.columns)
    item_id = _check_id(v, "item_id", Reason.MISSING_ITEM_ID, settings.max_id_length)
    kind = _text(raw["kind"]).str.strip()
    v.flag(~kind.isin(ITEM_KINDS), Reason.UNKNOWN_KIND, "kind")
    is_product = (kind == "product").to_numpy(dtype=bool)
    is_content = (kind == "content").to_numpy(dtype=bool)
    title = _text(raw["title"]).str.strip()
    v.flag(title == "", Reason.MISSING_TITLE, "title")
    v.flag(title.str.len() > MAX_TITLE_LENGTH, Reason.TITLE_TOO_LONG, "title")
    category = _check_label(v, "category", Reason.MISSING_CATEGORY, np.ones(len(raw), dtype=bool))
    # Editorial content may belong to no brand; a product always has one.
    brand = _check_label(v, "brand", Reason.MISSING_BRAND, is_product)
    price = _numbers(raw["price"])
    v.flag(price.isna() | ~np.isfinite(price.fillna(0)), Reason.BAD_PRICE, "price")
    v.flag(price < 0, Reason.NEGATIVE_PRICE, "price")
    v.flag(price > MAX_PRICE, Reason.PRICE_OUT_OF_RANGE, "price")
    in_stock, bad_bool = _booleans(raw["in_stock"])
    # Content is never out of stock; a product must say whether it is.
    v.flag(bad_bool | (is_product & in_stock.isna().to_numpy(dtype=bool)), Reason.BAD_IN_STOCK, "in_stock")
    published_at = _timestamps(raw["published_at"])
    v.flag(_unparsable(raw["published_at"], published_at), Reason.BAD_TIMESTAMP, "published_at")
    v.flag(is_content & published_at.isna().to_numpy(dtype=bool), Reason.MISSING_PUBLISHED_AT, "published_at")
    featured = _featured_lists(raw["featured_item_ids"])
    has_featured = featured.map(len).to_numpy() > 0
    v.flag(is_product & has_featured, Reason.FEATURED_ON_PRODUCT, "featured_item_ids")
    bad_ref = featured.map(
        lambda ids: any(len(i) > settings.max_id_length or not ID_PATTERN.fullmatch(i) for i in ids)
    )
    v.flag(bad_ref.to_numpy(dtype=bool), Reason.BAD_FEATURED_ID, "featured_item_ids")
    # Duplicates are judged among rows that passed, so a bad first copy does not hide a good one.
    v.flag(_dup_of_ok(item_id, v.ok), Reason.DUPLICATE_ITEM, "item_id")
    products = set(item_id[v.ok & is_product])
    missing_refs = featured.map(lambda ids: [i for i in ids if i not in products])
    has_missing = missing_refs.map(len).to_numpy() > 0
    details = np.array(
        [f"featured_item_ids not products in the catalog: {_clip(', '.join(m))}" for m in missing_refs],
        dtype=object,
    )
    v.flag_detail(is_content & has_missing, Reason.UNKNOWN_FEATURED_ITEM, details)
    clean = pd.DataFrame(
        {
            "item_id": item_id,
            "kind": pd.Categorical(kind.where(kind.isin(ITEM_KINDS), None), categories=list(ITEM_KINDS)),
            "title": title,
            "category": category,
            "brand": brand,
            "price": price,
            "in_stock": in_stock.fillna(True).astype(bool),
            "published_at": published_at,
            "featured_item_ids": featured,
        }
    )
    return v.result(CATALOG, source, clean)


def _dup_of_ok(keys: pd.Series | pd.DataFrame, ok: np.ndarray) -> np.ndarray:
    """Rows still ok whose key already appeared in an earlier ok row."""
    dup = np.zeros(len(ok), dtype=bool)
    idx = np.flatnonzero(ok)
    subset = keys if idx.size == len(ok) else keys.iloc[idx]
    # A 64-bit hash per row finds the few candidates cheaply (memory and time matter at 50M
    # events); the exact comparison then runs on those candidates only.
    hashes = pd.util.hash_pandas_object(subset, index=False)
    candidates = np.flatnonzero(hashes.duplicated(keep=False).to_numpy(dtype=bool))
    if candidates.size:
        exact = subset.iloc[candidates].duplicated(keep="first").to_numpy(dtype=bool)
        dup[idx[candidates[exact]]] = True
    return dup


def validate_members(raw: pd.DataFrame, source: Path, settings: DataSettings, now: datetime) -> TableResult:
    v = _Verdicts(raw)
    _check_utf8(v, MEMBERS.columns)
    member_id = _check_id(v, "member_id", Reason.MISSING_MEMBER_ID, settings.max_id_length)
    registered_at = _timestamps(raw["registered_at"])
    v.flag(registered_at.isna(), Reason.BAD_TIMESTAMP, "registered_at")
    v.flag(registered_at > _latest(now, settings), Reason.FUTURE_TIMESTAMP, "registered_at")
    tier = _check_label(v, "tier", Reason.MISSING_TIER, np.ones(len(raw), dtype=bool))
    timezone = _text(raw["timezone"]).str.strip()
    v.flag(~timezone.isin(_timezones()), Reason.UNKNOWN_TIMEZONE, "timezone")
    consents = {}
    for col in CONSENT_COLUMNS:
        consents[col], bad = _booleans(raw[col])
        v.flag(bad, Reason.BAD_CONSENT, col)
    v.flag(_dup_of_ok(member_id, v.ok), Reason.DUPLICATE_MEMBER, "member_id")
    clean = pd.DataFrame(
        {
            "member_id": member_id,
            "registered_at": registered_at,
            "tier": tier,
            "timezone": timezone,
            **consents,
        }
    )
    return v.result(MEMBERS, source, clean)


def _timezones() -> list[str]:
    return sorted(zoneinfo.available_timezones())


def _latest(now: datetime, settings: DataSettings) -> pd.Timestamp:
    return pd.Timestamp(now + timedelta(seconds=settings.future_tolerance_s)).tz_convert("UTC")


def validate_events(
    read: Callable[[], Iterator[pd.DataFrame]],
    source: Path,
    settings: DataSettings,
    now: datetime,
    item_ids: pd.Series,
    member_ids: pd.Series,
    rows_hint: int | None = None,
) -> TableResult:
    """Check events chunk by chunk; ``read()`` yields the raw chunks in file order (it is called
    a second time only to fetch the raw values of duplicates). ``item_ids`` and ``member_ids``
    are the clean catalog's and members' (unique); ``rows_hint`` is the row count when known."""
    refs = _EventRefs(
        members=pd.Index(member_ids.astype(str), dtype="str"),
        items=pd.Index(item_ids.astype(str), dtype="str"),
        latest=_latest(now, settings),
        max_id_length=settings.max_id_length,
    )
    kept = _KeptEvents(capacity=rows_hint or settings.validate_chunk_rows)
    quarantines = []
    rows_read = 0
    for raw in read():
        v, compact = _check_event_chunk(raw, refs)
        if not v.ok.all():
            quarantines.append(v.quarantine(offset=rows_read))
        kept.add(compact, v.ok, rows_read)
        rows_read += len(raw)
        log.debug("validated events rows=%d", rows_read)
    repeats = kept.later_copies()
    if repeats.size:
        quarantines.append(_duplicate_rows(read, kept.source_rows(repeats)))
    clean = kept.assemble(repeats, refs)
    if quarantines:
        quarantine = pd.concat(quarantines, ignore_index=True)
        quarantine = quarantine.sort_values("source_row", kind="stable").reset_index(drop=True)
    else:
        empty = np.zeros(0, dtype=object)
        no_rows = pd.DataFrame({c: pd.Series([], dtype="str") for c in EVENTS.columns})
        quarantine = _quarantine_rows(no_rows, np.zeros(0, dtype=np.int64), empty, empty)
    return TableResult(EVENTS.name, source, rows_read, clean, quarantine)


@dataclass(frozen=True)
class _EventRefs:
    members: pd.Index  # clean member ids: events' member_id codes index these
    items: pd.Index
    latest: pd.Timestamp
    max_id_length: int


# Accepted events are kept as these arrays until the end (28 bytes a row).
_COMPACT: dict[str, type[np.generic]] = {
    "member_id": np.int32,
    "item_id": np.int32,
    "event_type": np.int8,
    "ts": np.int64,  # microseconds since the epoch, UTC
    "channel": np.int8,
    "quantity": np.int16,
    "amount": np.float64,
}


def _check_event_chunk(raw: pd.DataFrame, refs: _EventRefs) -> tuple[_Verdicts, dict[str, np.ndarray]]:
    """Every check but the duplicate one, in docs/data.md order; compact values of all rows."""
    v = _Verdicts(raw)
    _check_utf8(v, EVENTS.columns)
    member = _check_id_codes(v, "member_id", Reason.MISSING_MEMBER_ID, refs.max_id_length, refs.members)
    item = _check_id_codes(v, "item_id", Reason.MISSING_ITEM_ID, refs.max_id_length, refs.items)
    event_type = _vocabulary_codes(raw["event_type"], EVENT_TYPES)
    v.flag(event_type < 0, Reason.UNKNOWN_EVENT_TYPE, "event_type")
    channel = _vocabulary_codes(raw["channel"], EVENT_CHANNELS)
    v.flag(channel < 0, Reason.UNKNOWN_CHANNEL, "channel")
    ts = _timestamps(raw["ts"])
    v.flag(ts.isna(), Reason.BAD_TIMESTAMP, "ts")
    v.flag(ts > refs.latest, Reason.FUTURE_TIMESTAMP, "ts")
    v.flag(ts < _EARLIEST_EVENT, Reason.TIMESTAMP_TOO_OLD, "ts")
    quantity = _numbers(raw["quantity"])
    q_unparsable = _unparsable(raw["quantity"], quantity)
    q = quantity.fillna(1.0).to_numpy()
    with np.errstate(invalid="ignore"):
        bad_q = q_unparsable | ~np.isfinite(q) | (q != np.floor(q)) | (q < 1) | (q > MAX_QUANTITY)
    v.flag(bad_q, Reason.BAD_QUANTITY, "quantity")
    amount = _numbers(raw["amount"])
    v.flag(_unparsable(raw["amount"], amount) | np.isinf(amount), Reason.BAD_AMOUNT, "amount")
    v.flag(amount < 0, Reason.NEGATIVE_AMOUNT, "amount")
    # Far above any real basket but finite: sums of accepted amounts stay finite in training.
    v.flag(amount > MAX_AMOUNT, Reason.AMOUNT_OUT_OF_RANGE, "amount")
    v.flag(amount.isna().to_numpy(dtype=bool) & (event_type == _PURCHASE), Reason.MISSING_AMOUNT, "amount")
    v.flag(member < 0, Reason.UNKNOWN_MEMBER, "member_id")
    v.flag(item < 0, Reason.UNKNOWN_ITEM, "item_id")
    ok = v.ok
    compact = {
        "member_id": member,
        "item_id": item,
        "event_type": event_type,
        "ts": ts.dt.tz_convert(None).to_numpy(dtype="datetime64[us]").view(np.int64),
        "channel": channel,
        "quantity": np.where(ok, q, 1),
        # + 0.0 turns -0.0 into 0.0, so the two count as the same amount in the duplicate check
        "amount": amount.fillna(0.0).to_numpy() + 0.0,
    }
    return v, {name: compact[name].astype(dtype) for name, dtype in _COMPACT.items()}


# _check_id_codes statuses below 0; 0 and up is the row in the reference ids.
_UNKNOWN, _MISSING, _TOO_LONG, _BAD_CHARS = -1, -2, -3, -4


def _check_id_codes(v: _Verdicts, column: str, missing: str, max_len: int, known: pd.Index) -> np.ndarray:
    """Flag missing, too long and malformed ids; return each row's index in ``known`` (-1: not
    there, flagged later in check order by the caller; other negatives: already flagged)."""

    def status(text: pd.Series) -> np.ndarray:
        ids = text.str.strip()
        out = known.get_indexer(pd.Index(ids)).astype(np.int32)
        out[~ids.str.fullmatch(ID_PATTERN.pattern).fillna(False).to_numpy(dtype=bool)] = _BAD_CHARS
        out[(ids.str.len() > max_len).to_numpy(dtype=bool)] = _TOO_LONG
        out[(ids == "").to_numpy(dtype=bool)] = _MISSING
        return out

    codes = _per_value(v.raw[column], status)
    v.flag(codes == _MISSING, missing, column)
    v.flag(codes == _TOO_LONG, Reason.ID_TOO_LONG, column)
    v.flag(codes == _BAD_CHARS, Reason.BAD_ID_CHARS, column)
    return codes


def _vocabulary_codes(s: pd.Series, vocabulary: tuple[str, ...]) -> np.ndarray:
    """Index of each (trimmed) value in ``vocabulary``; -1 where it is not one of them."""
    index = pd.Index(list(vocabulary), dtype="str")
    return _per_value(s, lambda t: index.get_indexer(pd.Index(t.str.strip())).astype(np.int8))


class _KeptEvents:
    """The accepted rows of all chunks as compact columns, their hashes, and where they came from.

    Columns live in buffers of ``capacity`` rows that double when full (``np.empty``: pages are
    only touched as rows arrive), so collecting 50M rows takes few large allocations instead of
    many chunk-sized ones that fragment the heap, and the end result needs no concatenation.
    """

    def __init__(self, capacity: int) -> None:
        self.size = 0
        self.columns = {name: np.empty(max(capacity, 1), dtype=dtype) for name, dtype in _COMPACT.items()}
        self.hashes = np.empty(max(capacity, 1), dtype=np.uint64)
        self.ok_bits: list[np.ndarray] = []  # np.packbits of each chunk's accepted-rows mask
        self.offsets: list[int] = []  # source row of each chunk's first row
        self.kept_offsets = [0]  # index of each chunk's first accepted row among all accepted

    def add(self, compact: dict[str, np.ndarray], ok: np.ndarray, offset: int) -> None:
        n = int(ok.sum())
        stop = self.size + n
        if stop > len(self.hashes):
            self._grow(max(stop, 2 * len(self.hashes)))
        chunk = {name: a[ok] for name, a in compact.items()}
        for name, a in chunk.items():
            self.columns[name][self.size : stop] = a
        self.hashes[self.size : stop] = pd.util.hash_pandas_object(
            pd.DataFrame(chunk), index=False
        ).to_numpy()
        self.size = stop
        self.ok_bits.append(np.packbits(ok))
        self.offsets.append(offset)
        self.kept_offsets.append(stop)

    def _grow(self, capacity: int) -> None:
        # One column at a time, so growing costs one column's copy at most.
        for name, old in list(self.columns.items()):
            new = np.empty(capacity, dtype=old.dtype)
            new[: self.size] = old[: self.size]
            self.columns[name] = new
            del old
        hashes = np.empty(capacity, dtype=np.uint64)
        hashes[: self.size] = self.hashes[: self.size]
        self.hashes = hashes

    def later_copies(self) -> np.ndarray:
        """Indices (among accepted rows, file order) of exact repeats of an earlier accepted row."""
        hashes = self.hashes[: self.size]
        ordered = np.sort(hashes)
        repeated = np.unique(ordered[1:][ordered[1:] == ordered[:-1]])
        del ordered
        if not repeated.size:
            return np.zeros(0, dtype=np.int64)
        # Rows sharing a hash are candidates; the exact comparison of all seven values decides.
        candidates = np.flatnonzero(pd.Series(hashes, copy=False).isin(repeated).to_numpy(dtype=bool))
        values = pd.DataFrame({name: col[candidates] for name, col in self.columns.items()})
        return candidates[values.duplicated(keep="first").to_numpy(dtype=bool)]

    def source_rows(self, kept: np.ndarray) -> np.ndarray:
        """Source rows of accepted rows ``kept``."""
        chunk = np.searchsorted(np.asarray(self.kept_offsets), kept, side="right") - 1
        local = kept - np.asarray(self.kept_offsets)[chunk]
        out = np.empty(kept.size, dtype=np.int64)
        for c in np.unique(chunk):
            in_chunk = chunk == c
            rows = np.flatnonzero(np.unpackbits(self.ok_bits[c]).astype(bool))
            out[in_chunk] = self.offsets[c] + rows[local[in_chunk]]
        return out

    def assemble(self, drop: np.ndarray, refs: _EventRefs) -> pd.DataFrame:
        """The clean events frame: all accepted rows except ``drop``; hands over the buffers."""
        self.hashes = np.zeros(0, dtype=np.uint64)
        keep = None
        if drop.size:
            keep = np.ones(self.size, dtype=bool)
            keep[drop] = False
        columns = {}
        for name in _COMPACT:
            col = self.columns.pop(name)[: self.size]
            columns[name] = col if keep is None else col[keep]
            del col
        event_types = pd.Index(list(EVENT_TYPES), dtype="str")
        channels = pd.Index(list(EVENT_CHANNELS), dtype="str")
        return pd.DataFrame(
            {
                "member_id": _observed_categorical(columns.pop("member_id"), refs.members),
                "item_id": _observed_categorical(columns.pop("item_id"), refs.items),
                "event_type": pd.Categorical.from_codes(columns.pop("event_type"), categories=event_types),
                "ts": pd.Series(columns.pop("ts").view("datetime64[us]"), copy=False).dt.tz_localize("UTC"),
                "channel": pd.Categorical.from_codes(columns.pop("channel"), categories=channels),
                "quantity": columns.pop("quantity"),
                "amount": columns.pop("amount"),
            },
            copy=False,
        )


def _observed_categorical(codes: np.ndarray, ids: pd.Index) -> pd.Categorical:
    """Categorical over the ids that occur (in ``ids`` order), like ``unique()`` of a text column."""
    used = np.bincount(codes, minlength=len(ids)) > 0
    recode = (np.cumsum(used) - 1).astype(codes.dtype)
    return pd.Categorical.from_codes(recode[codes], categories=ids[used])


def _duplicate_rows(read: Callable[[], Iterator[pd.DataFrame]], source_rows: np.ndarray) -> pd.DataFrame:
    """Quarantine rows for the repeats at ``source_rows``, with their values as sent (read again)."""
    wanted = np.sort(source_rows)
    parts = []
    offset = 0
    for raw in read():
        lo, hi = np.searchsorted(wanted, [offset, offset + len(raw)])
        if hi > lo:
            rows = wanted[lo:hi]
            parts.append(
                _quarantine_rows(
                    raw.iloc[rows - offset], rows, Reason.DUPLICATE_EVENT, "repeats an earlier accepted event"
                )
            )
        offset += len(raw)
    return pd.concat(parts, ignore_index=True)
