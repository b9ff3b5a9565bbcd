"""Chunked event validation: the same clean rows and quarantine whatever the chunk size, exact
duplicates caught across chunk boundaries, compact dtypes training can use."""

from __future__ import annotations

import csv
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines.contract import CATALOG, CONSENT_COLUMNS, EVENTS, MEMBERS, Reason
from pipelines.ingest import load_dataset
from pipelines.validate import ValidationResult, validate_dir
from recsvc.errors import DataContractError
from recsvc.settings import DataSettings

NOW = datetime(2026, 6, 1, tzinfo=UTC)
MEMBER_IDS = [f"M{i}" for i in range(1, 9)]
PRODUCT_IDS = [f"P{i}" for i in range(1, 6)]


def _catalog() -> list[list[str]]:
    rows = [[p, "product", f"Item {p}", "tea", "Leaf", "10", "true", "", ""] for p in PRODUCT_IDS]
    rows.append(["C1", "content", "Guide", "tea", "", "0", "", "2026-01-01T00:00:00Z", "P1|P2"])
    rows.append(["P9", "product", "", "tea", "Leaf", "1", "true", "", ""])  # quarantined: missing title
    return rows


def _members() -> list[list[str]]:
    rows = [
        [m, "2024-01-01T00:00:00Z", "gold", "Asia/Shanghai", *([""] * len(CONSENT_COLUMNS))]
        for m in MEMBER_IDS
    ]
    rows.append(["M99", "2099-01-01T00:00:00Z", "gold", "UTC", *([""] * len(CONSENT_COLUMNS))])  # future: out
    return rows


def _events(n: int = 240, seed: int = 7) -> list[list[str]]:
    """Good rows, every kind of bad row, and repeats of earlier rows spelled differently."""
    rng = np.random.default_rng(seed)
    types = ["view", "click", "purchase", "add_to_cart", "content_view"]
    channels = ["app", "mini_program", "wecom", "live"]
    bad = [
        ("event_type", "buy"), ("channel", "tiktok"), ("member_id", ""), ("item_id", "P 1"),
        ("member_id", "M" * 70), ("ts", "yesterday"), ("ts", "2030-01-01T00:00:00Z"), ("quantity", "0"),
        ("quantity", "1.5"), ("amount", "abc"), ("amount", "-3"), ("member_id", "M404"), ("item_id", "P9"),
        ("member_id", "M99"), ("item_id", "C404"),
    ]  # fmt: skip
    rows: list[list[str]] = []
    for _ in range(n):
        if rows and rng.random() < 0.15:
            # The same event again: same values, other spellings (kept as sent in the quarantine).
            row = dict(zip(EVENTS.columns, rows[int(rng.integers(len(rows)))], strict=True))
            row["member_id"] = f" {row['member_id']} "
            row["quantity"] = row["quantity"] or "1"
            rows.append([row[c] for c in EVENTS.columns])
            continue
        etype = types[int(rng.integers(len(types)))]
        row = {
            "member_id": MEMBER_IDS[int(rng.integers(len(MEMBER_IDS)))],
            "item_id": "C1" if etype == "content_view" else PRODUCT_IDS[int(rng.integers(len(PRODUCT_IDS)))],
            "event_type": etype,
            "ts": f"2026-05-{1 + int(rng.integers(28)):02d}T{int(rng.integers(24)):02d}:00:00Z",
            "channel": channels[int(rng.integers(len(channels)))],
            "quantity": ["", "1", "2"][int(rng.integers(3))],
            "amount": f"{int(rng.integers(1, 500))}.5" if etype == "purchase" else "",
        }
        if rng.random() < 0.2:
            column, value = bad[int(rng.integers(len(bad)))]
            row[column] = value
        rows.append([row[c] for c in EVENTS.columns])
    return rows


def _write(
    folder: Path, events: list[list[str]], fmt: str = "csv", row_group_size: int | None = None
) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for spec, rows in ((CATALOG, _catalog()), (MEMBERS, _members()), (EVENTS, events)):
        df = pd.DataFrame(rows, columns=list(spec.columns), dtype=str)
        if fmt == "csv":
            df.to_csv(folder / f"{spec.name}.csv", index=False, quoting=csv.QUOTE_ALL)
        else:
            pq.write_table(pa.Table.from_pandas(df, preserve_index=False), folder / f"{spec.name}.parquet",
                           row_group_size=row_group_size)  # fmt: skip
    return folder


def _validate(folder: Path, chunk_rows: int) -> ValidationResult:
    return validate_dir(folder, DataSettings(validate_chunk_rows=chunk_rows), now=NOW)


def _assert_same(a: ValidationResult, b: ValidationResult) -> None:
    for name in ("catalog", "members", "events"):
        pd.testing.assert_frame_equal(a.tables[name].clean, b.tables[name].clean)
        pd.testing.assert_frame_equal(a.tables[name].quarantine, b.tables[name].quarantine)
        assert a.tables[name].rows_read == b.tables[name].rows_read


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_tiny_chunks_give_the_same_result_as_one_chunk(tmp_path: Path, fmt: str) -> None:
    folder = _write(tmp_path / "d", _events(), fmt=fmt, row_group_size=50)
    whole = _validate(folder, chunk_rows=1_000_000)
    events = whole.tables["events"]
    # The data really has every kind of row in it, so the comparison means something.
    assert len(events.clean) > 100
    reasons = events.reason_counts
    assert reasons[Reason.DUPLICATE_EVENT] >= 10 and len(reasons) >= 10, reasons
    assert len(events.clean) + len(events.quarantine) == events.rows_read == 240
    for chunk_rows in (7, 64):
        _assert_same(whole, _validate(folder, chunk_rows=chunk_rows))


def test_csv_and_parquet_agree_when_chunked(tmp_path: Path) -> None:
    a = _validate(_write(tmp_path / "csv", _events()), chunk_rows=13)
    b = _validate(_write(tmp_path / "pq", _events(), fmt="parquet", row_group_size=17), chunk_rows=13)
    _assert_same(a, b)


def test_duplicate_in_a_later_chunk_is_quarantined_as_sent(tmp_path: Path) -> None:
    first = ["M1", "P1", "purchase", "2026-05-01T10:00:00Z", "app", "", "12.5"]
    other = ["M2", "P2", "view", "2026-05-01T11:00:00Z", "app", "1", ""]
    # Row 4 repeats row 0 (three chunks later), spelled differently: same event.
    again = [" M1", "P1 ", "purchase", "2026-05-01T18:00:00+08:00", "app", "1", "12.50"]
    near = ["M1", "P1", "purchase", "2026-05-01T10:00:00Z", "app", "", "12.51"]  # not a repeat
    folder = _write(tmp_path / "d", [first, other, other, near, again])
    q = _validate(folder, chunk_rows=1).tables["events"].quarantine
    assert list(q["source_row"]) == [2, 4]
    assert list(q["reason"]) == [Reason.DUPLICATE_EVENT] * 2
    assert q.loc[1, "member_id"] == " M1" and q.loc[1, "ts"] == "2026-05-01T18:00:00+08:00"
    assert q.loc[1, "amount"] == "12.50" and q.loc[1, "quantity"] == "1"


def test_duplicates_are_decided_exactly_even_when_hashes_collide(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = _write(tmp_path / "d", _events())
    honest = _validate(folder, chunk_rows=16)

    def colliding(obj: pd.DataFrame, index: bool = True) -> pd.Series:
        return pd.Series(np.zeros(len(obj), dtype=np.uint64))  # every row shares one hash

    monkeypatch.setattr(pd.util, "hash_pandas_object", colliding)
    _assert_same(honest, _validate(folder, chunk_rows=16))


def test_clean_events_are_compact_and_training_can_use_them(tmp_path: Path) -> None:
    from training.prepare import PURCHASE_CODE, prepare

    folder = _write(tmp_path / "d", _events(), fmt="parquet", row_group_size=40)
    ds = load_dataset(folder, DataSettings(validate_chunk_rows=32), now=NOW)
    ev = ds.events
    dtypes = {c: str(t) for c, t in ev.dtypes.items()}
    assert dtypes == {
        "member_id": "category",
        "item_id": "category",
        "event_type": "category",
        "ts": "datetime64[us, UTC]",
        "channel": "category",
        "quantity": "int16",
        "amount": "float64",
    }
    # Categories are the ids that occur, never quarantined members or items.
    assert set(ev["member_id"].cat.categories) == set(ev["member_id"].astype(str))
    assert set(ev["member_id"].cat.categories) <= set(MEMBER_IDS)
    assert "P9" not in set(ev["item_id"].cat.categories)
    prepared = prepare(ds)
    assert len(prepared.events) == len(ev)
    assert set(prepared.members.array.astype(str)) >= set(ev["member_id"].astype(str))
    purchases = ev["event_type"] == "purchase"
    np.testing.assert_allclose(
        np.sort(prepared.events.amount[prepared.events.etype == PURCHASE_CODE]),
        np.sort(ev.loc[purchases, "amount"]),
    )


def test_empty_and_header_only_events_in_chunks(tmp_path: Path) -> None:
    for fmt in ("csv", "parquet"):
        result = _validate(_write(tmp_path / fmt, [], fmt=fmt), chunk_rows=3)
        assert result.tables["events"].rows_read == 0 and len(result.events) == 0
        assert list(result.tables["events"].quarantine.columns)[:3] == ["source_row", "reason", "detail"]


def test_malformed_line_in_a_later_chunk_still_names_the_file(tmp_path: Path) -> None:
    folder = _write(tmp_path / "d", _events(30))
    with (folder / "events.csv").open("a") as fh:
        fh.write("M1,P1,view,2026-05-04T00:00:00Z,app,1,0,extra\n")
    with pytest.raises(DataContractError, match=r"cannot parse .*events.csv as CSV.*line 32"):
        _validate(folder, chunk_rows=4)
