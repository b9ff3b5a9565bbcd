"""The data contract read by Spark (training/spark_ingest.py) is the pandas one (pipelines/validate.py).

The same deliberately bad events files go through both readers: each must quarantine the same
number of rows for every reason, keep the same clean events (same Prepared fingerprint: same
rows, ids, times, channels and amounts in the same order), write the same quarantine file when
the share gate stops, and stop with the same named error on an unusable file. One Spark session
serves the module.
"""

from __future__ import annotations

import csv
import unicodedata
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from spark_support import HAVE_SPARK, NO_SPARK, with_spark

from recsvc.errors import DataContractError
from recsvc.security.privacy import apply_erasures
from recsvc.settings import load_settings
from training import prepare

# A JVM start plus a dozen small Spark jobs per reader: minutes when the 2 cores are shared.
pytestmark = pytest.mark.timeout(900)
COLUMNS = ("member_id", "item_id", "event_type", "ts", "channel", "quantity", "amount")


def _bad_rows(member: str, other: str, item: str, content: str) -> list[list[str]]:
    """One or more rows per reason of the events contract, plus clean rows the checks must keep."""
    ok = [member, item, "purchase", "2026-09-01T10:00:00Z", "app", "1", "12.50"]

    def row(**change: str) -> list[str]:
        values = dict(zip(COLUMNS, ok, strict=True)) | change
        return [values[c] for c in COLUMNS]

    return [
        row(),  # clean
        row(),  # its exact repeat: duplicate_event
        row(ts="2026-09-01 10:00:00"),  # a space instead of T, no offset (UTC): a duplicate too
        row(ts="2026-09-01T18:00:00+08:00"),  # the same instant again: a duplicate
        row(amount=" 7 ", quantity=""),  # clean: trimmed number, empty quantity = 1
        row(member_id=f"  {other}\t", event_type="view", amount=""),  # clean: ids are trimmed
        row(item_id=content, event_type="view", amount="0"),  # clean
        row(member_id="M\ufffd01"),  # invalid_utf8 (and an unknown member besides)
        row(member_id=""),  # missing_member_id
        row(item_id="   "),  # missing_item_id
        row(member_id="M" * 300),  # id_too_long
        row(item_id="P 1"),  # bad_id_chars
        row(item_id="P{1}"),  # bad_id_chars
        row(event_type="like"),  # unknown_event_type
        row(event_type=""),  # unknown_event_type
        row(channel="fax"),  # unknown_channel
        row(channel=" ", event_type="click", amount=""),  # clean: an empty channel is "not said"
        row(ts="yesterday"),  # bad_timestamp
        row(ts="2026-13-45T10:00:00Z"),  # bad_timestamp
        row(ts="20260902"),  # bad_timestamp: ISO's basic form, which pandas alone would read
        row(ts="2026/09/02 10:00"),  # bad_timestamp: not ISO, which pandas alone would read
        row(ts="+2026-09-02"),  # bad_timestamp: which Spark alone would read
        row(ts="2026-09-02T10:00:00Asia/Shanghai"),  # bad_timestamp: a zone name, Spark alone
        row(ts="2026-09-02 11:00:00 UTC", amount="3"),  # clean: a database export's UTC suffix
        row(ts=""),  # bad_timestamp
        row(ts="2099-01-01T00:00:00Z"),  # future_timestamp
        row(ts="1970-01-01T00:00:00Z"),  # timestamp_too_old
        row(quantity="2.5"),  # bad_quantity
        row(quantity="0"),  # bad_quantity
        row(quantity="many"),  # bad_quantity
        row(quantity="5d"),  # bad_quantity: Java would read 5.0
        row(amount="12,50"),  # bad_amount
        row(amount="inf"),  # bad_amount
        row(amount="nan"),  # bad_amount
        row(amount="0x1p3"),  # bad_amount: Java would read 8.0
        row(amount="-3"),  # negative_amount
        row(amount="1e12"),  # amount_out_of_range
        row(amount=""),  # missing_amount (a purchase)
        row(member_id="M999999"),  # unknown_member
        row(item_id="P99999"),  # unknown_item
        row(event_type="like", amount="-1", item_id="P99999"),  # several: the first is the reason
        [member, item, "view"],  # a short row: the missing cells are empty (bad_timestamp)
    ]


def _ids(data: Path) -> tuple[str, str, str, str]:
    members = pd.read_csv(data / "members.csv", dtype=str)["member_id"]
    catalog = pd.read_csv(data / "catalog.csv", dtype=str)
    products = catalog.loc[catalog["kind"] == "product", "item_id"]
    content = catalog.loc[catalog["kind"] == "content", "item_id"]
    return members.iloc[0], members.iloc[1], products.iloc[0], content.iloc[0]


def _write_events(data: Path, rows: list[list[str]], encoding: str = "utf-8") -> None:
    with (data / "events.csv").open("a", newline="", encoding=encoding) as fh:
        csv.writer(fh, quoting=csv.QUOTE_MINIMAL).writerows(rows)


@pytest.fixture(scope="module")
def spark() -> Any:
    if not HAVE_SPARK:
        pytest.skip(NO_SPARK)
    from training.spark_als import SparkAls

    with SparkAls(load_settings(overrides={"training": {"engine": "spark"}}).training) as owner:
        yield owner.session()


def _folder(tmp_path: Path, *, members_file: bool = True) -> Path:
    from pipelines.generate import generate
    from pipelines.generate.params import GeneratorParams

    data = tmp_path / "data"
    generate(GeneratorParams(members=40, seed=1), data, fmt="csv")
    _write_events(data, _bad_rows(*_ids(data)))
    if not members_file:
        (data / "members.csv").unlink()
    return data


def _both(spark: Any, data: Path, erased: frozenset[str] = frozenset(), **options: Any) -> tuple[Any, Any]:
    from training import spark_ingest

    settings = load_settings().data
    dataset = prepare.load(data, settings, allow_quarantine=True, **options)
    pandas_prepared = prepare.prepare(apply_erasures(dataset, erased))
    ingested = spark_ingest.load(spark, data, settings, erased, allow_quarantine=True, **options)
    ingested.events.unpersist()
    return pandas_prepared, ingested.prepared


def _same(a: prepare.Prepared, b: prepare.Prepared) -> None:
    reasons = {k: v for k, v in a.counts.items() if k.startswith("quarantined.")}
    assert len(reasons) >= 15  # the files exercise most of the contract
    assert a.counts == b.counts
    assert a.fingerprint == b.fingerprint and len(a.events) == len(b.events)


@with_spark
def test_spark_quarantines_what_pandas_quarantines(spark: Any, tmp_path: Path) -> None:
    data = _folder(tmp_path)
    a, b = _both(spark, data)
    _same(a, b)
    assert a.counts["quarantined.duplicate_event"] == 3
    assert a.counts["quarantined.bad_timestamp"] == 8  # the short row too: its empty channel is kept


@with_spark
def test_gb18030_without_members_file_and_with_erasures_both_agree(spark: Any, tmp_path: Path) -> None:
    data = _folder(tmp_path)
    member, other, _, _ = _ids(data)
    (data / "members.csv").unlink()
    text = (data / "events.csv").read_text(encoding="utf-8")
    (data / "events.csv").write_text(text, encoding="gb18030")
    _write_events(data, [[member, "母婴-1", "view", "2026-09-01T10:00:00Z", "app", "1", "0"]], "gb18030")
    erased = frozenset([other])  # not the member of the bad rows: their quarantine would go too
    a, b = _both(spark, data, erased, encoding="gb18030")
    _same(a, b)
    assert a.members.row(other) is None and b.members.row(other) is None


@with_spark
def test_decomposed_ids_in_events_are_the_same_items_and_members_on_both_engines(
    spark: Any, tmp_path: Path
) -> None:
    """Events naming a product and a member in decomposed Unicode (NFD), while the catalog and
    the members file have them composed (NFC): both readers take them as the same ids."""
    data = _folder(tmp_path)
    catalog = pd.read_csv(data / "catalog.csv", dtype=str, keep_default_na=False)
    product = catalog[catalog["kind"] == "product"].iloc[[0]].assign(item_id="Caf\u00e9-1")
    pd.concat([catalog, product]).to_csv(data / "catalog.csv", index=False)
    members = pd.read_csv(data / "members.csv", dtype=str, keep_default_na=False)
    pd.concat([members, members.iloc[[0]].assign(member_id="Zo\u00eb-1")]).to_csv(
        data / "members.csv", index=False
    )
    nfd_item, nfd_member = (
        unicodedata.normalize("NFD", "Caf\u00e9-1"),
        unicodedata.normalize("NFD", "Zo\u00eb-1"),
    )
    assert nfd_item != "Caf\u00e9-1"
    _write_events(data, [[nfd_member, nfd_item, "purchase", "2026-09-02T10:00:00Z", "app", "1", "9.90"]])
    a, b = _both(spark, data, encoding="utf-8")  # a short é alone reads as GB18030 too
    _same(a, b)
    for prepared in (a, b):
        item, member = prepared.items.row("Caf\u00e9-1"), prepared.members.row("Zo\u00eb-1")
        assert item is not None and member is not None
        assert ((prepared.events.member == member) & (prepared.events.item == item)).any()


@with_spark
def test_too_much_quarantined_writes_the_same_files_and_stops_alike(spark: Any, tmp_path: Path) -> None:
    from training import spark_ingest

    data = _folder(tmp_path)
    settings = load_settings(overrides={"data": {"max_quarantined_share": 0.001}}).data
    written = {}
    for engine in ("pandas", "spark"):
        with pytest.raises(DataContractError) as err:
            if engine == "pandas":
                prepare.load(data, settings)
            else:
                spark_ingest.load(spark, data, settings, frozenset())
        assert err.value.reason == "QUARANTINE_SHARE"
        written[engine] = pd.read_csv(data / "quarantine" / "events.csv", dtype=str, keep_default_na=False)
        (data / "quarantine" / "events.csv").unlink()
    a, b = written["pandas"], written["spark"]
    assert list(a.columns) == list(b.columns)
    pd.testing.assert_frame_equal(a[["source_row", "reason"]], b[["source_row", "reason"]])
    pd.testing.assert_frame_equal(a[list(COLUMNS)], b[list(COLUMNS)])


@with_spark
def test_below_the_limit_both_write_the_same_quarantine_files_and_train_on(
    spark: Any, tmp_path: Path
) -> None:
    """A run that goes on with the clean rows leaves the quarantined ones, with their reasons, in
    ``<data>/quarantine/`` on either engine, the same files."""
    from training import spark_ingest

    data = _folder(tmp_path)
    settings = load_settings(overrides={"data": {"max_quarantined_share": 0.99}}).data
    written = {}
    for engine in ("pandas", "spark"):
        if engine == "pandas":
            prepare.load(data, settings)
        else:
            spark_ingest.load(spark, data, settings, frozenset()).events.unpersist()
        written[engine] = pd.read_csv(data / "quarantine" / "events.csv", dtype=str, keep_default_na=False)
        assert (data / "quarantine" / "summary.json").is_file()
        (data / "quarantine" / "events.csv").unlink()
    a, b = written["pandas"], written["spark"]
    assert len(a) >= 15 and (a["reason"] != "").all()
    pd.testing.assert_frame_equal(a[["source_row", "reason"]], b[["source_row", "reason"]])
    pd.testing.assert_frame_equal(a[list(COLUMNS)], b[list(COLUMNS)])


@with_spark
@pytest.mark.parametrize(
    "damage",
    ["long_row", "wrong_columns", "not_text"],
)
def test_unusable_events_file_is_the_same_named_error(spark: Any, tmp_path: Path, damage: str) -> None:
    from training import spark_ingest

    data = _folder(tmp_path)
    member, _, item, _ = _ids(data)
    if damage == "long_row":
        _write_events(data, [[member, item, "view", "2026-09-01T10:00:00Z", "app", "1", "0", "extra"]])
    elif damage == "wrong_columns":
        (data / "events.csv").write_text("member,when\nM1,yesterday\n")
    else:
        (data / "events.csv").write_bytes(b"member_id,item_id\n\xff\xfe\x00\x81\x00\x00\x00\n" * 20)
    settings = load_settings().data
    errors = []
    for load in (
        lambda: prepare.prepare(prepare.load(data, settings, allow_quarantine=True)),
        lambda: spark_ingest.load(spark, data, settings, frozenset(), allow_quarantine=True),
    ):
        with pytest.raises(DataContractError) as err:
            load()
        errors.append(err.value)
    assert [e.reason for e in errors] == ["DATA_CONTRACT", "DATA_CONTRACT"]
    assert all("events" in str(e) for e in errors), errors


def _dates_only(data: Path, orders: bool) -> tuple[int, int]:
    """The folder's events at midnight UTC (a dates-only export, as H&M's), each of the first 30
    rows twice more: once in the same order and once in another when ``orders`` (an order_id
    column), else twice as such. Returns (rows in the file, copies in the same order)."""
    events = pd.read_csv(data / "events.csv", dtype=str, keep_default_na=False)
    events = events[events["ts"].str.match(r"^\d{4}-\d{2}-\d{2}")].reset_index(drop=True)
    events["ts"] = events["ts"].str.slice(0, 10) + "T00:00:00Z"
    if orders:
        events["order_id"] = [f"{i}.0" for i in range(len(events))]  # read as the integer
    head = events.iloc[:30]
    other = head.assign(order_id=[f"X{i}" for i in range(30)]) if orders else head
    pd.concat([events, head, other]).to_csv(data / "events.csv", index=False)
    return len(events) + 60, 30


@with_spark
@pytest.mark.parametrize("orders", [False, True], ids=["dates_only", "dates_only_with_order_id"])
def test_dates_only_repeats_and_order_ids_are_read_alike(spark: Any, tmp_path: Path, orders: bool) -> None:
    """A dates-only file keeps identical rows as repeat purchases on both engines; with an
    order_id, a copy in the same order is a duplicate and one in another order is kept."""
    from training import spark_ingest

    data = tmp_path / "data"
    from pipelines.generate import generate
    from pipelines.generate.params import GeneratorParams

    generate(GeneratorParams(members=40, seed=1), data, fmt="csv")
    _, same_order = _dates_only(data, orders)
    settings = load_settings(overrides={"data": {"max_quarantined_share": 0.99}}).data
    a = prepare.prepare(prepare.load(data, settings))
    quarantine = data / "quarantine" / "events.csv"
    written = pd.read_csv(quarantine, dtype=str, keep_default_na=False) if orders else None
    quarantine.unlink(missing_ok=True)
    ingested = spark_ingest.load(spark, data, settings, frozenset())
    ingested.events.unpersist()
    b = ingested.prepared
    assert a.counts == b.counts
    assert a.fingerprint == b.fingerprint and len(a.events) == len(b.events)
    duplicates = a.counts.get("quarantined.duplicate_event", 0)
    assert duplicates == (same_order if orders else 0)
    assert quarantine.is_file() == orders
    if written is not None:
        spark_written = pd.read_csv(quarantine, dtype=str, keep_default_na=False)
        cols = ["source_row", "reason", "detail", *COLUMNS]
        pd.testing.assert_frame_equal(written[cols], spark_written[cols])
