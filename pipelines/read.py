"""Reading the contract's tables from a data folder, CSV or Parquet, before any row is judged.

Reads ``<dir>/<table>.parquet``, ``<dir>/<table>.csv`` or ``<dir>/<table>.csv.gz``. Returns the
rows as read (CSV: every column as text, empty cells as ""; Parquet: its own column types) and
raises ``DataContractError`` when the file as a whole is unusable: absent, ambiguous, empty
(no header), unreadable, or with missing or unexpected columns. Row-level problems, including
bytes that are not UTF-8, are left to ``pipelines.validate`` so they are quarantined per row.

``read_table`` returns a whole table (catalog, members); ``read_chunks`` streams one in chunks
of at most N rows (events: 50M rows never sit in memory as text at once), with the text columns
named in ``dictionary`` as categoricals, so each distinct value is held and checked once per chunk.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from pipelines.contract import TableSpec
from recsvc.errors import DataContractError

if TYPE_CHECKING:
    import pyarrow as pa

log = logging.getLogger(__name__)

SUFFIXES = (".parquet", ".csv", ".csv.gz")
# Invalid UTF-8 bytes are decoded to U+FFFD so the row can be quarantined as invalid_utf8
# instead of failing the whole file; pyarrow-backed strings cannot carry the raw bytes.
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


def read_table(path: Path, spec: TableSpec) -> pd.DataFrame:
    """All rows of one table file, with exactly the contract's columns in contract order."""
    if path.name.endswith(".parquet"):
        columns = _parquet_columns(path)
        _check_columns(path, spec, columns)
        df = _read_parquet(path, [c for c in spec.columns if c in columns])
    else:
        df = _read_csv(path)
        _check_columns(path, spec, list(df.columns))
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
    path: Path, spec: TableSpec, chunk_rows: int, dictionary: tuple[str, ...] = ()
) -> Iterator[pd.DataFrame]:
    """The table's rows in chunks of at most ``chunk_rows``, contract columns in contract order.

    Columns are checked now, before the first chunk; a malformed CSV line or corrupt Parquet page
    raises ``DataContractError`` when its chunk is reached. Text columns named in ``dictionary``
    come as categoricals (Parquet: straight from the file's dictionary pages). At least one chunk
    is always produced (an empty frame for a table without rows).
    """
    if path.name.endswith(".parquet"):
        return _parquet_chunks(path, spec, chunk_rows, dictionary)
    return _csv_chunks(path, spec, chunk_rows, dictionary)


def _parquet_chunks(
    path: Path, spec: TableSpec, chunk_rows: int, dictionary: tuple[str, ...]
) -> Iterator[pd.DataFrame]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = _parquet_schema(path)
    _check_columns(path, spec, list(schema.names))
    columns = [c for c in spec.columns if c in schema.names]
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
                    yield _in_contract_order(batch.to_pandas(types_mapper=mapper), spec)
            if not yielded:
                empty = file.schema_arrow.empty_table().select(columns)
                yield _in_contract_order(empty.to_pandas(types_mapper=mapper), spec)
        except (pa.ArrowException, OSError) as exc:
            raise DataContractError(f"cannot read {path}: {exc}") from exc

    return chunks()


def _csv_chunks(
    path: Path, spec: TableSpec, chunk_rows: int, dictionary: tuple[str, ...]
) -> Iterator[pd.DataFrame]:
    header = list(_read_csv(path, nrows=0).columns)
    # The same reading options as _read_csv, chunk by chunk.
    _check_columns(path, spec, header)
    as_categories = [c for c in header if c in dictionary]

    def chunks() -> Iterator[pd.DataFrame]:
        yielded = False
        try:
            with pd.read_csv(
                path,
                dtype=str,
                chunksize=chunk_rows,
                keep_default_na=False,
                encoding="utf-8-sig",
                encoding_errors="replace",
            ) as reader:
                for df in reader:
                    yielded = True
                    # Not read_csv's dtype="category": it turns "12.50" into 12.5 and "007" into 7.
                    for col in as_categories:
                        df[col] = df[col].astype("category")
                    yield _in_contract_order(df, spec)
        except (pd.errors.ParserError, OSError, EOFError) as exc:
            raise DataContractError(f"cannot parse {path} as CSV: {exc}") from exc
        if not yielded:
            yield _in_contract_order(pd.DataFrame({c: pd.Series([], dtype="str") for c in header}), spec)

    return chunks()


def _in_contract_order(df: pd.DataFrame, spec: TableSpec) -> pd.DataFrame:
    for col in spec.optional:
        if col not in df.columns:
            df[col] = ""
    return df[list(spec.columns)]


def _read_csv(path: Path, nrows: int | None = None) -> pd.DataFrame:
    if path.stat().st_size == 0:
        raise DataContractError(f"{path} is empty: expected a header row naming the columns")
    try:
        return pd.read_csv(
            path,
            dtype=str,
            nrows=nrows,
            keep_default_na=False,  # an empty cell is "", never guessed to be NaN
            encoding="utf-8-sig",  # tolerate a byte-order mark from spreadsheet exports
            encoding_errors="replace",  # bad bytes become U+FFFD: quarantined per row, not per file
            skipinitialspace=False,
        )
    except pd.errors.EmptyDataError as exc:
        raise DataContractError(f"{path} is empty: expected a header row naming the columns") from exc
    except (pd.errors.ParserError, OSError, EOFError) as exc:
        raise DataContractError(f"cannot parse {path} as CSV: {exc}") from exc


def _read_parquet(path: Path, columns: list[str]) -> pd.DataFrame:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path, columns=columns)
    except Exception as exc:  # pyarrow raises several unrelated types for corrupt files
        raise DataContractError(f"cannot read {path}: {exc}") from exc
    # Booleans with nulls (consent never answered) stay booleans instead of becoming objects.
    return table.to_pandas(types_mapper={pa.bool_(): pd.BooleanDtype()}.get)


def _parquet_columns(path: Path) -> list[str]:
    return list(_parquet_schema(path).names)


def _parquet_schema(path: Path) -> pa.Schema:
    import pyarrow.parquet as pq

    try:
        return pq.read_schema(path)
    except Exception as exc:
        raise DataContractError(f"cannot read {path} as Parquet: {exc}") from exc


def _check_columns(path: Path, spec: TableSpec, columns: list[str]) -> None:
    present = [str(c) for c in columns]
    missing = [c for c in spec.required if c not in present]
    unexpected = [c for c in present if c not in spec.columns]
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
    raise DataContractError(
        f"{path} has the wrong columns for the {spec.name} table; {'; '.join(parts)}. "
        f"Expected: {', '.join(spec.columns)} (see docs/data.md)"
    )


def _is_text_type(arrow_type: pa.DataType) -> bool:
    import pyarrow as pa

    return bool(pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type))
