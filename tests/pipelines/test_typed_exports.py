"""Typed exports read as their CSV does: a mapping file's value maps, defaults and default_offset
apply to typed Parquet columns, and ids stored as floats (pandas' int column with missing values)
are the integers they hold, in every table, as Parquet and as the CSV pandas writes of them.

Every folder here is written by pandas/pyarrow as an export tool would, then validated twice (CSV
and Parquet of the same rows) where the point is that the two agree."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines.contract import Reason
from pipelines.mapping import Mapping, load_mapping
from pipelines.validate import ValidationResult, validate_dir
from recsvc.settings import DataSettings

NOW = datetime(2026, 6, 1, tzinfo=UTC)
DATA = DataSettings()

CATALOG_MAPPING = """
[catalog.defaults]
kind = "product"
category = "tea"
brand = "Leaf"
in_stock = "true"
published_at = ""
"""


def _catalog(item_ids: list[object]) -> pd.DataFrame:
    return pd.DataFrame({"item_id": item_ids, "title": "Tea", "price": 10.0})


def _events(**columns: object) -> pd.DataFrame:
    """Two events of members 12347 and 12348 on items 101 and 102, as typed columns."""
    base: dict[str, object] = {
        "member_id": np.array([12347, 12348], dtype=np.int64),
        "item_id": np.array([101, 102], dtype=np.int64),
        "event_type": ["purchase", "view"],
        "ts": pd.to_datetime(["2026-05-01 10:00:00", "2026-05-02 11:30:00"]),  # naive
        "channel": np.array([1, 2], dtype=np.int8),
        "quantity": np.array([1, 1], dtype=np.int64),
        "amount": [12.5, np.nan],
    }
    return pd.DataFrame(base | columns)


def _write(
    folder: Path,
    fmt: str,
    events: pd.DataFrame,
    catalog: pd.DataFrame | None = None,
    members: pd.DataFrame | None = None,
) -> Path:
    """The tables as an export tool writes them: Parquet by pyarrow (its own types), CSV by pandas
    (a float column written as "12347.0", NaN as an empty cell)."""
    folder.mkdir(parents=True, exist_ok=True)
    tables = {"events": events, "catalog": catalog if catalog is not None else _catalog([101, 102])}
    if members is not None:
        tables["members"] = members
    for name, df in tables.items():
        if fmt == "parquet":
            pq.write_table(pa.Table.from_pandas(df, preserve_index=False), folder / f"{name}.parquet")
        else:
            df.to_csv(folder / f"{name}.csv", index=False)
    return folder


def _mapping(tmp_path: Path, text: str) -> Mapping:
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "mapping.toml"
    path.write_text(CATALOG_MAPPING + text, encoding="utf-8")
    mapping = load_mapping(path)
    assert mapping is not None
    return mapping


def _both(tmp_path: Path, text: str, events: pd.DataFrame, **tables: pd.DataFrame) -> list[ValidationResult]:
    mapping = _mapping(tmp_path, text)
    return [
        validate_dir(_write(tmp_path / fmt, fmt, events, **tables), DATA, now=NOW, mapping=mapping)
        for fmt in ("csv", "parquet")
    ]


def _same_events(csv: ValidationResult, parquet: ValidationResult) -> pd.DataFrame:
    assert csv.tables["events"].reason_counts == parquet.tables["events"].reason_counts
    a, b = (r.events.astype({"member_id": str, "item_id": str}) for r in (csv, parquet))
    pd.testing.assert_frame_equal(a, b, check_categorical=False)
    return b


# --- D2: the mapping file on typed columns ----------------------------------------------------


def test_a_value_map_matches_an_integer_column_by_its_text(tmp_path: Path) -> None:
    text = '[events.values.channel]\n"1" = "offline_store"\n"2" = "app"\n'
    csv, parquet = _both(tmp_path, text, _events())
    events = _same_events(csv, parquet)
    assert parquet.rows_quarantined == 0
    assert list(events["channel"]) == ["offline_store", "app"]
    # 1.0 is "1" too (a float column), and an unmapped value is refused naming it as a CSV would
    floats = _events(channel=np.array([1.0, 3.0]))
    csv, parquet = _both(tmp_path / "f", text, floats)
    _same_events(csv, parquet)
    q = parquet.tables["events"].quarantine
    assert list(q["reason"]) == [Reason.UNKNOWN_CHANNEL] and list(q["detail"]) == ["channel='3'"]
    assert list(parquet.events["channel"]) == ["offline_store"]


def test_a_default_fills_the_nulls_of_a_typed_column(tmp_path: Path) -> None:
    # all empty (RetailRocket has no amount): every purchase would be missing_amount without it
    empty = _events(amount=np.array([np.nan, np.nan]), event_type=["purchase", "purchase"])
    csv, parquet = _both(
        tmp_path, '[events.defaults]\namount = "0"\nchannel = ""\n', empty.drop(columns="channel")
    )
    events = _same_events(csv, parquet)
    assert parquet.rows_quarantined == 0 and list(events["amount"]) == [0.0, 0.0]
    # only the nulls are filled: a typed value keeps its value
    some = _events(
        amount=np.array([12.5, np.nan]), event_type=["purchase", "purchase"], channel=["app", "app"]
    )
    csv, parquet = _both(tmp_path / "s", '[events.defaults]\namount = "7"\n', some)
    assert list(_same_events(csv, parquet)["amount"]) == [12.5, 7.0]
    # booleans and times too: a null consent or registration time is an empty cell
    members = pd.DataFrame(
        {
            "member_id": np.array([12347, 12348]),
            "registered_at": pd.to_datetime(pd.Series(["2024-01-01 00:00:00", None])),
            "consent_sms": pd.array([True, None], dtype="boolean"),
        }
    )
    text = '[members.defaults]\nconsent_sms = "false"\nregistered_at = "2020-01-01"\n'
    csv, parquet = _both(tmp_path / "m", text, _events(channel=["app", "app"]), members=members)
    for result in (csv, parquet):
        assert result.rows_quarantined == 0
        m = result.members.set_index("member_id")
        assert list(m["consent_sms"]) == [True, False]
        assert list(m["registered_at"]) == list(pd.to_datetime(["2024-01-01", "2020-01-01"], utc=True))


@pytest.mark.parametrize("chunk_rows", [1, 1_000])
def test_default_offset_applies_to_a_datetime_column_without_a_zone(tmp_path: Path, chunk_rows: int) -> None:
    text = '[timestamps]\ndefault_offset = "+08:00"\n[events.defaults]\nchannel = ""\n'
    mapping = _mapping(tmp_path, text)
    events = _events().drop(columns="channel")
    settings = DataSettings(validate_chunk_rows=chunk_rows)
    got = [
        validate_dir(_write(tmp_path / fmt, fmt, events), settings, now=NOW, mapping=mapping).events
        for fmt in ("csv", "parquet")
    ]
    want = pd.to_datetime(["2026-05-01T02:00:00Z", "2026-05-02T03:30:00Z"], utc=True)
    assert list(got[0]["ts"]) == list(want) == list(got[1]["ts"])  # CSV and Parquet: one instant
    # a column that carries its zone is converted, never shifted again
    zoned = _events(ts=pd.to_datetime(["2026-05-01 10:00:00", "2026-05-02 11:30:00"]).tz_localize("UTC"))
    folder = _write(tmp_path / "zoned", "parquet", zoned.drop(columns="channel"))
    result = validate_dir(folder, settings, now=NOW, mapping=mapping)
    assert list(result.events["ts"]) == list(pd.to_datetime(["2026-05-01T10:00Z", "2026-05-02T11:30Z"]))
    # without a mapping a naive Parquet time is UTC, as a CSV time without an offset
    plain = _events(channel=["app", "app"])
    plain_mapping = _mapping(tmp_path, "")
    result = validate_dir(
        _write(tmp_path / "plain", "parquet", plain), settings, now=NOW, mapping=plain_mapping
    )
    assert result.events.loc[0, "ts"] == pd.Timestamp("2026-05-01T10:00Z")


# --- D3: ids stored as floats -------------------------------------------------------------------


def _online_retail(member_ids: list[float]) -> pd.DataFrame:
    """Online Retail's events: ``Customer ID`` is float64 because some rows have none."""
    n = len(member_ids)
    return pd.DataFrame(
        {
            "member_id": np.array(member_ids, dtype=np.float64),
            "item_id": np.array([101.0] * n),  # a float item id column too
            "event_type": "view",
            "ts": "2026-05-01T10:00:00Z",
            "channel": "app",
            "quantity": np.array([1.0] * n),
            "amount": np.nan,
        }
    )


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_whole_float_ids_are_the_integers_in_every_table(tmp_path: Path, fmt: str) -> None:
    members = pd.DataFrame({"member_id": np.array([12347, 12348], dtype=np.int64)})
    catalog = _catalog([101, 102])
    events = _online_retail([12347.0, np.nan, 12348.0])
    result = validate_dir(
        _write(tmp_path, fmt, events, catalog, members), DATA, now=NOW, mapping=_mapping(tmp_path, "")
    )
    assert result.tables["events"].reason_counts == {Reason.MISSING_MEMBER_ID: 1}
    assert list(result.events["member_id"].astype(str)) == ["12347", "12348"]
    assert list(result.events["item_id"].astype(str)) == ["101", "101"]
    # the other way round: float ids in the members file and the catalog, integers in the events
    members = pd.DataFrame({"member_id": [12347.0, 12348.0, np.nan]})
    catalog = _catalog([101.0, 102.0])
    events = _events(channel=["app", "app"])
    result = validate_dir(
        _write(tmp_path / "rev", fmt, events, catalog, members), DATA, now=NOW, mapping=_mapping(tmp_path, "")
    )
    assert result.tables["members"].reason_counts == {Reason.MISSING_MEMBER_ID: 1}
    assert result.tables["events"].reason_counts == {}
    assert list(result.members["member_id"]) == ["12347", "12348"]
    assert list(result.catalog["item_id"]) == ["101", "102"]


def test_featured_ids_written_as_floats_are_the_integers(tmp_path: Path) -> None:
    catalog = pd.DataFrame(
        {
            "item_id": ["101", "102", "C1"],
            "kind": ["product", "product", "content"],
            "title": "Tea",
            "price": 0.0,
            "published_at": "2026-01-01T00:00:00Z",
            "featured_item_ids": ["", "", "101.0|102.0"],
        }
    )
    folder = _write(tmp_path, "csv", _events(channel=["app", "app"]), catalog)
    result = validate_dir(folder, DATA, now=NOW, mapping=_mapping(tmp_path, ""))
    assert result.tables["catalog"].reason_counts == {}
    assert result.catalog.set_index("item_id").loc["C1", "featured_item_ids"] == ("101", "102")
    # a Parquet list<double> the same
    catalog["featured_item_ids"] = [[], [], [101.0, 102.0]]
    folder = _write(tmp_path / "pq", "parquet", _events(channel=["app", "app"]), catalog)
    result = validate_dir(folder, DATA, now=NOW, mapping=_mapping(tmp_path, ""))
    assert result.catalog.set_index("item_id").loc["C1", "featured_item_ids"] == ("101", "102")


def test_a_float_id_that_is_no_exact_integer_is_quarantined_as_inexact(tmp_path: Path) -> None:
    members = pd.DataFrame({"member_id": np.array([12347, 12348], dtype=np.int64)})
    # 2**53 + 1 is stored as 2**53: the id the source holds is lost, so it is never read as one
    events = _online_retail([12347.0, 12347.5, np.inf, 2.0**53 + 2, 12348.0])
    mapping = _mapping(tmp_path, "")
    result = validate_dir(
        _write(tmp_path, "parquet", events, members=members), DATA, now=NOW, mapping=mapping
    )
    q = result.tables["events"].quarantine
    assert list(q["reason"]) == [Reason.INEXACT_ID] * 3
    assert list(q["detail"]) == ["member_id='12347.5'", "member_id='inf'", "member_id='9007199254740994.0'"]
    assert list(q["member_id"]) == ["12347.5", "inf", "9007199254740994.0"]  # values kept as read
    assert "whole number" in result.summary()["tables"]["events"]["problems"]["inexact_id"]["fix"]
    assert list(result.events["member_id"].astype(str)) == ["12347", "12348"]
    # in a members file or catalog too
    members = pd.DataFrame({"member_id": [12347.0, 12348.25]})
    result = validate_dir(
        _write(tmp_path / "m", "parquet", _events(channel=["app", "app"]), _catalog([101.0, 102.5]), members),
        DATA,
        now=NOW,
        mapping=mapping,
    )
    assert result.tables["members"].reason_counts == {Reason.INEXACT_ID: 1}
    assert result.tables["catalog"].reason_counts == {Reason.INEXACT_ID: 1}
    # a default for the id column's empty cells keeps the check (the other cells keep their value)
    mapping = _mapping(tmp_path, '[events.defaults]\nmember_id = "12348"\n')
    events = _online_retail([12347.0, np.nan, 12347.5])
    members = pd.DataFrame({"member_id": np.array([12347, 12348], dtype=np.int64)})
    result = validate_dir(
        _write(tmp_path / "d", "parquet", events, members=members), DATA, now=NOW, mapping=mapping
    )
    assert result.tables["events"].reason_counts == {Reason.INEXACT_ID: 1}
    assert list(result.events["member_id"].astype(str)) == ["12347", "12348"]


def test_text_ids_keep_their_fraction_and_huge_ones_are_not_rounded(tmp_path: Path) -> None:
    """In text only a zero fraction is dropped: "1.5" is an id as written (a CSV cannot say it was
    a float), and "9007199254740993.0" is never read as a neighbouring integer."""
    catalog = _catalog(["1.5", "9007199254740993", "103.00"])
    events = pd.DataFrame(
        {
            "member_id": ["M1"] * 3,
            "item_id": ["1.5", "9007199254740993.0", "103"],
            "event_type": "view",
            "ts": "2026-05-01T10:00:00Z",
            "channel": "app",
            "quantity": "",
            "amount": "",
        }
    )
    result = validate_dir(
        _write(tmp_path, "csv", events, catalog), DATA, now=NOW, mapping=_mapping(tmp_path, "")
    )
    assert list(result.catalog["item_id"]) == ["1.5", "9007199254740993", "103"]
    q = result.tables["events"].quarantine
    assert list(q["reason"]) == [Reason.UNKNOWN_ITEM] and list(q["item_id"]) == ["9007199254740993.0"]
