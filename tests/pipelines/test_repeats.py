"""Duplicates and repeats (docs/data.md): identical rows are duplicate_event only when the times
could tell two events apart. A dates-only file keeps them as repeat events (H&M's t_dat: two
units of one article bought that day); an order_id column (in the file or mapped) makes rows of
different orders never duplicates, and the same row twice in one order still a duplicate."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import pytest

from pipelines.contract import CATALOG, EVENTS, FIXES, Reason
from pipelines.mapping import Mapping
from pipelines.read import _check_columns
from pipelines.validate import validate_dir
from recsvc.errors import DataContractError
from recsvc.settings import DataSettings

NOW = datetime(2026, 6, 1, tzinfo=UTC)
DATA = DataSettings()


def _event(ts: str, item: str = "P1", amount: str = "9.90", order: str | None = None) -> dict[str, str]:
    row = {"member_id": "M1", "item_id": item, "event_type": "purchase", "ts": ts, "channel": "app",
           "quantity": "1", "amount": amount}  # fmt: skip
    return row if order is None else {**row, "order_id": order}


def _write(folder: Path, events: list[dict[str, str]], fmt: str = "csv") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    catalog = pd.DataFrame(
        [[f"P{i}", "product", f"Tee {i}", "apparel", "own", "9.90", "true", "", ""] for i in (1, 2)],
        columns=list(CATALOG.columns),
    )
    catalog.to_csv(folder / "catalog.csv", index=False)
    columns = [*EVENTS.columns, *(["order_id"] if any("order_id" in e for e in events) else [])]
    frame = pd.DataFrame(events, columns=columns, dtype=str)
    if fmt == "csv":
        frame.to_csv(folder / "events.csv", index=False)
    else:
        frame.to_parquet(folder / "events.parquet", index=False)
    return folder


def test_dates_only_identical_rows_are_kept_as_repeat_purchases(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # H&M: one row per unit, the day only. Three units of P1 on one day, one of P2.
    rows = [_event("2026-05-01"), _event("2026-05-01"), _event("2026-05-01"), _event("2026-05-02", "P2")]
    with caplog.at_level(logging.INFO):
        result = validate_dir(_write(tmp_path / "d", rows), DATA, now=NOW)
    events = result.tables["events"]
    assert events.quarantine.empty and len(result.events) == 4
    # every unit counts: purchases per item and spend are the export's
    assert result.events.groupby("item_id", observed=True).size().to_dict() == {"P1": 3, "P2": 1}
    assert result.events["amount"].sum() == pytest.approx(4 * 9.90)
    notes = result.summary()["tables"]["events"]["notes"]
    assert len(notes) == 1 and notes[0].startswith("2 rows repeat an earlier one exactly")
    assert "no time of day" in notes[0] and "no time of day" in caplog.text


def test_dates_only_at_the_mapping_offset_are_dates_only_too(tmp_path: Path) -> None:
    # "2026-05-01" at +08:00 is 2026-04-30T16:00Z: still a date's start, not a time of day.
    rows = [_event("2026-05-01"), _event("2026-05-01")]
    mapping = Mapping.model_validate({"timestamps": {"default_offset": "+08:00"}})
    result = validate_dir(_write(tmp_path / "d", rows), DATA, now=NOW, mapping=mapping)
    assert result.tables["events"].quarantine.empty and len(result.events) == 2
    assert str(result.events["ts"].iloc[0]) == "2026-04-30 16:00:00+00:00"


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_dates_only_with_order_ids_quarantines_the_same_row_in_one_order(tmp_path: Path, fmt: str) -> None:
    rows = [
        _event("2026-05-01", order="A1"),
        _event("2026-05-01", order="A2"),  # another order that day: a repeat purchase, kept
        _event("2026-05-01", order=" A1 "),  # the same order again (trimmed): sent twice
        _event("2026-05-01", order="A2.0"),  # an id is read as an id: 2.0 is 2, "A2.0" stays A2.0
    ]
    result = validate_dir(_write(tmp_path / "d", rows, fmt), DATA, now=NOW)
    q = result.tables["events"].quarantine
    assert list(q["reason"]) == [Reason.DUPLICATE_EVENT] and list(q["source_row"]) == [2]
    assert (
        q.loc[0, "detail"]
        == "repeats an earlier accepted event of the same order_id (the times carry no time of day)"
    )
    assert q.loc[0, "order_id"] == " A1 "  # the row as read, ready to fix and replay
    assert len(result.events) == 3 and "order_id" not in result.events.columns


def test_order_ids_stored_as_floats_are_the_integers_they_hold(tmp_path: Path) -> None:
    rows = [_event("2026-05-01T10:00:00Z", order="489434"), _event("2026-05-01T10:00:00Z", order="489434.0")]
    q = validate_dir(_write(tmp_path / "d", rows), DATA, now=NOW).tables["events"].quarantine
    assert list(q["source_row"]) == [1]


def test_whole_minutes_still_quarantine_and_the_detail_says_why(tmp_path: Path) -> None:
    # Online Retail's "12/24/2009 9:21": minutes only. Identical rows stay duplicates, and the
    # detail says the times carry no seconds; an order_id tells real repeats apart.
    rows = [_event("2026-05-01T09:21:00Z"), _event("2026-05-01T09:21:00Z"), _event("2026-05-02T10:00:00Z")]
    result = validate_dir(_write(tmp_path / "d", rows), DATA, now=NOW)
    q = result.tables["events"].quarantine
    assert list(q["reason"]) == [Reason.DUPLICATE_EVENT]
    detail = str(q.loc[0, "detail"])
    assert "no seconds" in detail and "order_id" in detail
    problems = result.summary()["tables"]["events"]["problems"][Reason.DUPLICATE_EVENT]
    assert "order_id" in problems["fix"] and "dates only" in problems["fix"]


def test_different_order_ids_are_never_duplicates(tmp_path: Path) -> None:
    rows = [
        _event("2026-05-01T09:21:07Z", order="489434"),
        _event("2026-05-01T09:21:07Z", order="489435"),
        _event("2026-05-01T09:21:07Z", order=""),  # no order id is an order id of its own
        _event("2026-05-01T09:21:07Z", order="489434"),  # the same line in one order: sent twice
    ]
    result = validate_dir(_write(tmp_path / "d", rows), DATA, now=NOW)
    q = result.tables["events"].quarantine
    assert (
        list(q["source_row"]) == [3]
        and q.loc[0, "detail"] == "repeats an earlier accepted event of the same order_id"
    )
    assert len(result.events) == 3


def test_an_invoice_column_mapped_to_order_id(tmp_path: Path) -> None:
    folder = tmp_path / "d"
    _write(folder, [])
    export = pd.DataFrame(
        {
            "Invoice": ["489434", "489434", "489435"],
            "StockCode": ["P1", "P1", "P1"],
            "InvoiceDate": ["12/24/2009 9:21"] * 3,
            "Customer ID": ["M1"] * 3,
        }
    )
    export.to_csv(folder / "events.csv", index=False)
    mapping = Mapping.model_validate(
        {
            "events": {
                "columns": {
                    "Invoice": "order_id",
                    "StockCode": "item_id",
                    "InvoiceDate": "ts",
                    "Customer ID": "member_id",
                },
                "defaults": {
                    "event_type": "purchase",
                    "channel": "offline_store",
                    "quantity": "1",
                    "amount": "9.90",
                },
            },
            "timestamps": {"formats": ["%m/%d/%Y %H:%M"]},
        }
    )
    result = validate_dir(folder, DATA, now=NOW, mapping=mapping)
    q = result.tables["events"].quarantine
    assert list(q["source_row"]) == [1]  # the line twice in invoice 489434; 489435 is its own
    assert len(result.events) == 2


def test_one_time_of_day_makes_identical_rows_duplicates_again(tmp_path: Path) -> None:
    rows = [_event("2026-05-01"), _event("2026-05-01"), _event("2026-05-02T10:00:01Z", "P2")]
    q = validate_dir(_write(tmp_path / "d", rows), DATA, now=NOW).tables["events"].quarantine
    assert list(q["reason"]) == [Reason.DUPLICATE_EVENT] and list(q["source_row"]) == [1]
    assert q.loc[0, "detail"] == "repeats an earlier accepted event"


def test_a_reader_without_extra_columns_refuses_order_id(tmp_path: Path) -> None:
    # Spark's ingest checks columns without the extra ones: it stops instead of ignoring order ids.
    with pytest.raises(DataContractError, match="unexpected columns: 'order_id'"):
        _check_columns(tmp_path / "events.csv", EVENTS, [*EVENTS.columns, "order_id"])
    _check_columns(tmp_path / "events.csv", EVENTS, [*EVENTS.columns, "order_id"], EVENTS.extra)
    with pytest.raises(DataContractError, match="may add: order_id"):
        _check_columns(tmp_path / "events.csv", EVENTS, [*EVENTS.columns, "basket"], EVENTS.extra)


def test_the_fix_for_duplicates_names_order_id() -> None:
    assert "order_id" in FIXES[Reason.DUPLICATE_EVENT]
