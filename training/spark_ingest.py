# Over 400 lines: the Spark twin of the events contract (read, rules, gate), kept in one place.
"""Step 1 on Spark (``training.engine = "spark"`` with a data folder): Spark reads and checks the events.

Reads: the data folder. The catalog and members tables (thousands to a few million rows, needed
whole by the driver for the id maps, segments and the bundle) go through the pandas data contract
(:mod:`pipelines.validate`) on the driver. The events file (CSV, CSV.gz or Parquet; the column
names and the ``--encoding`` the pandas loader takes) is read by Spark itself, and every row rule of
the data contract runs there as a Spark expression, in the contract's order, producing the same
primary reason codes (:data:`EVENT_RULES`; docs/data.md), then the duplicate check (a window over
the seven values, the earliest source row kept), the erasure list (an anti-join), the id lookup
(a join with the member and item rows) and the quarantine share gate.
Writes: a :class:`SparkIngest`: the :class:`training.prepare.Prepared` later steps share, and the
clean events as a persisted Spark DataFrame (member row, item row, event type, epoch seconds),
from which Spark builds r_ui and fits ALS (:meth:`training.spark_als.SparkAls.attach`) without
the events making a round trip through the driver. When any row was quarantined, the quarantined
rows (only those: at most ``data.max_quarantined_share`` of the events unless training stops
there) come to the driver and are written with the pandas validator's writer, so
``<data>/quarantine/`` has the same files either way.

What the driver still holds, and why: the clean events as six compact numeric arrays (22 bytes an
event; no text, no validation work), fetched through Arrow in file order. The holdout split and
its test matrix, evaluation, replenishment intervals, segments, popular lists, member profiles
and the bundle's history and purchase matrices are numpy code over per-event arrays
(:mod:`training.split`, :mod:`training.segments` ...), shared with the implicit engine so a
bundle does not depend on the engine; distributing them is the next step for data that does not
fit one machine, and docs/training.md ("When to switch") says where that lies.

Differences from the pandas reader, all for input the contract calls malformed anyway: a CSV row
with a line break inside quotes is not supported (Spark splits the file by lines to read it in
parallel; use Parquet), non-ASCII ids are compared as sent rather than in NFC, and a mapping file
that maps values (not just column names) is applied by a pandas function on the executors
(``mapInPandas``), which then need recsvc's Python installed.
tests/test_data_contract_spark.py runs both readers over the same deliberately bad files and
requires the same counts per reason and the same clean events.
"""

from __future__ import annotations

import logging
import operator
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import reduce
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipelines import rows
from pipelines.contract import (
    CATALOG,
    EARLIEST_EVENT_TS,
    EVENT_TYPES,
    EVENTS,
    MAX_AMOUNT,
    MAX_QUANTITY,
    MEMBERS,
    ORDER_ID,
    Reason,
)
from pipelines.encoding import resolve_encoding
from pipelines.ingest import keep_quarantine_files, quarantine_overflow, too_much_quarantined
from pipelines.mapping import Mapping
from pipelines.read import REPLACEMENT_CHAR, _check_columns, _mapped_header, _read_csv, find_table_file
from pipelines.validate import (
    QUARANTINE_DIRNAME,
    TableResult,
    ValidationResult,
    _event_channels,
    _has_table,
    _implied_members,
    _offset_s,
    validate_catalog,
    validate_members,
)
from pipelines.validate_events import (
    DAY_US,
    MINUTE_US,
    copies_are_duplicates,
    duplicate_detail,
    repeats_kept_note,
    time_grain,
)
from recsvc.errors import DataContractError
from recsvc.idmap import ID_SEPARATORS
from recsvc.settings import DataSettings
from training import prepare
from training.prepare import EventArrays, Prepared
from training.spark_als import first_line, is_spark_error

log = logging.getLogger(__name__)

_DETAIL_MAX = 80
# Numbers as pandas' to_numeric reads them: Java's parser also takes "5d", "0x1p3" and "1_0".
_NUMBER = r"^[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?$|^(?i)[+-]?(inf|infinity)$"
# recsvc.idmap.id_chars_ok: letters, marks and digits of any script and the separators.
# \z, not $: Java's $ (like Python's) also matches before a final line terminator
_ID_CHARS = "^[\\p{L}\\p{M}\\p{N}" + "".join("\\" + c for c in ID_SEPARATORS) + "]+\\z"
_CORRUPT = "_recsvc_malformed"
# What Python's str.isprintable refuses, so repr escapes: other (controls, formats such as the
# zero-width space, unassigned) and separators but the ASCII space.
_UNPRINTABLE = r"[\p{C}\p{Z}&&[^ ]]"
# Set on the session before reading (it may be someone else's session, so not at its start).
_READ_CONF = {
    # the data contract reads times without an offset as UTC
    "spark.sql.session.timeZone": "UTC",
    # CSV files in any Java charset (GB18030 exports), not only the UTF and ISO-8859-1 ones
    "spark.sql.legacy.javaCharsets": "true",
    # every cell of a row is tokenised, so a row with more cells than the header is seen
    "spark.sql.csv.parser.columnPruning.enabled": "false",
}


@dataclass(frozen=True)
class Rule:
    """One row rule of the events contract: rows where ``bad`` holds get ``reason`` (the first
    rule a row fails is its primary reason); ``column``'s value as sent is the detail."""

    reason: str
    column: str
    bad: Callable[[dict[str, Any]], Any]


def _col(name: str) -> Callable[[dict[str, Any]], Any]:
    return lambda c: c[name]


# The events contract in docs/data.md order (pipelines/validate.py, _check_event_chunk, in the
# same order); ``c`` holds the parsed columns of :func:`_parsed`. Unknown members and items come
# from the id lookup, duplicates from a window over the rows that pass every rule here.
EVENT_RULES: tuple[Rule, ...] = (
    *(Rule(Reason.INVALID_UTF8, col, _col(f"utf8_bad.{col}")) for col in EVENTS.columns),
    Rule(Reason.MISSING_MEMBER_ID, "member_id", _col("member_id.missing")),
    Rule(Reason.ID_TOO_LONG, "member_id", _col("member_id.too_long")),
    Rule(Reason.BAD_ID_CHARS, "member_id", _col("member_id.bad_chars")),
    Rule(Reason.MISSING_ITEM_ID, "item_id", _col("item_id.missing")),
    Rule(Reason.ID_TOO_LONG, "item_id", _col("item_id.too_long")),
    Rule(Reason.BAD_ID_CHARS, "item_id", _col("item_id.bad_chars")),
    Rule(Reason.UNKNOWN_EVENT_TYPE, "event_type", lambda c: c["etype"] < 0),
    Rule(Reason.UNKNOWN_CHANNEL, "channel", lambda c: (c["channel"] < 0) & c["channel_given"]),
    Rule(Reason.BAD_TIMESTAMP, "ts", lambda c: c["ts"].isNull()),
    Rule(Reason.FUTURE_TIMESTAMP, "ts", lambda c: c["ts"] > c["latest"]),
    Rule(Reason.TIMESTAMP_TOO_OLD, "ts", lambda c: c["ts"] < c["earliest"]),
    Rule(Reason.BAD_QUANTITY, "quantity", _col("quantity.bad")),
    Rule(Reason.BAD_AMOUNT, "amount", _col("amount.bad")),
    Rule(Reason.NEGATIVE_AMOUNT, "amount", lambda c: c["amount"] < 0),
    Rule(Reason.AMOUNT_OUT_OF_RANGE, "amount", lambda c: c["amount"] > MAX_AMOUNT),
    Rule(Reason.MISSING_AMOUNT, "amount", _col("amount.missing")),
    Rule(Reason.UNKNOWN_MEMBER, "member_id", lambda c: c["member_id.ok"] & ~c["m_known"]),
    Rule(Reason.UNKNOWN_ITEM, "item_id", lambda c: c["item_id.ok"] & c["i_row"].isNull()),
)


@dataclass
class SparkIngest:
    prepared: Prepared
    members: pd.DataFrame  # the clean members table (implied from the events without a file)
    events: Any  # persisted Spark DataFrame: member, item (rows), etype, ts (epoch s); clean, erased gone
    quarantine: dict[str, int]  # events quarantined per reason (erased members' rows not counted)
    rows_read: int


def load(
    spark: Any,
    data_dir: Path,
    settings: DataSettings,
    erased: frozenset[str],
    *,
    mapping: Mapping | None = None,
    encoding: str | None = None,
    allow_quarantine: bool = False,
    now: datetime | None = None,
) -> SparkIngest:
    """Validate ``data_dir`` with Spark reading the events; the same DataContractErrors as
    :func:`training.prepare.load` (unusable files, too much quarantined, nothing to train on)."""
    from pyspark.storagelevel import StorageLevel

    from recsvc.security.privacy import apply_erasures

    now = now or datetime.now(UTC)
    for key, value in _READ_CONF.items():
        spark.conf.set(key, value)
    if not data_dir.is_dir():
        raise DataContractError(f"data folder not found: {data_dir}")
    catalog_path = find_table_file(data_dir, CATALOG)
    events_path = find_table_file(data_dir, EVENTS)
    members_path = find_table_file(data_dir, MEMBERS) if _has_table(data_dir, MEMBERS) else None
    catalog = _driver_table(catalog_path, settings, now, encoding, mapping, validate_catalog)
    members = (
        _driver_table(members_path, settings, now, encoding, mapping, validate_members)
        if members_path is not None
        else None
    )
    channels = _event_channels(settings, mapping)
    codec = None if events_path.name.endswith(".parquet") else resolve_encoding(events_path, encoding)
    raw = read_events(spark, events_path, codec, mapping)
    catalog_sorted, items = prepare.catalog_items(catalog.clean)
    known_members = members.clean["member_id"].astype(str) if members is not None else None
    checked = check_events(spark, raw, settings, now, items, known_members, channels, _offset_s(mapping))
    persisted = checked.select(
        "source_row",
        "reason",
        "member_raw",
        "member_id",
        "item",
        "etype",
        "ts",
        "channel",
        "amount",
        "_copy",
        "_sub_minute",
        "_sub_day",
        "_sub_day_offset",
    ).persist(StorageLevel.MEMORY_AND_DISK)
    try:
        copies = Copies.of(persisted, ORDER_ID in raw.columns)
        checked = with_duplicates(checked, copies)
        compact = with_duplicates(persisted, copies)
        by_reason_all = _reason_counts(compact)
        rows_read = int(compact.count())
        if members is None:  # no members file: the members are the ones the clean events name
            ids = _pandas(compact.where("reason IS NULL").select("member_id").distinct())["member_id"]
            members = _implied_members(pd.DataFrame({"member_id": pd.Categorical(ids.astype(str))}))
        result = ValidationResult(data_dir=data_dir, checked_at=now)
        events_table = _counted_table(events_path, rows_read, sum(by_reason_all.values()), codec)
        if copies.repeats and not copies.duplicates:
            events_table.notes.append(repeats_kept_note(copies.repeats))
            log.info("events: %s", events_table.notes[-1])
        for table in (catalog, members, events_table):
            result.tables[table.name] = table
        over = quarantine_overflow(result, None if allow_quarantine else settings.max_quarantined_share)
        quarantine_dir = data_dir / QUARANTINE_DIRNAME
        if over:  # the same files and message as pipelines.ingest.load_dataset
            events_table.quarantine = quarantine_rows(checked)
            result.write(quarantine_dir)
            raise too_much_quarantined(over, settings.max_quarantined_share, quarantine_dir)
        if sum(by_reason_all.values()) or quarantine_dir.is_dir():
            # below the limit too (at most that share of the events comes to the driver)
            events_table.quarantine = quarantine_rows(checked)
            keep_quarantine_files(result, quarantine_dir)
        ingest_counts = {
            f"{t.name}.{k}": v
            for t in result.tables.values()
            for k, v in (
                ("rows_read", t.rows_read),
                ("rows_clean", len(t.clean)),
                ("rows_quarantined", len(t.quarantine)),
            )
        }

        erased_frame = _erased_frame(spark, erased)
        kept = compact.where("reason IS NULL")
        quarantined = compact.where("reason IS NOT NULL")
        if erased_frame is not None:
            kept = kept.join(erased_frame, kept["member_id"] == erased_frame["erased"], "left_anti")
            quarantined = quarantined.join(
                erased_frame, quarantined["member_raw"] == erased_frame["erased"], "left_anti"
            )
        by_reason = _reason_counts(quarantined) if erased_frame is not None else by_reason_all
        members_frame = apply_erasures(members.clean, erased)
        member_map = prepare.member_map_of(members_frame, np.zeros(0, dtype=object))
        member_rows = _spark_frame(
            spark,
            pd.DataFrame(
                {"member_id": member_map.ids(range(len(member_map))), "member": np.arange(len(member_map))}
            ),
        )
        events = kept.join(member_rows.hint("broadcast"), "member_id").select(
            "source_row", "member", "item", "etype", "ts", "channel", "amount"
        )
        arrays = _event_arrays(events)
        prepared = prepare.from_events(catalog_sorted, items, members_frame, member_map, arrays, channels)
        reasons = dict(by_reason)
        for table in (catalog, members):
            q = apply_erasures(table.quarantine, erased)
            for reason, n in q["reason"].value_counts().items():
                reasons[str(reason)] = reasons.get(str(reason), 0) + int(n)
        prepared.counts = prepare.row_counts(ingest_counts, sum(reasons.values()), reasons, prepared, 0)
        als_events = events.select("member", "item", "etype", "ts").persist(StorageLevel.MEMORY_AND_DISK)
        als_events.count()  # materialised now: the events file is not read again
    finally:
        persisted.unpersist()
    log.info("spark ingest events rows=%d clean=%d quarantined=%s", rows_read, len(arrays), by_reason)
    return SparkIngest(prepared, members_frame, als_events, by_reason, rows_read)


def _driver_table(
    path: Path,
    settings: DataSettings,
    now: datetime,
    encoding: str | None,
    mapping: Mapping | None,
    validate: Callable[..., TableResult],
) -> TableResult:
    from pipelines.read import read_table

    spec = CATALOG if validate is validate_catalog else MEMBERS
    codec = None if path.name.endswith(".parquet") else resolve_encoding(path, encoding)
    raw = read_table(path, spec, codec or "utf-8", mapping)
    table = validate(raw, path, settings) if spec is CATALOG else validate(raw, path, settings, now)
    table.encoding = codec
    return table


def _counted_table(path: Path, rows_read: int, quarantined: int, codec: str | None) -> TableResult:
    """The events' TableResult for the share gate and summary.json: Spark's counts, no values
    (rows of the quarantine are fetched only to be written, :func:`quarantine_rows`). Both
    frames have their table's length, as ``TableResult`` counts rows by ``len``; the clean one
    has no columns, so it costs nothing however many events are clean."""
    placeholder = pd.DataFrame({"reason": pd.Series(pd.NA, index=pd.RangeIndex(quarantined), dtype="string")})
    clean = pd.DataFrame(index=pd.RangeIndex(rows_read - quarantined))
    return TableResult(EVENTS.name, path, rows_read, clean, placeholder, codec)


def _reason_counts(frame: Any) -> dict[str, int]:
    rows = frame.where("reason IS NOT NULL").groupBy("reason").count().collect()
    return {str(r["reason"]): int(r["count"]) for r in sorted(rows, key=lambda r: str(r["reason"]))}


def _erased_frame(spark: Any, erased: frozenset[str]) -> Any:
    if not erased:
        return None
    return _spark_frame(spark, pd.DataFrame({"erased": sorted(erased)})).hint("broadcast")


def _event_arrays(events: Any) -> EventArrays:
    """The clean events in file order as the driver's compact arrays (Arrow, no row objects)."""
    pdf = _pandas(events.orderBy("source_row").drop("source_row"))
    return EventArrays(
        member=pdf["member"].to_numpy(dtype=np.int32),
        item=pdf["item"].to_numpy(dtype=np.int32),
        etype=pdf["etype"].to_numpy(dtype=np.int8),
        ts=pdf["ts"].to_numpy(dtype=np.int64),
        channel=pdf["channel"].to_numpy(dtype=np.int8),
        amount=pdf["amount"].to_numpy(dtype=np.float32),
    )


# --- reading --------------------------------------------------------------------------------


def read_events(spark: Any, path: Path, codec: str | None, mapping: Mapping | None) -> Any:
    """The events file as Spark reads it: the contract's columns in contract order (CSV: all text,
    empty cells ""; Parquet: its own types), ``order_id`` when the file has one, and
    ``source_row``, the 0-based data row in the file.
    Unusable files raise the pandas reader's DataContractErrors (pipelines/read.py)."""
    from pyspark.sql import functions as F
    from pyspark.sql.types import StringType, StructField, StructType

    renames: dict[str, str] = {}
    drop: list[str] = []
    try:
        if path.name.endswith(".parquet"):
            from pipelines.read import _parquet_columns

            header = _parquet_columns(path)
            renames, drop = mapping.rename(EVENTS.name, header) if mapping else ({}, [])
            _check_columns(path, EVENTS, _mapped_header(EVENTS, header, renames, drop, mapping), EVENTS.extra)
            frame = spark.read.parquet(str(path))
        else:
            header = [str(c) for c in _read_csv(path, nrows=0, encoding=codec or "utf-8").columns]
            renames, drop = mapping.rename(EVENTS.name, header) if mapping else ({}, [])
            _check_columns(path, EVENTS, _mapped_header(EVENTS, header, renames, drop, mapping), EVENTS.extra)
            schema = StructType([StructField(f"_c{i}", StringType()) for i in range(len(header))])
            schema.add(StructField(_CORRUPT, StringType()))
            frame = spark.read.csv(
                str(path),
                schema=schema,
                header=True,
                enforceSchema=True,
                escape='"',  # quotes inside quoted cells are doubled, as pandas reads them
                encoding=_java_charset(codec or "utf-8"),
                multiLine=(codec or "utf-8").startswith("utf-16"),  # no line splitting in UTF-16
                mode="PERMISSIVE",
                columnNameOfCorruptRecord=_CORRUPT,
            )
            _refuse_long_rows(frame, path, len(header))
            frame = frame.select(
                *[F.coalesce(F.col(f"_c{i}"), F.lit("")).alias(name) for i, name in enumerate(header)]
            )
        frame = frame.drop(*drop)
        for old, new in renames.items():
            frame = frame.withColumnRenamed(old, new)
        if mapping is not None:
            frame = _mapped(frame, mapping)
        for col in EVENTS.optional:
            if col not in frame.columns:
                frame = frame.withColumn(col, F.lit(""))
        extra = [c for c in EVENTS.extra if c in frame.columns]
        return with_source_rows(frame.select(*EVENTS.columns, *extra))
    except DataContractError:
        raise
    except Exception as exc:
        if not is_spark_error(exc):
            raise
        raise DataContractError(f"cannot read {path}: {first_line(exc)}") from exc


def _java_charset(codec: str) -> str:
    return {"utf-8-sig": "UTF-8", "utf_8": "UTF-8", "gb18030": "GB18030"}.get(codec, codec.upper())


def _refuse_long_rows(frame: Any, path: Path, columns: int) -> None:
    """A row with more cells than the header is a parse error for pandas (the file stops); one
    with fewer gets empty cells. Spark marks both malformed: stop on the first kind only."""
    from pyspark.sql import functions as F

    long_rows = frame.where(F.col(_CORRUPT).isNotNull() & F.col(f"_c{columns - 1}").isNotNull())
    first = long_rows.select(_CORRUPT).limit(1).collect()
    if first:
        raise DataContractError(
            f"cannot parse {path} as CSV: a row has more than {columns} fields: {rows.clip(first[0][0])}"
        )


def _mapped(frame: Any, mapping: Mapping) -> Any:
    """The mapping file's value rules (defaults, value tables, money, time formats): the pandas
    function itself, on the executors, so both engines map alike."""
    columns = list(frame.columns)
    text = frame.select(*[frame[c].cast("string").alias(c) for c in columns])

    out_columns = [c for c in EVENTS.columns if c in columns or c in mapping.table(EVENTS.name).defaults]

    def apply(chunks: Any) -> Any:
        for chunk in chunks:
            yield mapping.apply(EVENTS.name, chunk.fillna(""))[out_columns].astype(str)

    schema = ", ".join(f"`{c}` string" for c in out_columns)
    return text.mapInPandas(apply, schema)


def with_source_rows(frame: Any) -> Any:
    """``frame`` and ``source_row``: its 0-based row in the file. A file's splits are read as
    partitions in file order (Spark orders a file's splits by offset), and
    monotonically_increasing_id is the partition in the upper bits, the row within it below: one
    counting pass gives each partition's first row."""
    from pyspark.sql import functions as F

    tagged = frame.withColumn("_id", F.monotonically_increasing_id())
    part = F.shiftright(F.col("_id"), 33)
    sizes = {
        int(r["p"]): int(r["n"])
        for r in tagged.groupBy(part.alias("p")).agg(F.count("*").alias("n")).collect()
    }
    first, starts = 0, {}
    for p in sorted(sizes):
        starts[p] = first
        first += sizes[p]
    offsets = F.create_map(*[x for p, s in starts.items() for x in (F.lit(p), F.lit(s))]) if starts else None
    local = F.col("_id").bitwiseAND(F.lit((1 << 33) - 1))
    source_row = (F.element_at(offsets, part) + local) if offsets is not None else local
    return tagged.withColumn("source_row", source_row.cast("long")).drop("_id")


# --- checking -------------------------------------------------------------------------------


def _text(col: str) -> Any:
    from pyspark.sql import functions as F

    return F.coalesce(F.col(col).cast("string"), F.lit(""))


def _as_sent(frame: Any, col: str) -> Any:
    """``frame[col]`` as a detail of the pandas validator shows one value (pipelines.rows.text:
    Python's str of the value, "" for none): Spark's own text but for times, which Python writes
    with microseconds only when there are some and, for a time with a zone (a UTC-adjusted
    Parquet timestamp; the session's zone is UTC, _READ_CONF), with its offset:
    "2025-11-01 01:55:03+00:00" where Spark's cast says "2025-11-01 01:55:03". (pandas formats
    the rows one check flags together: only a mix of whole and fractional seconds among them
    reads otherwise.)"""
    from pyspark.sql import functions as F
    from pyspark.sql.types import TimestampNTZType, TimestampType

    dtype = frame.schema[col].dataType
    if not isinstance(dtype, TimestampType | TimestampNTZType):
        return _text(col)
    value = F.col(col)
    micros = F.pmod(F.unix_micros(value.cast("timestamp")), F.lit(1_000_000))
    text = F.concat(
        F.date_format(value, "yyyy-MM-dd HH:mm:ss"),
        F.when(micros != 0, F.format_string(".%06d", micros)).otherwise(F.lit("")),
    )
    if isinstance(dtype, TimestampType):
        text = F.concat(text, F.date_format(value, "xxx"))
    return F.coalesce(text, F.lit(""))


def _strip(text: Any) -> Any:
    """Python's str.strip: Unicode white space at both ends."""
    from pyspark.sql import functions as F

    return F.regexp_replace(text, r"(?U)^\s+|\s+$", "")


def _whole_number(text: Any) -> Any:
    """pipelines.cells.whole_number_id's rule: a zero fraction dropped ("12347.0" -> "12347", a
    float id column written to CSV, or a Parquet double cast to text) while the number is below
    2**53, where a float still holds the integer the export meant; any other id as written."""
    from pyspark.sql import functions as F

    whole = F.regexp_extract(text, r"^([+-]?[0-9]+)\.0+$", 1)
    # try_cast: a whole number of more than 38 digits is an id as written, not a failed run
    exact = F.abs(whole.try_cast("decimal(38,0)")) < F.lit(2**53)
    return F.when((whole != "") & exact, whole).otherwise(text)


def _nfc(text: Any) -> Any:
    """Unicode NFC, as ``recsvc.idmap.normalize_id`` (pipelines.rows.normalized_ids) gives every
    id: ICU4J's ``Normalizer.compose(s, false)``, the ICU Spark ships for its collations, called in
    the JVM (a Python UDF would send every row through Python); ASCII ids, already NFC, skip it."""
    from pyspark.sql import functions as F

    composed = F.call_function(
        "reflect", F.lit("com.ibm.icu.text.Normalizer"), F.lit("compose"), text, F.lit(False)
    )
    return F.when(text.rlike(r"[^\x00-\x7F]"), composed).otherwise(text)


def _number(frame: Any, col: str) -> tuple[Any, Any, Any]:
    """(value, empty, unparsable) as pipelines.validate._numbers and _unparsable see a cell."""
    from pyspark.sql import functions as F
    from pyspark.sql.types import NumericType

    if isinstance(frame.schema[col].dataType, NumericType):
        value = F.col(col).cast("double")
        return value, value.isNull() | F.isnan(value), F.lit(False)
    text = _strip(_text(col))
    parsed = F.when(text.rlike(_NUMBER), text.try_cast("double"))
    empty = text == ""
    return parsed, empty, ~empty & parsed.isNull()


def _timestamp(frame: Any, col: str) -> Any:
    """A time as pipelines.rows.timestamps reads one: typed times as they are, anything else
    (text, and numbers too: pandas reads them as text, never as epoch seconds) by its text."""
    from pyspark.sql import functions as F
    from pyspark.sql.types import DateType, TimestampNTZType, TimestampType

    if isinstance(frame.schema[col].dataType, TimestampType | TimestampNTZType | DateType):
        return F.col(col).cast("timestamp")
    text = F.regexp_replace(_strip(_text(col)), rows.UTC_SUFFIX, "Z")
    return F.when(text.rlike(rows.ISO_TIMESTAMP), text.try_cast("timestamp"))


def _id_checks(frame: Any, col: str, max_bytes: int) -> dict[str, Any]:
    from pyspark.sql import functions as F

    ident = _strip(_text(col))
    nbytes = F.octet_length(ident)
    return {
        col: ident,
        f"{col}.ok": (nbytes > 0) & (nbytes <= max_bytes) & ident.rlike(_ID_CHARS),
        f"{col}.missing": nbytes == 0,
        f"{col}.too_long": (nbytes > max_bytes) & (nbytes > 0),
        f"{col}.bad_chars": (nbytes > 0) & (nbytes <= max_bytes) & ~ident.rlike(_ID_CHARS),
    }


def _parsed(frame: Any, settings: DataSettings, now: datetime, channels: tuple[str, ...]) -> dict[str, Any]:
    """Every value a rule looks at, as Spark columns over ``frame`` (the raw events)."""
    from pyspark.sql import functions as F
    from pyspark.sql.types import StringType

    c: dict[str, Any] = {}
    for col in EVENTS.columns:
        text = isinstance(frame.schema[col].dataType, StringType)
        c[f"utf8_bad.{col}"] = F.instr(F.col(col), REPLACEMENT_CHAR) > 0 if text else F.lit(False)
    c |= _id_checks(frame, "member_id", settings.max_id_length)
    c |= _id_checks(frame, "item_id", settings.max_id_length)
    c["etype"] = F.array_position(F.array(*map(F.lit, EVENT_TYPES)), _strip(_text("event_type"))) - 1
    c["channel"] = F.array_position(F.array(*map(F.lit, channels)), _strip(_text("channel"))) - 1
    c["channel_given"] = _strip(_text("channel")) != ""  # empty: not said, kept (as pandas does)
    c["ts"] = _timestamp(frame, "ts")
    c["latest"] = F.lit(rows.latest(now, settings).to_pydatetime()).cast("timestamp")
    c["earliest"] = F.lit(pd.Timestamp(EARLIEST_EVENT_TS).to_pydatetime()).cast("timestamp")
    quantity, q_empty, q_unparsable = _number(frame, "quantity")
    q = F.when(q_empty, F.lit(1.0)).otherwise(quantity)
    c["quantity"] = q
    # floor only inside 1..MAX_QUANTITY: it gives a long, which 1e20 or inf would overflow
    out_of_range = F.isnan(q) | (q < 1) | (q > MAX_QUANTITY)
    c["quantity.bad"] = q_unparsable | F.when(out_of_range, F.lit(True)).otherwise(q != F.floor(q))
    amount, a_empty, a_unparsable = _number(frame, "amount")
    c["amount"] = amount
    c["amount.bad"] = a_unparsable | (F.abs(amount) == float("inf"))
    purchase = c["etype"] == EVENT_TYPES.index("purchase")
    c["amount.missing"] = a_empty & ~a_unparsable & purchase
    return c


def check_events(
    spark: Any,
    raw: Any,
    settings: DataSettings,
    now: datetime,
    items: Any,
    members: pd.Series | None,
    channels: tuple[str, ...],
    day_offset_s: int = 0,
) -> Any:
    """``raw`` (:func:`read_events`) with each row's verdict: ``reason`` (the primary one, NULL for
    a clean row), ``problems`` and ``detail`` as pipelines.validate writes them, and the clean
    values: ``member_id`` (the trimmed id), ``item`` (its item row), ``etype``, ``ts`` (epoch
    seconds), ``channel`` (code), ``amount`` (float, 0 when empty); ``member_raw`` is the id as sent.

    Exact repeats are not marked yet: whether they are duplicates depends on the grain of the
    whole file's accepted times (pipelines.validate_events.time_grain), which :func:`load` reads
    from the persisted compact columns. ``_copy`` flags an accepted row that repeats an earlier
    accepted one (all seven values, and the order id when the file has one); ``_sub_minute``,
    ``_sub_day`` and ``_sub_day_offset`` say whether its time has seconds, a time of day, a time
    of day at the mapping's ``day_offset_s``; :func:`with_duplicates` marks them."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    item_rows = _spark_frame(
        spark,
        pd.DataFrame(
            {"_item_id": items.ids(range(len(items))), "i_row": np.arange(len(items), dtype=np.int32)}
        ),
    )
    frame = raw.withColumn("_member", _nfc(_whole_number(_strip(_text("member_id"))))).withColumn(
        "_item", _nfc(_whole_number(_strip(_text("item_id"))))
    )
    frame = frame.join(item_rows.hint("broadcast"), frame["_item"] == item_rows["_item_id"], "left")
    if members is not None:
        known = _spark_frame(spark, pd.DataFrame({"_known_id": members.to_numpy(dtype=str)}))
        frame = frame.join(known.hint("broadcast"), frame["_member"] == known["_known_id"], "left")
        m_known = F.col("_known_id").isNotNull()
    else:
        m_known = F.lit(True)
    c = _parsed(frame, settings, now, channels) | {"m_known": m_known}
    # Each parsed value once, as a column of its own: the rules, details and the duplicate key
    # then refer to columns, not to copies of the parsing expressions.
    names = {k: "_p_" + k.replace(".", "_") for k in c}
    frame = frame.select("*", *[expr.alias(names[k]) for k, expr in c.items()])
    c = {k: F.col(names[k]) for k in c} | {"i_row": F.col("i_row")}
    # Each rule's verdict, then each column's detail text (only where a rule on it failed), as
    # columns of their own too: written out inside the reason, detail and problems expressions
    # (24 rules, each detail quoting its value) they made one generated Java method over the JVM's
    # 64 KB limit, and Spark logged the failed compilation (hundreds of lines) on every run that
    # fetched a quarantine before falling back to its interpreter.
    flag_names = [f"_f{i}" for i in range(len(EVENT_RULES))]
    frame = frame.select(
        "*",
        *[
            F.coalesce(rule.bad(c), F.lit(False)).alias(n)
            for rule, n in zip(EVENT_RULES, flag_names, strict=True)
        ],
    )
    flags = [(rule, F.col(n)) for rule, n in zip(EVENT_RULES, flag_names, strict=True)]
    # The value as sent (clipped) where it is needed, then its repr: a column of its own between
    # them, so the repr's expression reads a column rather than its own copies of the value's.
    columns = list(dict.fromkeys(rule.column for rule in EVENT_RULES))
    values = []
    for col in columns:
        failed = reduce(operator.or_, [bad for rule, bad in flags if rule.column == col])
        values.append(F.when(failed, _clipped(_as_sent(frame, col))).alias(f"_v_{col}"))
    frame = frame.select("*", *values)
    texts = [F.concat(F.lit(f"{col}="), _quoted(F.col(f"_v_{col}"))).alias(f"_d_{col}") for col in columns]
    frame = frame.select("*", *texts)
    details = {rule: F.col(f"_d_{rule.column}") for rule, _ in flags}
    reason = F.coalesce(*[F.when(bad, F.lit(rule.reason)) for rule, bad in flags])
    detail = F.coalesce(*[F.when(bad, details[rule]) for rule, bad in flags])
    problems = F.concat_ws(
        "; ", *[F.when(bad, F.concat(F.lit(f"{rule.reason}: "), details[rule])) for rule, bad in flags]
    )
    raw_values = [F.col(col).alias(f"raw_{col}") for col in EVENTS.columns]
    has_orders = ORDER_ID in raw.columns
    # An order id is read as an id is (trimmed, NFC, "489434.0" is 489434), as pandas does.
    order_key = [_nfc(_whole_number(_strip(_text(ORDER_ID)))).alias("_order")] if has_orders else []
    checked = frame.select(
        *raw_values,
        "source_row",
        reason.alias("reason"),
        detail.alias("detail"),
        problems.alias("problems"),
        F.col("_member").alias("_mid"),
        F.col("i_row").alias("item"),
        c["etype"].cast("byte").alias("etype"),
        F.unix_micros(c["ts"]).alias("ts_us"),
        c["channel"].cast("byte").alias("channel_code"),
        # only a quantity that passed its rule is cast (1..MAX_QUANTITY): -inf, nan or 1e20 would
        # fail the whole query under ANSI casts, not just their row
        F.when(~c["quantity.bad"], c["quantity"].cast("short")).alias("quantity_n"),
        (F.coalesce(c["amount"], F.lit(0.0)) + F.lit(0.0)).alias("amount_n"),
        *order_key,
    )
    # An exact repeat of an earlier accepted row (all seven values, and the order id when the file
    # has one; the earliest source row stays).
    key = ["_mid", "item", "etype", "ts_us", "channel_code", "quantity_n", "amount_n"]
    key += ["_order"] if has_orders else []
    # among the accepted rows only, as pandas compares them: a quarantined row (channel "tv",
    # amount "abc") is no earlier copy of an accepted one with the same values
    accepted = F.col("reason").isNull()
    order = F.row_number().over(Window.partitionBy(accepted, *key).orderBy("source_row"))
    ts_us = F.col("ts_us")
    return checked.select(
        *[f"raw_{col}" for col in EVENTS.columns],
        "source_row",
        "reason",
        "detail",
        "problems",
        (accepted & (order > 1)).alias("_copy"),
        (ts_us % F.lit(MINUTE_US) != 0).alias("_sub_minute"),
        (ts_us % F.lit(DAY_US) != 0).alias("_sub_day"),
        ((ts_us + F.lit(day_offset_s * 1_000_000)) % F.lit(DAY_US) != 0).alias("_sub_day_offset"),
        F.col("raw_member_id").cast("string").alias("member_raw"),
        F.col("_mid").alias("member_id"),
        "item",
        "etype",
        F.floor(F.col("ts_us") / 1_000_000).cast("long").alias("ts"),
        F.col("channel_code").alias("channel"),
        F.col("amount_n").cast("float").alias("amount"),
    )


@dataclass(frozen=True)
class Copies:
    """What the exact repeats of a file are: its times' grain, whether it has order ids, how many
    accepted rows repeat an earlier one; duplicates or kept repeats by pandas' rule."""

    grain: str
    has_orders: bool
    repeats: int

    @property
    def duplicates(self) -> bool:
        return self.repeats > 0 and copies_are_duplicates(self.grain, self.has_orders)

    @classmethod
    def of(cls, compact: Any, has_orders: bool) -> Copies:
        from pyspark.sql import functions as F

        def any_of(col: str) -> Any:
            return F.max(F.col(col).cast("int")).alias(col)

        row = (
            compact.where("reason IS NULL")
            .agg(
                F.count("*").alias("n"),
                any_of("_sub_minute"),
                any_of("_sub_day"),
                any_of("_sub_day_offset"),
                F.sum(F.col("_copy").cast("long")).alias("repeats"),
            )
            .collect()[0]
        )
        n = int(row["n"])
        flags = [bool(row[c]) for c in ("_sub_minute", "_sub_day", "_sub_day_offset")]
        return cls(time_grain(n, *flags), has_orders, int(row["repeats"] or 0))


def with_duplicates(frame: Any, copies: Copies) -> Any:
    """``frame`` (checked, or its compact columns) with the repeats quarantined as
    ``duplicate_event`` when ``copies`` says they are duplicates, else kept as repeat events."""
    from pyspark.sql import functions as F

    if not copies.duplicates:
        return frame
    detail = duplicate_detail(copies.grain, copies.has_orders)
    copy = F.col("_copy")
    frame = frame.withColumn("reason", F.when(copy, F.lit(Reason.DUPLICATE_EVENT)).otherwise(F.col("reason")))
    if "detail" in frame.columns:
        frame = frame.withColumn("detail", F.when(copy, F.lit(detail)).otherwise(F.col("detail")))
        problems = F.lit(f"{Reason.DUPLICATE_EVENT}: {detail}")
        frame = frame.withColumn("problems", F.when(copy, problems).otherwise(F.col("problems")))
    return frame


def _clipped(text: Any) -> Any:
    """pipelines.rows.clip: at most _DETAIL_MAX characters, "…" the last when it cut."""
    from pyspark.sql import functions as F

    return F.when(
        F.length(text) > _DETAIL_MAX, F.concat(F.substring(text, 1, _DETAIL_MAX - 1), F.lit("…"))
    ).otherwise(text)


def _quoted(clipped: Any) -> Any:
    """Python's repr of a short (:func:`_clipped`) string, as pipelines.validate puts values in
    details."""
    from pyspark.sql import functions as F

    backslashes = F.regexp_replace(clipped, r"\\", r"\\\\")
    # Characters Python does not print (str.isprintable) go by their escapes; character by
    # character, in the rare text that has one.
    chars = F.regexp_extract_all(clipped, F.lit("(?s)."), 0)
    escaped = F.when(
        clipped.rlike(_UNPRINTABLE), F.array_join(F.transform(chars, _escaped_char), "")
    ).otherwise(backslashes)
    single = F.instr(clipped, "'") > 0
    double = F.instr(clipped, '"') > 0
    return F.when(single & ~double, F.concat(F.lit('"'), escaped, F.lit('"'))).otherwise(
        F.concat(F.lit("'"), F.regexp_replace(escaped, "'", r"\\'"), F.lit("'"))
    )


def _escaped_char(char: Any) -> Any:
    """One character as Python's repr writes it (the quotes aside)."""
    from pyspark.sql import functions as F

    code = F.lower(F.hex(F.encode(char, "UTF-32")))  # 8 hex digits, big-endian: the code point
    return (
        F.when(char == "\\", F.lit("\\\\"))
        .when(~char.rlike(_UNPRINTABLE), char)
        .when(char == "\t", F.lit("\\t"))
        .when(char == "\n", F.lit("\\n"))
        .when(char == "\r", F.lit("\\r"))
        .when(code.startswith("000000"), F.concat(F.lit("\\x"), F.substring(code, 7, 2)))
        .when(code.startswith("0000"), F.concat(F.lit("\\u"), F.substring(code, 5, 4)))
        .otherwise(F.concat(F.lit("\\U"), code))
    )


def quarantine_rows(checked: Any) -> pd.DataFrame:
    """The quarantined events in pipelines.validate's quarantine format (source_row, reason,
    detail, problems, then the row's values as sent), in file order.

    The values come with their own types (Parquet's times and numbers, CSV's text) and are
    written by the pandas validator's rule (:func:`pipelines.rows.quarantine_rows`), not Spark's
    cast: pandas writes a column of times or floats as a whole ("+00:00" on UTC times,
    microseconds on all of them once one has some), so the text follows from the same call on
    the same batches: the duplicates, then the other quarantined rows, as pandas checks them
    (one chunk of ``data.validate_chunk_rows``; over that, pandas formats chunk by chunk)."""
    from pyspark.sql.types import TimestampType

    bad = checked.where("reason IS NOT NULL").orderBy("source_row")
    raw = [bad[f"raw_{col}"].alias(col) for col in EVENTS.columns]
    pdf = _pandas(bad.select("source_row", "reason", "detail", "problems", *raw))
    values = pdf[list(EVENTS.columns)].copy()
    for col in EVENTS.columns:
        # Spark hands a zoned time over as a naive one in its session's zone (UTC, _READ_CONF);
        # pandas reads the Parquet file's UTC times with their zone
        if isinstance(bad.schema[f"raw_{col}"].dataType, TimestampType):
            times = pd.to_datetime(values[col])
            times = times.dt.tz_localize("UTC") if times.dt.tz is None else times.dt.tz_convert("UTC")
            values[col] = times.astype("datetime64[us, UTC]")
    parts = []
    duplicate = (pdf["reason"] == Reason.DUPLICATE_EVENT).to_numpy(dtype=bool)
    for batch in (duplicate, ~duplicate):
        if batch.any():
            parts.append(
                rows.quarantine_rows(
                    values.loc[batch],
                    pdf["source_row"].to_numpy(dtype=np.int64)[batch],
                    pdf["reason"].to_numpy(dtype=object)[batch],
                    pdf["detail"].to_numpy(dtype=object)[batch],
                    pdf["problems"].to_numpy(dtype=object)[batch],
                )
            )
    if not parts:
        empty = np.zeros(0, dtype=object)
        return rows.quarantine_rows(values, np.zeros(0, dtype=np.int64), empty, empty, empty)
    quarantine = pd.concat(parts, ignore_index=True)
    return quarantine.sort_values("source_row", kind="stable").reset_index(drop=True)


def _spark_frame(spark: Any, pdf: pd.DataFrame) -> Any:
    from training.spark_als import quiet_pandas_check

    with quiet_pandas_check():
        return spark.createDataFrame(pdf)


def _pandas(frame: Any) -> pd.DataFrame:
    from training.spark_als import quiet_pandas_check

    with quiet_pandas_check():
        return frame.toPandas()
