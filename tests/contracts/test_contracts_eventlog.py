"""The event log's contract on every Redis recsvc runs on: one suite, two backends (a single server
and a real 3-primary Redis Cluster, ``redis_backend`` in conftest.py).

What the service and the sink may rely on: every impression, event and decision the service
wrote reaches Parquet exactly once and leaves the streams; a sink killed between disk and
acknowledgement, or killed as a process mid-write, writes nothing twice and loses nothing; entries
another sink consumer read and left pending are taken over; on a cluster the shards spread over
the primaries and each shard's three streams share one slot."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from eventlog_support import (
    MEMBERS,
    SHARDS,
    assert_exactly_once,
    log_settings,
    read_log,
    stream_lengths,
    write_records,
)
from redis.cluster import RedisCluster
from redis.crc import key_slot
from serving_harness import ROOT

from recsvc.eventlog.log import KINDS, dumps, shard_of, stream_key
from recsvc.eventlog.sink import GROUP, Sink
from recsvc.redis_client import RedisClient

pytestmark = pytest.mark.integration


@pytest.fixture
def redis_url(redis_backend: str) -> str:
    return redis_backend


def test_each_shard_is_one_slot_and_the_shards_spread_over_the_primaries(redis_client: RedisClient) -> None:
    slots = [{key_slot(stream_key("recsvc", s, k).encode()) for k in KINDS} for s in range(SHARDS)]
    assert all(len(s) == 1 for s in slots)  # one XREADGROUP and one ack script per shard
    if isinstance(redis_client, RedisCluster):
        owners = {
            redis_client.get_node_from_key(stream_key("recsvc", s, "event")).name for s in range(SHARDS)
        }
        assert len(owners) >= 2  # the sink reads from several primaries in this suite
    assert len({shard_of(m, SHARDS) for m in MEMBERS}) == SHARDS


def test_every_record_reaches_parquet_exactly_once_and_leaves_the_streams(
    redis_client: RedisClient, redis_url: str, tmp_path: Path
) -> None:
    settings = log_settings(redis_url, tmp_path)
    write_records(redis_client, settings, rounds=3)
    assert stream_lengths(redis_client) == 3 * 3 * len(MEMBERS)
    stats = Sink(redis_client, settings).run(once=True)
    assert stats.written == dict.fromkeys(KINDS, 3 * len(MEMBERS)) and stats.replayed == 0
    assert_exactly_once(settings.events.log_dir, 3)
    assert stream_lengths(redis_client) == 0
    # A second run finds nothing new and writes nothing again.
    assert Sink(redis_client, settings).run(once=True).written == dict.fromkeys(KINDS, 0)
    assert_exactly_once(settings.events.log_dir, 3)


def test_a_sink_killed_between_disk_and_acknowledgement_writes_nothing_twice(
    redis_client: RedisClient, redis_url: str, tmp_path: Path
) -> None:
    settings = log_settings(redis_url, tmp_path, sink_batch=7)
    write_records(redis_client, settings, rounds=2)
    calls = {"n": 0}

    def crash() -> None:
        calls["n"] += 1
        if calls["n"] == 5:
            raise SystemExit("killed after the 5th batch reached disk, before its acknowledgement")

    with pytest.raises(SystemExit):
        Sink(redis_client, settings, before_ack=crash).run(once=True)
    stats = Sink(redis_client, settings).run(once=True)
    assert stats.replayed >= 1  # the batch on disk but unacknowledged: acknowledged, not rewritten
    assert_exactly_once(settings.events.log_dir, 2)
    assert stream_lengths(redis_client) == 0


def test_entries_another_consumer_left_pending_are_taken_over(
    redis_client: RedisClient, redis_url: str, tmp_path: Path
) -> None:
    settings = log_settings(redis_url, tmp_path)
    write_records(redis_client, settings, rounds=2)
    dead = Sink(redis_client, settings, consumer="sink-a")
    dead.prepare()
    assert dead.step() == 0  # nothing pending from an earlier run
    assert dead.step() == 3 * 2 * len(MEMBERS)  # read, held in memory, then the process "dies"
    dead.close()
    pending = sum(
        int(redis_client.xpending(stream_key("recsvc", s, k), GROUP)["pending"])
        for s in range(SHARDS)
        for k in KINDS
    )
    assert pending == 3 * 2 * len(MEMBERS)
    Sink(redis_client, settings, consumer="sink-b").run(once=True)
    assert_exactly_once(settings.events.log_dir, 2)
    for s in range(SHARDS):
        for k in KINDS:
            assert int(redis_client.xpending(stream_key("recsvc", s, k), GROUP)["pending"]) == 0


def _holding(redis_client: RedisClient, settings: Any, consumer: str) -> Sink:
    """A sink that took every shard and holds what the streams had, written nowhere yet."""
    sink = Sink(redis_client, settings, consumer=consumer)
    sink.prepare()
    assert sink.shards_held_elsewhere == []  # it takes every shard
    assert sink.step() == 0  # nothing pending from an earlier run
    assert sink.step() == 3 * len(MEMBERS)  # read, held in memory
    return sink


def test_two_sinks_on_one_folder_lose_nothing_whichever_dies(
    redis_client: RedisClient, redis_url: str, tmp_path: Path
) -> None:
    # A sink holding records it has not written dies while a second sink runs; the second once
    # wrote newer records of the same shard, and the first, restarted, took its held records for
    # written (below the highest id on disk) and dropped them. One writer per shard at a time.
    settings = log_settings(redis_url, tmp_path)
    write_records(redis_client, settings, rounds=1)
    first = _holding(redis_client, settings, "sink-a")
    write_records(redis_client, settings, rounds=range(1, 2))
    second = Sink(redis_client, settings, consumer="sink-b")
    stats = second.run(once=True)  # while the first lives: every shard is held elsewhere
    assert sum(stats.written.values()) == 0 and stats.held_elsewhere == list(range(SHARDS))
    first.close()  # the first dies: its locks go with its descriptors
    second = Sink(redis_client, settings, consumer="sink-b")
    assert sum(second.run(once=True).written.values()) == 2 * 3 * len(MEMBERS)
    assert Sink(redis_client, settings, consumer="sink-a").run(once=True).replayed == 0
    assert_exactly_once(settings.events.log_dir, 2)
    assert stream_lengths(redis_client) == 0


def test_a_second_sink_takes_the_shards_of_one_that_stopped_while_it_runs(
    redis_client: RedisClient, redis_url: str, tmp_path: Path
) -> None:
    settings = log_settings(redis_url, tmp_path)
    write_records(redis_client, settings, rounds=1)
    first = _holding(redis_client, settings, "sink-a")
    second = Sink(redis_client, settings, consumer="sink-b")
    second.prepare()
    assert second.step() == 0 and second.shards_held_elsewhere == list(range(SHARDS))
    first.close()
    time.sleep(1.05)  # the second tries the locks once a second
    write_records(redis_client, settings, rounds=range(1, 2))
    assert second.step() == 3 * len(MEMBERS)  # took every shard, and the first's held round with them
    assert second.shards_held_elsewhere == []
    second.run(once=True)
    assert_exactly_once(settings.events.log_dir, 2)
    assert stream_lengths(redis_client) == 0


def test_the_sink_process_killed_mid_write_then_restarted_writes_each_record_once(
    redis_client: RedisClient, redis_url: str, tmp_path: Path
) -> None:
    log_dir = tmp_path / "log"
    settings = log_settings(redis_url, tmp_path)
    pipe = redis_client.pipeline(transaction=False)
    for i in range(4000):
        member = MEMBERS[i % len(MEMBERS)]
        record = {
            "member_id": member,
            "item_id": f"P{i}",
            "event_type": "view",
            "ts": 1.7e9 + i,
            "member": member,
        }
        pipe.xadd(stream_key("recsvc", shard_of(member, SHARDS), "event"), {"d": dumps(record)})
    pipe.execute()
    env = {k: v for k, v in os.environ.items() if not k.startswith("RECSVC_") or k == "RECSVC_HOME"}
    env.update(
        {
            "RECSVC_REDIS__URL": redis_url,
            "RECSVC_EVENTS__LOG_DIR": str(log_dir),
            "RECSVC_EVENTS__SINK_BATCH": "20",
            "RECSVC_EVENTS__SHARDS": str(SHARDS),
            "PYTHONPATH": str(ROOT),
        }
    )
    cmd = [sys.executable, "-c", "from recsvc.cli import main; main()", "events", "sink"]
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while len(list(log_dir.glob("kind=event/date=*/part-*.parquet"))) < 10:
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert sum(int(redis_client.xlen(stream_key("recsvc", s, "event"))) for s in range(SHARDS)) > 0, (
        "kill it sooner"
    )
    done = subprocess.run([*cmd, "--once"], env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    events = read_log(log_dir, "event")
    assert len(events) == 4000 and events["item_id"].is_unique  # nothing lost, nothing twice
    assert not list(log_dir.glob("kind=event/date=*/.tmp-*"))
    assert settings.events.shards == SHARDS


def test_a_batch_larger_than_one_script_can_unpack_is_acknowledged_whole(
    redis_client: RedisClient, redis_url: str, tmp_path: Path
) -> None:
    # Lua's unpack() holds ~8,000 values: a batch of 9,000 ids is acknowledged in chunks.
    settings = log_settings(redis_url, tmp_path, sink_batch=9000, shards=1)
    key = stream_key("recsvc", 0, "event")
    pipe = redis_client.pipeline(transaction=False)
    for i in range(9000):
        pipe.xadd(
            key, {"d": dumps({"member_id": "M1", "item_id": f"P{i}", "event_type": "view", "ts": 1.7e9})}
        )
    pipe.execute()
    stats = Sink(redis_client, settings).run(once=True)
    assert stats.written["event"] == 9000 and redis_client.xlen(key) == 0
    assert int(redis_client.xpending(key, GROUP)["pending"]) == 0
