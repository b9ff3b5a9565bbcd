"""Reading the contract's tables from a data folder, CSV or Parquet, before any row is judged.

Reads ``<dir>/<table>.parquet``, ``<dir>/<table>.csv`` or ``<dir>/<table>.csv.gz``. Returns the
rows as read (CSV: every column as text, empty cells as ""; Parquet: its own column types) and
raises ``DataContractError`` when the file as a whole is unusable: absent, ambiguous, empty
(no header), unreadable, not valid text in its encoding (``pipelines.encoding``: one message
naming the byte offset, never thousands of quarantined rows), or with missing or unexpected
columns. A mapping file (``pipelines.mapping``) renames and maps columns here, before any check.
Row-level problems are left to ``pipelines.validate`` so they are quarantined per row.

``read_table`` returns a whole table (catalog, members); ``read_chunks`` streams one in chunks
of at most N rows (events: 50M rows never sit in memory as text at once), with the text columns
named in ``dictionary`` as categoricals, so each distinct value is held and checked once per chunk.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from pipelines.contract import TableSpec
from pipelines.mapping import Mapping
from recsvc.errors import DataContractError

if TYPE_CHECKING:
    import pyarrow as pa

log = logging.getLogger(__name__)

SUFFIXES = (".parquet", ".csv", ".csv.gz")
# Files are decoded strictly (pipelines.encoding); a U+FFFD that is in the text itself marks damage
# done by an earlier lossy conversion, and its row is quarantined as invalid_utf8.
REPLACEMENT_CHAR = "\ufffd"


def find_table_file(data_dir: Path, spec: TableSpec) -> Path:
    """The one file holding ``spec``'s table in ``data_dir``."""
    if not data_dir.is_dir():
        raise DataContractError(f"data folder not found: {data_dir}")
    found = [data_dir / f"{spec.name}{s}" for s in SUFFIXES if (data_dir / f"{spec.name}{s}").is_file()]
    if not found:
        names = ", ".join(f"{spec.name}{s}" for s in SUFFIXES)
        raise DataContractError(f"{data_dir} has no {spec.name} table (looked for {names})")
    if len(found) > 1:
        raise DataContractError(
            f"{data_dir} has more than one {spec.name} file ({', '.join(p.name for p in found)}); "
            "keep exactly one"
        )
    return found[0]


def read_table(
    path: Path, spec: TableSpec, encoding: str = "utf-8", mapping: Mapping | None = None
) -> pd.DataFrame:
    """All rows of one table file, with exactly the contract's columns in contract order.
    ``encoding`` is a CSV's codec (``pipelines.encoding.resolve_encoding``)."""
    if path.name.endswith(".parquet"):
        columns = _parquet_columns(path)
        renames, drop = _renames(spec, columns, mapping)
        _check_columns(path, spec, _mapped_header(spec, columns, renames, drop, mapping))
        wanted = [c for c in columns if c not in drop and renames.get(c, c) in spec.columns]
        df = _read_parquet(path, wanted).rename(columns=renames)
    else:
        df = _read_csv(path, encoding=encoding)
        renames, drop = _renames(spec, list(df.columns), mapping)
        _check_columns(path, spec, _mapped_header(spec, list(df.columns), renames, drop, mapping))
        df = df.drop(columns=drop).rename(columns=renames)
    if mapping is not None:
        df = mapping.apply(spec.name, df)
    for col in spec.optional:
        if col not in df.columns:
            df[col] = ""
    log.info("read table=%s file=%s rows=%d", spec.name, path, len(df))
    return df[list(spec.columns)].reset_index(drop=True)


def count_rows(path: Path) -> int | None:
    """The table's row count if the file says it without being read (Parquet), else None."""
    if not path.name.endswith(".parquet"):
        return None
    import pyarrow.parquet as pq

    try:
        return int(pq.read_metadata(path).num_rows)
    except Exception as exc:  # pyarrow raises several unrelated types for corrupt files
        raise DataContractError(f"cannot read {path} as Parquet: {exc}") from exc


def read_chunks(
    path: Path,
    spec: TableSpec,
    chunk_rows: int,
    dictionary: tuple[str, ...] = (),
    encoding: str = "utf-8",
    mapping: Mapping | None = None,
) -> Iterator[pd.DataFrame]:
    """The table's rows in chunks of at most ``chunk_rows``, contract columns in contract order.

    Columns are checked now, before the first chunk; a malformed CSV line or corrupt Parquet page
    raises ``DataContractError`` when its chunk is reached. Text columns named in ``dictionary``
    come as categoricals (Parquet: straight from the file's dictionary pages). At least one chunk
    is always produced (an empty frame for a table without rows).
    """
    if path.name.endswith(".parquet"):
        return _parquet_chunks(path, spec, chunk_rows, dictionary, mapping)
    return _csv_chunks(path, spec, chunk_rows, dictionary, encoding, mapping)


def _parquet_chunks(
    path: Path, spec: TableSpec, chunk_rows: int, dictionary: tuple[str, ...], mapping: Mapping | None
) -> Iterator[pd.DataFrame]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = _parquet_schema(path)
    renames, drop = _renames(spec, list(schema.names), mapping)
    _check_columns(path, spec, _mapped_header(spec, list(schema.names), renames, drop, mapping), spec.extra)
    columns = [c for c in schema.names if c not in drop and renames.get(c, c) in spec.columns]
    columns += [
        c for c in schema.names if c not in drop and c not in columns and renames.get(c, c) in spec.extra
    ]
    as_dict = [c for c in dictionary if c in columns and _is_text_type(schema.field(c).type)]
    try:
        file = pq.ParquetFile(path, read_dictionary=as_dict)
    except Exception as exc:  # pyarrow raises several unrelated types for corrupt files
        raise DataContractError(f"cannot read {path}: {exc}") from exc

    def chunks() -> Iterator[pd.DataFrame]:
        mapper = {pa.bool_(): pd.BooleanDtype()}.get
        yielded = False
        try:
            # One row group at a time: one iterator over the whole file keeps growing its buffers
            # (measured: arrow memory 100 MB -> 245 MB over 20M events; flat this way).
            for group in range(file.num_row_groups):
                for batch in file.iter_batches(batch_size=chunk_rows, row_groups=[group], columns=columns):
                    yielded = True
                    df = batch.to_pandas(types_mapper=mapper).rename(columns=renames)
                    yield _in_contract_order(_mapped(df, spec, mapping), spec)
            if not yielded:
                empty = file.schema_arrow.empty_table().select(columns)
                df = empty.to_pandas(types_mapper=mapper).rename(columns=renames)
                yield _in_contract_order(_mapped(df, spec, mapping), spec)
        except (pa.ArrowException, OSError) as exc:
            raise _cannot_read(path, schema, columns, exc) from exc

    return chunks()


def _csv_chunks(
    path: Path,
    spec: TableSpec,
    chunk_rows: int,
    dictionary: tuple[str, ...],
    encoding: str,
    mapping: Mapping | None,
) -> Iterator[pd.DataFrame]:
    if path.stat().st_size == 0:
        raise DataContractError(f"{path} is empty: expected a header row naming the columns")
    names = _header_names(path, encoding)
    file_header = list(_as_named(path, _pandas_csv(path, encoding, nrows=0), names).columns)
    # The same reading options as _read_csv, chunk by chunk.
    renames, drop = _renames(spec, file_header, mapping)
    header = _mapped_header(spec, file_header, renames, drop, mapping)
    _check_columns(path, spec, header, spec.extra)
    as_categories = [c for c in header if c in dictionary]

    def chunks() -> Iterator[pd.DataFrame]:
        yielded = False
        try:
            with _pandas_csv(path, encoding, chunksize=chunk_rows) as reader:
                for df in reader:
                    yielded = True
                    df = _as_named(path, df, names)
                    df = _mapped(df.drop(columns=drop).rename(columns=renames), spec, mapping)
                    # Not read_csv's dtype="category": it turns "12.50" into 12.5 and "007" into 7.
                    for col in as_categories:
                        df[col] = df[col].astype("category")
                    yield _in_contract_order(df, spec)
        except UnicodeDecodeError as exc:
            raise DataContractError(
                f"{path} is not valid {encoding} text ({exc.reason}); see docs/data.md, Encodings"
            ) from exc
        except (pd.errors.ParserError, OSError, EOFError) as exc:
            raise DataContractError(f"cannot parse {path} as CSV: {exc}") from exc
        if not yielded:
            empty = pd.DataFrame({c: pd.Series([], dtype="str") for c in header})
            yield _in_contract_order(_mapped(empty, spec, mapping), spec)

    return chunks()


def _renames(
    spec: TableSpec, columns: list[str], mapping: Mapping | None
) -> tuple[dict[str, str], list[str]]:
    if mapping is None:
        return {}, []
    return mapping.rename(spec.name, [str(c) for c in columns])


def _mapped_header(
    spec: TableSpec, columns: list[str], renames: dict[str, str], drop: list[str], mapping: Mapping | None
) -> list[str]:
    """The header as the contract will see it: renamed, ignored columns gone, and columns the
    mapping gives a default for counted as present."""
    header = [renames.get(str(c), str(c)) for c in columns if c not in drop]
    if mapping is not None:
        header += [c for c in mapping.table(spec.name).defaults if c not in header]
    return header


def _mapped(df: pd.DataFrame, spec: TableSpec, mapping: Mapping | None) -> pd.DataFrame:
    return df if mapping is None else mapping.apply(spec.name, df)


def _in_contract_order(df: pd.DataFrame, spec: TableSpec) -> pd.DataFrame:
    """The contract's columns in order, then the extra ones the file has (TableSpec.extra)."""
    for col in spec.optional:
        if col not in df.columns:
            df[col] = ""
    return df[[*spec.columns, *(c for c in spec.extra if c in df.columns)]]


def _read_csv(path: Path, nrows: int | None = None, encoding: str = "utf-8") -> pd.DataFrame:
    """The file's rows as text, under the header row's own names (:func:`_as_named`)."""
    if path.stat().st_size == 0:
        raise DataContractError(f"{path} is empty: expected a header row naming the columns")
    df = _pandas_csv(path, encoding, nrows=nrows)
    return _as_named(path, df, _header_names(path, encoding))


def _pandas_csv(path: Path, encoding: str, **options: Any) -> Any:
    """``pd.read_csv`` with the reader's options (``options``: nrows, header, chunksize), its
    errors as DataContractError."""
    try:
        return pd.read_csv(
            path,
            dtype=str,
            keep_default_na=False,  # an empty cell is "", never guessed to be NaN
            # utf-8-sig tolerates a byte-order mark from spreadsheet exports; every byte was
            # checked by pipelines.encoding, so strict decoding cannot fail on a row
            encoding="utf-8-sig" if encoding == "utf-8" else encoding,
            encoding_errors="strict",
            skipinitialspace=False,
            **options,
        )
    except pd.errors.EmptyDataError as exc:
        raise DataContractError(f"{path} is empty: expected a header row naming the columns") from exc
    except UnicodeDecodeError as exc:
        raise DataContractError(
            f"{path} is not valid {encoding} text ({exc.reason}); see docs/data.md, Encodings"
        ) from exc
    except (pd.errors.ParserError, OSError, EOFError) as exc:
        raise DataContractError(f"cannot parse {path} as CSV: {exc}") from exc


def _header_names(path: Path, encoding: str) -> list[str]:
    """The header row's names as the file writes them: pandas names a repeated ``amount``
    ``amount.1`` and an empty name ``Unnamed: 7``, names that are not in the file."""
    first = _pandas_csv(path, encoding, header=None, nrows=1)
    return [str(c) for c in first.iloc[0]] if len(first) else []


def _as_named(path: Path, df: pd.DataFrame, names: list[str]) -> pd.DataFrame:
    """``df`` under the header's own ``names`` (a repeated name stays repeated, so the column
    check names it). A column without a name whose every cell is empty (an export ending each
    line with a comma) is dropped; one holding values stops the file, naming its position."""
    if len(names) != len(df.columns):
        return df  # not a header pandas read as this one: keep its names
    unnamed = [i for i, name in enumerate(names) if not name.strip()]
    for i in unnamed:
        filled = df.iloc[:, i].str.strip() != ""
        if filled.any():
            row = int(filled.to_numpy().argmax())
            after = f" (after {names[i - 1]!r})" if i and names[i - 1].strip() else ""
            raise DataContractError(
                f"{path} has an empty column name at position {i + 1}{after}, and that column holds "
                f"values ({df.iloc[row, i]!r} in data row {int(df.index[row]) + 1}); name it in "
                "the header row, or delete the column (see docs/data.md)"
            )
    if unnamed:
        keep = [i for i in range(len(names)) if i not in unnamed]
        df = df.iloc[:, keep]
        names = [names[i] for i in keep]
    df.columns = pd.Index(names)
    return df


def _read_parquet(path: Path, columns: list[str]) -> pd.DataFrame:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path, columns=columns)
        # Booleans with nulls (consent never answered) stay booleans instead of becoming objects.
        return table.to_pandas(types_mapper={pa.bool_(): pd.BooleanDtype()}.get)
    except Exception as exc:  # pyarrow raises several unrelated types for corrupt files
        raise _cannot_read(path, _parquet_schema(path), columns, exc) from exc


def _cannot_read(path: Path, schema: pa.Schema, columns: list[str], exc: Exception) -> DataContractError:
    """Arrow's error for a Parquet file, with the column it is about when that is a nested one:
    Arrow says "Unsupported cast from struct<a: int64> to large_utf8" without naming it."""
    import pyarrow as pa

    nested = [
        schema.field(c) for c in columns if c in schema.names and pa.types.is_nested(schema.field(c).type)
    ]
    # the one the error names; else every nested column when it names a nested type at all
    nested = [f for f in nested if str(f.type) in str(exc)] or [
        f for f in nested if str(f.type).split("<", 1)[0] + "<" in str(exc)
    ]
    if not nested:
        return DataContractError(f"cannot read {path}: {exc}")
    named = ", ".join(f"{f.name!r} is of type {f.type}" for f in nested)
    return DataContractError(
        f"cannot read {path}: column {named}, a list or struct where a plain value (text, number, "
        f"time) is expected; write that column as plain values ({exc})"
    )


def _parquet_columns(path: Path) -> list[str]:
    return list(_parquet_schema(path).names)


def _parquet_schema(path: Path) -> pa.Schema:
    import pyarrow.parquet as pq

    try:
        return pq.read_schema(path)
    except Exception as exc:
        raise DataContractError(f"cannot read {path} as Parquet: {exc}") from exc


def _check_columns(path: Path, spec: TableSpec, columns: list[str], extra: tuple[str, ...] = ()) -> None:
    """Stop on missing, unexpected or repeated columns; ``extra`` are the spec's extra columns
    this reader takes (TableSpec.extra: the chunked pandas reader of events)."""
    present = [str(c) for c in columns]
    missing = [c for c in spec.required if c not in present]
    unexpected = [c for c in present if c not in spec.columns and c not in extra]
    duplicated = sorted({c for c in present if present.count(c) > 1})
    if not (missing or unexpected or duplicated):
        return
    parts = []
    if missing:
        parts.append(f"missing columns: {', '.join(missing)}")
    if unexpected:
        parts.append(f"unexpected columns: {', '.join(repr(c) for c in unexpected)}")
    if duplicated:
        parts.append(f"repeated columns: {', '.join(duplicated)}")
    also = f"; may add: {', '.join(extra)}" if extra else ""
    raise DataContractError(
        f"{path} has the wrong columns for the {spec.name} table; {'; '.join(parts)}. "
        f"Expected: {', '.join(spec.columns)}{also} (see docs/data.md)"
    )


def _is_text_type(arrow_type: pa.DataType) -> bool:
    import pyarrow as pa

    return bool(pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type))
