"""How decisions reach Redis, against a real redis-server: the policy's arguments built once per
policy version (round trip through decide.lua, and a reload between pipelined calls), the
EVALSHA pipeline without redis-py's Pipeline (error replies in place, a flushed script cache),
the key names, and the sends zsets read whole (trimming, a gap longer than the week window)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
import redis
from outreach_support import CONSENTED, WalkClock, decoded, local, make_throttle, policy_text
from redis.cluster import RedisCluster

from recsvc.localstack import LocalRedisCluster
from recsvc.outreach.member_keys import MemberKeys, decide_keys
from recsvc.outreach.policy import HOUR_MS, load_policy, parse_policy
from recsvc.outreach.service import throttle_client
from recsvc.outreach.throttle import SCRIPTS_DIR, OutreachAsk, Throttle
from recsvc.redis_client import connect
from recsvc.script_runner import Arg, Call, ScriptRunner

pytestmark = pytest.mark.integration
DAY_MS = 86_400_000


@pytest.fixture
def redis_url(redis_backend: str) -> str:
    """Every test here that uses Redis runs on a single server and on a Redis Cluster."""
    return redis_backend


def consent_all(t: Throttle, member: str) -> None:
    for ch in CONSENTED:
        assert t.set_consent(member, ch, True)


def policy_as_the_script_reads_it(url: str, args: tuple[bytes, ...]) -> list[str]:
    runner = ScriptRunner(connect(url), (SCRIPTS_DIR / "decide.lua").read_text())
    keys = decide_keys("recsvc", "P1", "")
    own: list[Arg] = ["policy", 0, "", "", "", "", "", 0, 0, "", "", ""]  # the 12 per-decision arguments
    return [x.decode() for x in runner.call(keys, own, args)]


def test_policy_arguments_round_trip_through_the_script(redis_url: str) -> None:
    shipped = load_policy()
    seen = policy_as_the_script_reads_it(redis_url, shipped.decide_script_args())
    assert seen == [
        "Asia/Shanghai",
        "0",  # transactional needs no consent
        "1",
        "2",
        "3",
        "10",
        str(8 * DAY_MS),  # sends: the week (gaps are shorter) + 24 h margin
        str(90 * DAY_MS),
        str(DAY_MS),  # idempotency
        str(30 * DAY_MS),
        str(2 * DAY_MS),  # key TTLs: transactional, campaigns, pushed (window + margin)
        str(91 * DAY_MS),
        str(31 * DAY_MS),
        "2",
        *["3", "1", "2", str(48 * HOUR_MS)],
        *["6", "1", "1", str(168 * HOUR_MS)],
    ]
    other = parse_policy(
        {
            "default_timezone": "Europe/Berlin",
            "marketing": {"per_channel_per_day": 2, "per_day": 4, "per_week": 9, "min_gap_hours": 300},
            "transactional": {"per_day": 7, "requires_consent": True},
            "fatigue": {"levels": [{"after_ignored": 5, "per_day": 1, "per_week": 3, "min_gap_hours": 1.5}]},
            "retention": {"margin_hours": 2, "idempotency_hours": 3, "recently_pushed_days": 4},
        }
    )
    seen = policy_as_the_script_reads_it(redis_url, other.decide_script_args())
    assert seen == [
        "Europe/Berlin",
        "1",
        "2",
        "4",
        "9",
        "7",
        str(300 * HOUR_MS + 2 * HOUR_MS),  # the 300 h gap is longer than the week
        str(90 * DAY_MS),
        str(3 * HOUR_MS),
        str(4 * DAY_MS),
        str(DAY_MS + 2 * HOUR_MS),
        str(90 * DAY_MS + 2 * HOUR_MS),
        str(4 * DAY_MS + 2 * HOUR_MS),
        "1",
        *["5", "1", "3", str(int(1.5 * HOUR_MS))],
    ]


def test_a_policy_change_between_pipelined_calls_is_picked_up(redis_url: str, tmp_path: Path) -> None:
    f = tmp_path / "policy.toml"
    f.write_text(policy_text(per_channel_per_day=1))
    clock = WalkClock(local(2026, 6, 1, 10))
    t = make_throttle(redis_url, clock, policy_file=f)
    members = [f"R{n}" for n in range(5)]
    for m in members:
        consent_all(t, m)
    first = t.decide_many([OutreachAsk(m, "app_push", "c1") for m in members], reserve=True)
    assert [d.reason for d in first] == ["ALLOWED"] * 5
    clock.advance(hours=5)
    later = [OutreachAsk(m, "app_push", "c2") for m in members]
    assert {d.reason for d in t.decide_many(later, reserve=False)} == {"CAP_CHANNEL_DAY"}
    f.write_text(policy_text(per_channel_per_day=2))
    t.policies.reload()
    assert {d.reason for d in t.decide_many(later, reserve=False)} == {"ALLOWED"}
    f.write_text(policy_text(per_channel_per_day=1))  # and back: nothing stale is reused
    t.policies.reload()
    assert {d.reason for d in t.decide_many(later, reserve=False)} == {"CAP_CHANNEL_DAY"}
    assert t.check(later[0]).reason == "CAP_CHANNEL_DAY"


def test_a_flushed_script_cache_is_reloaded_without_failing_decisions(redis_url: str) -> None:
    clock = WalkClock(local(2026, 6, 1, 10))
    t = make_throttle(redis_url, clock)
    consent_all(t, "F1")
    r = connect(redis_url)
    r.script_flush()  # as after a Redis restart
    many = t.decide_many([OutreachAsk("F1", "wecom"), OutreachAsk("F2", "wecom")], reserve=False)
    assert [d.reason for d in many] == ["ALLOWED", "NO_CONSENT"]
    r.script_flush()
    assert t.reserve(OutreachAsk("F1", "wecom", "c1")).allowed
    assert r.zcard(t.keys("F1").sends) == 1


def test_error_replies_stay_in_their_place_and_the_connection_in_step(redis_url: str) -> None:
    source = "if ARGV[1] == 'bad' then return redis.error_reply('BAD refused') end return ARGV[1] .. ARGV[2]"
    runner = ScriptRunner(connect(redis_url), source)
    seen: list[int] = []

    def convert(position: int, reply: bytes) -> str:
        seen.append(position)
        return reply.decode()

    calls: list[Call] = [([], [word]) for _ in range(100) for word in ("a", "bad", "c")]
    out = runner.call_many(calls, shared=("!",), convert=convert)
    assert out[:3] == ["a!", out[1], "c!"] and len(out) == 300
    assert all(
        isinstance(out[i], redis.ResponseError) and "BAD refused" in str(out[i]) for i in range(1, 300, 3)
    )
    assert seen == [i for i in range(300) if i % 3 != 1]  # converted in order, errors left alone
    assert runner.call([], ["z"], ("?",)) == b"z?"  # the same pooled connection is still in step
    with pytest.raises(redis.ResponseError, match="BAD"):
        runner.call([], ["bad"])


def test_a_timed_out_pipeline_raises_and_no_late_reply_is_read_later(redis_url: str) -> None:
    runner = ScriptRunner(throttle_client(connect(redis_url), 0.05), "return ARGV[1]")
    assert runner.call([], ["x"]) == b"x"
    server = _server_of(redis_url, "")  # where calls without keys go
    server.ping()
    blocker = threading.Thread(target=lambda: server.execute_command("DEBUG", "SLEEP", "0.3"))
    blocker.start()
    time.sleep(0.05)
    with pytest.raises(redis.TimeoutError):
        runner.call_many([([], [f"late-{i}"]) for i in range(10)])
    blocker.join()
    # the late replies went to the dropped connection, not to the next caller
    assert runner.call_many([([], ["after"]), ([], ["again"])]) == [b"after", b"again"]


def _server_of(url: str, key: str) -> redis.Redis:
    """A plain client of the server holding ``key`` (on a cluster: the primary of its slot)."""
    client = connect(url)
    if isinstance(client, RedisCluster):
        return client.get_redis_connection(client.get_node_from_key(key))
    return client


def test_a_slow_primary_fails_only_its_own_calls_of_a_batch(redis_cluster: LocalRedisCluster) -> None:
    client = connect(redis_cluster.url)
    assert isinstance(client, RedisCluster)
    runner = ScriptRunner(throttle_client(client, 0.1), "return KEYS[1]")
    keys = [f"{{m:S{n}}}:k" for n in range(60)]
    slow = client.get_node_from_key(keys[0]).name
    on_slow = [client.get_node_from_key(k).name == slow for k in keys]
    assert 0 < sum(on_slow) < len(keys)  # the batch spans the slow primary and others
    assert runner.call_many([([k], []) for k in keys]) == [k.encode() for k in keys]
    server = _server_of(redis_cluster.url, keys[0])
    server.ping()
    blocker = threading.Thread(target=lambda: server.execute_command("DEBUG", "SLEEP", "0.4"))
    blocker.start()
    time.sleep(0.1)
    replies = runner.call_many([([k], []) for k in keys])
    blocker.join()
    for key, reply, slowed in zip(keys, replies, on_slow, strict=True):
        if slowed:
            assert isinstance(reply, redis.TimeoutError)
        else:
            assert reply == key.encode()  # the other primaries' answers are kept
    assert runner.call_many([([k], []) for k in keys]) == [k.encode() for k in keys]


def test_decide_keys_are_the_key_layout(redis_url: str) -> None:
    k = MemberKeys.of("recsvc", "M:1@x")
    assert decide_keys("recsvc", "M:1@x", "idem-9") == [
        k.sends,
        k.tx,
        k.camps,
        k.state,
        k.profile,
        k.idem("idem-9"),
        k.pushed,
        k.suppressed,
    ]


def test_old_sends_are_trimmed_only_when_a_reservation_writes(redis_url: str) -> None:
    clock = WalkClock(local(2026, 6, 1, 10))
    t = make_throttle(redis_url, clock)
    r = connect(redis_url)
    consent_all(t, "T1")
    assert t.reserve(OutreachAsk("T1", "app_push", "c1")).allowed  # day 0
    assert t.reserve(OutreachAsk("T1", "sms", "o1", message_class="transactional")).allowed
    clock.set(local(2026, 6, 4, 10))
    assert t.reserve(OutreachAsk("T1", "wecom", "c2")).allowed  # day 3: nothing old enough yet
    assert r.zcard(t.keys("T1").sends) == 2
    clock.set(local(2026, 6, 9, 10, 1))  # day 8 + 1 min: the day-0 send is past the sends TTL
    assert t.check(OutreachAsk("T1", "sms", "c3")).allowed
    assert r.zcard(t.keys("T1").sends) == 2  # a dry run writes nothing, not even a trim
    assert t.reserve(OutreachAsk("T1", "sms", "c3")).allowed
    kept = [decoded(m).split("|")[2] for m in r.zrange(t.keys("T1").sends, 0, -1)]
    assert kept == ["c2", "c3"]
    assert t.reserve(OutreachAsk("T1", "sms", "o2", message_class="transactional")).allowed
    assert [decoded(m).split("|")[2] for m in r.zrange(t.keys("T1").tx, 0, -1)] == ["o2"]


def test_a_gap_longer_than_the_week_counts_the_send_before_the_week(redis_url: str, tmp_path: Path) -> None:
    f = tmp_path / "policy.toml"
    f.write_text(policy_text(min_gap_hours=240.0))  # 10 days
    clock = WalkClock(local(2026, 6, 1, 10))
    t = make_throttle(redis_url, clock, policy_file=f)
    consent_all(t, "G1")
    first = t.reserve(OutreachAsk("G1", "app_push", "c1"))
    assert first.allowed
    clock.set(local(2026, 6, 9, 10))  # day 8: the send has left the week window, not the gap
    d = t.check(OutreachAsk("G1", "wecom", "c2"))
    assert d.reason == "MIN_GAP" and d.next_allowed_ms == int(local(2026, 6, 11, 10).timestamp() * 1000)
    assert "gap is 14400 min" in d.detail
    clock.set(local(2026, 6, 11, 10))
    assert t.check(OutreachAsk("G1", "wecom", "c2")).allowed


def test_wait_replicas_refuses_reservations_no_replica_confirmed(redis_url: str) -> None:
    """``outreach.wait_replicas``: without a replica to confirm it, a reservation is not sent
    (THROTTLE_UNAVAILABLE; kept on the primary, so its slot stays used); checks never wait."""
    clock = WalkClock(local(2026, 6, 1, 10))
    plain = make_throttle(redis_url, clock)
    waiting = make_throttle(redis_url, clock, wait_replicas=1, wait_timeout_ms=5)
    members = [f"W{n}" for n in range(6)]
    for m in members:
        consent_all(plain, m)
    assert waiting.check(OutreachAsk("W0", "app_push", "c0")).allowed
    d = waiting.reserve(OutreachAsk("W0", "app_push", "c1"))
    assert (d.allowed, d.reason) == (False, "THROTTLE_UNAVAILABLE")
    many = waiting.decide_many([OutreachAsk(m, "wecom", "c2") for m in members], reserve=True)
    assert {(x.allowed, x.reason) for x in many} == {(False, "THROTTLE_UNAVAILABLE")}
    r = connect(redis_url)
    assert r.zcard(plain.keys("W0").sends) == 1  # the reservation is on the primary, unconfirmed
    consent_all(plain, "W9")
    assert plain.reserve(OutreachAsk("W9", "app_push", "c3")).allowed  # wait_replicas = 0: as before
