"""The sink's files: an atomic Parquet write and the ``flock`` that orders writes and purges
(``recsvc.eventlog.sink``, ``recsvc.eventlog.erasure``)."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq


def write_atomically(table: pa.Table, path: Path) -> None:
    """Temporary file in the same folder, fsync, rename, fsync the folder: all or nothing."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".tmp-{path.name}"
    pq.write_table(table, tmp)
    fd = os.open(tmp, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
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
