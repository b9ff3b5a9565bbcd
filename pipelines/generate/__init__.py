"""The realistic retail data generator behind ``recsvc data generate``.

``generate(params, out_dir, fmt)`` writes a data folder that follows the contract
(docs/data.md): ``catalog``, ``members`` and ``events`` tables, ``truth/`` with the planted
structure (taste groups, lifecycle plans, item popularity) and ``generation.json`` with the
parameters and counts. The same parameters and seed always give the same rows.

Structure planted, and where: ``catalog`` (taste groups, brands, long-tail popularity,
consumables, content featuring products), ``members`` (tastes, lifecycle, time zones, channel
habits, consent), ``events`` (sessions, funnels, seasonality, repurchases).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.generate.catalog import build_catalog
from pipelines.generate.corrupt import corrupt_events
from pipelines.generate.effects import PlantedEffects
from pipelines.generate.events import build_events
from pipelines.generate.members import build_members
from pipelines.generate.params import GeneratorParams
from pipelines.generate.write import (
    TRUTH_DIR,
    ChunkedWriter,
    Format,
    catalog_table,
    events_table,
    member_tiers,
    members_table,
    truth_tables,
    write_table,
)
from recsvc.errors import InvalidArgument

__all__ = ["GenerationReport", "GeneratorParams", "generate"]

log = logging.getLogger(__name__)
REPORT_FILE = "generation.json"
CHUNK_MEMBERS = 200_000


@dataclass
class GenerationReport:
    out_dir: Path
    params: GeneratorParams
    format: str
    rows: dict[str, int]
    planted_bad_events: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    files: list[Path] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "params": json.loads(self.params.model_dump_json()),
            "resolved": {"products": self.params.n_products, "content": self.params.n_content},
            "format": self.format,
            "rows": self.rows,
            "planted_bad_events": self.planted_bad_events,
            "seconds": round(self.seconds, 2),
        }


def generate(
    params: GeneratorParams, out_dir: Path, fmt: Format = "parquet", *, overwrite: bool = False
) -> GenerationReport:
    """Write the data folder ``out_dir``. It must be new or empty unless ``overwrite``: it may be
    someone's real data, and the generator replaces its tables and removes a table it holds in
    the other format. Raises InvalidArgument naming the folder before anything is generated.
    A leading ``~`` is expanded here, once: left to pyarrow, it would expand it for the table
    files only, after ``mkdir`` had made a folder literally named ``~``."""
    out_dir = Path(out_dir).expanduser()
    if not overwrite:
        _refuse_if_in_use(out_dir)
    started = time.perf_counter()
    # Independent streams per part, so e.g. planting bad rows never changes the clean rows.
    seeds = np.random.SeedSequence(params.seed).spawn(4)
    rng_catalog, rng_members = (np.random.default_rng(s) for s in seeds[:2])
    catalog = build_catalog(params, rng_catalog)
    log.info("generated catalog products=%d content=%d", params.n_products, params.n_content)
    members = build_members(params, rng_members, catalog.group_sizes)

    out_dir.mkdir(parents=True, exist_ok=True)
    if overwrite:  # a folder that is not empty was refused above otherwise
        _remove_other_format(out_dir, fmt)
    # Events are generated and written per chunk of members (each with its own random stream),
    # which keeps memory flat from 1k to 1M members.
    starts = list(range(0, len(members), CHUNK_MEMBERS))
    event_seeds, bad_seeds = seeds[2].spawn(len(starts)), seeds[3].spawn(len(starts))
    spend = np.zeros(len(members))
    planted: dict[str, int] = {}
    writer = ChunkedWriter(out_dir, "events", fmt)
    for start, ev_seed, bad_seed in zip(starts, event_seeds, bad_seeds, strict=True):
        stop = min(start + CHUNK_MEMBERS, len(members))
        events = build_events(params, np.random.default_rng(ev_seed), catalog, members.rows(start, stop))
        events.member += start
        spend += np.bincount(events.member, weights=events.amount, minlength=len(members))
        table = events_table(events, catalog, members)
        if params.bad_event_share > 0:
            table, counts = corrupt_events(table, params.bad_event_share, np.random.default_rng(bad_seed))
            for reason, n in counts.items():
                planted[reason] = planted.get(reason, 0) + n
        writer.write(table)
        log.info("generated events members=%d..%d events=%d", start, stop - 1, table.num_rows)
    files = [
        writer.close(),
        write_table(catalog_table(catalog), out_dir, "catalog", fmt),
        write_table(members_table(members, member_tiers(spend)), out_dir, "members", fmt),
    ]
    truth_dir = out_dir / TRUTH_DIR
    truth_dir.mkdir(exist_ok=True)
    for name, truth in truth_tables(catalog, members).items():
        files.append(write_table(truth, truth_dir, name, "parquet"))
    files.append(PlantedEffects().write(truth_dir))  # what the experiment reports should find
    report = GenerationReport(
        out_dir=out_dir,
        params=params,
        format=fmt,
        rows={"catalog": len(catalog.item_id), "members": len(members), "events": writer.rows},
        planted_bad_events=planted,
        seconds=time.perf_counter() - started,
        files=files,
    )
    (out_dir / REPORT_FILE).write_text(json.dumps(report.as_dict(), indent=2) + "\n")
    files.append(out_dir / REPORT_FILE)
    log.info("generated %s in %.1fs", report.rows, report.seconds)
    return report


def _refuse_if_in_use(out_dir: Path) -> None:
    """Refuse a folder that holds anything: a table in any format, the report, or a file of the
    user's (every one of them could be data that exists nowhere else)."""
    if not out_dir.is_dir():
        return  # new (or a file, which creating the folder reports)
    held = sorted(entry.name for entry in out_dir.iterdir())
    if held:
        shown = ", ".join(held[:5]) + (f" and {len(held) - 5} more" if len(held) > 5 else "")
        raise InvalidArgument(
            f"{out_dir} is not empty (it holds {shown}); refusing to write sample data over it: "
            "give a new or empty folder with --out, or --overwrite to replace its tables"
        )


def _remove_other_format(out_dir: Path, fmt: Format) -> None:
    """A folder must hold one file per table; drop tables an earlier run wrote in another format."""
    other = (".csv", ".csv.gz") if fmt == "parquet" else (".parquet", ".csv.gz")
    for name in ("catalog", "members", "events"):
        for suffix in other:
            stale = out_dir / f"{name}{suffix}"
            if stale.exists():
                log.info("removing %s written by an earlier run in another format", stale)
                stale.unlink()
