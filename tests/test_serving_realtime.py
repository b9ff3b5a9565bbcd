"""The real-time store against a real redis-server: what RecordEvent writes is what the next
recommendation reads, from any thread, through a Redis that lost its scripts or went away."""

from __future__ import annotations

import threading
from pathlib import Path

import redis

from recsvc.localstack import LocalRedis
from recsvc.realtime import RealtimeStore, make_redis_client
from recsvc.settings import RedisSettings


class StepClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _store(url: str, clock: StepClock | None = None) -> tuple[RealtimeStore, redis.Redis]:
    settings = RedisSettings(url=url, key_prefix="t", recent_events_max=3, socket_timeout_ms=200)
    client = make_redis_client(settings)
    return RealtimeStore(client, settings, clock=clock or StepClock()), client


def test_recent_reads_what_record_wrote_newest_first_capped(redis_url: str) -> None:
    store, client = _store(redis_url)
    try:
        for i, kind in enumerate(["view", "purchase", "view", "click"]):
            assert store.record("M1", f"P{i}", kind, 1_700_000_000.0 + i, "app")
        got = store.recent("M1")
        assert got is not None
        assert [e.item_id for e in got.events] == ["P3", "P2", "P1"]  # newest first, capped at 3
        assert got.events[0].event_type == "click" and got.events[0].channel == "app"
        assert got.purchased == frozenset({"P1"})
        empty = store.recent("nobody")
        assert empty is not None and empty.empty
    finally:
        store.close()
        client.close()


def test_recent_survives_a_script_flush_and_works_from_many_threads(redis_url: str) -> None:
    store, client = _store(redis_url)
    try:
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
    finally:
        store.close()
        client.close()


def test_redis_down_degrades_at_once_then_recovers_after_backoff(tmp_path: Path) -> None:
    clock = StepClock()
    server = LocalRedis(tmp_path / "r").start()
    store, client = _store(server.url, clock)
    try:
        assert store.record("M3", "P1", "purchase", 1_700_000_000.0, "app")
        server.stop()
        assert store.recent("M3") is None
        assert store.degraded
        # While backing off, no call waits on the dead Redis.
        assert store.recent("M3") is None
        server = LocalRedis(tmp_path / "r", port=server.port).start()
        assert store.recent("M3") is None  # still inside the back-off window
        clock.now += 1.5
        got = store.recent("M3")
        assert got is not None and not store.degraded  # the new Redis is empty, but answers
        assert got.empty
    finally:
        store.close()
        client.close()
        server.stop()
