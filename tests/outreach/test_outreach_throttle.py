"""The throttle against a real redis-server: every reason code walked with an injected clock,
idempotency, cancel, feedback, consent, time zones and DST, TTLs, concurrency, outages."""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import redis
from outreach_support import (
    CONSENTED,
    DEFAULT_POLICY_FILE,
    WalkClock,
    ask,
    decoded,
    local,
    make_throttle,
    policy_text,
    utc_ms,
)

from recsvc.errors import StoreUnavailable
from recsvc.localstack import LocalRedis as RedisServer
from recsvc.outreach.planning import plan_campaign
from recsvc.outreach.policy import PolicyStore
from recsvc.outreach.service import throttle_client
from recsvc.outreach.throttle import Throttle
from recsvc.redis_client import connect

pytestmark = pytest.mark.integration
DAY_MS = 86_400_000
HOUR_MS = 3_600_000


@pytest.fixture
def redis_url(redis_backend: str) -> str:
    """Every test here that uses Redis runs on a single server and on a Redis Cluster."""
    return redis_backend


def consent_all(t: Throttle, member: str, channels: tuple[str, ...] = CONSENTED) -> None:
    for ch in channels:
        assert t.set_consent(member, ch, True)


def test_walk_a_member_through_the_marketing_reason_codes(redis_url: str) -> None:
    clock = WalkClock(local(2026, 6, 1, 10))  # Monday 10:00 Shanghai
    t = make_throttle(redis_url, clock)
    m = "M0001"

    d = t.check(ask(m, "app_push", "c1"))
    assert (d.allowed, d.reason, d.next_allowed_ms) == (False, "NO_CONSENT", 0)
    consent_all(t, m)

    d = t.reserve(ask(m, "app_push", "c1"))
    assert d.allowed and d.reason == "ALLOWED" and d.reservation_id.endswith(".M0001")
    first_ms = clock.ms()

    clock.advance(minutes=30)
    d = t.check(ask(m, "app_push", "c1"))
    assert d.reason == "DUPLICATE_CAMPAIGN" and not d.allowed
    d = t.check(ask(m, "app_push", "c2"))
    assert d.reason == "CAP_CHANNEL_DAY" and d.next_allowed_ms == first_ms + DAY_MS
    d = t.check(ask(m, "wecom", "c2"))
    assert d.reason == "MIN_GAP" and d.next_allowed_ms == first_ms + 4 * HOUR_MS
    assert "gap is 240 min" in d.detail

    clock.set(local(2026, 6, 1, 14))
    assert t.check(ask(m, "wecom", "c2")).allowed  # the gap is over exactly at 14:00
    assert t.reserve(ask(m, "wecom", "c2")).allowed

    clock.set(local(2026, 6, 1, 18))
    d = t.check(ask(m, "sms", "c3"))
    assert d.reason == "CAP_DAY" and d.detail == "2 of 2 marketing messages in the last 24h"
    assert d.next_allowed_ms == first_ms + DAY_MS  # the 10:00 send leaves the rolling day

    clock.set(local(2026, 6, 2, 10, 1))
    assert t.reserve(ask(m, "sms", "c3")).allowed

    clock.set(local(2026, 6, 2, 20))
    d = t.check(ask(m, "app_push", "c4"))
    assert d.reason == "CAP_WEEK" and d.next_allowed_ms == first_ms + 7 * DAY_MS

    clock.set(local(2026, 6, 8, 10, 1))
    assert t.check(ask(m, "app_push", "c4")).allowed


def test_the_gap_holds_on_both_sides_of_a_scheduled_send(redis_url: str) -> None:
    """A send scheduled for tomorrow 10:00 (a member's best time) refuses a send now only when
    now is within the gap before it; days before it a send now is fine, as the docs say."""
    import dataclasses

    clock = WalkClock(local(2026, 6, 1, 10))  # Monday 10:00 Shanghai
    t = make_throttle(redis_url, clock)
    m = "M0002"
    consent_all(t, m)
    tomorrow = local(2026, 6, 2, 10)
    scheduled = dataclasses.replace(ask(m, "app_push", "c1"), at_ms=int(tomorrow.timestamp() * 1000))
    assert t.reserve(scheduled).allowed
    d = t.check(ask(m, "wecom", "c2"))
    assert d.allowed, d  # 24 h before the scheduled send: more than the 4 h gap
    clock.set(local(2026, 6, 2, 7))  # 3 h before it
    d = t.check(ask(m, "wecom", "c2"))
    assert d.reason == "MIN_GAP" and "scheduled in 180 min" in d.detail
    assert d.next_allowed_ms == int(tomorrow.timestamp() * 1000) + 4 * HOUR_MS


def test_quiet_hours_and_next_allowed_moved_past_them(redis_url: str) -> None:
    clock = WalkClock(local(2026, 6, 1, 22, 30))
    t = make_throttle(redis_url, clock)
    consent_all(t, "M1")
    d = t.check(ask("M1", "app_push", "c1"))
    assert d.reason == "QUIET_HOURS" and d.next_allowed_ms == int(local(2026, 6, 2, 9).timestamp() * 1000)

    # A cap that frees up at 22:00 local is reported as 09:00 the next morning.
    clock.set(local(2026, 6, 1, 18))
    assert t.reserve(ask("M1", "app_push", "c1")).allowed
    clock.set(local(2026, 6, 1, 19))
    d = t.check(ask("M1", "wecom", "c2"))
    assert d.reason == "MIN_GAP"
    assert d.next_allowed_ms == int(local(2026, 6, 2, 9).timestamp() * 1000)


def test_member_time_zone_and_dst(redis_url: str) -> None:
    ny = ZoneInfo("America/New_York")
    clock = WalkClock(local(2026, 3, 8, 8, 30, zone=ny))  # 08:30 EDT on the spring-forward day
    writer = make_throttle(redis_url, clock)
    consent_all(writer, "US1")
    writer.set_timezone("US1", "America/New_York")
    # a fresh throttle (another server process) does not know the zone yet: one retry, same answer
    for t in (make_throttle(redis_url, clock), writer):
        d = t.check(ask("US1", "app_push", "c1"))
        assert d.reason == "QUIET_HOURS" and d.next_allowed_ms == utc_ms(2026, 3, 8, 13, 0)
    clock.set(local(2026, 3, 8, 9, 0, zone=ny))  # 13:00 UTC: 21:00 in Shanghai, fine in New York
    assert writer.check(ask("US1", "app_push", "c1")).allowed
    # fall back: 08:30 EST on 2026-11-01 is 13:30 UTC, quiet until 14:00 UTC
    clock.set(local(2026, 11, 1, 8, 30, zone=ny))
    assert writer.check(ask("US1", "app_push", "c1")).next_allowed_ms == utc_ms(2026, 11, 1, 14, 0)


def test_transactional_is_exempt_counted_and_capped(redis_url: str) -> None:
    clock = WalkClock(local(2026, 6, 1, 23))  # quiet hours, and no consent at all
    t = make_throttle(redis_url, clock)
    for n in range(10):
        d = t.reserve(ask("M2", "sms", f"order-{n}", message_class="transactional"))
        assert d.allowed and d.reason == "ALLOWED"
        clock.advance(minutes=1)
    d = t.reserve(ask("M2", "sms", "order-10", message_class="transactional"))
    assert d.reason == "CAP_TRANSACTIONAL" and not d.allowed
    assert d.next_allowed_ms == int(local(2026, 6, 2, 23).timestamp() * 1000)
    # transactional sends do not use up marketing caps
    consent_all(t, "M2")
    clock.set(local(2026, 6, 2, 10))
    assert t.check(ask("M2", "sms", "promo")).allowed


def test_fatigue_tightens_caps_and_engagement_resets_it(redis_url: str) -> None:
    clock = WalkClock(local(2026, 6, 1, 10))
    t = make_throttle(redis_url, clock)
    consent_all(t, "M3")
    for _ in range(3):
        t.feedback("M3", "app_push", "ignored")
    assert t.reserve(ask("M3", "app_push", "c1")).allowed
    clock.set(local(2026, 6, 1, 15))
    d = t.check(ask("M3", "wecom", "c2"))  # normal caps would allow this (1 of 2 today, gap 5h)
    assert d.reason == "FATIGUE" and "3 ignored in a row" in d.detail
    assert d.next_allowed_ms == int(local(2026, 6, 3, 10).timestamp() * 1000)  # 48h fatigue gap
    t.feedback("M3", "app_push", "opened")
    assert t.check(ask("M3", "wecom", "c2")).allowed


def test_caps_count_scheduled_sends_where_they_fall(redis_url: str) -> None:
    """Two campaigns scheduled for next Saturday and Sunday leave today's day cap alone (they
    are not "in the last 24h"); two scheduled this afternoon and evening fill it, and the refusal
    says so and waits until a window without them opens."""
    import dataclasses

    clock = WalkClock(local(2026, 6, 1, 10))  # Monday 10:00 Shanghai
    t = make_throttle(redis_url, clock)
    for m in ("M7", "M8"):
        consent_all(t, m)

    def at(m: str, campaign: str, when: datetime) -> Any:
        return dataclasses.replace(ask(m, "app_push", campaign), at_ms=int(when.timestamp() * 1000))

    assert t.reserve(at("M7", "sat", local(2026, 6, 6, 10))).allowed
    assert t.reserve(at("M7", "sun", local(2026, 6, 7, 10))).allowed
    d = t.check(ask("M7", "wecom", "now"))
    assert d.allowed, d  # 2 of 3 this week with it, 1 of 2 on any day

    first, second = local(2026, 6, 1, 14, 30), local(2026, 6, 1, 18, 30)  # the 4 h gap apart
    assert t.reserve(at("M8", "afternoon", first)).allowed
    assert t.reserve(dataclasses.replace(at("M8", "evening", second), channel="sms")).allowed
    d = t.check(ask("M8", "wecom", "now"))
    assert (
        d.reason == "CAP_DAY" and d.detail == "2 of 2 marketing messages within 24h of this one (2 scheduled)"
    )
    assert d.next_allowed_ms == int(first.timestamp() * 1000) + DAY_MS  # a day after the first leaves room


def test_the_fatigue_gap_holds_on_both_sides_of_a_scheduled_send(redis_url: str, tmp_path: Path) -> None:
    """A fatigued member with a send scheduled five days ahead may get one now: the level's 48 h
    gap keeps sends apart on both sides of the scheduled one, as MIN_GAP does, instead of
    refusing everything until two days after it."""
    import dataclasses

    text = DEFAULT_POLICY_FILE.read_text()
    text = text.replace(
        "after_ignored = 3\nper_day = 1\nper_week = 2", "after_ignored = 3\nper_day = 3\nper_week = 5"
    )
    policy = tmp_path / "policy.toml"
    policy.write_text(text)
    clock = WalkClock(local(2026, 6, 1, 10))
    t = make_throttle(redis_url, clock, policy)
    consent_all(t, "M3b")
    for _ in range(3):
        t.feedback("M3b", "app_push", "ignored")
    later = local(2026, 6, 6, 10)
    scheduled = dataclasses.replace(ask("M3b", "app_push", "c1"), at_ms=int(later.timestamp() * 1000))
    assert t.reserve(scheduled).allowed
    d = t.check(ask("M3b", "wecom", "c2"))
    assert d.allowed, d  # five days before it: more than the 48 h gap
    clock.set(local(2026, 6, 5, 10))  # a day before it
    d = t.check(ask("M3b", "wecom", "c2"))
    assert d.reason == "FATIGUE" and d.next_allowed_ms == int(later.timestamp() * 1000) + 2 * DAY_MS


def test_unsubscribe_and_complaint_block_the_channel_for_days(redis_url: str) -> None:
    clock = WalkClock(local(2026, 6, 1, 10))
    t = make_throttle(redis_url, clock)
    consent_all(t, "M4")
    t.feedback("M4", "sms", "unsubscribed")
    t.feedback("M4", "wecom", "complained")
    d = t.check(ask("M4", "sms", "c1"))
    assert d.reason == "BLOCKED_UNSUBSCRIBED" and d.next_allowed_ms == clock.ms() + 90 * DAY_MS
    d = t.check(ask("M4", "wecom", "c1"))
    assert d.reason == "BLOCKED_COMPLAINT" and d.next_allowed_ms == clock.ms() + 180 * DAY_MS
    assert t.check(ask("M4", "app_push", "c1")).allowed  # other channels are untouched
    t.feedback("M4", "wecom", "unsubscribed")  # a shorter block never shortens a longer one
    assert t.check(ask("M4", "wecom", "c1")).reason == "BLOCKED_COMPLAINT"
    # transactional order notices still go out on the blocked channel
    assert t.check(ask("M4", "sms", "order", message_class="transactional")).allowed
    clock.advance(days=91)
    assert t.check(ask("M4", "sms", "c1")).allowed


def test_consent_grant_withdraw_and_older_import_loses(redis_url: str) -> None:
    clock = WalkClock(local(2026, 6, 1, 10))
    t = make_throttle(redis_url, clock)
    assert t.check(ask("M5", "wecom")).reason == "NO_CONSENT"
    t.set_consent("M5", "wecom", True)
    assert t.check(ask("M5", "wecom")).allowed
    clock.advance(seconds=1)
    t.set_consent("M5", "wecom", False)
    assert t.check(ask("M5", "wecom")).reason == "NO_CONSENT"  # withdrawal counts at once
    # an import carrying an older "granted" does not undo the newer withdrawal
    assert t.import_profiles(consents=[("M5", "wecom", True, clock.ms() - 60_000)]) == (0, 0)
    assert t.check(ask("M5", "wecom")).reason == "NO_CONSENT"


def test_idempotent_reserve_returns_the_first_decision_and_records_nothing(redis_url: str) -> None:
    clock = WalkClock(local(2026, 6, 1, 10))
    t = make_throttle(redis_url, clock)
    consent_all(t, "M6")
    r = connect(redis_url)
    first = t.reserve(ask("M6", "app_push", "c1", idempotency_key="k-1"))
    assert first.allowed and not first.replayed
    clock.advance(minutes=5)
    again = t.reserve(ask("M6", "app_push", "c1", idempotency_key="k-1"))
    assert again.replayed and again.allowed and again.reservation_id == first.reservation_id
    assert r.zcard(t.keys("M6").sends) == 1
    # a refused decision replays too (even after the reason went away)
    refused = t.reserve(ask("M6", "wecom", "c2", idempotency_key="k-2"))
    assert refused.reason == "MIN_GAP"
    clock.advance(hours=5)
    replay = t.reserve(ask("M6", "wecom", "c2", idempotency_key="k-2"))
    assert replay.replayed and replay.reason == "MIN_GAP"
    assert r.zcard(t.keys("M6").sends) == 1


def test_cancel_gives_the_slot_and_the_campaign_back(redis_url: str) -> None:
    clock = WalkClock(local(2026, 6, 1, 10))
    t = make_throttle(redis_url, clock)
    consent_all(t, "M7")
    d = t.reserve(ask("M7", "app_push", "c1", idempotency_key="k"))
    assert t.check(ask("M7", "app_push", "c1")).reason == "DUPLICATE_CAMPAIGN"
    assert t.cancel(d.reservation_id) is True
    assert t.cancel(d.reservation_id) is False  # already given back
    assert t.check(ask("M7", "app_push", "c1")).allowed
    # the same idempotency key after a cancel decides afresh instead of replaying a dead slot
    again = t.reserve(ask("M7", "app_push", "c1", idempotency_key="k"))
    assert again.allowed and not again.replayed and again.reservation_id != d.reservation_id
    tx = t.reserve(ask("M7", "sms", "order", message_class="transactional"))
    assert t.cancel(tx.reservation_id) is True


def test_priority_rule_high_priority_waits_less(redis_url: str) -> None:
    clock = WalkClock(local(2026, 6, 1, 10))
    t = make_throttle(redis_url, clock)
    consent_all(t, "M8")
    assert t.reserve(ask("M8", "app_push", "c1")).allowed
    clock.set(local(2026, 6, 1, 11))
    low = t.check(ask("M8", "wecom", "c2", priority=3))
    high = t.check(ask("M8", "wecom", "c3", priority=8))
    assert low.reason == high.reason == "MIN_GAP"
    assert high.next_allowed_ms == low.next_allowed_ms - 2 * HOUR_MS
    clock.set(local(2026, 6, 1, 12))
    assert t.check(ask("M8", "wecom", "c3", priority=8)).allowed
    assert not t.check(ask("M8", "wecom", "c2", priority=3)).allowed


def test_every_key_expires(redis_url: str) -> None:
    clock = WalkClock(local(2026, 6, 1, 16))  # 10:00 in Berlin
    t = make_throttle(redis_url, clock)
    policy = t.policies.current()
    consent_all(t, "M9")
    t.set_timezone("M9", "Europe/Berlin")
    assert t.reserve(ask("M9", "app_push", "c1", idempotency_key="k", item_id="P1")).allowed
    t.reserve(ask("M9", "sms", "o1", message_class="transactional"))
    t.feedback("M9", "app_push", "ignored")
    t.feedback("M9", "sms", "complained")
    r = connect(redis_url)
    keys = [decoded(k) for k in r.scan_iter(match="*")]  # every primary of a cluster
    assert len(keys) == 7 and all("{m:M9}" in k for k in keys)
    for k in keys:
        ttl = r.pttl(k)
        assert 0 < ttl <= max(policy.profile_ttl_ms, policy.state_ttl_ms), k
    assert r.pttl(t.keys("M9").sends) <= policy.sends_ttl_ms
    assert r.pttl(t.keys("M9").tx) <= DAY_MS + policy.margin_ms


def test_policy_reload_changes_decisions(redis_url: str, tmp_path: Path) -> None:
    f = tmp_path / "policy.toml"
    f.write_text(policy_text(per_channel_per_day=1))
    clock = WalkClock(local(2026, 6, 1, 10))
    t = make_throttle(redis_url, clock, policy_file=f)
    consent_all(t, "M10")
    t.reserve(ask("M10", "app_push", "c1"))
    clock.advance(hours=5)
    assert t.check(ask("M10", "app_push", "c2")).reason == "CAP_CHANNEL_DAY"
    f.write_text(policy_text(per_channel_per_day=2))
    t.policies.reload()
    assert t.check(ask("M10", "app_push", "c2")).allowed


def _hammer(url: str, clock: WalkClock, policy: Path, member: str, n: int, out: Counter[str]) -> None:
    t = Throttle(connect(url), PolicyStore(policy, 0), clock=clock)  # its own client
    rng = random.Random(threading.get_ident())
    for i in range(n):
        ch = rng.choice(["app_push", "wecom", "sms"])
        d = t.reserve(ask(member, ch, f"c-{threading.get_ident()}-{i}"))
        if d.allowed:
            out[ch] += 1


def test_32_concurrent_callers_never_exceed_any_cap(redis_url: str, tmp_path: Path) -> None:
    f = tmp_path / "policy.toml"
    f.write_text(policy_text(per_channel_per_day=3, per_day=5, per_week=8, min_gap_hours=0.0))
    clock = WalkClock(local(2026, 6, 1, 10))
    setup = make_throttle(redis_url, clock, policy_file=f)
    consent_all(setup, "HOT")
    r = connect(redis_url)

    def round_of_calls() -> Counter[str]:
        per_thread: list[Counter[str]] = [Counter() for _ in range(32)]
        threads = [
            threading.Thread(target=_hammer, args=(redis_url, clock, f, "HOT", 15, got)) for got in per_thread
        ]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        return sum(per_thread, Counter())

    day1 = round_of_calls()
    assert sum(day1.values()) == 5 and max(day1.values()) <= 3
    assert r.zcard(setup.keys("HOT").sends) == 5
    clock.advance(days=1, minutes=1)
    day2 = round_of_calls()
    assert sum(day2.values()) == 3  # the week allows 8 in all
    assert r.zcard(setup.keys("HOT").sends) == 8


def test_plan_campaign_pipelines_in_chunks_and_streams(redis_url: str) -> None:
    clock = WalkClock(local(2026, 6, 1, 10))
    t = make_throttle(redis_url, clock)
    members = [f"P{n:04d}" for n in range(250)]
    for m in members[::2]:
        t.set_consent(m, "wecom", True)
    t.set_timezone("P0000", "America/New_York")  # 22:00 there: quiet
    fresh = make_throttle(redis_url, clock)  # does not know P0000's zone: one retry round
    pulled = 0

    def audience():  # type: ignore[no-untyped-def]
        nonlocal pulled
        for m in members:
            pulled += 1
            yield m

    stream = plan_campaign(fresh, audience(), ask("", "wecom", "spring"), reserve=True, chunk_size=40)
    first = next(stream)
    assert pulled == 40  # only one chunk was read before the first batch came out
    assert [p.member_id for p in first] == members[:40]
    rest = list(stream)
    assert [len(b) for b in rest] == [40] * 5 + [10]  # one batch per pipelined chunk
    decided = {p.member_id: p.decision for b in [first, *rest] for p in b}
    assert list(decided) == members
    reasons = Counter(d.reason for d in decided.values())
    assert reasons == {"ALLOWED": 124, "NO_CONSENT": 125, "QUIET_HOURS": 1}
    assert decided["P0000"].reason == "QUIET_HOURS"
    # reserved: a second plan finds the campaign already sent
    again = [
        p
        for b in plan_campaign(
            t, iter(members[2:4]), ask("", "wecom", "spring"), reserve=False, chunk_size=40
        )
        for p in b
    ]
    assert [p.decision.reason for p in again] == ["DUPLICATE_CAMPAIGN", "NO_CONSENT"]
    # a limit on reservations is never overshot
    clock.set(local(2026, 6, 2, 10, 1))
    limited = [
        p
        for b in plan_campaign(
            t, iter(members), ask("", "wecom", "autumn"), reserve=True, chunk_size=40, limit=7
        )
        for p in b
    ]
    assert sum(p.decision.allowed for p in limited) == 7


@pytest.mark.slow
def test_redis_down_fails_marketing_closed(tmp_path: Path) -> None:
    server = RedisServer(tmp_path)
    server.start()
    try:
        clock = WalkClock(local(2026, 6, 1, 10))
        base = redis.Redis.from_url(server.url)
        allow = make_throttle(server.url, clock)
        deny = Throttle(
            throttle_client(base, 0.05), allow.policies, clock=clock, transactional_when_unavailable="deny"
        )
        consent_all(allow, "M1")
        assert allow.check(ask("M1", "app_push")).allowed
    finally:
        server.stop()
    d = allow.check(ask("M1", "app_push"))
    assert (d.allowed, d.reason) == (False, "THROTTLE_UNAVAILABLE")
    assert allow.reserve(ask("M1", "app_push", idempotency_key="x")).reason == "THROTTLE_UNAVAILABLE"
    tx = allow.reserve(ask("M1", "sms", "order", message_class="transactional"))
    assert (tx.allowed, tx.reason) == (True, "THROTTLE_UNAVAILABLE")
    tx = deny.reserve(ask("M1", "sms", "order", message_class="transactional"))
    assert (tx.allowed, tx.reason) == (False, "THROTTLE_UNAVAILABLE")
    many = allow.decide_many([ask("M1", "app_push"), ask("M2", "wecom")], reserve=True)
    assert [x.reason for x in many] == ["THROTTLE_UNAVAILABLE"] * 2
    with pytest.raises(StoreUnavailable):
        allow.cancel("0123456789abcdef.M1")
    with pytest.raises(StoreUnavailable):
        allow.set_consent("M1", "sms", True)


@pytest.mark.slow
def test_slow_redis_fails_marketing_closed_within_the_timeout(tmp_path: Path) -> None:
    server = RedisServer(tmp_path)
    server.start()
    try:
        clock = WalkClock(local(2026, 6, 1, 10))
        t = Throttle(
            throttle_client(redis.Redis.from_url(server.url), 0.05),
            make_throttle(server.url, clock).policies,
            clock=clock,
        )
        consent_all(t, "M1")
        blocker = threading.Thread(
            target=lambda: redis.Redis.from_url(server.url).execute_command("DEBUG", "SLEEP", "0.6")
        )
        blocker.start()
        time.sleep(0.1)
        started = time.monotonic()
        d = t.check(ask("M1", "app_push"))
        took = time.monotonic() - started
        blocker.join()
        assert d.reason == "THROTTLE_UNAVAILABLE" and not d.allowed
        assert took < 0.4
        assert t.check(ask("M1", "app_push")).allowed  # and it recovers by itself
    finally:
        server.stop()


def test_erased_member_is_suppressed_for_marketing(redis_url: str) -> None:
    from recsvc.security.erasure import suppression_key

    clock = WalkClock(local(2026, 6, 1, 10))
    t = make_throttle(redis_url, clock)
    consent_all(t, "GONE")
    connect(redis_url).set(suppression_key("recsvc", "GONE"), "1")
    d = t.reserve(ask("GONE", "app_push", "c1"))
    assert (d.allowed, d.reason) == (False, "SUPPRESSED")
    assert connect(redis_url).zcard(t.keys("GONE").sends) == 0


def test_every_decision_is_counted_by_channel_class_and_reason(redis_url: str) -> None:
    from prometheus_client import REGISTRY

    def count(channel: str, klass: str, reason: str) -> float:
        labels = {"channel": channel, "message_class": klass, "reason": reason}
        return REGISTRY.get_sample_value("recsvc_outreach_decisions_total", labels) or 0.0

    clock = WalkClock(local(2026, 6, 1, 10))
    t = make_throttle(redis_url, clock)
    before = count("official_account", "marketing", "NO_CONSENT"), count("sms", "transactional", "ALLOWED")
    t.check(ask("MX", "official_account"))
    t.decide_many(
        [ask("MX", "official_account"), ask("MY", "sms", message_class="transactional")], reserve=True
    )
    assert count("official_account", "marketing", "NO_CONSENT") == before[0] + 2
    assert count("sms", "transactional", "ALLOWED") == before[1] + 1
