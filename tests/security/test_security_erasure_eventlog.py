"""Erasure reaches the event log (docs/privacy.md): after ForgetMember no entry of the member is in
the streams, no row of theirs in any Parquet file the sink wrote, no key of theirs on any node,
and records that arrive late never reach disk; everyone else's records stay, exactly once, also
when the erasure runs while the sink works or while it is down mid-batch, and for records logged
under a pseudonym key since rotated out. On a single Redis and on a real Redis Cluster."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Collection
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from bundle_factory import PlantedBundle
from eventlog_support import (
    MEMBERS,
    SHARDS,
    assert_exactly_once,
    log_settings,
    read_log,
    stream_lengths,
    write_records,
)
from serving_harness import running_server, serving_settings
from waiting import within

from recsvc.eventlog.erasure import LogEraser, erased_key, purge_key, record_member, rewrite_without
from recsvc.eventlog.log import IMPRESSIONS_SUFFIX, KINDS, shard_of, stream_key
from recsvc.eventlog.sink import GROUP, Sink
from recsvc.localstack import LocalRedis
from recsvc.redis_client import RedisClient, connect
from recsvc.redis_keys import member_key
from recsvc.security.audit import AuditLog
from recsvc.security.erasure import ForgetResult, forget_member, restore_member
from recsvc.security.privacy import ErasureList, Pseudonymizer
from recsvc.security.wiring import ServerSecurity, build_server_security, mark_erased_under_current_key
from recsvc.settings import Settings, load_settings
from recsvc.v1 import admin_pb2, admin_pb2_grpc, recommender_pb2

pytestmark = pytest.mark.integration

PSEUDO = Pseudonymizer(load_settings().security.pseudonym_key)
VICTIM = next(m for m in MEMBERS if shard_of(m, SHARDS) == 0)  # the shard the sink writes first
OTHERS = [m for m in MEMBERS if m != VICTIM]
# A rotation of security.pseudonym_key: the key before it and the key after it.
OLD_KEY = "erasure-test-key-before-rotation"
NEW_KEY = "erasure-test-key-after-rotation"


@pytest.fixture
def redis_url(redis_backend: str) -> str:
    return redis_backend


def _forget(redis_client: RedisClient, tmp_path: Path, member: str = VICTIM) -> ForgetResult:
    return forget_member(
        member,
        redis=redis_client,
        prefix="recsvc",
        erasures=ErasureList(tmp_path / "erasures.txt"),
        audit=AuditLog(tmp_path / "audit.log", PSEUDO),
        event_log=LogEraser(redis_client, "recsvc", SHARDS, PSEUDO),
    )


def _files(log_dir: Path) -> set[str]:
    return {str(p.relative_to(log_dir)) for p in log_dir.glob("kind=*/date=*/part-*.parquet")}


def _rows_of(log_dir: Path, member: str, pseudonyms: Collection[str] = ()) -> int:
    """Rows naming ``member`` (by ``pseudonyms``, by default its pseudonym under the default key,
    or by the id in the event columns), read file by file."""
    found = 0
    for path in log_dir.glob("kind=*/date=*/part-*.parquet"):
        table = pq.ParquetFile(path).read().to_pandas()
        hit = table["member"].isin(list(pseudonyms) or [PSEUDO(member)])
        if "member_id" in table.columns:
            hit |= table["member_id"] == member
        found += int(hit.sum())
    return found


def _entries_of(redis_client: RedisClient, member: str) -> int:
    return sum(
        record_member(fields) == PSEUDO(member)
        for s in range(SHARDS)
        for k in KINDS
        for _, fields in redis_client.xrange(stream_key("recsvc", s, k))  # type: ignore[union-attr]
    )


def _keys_of(redis_client: RedisClient, member: str) -> list[str]:
    return sorted(k.decode() for k in redis_client.scan_iter(match=f"*{{m:{member}}}*"))  # every primary


def test_erasure_leaves_no_entry_row_or_key_of_the_member(
    redis_client: RedisClient, redis_url: str, tmp_path: Path
) -> None:
    settings = log_settings(redis_url, tmp_path)
    log_dir = settings.events.log_dir
    write_records(redis_client, settings, 2)
    Sink(redis_client, settings).run(once=True)  # rounds 0-1 on disk
    write_records(redis_client, settings, range(2, 3))  # round 2 still in the streams
    before = _files(log_dir)
    assert _rows_of(log_dir, VICTIM) == 6 and _entries_of(redis_client, VICTIM) == 3
    assert redis_client.exists(member_key("recsvc", VICTIM, IMPRESSIONS_SUFFIX))

    result = _forget(redis_client, tmp_path)
    assert result.log_entries_deleted == 3 and result.deleted_keys == {"rt": 1}
    assert _entries_of(redis_client, VICTIM) == 0  # gone from Redis when ForgetMember answers
    assert _keys_of(redis_client, VICTIM) == [member_key("recsvc", VICTIM, "suppressed")]

    stats = Sink(redis_client, settings).run(once=True)
    assert stats.purged == 6  # two rounds of three kinds, rewritten out of the files
    assert _rows_of(log_dir, VICTIM) == 0
    assert before <= _files(log_dir)  # rewritten under their own names, never removed
    assert_exactly_once(log_dir, 3, OTHERS)
    assert stream_lengths(redis_client) == 0 and redis_client.llen(purge_key("recsvc")) == 0
    assert redis_client.sismember(erased_key("recsvc"), PSEUDO(VICTIM))
    # Repeating the erasure is harmless.
    assert _forget(redis_client, tmp_path).log_entries_deleted == 0
    assert Sink(redis_client, settings).run(once=True).purged == 0


def test_a_record_queued_before_the_erasure_and_written_after_never_reaches_disk(
    redis_client: RedisClient, redis_url: str, tmp_path: Path
) -> None:
    settings = log_settings(redis_url, tmp_path)
    elog = write_records(redis_client, settings, 1)
    elog.impression(
        "late-1", VICTIM, variant="a", model_version="1", scene="", channel="", items=["P1"], source="s"
    )
    _forget(redis_client, tmp_path)
    assert elog.flush() == 1  # the server process flushes its buffer after the erasure
    assert _entries_of(redis_client, VICTIM) == 1  # in the stream for a moment ...
    # ... but it does not bring the member's recent impressions back (the suppression record).
    assert _keys_of(redis_client, VICTIM) == [member_key("recsvc", VICTIM, "suppressed")]
    stats = Sink(redis_client, settings).run(once=True)
    assert stats.erased == 1 and _rows_of(settings.events.log_dir, VICTIM) == 0
    assert_exactly_once(settings.events.log_dir, 1, OTHERS)
    assert stream_lengths(redis_client) == 0


def test_an_erasure_while_the_sink_runs_keeps_everyone_else_exactly_once(
    redis_client: RedisClient, redis_url: str, tmp_path: Path
) -> None:
    settings = log_settings(redis_url, tmp_path, sink_batch=15, sink_flush_s=0.02, sink_block_ms=20)
    log_dir = settings.events.log_dir
    sink = Sink(connect(redis_url, socket_timeout=5), settings)
    running = threading.Thread(target=sink.run)
    rounds = 12
    erased_at = threading.Event()

    def traffic() -> None:
        writer = connect(redis_url, socket_timeout=5)
        for r in range(rounds):
            # the victim's records keep coming after the erasure: late writes of other processes
            write_records(writer, settings, range(r, r + 1))
            if r == rounds // 2:
                erased_at.wait(10)
            time.sleep(0.02)

    writer = threading.Thread(target=traffic)
    running.start()
    writer.start()
    deadline = time.monotonic() + 20
    while _rows_of(log_dir, VICTIM) < 3:  # the victim's rows are on disk: the purge has work
        assert time.monotonic() < deadline
        time.sleep(0.01)
    _forget(redis_client, tmp_path)
    erased_at.set()
    writer.join()
    while stream_lengths(redis_client):  # this sink takes the late records, not the one below
        assert time.monotonic() < deadline + 20
        time.sleep(0.01)
    sink.stop()
    running.join(timeout=20)
    Sink(redis_client, settings).run(once=True)
    assert _rows_of(log_dir, VICTIM) == 0 and _entries_of(redis_client, VICTIM) == 0
    assert sink.stats.purged >= 3 and sink.stats.erased >= 3  # both paths ran
    assert_exactly_once(log_dir, rounds, OTHERS)
    assert stream_lengths(redis_client) == 0


def test_an_erasure_while_the_sink_is_down_mid_batch(
    redis_client: RedisClient, redis_url: str, tmp_path: Path
) -> None:
    """The sink wrote a file with the member's rows and died before acknowledging it; the erasure
    deletes the member's entries the sink still holds pending; the restarted sink acknowledges the
    deleted entries, writes the rest once, and removes the member's rows from the file."""
    settings = log_settings(redis_url, tmp_path)
    log_dir = settings.events.log_dir
    write_records(redis_client, settings, 2)

    def crash() -> None:
        raise SystemExit("killed after its first file reached disk, before the acknowledgement")

    with pytest.raises(SystemExit):
        Sink(redis_client, settings, before_ack=crash).run(once=True)
    assert _rows_of(log_dir, VICTIM) == 2  # the first file is shard 0's: the victim's two rows
    result = _forget(redis_client, tmp_path)
    assert result.log_entries_deleted == 6  # pending entries too
    stats = Sink(redis_client, settings).run(once=True)
    assert stats.replayed >= 1 and stats.purged == 2
    assert _rows_of(log_dir, VICTIM) == 0
    assert_exactly_once(log_dir, 2, OTHERS)
    for s in range(SHARDS):
        for k in KINDS:
            assert int(redis_client.xpending(stream_key("recsvc", s, k), GROUP)["pending"]) == 0


def test_a_re_registered_member_is_logged_again_from_then_on(
    redis_client: RedisClient, redis_url: str, tmp_path: Path
) -> None:
    settings = log_settings(redis_url, tmp_path)
    write_records(redis_client, settings, 1, [VICTIM])
    _forget(redis_client, tmp_path)
    restore_member(
        VICTIM,
        redis=redis_client,
        prefix="recsvc",
        audit=AuditLog(tmp_path / "audit.log", PSEUDO),
        reason="ticket-2",
        event_log=LogEraser(redis_client, "recsvc", SHARDS, PSEUDO),
    )
    assert not redis_client.sismember(erased_key("recsvc"), PSEUDO(VICTIM))
    write_records(redis_client, settings, range(5, 6), [VICTIM])
    Sink(redis_client, settings).run(once=True)
    assert _rows_of(settings.events.log_dir, VICTIM) == 3  # the new round only


def _under_key(settings: Settings, key: str, previous: list[str] | None = None) -> Settings:
    raw = settings.model_dump(mode="json")
    raw["security"] |= {"pseudonym_key": key, "previous_pseudonym_keys": previous or []}
    return load_settings(overrides=raw)


def _both_keys(member: str) -> set[str]:
    return {Pseudonymizer(OLD_KEY)(member), Pseudonymizer(NEW_KEY)(member)}


def test_records_logged_before_a_key_rotation_are_erased_too(
    redis_client: RedisClient, redis_url: str, tmp_path: Path
) -> None:
    """The member's records under the old key and under the new one, on disk and in the streams,
    are all gone after the erasure; everyone else's stay, under whichever key they were logged."""
    base = log_settings(redis_url, tmp_path)
    old, new = _under_key(base, OLD_KEY), _under_key(base, NEW_KEY, [OLD_KEY])
    log_dir = base.events.log_dir
    write_records(redis_client, old, 2)
    write_records(redis_client, new, range(2, 3))
    Sink(redis_client, new).run(once=True)  # rounds 0-1 (old key) and 2 (new key) on disk
    write_records(redis_client, old, range(3, 4))  # a process not yet restarted with the new key
    write_records(redis_client, new, range(4, 5))
    assert _rows_of(log_dir, VICTIM, _both_keys(VICTIM)) == 9

    rotated = Pseudonymizer(NEW_KEY, [OLD_KEY])
    eraser = LogEraser(redis_client, "recsvc", SHARDS, rotated)
    audit = AuditLog(tmp_path / "audit.log", rotated)
    result = forget_member(
        VICTIM,
        redis=redis_client,
        prefix="recsvc",
        erasures=ErasureList(tmp_path / "erasures.txt"),
        audit=audit,
        event_log=eraser,
    )
    assert result.log_entries_deleted == 6  # rounds 3 and 4, three kinds each
    # The audit entry names the member as every new record does: under the current key.
    assert json.loads(audit.path.read_text().splitlines()[-1])["member"] == Pseudonymizer(NEW_KEY)(VICTIM)

    stats = Sink(redis_client, new).run(once=True)
    assert stats.purged == 9 and stats.erased == 0
    assert _rows_of(log_dir, VICTIM, _both_keys(VICTIM)) == 0
    everyone_else = set().union(*(_both_keys(m) for m in OTHERS))
    for kind in KINDS:
        rows = read_log(log_dir, kind)
        assert len(rows) == len(OTHERS) * 5 and set(rows["member"]) == everyone_else, kind
    assert stream_lengths(redis_client) == 0 and redis_client.llen(purge_key("recsvc")) == 0

    assert eraser.restore(VICTIM)  # re-registration lifts the mark under every key
    marked = redis_client.smismember(erased_key("recsvc"), sorted(_both_keys(VICTIM)))
    assert not any(int(hit) for hit in marked)  # type: ignore[union-attr]


def test_an_empty_rewrite_keeps_the_file_and_its_schema(tmp_path: Path) -> None:
    import pyarrow as pa

    from recsvc.eventlog.files import write_atomically
    from recsvc.eventlog.schema import SCHEMAS, row

    path = tmp_path / "kind=decision" / "date=2026-12-02" / "part-0-1_0-2_0.parquet"
    rows = [row("decision", "1-0", {"member": "p_a", "ts": 1.7e9}), row("decision", "2-0", {"member": "p_a"})]
    write_atomically(pa.Table.from_pylist(rows, schema=SCHEMAS["decision"]), path)
    done = rewrite_without(tmp_path, {"p_a"})
    assert done.files == 1 and done.rows["decision"] == 2
    left = pq.ParquetFile(path).read()
    assert left.num_rows == 0 and left.schema == SCHEMAS["decision"]
    assert not list(path.parent.glob(".tmp-*"))


def _logging_server(planted: PlantedBundle, redis_url: str, tmp_path: Path) -> Settings:
    """A test server's settings with the event log written to ``tmp_path/log`` every 10 ms."""
    settings: Settings = serving_settings(str(planted.path), redis_url, tmp_path)
    events = settings.events.model_copy(update={"log_dir": tmp_path / "log", "flush_interval_ms": 10})
    return settings.model_copy(update={"events": events})


def _impressions_written(s: Any, n: int) -> None:
    """Until the server's log thread has written ``n`` impressions to the streams (what the sink reads)."""
    registry = s.deps.metrics.registry

    def written() -> float:
        return registry.get_sample_value("recsvc_eventlog_written_total", {"kind": "impression"}) or 0.0

    within(5.0, lambda: written() >= n, f"{n} impressions not written by the log's thread")


def _recommend_and_click(stub: Any, member: str, click: bool = True) -> None:
    """One list served to ``member`` (an impression) and, with ``click``, a click on its first item."""
    resp = stub.RecommendProducts(recommender_pb2.RecommendProductsRequest(member_id=member, k=3), timeout=5)
    if click:
        stub.RecordEvent(
            recommender_pb2.RecordEventRequest(
                member_id=member, item_id=resp.items[0].item_id, event_type="click"
            ),
            timeout=5,
        )


def test_forget_member_through_a_server_reaches_the_log(
    planted: PlantedBundle, redis_url: str, tmp_path: Path
) -> None:
    settings = _logging_server(planted, redis_url, tmp_path)
    member, other = planted.warm_members(0)[:2]
    with running_server(settings) as s:
        for m in (member, other):
            _recommend_and_click(s.stub, m)
        _impressions_written(s, 2)  # impressions are written by the log's thread
        redis_client = connect(redis_url)
        Sink(redis_client, settings).run(once=True)
        assert _rows_of(settings.events.log_dir, member) == 2
        s.stub.RecommendProducts(recommender_pb2.RecommendProductsRequest(member_id=member, k=3), timeout=5)
        _impressions_written(s, 3)
        admin = admin_pb2_grpc.AdminStub(s.channel)
        done = admin.ForgetMember(admin_pb2.ForgetMemberRequest(member_id=member, reason="t"), timeout=10)
        assert done.suppressed
        # Served after the erasure (as an unknown member): nothing about them is kept.
        s.stub.RecommendProducts(recommender_pb2.RecommendProductsRequest(member_id=member, k=3), timeout=5)
        time.sleep(0.2)
        Sink(redis_client, settings).run(once=True)
        log_dir = settings.events.log_dir
        assert _rows_of(log_dir, member) == 0 and _rows_of(log_dir, other) == 2  # an impression, an event
        assert _keys_of(redis_client, member) == [member_key("recsvc", member, "suppressed")]
        redis_client.close()


def test_forget_member_through_a_server_after_a_key_rotation(
    planted: PlantedBundle, redis_url: str, tmp_path: Path
) -> None:
    """A server on the old key, then one on the new key with the old key among the previous keys:
    its ForgetMember removes the member's rows written by both."""
    settings = _logging_server(planted, redis_url, tmp_path)
    log_dir = settings.events.log_dir
    member, other = planted.warm_members(0)[:2]
    redis_client = connect(redis_url)
    for key, previous in ((OLD_KEY, None), (NEW_KEY, [OLD_KEY])):
        with running_server(_under_key(settings, key, previous)) as s:
            for m in (member, other):
                _recommend_and_click(s.stub, m)
            _impressions_written(s, 2)  # impressions are written by the log's thread
            Sink(redis_client, settings).run(once=True)
            if key == NEW_KEY:
                admin = admin_pb2_grpc.AdminStub(s.channel)
                admin.ForgetMember(admin_pb2.ForgetMemberRequest(member_id=member, reason="t"), timeout=10)
    assert (  # on disk until the sink's next purge: both servers' rows
        _rows_of(log_dir, member, _both_keys(member)) == 4
        and _rows_of(log_dir, other, _both_keys(other)) == 4
    )
    Sink(redis_client, settings).run(once=True)
    assert _rows_of(log_dir, member, _both_keys(member)) == 0
    assert _rows_of(log_dir, other, _both_keys(other)) == 4  # an impression and an event per key
    redis_client.close()


# Members for the marks after a rotation: one erased before it, one re-registered since, one
# forgotten through a process not yet restarted with the new key.
STILL_ERASED, RESTORED, LATE = VICTIM, OTHERS[0], OTHERS[-1]
LOGGED = OTHERS[1:-1]


def _forget_under_old_key(redis_client: RedisClient, settings: Settings, member: str) -> None:
    old = Pseudonymizer(OLD_KEY)
    forget_member(
        member,
        redis=redis_client,
        prefix="recsvc",
        erasures=ErasureList(settings.security.erasure_list),
        audit=AuditLog(settings.security.audit_log, old),
        event_log=LogEraser(redis_client, "recsvc", SHARDS, old),
    )


def _restore_under_old_key(redis_client: RedisClient, settings: Settings, member: str) -> None:
    old = Pseudonymizer(OLD_KEY)
    restore_member(
        member,
        redis=redis_client,
        prefix="recsvc",
        audit=AuditLog(settings.security.audit_log, old),
        reason="re-registered",
        event_log=LogEraser(redis_client, "recsvc", SHARDS, old),
    )


def _start_under_new_key(settings: Settings, redis_client: RedisClient) -> ServerSecurity:
    """What a server process restarted with the new key does at start-up, up to the marks."""
    security = build_server_security(_under_key(settings, NEW_KEY, [OLD_KEY]))
    mark_erased_under_current_key(settings, security, redis_client)
    return security


def test_members_erased_before_a_rotation_are_not_logged_under_the_new_key(
    redis_client: RedisClient, redis_url: str, tmp_path: Path
) -> None:
    """Forgotten under the old key; after a restart on the new key (the old one among the previous
    keys) nothing logged about them under the new key reaches disk, without another ForgetMember.
    A member re-registered before the rotation, and everyone else, are logged as usual."""
    base = log_settings(redis_url, tmp_path)
    _forget_under_old_key(redis_client, base, STILL_ERASED)
    _forget_under_old_key(redis_client, base, RESTORED)
    _restore_under_old_key(redis_client, base, RESTORED)

    security = _start_under_new_key(base, redis_client)
    new_key = Pseudonymizer(NEW_KEY)
    assert redis_client.sismember(erased_key("recsvc"), new_key(STILL_ERASED))
    assert not redis_client.sismember(erased_key("recsvc"), new_key(RESTORED))
    # Before serving: nothing logged under the new key yet, so nothing more to purge.
    queued = {v.decode() for v in redis_client.lrange(purge_key("recsvc"), 0, -1)}  # type: ignore[union-attr]
    assert queued == {Pseudonymizer(OLD_KEY)(STILL_ERASED), Pseudonymizer(OLD_KEY)(RESTORED)}
    assert redis_client.scard(erased_key("recsvc")) == 2  # the member under both keys, no one else
    security.close()
    _start_under_new_key(base, redis_client).close()  # every restart: idempotent
    assert redis_client.scard(erased_key("recsvc")) == 2

    # While the rotation rolls out, a process still on the old key forgets someone: the notice
    # (what the erasure listener hands to the forgotten set) marks them under the new key too.
    _forget_under_old_key(redis_client, base, LATE)
    security = _start_under_new_key(base, redis_client)
    security.forgotten.add(LATE)
    assert redis_client.sismember(erased_key("recsvc"), new_key(LATE))
    security.close()

    new = _under_key(base, NEW_KEY, [OLD_KEY])
    write_records(redis_client, new, 2, [STILL_ERASED, RESTORED, LATE, *LOGGED])
    stats = Sink(redis_client, new).run(once=True)
    log_dir = base.events.log_dir
    assert (
        stats.erased == 2 * 2 * len(KINDS) and _rows_of(log_dir, STILL_ERASED, _both_keys(STILL_ERASED)) == 0
    )
    assert _rows_of(log_dir, LATE, _both_keys(LATE)) == 0
    assert _rows_of(log_dir, RESTORED, _both_keys(RESTORED)) == 2 * len(KINDS)
    for kind in KINDS:
        rows = read_log(log_dir, kind)
        assert set(rows["member"]) == {new_key(m) for m in [RESTORED, *LOGGED]}, kind
        assert len(rows) == 2 * (1 + len(LOGGED)), kind


def test_with_redis_down_at_start_up_the_marks_are_made_when_it_is_back(tmp_path: Path) -> None:
    """Start-up goes on without Redis; a thread marks the members when Redis answers again and
    queues them for the purge: what was logged about them in between is removed from disk."""
    server = LocalRedis(tmp_path / "redis").start()
    try:
        admin = connect(server.url, socket_timeout=5)
        settings = log_settings(server.url, tmp_path)
        _forget_under_old_key(admin, settings, STILL_ERASED)
        # The process's own connections are refused (NOAUTH) until the password is lifted.
        admin.config_set("requirepass", "down")
        service = connect(server.url, timeout_s=5)  # as a server process connects
        security = _start_under_new_key(settings, service)
        assert security.marks_retry is not None and security.marks_retry.is_alive()
        new = _under_key(settings, NEW_KEY, [OLD_KEY])
        write_records(admin, new, 1, [STILL_ERASED, *LOGGED])  # logged meanwhile ...
        Sink(admin, new).run(once=True)
        assert _rows_of(settings.events.log_dir, STILL_ERASED, _both_keys(STILL_ERASED)) == len(KINDS)
        admin.config_set("requirepass", "")
        security.marks_retry.join(timeout=10)
        assert not security.marks_retry.is_alive()
        stats = Sink(admin, new).run(once=True)  # ... and removed from disk once marked
        assert stats.purged == len(KINDS)
        assert _rows_of(settings.events.log_dir, STILL_ERASED, _both_keys(STILL_ERASED)) == 0
        assert len(read_log(settings.events.log_dir, "event")) == len(LOGGED)
        security.close()
        service.close()
        admin.close()
    finally:
        server.stop()


def test_a_restart_after_a_rotation_through_a_server(
    planted: PlantedBundle, redis_url: str, tmp_path: Path
) -> None:
    """ForgetMember (and a RestoreMember) on a server under the old key; a server restarted under
    the new key serves the erased member as an unknown member and its impression never reaches
    disk, while the re-registered member and everyone else are logged."""
    settings = _logging_server(planted, redis_url, tmp_path)
    erased, restored, other = planted.warm_members(0)[:3]
    with running_server(_under_key(settings, OLD_KEY)) as s:
        admin = admin_pb2_grpc.AdminStub(s.channel)
        for m in (erased, restored):
            admin.ForgetMember(admin_pb2.ForgetMemberRequest(member_id=m, reason="t"), timeout=10)
        admin.RestoreMember(admin_pb2.RestoreMemberRequest(member_id=restored, reason="t"), timeout=10)
    with running_server(_under_key(settings, NEW_KEY, [OLD_KEY])) as s:
        for m in (erased, restored, other):
            _recommend_and_click(s.stub, m, click=m != erased)  # refused for the erased: MEMBER_ERASED
        time.sleep(0.2)  # impressions are written by the log's thread
    redis_client = connect(redis_url)
    stats = Sink(redis_client, settings).run(once=True)
    log_dir = settings.events.log_dir
    assert stats.erased == 1  # the erased member's impression
    assert _rows_of(log_dir, erased, _both_keys(erased)) == 0
    assert _rows_of(log_dir, restored, _both_keys(restored)) == 2  # an impression and an event
    assert _rows_of(log_dir, other, _both_keys(other)) == 2
    redis_client.close()
