"""Ingest: a data folder in, clean tables plus everything that was set aside, for later steps.

Reads: ``<dir>/{catalog,members,events}.{parquet,csv,csv.gz}`` through ``pipelines.validate``.
Writes: a :class:`Dataset` in memory and, when asked, the quarantine files and summary
(``pipelines.validate.ValidationResult.write``). Training starts here (``training.prepare``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import pandas as pd

from pipelines.contract import CATALOG, CONSENT_CHANNELS, EVENTS
from pipelines.mapping import Mapping
from pipelines.validate import QUARANTINE_DIRNAME, SUMMARY_FILE, ValidationResult, validate_dir
from recsvc.errors import DataContractError
from recsvc.settings import DataSettings

log = logging.getLogger(__name__)

# The quarantine handed to training keeps ids and reasons only; the full rows stay in the files.
QUARANTINE_COLUMNS = ("table", "source_row", "reason", "detail", "member_id", "item_id")


@dataclass
class Dataset:
    events: pd.DataFrame
    catalog: pd.DataFrame
    members: pd.DataFrame
    # Long form of the members' consent columns: member_id, channel, granted; answered only.
    consent: pd.DataFrame
    # Every quarantined row of every table: QUARANTINE_COLUMNS ("" where a table has no such id).
    quarantine: pd.DataFrame
    # "<table>.rows_read", "<table>.rows_clean", "<table>.rows_quarantined" per table.
    counts: dict[str, Any] = field(default_factory=dict)


def load_dataset(
    data_dir: Path,
    settings: DataSettings,
    now: datetime | None = None,
    quarantine_dir: Path | None = None,
    *,
    encoding: str | None = None,
    mapping: Mapping | None = None,
    max_quarantined_share: float | None = None,
    keep_quarantine: bool = False,
) -> Dataset:
    """Validate ``data_dir`` and return its clean tables; raise DataContractError if unusable.

    With ``max_quarantined_share``, more than that share of quarantined events or catalog rows
    also stops (reason QUARANTINE_SHARE), after the quarantine and its summary were written (to
    ``quarantine_dir``, default ``<data_dir>/quarantine``) so the one-line message can name them.
    ``keep_quarantine``: below that share too, the quarantined rows are written there
    (``keep_quarantine_files``), so a run that trains on the rest loses no row unseen."""
    result = validate_dir(data_dir, settings, now, encoding=encoding, mapping=mapping)
    over = quarantine_overflow(result, max_quarantined_share)
    if over and quarantine_dir is None:
        quarantine_dir = data_dir / QUARANTINE_DIRNAME
    if quarantine_dir is not None:
        result.write(quarantine_dir)
    if over:
        assert quarantine_dir is not None
        raise too_much_quarantined(over, max_quarantined_share, quarantine_dir)
    if keep_quarantine and quarantine_dir is None:
        keep_quarantine_files(result, data_dir / QUARANTINE_DIRNAME)
    return dataset_from(result)


def keep_quarantine_files(result: ValidationResult, out_dir: Path) -> Path | None:
    """The quarantine files of a run that goes on with the clean rows: written when any row was
    quarantined, or to replace the files of an earlier run (else a clean run writes nothing into
    the data folder). A folder that cannot be written is logged, not fatal: the counts per reason
    still reach the run. The folder written, or None."""
    rows = sum(len(t.quarantine) for t in result.tables.values())
    if not rows and not out_dir.is_dir():
        return None
    try:
        result.write(out_dir)
    except OSError as exc:
        log.warning("event=quarantine_not_written dir=%s rows=%d error=%s", out_dir, rows, exc)
        return None
    if rows:
        log.warning("event=quarantine_written dir=%s rows=%d (trained on the clean rows)", out_dir, rows)
    return out_dir


def quarantine_overflow(result: ValidationResult, max_quarantined_share: float | None) -> list[str]:
    """The events and catalog tables with more than ``max_quarantined_share`` quarantined, as
    "table: share of rows" (empty: within the limit, or no limit)."""
    if max_quarantined_share is None:
        return []
    return [
        f"{t.name}: {t.quarantined_share:.1%} of {t.rows_read:,} rows"
        for t in (result.tables[CATALOG.name], result.tables[EVENTS.name])
        if t.quarantined_share > max_quarantined_share
    ]


def too_much_quarantined(over: list[str], max_share: float | None, quarantine_dir: Path) -> DataContractError:
    """The data-quality gate's error (reason QUARANTINE_SHARE), naming the written summary."""
    return DataContractError(
        f"too much quarantined ({'; '.join(over)}; limit {max_share:.0%}, "
        f"data.max_quarantined_share): see {quarantine_dir / SUMMARY_FILE} for the reasons and "
        "their fixes (or recsvc data validate --report), fix the data or the mapping file, or "
        "train anyway with --allow-quarantine",
        reason="QUARANTINE_SHARE",
    )


def dataset_from(result: ValidationResult) -> Dataset:
    counts: dict[str, Any] = {}
    parts = []
    for name, table in result.tables.items():
        counts[f"{name}.rows_read"] = table.rows_read
        counts[f"{name}.rows_clean"] = len(table.clean)
        counts[f"{name}.rows_quarantined"] = len(table.quarantine)
        q = table.quarantine
        parts.append(
            pd.DataFrame(
                {
                    "table": name,
                    "source_row": q["source_row"].to_numpy(),
                    "reason": q["reason"].astype(str).to_numpy(),
                    "detail": q["detail"].fillna("").astype(str).to_numpy(),
                    "member_id": q["member_id"].to_numpy() if "member_id" in q else "",
                    "item_id": q["item_id"].to_numpy() if "item_id" in q else "",
                },
                columns=list(QUARANTINE_COLUMNS),
            )
        )
    quarantine = (
        pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=list(QUARANTINE_COLUMNS))
    )
    return Dataset(
        events=result.events,
        catalog=result.catalog,
        members=result.members,
        consent=consent_long(result.members),
        quarantine=quarantine,
        counts=counts,
    )


def consent_long(members: pd.DataFrame) -> pd.DataFrame:
    """member_id, channel, granted for every answered consent column (unanswered = no row)."""
    frames = []
    for channel in CONSENT_CHANNELS:
        col = members[f"consent_{channel}"]
        answered = col.notna().to_numpy(dtype=bool)
        frames.append(
            pd.DataFrame(
                {
                    "member_id": members["member_id"].to_numpy()[answered],
                    "channel": channel,
                    "granted": col.to_numpy(dtype=object)[answered].astype(bool),
                }
            )
        )
    return pd.concat(frames, ignore_index=True)
