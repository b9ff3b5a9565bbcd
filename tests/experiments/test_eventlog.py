"""The event log end to end against a real Redis and a real server: every response is named and
recorded as an impression, events are attributed (with and without a recommendation id), and
the sink writes each record to Parquet exactly once, also when it dies mid-write."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import redis
from bundle_factory import PlantedBundle
from eventlog_support import read_log
from prometheus_client import CollectorRegistry
from serving_harness import ROOT, RunningServer, running_server, serving_settings
from waiting import within

from recsvc.errors import InvalidArgument
from recsvc.eventlog.ids import RecommendationIds
from recsvc.eventlog.log import IMPRESSIONS_SUFFIX, EventLog, EventLogMetrics, dumps, shard_of, stream_key
from recsvc.eventlog.sink import Sink
from recsvc.redis_keys import member_key
from recsvc.settings import Settings, load_settings
from recsvc.v1 import recommender_pb2


def _logged_settings(planted: PlantedBundle, redis_url: str, tmp_path: Path) -> Settings:
    settings = serving_settings(str(planted.path), redis_url, tmp_path)
    return settings.model_copy(
        update={
            "events": settings.events.model_copy(
                update={"log_dir": tmp_path / "log", "flush_interval_ms": 10}
            )
        }
    )


@pytest.fixture
def logged(
    planted: PlantedBundle, redis_url: str, tmp_path: Path
) -> Iterator[tuple[RunningServer, Settings]]:
    settings = _logged_settings(planted, redis_url, tmp_path)
    with running_server(settings) as s:
        yield s, settings


def _drain(settings: Settings) -> None:
    client = redis.Redis.from_url(settings.redis.url)
    Sink(client, settings).run(once=True)
    client.close()


def test_responses_are_named_recorded_and_events_attributed(
    logged: tuple[RunningServer, Settings], planted: PlantedBundle
) -> None:
    srv, settings = logged
    member = planted.warm_members(0)[0]
    resp = srv.stub.RecommendProducts(
        recommender_pb2.RecommendProductsRequest(member_id=member, k=5, channel="app", scene="home_feed")
    )
    assert resp.recommendation_id.startswith("r") and len(resp.recommendation_id) == 32
    again = srv.stub.RecommendProducts(recommender_pb2.RecommendProductsRequest(member_id=member, k=5))
    assert again.recommendation_id != resp.recommendation_id
    shown = resp.items[2].item_id
    # the impressions are written by the log's thread; attribution reads the member's recent
    # impressions (written after the streams), so wait for both lists there, not a fixed 0.2 s
    recent = redis.Redis.from_url(settings.redis.url)
    key = member_key(settings.redis.key_prefix, member, IMPRESSIONS_SUFFIX)
    within(5.0, lambda: recent.llen(key) >= 2, "impressions not written by the log's thread")
    recent.close()
    # no id: the click on an item shown in the latest list that held it is attributed to that list
    ev = srv.stub.RecordEvent(
        recommender_pb2.RecordEventRequest(member_id=member, item_id=shown, event_type="click", channel="app")
    )
    assert ev.recommendation_id == again.recommendation_id
    # a view is not attributed without an id; an item never shown is not attributed
    view = srv.stub.RecordEvent(
        recommender_pb2.RecordEventRequest(member_id=member, item_id=shown, event_type="view")
    )
    assert view.recommendation_id == ""
    never = next(
        p
        for p in planted.products()
        if p not in {i.item_id for i in resp.items} | {i.item_id for i in again.items}
    )
    other = srv.stub.RecordEvent(
        recommender_pb2.RecordEventRequest(member_id=member, item_id=never, event_type="purchase", amount=5)
    )
    assert other.recommendation_id == ""
    # the caller names the first list: that one counts
    named = srv.stub.RecordEvent(
        recommender_pb2.RecordEventRequest(
            member_id=member,
            item_id=shown,
            event_type="purchase",
            amount=12.5,
            recommendation_id=resp.recommendation_id,
        )
    )
    assert named.recommendation_id == resp.recommendation_id
    _drain(settings)
    log_dir = settings.events.log_dir
    imps = read_log(log_dir, "impression")
    assert set(imps["recommendation_id"]) >= {resp.recommendation_id, again.recommendation_id}
    first = imps[imps["recommendation_id"] == resp.recommendation_id].iloc[0]
    assert list(first["items"]) == [i.item_id for i in resp.items]
    assert first["scene"] == "home_feed" and first["channel"] == "app" and first["variant"] == resp.variant
    assert first["model_version"] == resp.model_version and first["source"]
    assert first["member"].startswith("p_") and member not in set(imps["member"])  # a pseudonym
    events = read_log(log_dir, "event")
    assert len(events) == 4
    assert list(events["recommendation_id"]) == [again.recommendation_id, "", "", resp.recommendation_id]
    assert list(events["member_id"]) == [member] * 4  # the data contract's columns, for training
    assert events["amount"].iloc[3] == 12.5


def test_recommendation_ids_of_others_or_malformed_are_refused(
    logged: tuple[RunningServer, Settings], planted: PlantedBundle
) -> None:
    srv, _settings = logged
    a, b = planted.warm_members(0)[:2]
    rid = srv.stub.RecommendProducts(
        recommender_pb2.RecommendProductsRequest(member_id=a, k=3)
    ).recommendation_id
    for member, bad, reason in [
        (b, rid, "RECOMMENDATION_OF_ANOTHER_MEMBER"),
        (a, "r-not-an-id", "RECOMMENDATION_ID_MALFORMED"),
        (a, rid[:-1] + ("0" if rid[-1] != "0" else "1"), "RECOMMENDATION_OF_ANOTHER_MEMBER"),
    ]:
        with pytest.raises(grpc.RpcError) as err:
            srv.stub.RecordEvent(
                recommender_pb2.RecordEventRequest(
                    member_id=member, item_id=planted.products()[0], event_type="click", recommendation_id=bad
                )
            )
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert err.value.details().startswith(reason + ":"), err.value.details()


def test_a_similar_items_list_may_be_named_by_any_member(
    logged: tuple[RunningServer, Settings], planted: PlantedBundle
) -> None:
    srv, _ = logged
    item = planted.products()[0]
    rid = srv.stub.SimilarItems(recommender_pb2.SimilarItemsRequest(item_id=item, k=3)).recommendation_id
    assert RecommendationIds(load_settings().security.pseudonym_key).check(rid, "anyone") > 0


def test_redis_down_recommendations_and_events_still_work_and_drops_are_counted(
    planted: PlantedBundle, tmp_path: Path
) -> None:
    from recsvc.localstack import LocalRedis

    with LocalRedis(tmp_path / "redis") as local:
        settings = serving_settings(str(planted.path), local.url, tmp_path)
        settings = settings.model_copy(
            update={"events": settings.events.model_copy(update={"flush_interval_ms": 10})}
        )
        with running_server(settings) as srv:
            member = planted.warm_members(1)[0]
            local.stop()
            resp = srv.stub.RecommendProducts(recommender_pb2.RecommendProductsRequest(member_id=member, k=3))
            assert resp.items and resp.recommendation_id
            ev = srv.stub.RecordEvent(
                recommender_pb2.RecordEventRequest(
                    member_id=member, item_id=resp.items[0].item_id, event_type="click"
                )
            )
            assert not ev.stored and ev.recommendation_id == ""
            time.sleep(0.3)
            reg = srv.deps.metrics.registry
            dropped = reg.get_sample_value(
                "recsvc_eventlog_dropped_total", {"kind": "impression", "reason": "redis_down"}
            )
            assert dropped and dropped >= 1
            assert (
                reg.get_sample_value(
                    "recsvc_eventlog_dropped_total", {"kind": "event", "reason": "redis_down"}
                )
                == 1
            )


def test_the_buffer_is_bounded_and_counts_what_it_drops(redis_url: str) -> None:
    settings = load_settings(overrides={"redis": {"url": redis_url}, "events": {"buffer_size": 10}})
    metrics = EventLogMetrics(CollectorRegistry())
    elog = EventLog(redis.Redis.from_url(redis_url), settings, metrics)  # not started: nothing drains
    for i in range(25):
        elog.impression(
            f"r{i}", "M1", variant="a", model_version="v", scene="", channel="", items=["P1"], source="s"
        )
    assert len(elog._buffer) == 10
    assert metrics.dropped.labels("impression", "buffer_full")._value.get() == 15
    assert elog.flush() == 10


def test_the_background_flush_waits_out_a_stall_the_hot_path_would_not(redis_url: str) -> None:
    """Redis stalls 300 ms (a loaded machine, a slow fork): the buffered impressions' flush,
    on its own client with events.flush_timeout_ms, waits it out and writes them; on the hot
    path's 50 ms client the same flush dropped the batch as redis_down while Redis was up."""
    from recsvc.redis_client import connect

    settings = load_settings(overrides={"redis": {"url": redis_url}})
    hot = connect(redis_url, timeout_s=0.05)
    outcomes = {}
    for name, flush_client in (("own client", connect(redis_url, timeout_s=1.0)), ("hot client", None)):
        metrics = EventLogMetrics(CollectorRegistry())
        elog = EventLog(hot, settings, metrics, flush_client=flush_client)  # not started: flushed here
        elog.impression(
            "r1", "M1", variant="a", model_version="v", scene="", channel="", items=["P1"], source="s"
        )
        pauser = redis.Redis.from_url(redis_url)
        pauser.execute_command("CLIENT", "PAUSE", "300", "WRITE")
        elog.flush()
        outcomes[name] = (
            metrics.written.labels("impression")._value.get(),
            metrics.dropped.labels("impression", "redis_down")._value.get(),
        )
        time.sleep(0.35)
        pauser.close()
    assert outcomes == {"own client": (1, 0), "hot client": (0, 1)}


class _FailingOver:
    """A client of a cluster whose primary died and whose replica is not yet promoted: every
    command answers CLUSTERDOWN (a redis.ResponseError, not a ConnectionError)."""

    def xadd(self, *args: Any, **kwargs: Any) -> Any:
        raise redis.exceptions.ClusterDownError("The cluster is down")


class _ScriptsWithoutPrimary:
    """What ``ScriptRunner.call_many`` answers for calls whose slot has no primary (a failover in
    progress): each call's reply is the CLUSTERDOWN error, in its place."""

    def call_many(self, calls: Any, shared: Any = (), **_: Any) -> list[Exception]:
        return [redis.exceptions.ClusterDownError("The cluster is down") for _ in calls]


def test_a_cluster_failing_over_counts_as_redis_down_not_a_crash(redis_url: str) -> None:
    settings = load_settings(overrides={"redis": {"url": redis_url}})
    metrics = EventLogMetrics(CollectorRegistry())
    elog = EventLog(_FailingOver(), settings, metrics)  # type: ignore[arg-type]
    elog._append = elog._remember = _ScriptsWithoutPrimary()  # type: ignore[assignment]
    elog._flush_runners = (_ScriptsWithoutPrimary(), _ScriptsWithoutPrimary())  # type: ignore[assignment]
    elog.impression(
        "r1", "M1", variant="a", model_version="v", scene="", channel="", items=["P1"], source="s"
    )
    assert elog.flush() == 1
    assert metrics.dropped.labels("impression", "redis_down")._value.get() == 1
    shard = shard_of("M1", settings.events.shards)
    assert not elog._breakers[shard].allow()  # the shard's records drop at once until a probe
    assert elog.event("M1", {"item_id": "P1", "event_type": "view", "ts": 1.7e9}) is False
    assert metrics.dropped.labels("event", "redis_down")._value.get() == 1


class _OnePrimaryDown:
    """A cluster where the primary of one shard's slot fails and the others answer: calls on
    that shard's streams get the connection error in their place, the rest are appended."""

    def __init__(self, down_tag: str) -> None:
        self.down_tag, self.appended = down_tag, 0

    def call_many(self, calls: Any, shared: Any = (), **_: Any) -> list[Any]:
        out: list[Any] = []
        for keys, args in calls:
            if self.down_tag in keys[0]:
                out.append(redis.exceptions.ConnectionError("primary down"))
            else:
                self.appended += len(args)
                out.append(len(args))
        return out


def test_a_failed_primary_drops_only_its_own_shards_records(redis_url: str) -> None:
    """One breaker for the whole log dropped every shard's records after one shard's failure,
    though the other primaries answered."""
    settings = load_settings(overrides={"redis": {"url": redis_url}, "events": {"shards": 4}})
    members = {shard_of(f"M{i}", 4): f"M{i}" for i in range(200)}
    assert len(members) == 4
    bad, good = members[1], members[2]
    metrics = EventLogMetrics(CollectorRegistry())
    elog = EventLog(_FailingOver(), settings, metrics)  # type: ignore[arg-type]
    runner = _OnePrimaryDown("{log:1}")
    elog._append = elog._remember = runner  # type: ignore[assignment]
    for _ in range(3):  # the bad shard fails, opens, then drops at once; the good one is written
        elog.write_now([("decision", bad, {"campaign": "c"}), ("decision", good, {"campaign": "c"})])
    assert metrics.written.labels("decision")._value.get() == 3
    assert metrics.dropped.labels("decision", "redis_down")._value.get() == 3
    assert runner.appended == 3
    assert not elog._breakers[1].allow() and elog._breakers[2].allow()


def _fill(client: redis.Redis, settings: Settings, n: int) -> set[str]:
    """``n`` events straight into the streams, as the service writes them."""
    prefix, shards = settings.redis.key_prefix, settings.events.shards
    pipe = client.pipeline(transaction=False)
    ids: set[str] = set()
    for i in range(n):
        member = f"M{i % 997}"
        record = {
            "member_id": member,
            "item_id": f"P{i}",
            "event_type": "view",
            "ts": 1.7e9 + i,
            "channel": "app",
        }
        pipe.xadd(stream_key(prefix, shard_of(member, shards), "event"), {"d": dumps(record)})
        ids.add(f"P{i}")
        if len(pipe) >= 2000:
            pipe.execute()
    pipe.execute()
    return ids


def _sink_settings(redis_url: str, log_dir: Path, batch: int) -> Settings:
    return load_settings(
        overrides={
            "redis": {"url": redis_url},
            "events": {"log_dir": str(log_dir), "sink_batch": batch, "shards": 3},
        }
    )


def test_a_crash_between_disk_and_acknowledgement_writes_nothing_twice(
    redis_url: str, tmp_path: Path
) -> None:
    settings = _sink_settings(redis_url, tmp_path / "log", 100)
    client = redis.Redis.from_url(redis_url)
    expected = _fill(client, settings, 1000)
    calls = {"n": 0}

    def crash() -> None:
        calls["n"] += 1
        if calls["n"] == 4:
            raise SystemExit("killed after the 4th batch reached disk, before its acknowledgement")

    with pytest.raises(SystemExit):
        Sink(client, settings, before_ack=crash).run(once=True)
    stats = Sink(client, settings).run(once=True)
    assert stats.replayed == 100  # the batch on disk but unacknowledged: acknowledged, not rewritten
    events = read_log(tmp_path / "log", "event")
    assert len(events) == len(expected) and set(events["item_id"]) == expected
    assert sum(client.xlen(stream_key("recsvc", s, "event")) for s in range(3)) == 0  # nothing left


def test_kill_the_sink_process_mid_write_and_restart_every_event_exactly_once(
    redis_url: str, tmp_path: Path
) -> None:
    log_dir = tmp_path / "log"
    settings = _sink_settings(redis_url, log_dir, 50)
    client = redis.Redis.from_url(redis_url)
    expected = _fill(client, settings, 30_000)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RECSVC_") or k == "RECSVC_HOME"}
    env.update(
        {
            "RECSVC_REDIS__URL": redis_url,
            "RECSVC_EVENTS__LOG_DIR": str(log_dir),
            "RECSVC_EVENTS__SINK_BATCH": "50",
            "RECSVC_EVENTS__SHARDS": "3",
            "PYTHONPATH": str(ROOT),
        }
    )
    cmd = [sys.executable, "-c", "from recsvc.cli import main; main()", "events", "sink"]
    kills = 0
    for wait_files in (5, 40, 120):  # killed at three different moments of its work
        proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        start = len(list(log_dir.glob("kind=event/date=*/part-*.parquet")))
        while len(list(log_dir.glob("kind=event/date=*/part-*.parquet"))) < start + wait_files:
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        kills += 1
    left = sum(client.xlen(stream_key("recsvc", s, "event")) for s in range(3))
    assert left > 0, "the sink finished before it was killed: kill it sooner"
    done = subprocess.run([*cmd, "--once"], env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    events = read_log(log_dir, "event")
    assert kills == 3
    assert len(events) == len(expected)  # nothing twice
    assert set(events["item_id"]) == expected  # nothing lost
    assert events["item_id"].is_unique
    assert not list(log_dir.glob("kind=event/date=*/.tmp-*"))
    assert json.loads(json.dumps(sorted(events["event_type"].unique()))) == ["view"]


def test_a_click_before_the_list_is_written_is_attributed_from_the_buffer(redis_url: str) -> None:
    settings = load_settings(overrides={"redis": {"url": redis_url}})
    elog = EventLog(redis.Redis.from_url(redis_url), settings, EventLogMetrics(CollectorRegistry()))
    elog.impression(
        "r1", "M1", variant="a", model_version="v", scene="", channel="", items=["P1"], source="s"
    )
    elog.impression(
        "r2", "M2", variant="a", model_version="v", scene="", channel="", items=["P1"], source="s"
    )
    assert elog.attribute("M1", "P1", time.time()) == "r1"  # not in Redis yet: this process's buffer
    assert elog.attribute("M1", "P9", time.time()) == ""
    elog.flush()
    assert elog.attribute("M2", "P1", time.time()) == "r2"  # written: from Redis
    assert (
        elog.attribute("M2", "P1", time.time() + settings.events.attribution_window_s + 5) == ""
    )  # too late


def test_a_click_goes_to_the_newest_list_that_showed_the_item(redis_url: str) -> None:
    """A list written earlier and a newer one still in this process's buffer both show the item:
    the click is the newer list's; a buffered list from after the click is not a candidate."""
    settings = load_settings(overrides={"redis": {"url": redis_url}})
    now = [1_000_000.0]
    elog = EventLog(
        redis.Redis.from_url(redis_url), settings, EventLogMetrics(CollectorRegistry()), clock=lambda: now[0]
    )
    shown = {"variant": "a", "model_version": "v", "scene": "", "channel": "", "source": "s"}
    elog.impression("old", "M7", items=["P1", "P2"], **shown)
    elog.flush()  # written
    now[0] += 30
    elog.impression("new", "M7", items=["P1"], **shown)  # still buffered
    assert elog.attribute("M7", "P1", now[0] + 1) == "new"
    assert elog.attribute("M7", "P2", now[0] + 1) == "old"  # only the older list showed it
    assert elog.attribute("M7", "P1", now[0] - 10) == "old"  # a click before the newer list
    elog.flush()
    assert elog.attribute("M7", "P1", now[0] + 1) == "new"  # both written: the same answer


def test_a_click_while_its_list_is_being_written_is_attributed(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The writer has taken the batch out of the buffer and Redis has not got it yet: the click
    is attributed from the batch in flight."""
    settings = load_settings(overrides={"redis": {"url": redis_url}})
    elog = EventLog(redis.Redis.from_url(redis_url), settings, EventLogMetrics(CollectorRegistry()))
    taken, release = threading.Event(), threading.Event()
    real_write = elog._write

    def held_write(batch: Any, *runners: Any) -> int:
        taken.set()
        release.wait(5)
        return real_write(batch, *runners)

    monkeypatch.setattr(elog, "_write", held_write)
    elog.impression(
        "r3", "M3", variant="a", model_version="v", scene="", channel="", items=["P1"], source="s"
    )
    writer = threading.Thread(target=elog.flush)
    writer.start()
    try:
        assert taken.wait(5)
        assert elog.attribute("M3", "P1", time.time()) == "r3"
    finally:
        release.set()
        writer.join(5)
    assert elog.attribute("M3", "P1", time.time()) == "r3"  # written: from Redis
    assert elog._in_flight == []


def test_under_low_traffic_records_wait_for_a_batch_then_go_to_disk_unacknowledged_until_then(
    redis_url: str, tmp_path: Path
) -> None:
    settings = load_settings(
        overrides={
            "redis": {"url": redis_url},
            "events": {
                "log_dir": str(tmp_path / "log"),
                "sink_batch": 100,
                "sink_flush_s": 3600,
                "shards": 1,
            },
        }
    )
    client = redis.Redis.from_url(redis_url)
    _fill(client, settings, 30)
    sink = Sink(client, settings)
    sink.prepare()
    assert sink.step() == 0  # nothing was left pending by an earlier run
    assert sink.step() == 30  # the new records, read
    sink.write_held()
    assert read_log(tmp_path / "log", "event") is None  # 30 < 100, and nobody waited an hour
    assert client.xlen(stream_key("recsvc", 0, "event")) == 30  # still in Redis: a crash loses nothing
    sink.write_held(force=True)  # what stopping (or --once) does
    assert len(read_log(tmp_path / "log", "event")) == 30
    assert client.xlen(stream_key("recsvc", 0, "event")) == 0


def test_an_event_outside_the_named_lists_window_is_stored_but_not_attributed(
    logged: tuple[RunningServer, Settings], planted: PlantedBundle
) -> None:
    from google.protobuf.timestamp_pb2 import Timestamp

    srv, _ = logged
    member = planted.warm_members(2)[0]
    resp = srv.stub.RecommendProducts(recommender_pb2.RecommendProductsRequest(member_id=member, k=3))
    before = Timestamp()
    before.FromSeconds(int(time.time()) - 3600)  # an hour before the list was served
    ev = srv.stub.RecordEvent(
        recommender_pb2.RecordEventRequest(
            member_id=member,
            item_id=resp.items[0].item_id,
            event_type="purchase",
            amount=3,
            ts=before,
            recommendation_id=resp.recommendation_id,
        )
    )
    assert ev.stored and ev.recommendation_id == ""


def _under_keys(settings: Settings, key: str, previous: list[str] | None = None) -> Settings:
    security = settings.security.model_copy(
        update={"pseudonym_key": key, "previous_pseudonym_keys": previous or []}
    )
    return settings.model_copy(update={"security": security})


def _refused_reason(srv: RunningServer, request: recommender_pb2.RecordEventRequest) -> str:
    with pytest.raises(grpc.RpcError) as err:
        srv.stub.RecordEvent(request)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    return err.value.details().split(":")[0]


def test_ids_served_before_a_key_rotation_are_attributed_while_the_old_key_is_listed(
    planted: PlantedBundle, redis_url: str, tmp_path: Path
) -> None:
    """docs/privacy.md, "Pseudonyms": restarted on a new pseudonym key with the old one listed, an
    event naming a list served before the restart is attributed to it; without the old key, refused."""
    settings = _logged_settings(planted, redis_url, tmp_path)
    old_key, new_key = "eventlog-key-before-rotation", "eventlog-key-after-rotation"
    member, other = planted.warm_members(0)[:2]
    with running_server(_under_keys(settings, old_key)) as before:
        served = before.stub.RecommendProducts(
            recommender_pb2.RecommendProductsRequest(member_id=member, k=3)
        )
    click = recommender_pb2.RecordEventRequest(
        member_id=member,
        item_id=served.items[0].item_id,
        event_type="click",
        recommendation_id=served.recommendation_id,
    )
    with running_server(_under_keys(settings, new_key, [old_key])) as after:
        assert after.stub.RecordEvent(click).recommendation_id == served.recommendation_id
        other_click = recommender_pb2.RecordEventRequest()
        other_click.CopyFrom(click)
        other_click.member_id = other
        assert _refused_reason(after, other_click) == "RECOMMENDATION_OF_ANOTHER_MEMBER"
        fresh = after.stub.RecommendProducts(recommender_pb2.RecommendProductsRequest(member_id=member, k=3))
    # new lists are named under the new key only
    assert RecommendationIds(new_key).check(fresh.recommendation_id, member) > 0
    with pytest.raises(InvalidArgument):
        RecommendationIds(old_key).check(fresh.recommendation_id, member)
    with running_server(_under_keys(settings, new_key)) as old_key_removed:
        assert _refused_reason(old_key_removed, click) == "RECOMMENDATION_OF_ANOTHER_MEMBER"


@pytest.mark.parametrize("keeps_data", [True, False], ids=["restarted", "restarted-empty"])
def test_the_sink_waits_out_redis_down_and_goes_on(tmp_path: Path, keeps_data: bool) -> None:
    """Redis killed under a running sink: it does not exit; it counts the outage, waits, and
    once Redis is back (with its data, or empty: the consumer groups are made again) writes
    what it holds and what comes after, each record once."""
    from recsvc.localstack import LocalRedis

    persist = ("--appendonly", "yes", "--appendfsync", "always") if keeps_data else ()
    server = LocalRedis(tmp_path / "redis", extra_args=persist).start()
    try:
        settings = _sink_settings(server.url, tmp_path / "log", 50)
        settings = settings.model_copy(
            update={"events": settings.events.model_copy(update={"sink_flush_s": 0.2})}
        )
        client = redis.Redis.from_url(server.url, socket_timeout=2)
        first = _fill(client, settings, 500)
        sink = Sink(client, settings)
        worker = threading.Thread(target=sink.run, daemon=True)
        worker.start()
        deadline = time.monotonic() + 30
        while read_log(tmp_path / "log", "event") is None or len(read_log(tmp_path / "log", "event")) < 500:
            assert worker.is_alive() and time.monotonic() < deadline
            time.sleep(0.05)
        server.proc.kill()  # type: ignore[union-attr]
        server.proc.wait()  # type: ignore[union-attr]
        server.proc = None
        while sink.metrics.redis_down._value.get() == 0:
            assert worker.is_alive() and time.monotonic() < deadline
            time.sleep(0.05)
        time.sleep(1.0)  # several failed turns
        assert worker.is_alive()
        server.start()
        second = {f"Q{i}" for i in range(300)}
        pipe = client.pipeline(transaction=False)
        for item in sorted(second):
            record = {"member_id": "M1", "item_id": item, "event_type": "view", "ts": 1.8e9, "channel": "app"}
            pipe.xadd(stream_key("recsvc", shard_of("M1", 3), "event"), {"d": dumps(record)})
        pipe.execute()
        while len(read_log(tmp_path / "log", "event")) < 800:
            assert worker.is_alive() and time.monotonic() < deadline + 30
            time.sleep(0.05)
        sink.stop()
        worker.join(timeout=30)
        assert not worker.is_alive()
        events = read_log(tmp_path / "log", "event")
        assert events["item_id"].is_unique and set(events["item_id"]) == first | second
        assert sink.metrics.redis_down._value.get() >= 2  # it tried again, and waited between
    finally:
        server.stop()


def test_a_one_off_drain_with_redis_down_says_so_in_one_line(tmp_path: Path) -> None:
    """``recsvc events sink --once`` cannot wait Redis out (it is a one-off): a named one-line
    error and exit 3 ("try again later"), not a traceback."""
    from typer.testing import CliRunner

    from recsvc.cli import app
    from recsvc.localstack import free_port

    env = {"RECSVC_REDIS__URL": f"redis://127.0.0.1:{free_port()}/0", "RECSVC_EVENTS__LOG_DIR": str(tmp_path)}
    done = CliRunner().invoke(app, ["events", "sink", "--once"], env=env)
    assert done.exit_code == 3, done.output
    assert "REDIS_UNAVAILABLE" in done.output and "Traceback" not in done.output
    assert done.exception is None or isinstance(done.exception, SystemExit)


def test_an_event_the_log_refused_is_not_confirmed(
    logged: tuple[RunningServer, Settings], planted: PlantedBundle
) -> None:
    """The member's recent events took it, the durable log did not (on a cluster: another node
    failing; here the log's stream made unwritable): stored=false, so the caller keeps it."""
    server, settings = logged
    member = planted.warm_members()[0]
    client = redis.Redis.from_url(settings.redis.url)
    key = stream_key("recsvc", shard_of(member, settings.events.shards), "event")
    ask = recommender_pb2.RecordEventRequest(
        member_id=member, item_id=planted.products()[0], event_type="view"
    )
    assert server.stub.RecordEvent(ask, timeout=5).stored
    client.delete(key)
    client.set(key, "not a stream")  # XADD answers WRONGTYPE
    try:
        reply = server.stub.RecordEvent(ask, timeout=5)  # OK, not INTERNAL
        assert not reply.stored
    finally:
        client.delete(key)
    assert server.stub.RecordEvent(ask, timeout=5).stored


def test_entries_recsvc_cannot_have_written_are_skipped_not_a_stop(redis_url: str, tmp_path: Path) -> None:
    """A hand-made XADD or a foreign writer: each such entry is skipped (and acknowledged, or it
    would stop the shard again at every start); the entries around it are written."""
    settings = load_settings(
        overrides={"redis": {"url": redis_url}, "events": {"log_dir": str(tmp_path / "log"), "shards": 1}}
    )
    client = redis.Redis.from_url(redis_url)
    key = stream_key("recsvc", 0, "event")
    good = {"member_id": "M1", "item_id": "P1", "event_type": "view", "ts": time.time(), "member": "p"}
    bad: list[bytes | str] = [
        b"[1, 2, 3]",
        b"42",
        b"null",
        dumps({**good, "ts": "abc"}),
        dumps({**good, "ts": 1e20}),
        b'{"ts": NaN}',
        dumps({**good, "quantity": "many"}),
        dumps({**good, "quantity": 99999999999}),
        b"not json",
        dumps({"member": ["a"]}),  # an event without its member, item or type
        dumps({**good, "item_id": ""}),
    ]
    client.xadd(key, {"d": dumps({**good, "item_id": "FIRST"})})
    for entry in bad:
        client.xadd(key, {"d": entry})
    client.xadd(key, {"x": "y"})  # no record at all
    client.xadd(key, {"d": dumps({**good, "item_id": "LAST"})})
    imp = stream_key("recsvc", 0, "impression")
    client.xadd(imp, {"d": dumps({"id": "r", "ts": time.time(), "items": 5})})  # type: ignore[dict-item]
    stats = Sink(client, settings).run(once=True)
    assert stats.bad == len(bad) + 2
    assert sorted(read_log(tmp_path / "log", "event")["item_id"]) == ["FIRST", "LAST"]
    assert client.xlen(key) == 0 and client.xlen(imp) == 0  # acknowledged: the next start is clean
    assert Sink(client, settings).run(once=True).bad == 0


def test_a_full_disk_makes_the_sink_wait_and_lose_nothing(
    redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ENOSPC on the log folder (a disk cannot be filled portably here, so the write fails as a
    full disk makes it fail): the sink logs, waits and writes everything once there is room;
    a one-off drain (--once) stops with the error instead."""
    import errno

    from recsvc.eventlog import sink as sink_module

    settings = load_settings(
        overrides={
            "redis": {"url": redis_url},
            "events": {"log_dir": str(tmp_path / "log"), "sink_batch": 10, "shards": 3, "sink_flush_s": 1},
        }
    )
    client = redis.Redis.from_url(redis_url)
    expected = _fill(client, settings, 40)
    real = sink_module.write_atomically
    failures = [0]

    def full_then_room(table: Any, path: Path) -> None:
        if failures[0] < 3:
            failures[0] += 1
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        real(table, path)

    monkeypatch.setattr(sink_module, "write_atomically", full_then_room)
    with pytest.raises(OSError):
        Sink(client, settings).run(once=True)
    failures[0] = 0
    worker = Sink(client, settings)
    thread = threading.Thread(target=worker.run)
    thread.start()
    try:

        def written() -> int:
            log = read_log(tmp_path / "log", "event")
            return 0 if log is None else len(log)

        within(15, lambda: written() == len(expected), "all written")
    finally:
        worker.stop()
        thread.join(10)
    assert not thread.is_alive() and failures[0] == 3 and worker.metrics.disk_errors._value.get() == 3
    events = read_log(tmp_path / "log", "event")
    assert set(events["item_id"]) == expected and events["item_id"].is_unique
    assert not list((tmp_path / "log").rglob(".tmp-*"))
