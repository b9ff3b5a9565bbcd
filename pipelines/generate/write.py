"""Turning generated arrays into the contract's tables and writing them as Parquet or CSV.

Writes ``events``, ``catalog`` and ``members`` in the data contract's columns (docs/data.md),
and the planted structure under ``truth/`` (``members.parquet``, ``items.parquet``) for tests
and evaluation. Training must never read ``truth/``: it is what a model should discover.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from pipelines.contract import CATALOG, CONSENT_CHANNELS, EVENT_CHANNELS, EVENT_TYPES, EVENTS, MEMBERS
from pipelines.generate.catalog import CATEGORIES, Catalog
from pipelines.generate.events import Events
from pipelines.generate.members import LIFECYCLE_PLANS, TIMEZONES, Members

Format = Literal["parquet", "csv"]
TRUTH_DIR = "truth"
# Tier by spend over the generated history (yuan); the brand's own rule in real data.
TIER_LIMITS = ((0.0, "basic"), (500.0, "silver"), (2000.0, "gold"), (8000.0, "platinum"))


def _ts(seconds: np.ndarray) -> pa.Array:
    return pa.array(seconds.astype("int64") * 1_000_000, type=pa.timestamp("us", tz="UTC"))


def events_table(events: Events, catalog: Catalog, members: Members) -> pa.Table:
    return pa.table(
        {
            "member_id": pa.array(members.member_id).take(pa.array(events.member)),
            "item_id": pa.array(catalog.item_id).take(pa.array(events.item)),
            "event_type": pa.array(EVENT_TYPES).take(pa.array(events.event_type)),
            "ts": _ts(events.ts),
            "channel": pa.array(EVENT_CHANNELS).take(pa.array(events.channel)),
            "quantity": pa.array(events.quantity, type=pa.int32()),
            "amount": pa.array(events.amount, type=pa.float64()),
        }
    ).select(list(EVENTS.columns))


def catalog_table(catalog: Catalog) -> pa.Table:
    brand_names = np.array([*catalog.brand_names, ""])  # index -1 -> ""
    return pa.table(
        {
            "item_id": pa.array(catalog.item_id),
            "kind": pa.array(np.where(catalog.is_content, "content", "product")),
            "title": pa.array(catalog.title),
            "category": pa.array(np.array([c.name for c in CATEGORIES])[catalog.category]),
            "brand": pa.array(brand_names[catalog.brand]),
            "price": pa.array(catalog.price),
            "in_stock": pa.array(catalog.in_stock),
            "published_at": _ts(catalog.published_at),
            "featured_item_ids": pa.array(
                [[str(catalog.item_id[p]) for p in f] for f in catalog.featured], type=pa.list_(pa.string())
            ),
        }
    ).select(list(CATALOG.columns))


def member_tiers(spend: np.ndarray) -> np.ndarray:
    """Tier names from each member's total spend."""
    limits = np.array([lim for lim, _ in TIER_LIMITS])
    names = np.array([name for _, name in TIER_LIMITS])
    return names[np.searchsorted(limits, spend, side="right") - 1]


def members_table(members: Members, tiers: np.ndarray) -> pa.Table:
    cols: dict[str, pa.Array] = {
        "member_id": pa.array(members.member_id),
        "registered_at": _ts(members.registered_at),
        "tier": pa.array(tiers),
        "timezone": pa.array(np.array([name for name, _ in TIMEZONES])[members.timezone]),
    }
    for ch in CONSENT_CHANNELS:
        v = members.consent[ch]
        cols[f"consent_{ch}"] = pa.array(v == 1, mask=v < 0)  # null = never answered
    return pa.table(cols).select(list(MEMBERS.columns))


def truth_tables(catalog: Catalog, members: Members) -> dict[str, pa.Table]:
    return {
        "members": pa.table(
            {
                "member_id": pa.array(members.member_id),
                "primary_group": pa.array(members.primary),
                "secondary_group": pa.array(members.secondary),
                "lifecycle_plan": pa.array(np.array(LIFECYCLE_PLANS)[members.plan]),
                "active_until": _ts(members.active_until),
                "activity": pa.array(members.activity),
                # local hour the planted active window (members.ACTIVE_WINDOW_HOURS long) starts
                "active_start_hour": pa.array(members.active_hour.astype(np.int8)),
            }
        ),
        "items": pa.table(
            {
                "item_id": pa.array(catalog.item_id),
                "group": pa.array(catalog.group),
                "subtype": pa.array(catalog.subtype),
                "popularity": pa.array(catalog.popularity),
                "cycle_days": pa.array(catalog.cycle_days),
            }
        ),
    }


def as_text_table(table: pa.Table) -> pa.Table:
    """CSV spelling of the contract: ISO-8601 UTC times, "a|b" lists, true/false booleans."""
    cols = {}
    for name in table.column_names:
        col = table[name]
        if pa.types.is_timestamp(col.type):
            # whole seconds: arrow's %S prints microseconds for a microsecond column
            col = pc.strftime(pc.cast(col, pa.timestamp("s", tz="UTC")), format="%Y-%m-%dT%H:%M:%SZ")
        elif pa.types.is_list(col.type):
            col = pc.binary_join(col, "|")
        cols[name] = col
    return pa.table(cols)


class ChunkedWriter:
    """Writes one table chunk by chunk, so a 50M-event table never sits in memory at once."""

    def __init__(self, out_dir: Path, name: str, fmt: Format) -> None:
        self.path = out_dir / f"{name}.{'parquet' if fmt == 'parquet' else 'csv'}"
        self.fmt = fmt
        self.rows = 0
        self._writer: pq.ParquetWriter | pacsv.CSVWriter | None = None

    def write(self, table: pa.Table) -> None:
        if self.fmt == "csv":
            table = as_text_table(table)
        if self._writer is None:
            if self.fmt == "parquet":
                self._writer = pq.ParquetWriter(self.path, table.schema, compression="zstd")
            else:
                self._writer = pacsv.CSVWriter(self.path, table.schema)
        self._writer.write_table(table)
        self.rows += table.num_rows

    def close(self) -> Path:
        if self._writer is not None:
            self._writer.close()
        return self.path


def write_table(table: pa.Table, out_dir: Path, name: str, fmt: Format) -> Path:
    if fmt == "parquet":
        path = out_dir / f"{name}.parquet"
        pq.write_table(table, path, compression="zstd")
    else:
        path = out_dir / f"{name}.csv"
        pacsv.write_csv(as_text_table(table), path)
    return path
