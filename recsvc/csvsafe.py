"""CSV files a spreadsheet can open without running anything in them (formula injection).

Every CSV the project writes (validation's quarantine files, the outreach import's refused rows,
the load test's figures) goes through this module. The rule is OWASP's "CSV Injection" one:

- a text cell that starts with ``=``, ``+``, ``-``, ``@``, a tab or a carriage return gets a single
  quote in front (``'=cmd|' /C calc'!A0``), so a spreadsheet shows it as text instead of
  evaluating it;
- every text cell is quoted (``csv.QUOTE_NONNUMERIC``), so a separator or quote inside a cell
  cannot start a new one.

Numbers are never touched: a numeric cell (int, float) is written as is, and a text cell that is a
plain decimal number (``-5``, ``-1.5e3``: a spreadsheet reads it as a number, not a formula) keeps
its sign. ``-2+3`` is not a plain number and is escaped. To get the original text back from an
escaped cell, drop the one leading quote (``unescape``).
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

import pandas as pd

TRIGGERS = ("=", "+", "-", "@", "\t", "\r")
QUOTING = csv.QUOTE_NONNUMERIC
_PLAIN_NUMBER = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")


def escape_cell(value: Any) -> Any:
    """``value`` made safe for a spreadsheet: text starting with a trigger gets a leading quote."""
    if not isinstance(value, str) or not value.startswith(TRIGGERS):
        return value
    if _PLAIN_NUMBER.fullmatch(value):
        return value
    return "'" + value


def unescape(value: str) -> str:
    """The text ``escape_cell`` was given (for replaying a quarantined row)."""
    if value.startswith("'") and value[1:].startswith(TRIGGERS):
        return value[1:]
    return value


def escape_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """A copy with every text (object or string) column escaped; numeric columns unchanged."""
    out = frame.copy()
    for col in out.columns:
        s = out[col]
        if pd.api.types.is_object_dtype(s.dtype) or pd.api.types.is_string_dtype(s.dtype):
            out[col] = s.map(escape_cell, na_action="ignore")
    return out


def write_frame(frame: pd.DataFrame, path: Path) -> None:
    """``frame.to_csv(path, index=False)`` with every text cell escaped and quoted."""
    escape_frame(frame).to_csv(path, index=False, quoting=csv.QUOTE_NONNUMERIC)


class SafeWriter:
    """A ``csv.writer`` whose rows are escaped cell by cell; same ``writerow``/``writerows``."""

    def __init__(self, fh: IO[str], **kwargs: Any) -> None:
        kwargs.setdefault("quoting", QUOTING)
        self._writer = csv.writer(fh, **kwargs)

    def writerow(self, row: Iterable[Any]) -> Any:
        return self._writer.writerow([escape_cell(v) for v in row])

    def writerows(self, rows: Iterable[Iterable[Any]]) -> None:
        for row in rows:
            self.writerow(row)


class SafeDictWriter:
    """A ``csv.DictWriter`` whose values are escaped; same ``writeheader``/``writerow(s)``."""

    def __init__(self, fh: IO[str], fieldnames: Sequence[str], **kwargs: Any) -> None:
        kwargs.setdefault("quoting", QUOTING)
        self._writer = csv.DictWriter(fh, fieldnames=fieldnames, **kwargs)

    def writeheader(self) -> Any:
        return self._writer.writeheader()

    def writerow(self, row: Mapping[str, Any]) -> Any:
        return self._writer.writerow({k: escape_cell(v) for k, v in row.items()})

    def writerows(self, rows: Iterable[Mapping[str, Any]]) -> None:
        for row in rows:
            self.writerow(row)
