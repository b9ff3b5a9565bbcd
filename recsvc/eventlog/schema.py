"""The Parquet form of the event log (docs/experiments.md): one schema per kind, and how a
stream entry becomes a row. ``kind=event`` files hold the data contract's seven event columns
(docs/data.md) first, so ``recsvc train`` reads them as events; the columns after them say what
the service knew (the recommendation the event was attributed to, the member's variant, the
member's pseudonym, the stream id)."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa

TS = pa.timestamp("us", tz="UTC")

SCHEMAS: dict[str, pa.Schema] = {
    "event": pa.schema(
        [
            ("member_id", pa.string()),
            ("item_id", pa.string()),
            ("event_type", pa.string()),
            ("ts", TS),
            ("channel", pa.string()),
            ("quantity", pa.int32()),
            ("amount", pa.float64()),
            ("recommendation_id", pa.string()),
            ("variant", pa.string()),
            ("member", pa.string()),
            ("log_id", pa.string()),
        ]
    ),
    "impression": pa.schema(
        [
            ("recommendation_id", pa.string()),
            ("ts", TS),
            ("member", pa.string()),
            ("variant", pa.string()),
            ("model_version", pa.string()),
            ("scene", pa.string()),
            ("channel", pa.string()),
            ("items", pa.list_(pa.string())),
            ("source", pa.string()),
            ("campaign", pa.string()),
            ("log_id", pa.string()),
        ]
    ),
    "decision": pa.schema(
        [
            ("ts", TS),
            ("member", pa.string()),
            ("campaign", pa.string()),
            ("channel", pa.string()),
            ("allowed", pa.bool_()),
            ("reason", pa.string()),
            ("reservation_id", pa.string()),
            ("mode", pa.string()),
            ("would_allow", pa.bool_()),
            ("log_id", pa.string()),
        ]
    ),
}


INT32 = (-(2**31), 2**31 - 1)
# What every record of a kind carries as the service writes it (an event without its member or
# item, an impression without its id, is nothing to train or report on).
_REQUIRED: dict[str, tuple[str, ...]] = {
    "event": ("member_id", "item_id", "event_type"),
    "impression": ("id",),
    "decision": (),
}


def row(kind: str, log_id: str, record: Any) -> dict[str, Any]:
    """One Parquet row from a stream record (missing fields empty, ts as a UTC datetime).
    ``ValueError`` naming the field for a record the service cannot have written (not an object,
    a time that is no time, a number out of its column's range, items that are not a list):
    the sink skips such an entry instead of stopping on it."""
    if not isinstance(record, dict):
        raise ValueError(f"not an object but {type(record).__name__}")
    for name in _REQUIRED[kind]:
        if not isinstance(record.get(name), str) or not record[name]:
            raise ValueError(f"{name}: missing or not text")
    out: dict[str, Any] = {}
    for field in SCHEMAS[kind]:
        name = field.name
        try:
            if name == "log_id":
                out[name] = log_id
            elif name == "recommendation_id" and kind == "impression":
                out[name] = str(record.get("id", ""))
            elif name == "ts":
                ts = float(record.get("ts", 0.0))
                if not math.isfinite(ts):
                    raise ValueError("not finite")
                out[name] = datetime.fromtimestamp(ts, tz=UTC)
            elif name == "items":
                items = record.get("items", [])
                if not isinstance(items, list):
                    raise ValueError("not a list")
                out[name] = [str(i) for i in items]
            elif field.type == pa.bool_():
                out[name] = bool(record.get(name, False))
            elif field.type == pa.int32():
                value = int(record.get(name, 0) or 0)
                if not INT32[0] <= value <= INT32[1]:
                    raise ValueError("out of range")
                out[name] = value
            elif field.type == pa.float64():
                number = float(record.get(name, 0.0) or 0.0)
                if not math.isfinite(number):
                    raise ValueError("not finite")
                out[name] = number
            else:
                out[name] = str(record.get(name, ""))
        except (TypeError, ValueError, OverflowError, OSError) as exc:
            raise ValueError(f"{name}: {exc}") from None
    return out
