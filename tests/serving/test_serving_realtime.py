"""The real-time store against a real redis-server: what RecordEvent writes is what the next
recommendation reads, from any thread, through a Redis that lost its scripts or went away."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from recsvc.localstack import LocalRedis
from recsvc.realtime import RealtimeStore, make_redis_client
from recsvc.redis_client import RedisClient
from recsvc.settings import RedisSettings


@pytest.fixture
def redis_url(redis_backend: str) -> str:
    """Every test here that uses Redis runs on a single server and on a Redis Cluster."""
    return redis_backend


class StepClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@contextmanager
def open_store(url: str, clock: StepClock | None = None) -> Iterator[tuple[RealtimeStore, RedisClient]]:
    settings = RedisSettings(url=url, key_prefix="t", recent_events_max=3, socket_timeout_ms=200)
    client = make_redis_client(settings)
    store = RealtimeStore(client, settings, clock=clock or StepClock())
    try:
        yield store, client
    finally:
        store.close()
        client.close()


def test_recent_reads_what_record_wrote_newest_first_capped(redis_url: str) -> None:
    with open_store(redis_url) as (store, _client):
        for i, kind in enumerate(["view", "purchase", "view", "click"]):
            assert store.record("M1", f"P{i}", kind, 1_700_000_000.0 + i, "app")
        got = store.recent("M1")
        assert got is not None
        assert [e.item_id for e in got.events] == ["P3", "P2", "P1"]  # newest first, capped at 3
        assert got.events[0].event_type == "click" and got.events[0].channel == "app"
        assert got.purchased == frozenset({"P1"})
        empty = store.recent("nobody")
        assert empty is not None and empty.empty


def test_hand_written_entries_are_skipped_and_a_key_of_another_type_is_not_stored_to(redis_url: str) -> None:
    from recsvc.redis_keys import member_key

    with open_store(redis_url) as (store, client):
        assert store.record("M1", "P1", "view", 1_700_000_000.0, "app")
        key = member_key("t", "M1", "rt:events")
        for ts in ("1e308", "-5"):  # the read takes the newest 3 (recent_events_max)
            client.lpush(key, f'{{"i":"P9","t":"view","ts":{ts},"c":"app"}}')
        got = store.recent("M1")
        assert got is not None and [e.item_id for e in got.events] == ["P1"]  # the rest dropped
        other = member_key("t", "M2", "rt:events")
        client.set(other, "not a list")
        assert store.record("M2", "P1", "view", 1_700_000_000.0, "app") is False  # not kept, no error
        assert store.record("M1", "P2", "view", 1_700_000_001.0, "app")  # the store goes on


def test_recent_survives_a_script_flush_and_works_from_many_threads(redis_url: str) -> None:
    with open_store(redis_url) as (store, client):
        store.record("M2", "P9", "purchase", 1_700_000_000.0, "app")
        assert store.recent("M2") is not None
        client.script_flush()  # e.g. a Redis restart or failover: the read script is gone
        results: list[frozenset[str] | None] = []

        def read() -> None:
            got = store.recent("M2")
            results.append(got.purchased if got is not None else None)

        threads = [threading.Thread(target=read) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert results == [frozenset({"P9"})] * 8


def test_redis_down_degrades_at_once_then_recovers_within_the_reconnect_interval(tmp_path: Path) -> None:
    """Issue 15, finding 6: the store used to back off 1 s doubling to 30 s, and only a request
    could end the outage (10 s after a restart). Now a background probe ends it within
    ``reconnect_interval_ms`` of Redis answering, with no request needed."""
    clock = StepClock()
    server = LocalRedis(tmp_path / "r").start()
    try:
        with open_store(server.url, clock) as (store, _client):
            assert store.record("M3", "P1", "purchase", 1_700_000_000.0, "app")
            server.stop()
            assert store.recent("M3") is None
            assert store.degraded
            # While degraded, no call waits on the dead Redis.
            assert store.recent("M3") is None
            assert not store.record("M3", "P2", "view", 1_700_000_001.0, "app")
            server = LocalRedis(tmp_path / "r", port=server.port).start()
            assert store.recent("M3") is None  # reads never probe; the interval has not passed
            clock.now += 0.3  # past the 250 ms reconnect interval: the background probe may run
            deadline = time.monotonic() + 2.0
            while store.degraded and time.monotonic() < deadline:
                time.sleep(0.01)
            assert not store.degraded
            got = store.recent("M3")
            assert got is not None and got.empty  # the new Redis is empty, but answers
    finally:
        server.stop()


def test_idle_connections_a_restart_closed_do_not_trip_the_store(tmp_path: Path) -> None:
    """Redis restarts while nobody calls: every thread's read connection is dead. Each thread's
    next read is answered (sent once more on a new connection), so the breaker never opens; it
    once opened on each thread's first read, minutes after the restart."""
    from concurrent.futures import ThreadPoolExecutor

    server = LocalRedis(tmp_path / "r").start()
    try:
        with open_store(server.url) as (store, _client), ThreadPoolExecutor(4) as pool:
            assert store.record("M4", "P1", "purchase", 1_700_000_000.0, "app")

            def read_everywhere() -> list[object]:
                # the same threads each time: each holds its own connection
                return [store.recent("M4"), *pool.map(lambda _: store.recent("M4"), range(16))]

            assert all(r is not None for r in read_everywhere())
            server.stop()
            server = LocalRedis(tmp_path / "r", port=server.port).start()
            after = read_everywhere()
            assert all(r is not None for r in after), after
            assert not store.degraded
    finally:
        server.stop()


def test_a_read_started_early_is_answered_after_other_commands(redis_url: str) -> None:
    """``start_recent`` sends, ``result`` reads: the engine searches in between."""
    with open_store(redis_url) as (store, client):
        store.record("M4", "P1", "purchase", 1_700_000_000.0, "app")
        pending = store.start_recent("M4")
        client.set("unrelated", "1")  # other work (another connection) while Redis answers
        got = pending.result()
        assert got is not None and got.purchased == frozenset({"P1"})
        assert pending.result() is None  # read once; a second result() does not read again


def test_an_abandoned_read_never_answers_the_next_one(redis_url: str) -> None:
    """A caller that failed between ``start_recent`` and ``result`` leaves a reply unread on its
    connection; the next read must get its own member's answer, not that one."""
    with open_store(redis_url) as (store, _client):
        store.record("M5", "P5", "purchase", 1_700_000_000.0, "app")
        store.record("M6", "P6", "purchase", 1_700_000_000.0, "app")
        store.start_recent("M5")  # never read
        got = store.recent("M6")
        assert got is not None and got.purchased == frozenset({"P6"})
        assert not store.degraded


def test_a_script_flush_between_send_and_read_is_recovered(redis_url: str) -> None:
    with open_store(redis_url) as (store, client):
        store.record("M7", "P7", "purchase", 1_700_000_000.0, "app")
        client.script_flush()
        pending = store.start_recent("M7")  # NOSCRIPT comes back with the reply
        got = pending.result()
        assert got is not None and got.purchased == frozenset({"P7"})
