"""The per-process directory of members with real-time state, against a real redis-server: it
says "no state" only when sure, hears events recorded by any process, finds state that existed
before it started, and falls back to reading every member while its subscription is broken."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import redis
from waiting import within

from recsvc.active_members import ActiveMembers
from recsvc.realtime import REALTIME_SUFFIXES, RealtimeStore, make_redis_client
from recsvc.redis_client import connect
from recsvc.settings import RedisSettings

PREFIX = "am"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@contextmanager
def directory(
    url: str, ttl_s: float = 600.0, clock: Callable[[], float] = time.monotonic
) -> Iterator[tuple[ActiveMembers, list[bool]]]:
    client = make_redis_client(RedisSettings(url=url, key_prefix=PREFIX, socket_timeout_ms=500))
    changes: list[bool] = []
    active = ActiveMembers(
        client, PREFIX, ttl_s, REALTIME_SUFFIXES, on_sync_change=changes.append, clock=clock
    )
    try:
        yield active, changes
    finally:
        active.stop()
        client.close()


@contextmanager
def store(url: str, active: ActiveMembers | None = None) -> Iterator[RealtimeStore]:
    settings = RedisSettings(url=url, key_prefix=PREFIX, socket_timeout_ms=500)
    client = make_redis_client(settings)
    s = RealtimeStore(client, settings, active=active)
    try:
        yield s
    finally:
        s.close()
        client.close()


def _evalsha_calls(client: redis.Redis) -> int:
    stats = client.info("commandstats")
    return int(stats.get("cmdstat_evalsha", {}).get("calls", 0))


def test_unsynced_directory_answers_maybe_for_everyone(redis_url: str) -> None:
    with directory(redis_url) as (active, _):
        assert not active.synced
        assert active.may_have("anyone")  # never "no" before it knows


def test_synced_directory_knows_state_from_before_and_after_it_started(redis_backend: str) -> None:
    redis_url = redis_backend  # on a cluster, the scan visits every primary
    early = [f"EARLY{n}" for n in range(12)]  # spread over the slots (and primaries)
    with store(redis_url) as writer:
        for member in early:
            assert writer.record(member, "P1", "view", time.time(), "app")
        with directory(redis_url) as (active, changes):
            active.start()
            # _set_synced sets the flag before it calls on_sync_change: wait for the call too
            within(5.0, lambda: active.synced and bool(changes), "active.synced and bool(changes)")
            assert changes == [True]
            assert all(active.may_have(m) for m in early)  # found by the start-up scan
            assert not active.may_have("QUIET")
            assert writer.record("LATE", "P2", "purchase", time.time(), "app")  # another process
            within(1.0, lambda: active.may_have("LATE"), "active.may_have('LATE')")  # the promise: within 1 s
            assert not active.may_have("QUIET")


def test_entries_end_with_the_state_ttl(redis_url: str) -> None:
    clock = Clock()
    with directory(redis_url, ttl_s=60.0, clock=clock) as (active, _):
        active.start()
        within(5.0, lambda: active.synced, "active.synced")
        active.heard("M1")
        clock.now += 59.0
        assert active.may_have("M1")
        clock.now += 2.0
        assert not active.may_have("M1")
        active._sweep()
        assert "M1" not in active._until  # and is dropped from memory


def test_broken_subscription_reads_everyone_until_resynced(redis_url: str) -> None:
    admin = redis.Redis.from_url(redis_url)
    with store(redis_url) as writer, directory(redis_url) as (active, changes):
        active.start()
        within(5.0, lambda: active.synced, "active.synced")
        admin.client_kill_filter(_type="pubsub")  # the listener's connection dies
        within(
            5.0, lambda: False in changes, "False in changes"
        )  # unsynced: every member is read from Redis again
        # An event recorded while the directory was deaf is found by the re-scan.
        writer.record("DURING", "P3", "view", time.time(), "app")
        within(10.0, lambda: changes[-1] is True and active.synced, "changes[-1] is True and active.synced")
        assert active.may_have("DURING")
        assert changes[:2] == [True, False]
    admin.close()


def test_store_skips_the_read_only_for_members_without_state(redis_url: str) -> None:
    admin = redis.Redis.from_url(redis_url)
    with directory(redis_url) as (active, _), store(redis_url, active) as s:
        active.start()
        within(5.0, lambda: active.synced, "active.synced")
        s.record("WARMUP", "P0", "view", time.time(), "app")
        s.recent("WARMUP")  # a member with state: read, which loads the read script
        before = _evalsha_calls(admin)
        quiet = s.recent("QUIET")
        assert quiet is not None and quiet.empty  # "no recent events", not "Redis unavailable"
        assert _evalsha_calls(admin) == before  # and Redis was not asked
        assert s.record("BUYER", "P7", "purchase", time.time(), "app")
        before = _evalsha_calls(admin)  # the write is a script too (it checks erasure)
        got = s.recent("BUYER")  # known at once in the writing process, without the notice
        assert got is not None and got.purchased == frozenset({"P7"})
        assert _evalsha_calls(admin) == before + 1
    admin.close()


def test_without_a_directory_every_member_is_read(redis_url: str) -> None:
    admin = redis.Redis.from_url(redis_url)
    with store(redis_url) as s:
        s.recent("WARMUP")
        before = _evalsha_calls(admin)
        assert s.recent("QUIET") is not None
        assert _evalsha_calls(admin) == before + 1
    admin.close()


def test_an_unexpected_error_in_the_listener_unsyncs_and_recovers(redis_url: str) -> None:
    with directory(redis_url) as (active, changes):
        real_scan = active._scan
        calls = {"n": 0}

        def failing_once() -> None:
            calls["n"] += 1
            if calls["n"] == 1:
                raise ValueError("a bug, not a Redis error")
            real_scan()

        active._scan = failing_once  # type: ignore[method-assign]
        active.start()
        within(
            10.0, lambda: active.synced and bool(changes), "active.synced and bool(changes)"
        )  # retried after the back-off
        assert calls["n"] == 2
        assert changes == [True]  # never synced before the scan succeeded
        assert active.may_have("anyone") is False


def test_a_store_failure_makes_the_directory_read_everyone_until_rescanned(redis_backend: str) -> None:
    """Issue 15, finding 6: a notice can be lost with no error on the subscription (a stall, a
    connection that died quietly). Any Redis failure the store sees must make the directory read
    every member again, and the re-scan must find the state whose notice was lost."""
    redis_url = redis_backend
    admin = connect(redis_url)
    with directory(redis_url) as (active, changes), store(redis_url, active) as s:
        active.start()
        # State written without a notice (as if the PUBLISH had been lost).
        within(5.0, lambda: active.synced and bool(changes), "active.synced and bool(changes)")
        admin.lpush(f"{PREFIX}:{{m:LOST}}:rt:events", '{"i":"P1","t":"view","ts":1.0,"c":"app"}')
        assert not active.may_have("LOST")  # the directory cannot know
        s._failed(redis.ConnectionError("a Redis call failed"))
        assert active.may_have("LOST")  # at once: every member is read again
        assert not active.synced
        within(
            2.0, lambda: active.synced and len(changes) >= 3, "active.synced and len(changes) >= 3"
        )  # re-subscribed and re-scanned
        assert active.may_have("LOST")  # found by the re-scan
        assert changes[:3] == [True, False, True]
    admin.close()
