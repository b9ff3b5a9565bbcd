"""A primary of a real Redis Cluster killed while PlanCampaign-style batches of reservations flow.

What is measured (and printed; docs/operations.md, "Redis Cluster", records the figures):
- decisions for members on the killed primary's slots fail closed (THROTTLE_UNAVAILABLE, never
  allowed) until its replica is promoted, then recover without a restart of recsvc; with
  ``outreach.wait_replicas = 1`` they stay closed until the promoted primary has a replica again
  (the killed node, restarted after a few seconds as a supervisor would, rejoins as one);
- members on the other primaries keep being decided throughout (with the cluster's
  ``cluster-require-full-coverage no``; Redis's default stops the whole cluster meanwhile);
- reservations the client saw allowed but that the cluster no longer holds afterwards (acknowledged
  by the killed primary, not yet copied by its replica): each frees a slot, so each is one send that
  may exceed a cap. With ``outreach.wait_replicas = 1`` there must be none.
"""

from __future__ import annotations

import os
import signal
import time
from collections import Counter
from pathlib import Path

import pytest
from outreach_support import CONSENTED, WalkClock, local, policy_text
from redis.cluster import RedisCluster

from recsvc.localstack import LocalRedisCluster, LocalStackError
from recsvc.outreach.policy import PolicyStore
from recsvc.outreach.service import throttle_client
from recsvc.outreach.throttle import OutreachAsk, Throttle
from recsvc.realtime import RealtimeStore, make_redis_client
from recsvc.redis_client import connect
from recsvc.redis_keys import member_key
from recsvc.settings import RedisSettings

pytestmark = [pytest.mark.integration, pytest.mark.slow]
MEMBERS = [f"F{n:04d}" for n in range(200)]
RESTART_AFTER_S = 4.0


def _throttle(url: str, policy: Path, clock: WalkClock, wait_replicas: int) -> Throttle:
    return Throttle(
        # 0.5 s, not the 50 ms default: this machine's load must not pass for the failover
        throttle_client(connect(url), 0.5),
        PolicyStore(policy, 0),
        clock=clock,
        wait_replicas=wait_replicas,
        wait_timeout_ms=20,
    )


def _promoted(cluster: LocalRedisCluster, victim_port: int) -> bool:
    """Whether another node serves the killed primary's slots (its replica was promoted)."""
    try:
        primaries = cluster.primary_ports()
    except LocalStackError:
        return False
    return victim_port not in primaries and len(primaries) == 3


@pytest.mark.parametrize("wait_replicas", [0, 1])
def test_a_killed_primary_fails_its_members_closed_then_recovers(tmp_path: Path, wait_replicas: int) -> None:
    policy = tmp_path / "policy.toml"
    # One reservation per member per round, 15 minutes apart, no quiet hours: the caps (96 a day,
    # 400 rounds at most) are never reached, so every decision is ALLOWED unless Redis is not there.
    policy.write_text(
        policy_text(
            per_channel_per_day=100,
            per_day=100,
            per_week=500,
            min_gap_hours=0.0,
            start='"10:00"',
            end='"10:00"',
        )
    )
    clock = WalkClock(local(2026, 6, 1, 10))
    with LocalRedisCluster(
        tmp_path / "cluster",
        primaries=3,
        replicas_per_primary=1,
        node_timeout_ms=1000,
        # the other primaries keep answering while one slot range has no primary (the default,
        # yes, refuses every query of the whole cluster until the failover ends)
        extra_args=("--cluster-require-full-coverage", "no"),
    ) as cluster:
        t = _throttle(cluster.url, policy, clock, wait_replicas)
        for m in MEMBERS:
            for ch in CONSENTED:
                t.set_consent(m, ch, True)
        # the test's own reads may retry across the failover (recsvc's clients never do: a write
        # sent twice is counted twice); they only count what Redis kept
        admin = connect(cluster.url, cluster_error_retry_attempts=3)
        assert isinstance(admin, RedisCluster)
        victim_port = admin.get_node_from_key(t.keys(MEMBERS[0]).sends).port
        on_victim = {m for m in MEMBERS if admin.get_node_from_key(t.keys(m).sends).port == victim_port}
        allowed: Counter[str] = Counter()
        unavailable_on_victim = unavailable_elsewhere = allowed_elsewhere_after_kill = 0
        first_fail = last_fail = killed_at = restarted_at = 0.0
        batch_seconds: list[float] = []
        rounds = 0
        deadline = time.monotonic() + 30.0
        while time.monotonic() < deadline and rounds < 400:
            rounds += 1
            clock.advance(minutes=15)
            if rounds == 20:
                os.kill(cluster.node(victim_port).proc.pid, signal.SIGKILL)  # type: ignore[union-attr]
                killed_at = time.monotonic()
            if (
                killed_at
                and not restarted_at
                and time.monotonic() - killed_at > RESTART_AFTER_S
                and _promoted(cluster, victim_port)
            ):
                # a supervisor brings the killed node back: it rejoins as its successor's replica
                # (once there is a successor: a node without persistence back before the promotion
                # would return as the empty primary of its slots, and its replica would copy that)
                cluster.node(victim_port).proc = None
                cluster.node(victim_port).start()
                restarted_at = time.monotonic()
            asks = [OutreachAsk(m, "app_push", f"c{rounds}") for m in MEMBERS]
            started = time.monotonic()
            decisions = t.decide_many(asks, reserve=True)
            batch_seconds.append(time.monotonic() - started)
            failed_now = False
            for ask, d in zip(asks, decisions, strict=True):
                if d.allowed:
                    allowed[ask.member_id] += 1
                    if killed_at and ask.member_id not in on_victim:
                        allowed_elsewhere_after_kill += 1
                    continue
                assert d.reason == "THROTTLE_UNAVAILABLE", d  # never another reason, never allowed
                failed_now = True
                if ask.member_id in on_victim:
                    unavailable_on_victim += 1
                else:
                    unavailable_elsewhere += 1
            if failed_now:
                first_fail = first_fail or time.monotonic()
                last_fail = time.monotonic()
            if (
                killed_at
                and not failed_now
                and time.monotonic() - max(last_fail, killed_at) > 1.0
                and last_fail
            ):
                break  # recovered and stayed so for a second
            time.sleep(0.01)
        cluster.wait_ok()
        stored = {m: int(admin.zcard(t.keys(m).sends)) for m in MEMBERS}
        lost = sum(max(0, allowed[m] - stored[m]) for m in MEMBERS)
        # refused as unavailable but kept by Redis (a reply lost with the connection, or not
        # confirmed by WAIT): slots used by no send, the safe direction
        unsent = sum(max(0, stored[m] - allowed[m]) for m in MEMBERS)
        outage = last_fail - killed_at if last_fail else 0.0
        batch_ms = sorted(1000 * s for s in batch_seconds[:19])
        print(
            f"\nfailover wait_replicas={wait_replicas}: rounds={rounds} outage={outage:.2f}s "
            f"unavailable on the killed primary={unavailable_on_victim} elsewhere={unavailable_elsewhere} "
            f"lost reservations={lost} kept but unsent={unsent} batch of {len(MEMBERS)} before the kill: "
            f"median {batch_ms[len(batch_ms) // 2]:.1f} ms"
        )
        assert killed_at and last_fail, "the kill never showed: the test measured nothing"
        assert unavailable_on_victim > 0
        assert allowed_elsewhere_after_kill > 0  # one slot range down; the rest of the cluster decides
        assert last_fail - killed_at < 15.0  # recovered: the replica was promoted and found
        if not wait_replicas:
            assert last_fail < killed_at + RESTART_AFTER_S  # by the promotion, not the restart
        if wait_replicas:
            assert lost == 0


def test_recent_events_follow_the_promoted_replica(tmp_path: Path) -> None:
    """The hot-path read (one connection per thread and primary, outside redis-py's command layer)
    degrades when the member's primary dies and reads the member's events again from the promoted
    replica, without a restart: the background probe re-reads the slot map."""
    with LocalRedisCluster(
        tmp_path / "cluster",
        primaries=3,
        replicas_per_primary=1,
        node_timeout_ms=1000,
        extra_args=("--cluster-require-full-coverage", "no"),
    ) as cluster:
        settings = RedisSettings(
            url=cluster.url, key_prefix="rt", socket_timeout_ms=500, reconnect_interval_ms=100
        )
        client = make_redis_client(settings)
        assert isinstance(client, RedisCluster)
        store = RealtimeStore(client, settings)
        try:
            members = [f"R{n}" for n in range(30)]
            for m in members:
                assert store.record(m, "P1", "purchase", time.time(), "app")
            time.sleep(0.2)  # replicated (asynchronously) before the kill
            victim = client.get_node_from_key(member_key("rt", members[0], "rt:events")).port
            os.kill(cluster.node(victim).proc.pid, signal.SIGKILL)  # type: ignore[union-attr]
            killed = time.monotonic()
            degraded_seen = False
            while True:
                got = store.recent(members[0])
                if got is None:
                    degraded_seen = True
                elif degraded_seen:
                    break
                assert time.monotonic() - killed < 15.0, "the read never followed the promotion"
                time.sleep(0.05)
            print(
                f"\nreal time: the killed primary's member read again after {time.monotonic() - killed:.2f} s"
            )
            assert got.purchased == frozenset({"P1"})  # the event survived on the replica
            assert all((r := store.recent(m)) is not None and r.purchased == {"P1"} for m in members)
        finally:
            store.close()
            client.close()
