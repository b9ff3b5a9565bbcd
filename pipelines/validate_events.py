"""Row checks of the events table, read in chunks of ``data.validate_chunk_rows`` rows against the
clean member and item ids: only compact arrays of the accepted rows are kept, and the duplicate
check runs over all of them at the end (a 64-bit hash per row finds candidates, an exact
comparison decides), so 50M events fit in a few GiB.

Identical rows are duplicates (the export sent an event twice) only when the times could tell
two events apart. A file whose times all carry no time of day (dates only: H&M's ``t_dat``, a
constant date for Instacart) cannot: two units of one article bought on one day are two identical
rows. There, identical rows are kept as the repeats they are (each trains as an event and its
amount counts in spend), unless the file gives an ``order_id``: then the same row twice in one
order is a duplicate. Rows with different order ids are never duplicates (docs/data.md,
"Duplicates and repeats").
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd

from pipelines.cells import inexact_ids
from pipelines.contract import (
    EARLIEST_EVENT_TS,
    EVENT_CHANNELS,
    EVENT_TYPES,
    EVENTS,
    MAX_AMOUNT,
    MAX_QUANTITY,
    ORDER_ID,
    Reason,
)
from pipelines.rows import (
    ID_BAD_CHARS,
    ID_MISSING,
    ID_TOO_LONG,
    TableResult,
    Verdicts,
    check_utf8,
    id_status,
    latest,
    normalized_ids,
    numbers,
    per_value,
    quarantine_rows,
    timestamps,
    unparsable,
)
from recsvc.settings import DataSettings

log = logging.getLogger(__name__)


_PURCHASE = EVENT_TYPES.index("purchase")
_EARLIEST_EVENT = pd.Timestamp(EARLIEST_EVENT_TS)


def validate_events(
    read: Callable[[], Iterator[pd.DataFrame]],
    source: Path,
    settings: DataSettings,
    now: datetime,
    item_ids: pd.Series,
    member_ids: pd.Series | None,
    rows_hint: int | None = None,
    channels: tuple[str, ...] = EVENT_CHANNELS,
    day_offset_s: int = 0,
) -> TableResult:
    """Check events chunk by chunk; ``read()`` yields the raw chunks in file order (it is called
    a second time only to fetch the raw values of duplicates). ``item_ids`` and ``member_ids``
    are the clean catalog's and members' (unique; None: no members table, every valid member id
    is a member); ``rows_hint`` is the row count when known; ``channels`` the accepted channels;
    ``day_offset_s`` the offset a date without a time was read at (the mapping file's
    ``default_offset``: its midnight is a date's start, as UTC midnight is)."""
    refs = _EventRefs(
        members=pd.Index(member_ids.astype(str) if member_ids is not None else [], dtype="str"),
        items=pd.Index(item_ids.astype(str), dtype="str"),
        latest=latest(now, settings),
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
    grain = kept.time_grain(day_offset_s)
    repeats = kept.later_copies()
    notes = []
    if not copies_are_duplicates(grain, kept.has_orders):
        if repeats.size:
            notes.append(repeats_kept_note(repeats.size))
            log.info("events: %s", notes[-1])
        repeats = repeats[:0]
    if repeats.size:
        detail = duplicate_detail(grain, kept.has_orders)
        quarantines.append(_duplicate_rows(read, kept.source_rows(repeats), detail))
    clean = kept.assemble(repeats, refs)
    if quarantines:
        quarantine = pd.concat(quarantines, ignore_index=True)
        quarantine = quarantine.sort_values("source_row", kind="stable").reset_index(drop=True)
    else:
        empty = np.zeros(0, dtype=object)
        no_rows = pd.DataFrame({c: pd.Series([], dtype="str") for c in EVENTS.columns})
        quarantine = quarantine_rows(no_rows, np.zeros(0, dtype=np.int64), empty, empty)
    return TableResult(EVENTS.name, source, rows_read, clean, quarantine, notes=notes)


# How fine a file's event times are (time_grain): every one a date's start, every one a whole
# minute, or finer. The Spark engine (training/spark_ingest.py) decides by the same functions.
_DAYS, _MINUTES, _FINER = "days", "minutes", ""
DAY_US = 86_400 * 1_000_000
MINUTE_US = 60 * 1_000_000


def time_grain(rows: int, any_sub_minute: bool, any_sub_day: bool, any_sub_day_at_offset: bool) -> str:
    """_DAYS when every one of ``rows`` accepted times is a date's start (UTC midnight, or
    midnight at the mapping's ``default_offset``), _MINUTES when every one is a whole minute, else
    _FINER. Per file: one time of day anywhere makes the times fine enough to tell events apart."""
    if not rows or any_sub_minute:
        return _FINER
    if not any_sub_day or not any_sub_day_at_offset:
        return _DAYS
    return _MINUTES


def copies_are_duplicates(grain: str, has_orders: bool) -> bool:
    """Dates only and no order id: identical rows are as likely two units bought that day as one
    sent twice, and dropping them would undercount purchases and spend, so they are kept."""
    return grain != _DAYS or has_orders


def repeats_kept_note(n: int) -> str:
    return (
        f"{n:,} rows repeat an earlier one exactly; the times carry no time of day "
        "(dates only), so they are kept as repeat events, not quarantined as duplicate_event. "
        "If the export may overlap itself, give each order's id in an order_id column"
    )


def duplicate_detail(grain: str, has_orders: bool) -> str:
    """What a duplicate row's detail says: which values matched, and when the times are too coarse
    to be sure the export sent the event twice (docs/data.md, "Duplicates and repeats")."""
    detail = "repeats an earlier accepted event"
    if has_orders:
        detail += " of the same order_id"
    if grain == _DAYS:
        detail += " (the times carry no time of day)"
    elif grain == _MINUTES and not has_orders:
        detail += " (the times carry no seconds: real repeats need an order_id)"
    return detail


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


def _check_event_chunk(raw: pd.DataFrame, refs: _EventRefs) -> tuple[Verdicts, dict[str, np.ndarray]]:
    """Every check but the duplicate one, in docs/data.md order; compact values of all rows."""
    v = Verdicts(raw)
    check_utf8(v, EVENTS.columns)
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
    # an empty channel is "not said" (the API takes events without one): kept, code -1, counted in
    # the any-channel lists only; a channel that is named and not listed is refused
    given = per_value(raw["channel"], lambda t: t.str.strip() != "")
    v.flag((channel < 0) & given, Reason.UNKNOWN_CHANNEL, "channel")
    ts = timestamps(raw["ts"])
    v.flag(ts.isna(), Reason.BAD_TIMESTAMP, "ts")
    v.flag(ts > refs.latest, Reason.FUTURE_TIMESTAMP, "ts")
    v.flag(ts < _EARLIEST_EVENT, Reason.TIMESTAMP_TOO_OLD, "ts")
    quantity = numbers(raw["quantity"])
    q_unparsable = unparsable(raw["quantity"], quantity)
    q = quantity.fillna(1.0).to_numpy()
    with np.errstate(invalid="ignore"):
        bad_q = q_unparsable | ~np.isfinite(q) | (q != np.floor(q)) | (q < 1) | (q > MAX_QUANTITY)
    v.flag(bad_q, Reason.BAD_QUANTITY, "quantity")
    amount = numbers(raw["amount"])
    amount_bad = unparsable(raw["amount"], amount)
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
    out = {name: compact[name].astype(dtype) for name, dtype in _COMPACT.items()}
    if ORDER_ID in raw.columns:
        out[_ORDER] = per_value(raw[ORDER_ID], _order_hashes)
    return v, out


# The compact column of an order id: a 64-bit hash of its text, read as an id is (trimmed, NFC,
# "489434.0" is 489434). Two different order ids sharing a hash would make two otherwise identical
# rows one event's copies: about one chance in 10^5 over 50M distinct orders, and only if all
# seven values are equal too; a dictionary of 50M order ids would cost gigabytes instead.
_ORDER = "order"


def _order_hashes(text: pd.Series) -> np.ndarray:
    ids = normalized_ids(text)
    return pd.util.hash_array(ids.to_numpy(dtype=object)).view(np.int64)


# _check_id_codes statuses below 0 (the others are in pipelines.rows); 0 and up is the row in the
# reference ids.
_UNKNOWN = -1


def _check_id_codes(
    v: Verdicts,
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
        ids = normalized_ids(text)
        if collect is None:
            out = known.get_indexer(pd.Index(ids)).astype(np.int32)
        else:
            out = np.fromiter(
                (collect.setdefault(x, len(collect)) for x in ids), dtype=np.int32, count=len(ids)
            )
        bad = id_status(ids, max_len)
        out[bad != 0] = bad[bad != 0]
        return out

    codes = per_value(v.raw[column], status)
    v.flag(codes == ID_MISSING, missing, column)
    v.flag(codes == ID_TOO_LONG, Reason.ID_TOO_LONG, column)
    v.flag(codes == ID_BAD_CHARS, Reason.BAD_ID_CHARS, column)
    v.flag(inexact_ids(v.raw[column]), Reason.INEXACT_ID, column)
    return codes


def _vocabulary_codes(s: pd.Series, vocabulary: tuple[str, ...]) -> np.ndarray:
    """Index of each (trimmed) value in ``vocabulary``; -1 where it is not one of them."""
    index = pd.Index(list(vocabulary), dtype="str")
    return per_value(s, lambda t: index.get_indexer(pd.Index(t.str.strip())).astype(np.int8))


class _KeptEvents:
    """The accepted rows of all chunks as compact columns, their hashes, and where they came from.

    Columns live in buffers of ``capacity`` rows that double when full (``np.empty``: pages are
    only touched as rows arrive), so collecting 50M rows takes few large allocations instead of
    many chunk-sized ones that fragment the heap, and the end result needs no concatenation.
    """

    def __init__(self, capacity: int) -> None:
        self.size = 0
        self.capacity = max(capacity, 1)
        # _COMPACT's columns, and _ORDER when the file has order ids; made at the first chunk
        self.columns: dict[str, np.ndarray] = {}
        self.hashes = np.empty(self.capacity, dtype=np.uint64)
        self.ok_bits: list[np.ndarray] = []  # np.packbits of each chunk's accepted-rows mask
        self.offsets: list[int] = []  # source row of each chunk's first row
        self.kept_offsets = [0]  # index of each chunk's first accepted row among all accepted

    @property
    def has_orders(self) -> bool:
        return _ORDER in self.columns

    def add(self, compact: dict[str, np.ndarray], ok: np.ndarray, offset: int) -> None:
        if not self.columns:
            self.columns = {name: np.empty(self.capacity, dtype=a.dtype) for name, a in compact.items()}
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

    def time_grain(self, day_offset_s: int) -> str:
        """The accepted times' grain (:func:`time_grain`)."""
        ts = self.columns["ts"][: self.size] if self.columns else np.zeros(0, dtype=np.int64)
        return time_grain(
            ts.size,
            bool(np.any(ts % MINUTE_US)),
            bool(np.any(ts % DAY_US)),
            bool(np.any((ts + day_offset_s * 1_000_000) % DAY_US)),
        )

    def later_copies(self) -> np.ndarray:
        """Indices (among accepted rows, file order) of exact repeats of an earlier accepted row
        (all seven values, and the order id when the file has one)."""
        hashes = self.hashes[: self.size]
        ordered = np.sort(hashes)
        repeated = np.unique(ordered[1:][ordered[1:] == ordered[:-1]])
        del ordered
        if not repeated.size:
            return np.zeros(0, dtype=np.int64)
        # Rows sharing a hash are candidates; the exact comparison of all values decides.
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
        self.columns.clear()  # the order ids only told repeats from duplicates
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


def _duplicate_rows(
    read: Callable[[], Iterator[pd.DataFrame]], source_rows: np.ndarray, detail: str
) -> pd.DataFrame:
    """Quarantine rows for the repeats at ``source_rows``, with their values as sent (read again)."""
    wanted = np.sort(source_rows)
    parts = []
    offset = 0
    for raw in read():
        lo, hi = np.searchsorted(wanted, [offset, offset + len(raw)])
        if hi > lo:
            rows = wanted[lo:hi]
            parts.append(quarantine_rows(raw.iloc[rows - offset], rows, Reason.DUPLICATE_EVENT, detail))
        offset += len(raw)
    return pd.concat(parts, ignore_index=True)
