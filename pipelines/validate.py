"""Row-level checks of the data contract: clean, typed tables plus quarantined rows with reasons.

Reads a data folder through ``pipelines.read`` (catalog, then members, then events, because
events are checked against the other two; a folder without a members table takes the members to
be the ones in the events). Every row either comes out in a clean table or goes to that table's
quarantine with one primary reason code (the first check it fails, in the order listed in
docs/data.md, used for counts), a short detail, and ``problems``: every check the row fails, so
one run shows all there is to fix. Nothing is dropped silently: ``rows_read == len(clean) +
len(quarantine)`` for every table. ``ValidationResult.write`` writes ``<out>/<table>.csv``
quarantine files and ``<out>/summary.json`` (per reason: rows, examples and the fix).

This module reads the folder and chains the tables; the row checks are in
:mod:`pipelines.validate_reference` (catalog, members), :mod:`pipelines.validate_events` (events,
in chunks of ``data.validate_chunk_rows`` rows, so 50M events fit in a few GiB) and
:mod:`pipelines.rows` (the verdicts and cell checks they share).

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
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipelines.contract import (
    CATALOG,
    CONSENT_COLUMNS,
    EVENTS,
    MEMBERS,
    TableSpec,
)
from pipelines.encoding import resolve_encoding
from pipelines.mapping import Mapping
from pipelines.read import count_rows, find_table_file, read_chunks, read_table
from pipelines.rows import TableResult, quarantine_rows
from pipelines.validate_events import validate_events
from pipelines.validate_reference import validate_catalog, validate_members
from recsvc.csvsafe import write_frame
from recsvc.errors import DataContractError
from recsvc.settings import MAX_EVENT_CHANNELS, DataSettings

log = logging.getLogger(__name__)


QUARANTINE_DIRNAME = "quarantine"
SUMMARY_FILE = "summary.json"
# Event columns read as categoricals: few distinct values per chunk, each checked once.
_EVENT_DICTIONARY = ("member_id", "item_id", "event_type", "channel", "quantity", "amount")


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
        day_offset_s=_offset_s(mapping),
    )
    events.encoding = codecs["events"]
    if members is None:
        members = _implied_members(events.clean)
    for table in (catalog, members, events):
        result.tables[table.name] = table
        log.info(
            "validated table=%s encoding=%s rows=%d clean=%d quarantined=%d",
            table.name,
            table.encoding or ("parquet" if table.source is not None else "-"),
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


def _offset_s(mapping: Mapping | None) -> int:
    """The mapping's ``default_offset`` in seconds (0: none, times without an offset are UTC)."""
    offset = mapping.timestamps.default_offset if mapping else None
    if not offset:
        return 0
    sign = -1 if offset.startswith("-") else 1
    hours, minutes = offset[1:].split(":")
    return sign * (int(hours) * 3600 + int(minutes) * 60)


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
    quarantine = quarantine_rows(
        empty, np.zeros(0, dtype=np.int64), np.zeros(0, dtype=object), np.zeros(0, dtype=object)
    )
    return TableResult(MEMBERS.name, None, 0, clean, quarantine)
