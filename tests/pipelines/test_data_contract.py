"""The data contract: every bad-row kind is quarantined with its reason, wrong columns and empty
files fail with a named error, CSV and Parquet read alike, and no row is ever lost."""

from __future__ import annotations

import csv
import json
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from pipelines.contract import CATALOG, CONSENT_COLUMNS, EVENTS, MEMBERS, Reason
from pipelines.ingest import load_dataset
from pipelines.rows import timestamps
from pipelines.validate import validate_dir
from recsvc.cli import app
from recsvc.errors import DataContractError
from recsvc.settings import DataSettings

NOW = datetime(2026, 6, 1, tzinfo=UTC)
DATA = DataSettings()


def _catalog() -> list[dict[str, str]]:
    rows = [
        ("P1", "product", "Oolong Tea 250g", "tea", "Leaf", "59.9", "true", "2025-01-01T00:00:00Z", ""),
        ("P2", "product", "Tea Set", "kitchen", "Stone", "199", "false", "", ""),
        ("C1", "content", "Guide: brewing oolong", "tea", "", "0", "", "2026-01-01T08:00:00+08:00", "P1|P2"),
    ]
    return [dict(zip(CATALOG.columns, r, strict=True)) for r in rows]


def _members() -> list[dict[str, str]]:
    consent = dict.fromkeys(CONSENT_COLUMNS, "")
    m1 = {"member_id": "M1", "registered_at": "2024-05-01T00:00:00Z", "tier": "gold"}
    m2 = {"member_id": "M2", "registered_at": "2025-05-01 12:00:00", "tier": "basic"}
    return [
        {**m1, "timezone": "Asia/Shanghai", **consent, "consent_wecom": "true", "consent_sms": "false"},
        {**m2, "timezone": "Europe/London", **consent},
    ]


def _events() -> list[dict[str, str]]:
    return [
        {"member_id": "M1", "item_id": "P1", "event_type": "view", "ts": "2026-05-01T10:00:00Z",
         "channel": "mini_program", "quantity": "", "amount": ""},
        {"member_id": "M1", "item_id": "P1", "event_type": "add_to_cart", "ts": "2026-05-01T10:01:00Z",
         "channel": "mini_program", "quantity": "1", "amount": ""},
        {"member_id": "M1", "item_id": "P1", "event_type": "purchase", "ts": "2026-05-01T10:05:00Z",
         "channel": "mini_program", "quantity": "2", "amount": "119.8"},
        {"member_id": "M2", "item_id": "C1", "event_type": "content_view", "ts": "2026-05-02T20:00:00+01:00",
         "channel": "official_account", "quantity": "1", "amount": "0"},
    ]  # fmt: skip


def _write(folder: Path, catalog=None, members=None, events=None, fmt: str = "csv") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    tables = {
        "catalog": (CATALOG, catalog if catalog is not None else _catalog()),
        "members": (MEMBERS, members if members is not None else _members()),
        "events": (EVENTS, events if events is not None else _events()),
    }
    for name, (spec, rows) in tables.items():
        df = pd.DataFrame(rows, columns=list(spec.columns), dtype=str)
        if fmt == "csv":
            # Quote every cell: pandas leaves a lone "\r" unquoted, which CSV readers treat as a line end.
            df.to_csv(folder / f"{name}.csv", index=False, quoting=csv.QUOTE_ALL)
        else:
            df.to_parquet(folder / f"{name}.parquet", index=False)
    return folder


def _source_row(q: pd.DataFrame) -> int:
    """The first quarantined row's source_row (pandas types ``.loc[row, col]`` as any scalar)."""
    cell = q.loc[0, "source_row"]
    assert isinstance(cell, int | np.integer), cell
    return int(cell)


def _only_reason(tmp_path: Path, table: str, expected: str, **tables) -> pd.DataFrame:
    result = validate_dir(_write(tmp_path / "d", **tables), DATA, now=NOW)
    q = result.tables[table].quarantine
    assert list(q["reason"]) == [expected], q[["reason", "detail"]].to_string()
    others = [t for name, t in result.tables.items() if name != table]
    assert all(t.quarantine.empty for t in others)
    return q


def test_clean_folder_types_and_utc(tmp_path: Path) -> None:
    result = validate_dir(_write(tmp_path / "d"), DATA, now=NOW)
    assert result.rows_quarantined == 0
    ev = result.events
    assert str(ev["ts"].dtype) == "datetime64[us, UTC]"
    # An offset is converted to UTC; naive times are taken as UTC.
    assert ev.loc[3, "ts"] == pd.Timestamp("2026-05-02T19:00:00Z")
    assert result.members.loc[1, "registered_at"] == pd.Timestamp("2025-05-01T12:00:00Z")
    assert list(ev["quantity"]) == [1, 1, 2, 1]  # empty quantity means 1
    assert list(ev["amount"]) == [0.0, 0.0, 119.8, 0.0]
    cat = result.catalog.set_index("item_id")
    assert cat.loc["C1", "featured_item_ids"] == ("P1", "P2")
    assert bool(cat.loc["C1", "in_stock"]) and not bool(cat.loc["P2", "in_stock"])
    assert cat.loc["C1", "published_at"] == pd.Timestamp("2026-01-01T00:00:00Z")
    m1 = result.members.set_index("member_id").loc["M1"]
    assert m1["consent_wecom"] is True or bool(m1["consent_wecom"])
    assert m1["consent_sms"] is False or not bool(m1["consent_sms"])
    assert pd.isna(m1["consent_app_push"])  # never answered


def _event(**changes: str) -> list[dict[str, str]]:
    rows = _events()
    rows.append({**rows[0], "ts": "2026-05-03T09:00:00Z", **changes})
    return rows


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"event_type": "buy"}, Reason.UNKNOWN_EVENT_TYPE),
        ({"event_type": "View"}, Reason.UNKNOWN_EVENT_TYPE),
        ({"channel": "tiktok"}, Reason.UNKNOWN_CHANNEL),
        ({"member_id": ""}, Reason.MISSING_MEMBER_ID),
        ({"item_id": "  "}, Reason.MISSING_ITEM_ID),
        ({"member_id": "M" * 65}, Reason.ID_TOO_LONG),
        ({"item_id": "P 1"}, Reason.BAD_ID_CHARS),
        ({"member_id": "会员 1"}, Reason.BAD_ID_CHARS),  # letters of any script, but no spaces
        ({"ts": "yesterday"}, Reason.BAD_TIMESTAMP),
        ({"ts": ""}, Reason.BAD_TIMESTAMP),
        ({"ts": "2026-02-30T00:00:00Z"}, Reason.BAD_TIMESTAMP),
        ({"ts": "2026-06-01T00:10:00Z"}, Reason.FUTURE_TIMESTAMP),  # 10 min after NOW > 5 min tolerance
        ({"amount": "-5"}, Reason.NEGATIVE_AMOUNT),
        ({"amount": "12,5"}, Reason.BAD_AMOUNT),
        ({"amount": "inf"}, Reason.BAD_AMOUNT),
        ({"event_type": "purchase", "amount": "1e308"}, Reason.AMOUNT_OUT_OF_RANGE),
        ({"amount": "100000000.5"}, Reason.AMOUNT_OUT_OF_RANGE),  # just above recsvc.bounds.MAX_AMOUNT
        ({"ts": "1989-12-31T23:59:59Z"}, Reason.TIMESTAMP_TOO_OLD),
        ({"ts": "1970-01-01T00:00:00Z"}, Reason.TIMESTAMP_TOO_OLD),  # epoch 0: a placeholder
        ({"ts": "0001-01-01T00:00:00Z"}, Reason.TIMESTAMP_TOO_OLD),
        ({"event_type": "purchase", "amount": ""}, Reason.MISSING_AMOUNT),
        ({"quantity": "0"}, Reason.BAD_QUANTITY),
        ({"quantity": "1.5"}, Reason.BAD_QUANTITY),
        ({"quantity": "many"}, Reason.BAD_QUANTITY),
        ({"item_id": "P404"}, Reason.UNKNOWN_ITEM),
        ({"member_id": "M404"}, Reason.UNKNOWN_MEMBER),
    ],
)
def test_each_bad_event_kind_is_quarantined_with_its_reason(
    tmp_path: Path, changes: dict[str, str], reason: str
) -> None:
    q = _only_reason(tmp_path, "events", reason, events=_event(**changes))
    assert _source_row(q) == len(_events())
    # The quarantined row keeps what was sent, so it can be fixed and replayed.
    for col, value in changes.items():
        assert q.loc[0, col] == value


def test_future_timestamp_within_tolerance_is_accepted(tmp_path: Path) -> None:
    result = validate_dir(_write(tmp_path / "d", events=_event(ts="2026-06-01T00:04:00Z")), DATA, now=NOW)
    assert result.rows_quarantined == 0


def test_old_history_and_the_largest_amount_are_accepted(tmp_path: Path) -> None:
    # Years-old history (a brand migrating its records) is valid; only pre-1990 times are absurd.
    rows = [
        *_event(ts="1990-01-01T00:00:00Z"),
        {**_events()[2], "ts": "2001-03-04T05:06:07Z", "amount": "100000000"},  # = MAX_AMOUNT
    ]
    result = validate_dir(_write(tmp_path / "d", events=rows), DATA, now=NOW)
    assert result.rows_quarantined == 0
    assert result.events["amount"].max() == 1e8


def test_three_huge_purchases_never_reach_training(tmp_path: Path) -> None:
    huge = [{**_events()[2], "ts": f"2026-05-0{day}T10:05:00Z", "amount": "1e308"} for day in (3, 4, 5)]
    result = validate_dir(_write(tmp_path / "d", events=_events() + huge), DATA, now=NOW)
    assert result.tables["events"].reason_counts == {Reason.AMOUNT_OUT_OF_RANGE: 3}
    assert np.isfinite(result.events["amount"]).all()


def test_first_failing_check_is_the_one_reason(tmp_path: Path) -> None:
    # Unknown type and negative amount: the type check comes first (docs/data.md order).
    q = _only_reason(
        tmp_path, "events", Reason.UNKNOWN_EVENT_TYPE, events=_event(event_type="buy", amount="-1")
    )
    assert q.loc[0, "detail"] == "event_type='buy'"


def test_duplicate_event_keeps_the_first_copy(tmp_path: Path) -> None:
    rows = _events()
    rows.insert(1, dict(rows[0]))
    rows.append(dict(rows[0]))
    result = validate_dir(_write(tmp_path / "d", events=rows), DATA, now=NOW)
    q = result.tables["events"].quarantine
    assert list(q["reason"]) == [Reason.DUPLICATE_EVENT] * 2
    assert list(q["source_row"]) == [1, len(rows) - 1]
    assert len(result.events) == len(_events())


def test_event_on_a_quarantined_item_is_quarantined_too(tmp_path: Path) -> None:
    catalog = _catalog()
    catalog[0]["price"] = "-1"  # P1 becomes a bad catalog row
    result = validate_dir(_write(tmp_path / "d", catalog=catalog), DATA, now=NOW)
    assert result.tables["catalog"].reason_counts == {
        Reason.NEGATIVE_PRICE: 1,
        Reason.UNKNOWN_FEATURED_ITEM: 1,
    }
    assert result.tables["events"].reason_counts == {Reason.UNKNOWN_ITEM: 4}


def _catalog_with(index: int, **changes: str) -> list[dict[str, str]]:
    rows = _catalog()
    if index == 1:  # the content row must not feature the product under test
        rows[2]["featured_item_ids"] = "P1"
    rows[index] = {**rows[index], **changes}
    return rows


@pytest.mark.parametrize(
    ("index", "changes", "reason"),
    [
        (1, {"item_id": "P1"}, Reason.DUPLICATE_ITEM),
        (1, {"kind": "service"}, Reason.UNKNOWN_KIND),
        (1, {"title": ""}, Reason.MISSING_TITLE),
        (1, {"title": "x" * 201}, Reason.TITLE_TOO_LONG),
        (1, {"category": ""}, Reason.MISSING_CATEGORY),
        (1, {"brand": ""}, Reason.MISSING_BRAND),
        (1, {"brand": "b" * 65}, Reason.LABEL_TOO_LONG),
        (1, {"price": "free"}, Reason.BAD_PRICE),
        (1, {"price": ""}, Reason.BAD_PRICE),
        (1, {"price": "-3"}, Reason.NEGATIVE_PRICE),
        (1, {"price": "1e308"}, Reason.PRICE_OUT_OF_RANGE),
        (1, {"in_stock": "maybe"}, Reason.BAD_IN_STOCK),
        (1, {"in_stock": ""}, Reason.BAD_IN_STOCK),
        (1, {"published_at": "soon"}, Reason.BAD_TIMESTAMP),
        (1, {"published_at": "1965-03-01T00:00:00Z"}, Reason.BAD_TIMESTAMP),  # the service refuses it
        (1, {"featured_item_ids": "P1"}, Reason.FEATURED_ON_PRODUCT),
        (2, {"published_at": ""}, Reason.MISSING_PUBLISHED_AT),
        (2, {"featured_item_ids": "P1|P 2"}, Reason.BAD_FEATURED_ID),
        (2, {"featured_item_ids": "P1|P9"}, Reason.UNKNOWN_FEATURED_ITEM),
        (2, {"featured_item_ids": "P1|C1"}, Reason.UNKNOWN_FEATURED_ITEM),  # content features products only
    ],
)
def test_each_bad_catalog_kind_is_quarantined(
    tmp_path: Path, index: int, changes: dict[str, str], reason: str
) -> None:
    # No events, so a quarantined item does not also quarantine events.
    q = _only_reason(tmp_path, "catalog", reason, catalog=_catalog_with(index, **changes), events=[])
    assert _source_row(q) == index


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"member_id": "M1"}, Reason.DUPLICATE_MEMBER),
        ({"registered_at": "last year"}, Reason.BAD_TIMESTAMP),
        ({"registered_at": "2027-01-01T00:00:00Z"}, Reason.FUTURE_TIMESTAMP),
        ({"timezone": "China/Beijing"}, Reason.UNKNOWN_TIMEZONE),
        ({"timezone": "+08:00"}, Reason.UNKNOWN_TIMEZONE),
        ({"timezone": "localtime"}, Reason.UNKNOWN_TIMEZONE),  # the reading machine's zone, not a place
        ({"timezone": "Factory"}, Reason.UNKNOWN_TIMEZONE),
        ({"consent_wecom": "sure"}, Reason.BAD_CONSENT),
        ({"member_id": "M\x00"}, Reason.BAD_ID_CHARS),
    ],
)
def test_each_bad_member_kind_is_quarantined(tmp_path: Path, changes: dict[str, str], reason: str) -> None:
    members = _members()
    members[1] = {**members[1], **changes}
    _only_reason(tmp_path, "members", reason, members=members, events=[])


def test_wrong_columns_fail_naming_missing_and_unexpected(tmp_path: Path) -> None:
    folder = _write(tmp_path / "d")
    df = pd.read_csv(folder / "events.csv", dtype=str).rename(columns={"amount": "amt", "channel": "source"})
    df.to_csv(folder / "events.csv", index=False)
    with pytest.raises(DataContractError) as err:
        validate_dir(folder, DATA, now=NOW)
    message = str(err.value)
    assert "missing columns: channel, amount" in message
    assert "unexpected columns: 'source', 'amt'" in message
    assert "events.csv" in message


def test_wrong_columns_in_parquet_fail_too(tmp_path: Path) -> None:
    folder = _write(tmp_path / "d", fmt="parquet")
    pd.read_parquet(folder / "members.parquet").drop(columns=["member_id"]).to_parquet(
        folder / "members.parquet"
    )
    with pytest.raises(DataContractError, match="missing columns: member_id"):
        validate_dir(folder, DATA, now=NOW)


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_line_breaks_and_tabs_in_titles_and_labels_become_one_space(tmp_path: Path, fmt: str) -> None:
    # exports of product descriptions often carry them: the row is good, the text one line
    rows = _catalog_with(1, title="Oolong\ttea\r\n 250g\u2028gift box", category="tea\nleaf")
    result = validate_dir(_write(tmp_path / "d", catalog=rows, events=[], fmt=fmt), DATA, now=NOW)
    assert result.rows_quarantined == 0
    row = result.catalog.set_index("item_id").loc["P2"]
    assert row["title"] == "Oolong tea 250g gift box" and row["category"] == "tea leaf"
    # a title of nothing but line breaks is still missing
    rows = _catalog_with(1, title="\r\n\t")
    _only_reason(tmp_path / "blank", "catalog", Reason.MISSING_TITLE, catalog=rows, events=[])


def test_products_only_catalog_may_leave_out_featured_column(tmp_path: Path) -> None:
    folder = _write(tmp_path / "d", events=[])
    cat = pd.read_csv(folder / "catalog.csv", dtype=str, keep_default_na=False)
    cat[cat["kind"] == "product"].drop(columns=["featured_item_ids"]).to_csv(
        folder / "catalog.csv", index=False
    )
    result = validate_dir(folder, DATA, now=NOW)
    assert result.rows_quarantined == 0 and len(result.catalog) == 2


def test_empty_file_fails_with_a_clear_message(tmp_path: Path) -> None:
    folder = _write(tmp_path / "d")
    (folder / "events.csv").write_bytes(b"")
    with pytest.raises(DataContractError, match=r"events\.csv is empty"):
        validate_dir(folder, DATA, now=NOW)


def test_header_only_file_is_a_valid_empty_table(tmp_path: Path) -> None:
    result = validate_dir(_write(tmp_path / "d", events=[]), DATA, now=NOW)
    assert len(result.events) == 0 and result.tables["events"].rows_read == 0


def test_gbk_bytes_that_are_valid_utf8_are_never_loaded_as_clean_text(tmp_path: Path) -> None:
    folder = _write(tmp_path / "d")
    raw = (folder / "events.csv").read_bytes()
    # 母婴 in GBK is C4 B8 D3 A4: valid UTF-8 for "ĸӤ", the mojibake that once loaded as clean.
    raw += "母婴".encode("gbk") + b",P1,view,2026-05-04T00:00:00Z,app,1,0\n"
    (folder / "events.csv").write_bytes(raw)
    with pytest.raises(DataContractError) as err:
        validate_dir(folder, DATA, now=NOW)
    message = str(err.value)
    assert "events.csv" in message and "--encoding gb18030" in message and "母婴" in message
    # Named, the file is read as what it is: the member is an unknown one, not garbage.
    q = validate_dir(folder, DATA, now=NOW, encoding="gb18030").tables["events"].quarantine
    assert list(q["reason"]) == [Reason.UNKNOWN_MEMBER] and q.loc[0, "member_id"] == "母婴"


@pytest.mark.parametrize(
    "title",
    [
        "Café Crème 250 g",
        "Müller Milch, 1 l",
        "Chá-mate São João ±2 °C",
        "Молоко свежее",
        "Γιαούρτι στραγγιστό",
    ],
)
def test_utf8_text_in_two_byte_scripts_reads_without_naming_the_encoding(tmp_path: Path, title: str) -> None:
    # Such a file also decodes as GB18030 ("Café" is "Caf茅"); its UTF-8 reading is words, so it
    # is UTF-8. A lone GBK character read as UTF-8 ("ĸ") still asks (the test above).
    folder = _write(tmp_path / "d", catalog=_catalog_with(0, title=title))
    raw = (folder / "catalog.csv").read_bytes()
    assert raw.decode("gb18030") != raw.decode("utf-8")
    clean = validate_dir(folder, DATA, now=NOW).tables["catalog"].clean
    assert title in set(clean["title"])
    one = "母".encode("gbk")
    (folder / "catalog.csv").write_bytes(raw.replace(title.encode("utf-8"), one))
    with pytest.raises(DataContractError, match="cannot be told apart"):
        validate_dir(folder, DATA, now=NOW)


@pytest.mark.parametrize(
    "codec", ["rot13", "base64", "hex", "uu", "zlib_codec", "punycode", "unicode_escape"]
)
def test_a_codec_that_is_not_a_text_encoding_is_refused_by_name(tmp_path: Path, codec: str) -> None:
    with pytest.raises(DataContractError, match=f"--encoding '{codec}' is not a text encoding"):
        validate_dir(_write(tmp_path / "d"), DATA, now=NOW, encoding=codec)


def test_gbk_file_is_detected_and_a_broken_file_stops_with_its_byte_offset(tmp_path: Path) -> None:
    folder = _write(tmp_path / "d")
    text = (folder / "events.csv").read_text(encoding="utf-8")
    text += '"会员","P1","view","2026-05-04T00:00:00Z","app","1","0"\n'
    (folder / "events.csv").write_bytes(text.encode("gbk"))
    q = validate_dir(folder, DATA, now=NOW).tables["events"].quarantine
    assert list(q["member_id"]) == ["会员"]  # read as GB18030, not quarantined as invalid bytes
    # Neither UTF-8 nor GB18030: one message with the file, the offset and the fix.
    broken = text.encode("gbk") + b"\xff\xff,P1\n"
    (folder / "events.csv").write_bytes(broken)
    with pytest.raises(DataContractError) as err:
        validate_dir(folder, DATA, now=NOW)
    message = str(err.value)
    assert "events.csv" in message and "iconv -f GBK -t UTF-8" in message
    assert f"offset {len(text.encode('gbk'))}" in message
    # UTF-16 with a BOM and UTF-8 with a BOM read as well.
    (folder / "events.csv").write_bytes(text.encode("utf-16"))
    assert list(validate_dir(folder, DATA, now=NOW).tables["events"].quarantine["member_id"]) == ["会员"]
    (folder / "events.csv").write_bytes(text.encode("utf-8-sig"))
    assert list(validate_dir(folder, DATA, now=NOW).tables["events"].quarantine["member_id"]) == ["会员"]


def test_csv_and_parquet_give_the_same_clean_tables(tmp_path: Path) -> None:
    a = validate_dir(_write(tmp_path / "csv"), DATA, now=NOW)
    b = validate_dir(_write(tmp_path / "pq", fmt="parquet"), DATA, now=NOW)
    for name in ("catalog", "members", "events"):
        pd.testing.assert_frame_equal(a.tables[name].clean, b.tables[name].clean)


def test_typed_parquet_columns_are_checked_too(tmp_path: Path) -> None:
    folder = _write(tmp_path / "d", fmt="parquet")
    ev = pd.DataFrame(_events())
    ev["ts"] = pd.to_datetime(ev["ts"], format="ISO8601", utc=True)
    ev["quantity"] = pd.to_numeric(ev["quantity"]).fillna(1).astype("int64")
    ev["amount"] = pd.to_numeric(ev["amount"]).fillna(0.0)
    ev.loc[1, "amount"] = -2.0
    ev.to_parquet(folder / "events.parquet", index=False)
    result = validate_dir(folder, DATA, now=NOW)
    assert result.tables["events"].reason_counts == {Reason.NEGATIVE_AMOUNT: 1}
    assert str(result.events["ts"].dtype) == "datetime64[us, UTC]"


def test_missing_or_ambiguous_table_files_fail(tmp_path: Path) -> None:
    folder = _write(tmp_path / "d")
    pd.read_csv(folder / "events.csv").to_parquet(folder / "events.parquet")
    with pytest.raises(DataContractError, match="more than one events file"):
        validate_dir(folder, DATA, now=NOW)
    (folder / "events.csv").unlink()
    (folder / "events.parquet").unlink()
    with pytest.raises(DataContractError, match="no events table"):
        validate_dir(folder, DATA, now=NOW)
    with pytest.raises(DataContractError, match="data folder not found"):
        validate_dir(tmp_path / "nowhere", DATA, now=NOW)


def test_malformed_csv_line_fails_naming_the_line(tmp_path: Path) -> None:
    folder = _write(tmp_path / "d")
    with (folder / "events.csv").open("a") as fh:
        fh.write("M1,P1,view,2026-05-04T00:00:00Z,app,1,0,extra,fields\n")
    with pytest.raises(DataContractError, match="line 6"):
        validate_dir(folder, DATA, now=NOW)


_cell = st.one_of(
    st.sampled_from(["", "M1", "P1", "C1", "view", "purchase", "app", "live", "-1", "0", "2", "1.5", "nan",
                     "2026-05-01T10:00:00Z", "2030-01-01", "true", "x" * 70, "P1|C1", "会员", " "]),
    st.text(max_size=8),
)  # fmt: skip


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(st.fixed_dictionaries({c: _cell for c in EVENTS.columns}), max_size=12))
def test_no_row_is_ever_dropped_silently(tmp_path: Path, rows: list[dict[str, str]]) -> None:
    folder = _write(tmp_path / "prop", events=_events() + rows)
    # Named, not detected: random text may be ambiguous between UTF-8 and GB18030 (pipelines.encoding).
    table = validate_dir(folder, DATA, now=NOW, encoding="utf-8").tables["events"]
    assert table.rows_read == len(_events()) + len(rows)
    assert len(table.clean) + len(table.quarantine) == table.rows_read
    assert table.quarantine["reason"].notna().all()
    assert set(table.quarantine["source_row"]).isdisjoint(range(len(_events())))


def test_an_event_without_a_channel_is_kept_and_trains_in_the_any_channel_lists(tmp_path: Path) -> None:
    """The API takes events without a channel and logs them so; the next training must not
    quarantine them all as unknown_channel."""
    rows = _event(channel="")
    rows.append({**rows[0], "ts": "2026-05-03T10:00:00Z", "channel": "  ", "event_type": "view"})
    folder = _write(tmp_path / "d", events=rows)
    ds = load_dataset(folder, DATA, now=NOW, quarantine_dir=tmp_path / "q")
    assert len(ds.quarantine) == 0 and ds.counts["events.rows_clean"] == 6
    from training.prepare import prepare

    p = prepare(ds)
    assert (p.events.channel == -1).sum() == 2  # not said: no channel's own lists


def test_load_dataset_gives_training_one_quarantine_and_counts(tmp_path: Path) -> None:
    folder = _write(tmp_path / "d", events=_event(channel="tiktok"))
    ds = load_dataset(folder, DATA, now=NOW, quarantine_dir=tmp_path / "q")
    assert list(ds.quarantine["reason"]) == [Reason.UNKNOWN_CHANNEL]
    assert ds.quarantine.loc[0, "table"] == "events" and ds.quarantine.loc[0, "member_id"] == "M1"
    assert ds.counts["events.rows_read"] == 5 and ds.counts["events.rows_quarantined"] == 1
    granted = ds.consent.set_index(["member_id", "channel"])["granted"]
    assert granted[("M1", "wecom")] and not granted[("M1", "sms")]
    assert len(ds.consent) == 2  # unanswered channels have no row
    assert (tmp_path / "q" / "events.csv").exists()


def test_cli_validate_writes_quarantine_and_summary(tmp_path: Path) -> None:
    folder = _write(tmp_path / "d", events=_event(amount="-1"))
    runner = CliRunner()
    res = runner.invoke(app, ["data", "validate", str(folder)])
    assert res.exit_code == 0, res.output
    summary = json.loads((folder / "quarantine" / "summary.json").read_text())
    assert summary["tables"]["events"]["reasons"] == {Reason.NEGATIVE_AMOUNT: 1}
    q = pd.read_csv(folder / "quarantine" / "events.csv", dtype=str, keep_default_na=False)
    assert list(q["reason"]) == [Reason.NEGATIVE_AMOUNT] and q.loc[0, "amount"] == "-1"
    assert runner.invoke(app, ["data", "validate", str(folder), "--strict"]).exit_code == 1
    res = runner.invoke(app, ["data", "validate", str(folder), "--json", "-q", str(tmp_path / "q2")])
    assert json.loads(res.stdout)["rows_quarantined"] == 1


def test_cli_validate_wrong_columns_exit_2_with_message(tmp_path: Path) -> None:
    folder = _write(tmp_path / "d")
    pd.read_csv(folder / "members.csv", dtype=str).drop(columns=["member_id"]).to_csv(
        folder / "members.csv", index=False
    )
    res = CliRunner().invoke(app, ["data", "validate", str(folder)])
    assert res.exit_code == 2
    assert "missing columns: member_id" in res.output
    assert "Traceback" not in res.output


def test_null_elements_of_a_parquet_featured_list_are_no_ids(tmp_path: Path) -> None:
    from pipelines.rows import featured_lists

    cells = pd.Series([["P1", None, " P2 "], None, np.array(["P3", None], dtype=object), "P1|P2"])
    assert list(featured_lists(cells)) == [("P1", "P2"), (), ("P3",), ("P1", "P2")]


def test_a_timestamps_reason_does_not_depend_on_the_other_rows(tmp_path: Path) -> None:
    # One value with 9 fraction digits makes pandas parse the column in nanoseconds, where years 1
    # and 9999 do not fit; each row is still judged on its own (as the Spark engine does).
    out_of_ns = ["0001-01-01T00:00:00Z", "9999-12-31T00:00:00Z", "1500-06-01T00:00:00.1234567+01:00"]
    for extra in ([], ["2026-05-01T10:00:00.123456789Z"]):
        parsed = timestamps(pd.Series([*out_of_ns, *extra, "2026-02-30T00:00:00Z", ""]))
        assert str(parsed.dtype) == "datetime64[us, UTC]"
        assert list(parsed[:3]) == [
            pd.Timestamp("0001-01-01T00:00:00Z").as_unit("us"),
            pd.Timestamp("9999-12-31T00:00:00Z").as_unit("us"),
            pd.Timestamp("1500-05-31T23:00:00.123456Z").as_unit("us"),
        ]
        assert parsed.iloc[-2:].isna().all()
    assert timestamps(pd.Series(["2026-05-01T10:00:00.123456789Z"]))[0] == pd.Timestamp(
        "2026-05-01T10:00:00.123456Z"
    )
    rows = _events()
    rows[1] = {**rows[1], "ts": "2026-05-01T10:01:00.123456789Z"}
    rows += [{**rows[0], "ts": ts} for ts in ("0001-01-01T00:00:00Z", "9999-12-31T00:00:00Z")]
    q = validate_dir(_write(tmp_path / "d", events=rows), DATA, now=NOW).tables["events"].quarantine
    assert list(q["reason"]) == [Reason.TIMESTAMP_TOO_OLD, Reason.FUTURE_TIMESTAMP]


def _raw_events(folder: Path, header: str, lines: list[str]) -> Path:
    (folder / "events.csv").write_text("\n".join([header, *lines]) + "\n", encoding="utf-8")
    return folder


EVENT_LINE = "M1,P1,view,2026-05-01T10:00:00Z,app,1,0"


@pytest.mark.parametrize("table", ["events", "catalog"])
def test_a_repeated_csv_column_is_named_as_the_header_writes_it(tmp_path: Path, table: str) -> None:
    # pandas reads a second "amount" as "amount.1", a name the file does not hold
    folder = _write(tmp_path / "d")
    path = folder / f"{table}.csv"
    lines = path.read_text(encoding="utf-8").splitlines()
    column = {"events": "amount", "catalog": "brand"}[table]
    path.write_text("".join(f"{line},{column if i == 0 else ''}\n" for i, line in enumerate(lines)))
    data = DataSettings(validate_chunk_rows=1)  # events: the header of a file read in chunks
    with pytest.raises(DataContractError) as err:
        validate_dir(folder, data, now=NOW)
    message = str(err.value)
    assert f"{table}.csv" in message and f"repeated columns: {column}" in message
    assert f"{column}.1" not in message and "unexpected" not in message


@pytest.mark.parametrize("table", ["events", "catalog"])
def test_an_empty_trailing_csv_column_is_ignored(tmp_path: Path, table: str) -> None:
    # Excel often ends every line with a comma: a column without a name or values. pandas calls it
    # "Unnamed: 7", a name the file does not hold.
    folder = _write(tmp_path / "d")
    path = folder / f"{table}.csv"
    path.write_text("".join(f"{line},\n" for line in path.read_text(encoding="utf-8").splitlines()))
    result = validate_dir(folder, DataSettings(validate_chunk_rows=2), now=NOW)
    assert result.rows_quarantined == 0 and len(result.tables[table].clean) == len(pd.read_csv(path))


def test_an_empty_column_name_over_values_is_named_by_position(tmp_path: Path) -> None:
    lines = [EVENT_LINE + ",", EVENT_LINE + ",note"]
    folder = _raw_events(_write(tmp_path / "d"), ",".join(EVENTS.columns) + ",", lines)
    with pytest.raises(DataContractError) as err:
        validate_dir(folder, DataSettings(validate_chunk_rows=1), now=NOW)  # found in a later chunk
    message = str(err.value)
    assert "events.csv has an empty column name at position 8 (after 'amount')" in message
    assert "'note' in data row 2" in message and "Unnamed" not in message


@pytest.mark.parametrize("table", ["events", "catalog"])
@pytest.mark.parametrize("kind", ["struct", "list"])
def test_a_nested_parquet_column_that_cannot_be_read_is_named(tmp_path: Path, table: str, kind: str) -> None:
    # Arrow says "Unsupported cast from struct<a: int64> to large_utf8", naming no column. A file
    # whose pandas metadata declares text over a struct (or list) column gets it.
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = _write(tmp_path / "d", fmt="parquet")
    path = folder / f"{table}.parquet"
    original = pq.read_table(path)
    column = {"events": "channel", "catalog": "brand"}[table]
    value = {"struct": {"a": 1}, "list": [1]}[kind]
    i = original.schema.get_field_index(column)
    nested = original.set_column(i, column, pa.array([value] * original.num_rows))
    pq.write_table(nested.replace_schema_metadata(original.schema.metadata), path)
    with pytest.raises(DataContractError) as err:
        validate_dir(folder, DATA, now=NOW)
    message = str(err.value)
    written = pq.read_schema(path).field(column).type  # a list's item is "element" in Parquet
    assert f"{table}.parquet" in message and f"column '{column}' is of type {written}" in message
