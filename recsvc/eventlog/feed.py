"""What the service saw, into the next model: ``recsvc train`` reads the event log's
``kind=event`` partitions (``events.log_dir``, written by ``recsvc events sink``) beside the data
folder and adds them to the folder's events.

The log's events go through the same data contract as the folder's (docs/data.md), checked
against the folder's catalog and members: an event of a member or item the folder does not know
is quarantined (``unknown_member`` / ``unknown_item``) like any other. An event that is both in
the brand's feed and in the log (all seven values equal) is kept once.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq

from recsvc.settings import DataSettings

log = logging.getLogger(__name__)


def log_event_files(log_dir: Path) -> list[Path]:
    from recsvc.eventlog.files import log_parts

    return log_parts(log_dir, "event")


def load_with_event_log(data_dir: Path, log_dir: Path, settings: DataSettings) -> object:
    """``pipelines.ingest.load_dataset(data_dir)`` plus the log's clean events (counted under
    ``eventlog.*`` in ``counts``)."""
    from pipelines.contract import CATALOG, EVENTS, MEMBERS
    from pipelines.ingest import load_dataset
    from pipelines.read import find_table_file

    base = load_dataset(data_dir, settings)
    files = log_event_files(log_dir)
    if not files:
        return base
    from recsvc.eventlog.files import read_parts
    from recsvc.eventlog.schema import SCHEMAS

    table = read_parts(files, SCHEMAS["event"]).select(list(EVENTS.columns))
    with tempfile.TemporaryDirectory(prefix="recsvc-eventlog-") as tmp:
        folder = Path(tmp)
        for spec in (CATALOG, MEMBERS):
            src = find_table_file(data_dir, spec).resolve()
            (folder / src.name).symlink_to(src)
        pq.write_table(table, folder / "events.parquet")
        extra = load_dataset(folder, settings)
    columns = list(EVENTS.columns)
    merged = pd.concat([base.events, extra.events], ignore_index=True)
    merged = merged.drop_duplicates(subset=columns, keep="first", ignore_index=True)
    q = extra.quarantine[extra.quarantine["table"] == "events"].assign(table="eventlog")
    base.counts["eventlog.rows_read"] = extra.counts.get("events.rows_read", 0)
    base.counts["eventlog.rows_clean"] = len(merged) - len(base.events)
    base.counts["eventlog.rows_quarantined"] = len(q)
    log.info(
        "event=eventlog_read files=%d rows=%d clean_new=%d quarantined=%d",
        len(files),
        table.num_rows,
        base.counts["eventlog.rows_clean"],
        len(q),
    )
    base.events = merged
    base.quarantine = pd.concat([base.quarantine, q], ignore_index=True)
    return base
