"""One member's profile: the served bundle's row plus live outreach state and recent events.

Reads: a :class:`recsvc.members.view.ProfileView` row; the outreach store through the throttle
(``read_member_state`` for consent, blocks and fatigue; a dry-run decision per channel for the
next time marketing is allowed); the real-time store's recent events.
Gives: a ``recsvc.v1.MemberProfile``. Every "why" is one line a person can read.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from recsvc.bundle import OUTLOOKS, RECENT_COUNTS, VALUE_TIERS
from recsvc.members.sendtime import SendTimes, next_window_start_ms
from recsvc.members.view import ProfileView
from recsvc.outreach.decision import Decision
from recsvc.outreach.member_records import MemberOutreachState
from recsvc.outreach.policy import zone_or
from recsvc.realtime import RecentActivity
from recsvc.settings import TrainingSettings
from recsvc.v1 import members_pb2


@dataclass
class LiveParts:
    """What Redis said (None where it did not answer)."""

    state: MemberOutreachState | None
    checks: dict[str, Decision] | None
    recent: RecentActivity | None


def lifecycle_why(stage: str, recency: float, frequency: int, t: TrainingSettings) -> str:
    what = (
        f"last purchase {recency:.0f} days ago"
        if frequency > 0
        else f"no purchase yet; last seen {recency:.0f} days ago"
    )
    rule = {
        "new": f"registered within {t.new_member_days} days without a purchase",
        "active": f"active below {t.at_risk_days} days",
        "at_risk": f"at_risk from {t.at_risk_days} days",
        "dormant": f"dormant from {t.dormant_days} days",
        "churned": f"churned from {t.churned_days} days",
    }.get(stage, stage)
    return f"{what} ({rule})"


def fill_profile(
    msg: members_pb2.MemberProfile,
    view: ProfileView,
    row: int,
    member_id: str,
    *,
    training: TrainingSettings,
    send_times: SendTimes,
    default_zone: str,
    live: LiveParts,
    now_ms: int,
) -> None:
    a = view.arrays
    rfm = view.rfm
    model = view.model
    msg.member_id = member_id
    msg.bundle_id = view.bundle_id
    stage = model.segments[int(model.member_segment[row])]
    frequency = int(rfm["frequency"][row])
    recency = float(rfm["recency_days"][row])
    lc = msg.lifecycle
    lc.stage = stage
    lc.why = lifecycle_why(stage, recency, frequency, training)
    lc.recency_days = recency
    lc.frequency = frequency
    lc.monetary = float(rfm["monetary"][row])
    lc.r_score, lc.f_score, lc.m_score = int(rfm["r"][row]), int(rfm["f"][row]), int(rfm["m"][row])
    lc.rfm_score = int(rfm["rfm_score"][row])

    pr = msg.predictions
    p_alive = float(a["profile_p_alive"][row])
    pr.value_tier = VALUE_TIERS[int(a["profile_value_tier"][row])]
    pr.outlook = OUTLOOKS[int(a["profile_outlook"][row])]
    if math.isnan(p_alive):
        pr.modelled = False
        pr.why = "no purchase yet: the purchase model starts at the first purchase"
    else:
        pr.modelled = True
        pr.p_alive = p_alive
        pr.purchases_30d = float(a["profile_purchases_30d"][row])
        pr.purchases_90d = float(a["profile_purchases_90d"][row])
        value = float(a["profile_value"][row])
        pr.value_per_purchase = 0.0 if math.isnan(value) else value
        pr.expected_value_90d = pr.purchases_90d * pr.value_per_purchase
        pr.why = (
            f"{p_alive:.0%} likely still buying after {frequency} purchases, "
            f"the last {recency:.0f} days ago; "
            f"{pr.value_tier} value (expected 90-day spend {pr.expected_value_90d:.0f})"
        )

    for code, weight in zip(a["profile_tag"][row], a["profile_tag_weight"][row], strict=True):
        if code < 0:
            break
        kind, name = view.tag(int(code))
        msg.interests.add(kind=kind, name=name, weight=float(weight))
    shares = np.asarray(a["profile_channel"][row])
    for col in np.argsort(-shares, kind="stable"):
        if shares[col] <= 0:
            break
        msg.channels.add(channel=view.spec.channels[int(col)], share=float(shares[col]))

    hours = np.asarray(a["profile_hours"][row])
    msg.active_hours.extend(int(h) for h in hours)
    # the imported zone first, the one the throttle judges quiet hours in and best send times are
    # placed in (recsvc/members/schedule.py): the windows shown are the ones outreach uses
    imported = live.state.timezone if live.state else None
    zone = zone_or(imported, view.timezone(row) or default_zone)
    msg.time_zone = zone.key
    choice = send_times.choose(hours, stage)
    policy = send_times.policy
    for channel in policy.channels:
        window = msg.send_windows.add(
            channel=channel, start_hour=choice.start_hour, hours=choice.hours, source=choice.source
        )
        window.next_start.FromMilliseconds(
            next_window_start_ms(now_ms, zone, choice.start_hour, choice.hours)
        )

    recent = a["profile_recent"][row]
    rc = msg.recent
    for name, value in zip(RECENT_COUNTS, recent, strict=True):
        setattr(rc, name, int(value))

    msg.bundle.source = "bundle"
    msg.bundle.as_of.FromMilliseconds(view.data_as_of_ms)
    msg.bundle.available = True
    msg.live.source = "live"
    msg.live.as_of.FromMilliseconds(now_ms)
    msg.live.available = live.state is not None and live.checks is not None and live.recent is not None

    if live.state is not None:
        msg.fatigue_level = live.state.fatigue_level
        msg.ignored_in_a_row = live.state.ignored_in_a_row
    for channel in policy.channels:
        out = msg.outreach.add(channel=channel)
        if live.state is not None:
            consent = live.state.consent.get(channel)
            out.consent = "unknown" if consent is None else ("granted" if consent else "refused")
            out.blocked = channel in live.state.blocked_until_ms
        if live.checks is not None and channel in live.checks:
            d = live.checks[channel]
            out.marketing_allowed_now = d.allowed
            if not d.allowed:
                out.reason = d.reason
            if d.next_allowed_ms > 0:
                out.next_allowed_at.FromMilliseconds(d.next_allowed_ms)
    if live.recent is not None:
        rc.live_events = len(live.recent.events)
        rc.live_purchases = sum(1 for e in live.recent.events if e.event_type == "purchase")
        if live.recent.events:
            rc.last_live_event_at.FromMilliseconds(int(max(e.ts for e in live.recent.events) * 1000))
