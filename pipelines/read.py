"""Reading the contract's tables from a data folder, CSV or Parquet, before any row is judged.

Reads ``<dir>/<table>.parquet``, ``<dir>/<table>.csv`` or ``<dir>/<table>.csv.gz``. Returns the
rows as read (CSV: every column as text, empty cells as ""; Parquet: its own column types) and
raises ``DataContractError`` when the file as a whole is unusable: absent, ambiguous, empty
(no header), unreadable, or with missing or unexpected columns. Row-level problems, including
bytes that are not UTF-8, are left to ``pipelines.validate`` so they are quarantined per row.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from pipelines.contract import TableSpec
from recsvc.errors import DataContractError

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


def _read_csv(path: Path) -> pd.DataFrame:
    if path.stat().st_size == 0:
        raise DataContractError(f"{path} is empty: expected a header row naming the columns")
    try:
        return pd.read_csv(
            path,
            dtype=str,
            keep_default_na=False,  # an empty cell is "", never guessed to be NaN
            encoding="utf-8-sig",  # tolerate a byte-order mark from spreadsheet exports
            encoding_errors="replace",
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
    import pyarrow.parquet as pq

    try:
        return list(pq.read_schema(path).names)
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
