"""The circuit breaker (recsvc/breaker.py) on a hand-moved clock, its background probe, and the
throttle's use of it against a real redis-server that is stopped (SIGSTOP): issue 15, finding 6."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from recsvc.breaker import CLOSED, HALF_OPEN, OPEN, BreakerWatch, CircuitBreaker
from recsvc.errors import StoreUnavailable
from recsvc.localstack import LocalRedis
from recsvc.outreach.service import build_throttle
from recsvc.outreach.throttle import UNAVAILABLE, OutreachAsk
from recsvc.settings import load_settings


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def make(threshold: int = 3, reset_s: float = 0.5) -> tuple[CircuitBreaker, Clock, list[bool]]:
    clock = Clock()
    breaker = CircuitBreaker("t", threshold, reset_s, clock)
    changes: list[bool] = []
    breaker.add_listener(changes.append)
    return breaker, clock, changes


def test_opens_after_consecutive_failures_only() -> None:
    b, _clock, changes = make(threshold=3)
    b.failure()
    b.failure()
    b.success()  # not consecutive: starts again
    b.failure()
    b.failure()
    assert b.state == CLOSED and b.allow()
    b.failure()
    assert b.state == OPEN and b.is_open
    assert not b.allow()  # refused at once, no call to Redis
    assert changes == [True]


def test_half_open_lets_exactly_one_probe_through_then_closes_on_success() -> None:
    b, clock, changes = make(threshold=1, reset_s=0.5)
    b.failure()
    clock.now += 0.49
    assert not b.allow()
    clock.now += 0.02
    assert b.allow()  # the probe
    assert b.state == HALF_OPEN
    assert not any(b.allow() for _ in range(10))  # everyone else still fails fast
    b.success()
    assert b.state == CLOSED and b.allow()
    assert changes == [True, False]


def test_a_failed_probe_opens_for_another_cool_down() -> None:
    b, clock, changes = make(threshold=2, reset_s=0.5)
    b.failure()
    b.failure()
    clock.now += 0.5
    assert b.allow()
    b.failure()
    assert b.state == OPEN
    clock.now += 0.4
    assert not b.allow()
    clock.now += 0.1
    assert b.allow()
    assert changes == [True]  # one transition to open, not one per failure


def test_a_lost_probe_is_replaced_after_a_cool_down() -> None:
    b, clock, _ = make(threshold=1, reset_s=0.5)
    b.failure()
    clock.now += 0.5
    assert b.allow()  # this probe's caller never reports
    clock.now += 0.4
    assert not b.allow()
    clock.now += 0.1
    assert b.allow()


def test_a_late_failure_does_not_extend_the_cool_down() -> None:
    b, clock, _ = make(threshold=1, reset_s=0.5)
    b.failure()
    clock.now += 0.3
    b.failure()  # a call that started before the breaker opened
    clock.now += 0.2
    assert b.allow()


def test_only_one_of_many_threads_probes() -> None:
    b, clock, _ = make(threshold=1, reset_s=0.5)
    b.failure()
    clock.now += 1.0
    allowed: list[bool] = []
    barrier = threading.Barrier(16)

    def ask() -> None:
        barrier.wait()
        allowed.append(b.allow())

    threads = [threading.Thread(target=ask) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert allowed.count(True) == 1


def test_watch_closes_an_open_breaker_without_traffic_and_opens_an_idle_one() -> None:
    breaker = CircuitBreaker("w", 2, 0.05)
    up = {"value": False}

    def ping() -> bool:
        if not up["value"]:
            raise redis.ConnectionError("down")
        return True

    watch = BreakerWatch(breaker, ping, (redis.ConnectionError,), idle_check=True).start()
    try:
        deadline = time.monotonic() + 2.0
        while not breaker.is_open and time.monotonic() < deadline:
            time.sleep(0.01)
        assert breaker.is_open  # noticed by the idle pings alone
        up["value"] = True
        deadline = time.monotonic() + 2.0
        while breaker.is_open and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not breaker.is_open  # closed by the probe alone
    finally:
        watch.stop()


# ---------------------------------------------------------------- the throttle against a stopped Redis


@pytest.fixture
def stalled_redis(tmp_path: Path) -> Iterator[LocalRedis]:
    server = LocalRedis(tmp_path / "redis").start()
    try:
        yield server
    finally:
        if server.proc is not None:
            server.proc.send_signal(signal.SIGCONT)
        server.stop()


def test_throttle_fails_fast_while_open_and_recovers(stalled_redis: LocalRedis) -> None:
    """Before the breaker, every decision against a stalled Redis waited the socket timeout."""
    settings = load_settings(
        overrides={
            "redis": {"url": stalled_redis.url},
            "outreach": {"redis_timeout_ms": 200, "breaker_failures": 2, "breaker_reset_ms": 300},
        }
    )
    client = redis.Redis.from_url(stalled_redis.url)
    throttle = build_throttle(settings, client)
    ask = OutreachAsk(member_id="M1", channel="app_push", campaign_id="c1")
    assert throttle.check(ask).reason != UNAVAILABLE
    assert stalled_redis.proc is not None
    stalled_redis.proc.send_signal(signal.SIGSTOP)
    try:
        for _ in range(2):  # these two wait for the timeout and open the breaker
            assert throttle.check(ask).reason == UNAVAILABLE
        assert throttle.breaker.is_open
        started = time.perf_counter()
        decisions = [throttle.reserve(ask) for _ in range(20)]
        per_call = (time.perf_counter() - started) / 20
        assert all(not d.allowed and d.reason == UNAVAILABLE for d in decisions)
        assert "circuit open" in decisions[0].detail
        assert per_call < 0.02  # not the 200 ms timeout
        with pytest.raises(StoreUnavailable):
            throttle.set_consent("M1", "app_push", True)
    finally:
        stalled_redis.proc.send_signal(signal.SIGCONT)
    throttle.start_watch()
    try:
        deadline = time.monotonic() + 2.0
        while throttle.breaker.is_open and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not throttle.breaker.is_open  # the background probe closed it
        assert throttle.check(ask).reason != UNAVAILABLE
    finally:
        throttle.stop_watch()
        client.close()
