"""Property tests of the throttle (hypothesis): any policy, time zone and sequence of sends,
ignores and clicks, with clocks drawn around DST changes (New York, London, Sydney) and the edges
of every window. Quiet hours are pure functions; the rest runs the real Lua scripts on the
session's redis-server (a fresh member per example, so no flush is needed).

Properties:
- quiet_until_ms never raises, is 0 exactly outside quiet hours, and otherwise is the first
  instant after them (quiet one millisecond before, not quiet at it);
- no sequence of reservations ever puts more sends in a rolling day / week / channel-day than the
  caps (tightened by the fatigue level in force), or two sends closer than the gap, or a
  marketing send into quiet hours; a QUIET_HOURS refusal happens in quiet hours only;
- a refusal's next_allowed time is the first allowed instant: refused 1 ms before, allowed at it;
- no decision raises, for any clock in range.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import redis
from google.protobuf.timestamp_pb2 import Timestamp
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from recsvc.localstack import LocalRedis
from recsvc.outreach.policy import Policy, PolicyStore, QuietHours, parse_policy
from recsvc.outreach.quiet_hours import LATEST_MS, quiet_until_ms
from recsvc.outreach.throttle import OutreachAsk, Throttle

DAY_MS = 86_400_000
WEEK_MS = 7 * DAY_MS
ZONES = ("America/New_York", "Europe/London", "Australia/Sydney", "Asia/Shanghai", "Asia/Kolkata")
CHANNELS = ("app_push", "wecom", "sms")
FAST = settings(
    max_examples=60,
    deadline=None,  # the first example pays for loading the scripts
    suppress_health_check=[HealthCheck.too_slow],
    derandomize=True,  # the suite must not flake; the examples are the same on every run
)


def _transitions(zone: ZoneInfo, years: range) -> list[int]:
    """Epoch ms of every UTC offset change of ``zone`` in ``years`` (found hourly, exact to 1 s)."""
    out = []
    t = int(datetime(years.start, 1, 1, tzinfo=UTC).timestamp())
    stop = int(datetime(years.stop, 1, 1, tzinfo=UTC).timestamp())

    def offset(s: int) -> Any:
        return datetime.fromtimestamp(s, tz=UTC).astimezone(zone).utcoffset()

    while t < stop:
        if offset(t) != offset(t + 3600):
            lo, hi = t, t + 3600
            while hi - lo > 1:
                mid = (lo + hi) // 2
                lo, hi = (mid, hi) if offset(mid) == offset(t) else (lo, mid)
            out.append(hi * 1000)
        t += 3600
    return out


TRANSITIONS = {name: _transitions(ZoneInfo(name), range(2026, 2028)) for name in ZONES}
assert all(len(TRANSITIONS[z]) == 4 for z in ZONES[:3]), TRANSITIONS  # two DST changes a year


def minutes_hhmm(m: int) -> str:
    return f"{m // 60:02d}:{m % 60:02d}"


zones = st.sampled_from(ZONES)
# window edges on whole hours and half hours (where DST changes happen) and anywhere else
edge_minutes = st.one_of(st.integers(0, 47).map(lambda h: h * 30), st.integers(0, 24 * 60 - 1))


LAST_2027_MS = int(datetime(2027, 12, 31, tzinfo=UTC).timestamp() * 1000)


@st.composite
def instants(draw: st.DrawFn, zone: str) -> int:
    """An epoch ms near one of the zone's DST changes, or anywhere in 2026-2027."""
    if draw(st.booleans()) and TRANSITIONS[zone]:
        return draw(st.sampled_from(TRANSITIONS[zone])) + draw(st.integers(-2 * DAY_MS, 2 * DAY_MS))
    return draw(st.integers(TRANSITIONS["Europe/London"][0] - 60 * DAY_MS, LAST_2027_MS))


def _quiet(at_ms: int, zone: ZoneInfo, quiet: QuietHours) -> bool:
    local = datetime.fromtimestamp(at_ms / 1000, tz=UTC).astimezone(zone)
    start, end = quiet.minutes()
    minute = local.hour * 60 + local.minute
    if start == end:
        return False
    return start <= minute < end if start < end else minute >= start or minute < end


# ---------------------------------------------------------------- quiet hours (pure)
@FAST
@given(data=st.data(), zone_name=zones, start=edge_minutes, end=edge_minutes)
def test_quiet_until_is_the_first_instant_after_quiet_hours(
    data: st.DataObject, zone_name: str, start: int, end: int
) -> None:
    zone = ZoneInfo(zone_name)
    quiet = QuietHours(start=minutes_hhmm(start), end=minutes_hhmm(end))
    now = data.draw(instants(zone_name))
    until = quiet_until_ms(now, zone, quiet)
    if not _quiet(now, zone, quiet):
        assert until == 0
        return
    assert until > now
    assert not _quiet(until, zone, quiet)
    assert _quiet(until - 1, zone, quiet)  # the first allowed instant, also across a DST jump
    between = data.draw(st.integers(now, until - 1))
    assert _quiet(between, zone, quiet)


@settings(max_examples=200, deadline=None, derandomize=True)
@given(at=st.integers(-(2**63), 2**63 - 1), zone_name=zones)
def test_quiet_hours_never_raise_for_any_instant(at: int, zone_name: str) -> None:
    until = quiet_until_ms(at, ZoneInfo(zone_name), QuietHours())
    assert until == 0 or until > at


# ---------------------------------------------------------------- the throttle on Redis
class FixedPolicy(PolicyStore):
    """One policy object, no file: each example draws its own."""

    def __init__(self, policy: Policy) -> None:
        self.policy = policy

    def current(self) -> Policy:
        return self.policy


class Clock:
    def __init__(self, ms: int) -> None:
        self.ms = ms

    def __call__(self) -> float:
        return self.ms / 1000


@st.composite
def policies(draw: st.DrawFn) -> Policy:
    per_channel = draw(st.integers(1, 3))
    per_day = draw(st.integers(per_channel, 4))
    per_week = draw(st.integers(per_day, 6))
    levels = []
    if draw(st.booleans()):
        levels.append(
            {
                "after_ignored": draw(st.integers(1, 3)),
                "per_day": draw(st.integers(1, 2)),
                "per_week": draw(st.integers(1, 3)),
                "min_gap_hours": draw(st.sampled_from([0.0, 6.0, 48.0])),
            }
        )
    return parse_policy(
        {
            "default_timezone": draw(zones),
            "marketing": {
                "per_channel_per_day": per_channel,
                "per_day": per_day,
                "per_week": per_week,
                "min_gap_hours": draw(st.sampled_from([0.0, 0.5, 2.0, 4.0, 23.5])),
            },
            "quiet_hours": {
                "start": minutes_hhmm(draw(edge_minutes)),
                "end": minutes_hhmm(draw(edge_minutes)),
            },
            "fatigue": {"levels": levels},
            "priority": {"high_from": 7, "high_min_gap_hours": draw(st.sampled_from([0.0, 1.0]))},
        }
    )


steps = st.lists(
    st.tuples(
        # minutes to wait before the step: often a window's exact length (edges), else anything
        st.one_of(st.sampled_from([0, 1, 30, 60, 24 * 60, 7 * 24 * 60]), st.integers(0, 3 * 24 * 60)),
        st.sampled_from(["reserve", "reserve", "reserve", "ignored", "clicked"]),
        st.sampled_from(CHANNELS),
        st.integers(0, 9),
    ),
    min_size=1,
    max_size=25,
)
_members = itertools.count()


@pytest.fixture(scope="module")
def client(redis_server: LocalRedis) -> Iterator[redis.Redis]:
    c = redis.Redis.from_url(redis_server.url)
    yield c
    c.close()


def _member(throttle: Throttle, zone: str) -> str:
    member = f"prop-{next(_members)}"
    throttle.set_timezone(member, zone)
    for ch in CHANNELS:
        throttle.set_consent(member, ch, True, at_ms=0)
    return member


def _level(policy: Policy, streak: int) -> Any:
    active = [lv for lv in policy.fatigue.levels if streak >= lv.after_ignored]
    return active[-1] if active else None


@FAST
@given(data=st.data(), policy=policies(), zone=zones, plan=steps)
def test_no_sequence_exceeds_a_cap_a_gap_or_quiet_hours(
    client: redis.Redis, data: st.DataObject, policy: Policy, zone: str, plan: list[Any]
) -> None:
    clock = Clock(data.draw(instants(zone)))
    throttle = Throttle(client, FixedPolicy(policy), clock=clock)
    member = _member(throttle, zone)
    tz = ZoneInfo(zone)
    streak = 0
    sent: list[tuple[int, str, int, int]] = []  # (ms, channel, priority, streak then)
    for wait_min, op, channel, priority in plan:
        clock.ms += wait_min * 60_000
        if op != "reserve":
            throttle.feedback(member, channel, op, at_ms=clock.ms)
            streak = streak + 1 if op == "ignored" else 0
            continue
        d = throttle.reserve(OutreachAsk(member_id=member, channel=channel, priority=priority))
        if d.allowed:
            assert not _quiet(clock.ms, tz, policy.quiet_hours)
            sent.append((clock.ms, channel, priority, streak))
        elif d.reason == "QUIET_HOURS":
            assert _quiet(clock.ms, tz, policy.quiet_hours)
        assert d.reason != "THROTTLE_UNAVAILABLE"
    caps = policy.marketing
    for i, (at, channel, priority, streak_then) in enumerate(sent):
        before = sent[: i + 1]
        day = [s for s in before if s[0] > at - DAY_MS]
        week = [s for s in before if s[0] > at - WEEK_MS]
        level = _level(policy, streak_then)
        assert len([s for s in day if s[1] == channel]) <= caps.per_channel_per_day
        assert len(day) <= min(caps.per_day, level.per_day if level else caps.per_day)
        assert len(week) <= min(caps.per_week, level.per_week if level else caps.per_week)
        if i:
            gap = policy.min_gap_ms(priority)
            if level:
                gap = max(gap, int(level.min_gap_hours * 3_600_000))
            assert at - sent[i - 1][0] >= gap


@FAST
@given(data=st.data(), policy=policies(), zone=zones, plan=steps)
def test_next_allowed_is_the_first_allowed_instant(
    client: redis.Redis, data: st.DataObject, policy: Policy, zone: str, plan: list[Any]
) -> None:
    clock = Clock(data.draw(instants(zone)))
    throttle = Throttle(client, FixedPolicy(policy), clock=clock)
    member = _member(throttle, zone)
    for wait_min, op, channel, priority in plan:  # some history
        clock.ms += wait_min * 60_000
        if op == "reserve":
            throttle.reserve(OutreachAsk(member_id=member, channel=channel, priority=priority))
        else:
            throttle.feedback(member, channel, op, at_ms=clock.ms)
    clock.ms += data.draw(st.integers(0, 2 * DAY_MS))
    ask = OutreachAsk(member_id=member, channel=data.draw(st.sampled_from(CHANNELS)), priority=0)
    d = throttle.check(ask)
    assume(not d.allowed and d.next_allowed_ms > 0)
    now, first = clock.ms, d.next_allowed_ms
    assert first > now
    clock.ms = first - 1
    assert not throttle.check(ask).allowed
    clock.ms = data.draw(st.integers(now, first - 1))
    assert not throttle.check(ask).allowed
    clock.ms = first
    assert throttle.check(ask).allowed, (d, throttle.check(ask))


@settings(max_examples=30, deadline=None, derandomize=True)
@given(
    at=st.one_of(
        st.integers(0, LATEST_MS + 10 * DAY_MS),
        st.sampled_from([0, 1, LATEST_MS - 1, LATEST_MS, LATEST_MS + 1, 253_402_300_799_000]),
    ),
    zone=zones,
)
def test_decisions_never_raise_for_any_clock(client: redis.Redis, at: int, zone: str) -> None:
    policy = parse_policy({})
    clock = Clock(at)
    throttle = Throttle(client, FixedPolicy(policy), clock=clock)
    member = _member(throttle, zone)
    for _ in range(3):
        d = throttle.reserve(OutreachAsk(member_id=member, channel="sms", campaign_id="c"))
        assert d.reason != "THROTTLE_UNAVAILABLE"
        assert d.next_allowed_ms >= 0
        if d.next_allowed_ms > at:  # what the API sends: a protobuf Timestamp (year 9999 at most)
            Timestamp().FromMilliseconds(d.next_allowed_ms)
        throttle.feedback(member, "sms", "unsubscribed", at_ms=at)
        clock.ms += 12 * 3_600_000


@pytest.mark.parametrize(
    ("zone_name", "now", "window", "free"),
    [
        # fall back at 02:00 EDT: 01:30 EDT is quiet, 01:00 EST (the next instant after 01:59:59
        # EDT) is not, though the wall-clock end 02:30 is still an hour and a half away
        ("America/New_York", "2026-11-01T01:30:00-04:00", ("01:30", "02:30"), "2026-11-01T01:00:00-05:00"),
        ("Europe/London", "2026-10-25T01:45:00+01:00", ("01:30", "02:30"), "2026-10-25T01:00:00+00:00"),
    ],
)
def test_quiet_hours_end_where_the_clock_falls_back_out_of_the_window(
    zone_name: str, now: str, window: tuple[str, str], free: str
) -> None:
    zone = ZoneInfo(zone_name)
    quiet = QuietHours(start=window[0], end=window[1])
    now_ms = int(datetime.fromisoformat(now).timestamp() * 1000)
    until = quiet_until_ms(now_ms, zone, quiet)
    assert until == int(datetime.fromisoformat(free).timestamp() * 1000)
    assert not _quiet(until, zone, quiet) and _quiet(until - 1, zone, quiet)
