"""Row-level checks of the data contract: clean, typed tables plus quarantined rows with reasons.

Reads a data folder through ``pipelines.read`` (catalog, then members, then events, because
events are checked against the other two; a folder without a members table takes the members to
be the ones in the events). Every row either comes out in a clean table or goes to that table's
quarantine with one primary reason code (the first check it fails, in the order listed in
docs/data.md, used for counts), a short detail, and ``problems``: every check the row fails, so
one run shows all there is to fix. Nothing is dropped silently: ``rows_read == len(clean) +
len(quarantine)`` for every table. ``ValidationResult.write`` writes ``<out>/<table>.csv``
quarantine files and ``<out>/summary.json`` (per reason: rows, examples and the fix).

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
from dataclasses import dataclass, field, replace
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
    FIXES,
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
from pipelines.encoding import resolve_encoding
from pipelines.mapping import Mapping
from pipelines.read import REPLACEMENT_CHAR, count_rows, find_table_file, read_chunks, read_table
from recsvc.csvsafe import write_frame
from recsvc.errors import DataContractError
from recsvc.idmap import ID_PATTERN, id_chars_ok, id_problem, normalize_id
from recsvc.settings import MAX_EVENT_CHANNELS, DataSettings

log = logging.getLogger(__name__)

QUARANTINE_DIRNAME = "quarantine"
SUMMARY_FILE = "summary.json"
_TRUE = frozenset({"true", "1", "yes", "y", "t"})
_FALSE = frozenset({"false", "0", "no", "n", "f"})
_DETAIL_MAX = 80
_EXAMPLES = 3  # example rows per reason in the summary
# Event columns read as categoricals: few distinct values per chunk, each checked once.
_EVENT_DICTIONARY = ("member_id", "item_id", "event_type", "channel", "quantity", "amount")
_PURCHASE = EVENT_TYPES.index("purchase")
_EARLIEST_EVENT = pd.Timestamp(EARLIEST_EVENT_TS)


@dataclass
class TableResult:
    """One table after validation."""

    name: str
    source: Path | None  # None: the table was absent and is implied (members from the events)
    rows_read: int
    clean: pd.DataFrame
    # source_row (0-based data row in the file), reason (the primary one), detail, problems
    # (every failed check: "reason: column='value'" joined by "; "), then the row's values as text.
    quarantine: pd.DataFrame
    encoding: str | None = None  # a CSV's encoding as read

    @property
    def reason_counts(self) -> dict[str, int]:
        if self.quarantine.empty:
            return {}
        counts = self.quarantine["reason"].value_counts()
        return {str(k): int(v) for k, v in sorted(counts.items())}

    @property
    def quarantined_share(self) -> float:
        return len(self.quarantine) / self.rows_read if self.rows_read else 0.0

    def problem_summary(self) -> dict[str, dict[str, Any]]:
        """Per reason (primary or not): rows with it, example values and the fix."""
        if self.quarantine.empty or "problems" not in self.quarantine:
            return {}
        out: dict[str, dict[str, Any]] = {}
        for row, problems in zip(
            self.quarantine["source_row"].to_numpy(), self.quarantine["problems"].to_numpy(), strict=True
        ):
            for problem in str(problems).split("; "):
                code, _, detail = problem.partition(": ")
                entry = out.setdefault(code, {"rows": 0, "examples": [], "fix": FIXES.get(code, "")})
                entry["rows"] += 1
                if len(entry["examples"]) < _EXAMPLES:
                    entry["examples"].append(f"row {int(row)}: {detail}" if detail else f"row {int(row)}")
        return dict(sorted(out.items(), key=lambda kv: (-kv[1]["rows"], kv[0])))

    def summary(self) -> dict[str, Any]:
        return {
            "file": str(self.source) if self.source is not None else None,
            "encoding": self.encoding,
            "rows_read": self.rows_read,
            "rows_clean": len(self.clean),
            "rows_quarantined": len(self.quarantine),
            "reasons": self.reason_counts,
            "problems": self.problem_summary(),
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


def validate_dir(
    data_dir: Path,
    settings: DataSettings,
    now: datetime | None = None,
    *,
    encoding: str | None = None,
    mapping: Mapping | None = None,
) -> ValidationResult:
    """Read and check every table in ``data_dir``. Raises DataContractError for unusable files.
    ``encoding`` is the CSV files' (None or "auto": detected per file, pipelines.encoding);
    ``mapping`` turns a retailer's export into the contract's tables (pipelines.mapping)."""
    now = now or datetime.now(UTC)
    result = ValidationResult(data_dir=data_dir, checked_at=now)
    paths = {spec.name: find_table_file(data_dir, spec) for spec in (CATALOG, EVENTS)}
    # Without a members table the members are the ones the events name (no profile, no consent).
    members_path = find_table_file(data_dir, MEMBERS) if _has_table(data_dir, MEMBERS) else None
    codecs = {
        name: None if p.name.endswith(".parquet") else resolve_encoding(p, encoding)
        for name, p in [*paths.items(), ("members", members_path)]
        if p is not None
    }
    catalog = validate_catalog(
        read_table(paths["catalog"], CATALOG, codecs["catalog"] or "utf-8", mapping),
        paths["catalog"],
        settings,
    )
    catalog.encoding = codecs["catalog"]
    if members_path is not None:
        raw_members = read_table(members_path, MEMBERS, codecs["members"] or "utf-8", mapping)
        members = validate_members(raw_members, members_path, settings, now)
        members.encoding = codecs["members"]
    else:
        members = None
    events_path = paths["events"]
    channels = _event_channels(settings, mapping)
    events = validate_events(
        lambda: read_chunks(
            events_path,
            EVENTS,
            settings.validate_chunk_rows,
            _EVENT_DICTIONARY,
            codecs["events"] or "utf-8",
            mapping,
        ),
        events_path,
        settings,
        now,
        item_ids=catalog.clean["item_id"],
        member_ids=members.clean["member_id"] if members is not None else None,
        rows_hint=count_rows(events_path),
        channels=channels,
    )
    events.encoding = codecs["events"]
    if members is None:
        members = _implied_members(events.clean)
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


def _event_channels(settings: DataSettings, mapping: Mapping | None) -> tuple[str, ...]:
    """``data.event_channels`` and the ones the mapping file declares besides. A declared channel
    the setting lacks trains, but the Recommender API refuses it: say so once, here."""
    declared = tuple(
        c for c in (mapping.channels.declare if mapping else []) if c not in settings.event_channels
    )
    if declared:
        log.warning(
            "the mapping file declares channels %s that data.event_channels lacks: they train, but the "
            "API refuses them until the setting lists them (docs/data.md, Channels)",
            ", ".join(declared),
        )
    channels = settings.event_channels + declared
    if len(channels) > MAX_EVENT_CHANNELS:
        raise DataContractError(f"{len(channels)} event channels; at most {MAX_EVENT_CHANNELS} are supported")
    return channels


def _has_table(data_dir: Path, spec: TableSpec) -> bool:
    from pipelines.read import SUFFIXES

    return any((data_dir / f"{spec.name}{suffix}").is_file() for suffix in SUFFIXES)


def _implied_members(events: pd.DataFrame) -> TableResult:
    """The members table of a folder without one: every member the clean events name, with no
    registration time, no tier, the policy's time zone and no consent (docs/data.md)."""
    ids = pd.Series(events["member_id"].cat.categories if len(events) else [], dtype=object).astype(str)
    clean = pd.DataFrame(
        {
            "member_id": ids,
            "registered_at": pd.Series(pd.NaT, index=ids.index, dtype="datetime64[us, UTC]"),
            "tier": "",
            "timezone": "",
            **{col: pd.Series(pd.NA, index=ids.index, dtype="boolean") for col in CONSENT_COLUMNS},
        }
    )
    empty = pd.DataFrame({c: pd.Series([], dtype="str") for c in MEMBERS.columns})
    quarantine = _quarantine_rows(
        empty, np.zeros(0, dtype=np.int64), np.zeros(0, dtype=object), np.zeros(0, dtype=object)
    )
    return TableResult(MEMBERS.name, None, 0, clean, quarantine)


class _Verdicts:
    """The first failing check per row (its reason; later checks never overwrite it), and every
    check each row fails (its problems)."""

    def __init__(self, raw: pd.DataFrame) -> None:
        self.raw = raw
        n = len(raw)
        self.reason = np.full(n, None, dtype=object)
        self.detail = np.full(n, None, dtype=object)
        self.problems = np.full(n, "", dtype=object)
        self.ok = np.ones(n, dtype=bool)

    def flag(
        self, bad: pd.Series | np.ndarray, code: str, column: str | None = None, detail: str | None = None
    ) -> None:
        every = np.asarray(bad, dtype=bool)
        if not every.any():
            return
        if detail is not None:
            details = np.full(len(every), detail, dtype=object)
        elif column is not None:
            details = np.full(len(every), None, dtype=object)
            values = _text(self.raw[column][every]).to_numpy()
            details[every] = [f"{column}={_clip(v)!r}" for v in values]
        else:
            details = np.full(len(every), None, dtype=object)
        self.flag_detail(every, code, details)

    def flag_detail(self, bad: np.ndarray, code: str, details: np.ndarray) -> None:
        every = np.asarray(bad, dtype=bool)
        if not every.any():
            return
        self.problems[every] = [
            (p + "; " if p else "") + (f"{code}: {d}" if d else code)
            for p, d in zip(self.problems[every], details[every], strict=True)
        ]
        mask = every & self.ok
        self.reason[mask] = code
        self.detail[mask] = details[mask]
        self.ok &= ~mask

    def quarantine(self, offset: int = 0) -> pd.DataFrame:
        """The failed rows: source_row (``offset`` = rows before this chunk), reason, detail, values."""
        bad = ~self.ok
        return _quarantine_rows(
            self.raw.loc[bad],
            np.flatnonzero(bad) + offset,
            self.reason[bad],
            self.detail[bad],
            self.problems[bad],
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
    raw: pd.DataFrame,
    source_rows: np.ndarray,
    reasons: np.ndarray | str,
    details: np.ndarray | str,
    problems: np.ndarray | str | None = None,
) -> pd.DataFrame:
    quarantine = raw.copy()
    for col in quarantine.columns:
        quarantine[col] = _text(quarantine[col])
    if problems is None:  # a single-reason row (a duplicate): its problem is its reason
        problems = f"{reasons}: {details}" if isinstance(reasons, str) else np.zeros(0, dtype=object)
    quarantine.insert(0, "problems", problems)
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
    ids = _normalized_ids(_text(v.raw[column]))
    status = _id_status(ids, max_len)
    v.flag(status == _MISSING, missing, column)
    v.flag(status == _TOO_LONG, Reason.ID_TOO_LONG, column)
    v.flag(status == _BAD_CHARS, Reason.BAD_ID_CHARS, column)
    return ids


def _normalized_ids(text: pd.Series) -> pd.Series:
    """Trimmed and in NFC (recsvc.idmap.normalize_id), so the same id typed twice is one id."""
    ids = text.str.strip()
    non_ascii = ~ids.str.isascii().fillna(True).to_numpy(dtype=bool)
    if non_ascii.any():
        ids = ids.copy()
        ids[non_ascii] = ids[non_ascii].str.normalize("NFC")
    return ids


def _id_status(ids: pd.Series, max_bytes: int) -> np.ndarray:
    """0 for a valid id, else _MISSING, _TOO_LONG or _BAD_CHARS (recsvc.idmap.id_problem's rule,
    vectorised: the length counts UTF-8 bytes, and only non-ASCII ids that the common-case regex
    refuses are checked character by character)."""
    out = np.zeros(len(ids), dtype=np.int32)
    non_ascii = ~ids.str.isascii().fillna(True).to_numpy(dtype=bool)
    nbytes = ids.str.len().to_numpy(dtype=np.int64, copy=True)
    if non_ascii.any():
        nbytes[non_ascii] = [len(x.encode("utf-8")) for x in ids[non_ascii]]
    fast = ids.str.fullmatch(ID_PATTERN.pattern).fillna(False).to_numpy(dtype=bool, copy=True)
    slow = ~fast & non_ascii
    ok = fast
    if slow.any():
        ok[slow] = [id_chars_ok(x) for x in ids[slow]]
    out[~ok] = _BAD_CHARS
    out[nbytes > max_bytes] = _TOO_LONG
    out[nbytes == 0] = _MISSING
    return out


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
    published_bad = _unparsable(raw["published_at"], published_at)
    v.flag(published_bad, Reason.BAD_TIMESTAMP, "published_at")
    v.flag(
        is_content & published_at.isna().to_numpy(dtype=bool) & ~published_bad,
        Reason.MISSING_PUBLISHED_AT,
        "published_at",
    )
    featured = _featured_lists(raw["featured_item_ids"])
    has_featured = featured.map(len).to_numpy() > 0
    v.flag(is_product & has_featured, Reason.FEATURED_ON_PRODUCT, "featured_item_ids")
    featured = featured.map(lambda ids: tuple(normalize_id(i) for i in ids)).astype(object)
    bad_ref = featured.map(lambda ids: any(id_problem(i, settings.max_id_length) for i in ids))
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
    v.flag_detail(
        is_content & has_missing & ~bad_ref.to_numpy(dtype=bool), Reason.UNKNOWN_FEATURED_ITEM, details
    )
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
    # Only member_id is required (docs/data.md): an empty registered_at is unknown, an empty tier
    # is no tier, an empty timezone is the outreach policy's default_timezone, and an empty
    # consent cell is a question never answered, which outreach treats as no.
    registered_at = _timestamps(raw["registered_at"])
    v.flag(_unparsable(raw["registered_at"], registered_at), Reason.BAD_TIMESTAMP, "registered_at")
    v.flag(registered_at > _latest(now, settings), Reason.FUTURE_TIMESTAMP, "registered_at")
    tier = _check_label(v, "tier", None, np.ones(len(raw), dtype=bool))
    timezone = _text(raw["timezone"]).str.strip()
    v.flag(~timezone.isin(_timezones()) & (timezone != ""), Reason.UNKNOWN_TIMEZONE, "timezone")
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
    member_ids: pd.Series | None,
    rows_hint: int | None = None,
    channels: tuple[str, ...] = EVENT_CHANNELS,
) -> TableResult:
    """Check events chunk by chunk; ``read()`` yields the raw chunks in file order (it is called
    a second time only to fetch the raw values of duplicates). ``item_ids`` and ``member_ids``
    are the clean catalog's and members' (unique; None: no members table, every valid member id
    is a member); ``rows_hint`` is the row count when known; ``channels`` the accepted channels."""
    refs = _EventRefs(
        members=pd.Index(member_ids.astype(str) if member_ids is not None else [], dtype="str"),
        items=pd.Index(item_ids.astype(str), dtype="str"),
        latest=_latest(now, settings),
        max_id_length=settings.max_id_length,
        channels=channels,
        open_members=member_ids is None,
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
    if refs.open_members:
        # The members are the valid ids the events named, indexed in order of first appearance.
        refs = replace(refs, members=pd.Index(list(refs.seen_members), dtype="str"))
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
    channels: tuple[str, ...] = EVENT_CHANNELS
    # No members table: member ids are collected from the events instead of looked up.
    open_members: bool = False
    seen_members: dict[str, int] = field(default_factory=dict)


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
    member = _check_id_codes(
        v,
        "member_id",
        Reason.MISSING_MEMBER_ID,
        refs.max_id_length,
        refs.members,
        refs.seen_members if refs.open_members else None,
    )
    item = _check_id_codes(v, "item_id", Reason.MISSING_ITEM_ID, refs.max_id_length, refs.items)
    event_type = _vocabulary_codes(raw["event_type"], EVENT_TYPES)
    v.flag(event_type < 0, Reason.UNKNOWN_EVENT_TYPE, "event_type")
    channel = _vocabulary_codes(raw["channel"], refs.channels)
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
    amount_bad = _unparsable(raw["amount"], amount)
    v.flag(amount_bad | np.isinf(amount), Reason.BAD_AMOUNT, "amount")
    v.flag(amount < 0, Reason.NEGATIVE_AMOUNT, "amount")
    # Far above any real basket but finite: sums of accepted amounts stay finite in training.
    v.flag(amount > MAX_AMOUNT, Reason.AMOUNT_OUT_OF_RANGE, "amount")
    missing_amount = amount.isna().to_numpy(dtype=bool) & ~amount_bad & (event_type == _PURCHASE)
    v.flag(missing_amount, Reason.MISSING_AMOUNT, "amount")
    v.flag(member == _UNKNOWN, Reason.UNKNOWN_MEMBER, "member_id")
    v.flag(item == _UNKNOWN, Reason.UNKNOWN_ITEM, "item_id")
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


def _check_id_codes(
    v: _Verdicts,
    column: str,
    missing: str,
    max_len: int,
    known: pd.Index,
    collect: dict[str, int] | None = None,
) -> np.ndarray:
    """Flag missing, too long and malformed ids; return each row's index in ``known`` (-1: not
    there, flagged later in check order by the caller; other negatives: already flagged). With
    ``collect`` (no members table), every valid id is known: it gets the next free index there."""

    def status(text: pd.Series) -> np.ndarray:
        ids = _normalized_ids(text)
        if collect is None:
            out = known.get_indexer(pd.Index(ids)).astype(np.int32)
        else:
            out = np.fromiter(
                (collect.setdefault(x, len(collect)) for x in ids), dtype=np.int32, count=len(ids)
            )
        bad = _id_status(ids, max_len)
        out[bad != 0] = bad[bad != 0]
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
        channels = pd.Index(list(refs.channels), dtype="str")
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
