"""Member segments (RFM scores, lifecycle stage) and popularity tables for cold start.

Reads: the clean events the bundle is built from and their reference time (by default all events
up to the training cutoff of :class:`training.prepare.Prepared`; for a ``--no-refit`` bundle the
training split's events, as of the holdout start), members' registration times, lifecycle
thresholds and event weights from TrainingSettings.
Writes: the bundle's ``segments`` table (member_id, lifecycle, recency_days, frequency, monetary,
r, f, m, rfm_score), ``member_segment`` (lifecycle stage index per member row, into
``recsvc.bundle.LIFECYCLE_STAGES``) and the ``popular`` table (segment, channel, kind, rank,
item_id, score) with ``recsvc.bundle.ALL`` rows for "any segment" and "any channel".

Lifecycle, at the reference time (``as_of``), for every known member:
- ``new``: registered within ``new_member_days`` and no purchase yet;
- otherwise by days since the reference date (last purchase, else last activity, else
  registration): ``active`` below ``at_risk_days``, ``at_risk`` below ``dormant_days``,
  ``dormant`` below ``churned_days``, else ``churned``.
R, F and M are quintile scores 1..5 (5 = most recent / most frequent / highest spend); F and M
are 0 for members who never bought. ``rfm_score`` is the three digits read as a number (e.g. 545).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from recsvc.bundle import ALL, KIND_NAMES, LIFECYCLE_STAGES
from recsvc.errors import DataContractError
from recsvc.settings import TrainingSettings
from training.confidence import event_confidence
from training.prepare import DAY_S, PURCHASE_CODE, EventArrays, Prepared


def _quintile(values: np.ndarray, higher_is_better: bool) -> np.ndarray:
    if values.size == 0:
        return np.zeros(0, dtype=np.int8)
    ranks = pd.Series(values if higher_is_better else -values).rank(method="average", pct=True)
    return np.clip(np.ceil(ranks.to_numpy() * 5), 1, 5).astype(np.int8)


def _check_finite(values: np.ndarray, name: str) -> None:
    bad = ~np.isfinite(values)
    if bad.any():
        raise DataContractError(
            f"segment {name} is not finite for {int(bad.sum())} members: amounts outside the data "
            f"contract reached training",
            reason="NON_FINITE_SEGMENT",
        )


def lifecycle_stage(
    recency_days: np.ndarray,
    registered_days_ago: np.ndarray,
    has_purchase: np.ndarray,
    t: TrainingSettings,
) -> np.ndarray:
    """Stage index per member (into LIFECYCLE_STAGES); vectorised, thresholds from settings."""
    stage = np.select(
        [recency_days < t.at_risk_days, recency_days < t.dormant_days, recency_days < t.churned_days],
        [1, 2, 3],
        default=4,
    )
    is_new = (~has_purchase) & (registered_days_ago < t.new_member_days)
    return np.where(is_new, 0, stage).astype(np.uint8)


def member_segments(
    prepared: Prepared,
    t: TrainingSettings,
    *,
    events: EventArrays | None = None,
    as_of: int | None = None,
) -> tuple[pd.DataFrame, np.ndarray]:
    """Segments from ``events`` (default: all of ``prepared``) as of ``as_of`` (epoch seconds,
    default: the cutoff). Pass both to see members as they were at an earlier time."""
    ev = prepared.events if events is None else events
    n = len(prepared.members)
    cutoff = prepared.cutoff if as_of is None else as_of
    bought = ev.etype == PURCHASE_CODE
    last_any = np.full(n, -1, dtype=np.int64)
    np.maximum.at(last_any, ev.member, ev.ts)
    last_buy = np.full(n, -1, dtype=np.int64)
    np.maximum.at(last_buy, ev.member[bought], ev.ts[bought])
    frequency = np.bincount(ev.member[bought], minlength=n).astype(np.int64)
    # float64 sums of amounts prepare bounded to 0..MAX_AMOUNT: finite for any event count that
    # fits in memory. Checked anyway, so a non-finite value can never reach the bundle.
    monetary = np.bincount(ev.member[bought], weights=ev.amount[bought].astype(np.float64), minlength=n)
    _check_finite(monetary, "monetary")
    registered = prepared.member_registered_at
    reference = np.where(last_buy >= 0, last_buy, np.where(last_any >= 0, last_any, registered))
    known = (reference > 0) | (last_any >= 0)
    # Never negative: seen as of an earlier time (``as_of``), a member who registered or acted
    # after it has recency and age 0, i.e. new, not "-3 days".
    recency_days = np.maximum(np.where(known, (cutoff - reference) / DAY_S, 0.0), 0.0)
    # An unknown registration date (no members file, or a blank cell) is taken to be the first
    # event's time: a member first seen three years ago is not "new".
    first_any = np.full(n, np.iinfo(np.int64).max, dtype=np.int64)
    np.minimum.at(first_any, ev.member, ev.ts)
    joined = np.where(registered > 0, registered, np.where(last_any >= 0, first_any, 0))
    registered_ago = np.maximum(np.where(joined > 0, (cutoff - joined) / DAY_S, 0.0), 0.0)
    has_purchase = frequency > 0
    stage = lifecycle_stage(recency_days, registered_ago, has_purchase, t)

    r = _quintile(recency_days, higher_is_better=False)
    f = np.zeros(n, dtype=np.int8)
    m = np.zeros(n, dtype=np.int8)
    f[has_purchase] = _quintile(frequency[has_purchase].astype(np.float64), True)
    m[has_purchase] = _quintile(monetary[has_purchase], True)
    segments = pd.DataFrame(
        {
            "member_id": pd.array(np.char.decode(prepared.members.array, "utf-8"), dtype="string"),
            "lifecycle": np.asarray(LIFECYCLE_STAGES, dtype=object)[stage].astype(str),
            "recency_days": recency_days.astype(np.float32),
            "frequency": frequency,
            "monetary": monetary.astype(np.float64),
            "r": r,
            "f": f,
            "m": m,
            "rfm_score": (r.astype(np.int16) * 100 + f * 10 + m).astype(np.int16),
        }
    )
    return segments, stage


def popularity_tables(
    prepared: Prepared,
    member_segment: np.ndarray,
    t: TrainingSettings,
    window_days: int,
    *,
    events: EventArrays | None = None,
    as_of: int | None = None,
) -> pd.DataFrame:
    """Top ``t.popular_per_table`` items per (segment, channel, kind), "all" meaning any.

    Counts ``events`` (default: all of ``prepared``) in the ``window_days`` before ``as_of``
    (default: the cutoff), decayed to ``as_of``."""
    ev = prepared.events if events is None else events
    as_of = prepared.cutoff if as_of is None else as_of
    recent = ev.ts >= as_of - window_days * DAY_S
    ev = ev.select(recent)
    score = event_confidence(ev, t.event_weights, t.half_life_days, as_of)
    fine = (
        pd.DataFrame(
            {
                "segment": member_segment[ev.member].astype(np.int16),
                "channel": ev.channel.astype(np.int16),
                "item": ev.item,
                "score": score.astype(np.float64),
            }
        )
        .groupby(["segment", "channel", "item"], sort=False, observed=True)["score"]
        .sum()
        .reset_index()
    )
    fine = fine[fine["score"] > 0]
    any_code = -2  # stands for ALL while grouping; -1 is an unknown channel
    parts = []
    for seg_all in (False, True):
        for ch_all in (False, True):
            g = fine.copy()
            if seg_all:
                g["segment"] = any_code
            if ch_all:
                g["channel"] = any_code
            if seg_all or ch_all:
                g = g.groupby(["segment", "channel", "item"], sort=False)["score"].sum().reset_index()
            if not ch_all:
                g = g[g["channel"] >= 0]
            parts.append(g)
    table = pd.concat(parts, ignore_index=True)
    table["kind"] = prepared.item_kind[table["item"].to_numpy()].astype(np.int16)
    table = table.sort_values(
        ["segment", "channel", "kind", "score", "item"], ascending=[True, True, True, False, True]
    )
    table["rank"] = table.groupby(["segment", "channel", "kind"], sort=False).cumcount()
    table = table[table["rank"] < t.popular_per_table]
    seg_names = np.array([*LIFECYCLE_STAGES, ALL], dtype=object)
    ch_names = np.array([*prepared.channels, ALL], dtype=object)
    kind_names = {code: name for code, name in KIND_NAMES.items()}
    seg_idx = np.where(table["segment"].to_numpy() == any_code, len(LIFECYCLE_STAGES), table["segment"])
    ch_idx = np.where(table["channel"].to_numpy() == any_code, len(prepared.channels), table["channel"])
    return pd.DataFrame(
        {
            "segment": seg_names[seg_idx.astype(int)].astype(str),
            "channel": ch_names[ch_idx.astype(int)].astype(str),
            "kind": [kind_names[int(k)] for k in table["kind"].to_numpy()],
            "rank": table["rank"].to_numpy().astype(np.int32),
            "item_id": prepared.items.ids(table["item"].to_numpy()),
            "score": table["score"].to_numpy().astype(np.float32),
        }
    ).reset_index(drop=True)
