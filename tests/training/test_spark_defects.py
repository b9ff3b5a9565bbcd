"""Spark engine mends: no-decay confidence, start-up errors that survive their clean-up, and
quarantine files (summary counts, time text) that are pandas' own, without codegen noise.

One Spark session serves the module (a JVM start is ~10 s when the 2 cores are shared); the
clean-up test needs pyspark but no JVM. Without Java or pyspark the Spark tests skip.
"""

from __future__ import annotations

import csv
import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from spark_support import HAVE_SPARK, NO_SPARK, random_events, with_spark

from recsvc.errors import DataContractError, SparkUnavailable
from recsvc.settings import load_settings
from training import prepare
from training.confidence import confidence_matrix
from training.fit import AlsParams

# A JVM start plus a few small Spark jobs per test: minutes when the 2 cores are shared.
pytestmark = pytest.mark.timeout(900)


@pytest.fixture(scope="module")
def owner() -> Iterator[Any]:
    if not HAVE_SPARK:
        pytest.skip(NO_SPARK)
    from training.spark_als import SparkAls

    with SparkAls(load_settings(overrides={"training": {"engine": "spark"}}).training) as als:
        als.session()
        yield als


# --- half-life 0: no decay ------------------------------------------------------------------


@with_spark
def test_half_life_zero_is_no_decay_on_spark_as_on_numpy(owner: Any) -> None:
    """half_life_days = 0 ("no decay", the tuner's fixed first trial) gives training/confidence.py's
    undecayed r_ui, and a whole Spark fit runs on it (it stopped with DIVIDE_BY_ZERO)."""
    from training.spark_als import confidence_frame

    n, shape, as_of = 2000, (30, 25), 1_790_000_000
    events = random_events(n, shape, as_of, seed=11)
    weights = {"purchase": 2.0, "add_to_cart": 1.4, "view": 0.7, "click": 0.0, "share": 1.2}
    expected = confidence_matrix(events, shape, weights, 0.0, as_of)
    got = confidence_frame(owner.events_frame(events), weights, 0.0, as_of).toPandas()
    coo = expected.tocoo()
    want = pd.DataFrame({"member": coo.row, "item": coo.col, "want": coo.data})
    both = want.merge(got, on=["member", "item"], how="inner", validate="1:1")
    assert len(got) == len(both) == expected.nnz
    np.testing.assert_allclose(both["r"].to_numpy(), both["want"].to_numpy(), rtol=1e-6)
    # undecayed: the plain weight sums, which any decay (events up to 400 days old) lowers
    decayed = confidence_matrix(events, shape, weights, 45.0, as_of)
    assert expected.sum() > decayed.sum()

    params = AlsParams.from_settings(
        load_settings(overrides={"training": {"half_life_days": 0, "factors": 4, "iterations": 2}}).training
    )
    assert params.half_life_days == 0
    fit = owner.fit(events, as_of, shape, params)
    trained = np.abs(np.asarray(fit.model.user_factors)).sum(axis=1) > 0
    assert trained.any() and np.isfinite(np.asarray(fit.model.user_factors)).all()


# --- a failed start whose clean-up fails too (no JVM) ---------------------------------------


def test_a_failed_start_is_spark_unavailable_even_when_its_cleanup_fails(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A driver heap too small (spark_driver_memory=48m) fails the start; ending the JVM then
    fails as well (nothing listens any more), and so does reading a Java error's text. The
    user still gets the start's one-line SPARK_UNAVAILABLE, not ``FILE: Connection refused``."""
    pytest.importorskip("pyspark")
    from pyspark.sql import SparkSession

    from training import spark_als

    jvm = {"up": True}

    class JavaError(Exception):
        """Like Py4JJavaError: its text is fetched from the JVM that raised it."""

        def __str__(self) -> str:
            if not jvm["up"]:
                raise ConnectionRefusedError(111, "Connection refused")
            return (
                "org.apache.spark.SparkIllegalArgumentException: [INVALID_DRIVER_MEMORY] Insufficient\n\tat x"
            )

    def start(_builder: Any, _owned: bool) -> Any:
        raise JavaError()

    def end_jvm() -> None:
        jvm["up"] = False
        raise ConnectionRefusedError(111, "Connection refused")

    monkeypatch.setattr(SparkSession, "getActiveSession", classmethod(lambda cls: None))
    monkeypatch.setattr(spark_als, "_get_or_create", start)
    monkeypatch.setattr(spark_als, "_end_local_jvm", end_jvm)
    t = load_settings(overrides={"training": {"engine": "spark", "spark_driver_memory": "48m"}}).training
    caplog.set_level("DEBUG", logger="training.spark_als")
    with pytest.raises(SparkUnavailable) as err, spark_als.SparkAls(t) as als:
        als.session()
    assert err.value.reason == "SPARK_UNAVAILABLE"
    assert "INVALID_DRIVER_MEMORY" in err.value.message and "\n" not in err.value.message
    assert not jvm["up"]  # the clean-up ran; its failure is only logged
    assert "Connection refused" in caplog.text


def test_an_error_leaving_the_session_is_not_replaced_by_a_failing_stop(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from training import spark_als

    def stop(_self: Any) -> None:
        raise ConnectionRefusedError(111, "Connection refused")

    monkeypatch.setattr(spark_als.SparkAls, "stop", stop)
    t = load_settings(overrides={"training": {"engine": "spark"}}).training
    with pytest.raises(SparkUnavailable, match="ALS failed"), spark_als.SparkAls(t):
        raise SparkUnavailable("Spark ALS failed on 'local[2]': Job aborted")
    # without an error in flight, a failing stop is the error
    with pytest.raises(ConnectionRefusedError), spark_als.SparkAls(t):
        pass


# --- quarantine files: the same as pandas' --------------------------------------------------


@pytest.fixture
def no_codegen_fallback(owner: Any) -> Iterator[None]:
    """Generated code that does not compile fails the query instead of falling back to Spark's
    interpreter after logging the failure (the "Code grows beyond 64 KB" noise)."""
    spark = owner.session()
    before = spark.conf.get("spark.sql.codegen.fallback")
    spark.conf.set("spark.sql.codegen.fallback", "false")
    try:
        yield
    finally:
        spark.conf.set("spark.sql.codegen.fallback", before)


def _folder(tmp_path: Path, *, csv_events: bool = False) -> Path:
    from pipelines.generate import generate
    from pipelines.generate.params import GeneratorParams

    data = tmp_path / "data"
    generate(GeneratorParams(members=30, seed=2), data, fmt="csv" if csv_events else "parquet")
    return data


def _quarantine(
    owner: Any, data: Path, share: float, *, stops: bool
) -> dict[str, tuple[pd.DataFrame, dict[str, Any]]]:
    """Each engine's quarantine files (events.csv as text, summary.json's events table)."""
    from training import spark_ingest

    settings = load_settings(overrides={"data": {"max_quarantined_share": share}}).data
    written = {}
    for engine in ("pandas", "spark"):
        try:
            if engine == "pandas":
                prepare.load(data, settings)
            else:
                spark_ingest.load(owner.session(), data, settings, frozenset()).events.unpersist()
        except DataContractError as err:
            assert stops and err.reason == "QUARANTINE_SHARE", err
        else:
            assert not stops
        folder = data / "quarantine"
        table = pd.read_csv(folder / "events.csv", dtype=str, keep_default_na=False)
        summary = json.loads((folder / "summary.json").read_text())["tables"]["events"]
        written[engine] = (table, summary)
        shutil.rmtree(folder)
    return written


def _same_files(written: dict[str, tuple[pd.DataFrame, dict[str, Any]]], columns: list[str]) -> None:
    (a, sa), (b, sb) = written["pandas"], written["spark"]
    assert list(a.columns) == list(b.columns)
    pd.testing.assert_frame_equal(a[columns], b[columns])
    assert sa == sb


@with_spark
def test_parquet_times_read_in_the_quarantine_as_pandas_writes_them(
    owner: Any, tmp_path: Path, no_codegen_fallback: None
) -> None:
    """A typed (UTC) Parquet time keeps its "+00:00" and its microseconds when it has some, in
    the values and in the details; summary.json counts the clean rows on both engines."""
    data = _folder(tmp_path)
    events = pd.read_parquet(data / "events.parquet").iloc[:400].copy()
    ts = events["ts"].astype("datetime64[us, UTC]")
    ts.iloc[3] = ts.iloc[3] + pd.Timedelta(microseconds=250_500)  # a fraction of a second
    ts.iloc[5] = pd.Timestamp("2099-01-01 00:00:00.000001", tz="UTC")  # future: ts in the detail
    ts.iloc[6] = pd.Timestamp("1971-01-01", tz="UTC")  # too old, at midnight
    events["ts"] = ts
    events.loc[events.index[[3, 4, 7, 9]], "event_type"] = "teleport"
    events.to_parquet(data / "events.parquet", index=False)
    written = _quarantine(owner, data, 0.99, stops=False)
    table, summary = written["pandas"]
    assert summary["rows_clean"] == 400 - len(table) > 0
    assert table["ts"].str.endswith("+00:00").all()
    assert table["ts"].str.contains(r"\.250500\+00:00$").sum() == 1
    assert table["detail"].str.startswith("ts=").sum() == 2
    _same_files(written, ["source_row", "reason", "detail", "problems", "member_id", "event_type", "ts"])


@with_spark
def test_everything_quarantined_stops_alike_without_a_failed_compilation(
    owner: Any, tmp_path: Path, no_codegen_fallback: None
) -> None:
    """Every event quarantined: QUARANTINE_SHARE on both engines, the same files, and Spark's
    query compiles (with the fallback off, code over the JVM's 64 KB limit would fail it)."""
    data = _folder(tmp_path)
    events = pd.read_parquet(data / "events.parquet").iloc[:300].copy()
    events["event_type"] = "teleport"
    events.to_parquet(data / "events.parquet", index=False)
    written = _quarantine(owner, data, 0.05, stops=True)
    table, summary = written["pandas"]
    assert len(table) == 300 and summary["rows_clean"] == 0
    assert table["ts"].str.endswith("+00:00").all()
    _same_files(written, ["source_row", "reason", "detail", "problems", "member_id", "event_type", "ts"])


@with_spark
def test_a_repeated_header_row_is_counted_alike(owner: Any, tmp_path: Path) -> None:
    """A CSV with its header line again mid-file: one row quarantined (its event type is
    "event_type"), every other row clean, in summary.json as in the run's counts."""
    data = _folder(tmp_path, csv_events=True)
    path = data / "events.csv"
    with path.open(newline="", encoding="utf-8") as fh:
        rows = list(csv.reader(fh))
    rows = rows[:301]
    rows.insert(150, rows[0])
    with path.open("w", newline="", encoding="utf-8") as fh:
        csv.writer(fh).writerows(rows)
    written = _quarantine(owner, data, 0.5, stops=False)
    table, summary = written["pandas"]
    assert table["reason"].tolist() == ["unknown_event_type"] and table["source_row"].tolist() == ["149"]
    assert (summary["rows_read"], summary["rows_clean"], summary["rows_quarantined"]) == (301, 300, 1)
    _same_files(written, list(table.columns))


@with_spark
def test_float_ids_read_as_the_integers_alike(owner: Any, tmp_path: Path) -> None:
    """Member and item ids written as floats in the events CSV (a pandas float column: "12347.0")
    name the members file's and catalog's integer ids on both engines, as pipelines.cells rules."""
    from training import spark_ingest

    data = _folder(tmp_path, csv_events=True)
    members = pd.read_csv(data / "members.csv", dtype=str)
    catalog = pd.read_csv(data / "catalog.csv", dtype=str)
    events = pd.read_csv(data / "events.csv", dtype=str, keep_default_na=False).iloc[:300]
    member_ids = {m: str(1000 + i) for i, m in enumerate(members["member_id"])}
    item_ids = {m: str(5000 + i) for i, m in enumerate(catalog["item_id"])}
    members["member_id"] = members["member_id"].map(member_ids)
    catalog["item_id"] = catalog["item_id"].map(item_ids)
    if "featured_item_ids" in catalog:
        catalog["featured_item_ids"] = ""
    events["member_id"] = events["member_id"].map(member_ids) + ".0"
    events["item_id"] = events["item_id"].map(item_ids) + ".00"
    members.to_csv(data / "members.csv", index=False)
    catalog.to_csv(data / "catalog.csv", index=False)
    events.to_csv(data / "events.csv", index=False)
    settings = load_settings().data
    pandas_prepared = prepare.prepare(prepare.load(data, settings))
    spark_ingested = spark_ingest.load(owner.session(), data, settings, frozenset())
    try:
        got = spark_ingested.prepared
        assert len(got.events) == len(pandas_prepared.events) == 300
        assert got.members.ids(range(len(got.members))) == pandas_prepared.members.ids(
            range(len(got.members))
        )
    finally:
        spark_ingested.events.unpersist()


# --- numbers no Spark cast holds, rows the CSV reader does not print ------------------------


def _csv_events(data: Path, n: int = 300) -> pd.DataFrame:
    return pd.read_csv(data / "events.csv", dtype=str, keep_default_na=False).iloc[:n].copy()


@with_spark
def test_numbers_beyond_any_cast_are_quarantined_alike_and_the_rest_kept(owner: Any, tmp_path: Path) -> None:
    """-inf, inf, nan and a 20-digit quantity, huge amounts and a 45-digit id are one row's
    problem each (bad_quantity ...), as pandas says: not a CAST_OVERFLOW that stops the run."""
    data = _folder(tmp_path, csv_events=True)
    events = _csv_events(data)
    bad = {
        3: ("quantity", "-inf"),
        5: ("quantity", "inf"),
        7: ("quantity", "nan"),
        9: ("quantity", "99999999999999999999"),
        11: ("quantity", "-99999999999999999999"),
        13: ("quantity", "1e400"),
        15: ("amount", "1e400"),  # inf once read
        17: ("amount", "1e300"),
        19: ("amount", "-1e300"),
        21: ("amount", "99999999999999999999999999999999999999999"),
        23: ("member_id", "1" * 45 + ".0"),  # over decimal(38,0)
        25: ("item_id", "9" * 45 + ".0"),
    }
    for row, (col, value) in bad.items():
        events.loc[events.index[row], col] = value
    events.to_csv(data / "events.csv", index=False)
    written = _quarantine(owner, data, 0.5, stops=False)
    table, summary = written["pandas"]
    assert table["source_row"].astype(int).tolist() == sorted(bad)
    assert table["reason"].tolist() == [
        *["bad_quantity"] * 6,
        "bad_amount",
        "amount_out_of_range",
        "negative_amount",
        "amount_out_of_range",
        "unknown_member",
        "unknown_item",
    ]
    assert (summary["rows_read"], summary["rows_clean"]) == (300, 300 - len(bad))
    _same_files(written, list(table.columns))


@with_spark
def test_a_quarantined_row_is_no_earlier_copy_of_an_accepted_one(owner: Any, tmp_path: Path) -> None:
    """Duplicates are looked for among the accepted rows, as pandas does: a quarantined row
    whose checked values equal a later accepted row's (an unknown channel and an empty one both
    code -1, "abc" and "" both amount 0, quantity 1.5 cast to 1) does not make that row a copy."""
    from training import spark_ingest

    data = _folder(tmp_path, csv_events=True)
    events = _csv_events(data)
    views = events.index[events["event_type"] == "view"][:6]
    pairs = [("channel", "tv_shop", ""), ("amount", "abc", ""), ("quantity", "1.5", "1")]
    for (first, second), (col, quarantined, kept) in zip(views.to_numpy().reshape(3, 2), pairs, strict=True):
        events.loc[second] = events.loc[first]
        events.loc[first, col] = quarantined
        events.loc[second, col] = kept
    events.to_csv(data / "events.csv", index=False)
    written = _quarantine(owner, data, 0.5, stops=False)
    table, summary = written["pandas"]
    assert sorted(table["reason"]) == ["bad_amount", "bad_quantity", "unknown_channel"]
    _same_files(written, list(table.columns))
    settings = load_settings(overrides={"data": {"max_quarantined_share": 0.5}}).data
    ingested = spark_ingest.load(owner.session(), data, settings, frozenset())
    try:
        assert ingested.quarantine == {"bad_amount": 1, "bad_quantity": 1, "unknown_channel": 1}
        assert len(ingested.prepared.events) == summary["rows_clean"] == 297
    finally:
        ingested.events.unpersist()
        shutil.rmtree(data / "quarantine")


@with_spark
def test_parquet_times_given_as_numbers_are_bad_timestamps_alike(owner: Any, tmp_path: Path) -> None:
    """pandas reads a time column of numbers as text (not ISO 8601: bad_timestamp); Spark cast
    them to times instead, and a huge one (1e300) failed the run with CAST_OVERFLOW."""
    data = _folder(tmp_path)
    events = pd.read_parquet(data / "events.parquet").iloc[:200].copy()
    seconds = events["ts"].astype("datetime64[us, UTC]").astype("int64") / 1e6
    seconds.iloc[4] = 1e300
    events["ts"] = seconds.astype("float64")
    events.to_parquet(data / "events.parquet", index=False)
    written = _quarantine(owner, data, 0.05, stops=True)
    table, summary = written["pandas"]
    assert len(table) == 200 and set(table["reason"]) == {"bad_timestamp"}
    spark_table, spark_summary = written["spark"]
    columns = ["source_row", "reason", "member_id", "item_id"]
    pd.testing.assert_frame_equal(table[columns], spark_table[columns])
    # the values' text differs (Java writes 1.761987923E9 where Python writes 1761987923)
    counts = ["rows_read", "rows_clean", "rows_quarantined"]
    assert [summary[k] for k in counts] == [spark_summary[k] for k in counts] == [200, 0, 200]


@with_spark
def test_unprintable_characters_are_escaped_in_details_as_python_does(owner: Any, tmp_path: Path) -> None:
    """A zero-width space, a tab, an ideographic space or a backslash in a value is shown in
    the quarantine's detail and problems as Python's repr shows it ('M\\u200b1'), as pandas does."""
    data = _folder(tmp_path, csv_events=True)
    events = _csv_events(data)
    values = {
        2: ("member_id", "M\u200b000018"),
        4: ("item_id", "P00\t044"),
        6: ("event_type", "vi\u3000ew"),
        8: ("event_type", "vi\\ew's"),
        10: ("channel", "app\u00a0\U0001f600\u2028x"),
    }
    for row, (col, value) in values.items():
        events.loc[events.index[row], col] = value
    events.to_csv(data / "events.csv", index=False)
    written = _quarantine(owner, data, 0.5, stops=False)
    table, _summary = written["pandas"]
    assert table["source_row"].astype(int).tolist() == sorted(values)
    assert table["detail"].tolist()[:2] == ["member_id='M\\u200b000018'", "item_id='P00\\t044'"]
    _same_files(written, list(table.columns))
