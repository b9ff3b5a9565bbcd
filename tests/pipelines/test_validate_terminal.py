"""What `recsvc data validate` prints on the terminal besides the counts: each table's encoding
as read (a wrong guess between cp1252 and GB18030 garbles every title, docs/data.md, Encodings)
and the notes on rows kept on purpose (identical dates-only events kept as repeats), which were
only in the log and summary.json."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
from typer.testing import CliRunner

from pipelines.contract import CATALOG, EVENTS
from recsvc.cli import app

TITLES = ["CRÈME BRÛLÉE RAMEKIN", "NOËL DECORATION WREATH", "Café moulu 250 g – arabica"]


def _write(folder: Path) -> Path:
    """A Western Excel export: the catalog in cp1252, events with dates only, one purchase of P1
    three times on one day (three units), no members file."""
    folder.mkdir(parents=True, exist_ok=True)
    catalog = pd.DataFrame(
        {
            "item_id": [f"P{i}" for i in range(len(TITLES))],
            "kind": "product",
            "title": TITLES,
            "category": "grocery",
            "brand": "own label",
            "price": "2.50",
            "in_stock": "true",
            "published_at": "",
            "featured_item_ids": "",
        },
        columns=list(CATALOG.columns),
    )
    catalog.to_csv(folder / "catalog.csv", index=False, encoding="cp1252")
    rows = ["M1,P0,purchase,2026-05-01,app,1,2.50"] * 3 + ["M2,P1,purchase,2026-05-02,app,1,2.50"]
    (folder / "events.csv").write_text("\n".join([",".join(EVENTS.columns), *rows]) + "\n", encoding="utf-8")
    return folder


def test_validate_prints_each_files_encoding_and_the_dates_only_note(tmp_path: Path) -> None:
    folder = _write(tmp_path / "d")
    res = CliRunner().invoke(app, ["data", "validate", str(folder)])
    assert res.exit_code == 0, res.output
    summary = json.loads((folder / "quarantine" / "summary.json").read_text())["tables"]
    assert summary["catalog"]["encoding"] == "cp1252"
    note = summary["events"]["notes"][0]
    assert "dates only" in note and "order_id" in note
    lines = res.stdout.splitlines()
    catalog_row = next(line for line in lines if "catalog" in line and "cp1252" in line)
    assert "3" in catalog_row  # the encoding stands in the table's row, beside its counts
    events_row = next(line for line in lines if line.strip("│ ").startswith("events"))
    assert "utf-8" in events_row
    members_row = next(line for line in lines if line.strip("│ ").startswith("members"))
    assert " - " in members_row  # no file: implied by the events
    assert f"events: note: {note}" in lines  # the whole note, on one line of its own
    assert "order_id" in res.stdout


def test_a_parquet_file_is_shown_as_parquet(tmp_path: Path) -> None:
    folder = _write(tmp_path / "d")
    pd.read_csv(folder / "catalog.csv", dtype=str, encoding="cp1252", keep_default_na=False).to_parquet(
        folder / "catalog.parquet", index=False
    )
    (folder / "catalog.csv").unlink()
    res = CliRunner().invoke(app, ["data", "validate", str(folder)])
    assert res.exit_code == 0, res.output
    catalog_row = next(line for line in res.stdout.splitlines() if line.strip("│ ").startswith("catalog"))
    assert "parquet" in catalog_row and "cp1252" not in res.stdout
