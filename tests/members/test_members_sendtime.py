"""Best send windows: quiet hours respected, fallbacks in order, DST-correct next openings; and the
stored outreach state a profile reads, however damaged."""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import numpy as np

from recsvc.members.sendtime import (
    SendTimes,
    SendWindowChoice,
    allowed_starts,
    best_starts,
    in_window,
    next_window_start_ms,
    quiet_hour_mask,
    time_in_window_ms,
)
from recsvc.outreach.policy import Policy, QuietHours

NY = ZoneInfo("America/New_York")


def _ms(dt: datetime) -> int:
    return int(dt.timestamp() * 1000)


def test_quiet_hours_and_allowed_starts() -> None:
    mask = quiet_hour_mask(QuietHours(start="21:00", end="09:00"))
    assert mask[21] and mask[0] and mask[8] and not mask[9] and not mask[20]
    ok = allowed_starts(Policy())  # 2-hour windows must end by 21:00
    assert ok[9] and ok[19] and not ok[20] and not ok[8]


def test_best_start_is_the_busiest_allowed_window() -> None:
    hist = np.zeros((2, 24))
    hist[0, 18:20] = 10  # evening person
    hist[1, 22] = 50  # busiest at 22:00, inside quiet hours: next best allowed window wins
    hist[1, 13] = 5
    starts = best_starts(hist, allowed_starts(Policy()), 2)
    assert starts[0] == 18
    assert starts[1] in (12, 13)
    assert best_starts(np.zeros((1, 24)), allowed_starts(Policy()), 2)[0] == -1


def test_fallbacks_member_then_segment_then_policy() -> None:
    segment = [0.0] * 24
    segment[10] = 1.0
    times = SendTimes(Policy(), {"active": segment})
    busy = np.zeros(24, dtype=np.int64)
    busy[17] = 20
    assert times.choose(busy, "active").source == "member" and times.choose(busy, "active").start_hour in (
        16,
        17,
    )
    few = np.zeros(24, dtype=np.int64)
    few[17] = 2  # below send_time.min_member_events
    chosen = times.choose(few, "active")
    assert chosen.source == "segment" and chosen.start_hour in (9, 10)
    assert times.choose(few, "churned") == SendWindowChoice(12, 2, "policy")
    starts, sources = times.choose_many(np.stack([busy, few, few]), ["active", "active", "churned"])
    assert sources.tolist() == [0, 1, 2] and starts[2] == 12


def test_next_window_opens_at_local_hour_across_dst() -> None:
    # 2026-03-08 02:00 New York clocks jump to 03:00 (UTC-5 -> UTC-4)
    before = _ms(datetime(2026, 3, 7, 20, tzinfo=NY))
    opens = next_window_start_ms(before, NY, 18, 2)
    local = datetime.fromtimestamp(opens / 1000, UTC).astimezone(NY)
    assert (local.day, local.hour, local.utcoffset().total_seconds()) == (8, 18, -4 * 3600)  # type: ignore[union-attr]
    inside = _ms(datetime(2026, 3, 8, 19, 30, tzinfo=NY))
    assert next_window_start_ms(inside, NY, 18, 2) == inside and in_window(inside, NY, 18, 2)


def test_time_in_a_campaign_window() -> None:
    start = _ms(datetime(2026, 6, 1, 8, tzinfo=NY))
    end = _ms(datetime(2026, 6, 1, 23, tzinfo=NY))
    at = time_in_window_ms(start, end, NY, 18, 2)
    assert at == _ms(datetime(2026, 6, 1, 18, tzinfo=NY))
    assert time_in_window_ms(start, _ms(datetime(2026, 6, 1, 12, tzinfo=NY)), NY, 18, 2) is None


def test_member_state_survives_unreadable_stored_values() -> None:
    from recsvc.outreach.member_records import _member_state

    state = _member_state(
        Policy(),
        0,
        {b"tz": b"Asia/Tokyo", b"c:wecom": b"1|5", b"c:sms": b"0|5"},
        {b"b:wecom": b"U|not-a-number", b"b:sms": b"C|99999999999999", b"streak": b"inf"},
        now_ms=1000,
    )
    assert (
        state.consent["wecom"] is True and state.consent["sms"] is False and state.consent["app_push"] is None
    )
    assert state.blocked_until_ms == {"sms": 99999999999999} and state.ignored_in_a_row == 0
    assert state.timezone == "Asia/Tokyo" and state.fatigue_level == 0
