"""The sink's files: an atomic Parquet write and the ``flock`` that orders writes and purges
(``recsvc.eventlog.sink``, ``recsvc.eventlog.erasure``)."""

from __future__ import annotations

import fcntl
import logging
import os
from datetime import date
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from recsvc.errors import DataContractError

log = logging.getLogger(__name__)


def log_parts(log_dir: Path, kind: str, since: date | None = None, until: date | None = None) -> list[Path]:
    """The sink's files of ``kind`` for the days [since, until], in order. A folder that is not
    ``date=YYYY-MM-DD`` is none of the sink's: skipped, with a warning naming it."""
    out = []
    for f in sorted((Path(log_dir) / f"kind={kind}").glob("date=*/part-*.parquet")):
        try:
            day = date.fromisoformat(f.parent.name.removeprefix("date="))
        except ValueError:
            log.warning("event=eventlog_stray_folder path=%s not date=YYYY-MM-DD: skipped", f.parent)
            continue
        if (since is None or day >= since) and (until is None or day <= until):
            out.append(f)
    return out


def read_parts(files: list[Path], schema: pa.Schema) -> pa.Table:
    """The files as one table of ``schema``; DataContractError naming a file that is not one of
    the sink's (empty, not Parquet, other columns): nothing is left out unsaid."""
    tables = []
    for f in files:
        try:
            table = pq.read_table(f)
            if not set(schema.names) & set(table.column_names):
                raise ValueError(f"none of its columns {table.column_names[:5]} is the log's")
            # a column the file lacks (written before the schema had it) reads as null
            have = set(table.column_names)
            columns = [
                table.column(f.name).cast(f.type) if f.name in have else pa.nulls(len(table), f.type)
                for f in schema
            ]
            tables.append(pa.Table.from_arrays(columns, schema=schema))
        except (pa.ArrowException, OSError, KeyError, ValueError) as exc:
            raise DataContractError(
                f"{f} is not a file of the event log's {schema.names[:3]}... schema "
                f"({type(exc).__name__}: {str(exc)[:160]}); move it out of the log folder"
            ) from None
    return pa.concat_tables(tables) if tables else schema.empty_table()


def write_atomically(table: pa.Table, path: Path) -> None:
    """Temporary file in the same folder, fsync, rename, fsync the folder: all or nothing."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".tmp-{path.name}"
    try:
        pq.write_table(table, tmp)
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # a full disk leaves no half file behind
        raise
    dfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


class FileLock:
    """``flock`` on the sink's lock file for a ``with`` block (no-op before ``prepare``)."""

    def __init__(self, fd: int | None, how: int) -> None:
        self._fd = fd
        self._how = how

    def __enter__(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, self._how)

    def __exit__(self, *_: object) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
