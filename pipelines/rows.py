"""Row verdicts of the data contract: one table's result (clean rows and quarantined ones with
their reasons), the record of every check a row fails (:class:`Verdicts`), and the cell parsers
and checks the tables share (ids, labels, text, numbers, booleans, time stamps, duplicates).
Used by :mod:`pipelines.validate_reference` and :mod:`pipelines.validate_events`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipelines.cells import as_text, cell_text, inexact_ids, whole_number, whole_number_id
from pipelines.contract import (
    FEATURED_SEPARATOR,
    FIXES,
    MAX_LABEL_LENGTH,
    Reason,
    TableSpec,
)
from pipelines.read import REPLACEMENT_CHAR
from recsvc.bounds import CONTROL_CHARACTERS
from recsvc.idmap import ID_PATTERN, id_chars_ok
from recsvc.settings import DataSettings

log = logging.getLogger(__name__)


_TRUE = frozenset({"true", "1", "yes", "y", "t"})
_FALSE = frozenset({"false", "0", "no", "n", "f"})
_DETAIL_MAX = 80
_EXAMPLES = 3  # example rows per reason in the summary

# id_status's answers for a bad id (below 0: a row number or -1 may stand beside them).
ID_MISSING, ID_TOO_LONG, ID_BAD_CHARS = -2, -3, -4


@dataclass
class TableResult:
    """One table after validation."""

    name: str
    source: Path | None  # None: the table was absent and is implied (members from the events)
    rows_read: int
    clean: pd.DataFrame
    # source_row (0-based data row in the file), reason (the primary one), detail, problems
    # (every failed check: "reason: column='value'" joined by "; "), then the row's values as text.
    quarantine: pd.DataFrame
    encoding: str | None = None  # a CSV's encoding as read
    # What the user should know that is no quarantined row (identical date-only events kept as
    # repeats); in summary.json and logged
    notes: list[str] = field(default_factory=list)

    @property
    def reason_counts(self) -> dict[str, int]:
        if self.quarantine.empty:
            return {}
        counts = self.quarantine["reason"].value_counts()
        return {str(k): int(v) for k, v in sorted(counts.items())}

    @property
    def quarantined_share(self) -> float:
        return len(self.quarantine) / self.rows_read if self.rows_read else 0.0

    def problem_summary(self) -> dict[str, dict[str, Any]]:
        """Per reason (primary or not): rows with it, example values and the fix."""
        if self.quarantine.empty or "problems" not in self.quarantine:
            return {}
        out: dict[str, dict[str, Any]] = {}
        for row, problems in zip(
            self.quarantine["source_row"].to_numpy(), self.quarantine["problems"].to_numpy(), strict=True
        ):
            for problem in str(problems).split("; "):
                code, _, detail = problem.partition(": ")
                entry = out.setdefault(code, {"rows": 0, "examples": [], "fix": FIXES.get(code, "")})
                entry["rows"] += 1
                if len(entry["examples"]) < _EXAMPLES:
                    entry["examples"].append(f"row {int(row)}: {detail}" if detail else f"row {int(row)}")
        return dict(sorted(out.items(), key=lambda kv: (-kv[1]["rows"], kv[0])))

    def summary(self) -> dict[str, Any]:
        return {
            "file": str(self.source) if self.source is not None else None,
            "encoding": self.encoding,
            "rows_read": self.rows_read,
            "rows_clean": len(self.clean),
            "rows_quarantined": len(self.quarantine),
            "reasons": self.reason_counts,
            "problems": self.problem_summary(),
            "notes": self.notes,
        }


class Verdicts:
    """The first failing check per row (its reason; later checks never overwrite it), and every
    check each row fails (its problems)."""

    def __init__(self, raw: pd.DataFrame) -> None:
        self.raw = raw
        n = len(raw)
        self.reason = np.full(n, None, dtype=object)
        self.detail = np.full(n, None, dtype=object)
        self.problems = np.full(n, "", dtype=object)
        self.ok = np.ones(n, dtype=bool)

    def flag(
        self, bad: pd.Series | np.ndarray, code: str, column: str | None = None, detail: str | None = None
    ) -> None:
        every = np.asarray(bad, dtype=bool)
        if not every.any():
            return
        if detail is not None:
            details = np.full(len(every), detail, dtype=object)
        elif column is not None:
            details = np.full(len(every), None, dtype=object)
            values = text(self.raw[column][every]).to_numpy()
            details[every] = [f"{column}={clip(v)!r}" for v in values]
        else:
            details = np.full(len(every), None, dtype=object)
        self.flag_detail(every, code, details)

    def flag_detail(self, bad: np.ndarray, code: str, details: np.ndarray) -> None:
        every = np.asarray(bad, dtype=bool)
        if not every.any():
            return
        self.problems[every] = [
            (p + "; " if p else "") + (f"{code}: {d}" if d else code)
            for p, d in zip(self.problems[every], details[every], strict=True)
        ]
        mask = every & self.ok
        self.reason[mask] = code
        self.detail[mask] = details[mask]
        self.ok &= ~mask

    def quarantine(self, offset: int = 0) -> pd.DataFrame:
        """The failed rows: source_row (``offset`` = rows before this chunk), reason, detail, values."""
        bad = ~self.ok
        return quarantine_rows(
            self.raw.loc[bad],
            np.flatnonzero(bad) + offset,
            self.reason[bad],
            self.detail[bad],
            self.problems[bad],
        )

    def result(self, spec: TableSpec, source: Path, clean: pd.DataFrame) -> TableResult:
        return TableResult(
            name=spec.name,
            source=source,
            rows_read=len(self.raw),
            clean=clean.loc[self.ok].reset_index(drop=True),
            quarantine=self.quarantine(),
        )


def quarantine_rows(
    raw: pd.DataFrame,
    source_rows: np.ndarray,
    reasons: np.ndarray | str,
    details: np.ndarray | str,
    problems: np.ndarray | str | None = None,
) -> pd.DataFrame:
    quarantine = raw.copy()
    for col in quarantine.columns:
        quarantine[col] = text(quarantine[col])
    if problems is None:  # a single-reason row (a duplicate): its problem is its reason
        problems = f"{reasons}: {details}" if isinstance(reasons, str) else np.zeros(0, dtype=object)
    quarantine.insert(0, "problems", problems)
    quarantine.insert(0, "detail", details)
    quarantine.insert(0, "reason", reasons)
    quarantine.insert(0, "source_row", source_rows.astype(np.int64))
    return quarantine.reset_index(drop=True)


def clip(value: str) -> str:
    return value if len(value) <= _DETAIL_MAX else value[: _DETAIL_MAX - 1] + "…"


def text(s: pd.Series) -> pd.Series:
    """Any column as text: NA becomes "", CSV columns are already text, a typed value reads as a
    CSV holds it (pipelines.cells: a whole float as its integer, 12347.0 -> "12347")."""
    return as_text(s)


def per_value(s: pd.Series, fn: Callable[[pd.Series], Any]) -> np.ndarray:
    """``fn`` of the column as text, one result per row; a categorical's distinct values are
    computed once each, then spread to the rows by code."""
    if not isinstance(s.dtype, pd.CategoricalDtype):
        return np.asarray(fn(text(s)))
    categories = text(pd.Series(s.cat.categories))
    # NA (code -1) is text "": appended last, so numpy's index -1 picks it.
    values = pd.concat([categories, pd.Series([""], dtype=categories.dtype)], ignore_index=True)
    return np.asarray(fn(values))[s.cat.codes.to_numpy()]


def is_text(s: pd.Series) -> bool:
    if isinstance(s.dtype, pd.CategoricalDtype):
        return pd.api.types.is_string_dtype(s.cat.categories.dtype)
    return pd.api.types.is_string_dtype(s.dtype)


def check_utf8(v: Verdicts, columns: tuple[str, ...]) -> None:
    for col in columns:
        s = v.raw[col]
        if is_text(s):
            bad = per_value(s, lambda t: t.str.contains(REPLACEMENT_CHAR, regex=False).to_numpy(dtype=bool))
            v.flag(bad, Reason.INVALID_UTF8, col)


def check_id(v: Verdicts, column: str, missing: str, max_len: int) -> pd.Series:
    ids = normalized_ids(text(v.raw[column]))
    status = id_status(ids, max_len)
    v.flag(status == ID_MISSING, missing, column)
    v.flag(status == ID_TOO_LONG, Reason.ID_TOO_LONG, column)
    v.flag(status == ID_BAD_CHARS, Reason.BAD_ID_CHARS, column)
    v.flag(inexact_ids(v.raw[column]), Reason.INEXACT_ID, column)
    return ids


def normalized_ids(text: pd.Series) -> pd.Series:
    """Trimmed, a zero fraction dropped ("12347.0" is 12347, pipelines.cells.whole_number_id: a
    float id column as CSV) and in NFC (recsvc.idmap.normalize_id), so the same id is one id in
    every table and format."""
    ids = whole_number_id(text)
    non_ascii = ~ids.str.isascii().fillna(True).to_numpy(dtype=bool)
    if non_ascii.any():
        ids = ids.copy()
        ids[non_ascii] = ids[non_ascii].str.normalize("NFC")
    return ids


def id_status(ids: pd.Series, max_bytes: int) -> np.ndarray:
    """0 for a valid id, else ID_MISSING, ID_TOO_LONG or ID_BAD_CHARS (recsvc.idmap.id_problem's rule,
    vectorised: the length counts UTF-8 bytes, and only non-ASCII ids that the common-case regex
    refuses are checked character by character)."""
    out = np.zeros(len(ids), dtype=np.int32)
    non_ascii = ~ids.str.isascii().fillna(True).to_numpy(dtype=bool)
    nbytes = ids.str.len().to_numpy(dtype=np.int64, copy=True)
    if non_ascii.any():
        nbytes[non_ascii] = [len(x.encode("utf-8")) for x in ids[non_ascii]]
    fast = ids.str.fullmatch(ID_PATTERN.pattern).fillna(False).to_numpy(dtype=bool, copy=True)
    slow = ~fast & non_ascii
    ok = fast
    if slow.any():
        ok[slow] = [id_chars_ok(x) for x in ids[slow]]
    out[~ok] = ID_BAD_CHARS
    out[nbytes > max_bytes] = ID_TOO_LONG
    out[nbytes == 0] = ID_MISSING
    return out


# The ISO-8601 forms both ingest engines read alike (docs/data.md, "Value formats"): a date, a
# time after "T" or a space, an optional zone (Z, UTC, +08, +0800, +08:00). pandas alone would
# also take "20260501" and "2026/05/01", Spark alone "+2026-05-01" and zone names; neither is in
# the contract, so both quarantine them. Plain [0-9]: the pattern runs in Python and in Java.
ISO_TIMESTAMP = (
    r"^[0-9]{4}(-[0-9]{1,2}(-[0-9]{1,2}([T ][0-9]{1,2}(:[0-9]{2}(:[0-9]{2}(\.[0-9]{1,9})?)?)?)?)?)?"
    r"( ?(Z|[+-][0-9]{2}(:?[0-9]{2})?))?$"
)
# "2026-05-01 10:00:00 UTC" (a common database export) reads as "Z"
UTC_SUFFIX = r" ?UTC$"


def timestamps(s: pd.Series) -> pd.Series:
    """UTC timestamps; NaT where missing or unparsable. Naive values are taken to be UTC."""
    if isinstance(s.dtype, pd.DatetimeTZDtype):
        out = s.dt.tz_convert("UTC")
    elif pd.api.types.is_datetime64_dtype(s.dtype):
        out = s.dt.tz_localize("UTC")
    else:
        value = text(s).str.strip()
        utc = value.str.endswith("UTC")  # rare: the replace costs twice the match, only where needed
        if utc.any():
            value = value.where(~utc, value.str.replace(UTC_SUFFIX, "Z", regex=True))
        value = value.where(value.str.match(ISO_TIMESTAMP), "")
        out = pd.to_datetime(value, format="ISO8601", utc=True, errors="coerce")
        if out.dt.unit == "ns":
            out = _out_of_ns_range(value, out.dt.as_unit("us"))
    return out.dt.as_unit("us")


def _out_of_ns_range(value: pd.Series, out: pd.Series) -> pd.Series:
    """``out`` with the times nanoseconds cannot hold (before 1677, after 2262) parsed at
    microseconds. One value with 7 to 9 fraction digits makes pandas parse the whole column in
    nanoseconds, where those are NaT; a row's time (and so its reason: ``timestamp_too_old``, not
    ``bad_timestamp``) must not depend on the other rows. Digits past microseconds are dropped, as
    ``as_unit("us")`` drops them for every other row."""
    again = out.isna().to_numpy(dtype=bool) & (value != "").to_numpy(dtype=bool)
    if not again.any():
        return out
    cut = value[again].str.replace(r"(\.[0-9]{6})[0-9]+", r"\1", regex=True)
    parsed = pd.to_datetime(cut, format="ISO8601", utc=True, errors="coerce").dt.as_unit("us")
    out = out.copy()
    out[again] = parsed
    return out


def numbers(s: pd.Series) -> pd.Series:
    """float64 with NaN for empty cells and +-inf kept (so they can be rejected)."""
    if pd.api.types.is_numeric_dtype(s.dtype) and not pd.api.types.is_bool_dtype(s.dtype):
        return s.astype("float64")
    # "" and anything unparsable become NaN; unparsable tells the two apart.
    parsed = per_value(
        s, lambda t: pd.to_numeric(t.str.strip(), errors="coerce").astype("float64").to_numpy()
    )
    return pd.Series(parsed, index=s.index, dtype="float64")


def unparsable(s: pd.Series, parsed: pd.Series) -> np.ndarray:
    """Non-empty cells that did not parse."""
    if pd.api.types.is_numeric_dtype(s.dtype) and not pd.api.types.is_bool_dtype(s.dtype):
        return np.zeros(len(s), dtype=bool)  # a typed number always parses; NaN is an empty cell
    nonempty = per_value(s, lambda t: (t.str.strip() != "").to_numpy(dtype=bool))
    return parsed.isna().to_numpy(dtype=bool) & nonempty


def booleans(s: pd.Series) -> tuple[pd.Series, np.ndarray]:
    """Nullable booleans (<NA> for empty) and a mask of cells that are not a boolean word."""
    if pd.api.types.is_bool_dtype(s.dtype):
        return s.astype("boolean"), np.zeros(len(s), dtype=bool)
    words = text(s).str.strip().str.lower()
    is_true = words.isin(_TRUE).to_numpy(dtype=bool)
    is_false = words.isin(_FALSE).to_numpy(dtype=bool)
    empty = (words == "").to_numpy(dtype=bool)
    out = pd.Series(pd.array(np.where(is_true, True, False), dtype="boolean"), index=s.index)
    out[empty | ~(is_true | is_false)] = pd.NA
    return out, ~(is_true | is_false | empty)


# Line breaks, tabs and other control characters inside a title or label (common in exports of
# product descriptions) become one space, with the spaces around them: the row is good, and the
# text is one line wherever it is shown. The live catalog API refuses them instead (the caller
# can fix what it sends).
_BREAKS = f"[ ]*[{CONTROL_CHARACTERS}][ {CONTROL_CHARACTERS}]*"


def one_line(s: pd.Series) -> pd.Series:
    """Text with control characters and line breaks replaced by a space, stripped."""
    return s.str.replace(_BREAKS, " ", regex=True).str.strip()


def check_label(v: Verdicts, column: str, missing_code: str | None, required: np.ndarray) -> pd.Series:
    labels = one_line(text(v.raw[column]))
    if missing_code is not None:
        v.flag(required & (labels == "").to_numpy(dtype=bool), missing_code, column)
    v.flag(labels.str.len() > MAX_LABEL_LENGTH, Reason.LABEL_TOO_LONG, column)
    return labels


def featured_lists(s: pd.Series) -> pd.Series:
    """Each cell as a tuple of ids: list<string> Parquet cells or "a|b|c" text."""

    def split(cell: object) -> tuple[str, ...]:
        if isinstance(cell, list | tuple | np.ndarray):
            # a null element of a Parquet list is "" (no id; str() would make it "None")
            parts = [cell_text(x) for x in cell]
        elif cell is None or (isinstance(cell, float) and np.isnan(cell)):
            return ()
        else:
            parts = str(cell).split(FEATURED_SEPARATOR)
        # read as every id column is (normalized_ids): "12347.0" and 12347.0 are the item 12347
        return tuple(whole_number(p.strip()) for p in parts if p.strip())

    return s.map(split).astype(object)


def dup_of_ok(keys: pd.Series | pd.DataFrame, ok: np.ndarray) -> np.ndarray:
    """Rows still ok whose key already appeared in an earlier ok row."""
    dup = np.zeros(len(ok), dtype=bool)
    idx = np.flatnonzero(ok)
    subset = keys if idx.size == len(ok) else keys.iloc[idx]
    # A 64-bit hash per row finds the few candidates cheaply (memory and time matter at 50M
    # events); the exact comparison then runs on those candidates only.
    hashes = pd.util.hash_pandas_object(subset, index=False)
    candidates = np.flatnonzero(hashes.duplicated(keep=False).to_numpy(dtype=bool))
    if candidates.size:
        exact = subset.iloc[candidates].duplicated(keep="first").to_numpy(dtype=bool)
        dup[idx[candidates[exact]]] = True
    return dup


def latest(now: datetime, settings: DataSettings) -> pd.Timestamp:
    return pd.Timestamp(now + timedelta(seconds=settings.future_tolerance_s)).tz_convert("UTC")
