"""A typed cell's text: the one rule by which a Parquet value (or a number pandas inferred) reads
as the text a CSV export of the same value holds, so both formats map and check alike.

Used by :mod:`pipelines.mapping` (value maps and defaults compare and fill text, also on typed
columns) and :mod:`pipelines.rows` (ids, labels and the values quarantined rows keep). A separate
module because ``pipelines.rows`` imports ``pipelines.read``, which imports the mapping.

Floats are where the formats part: pandas keeps an integer column with missing values as float64
(Online Retail's ``Customer ID``), so 12347 arrives as 12347.0, and ``str()`` would make it the
id "12347.0" while the members file says "12347". A whole float therefore reads as the integer
it holds; a CSV written from such a column holds "12347.0" as text, and an id written that way is
read as the whole number too (:func:`whole_number_id`).
"""

from __future__ import annotations

import re
from decimal import Decimal

import numpy as np
import pandas as pd

from pipelines.contract import FEATURED_SEPARATOR

# "12347.0", "12347.00", "-5.0": a whole number as a float's text (pandas writes 12347.0 so).
_WHOLE_FLOAT_TEXT = re.compile(r"^([+-]?\d+)\.0+\Z")


def as_text(s: pd.Series) -> pd.Series:
    """Any column as text, NA as "": text stays as it is, a whole float reads as its integer
    (12347.0 -> "12347", see :func:`float_text`), a list (Parquet ``list<string>``) as its items
    joined by "|", anything else as ``str()`` gives it."""
    if pd.api.types.is_string_dtype(s.dtype) and not pd.api.types.is_object_dtype(s.dtype):
        return s.fillna("")
    if pd.api.types.is_object_dtype(s.dtype):
        return s.map(cell_text).astype("str")
    if pd.api.types.is_float_dtype(s.dtype):
        return float_text(s)
    return s.astype("str").where(s.notna(), "")


def cell_text(v: object) -> str:
    """One cell of an object column as text (the rule of :func:`as_text`)."""
    if v is None or v is pd.NA or v is pd.NaT or (isinstance(v, float) and np.isnan(v)):
        return ""
    if isinstance(v, list | tuple | np.ndarray):
        return FEATURED_SEPARATOR.join(cell_text(x) for x in v)
    if isinstance(v, float | np.floating) and _exact_whole(v):
        return str(int(v))
    if isinstance(v, Decimal) and v.is_finite() and v == v.to_integral_value():
        return str(int(v))  # a decimal128 id column: Decimal("12347.00") is 12347
    return str(v)


def float_text(s: pd.Series) -> pd.Series:
    """A float column as text: whole values below :func:`exact_limit` as integers ("12347", and
    -0.0 as "0"), others as Python writes them ("12.5", "inf", "1e+20"), NaN as ""."""
    values = s.to_numpy(dtype="float64", na_value=np.nan)
    out = s.astype("str").to_numpy(dtype=object)  # float32 keeps its own shortest form ("0.1")
    whole = exact_whole(s)
    out[whole] = values[whole].astype(np.int64).astype(str)
    out[np.isnan(values)] = ""
    return pd.Series(out, index=s.index, dtype="str")


def exact_limit(dtype: np.dtype) -> float:
    """2**(mantissa bits + 1) of a float type: every whole number below it is exact; from there on
    neighbouring integers share one float (float64: 2**53), so the integer an export meant is
    lost."""
    return float(2 ** (np.finfo(dtype).nmant + 1))


def exact_whole(s: pd.Series) -> np.ndarray:
    """True where a float column's value is a whole number the float holds exactly."""
    values = s.to_numpy(dtype="float64", na_value=np.nan)
    dtype = s.dtype if isinstance(s.dtype, np.dtype) else np.dtype(getattr(s.dtype, "numpy_dtype", "float64"))
    limit = exact_limit(dtype)  # Float64 (nullable) is float64
    with np.errstate(invalid="ignore"):
        return np.isfinite(values) & (values == np.trunc(values)) & (np.abs(values) < limit)


def _exact_whole(v: float | np.floating) -> bool:
    """:func:`exact_whole` of one float (an object column's cell)."""
    return bool(np.isfinite(v) and v == int(v) and abs(float(v)) < exact_limit(np.asarray(v).dtype))


def inexact_ids(s: pd.Series) -> np.ndarray:
    """Rows of an id column whose value is a float that is no exact whole number (12347.5, inf,
    or 1e20, past the float's exact limit): such an id is not the one the source system holds,
    so the row is quarantined (reason inexact_id) rather than read as another id. Empty (NaN)
    cells are left to the missing-id check; text is never inexact."""
    if pd.api.types.is_float_dtype(s.dtype):
        return s.notna().to_numpy(dtype=bool) & ~exact_whole(s)
    if pd.api.types.is_object_dtype(s.dtype):
        return np.fromiter(
            (isinstance(v, float | np.floating) and not np.isnan(v) and not _exact_whole(v) for v in s),
            dtype=bool,
            count=len(s),
        )
    return np.zeros(len(s), dtype=bool)


def whole_number(value: str) -> str:
    """One id by :func:`whole_number_id`'s rule (a cell of a featured_item_ids list)."""
    whole = _WHOLE_FLOAT_TEXT.match(value) if "." in value else None
    return whole.group(1) if whole and abs(int(whole.group(1))) < _FLOAT64_EXACT else value


def whole_number_id(text: pd.Series) -> pd.Series:
    """Trimmed ids with a zero fraction dropped ("12347.0" -> "12347"): a float id column written to
    CSV (pandas writes its 12347 as 12347.0) names the same ids as an integer one, and every table
    reads its ids by this rule, so the tables still agree on an id that really was "1.0". From
    2**53 on a float no longer holds the integer the export meant ("9007199254740992.0" may have
    been ...993): such an id stays as written, so it matches no integer id instead of a wrong one."""
    ids = text.str.strip()
    dotted = ids.str.contains(".", regex=False).fillna(False).to_numpy(dtype=bool)
    if not dotted.any():  # the common case: one vectorised scan, no regex
        return ids
    ids = ids.copy()
    written = ids[dotted]
    whole = written.str.extract(_WHOLE_FLOAT_TEXT, expand=False)  # NaN: not a whole number
    exact = pd.to_numeric(whole, errors="coerce").abs() < _FLOAT64_EXACT
    ids[dotted] = whole.where(exact, written)
    return ids


_FLOAT64_EXACT = exact_limit(np.dtype(np.float64))
