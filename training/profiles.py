"""Member profiles: purchase predictions, interest tags, channels, active hours, recent activity.

Reads: :class:`training.prepare.Prepared` (events, catalog vocabularies), the members' time
zones (:func:`member_timezones`, from the members table before it is dropped), the lifecycle
stage per member (:mod:`training.segments`), the events the bundle is built from and their
reference time (``as_of``: the cutoff, or the holdout start without refit), TrainingSettings.
Writes: the bundle's ``profile_*`` arrays and ``Manifest.profiles`` (``recsvc.bundle``, format in
docs/bundle.md) through ``recsvc.bundle.add_profiles``; :func:`evaluate_holdout` returns the
``profiles.*`` metrics logged to MLflow beside the recommendation metrics.

- Predictions: BG/NBD (purchase days in the next 30 and 90 days, P(alive)) and Gamma-Gamma
  (expected spend per purchase), fitted here with scipy (:mod:`training.btyd`, which says why no
  library) on at most ``profile_fit_members`` buyers; predictions for every buyer. Members who
  never bought are outside the model: NaN P(alive), 0 predicted purchases.
- Value tier: expected 90-day spend (predicted purchases x value); "high" = top 20 % of
  buyers, "mid" = next 30 %, "low" = the rest, "none" = never bought.
- Outlook: from P(alive) and ``ProfileSpec.outlook_cuts``.
- Interest tags: each member's event weights (the confidence formula, decayed to ``as_of``)
  summed per category and per brand, as shares of the member's total; the top
  ``profile_tags`` of both together.
- Channels: share of the member's event weight per event channel.
- Active hours: events per hour of the day in the member's own time zone (zoneinfo through
  pandas, so DST is right); the per-stage and overall shares are the send-time fallbacks.
- Recent activity: events in the last 7 and 30 days and purchases in the last 30, as of ``as_of``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp
from scipy import stats

from recsvc.bundle import LIFECYCLE_STAGES, ProfileSpec, add_profiles
from recsvc.idmap import IdMap
from recsvc.settings import Settings, TrainingSettings
from training import btyd
from training.confidence import event_confidence, weight_table
from training.prepare import DAY_S, PURCHASE_CODE, EventArrays, Prepared
from training.split import Split

log = logging.getLogger(__name__)

HOURS = 24
RECENT_DAYS = (7, 30)
# value tiers by expected 90-day spend among buyers: the top 20 % high, the next 30 % mid
TIER_QUANTILES = (0.5, 0.8)
# P(alive) below the first: likely lost; from the second on: likely active
OUTLOOK_CUTS = (0.3, 0.7)


@dataclass
class MemberZones:
    """Each member row's time zone as an index into ``names`` (-1 = unknown)."""

    codes: np.ndarray  # int16 [members]
    names: list[str]


@dataclass
class BuiltProfiles:
    arrays: dict[str, np.ndarray]
    spec: ProfileSpec


def member_timezones(members: pd.DataFrame, member_map: IdMap) -> MemberZones:
    """Time zones from the members table (docs/data.md: an IANA name, checked on ingest; empty =
    the policy's default zone, -1 here)."""
    codes = np.full(len(member_map), -1, dtype=np.int16)
    if len(members) == 0 or "timezone" not in members:
        return MemberZones(codes, [])
    zone = members["timezone"].astype("string").str.strip()
    zone_codes, names = pd.factorize(zone.mask(zone == ""), sort=True)
    rows = member_map.rows(members["member_id"].astype(str).to_numpy())
    ok = (rows >= 0) & (zone_codes >= 0)
    codes[rows[ok]] = zone_codes[ok].astype(np.int16)
    return MemberZones(codes, [str(n) for n in names])


def _purchases(ev: EventArrays) -> EventArrays:
    return ev.select(ev.etype == PURCHASE_CODE)


def predictions(
    ev: EventArrays, n_members: int, as_of: int, t: TrainingSettings
) -> tuple[btyd.RfmSummary, btyd.BgNbd, btyd.GammaGamma | None]:
    """Summaries as of ``as_of`` and the two models fitted on (a sample of) the buyers."""
    bought = _purchases(ev)
    summary = btyd.summarise(bought.member, bought.ts, bought.amount, n_members, as_of)
    buyers = np.flatnonzero(summary.buyer)
    if buyers.size > t.profile_fit_members:
        rng = np.random.default_rng(t.random_state)
        buyers = np.sort(rng.choice(buyers, size=t.profile_fit_members, replace=False))
    if buyers.size == 0:
        return summary, btyd.BgNbd(1.0, 1.0, 2.0, 2.0), None
    # a whisper of L2 keeps the fit finite on tiny samples; at thousands of buyers it is nothing
    penalty = 1.0 / (100.0 * buyers.size)
    bg = btyd.fit_bgnbd(summary.x[buyers], summary.t_x[buyers], summary.T[buyers], penalty=penalty)
    gg = btyd.fit_gamma_gamma(summary.x[buyers], summary.monetary[buyers], penalty=penalty)
    return summary, bg, gg


def _top_k_per_row(
    rows: np.ndarray, cols: np.ndarray, vals: np.ndarray, n_rows: int, k: int
) -> tuple[np.ndarray, np.ndarray]:
    out_c = np.full((n_rows, k), -1, dtype=np.int32)
    out_v = np.zeros((n_rows, k), dtype=np.float32)
    if rows.size == 0:
        return out_c, out_v
    # by row, then weight descending (vals are shares in (0, 1], so the key stays inside the
    # row's unit interval); one float sort instead of a three-key lexsort, ties keep code order
    order = np.argsort(rows + 0.5 * (1.0 - np.clip(vals, 0.0, 1.0)), kind="stable")
    rows, cols, vals = rows[order], cols[order], vals[order]
    starts = np.r_[0, np.flatnonzero(rows[1:] != rows[:-1]) + 1]
    rank = np.arange(rows.size) - np.repeat(starts, np.diff(np.r_[starts, rows.size]))
    keep = rank < k
    out_c[rows[keep], rank[keep]] = cols[keep]
    out_v[rows[keep], rank[keep]] = vals[keep]
    return out_c, out_v


def interest_tags(
    prepared: Prepared, ev: EventArrays, weight: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Top ``k`` category and brand tags per member by share of the member's event weight."""
    n = len(prepared.members)
    total = np.bincount(ev.member, weights=weight, minlength=n)
    counted = weight > 0
    summed = []
    # One sparse [members x tags] sum per tag kind (scipy sums duplicates with a counting sort,
    # far faster than sorting every event), built one at a time: at 50M events each event-sized
    # temporary is hundreds of MB. Then top-k over the stored (member, tag) pairs only.
    kinds = ((prepared.item_category, prepared.categories), (prepared.item_brand, prepared.brands))
    for codes, names in kinds:
        tag = np.asarray(codes, dtype=np.int32)[ev.item]
        keep = np.array([bool(x) for x in names], dtype=bool)[tag] & counted
        kept_weight, kept_member, kept_tag = _selected(keep, weight, ev.member, tag)
        m = sp.csr_matrix((kept_weight, (kept_member, kept_tag)), shape=(n, len(names)))
        del tag, keep, kept_weight, kept_member, kept_tag
        m.sum_duplicates()
        summed.append(m)
    m = sp.hstack(summed, format="csr")
    m.sort_indices()
    member = np.repeat(np.arange(n), np.diff(m.indptr))
    share = m.data / np.maximum(total[member], 1e-12)
    return _top_k_per_row(member, m.indices.astype(np.int32), share, n, k)


def _selected(mask: np.ndarray, *arrays: np.ndarray) -> tuple[np.ndarray, ...]:
    """``arrays`` at ``mask``; the arrays themselves when it keeps everything (at 50M events
    each selection is a copy of hundreds of MB). Read-only use: they may be the caller's."""
    if bool(mask.all()):
        return arrays
    return tuple(a[mask] for a in arrays)


def channel_shares(ev: EventArrays, weight: np.ndarray, n: int, width: int) -> np.ndarray:
    """Each member's engagement share per event channel; ``width`` channels (the data's own)."""
    member, channel, known_weight = _selected(ev.channel >= 0, ev.member, ev.channel, weight)
    # bincount over member*width + channel: np.add.at is ~10x slower at 50M events
    flat = member.astype(np.int64)
    flat *= width
    flat += channel
    shares = np.bincount(flat, weights=known_weight, minlength=n * width)
    shares = shares.reshape(n, width)
    total = shares.sum(axis=1, keepdims=True)
    return (shares / np.maximum(total, 1e-12)).astype(np.float32)


def local_hours(
    ts: np.ndarray, zone_codes: np.ndarray, zone_names: list[str], default_zone: str
) -> np.ndarray:
    """Hour of day (0..23) of each event time in its member's zone (``default_zone`` when unknown)."""
    hours = np.empty(ts.shape[0], dtype=np.int8)
    utc = pd.DatetimeIndex(pd.to_datetime(ts, unit="s", utc=True))
    names = [*zone_names, default_zone]
    codes = np.where(zone_codes >= 0, zone_codes, len(zone_names))
    for code in np.unique(codes):
        sel = codes == code
        hours[sel] = utc[sel].tz_convert(names[int(code)]).hour.to_numpy()
    return hours


def active_hours(ev: EventArrays, zones: MemberZones, n: int, default_zone: str) -> np.ndarray:
    hours = local_hours(ev.ts, zones.codes[ev.member], zones.names, default_zone)
    flat = ev.member.astype(np.int64) * HOURS + hours.astype(np.int64)
    counts = np.bincount(flat, minlength=n * HOURS).reshape(n, HOURS)
    return np.minimum(counts, np.iinfo(np.uint16).max).astype(np.uint16)


def hour_shares(counts: np.ndarray) -> list[float]:
    total = float(counts.sum())
    if total <= 0:
        return [1.0 / HOURS] * HOURS
    return [round(float(c) / total, 6) for c in counts]


def recent_counts(ev: EventArrays, n: int, as_of: int) -> np.ndarray:
    out = np.zeros((n, 3), dtype=np.int32)
    for col, days in enumerate(RECENT_DAYS):
        sel = (ev.ts > as_of - days * DAY_S) & (ev.ts <= as_of)
        out[:, col] = np.bincount(ev.member[sel], minlength=n)
    sel = (ev.ts > as_of - 30 * DAY_S) & (ev.ts <= as_of) & (ev.etype == PURCHASE_CODE)
    out[:, 2] = np.bincount(ev.member[sel], minlength=n)
    return out


def outlook_codes(p_alive: np.ndarray, cuts: tuple[float, float]) -> np.ndarray:
    lo, hi = cuts
    code = np.where(p_alive >= hi, 3, np.where(p_alive < lo, 1, 2))
    return np.where(np.isnan(p_alive), 0, code).astype(np.uint8)


def build(
    prepared: Prepared,
    t: TrainingSettings,
    zones: MemberZones,
    member_segment: np.ndarray,
    *,
    events: EventArrays,
    as_of: int,
    default_zone: str = "Asia/Shanghai",
) -> BuiltProfiles:
    n = len(prepared.members)
    until = events.ts <= as_of
    ev = events if until.all() else events.select(until)  # no copy of every event when all count
    summary, bg, gg = predictions(ev, n, as_of, t)
    buyer = summary.buyer
    x, t_x, big_t = summary.x[buyer], summary.t_x[buyer], summary.T[buyer]
    p30 = np.zeros(n, dtype=np.float32)
    p90 = np.zeros(n, dtype=np.float32)
    p_alive = np.full(n, np.nan, dtype=np.float32)
    value = np.full(n, np.nan, dtype=np.float32)
    p30[buyer] = bg.expected_purchases(30.0, x, t_x, big_t)
    p90[buyer] = bg.expected_purchases(90.0, x, t_x, big_t)
    p_alive[buyer] = bg.p_alive(x, t_x, big_t)
    if gg is not None:
        value[buyer] = gg.expected_value(x, summary.monetary[buyer])
    else:  # too few repeat buyers for Gamma-Gamma: the buyers' own mean first-day spend
        bought = _purchases(ev)
        spend = np.bincount(bought.member, weights=bought.amount, minlength=n)
        value[buyer] = spend[buyer] / np.maximum(summary.x[buyer] + 1, 1)
    spend_90 = np.nan_to_num(p90 * value, nan=0.0)
    cuts = (0.0, 0.0)
    if buyer.any():
        q = np.quantile(spend_90[buyer], TIER_QUANTILES)
        cuts = (float(q[0]), float(q[1]))
    tier = np.where(~buyer, 0, np.where(spend_90 >= cuts[1], 3, np.where(spend_90 >= cuts[0], 2, 1)))
    if buyer.any() and cuts[1] <= cuts[0]:  # ties at the top: keep "high" for the strictly largest
        tier = np.where(buyer & (spend_90 > cuts[0]), 3, np.where(buyer, 1, 0))

    weight = event_confidence(ev, t.event_weights, t.half_life_days, as_of).astype(np.float64)
    tags, tag_weight = interest_tags(prepared, ev, weight, t.profile_tags)
    raw_weight = weight_table(t.event_weights)[ev.etype]
    channels = channel_shares(ev, raw_weight, n, len(prepared.channels))
    hours = active_hours(ev, zones, n, default_zone)
    segment_hours = {
        stage: hour_shares(hours[member_segment == code].sum(axis=0, dtype=np.int64))
        for code, stage in enumerate(LIFECYCLE_STAGES)
    }
    spec = ProfileSpec(
        data_as_of=datetime.fromtimestamp(as_of, UTC).isoformat(timespec="seconds"),
        bgnbd=bg.as_dict(),
        gamma_gamma=gg.as_dict() if gg is not None else None,
        tags=t.profile_tags,
        categories=len(prepared.categories),
        channels=list(prepared.channels),
        timezones=zones.names,
        value_tier_cuts=cuts,
        outlook_cuts=OUTLOOK_CUTS,
        segment_hours=segment_hours,
        all_hours=hour_shares(hours.sum(axis=0, dtype=np.int64)),
    )
    arrays: dict[str, np.ndarray] = {
        "profile_purchases_30d": p30,
        "profile_purchases_90d": p90,
        "profile_p_alive": p_alive,
        "profile_value": value,
        "profile_value_tier": tier.astype(np.uint8),
        "profile_outlook": outlook_codes(p_alive, spec.outlook_cuts),
        "profile_tag": tags,
        "profile_tag_weight": tag_weight,
        "profile_channel": channels,
        "profile_hours": hours,
        "profile_timezone": zones.codes.astype(np.int16),
        "profile_recent": recent_counts(ev, n, as_of),
    }
    log.info("profiles buyers=%d bgnbd=%s gamma_gamma=%s", int(buyer.sum()), spec.bgnbd, spec.gamma_gamma)
    return BuiltProfiles(arrays, spec)


def auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney, ties averaged); NaN without both classes."""
    pos = int(labels.sum())
    neg = int(labels.size - pos)
    if pos == 0 or neg == 0:
        return float("nan")
    ranks = stats.rankdata(scores)
    return float((ranks[labels].sum() - pos * (pos + 1) / 2) / (pos * neg))


def evaluate_holdout(prepared: Prepared, data_split: Split, t: TrainingSettings) -> dict[str, float]:
    """Fit on the training split, predict the holdout window, compare with what happened.

    Among members who had bought before the holdout: calibration (predicted / actual purchase
    days), mean absolute error, AUC of predicted purchases against "bought in the holdout", and
    the holdout buying rate of the members the outlook calls likely active, uncertain and likely
    lost (the first must clearly exceed the last: ``profiles.return_lift``)."""
    n = len(prepared.members)
    summary, bg, _ = predictions(data_split.train, n, data_split.start, t)
    buyer = summary.buyer
    if not buyer.any():
        return {}
    horizon = (data_split.end - data_split.start) / DAY_S
    x, t_x, big_t = summary.x[buyer], summary.t_x[buyer], summary.T[buyer]
    predicted = bg.expected_purchases(horizon, x, t_x, big_t)
    p_alive = bg.p_alive(x, t_x, big_t)
    ev = prepared.events
    future = (ev.etype == PURCHASE_CODE) & (ev.ts >= data_split.start) & (ev.ts <= data_split.end)
    days = np.unique(ev.member[future].astype(np.int64) * (1 << 32) + ev.ts[future] // DAY_S)
    actual = np.bincount((days >> 32).astype(np.int64), minlength=n)[buyer].astype(np.float64)
    bought = actual > 0
    outlook = outlook_codes(p_alive.astype(np.float32), OUTLOOK_CUTS)
    out: dict[str, float] = {
        "profiles.buyers": float(buyer.sum()),
        "profiles.predicted_purchases": float(predicted.sum()),
        "profiles.actual_purchases": float(actual.sum()),
        # NaN when nobody bought in the holdout: no ratio to show (MLflow skips it; the summary says so)
        "profiles.calibration_ratio": float(predicted.sum() / actual.sum()) if actual.sum() else float("nan"),
        "profiles.mae": float(np.abs(predicted - actual).mean()),
        "profiles.auc_active": auc(predicted, bought),
    }
    for code, name in ((3, "likely_active"), (2, "uncertain"), (1, "likely_lost")):
        sel = outlook == code
        out[f"profiles.members.{name}"] = float(sel.sum())
        out[f"profiles.holdout_buy_rate.{name}"] = float(bought[sel].mean()) if sel.any() else float("nan")
    lost = out["profiles.holdout_buy_rate.likely_lost"]
    active = out["profiles.holdout_buy_rate.likely_active"]
    if np.isfinite(lost) and np.isfinite(active):
        out["profiles.return_lift"] = float(active / max(lost, 1e-6))
    out |= {f"profiles.bgnbd.{k}": v for k, v in bg.as_dict().items()}
    return out


def write(
    bundle_dir: Path,
    prepared: Prepared,
    t: TrainingSettings,
    zones: MemberZones,
    member_segment: np.ndarray,
    settings: Settings,
    events: EventArrays,
    as_of: int,
) -> ProfileSpec:
    """Build the profiles and add them to the written bundle (pipeline hook)."""
    from recsvc.outreach.policy import load_policy

    default_zone = load_policy(settings.outreach.policy_file).default_timezone
    built = build(prepared, t, zones, member_segment, events=events, as_of=as_of, default_zone=default_zone)
    add_profiles(bundle_dir, built.arrays, built.spec)
    return built.spec
