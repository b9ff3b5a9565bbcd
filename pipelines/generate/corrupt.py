"""Planting bad event rows on purpose, so a demo or test can watch validation catch them.

Takes the events table and returns it with every column as text (a bad timestamp cannot live
in a timestamp column) plus the number of rows planted per quarantine reason. One kind of damage
per row, spread evenly over the kinds; duplicates are extra copies of untouched rows.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from pipelines.contract import Reason
from pipelines.generate.write import as_text_table

DAMAGE = (
    Reason.UNKNOWN_EVENT_TYPE,
    Reason.UNKNOWN_CHANNEL,
    Reason.MISSING_MEMBER_ID,
    Reason.ID_TOO_LONG,
    Reason.BAD_TIMESTAMP,
    Reason.FUTURE_TIMESTAMP,
    Reason.NEGATIVE_AMOUNT,
    Reason.UNKNOWN_ITEM,
    Reason.DUPLICATE_EVENT,
)


def corrupt_events(
    table: pa.Table, share: float, rng: np.random.Generator
) -> tuple[pa.Table, dict[str, int]]:
    text = as_text_table(table)
    cols = {
        name: np.array(text[name].cast(pa.string()).to_pylist(), dtype=object) for name in text.column_names
    }
    n = table.num_rows
    n_bad = min(round(n * share), n // 2)
    if n_bad == 0:
        return text.cast(pa.schema([(c, pa.string()) for c in text.column_names])), {}
    rows = rng.choice(n, size=n_bad, replace=False)
    kinds = np.arange(n_bad) % len(DAMAGE)
    counts: dict[str, int] = {}
    duplicate_rows = []
    untouched = np.setdiff1d(np.arange(n), rows)
    for row, k in zip(rows, kinds, strict=True):
        reason = DAMAGE[k]
        if reason == Reason.UNKNOWN_EVENT_TYPE:
            cols["event_type"][row] = "buy"
        elif reason == Reason.UNKNOWN_CHANNEL:
            cols["channel"][row] = "tiktok"
        elif reason == Reason.MISSING_MEMBER_ID:
            cols["member_id"][row] = ""
        elif reason == Reason.ID_TOO_LONG:
            cols["item_id"][row] = "P" * 300  # longer than any allowed max_id_length
        elif reason == Reason.BAD_TIMESTAMP:
            cols["ts"][row] = "last tuesday"
        elif reason == Reason.FUTURE_TIMESTAMP:
            cols["ts"][row] = "2099-01-01T00:00:00Z"
        elif reason == Reason.NEGATIVE_AMOUNT:
            cols["amount"][row] = "-10.5"
        elif reason == Reason.UNKNOWN_ITEM:
            cols["item_id"][row] = f"DISCONTINUED_{row}"
        else:
            duplicate_rows.append(int(untouched[rng.integers(untouched.size)]))
        counts[reason] = counts.get(reason, 0) + 1
    out = pa.table({name: pa.array(values, type=pa.string()) for name, values in cols.items()})
    if duplicate_rows:
        out = pa.concat_tables([out, out.take(pa.array(duplicate_rows))])
    return out, counts
