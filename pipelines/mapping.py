"""A mapping file: how a retailer's export becomes the data contract's tables, without editing it.

``recsvc data validate --mapping FILE`` and ``recsvc train --mapping FILE`` read a TOML file
(docs/data.md, "Mapping file", has a complete example) that may

- rename a file's columns (``[events.columns] order_time = "ts"``) and ignore extra ones,
- map values (``[events.values.channel] pos = "offline_store"``),
- declare event channels beyond ``data.event_channels`` (``[channels] declare = ["douyin"]``; the
  API accepts only the setting's, so list them there),
- parse money (``￥312.63``, ``¥1,234.50``, ``RMB 12``) in ``amount`` and ``price``,
- parse time stamps in given formats, with an offset for those that carry none (``+08:00``),
- give defaults for member columns that are absent or empty (``[members.defaults] tier = "member"``).

The mapping runs on the text of each row as read, before any check, so a value it cannot parse is
left as it was and quarantined by the contract's checks with its original text. Typed columns
(Parquet) are mapped through their text too, as the same values in a CSV would be (``apply``).
"""

from __future__ import annotations

import re
import tomllib
from datetime import timedelta, timezone
from pathlib import Path
from typing import Literal

import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from pipelines.cells import as_text, whole_number_id
from recsvc.errors import DataContractError
from recsvc.settings import check_channel_names

_OFFSET_RE = re.compile(r"^[+-](0\d|1[0-4]):[0-5]\d\Z")
TIMESTAMP_COLUMNS = {"events": ("ts",), "catalog": ("published_at",), "members": ("registered_at",)}


class _Part(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TableMapping(_Part):
    # file column -> contract column
    columns: dict[str, str] = Field(default_factory=dict)
    # file columns to leave out (an export's extra columns)
    ignore: list[str] = Field(default_factory=list)
    # contract column -> {value in the file: contract value}
    values: dict[str, dict[str, str]] = Field(default_factory=dict)
    # contract column -> value for an absent column or an empty cell
    defaults: dict[str, str] = Field(default_factory=dict)


# Numbers since 1970-01-01 UTC, by unit ("%s" is what strftime calls seconds since the epoch).
EPOCH_UNITS: dict[str, Literal["s", "ms", "us"]] = {
    "epoch_s": "s",
    "%s": "s",
    "epoch_ms": "ms",
    "epoch_us": "us",
}


class TimestampRule(_Part):
    # Offset for time stamps that carry none (otherwise they are taken to be UTC).
    default_offset: str | None = None
    # Tried in order for values that are not ISO-8601: strptime formats ("%Y/%m/%d %H:%M"; one with
    # %z is converted to UTC) or epoch_s / epoch_ms / epoch_us (a number since 1970 UTC).
    formats: list[str] = Field(default_factory=list)

    @field_validator("default_offset")
    @classmethod
    def _offset(cls, v: str | None) -> str | None:
        if v is not None and not _OFFSET_RE.match(v):
            raise ValueError(f"default_offset must look like +08:00 or -05:30, got {v!r}")
        return v

    @field_validator("formats")
    @classmethod
    def _formats(cls, v: list[str]) -> list[str]:
        for fmt in v:
            if fmt in EPOCH_UNITS:
                continue
            try:  # a bad directive raises here, whatever the value, instead of at read time
                pd.to_datetime(pd.Series(["0"]), format=fmt, errors="coerce")
            except ValueError as exc:
                raise ValueError(
                    f"time format {fmt!r} is not a strptime format ({exc}); for numbers since 1970 "
                    f"use one of {sorted(EPOCH_UNITS)}"
                ) from exc
        return v

    @property
    def epoch(self) -> bool:
        return any(fmt in EPOCH_UNITS for fmt in self.formats)


class MoneyRule(_Part):
    columns: list[str] = Field(default_factory=lambda: ["amount", "price"])
    # Stripped wherever they appear; then thousands separators; then the number must parse.
    symbols: list[str] = Field(default_factory=lambda: ["￥", "¥", "RMB", "CNY", "元", "$"])
    thousands_separator: str = ","


class ChannelRule(_Part):
    # Event channels this export's files accept besides the setting data.event_channels.
    declare: list[str] = Field(default_factory=list)

    @field_validator("declare")
    @classmethod
    def _names(cls, v: list[str]) -> list[str]:
        check_channel_names(v)  # the rule of data.event_channels: "all" names every channel's lists
        return v


class Mapping(_Part):
    version: int = Field(1, ge=1, le=1)
    events: TableMapping = TableMapping()
    catalog: TableMapping = TableMapping()
    members: TableMapping = TableMapping()
    timestamps: TimestampRule = TimestampRule()
    money: MoneyRule = MoneyRule()
    channels: ChannelRule = ChannelRule()

    def table(self, name: str) -> TableMapping:
        part = getattr(self, name)
        assert isinstance(part, TableMapping)
        return part

    def rename(self, name: str, columns: list[str]) -> tuple[dict[str, str], list[str]]:
        """(renames to apply, file columns to drop) for a file of table ``name``."""
        t = self.table(name)
        return {c: t.columns[c] for c in columns if c in t.columns}, [c for c in columns if c in t.ignore]

    def apply(self, name: str, df: pd.DataFrame) -> pd.DataFrame:
        """Values of a frame already renamed to contract columns, mapped as the file says.

        A typed column (Parquet, or a number pandas inferred) is mapped as the same values in a
        CSV would be, never skipped: a value map compares, and a default fills, the column's text
        (pipelines.cells: 1 and 1.0 read "1", a null is an empty cell), and default_offset gives a
        datetime column without a zone its offset, as it does a CSV time written without one."""
        t = self.table(name)
        for col, default in t.defaults.items():
            if col not in df.columns:
                df[col] = default
            elif _is_text(df[col]):
                df[col] = _text(df[col]).where(_text(df[col]).str.strip() != "", default)
            elif df[col].isna().any():
                # A null is a CSV's empty cell. The other cells keep their values (an object column:
                # the checks read a cell's number, boolean or time from either form, and a float id
                # that is no exact integer is still refused, pipelines.cells.inexact_ids).
                df[col] = df[col].astype(object).where(df[col].notna(), default)
        for col, table in t.values.items():
            if col not in df.columns:
                continue
            stripped = _text(df[col]).str.strip()
            mapped = stripped.map(table)
            unmatched = mapped.isna().to_numpy(dtype=bool)
            if unmatched.any():
                # "1.0" (a float column written to CSV) is "1" as well, as 1.0 is in Parquet
                mapped = mapped.fillna(whole_number_id(stripped[unmatched]).map(table))
            if _is_text(df[col]):
                df[col] = mapped.fillna(stripped)
            else:  # matched on the text (1 and 1.0 are "1"); an unmapped cell keeps its value
                df[col] = mapped.astype(object).where(mapped.notna(), df[col].astype(object))
        for col in self.money.columns:
            if col in df.columns and _is_text(df[col]):
                df[col] = self._money(_text(df[col]))
        for col in TIMESTAMP_COLUMNS.get(name, ()):
            if col not in df.columns:
                continue
            # epoch numbers may come typed (a Parquet int64 column): read as their text
            numeric = self.timestamps.epoch and pd.api.types.is_numeric_dtype(df[col].dtype)
            if _is_text(df[col]) or numeric:
                df[col] = self._timestamps(_text(df[col]))
            elif self.timestamps.default_offset and _is_naive_datetime(df[col]):
                # A Parquet timestamp without a zone is a time written without an offset: the same
                # rows as CSV and Parquet must give the same instants (vectorised, no text round trip).
                df[col] = df[col].dt.tz_localize(_fixed_offset(self.timestamps.default_offset))
        return df

    def _money(self, s: pd.Series) -> pd.Series:
        out = s
        for symbol in sorted(self.money.symbols, key=len, reverse=True):
            out = out.str.replace(symbol, "", regex=False)
        if self.money.thousands_separator:
            # "1,234.50" but not "12,5" (a decimal comma stays unparsable: quarantined, never misread)
            grouped = out.str.strip().str.fullmatch(
                r"[+-]?\d{1,3}(" + re.escape(self.money.thousands_separator) + r"\d{3})+(\.\d+)?"
            )
            out = out.where(
                ~grouped.fillna(False), out.str.replace(self.money.thousands_separator, "", regex=False)
            )
        return out.str.strip()

    def _timestamps(self, s: pd.Series) -> pd.Series:
        rule = self.timestamps
        if not (rule.default_offset or rule.formats):
            return s
        text = s.str.strip()
        out = text.copy()
        pending = text != ""
        for fmt in rule.formats:
            if fmt in EPOCH_UNITS:
                number = pd.to_numeric(text.where(pending), errors="coerce")
                parsed = pd.to_datetime(number, unit=EPOCH_UNITS[fmt], utc=True, errors="coerce")
            else:
                # utc=True turns a value with an offset (%z) into UTC, mixed offsets included;
                # without one, the value stays naive for default_offset below
                zoned = "%z" in fmt or "%Z" in fmt
                parsed = pd.to_datetime(text.where(pending), format=fmt, errors="coerce", utc=zoned)
            hit = parsed.notna() & pending
            if hit.any():
                zone = "Z" if parsed.dt.tz is not None else ""
                out[hit] = parsed[hit].dt.strftime("%Y-%m-%dT%H:%M:%S.%f") + zone
                pending &= ~hit
        if rule.default_offset:
            # ISO-8601 without a zone designator: no trailing Z and no +hh:mm / -hh:mm / +hhmm.
            naive = (out != "") & ~out.str.contains(r"(?:[Zz]|[+-]\d\d:?\d\d)$", regex=True)
            is_date = out.str.fullmatch(r"\d{4}-\d\d-\d\d")
            out = out.where(~(naive & is_date), out + "T00:00:00")
            out = out.where(~naive, out + rule.default_offset)
        return out


def _is_text(s: pd.Series) -> bool:
    if isinstance(s.dtype, pd.CategoricalDtype):
        return pd.api.types.is_string_dtype(s.cat.categories.dtype)
    return pd.api.types.is_string_dtype(s.dtype) or pd.api.types.is_object_dtype(s.dtype)


def _text(s: pd.Series) -> pd.Series:
    return as_text(s)


def _is_naive_datetime(s: pd.Series) -> bool:
    return pd.api.types.is_datetime64_dtype(s.dtype) and not isinstance(s.dtype, pd.DatetimeTZDtype)


def _fixed_offset(offset: str) -> timezone:
    """ "+08:00" as a tzinfo (the rule checked the form: sign, hours, minutes)."""
    sign = -1 if offset.startswith("-") else 1
    hours, minutes = offset[1:].split(":")
    return timezone(sign * timedelta(hours=int(hours), minutes=int(minutes)))


def load_mapping(path: Path | None) -> Mapping | None:
    """The mapping file at ``path`` (None: no mapping). Raises DataContractError naming the problem."""
    if path is None:
        return None
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise DataContractError(f"mapping file not found: {path}") from exc
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise DataContractError(f"cannot read mapping file {path}: {exc}") from exc
    try:
        return Mapping.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
        raise DataContractError(f"mapping file {path} is invalid: {problems}") from exc
