"""``recsvc events sink``: the event log's streams -> partitioned Parquet files, exactly once.

Reads every shard's three streams (``recsvc.eventlog.log``) as consumer group ``sink`` and writes
``<events.log_dir>/kind=<kind>/date=<YYYY-MM-DD>/part-<shard>-<first id>-<last id>.parquet``.
The date is the day (UTC) the service logged the record, taken from the stream id, so a stream's
files cover consecutive, non-overlapping id ranges in id order. Ids appear in file names as
``<ms>_<seq>``.

Exactly once, whatever moment the sink dies at:

1. a batch (``events.sink_batch`` records of one stream, or fewer once the first of them waited
   ``events.sink_flush_s``) is written to a temporary file, fsynced and renamed into place (a
   reader never sees half a file; a crash leaves at most a ``.tmp`` file, removed at the next
   start);
2. only then are its entries acknowledged and deleted from the stream, in one single-slot script
   (XACK + XDEL), so Redis keeps only what is not on disk yet;
3. one sink writes a shard at a time: it holds ``<log_dir>/.shard-<n>.lock`` (``flock``, freed
   by the OS when the process dies), so a shard's files are written in id order and the highest
   id on disk tells what is there. A second sink on the same folder takes the shards no one holds
   and waits for the others, trying again every second;
4. when a sink takes a shard (at start, or when another sink's process ended) it reads, per
   stream, the highest id already on disk (the file names) and the entries still pending for it
   (XREADGROUP from id 0, after XAUTOCLAIM of every entry the shard's last writer left: it is
   gone, or the lock would not be free): pending entries at or below that id are on disk
   already, so they are only acknowledged, never written twice; the rest are written as usual.

Erased members (``recsvc.eventlog.erasure``): before a batch is written, its members are looked up
in the set of erased members and their records dropped (acknowledged, not written); between
batches the sink takes the purge requests and rewrites the files holding their rows, each under
its own name. A pending entry the erasure
deleted from the stream comes back without fields: it is only acknowledged. Writes hold a shared
``flock`` on ``<log_dir>/.erasure.lock`` from the erased-set look-up to the acknowledgement and a
purge holds it exclusively, so with a second sink on the same folder a batch is either written
before a purge lists the files (and rewritten by it) or looked up after the member was marked.
The file names step 4 reads never change.

Redis must keep what it acknowledged to the service: run it with AOF (``appendonly yes``) when
the log matters (docs/operations.md).
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import redis
from prometheus_client import CollectorRegistry, Counter, Gauge

from recsvc.eventlog.erasure import erased_key, purge_key, rewrite_without
from recsvc.eventlog.files import FileLock, write_atomically
from recsvc.eventlog.log import KINDS, stream_key
from recsvc.eventlog.schema import SCHEMAS, row
from recsvc.redis_client import UNAVAILABLE, RedisClient
from recsvc.settings import Settings

log = logging.getLogger(__name__)

GROUP = "sink"
# One stream's acknowledged entries: acknowledged and deleted together (one slot: one stream).
_ACK_SCRIPT = """
local n = redis.call('XACK', KEYS[1], ARGV[1], unpack(ARGV, 2))
redis.call('XDEL', KEYS[1], unpack(ARGV, 2))
return n
"""

# Ids per acknowledgement script: unpack() in Lua holds at most ~8,000 values.
_ACK_CHUNK = 5000
# The wait after Redis could not answer: the first, doubling up to the second.
_REDIS_BACKOFF_S = (0.5, 10.0)

StreamId = tuple[int, int]


def parse_id(raw: str | bytes) -> StreamId:
    text = raw.decode() if isinstance(raw, bytes) else raw
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)


def id_text(sid: StreamId) -> str:
    return f"{sid[0]}-{sid[1]}"


def file_id(sid: StreamId) -> str:
    return f"{sid[0]}_{sid[1]}"


def part_name(shard: int, first: StreamId, last: StreamId) -> str:
    return f"part-{shard}-{file_id(first)}-{file_id(last)}.parquet"


def parse_part(name: str) -> tuple[int, StreamId, StreamId] | None:
    if not name.startswith("part-") or not name.endswith(".parquet"):
        return None
    try:
        _, shard, first, last = name[: -len(".parquet")].split("-")
        f_ms, f_seq = first.split("_")
        l_ms, l_seq = last.split("_")
        return int(shard), (int(f_ms), int(f_seq)), (int(l_ms), int(l_seq))
    except ValueError:
        return None


def on_disk(log_dir: Path, kind: str, shard: int) -> StreamId | None:
    """The highest stream id in ``kind``'s files of ``shard`` (None: no file yet)."""
    out: StreamId | None = None
    for path in (log_dir / f"kind={kind}").glob(f"date=*/part-{shard}-*.parquet"):
        parsed = parse_part(path.name)
        if parsed is not None and parsed[0] == shard:
            out = parsed[2] if out is None else max(out, parsed[2])
    return out


class SinkMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        kw: dict[str, Any] = {"namespace": "recsvc", "subsystem": "eventlog_sink", "registry": self.registry}
        self.written = Counter("records_total", "Records written to Parquet, by kind.", ["kind"], **kw)
        self.skipped = Counter(
            "replayed_total",
            "Pending records found already on disk after a restart (acknowledged only).",
            **kw,
        )
        self.files = Counter("files_total", "Parquet files written.", **kw)
        self.erased = Counter(
            "erased_total", "Records of erased members dropped before writing, by kind.", ["kind"], **kw
        )
        self.purged = Counter(
            "purged_rows_total",
            "Rows of erased members removed from files already written, by kind.",
            ["kind"],
            **kw,
        )
        self.redis_down = Counter(
            "redis_down_total",
            "Times Redis could not answer the sink (down, too slow, failing over); it waits and goes on.",
            **kw,
        )
        self.disk_errors = Counter(
            "disk_errors_total",
            "Times the log folder could not be written (full, read-only); the sink waits and goes on.",
            **kw,
        )
        self.lag_entries = Gauge("lag_entries", "Records in the streams not yet on disk.", **kw)
        self.lag_seconds = Gauge(
            "lag_seconds", "Age of the oldest record not yet on disk (0 when none).", **kw
        )


@dataclass
class SinkStats:
    written: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))
    replayed: int = 0
    files: int = 0
    erased: int = 0  # records of erased members dropped before writing
    bad: int = 0  # entries the service cannot have written, skipped (logged)
    purged: int = 0  # rows of erased members removed from files already written
    held_elsewhere: list[int] = field(default_factory=list)  # shards another sink wrote meanwhile


class Sink:
    def __init__(
        self,
        client: RedisClient,
        settings: Settings,
        *,
        consumer: str = "sink-0",
        metrics: SinkMetrics | None = None,
        before_ack: Callable[[], None] | None = None,
    ) -> None:
        e = settings.events
        self._client = client
        self._prefix = settings.redis.key_prefix
        self._shards = e.shards
        self._dir = Path(e.log_dir)
        self._batch = e.sink_batch
        self._block_ms = e.sink_block_ms
        self._flush_s = e.sink_flush_s
        self._consumer = consumer
        self.metrics = metrics or SinkMetrics()
        self.stats = SinkStats()
        self._ack = client.register_script(_ACK_SCRIPT)
        self._erased_key = erased_key(self._prefix)
        self._purge_key = purge_key(self._prefix)
        self._lock_fd: int | None = None
        self._before_ack = before_ack  # tests: a hook between "on disk" and "acknowledged"
        self._done: dict[tuple[str, int], StreamId] = {}
        self._pending: set[int] = set()
        self._owned: dict[int, int] = {}  # shard -> the fd holding its lock file
        self._tried_at = 0.0  # when the shards another sink holds were last tried
        # New records read but not yet written, per stream: written once sink_batch of them wait
        # or the first waited sink_flush_s (unacknowledged meanwhile, so a crash re-reads them).
        self._held: dict[str, tuple[str, int, float, list[Any]]] = {}
        self._stop = threading.Event()
        self._lag_at = 0.0

    # ------------------------------------------------------------------ start-up
    def prepare(self) -> None:
        self._dir.mkdir(parents=True, exist_ok=True)
        if self._lock_fd is None:
            self._lock_fd = os.open(self._dir / ".erasure.lock", os.O_RDWR | os.O_CREAT, 0o644)
        for shard in range(self._shards):
            for kind in KINDS:
                key = stream_key(self._prefix, shard, kind)
                try:
                    self._client.xgroup_create(key, GROUP, id="0", mkstream=True)
                except redis.ResponseError as exc:
                    if "BUSYGROUP" not in str(exc):
                        raise
        for shard in list(self._owned):
            self._take(shard)  # again after Redis came back: what it still holds pending
        self._take_free_shards(force=True)

    def _take_free_shards(self, force: bool = False) -> None:
        """Take every shard whose lock is free (at most once a second unless ``force``)."""
        now = time.monotonic()
        if len(self._owned) == self._shards or (not force and now - self._tried_at < 1.0):
            return
        self._tried_at = now
        for shard in range(self._shards):
            if shard in self._owned:
                continue
            fd = os.open(self._dir / f".shard-{shard}.lock", os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)  # another sink writes it
                continue
            self._owned[shard] = fd
            self._take(shard)

    def _take(self, shard: int) -> None:
        """Start writing ``shard``: where its files end, and its pending entries, whoever read them."""
        with self._locked(fcntl.LOCK_SH):  # not while a purge (exclusive) is rewriting files
            for tmp in self._dir.glob(f"kind=*/date=*/.tmp-part-{shard}-*"):
                tmp.unlink(missing_ok=True)  # a write its last writer did not finish: entries pending
        for kind in KINDS:
            last = on_disk(self._dir, kind, shard)  # its own files only: one glob per shard taken
            if last is not None:
                self._done[(kind, shard)] = last
            self._claim(stream_key(self._prefix, shard, kind))
        self._pending.add(shard)
        log.info("event=eventlog_sink_shard_taken consumer=%s shard=%d", self._consumer, shard)

    def _claim(self, key: str) -> None:
        """Take over the entries other consumers of the group read and left unacknowledged: the
        shard's lock says they are gone."""
        start = "0-0"
        while True:
            reply = self._client.xautoclaim(key, GROUP, self._consumer, 0, start, count=1000)
            start = reply[0].decode() if isinstance(reply[0], bytes) else str(reply[0])
            if start == "0-0":
                return

    # ------------------------------------------------------------------ the loop
    def stop(self) -> None:
        self._stop.set()

    def run(self, once: bool = False) -> SinkStats:
        """Until ``stop()`` (or, with ``once``, until the streams are drained). Redis down or
        failing over does not end the loop: the sink waits (``_REDIS_BACKOFF_S``, doubling) and
        starts again from what Redis still holds unacknowledged. ``once`` gives up instead: a
        one-off drain should say that it could not drain."""
        try:
            return self._run(once)
        finally:
            self.close()  # also when it fails: the shards' locks free, as a dead process's are

    def _run(self, once: bool) -> SinkStats:
        backoff = _REDIS_BACKOFF_S[0]
        ready = False
        while not self._stop.is_set():
            try:
                if not ready:
                    self.prepare()
                    ready = True
                if self._turn(once):
                    break
                backoff = _REDIS_BACKOFF_S[0]
            except UNAVAILABLE as exc:
                if once:
                    raise
                self._wait_out(exc, backoff)
                ready = False
                backoff = min(backoff * 2, _REDIS_BACKOFF_S[1])
            except redis.ResponseError as exc:
                if "NOGROUP" not in str(exc) or once:
                    raise
                # Redis came back without its data: the consumer groups are made again
                self._wait_out(exc, backoff)
                ready = False
            except OSError as exc:
                if once:
                    raise
                # A full or read-only disk: what was read stays pending in Redis, nothing is
                # acknowledged unwritten; the sink waits for room, as for Redis
                self._wait_out(exc, backoff, disk=True)
                ready = False
                backoff = min(backoff * 2, _REDIS_BACKOFF_S[1])
        try:
            self.write_held(force=True)  # stopping: what was read goes to disk before exit
            self.purge()
            self._update_lag(force=True)
        except UNAVAILABLE as exc:  # unacknowledged: the next run writes it
            log.warning("event=eventlog_sink_stop_redis_down error=%s", type(exc).__name__)
        self.stats.held_elsewhere = self.shards_held_elsewhere
        return self.stats

    def _turn(self, once: bool) -> bool:
        """One pass of the loop; True when ``once`` has drained the streams."""
        self.purge()
        reading_pending = bool(self._pending)  # entries left pending first, then new ones
        n = self.step()
        if n == 0 and not reading_pending:
            self.write_held(force=once)
            self._update_lag()
            if once:
                return True
            self._stop.wait(min(self._block_ms / 1000, 0.25))
        else:
            self.write_held()
            self._update_lag()
        return False

    def _wait_out(self, exc: Exception, wait_s: float, disk: bool = False) -> None:
        """Forget what was read and not yet acknowledged (Redis keeps it pending: every shard is
        read again from its pending entries, and what already reached disk is only
        acknowledged), then wait. ``disk``: the log folder, not Redis, failed."""
        (self.metrics.disk_errors if disk else self.metrics.redis_down).inc()
        log.log(
            logging.ERROR if disk else logging.WARNING,
            "event=eventlog_sink_%s error=%s detail=%s retry_in_s=%.1f",
            "disk_error" if disk else "redis_down",
            type(exc).__name__,
            str(exc)[:200],
            wait_s,
        )
        self._held.clear()
        self._stop.wait(wait_s)

    def close(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None
        for fd in self._owned.values():
            os.close(fd)  # the shards' locks go with their descriptors
        self._owned.clear()
        self._pending.clear()

    @property
    def shards_held_elsewhere(self) -> list[int]:
        return [s for s in range(self._shards) if s not in self._owned]

    def purge(self, limit: int = 1000) -> int:
        """Remove the rows of members erased since the last call from the files on disk; the number
        of requests handled. A request is removed only after its files were replaced, so a sink
        killed meanwhile does it again at the next start (a rewrite is idempotent)."""
        raw: Any = self._client.lrange(self._purge_key, 0, limit - 1)
        if not raw:
            return 0
        pseudonyms = {v.decode() if isinstance(v, bytes) else str(v) for v in raw}
        with self._locked(fcntl.LOCK_EX):
            done = rewrite_without(self._dir, pseudonyms)
        for kind, n in done.rows.items():
            if n:
                self.metrics.purged.labels(kind).inc(n)
        self.stats.purged += sum(done.rows.values())
        pipe = self._client.pipeline(transaction=False)
        for value in raw:
            pipe.lrem(self._purge_key, 1, value)
        pipe.execute()
        log.info(
            "event=eventlog_purged pseudonyms=%d rows=%d files=%d",  # one per key a member was erased under
            len(pseudonyms),
            sum(done.rows.values()),
            done.files,
        )
        return len(raw)

    def _locked(self, how: int) -> FileLock:
        return FileLock(self._lock_fd, how)

    def write_held(self, force: bool = False) -> None:
        now = time.monotonic()
        for key, (kind, shard, since, entries) in list(self._held.items()):
            if force or len(entries) >= self._batch or now - since >= self._flush_s:
                del self._held[key]
                self._write(kind, shard, key, entries)

    def step(self) -> int:
        """One read of every shard; the number of entries handled."""
        handled = 0
        self._take_free_shards()
        for shard in sorted(self._owned):
            keys = [stream_key(self._prefix, shard, kind) for kind in KINDS]
            pending = shard in self._pending
            reply: list[Any] = self._client.xreadgroup(  # type: ignore[assignment]
                GROUP, self._consumer, dict.fromkeys(keys, "0" if pending else ">"), count=self._batch
            )
            got = 0
            for raw_key, entries in reply or []:
                key = raw_key.decode() if isinstance(raw_key, bytes) else raw_key
                kind = key.rsplit(":", 1)[1]
                if not entries:
                    continue
                got += len(entries)
                if pending:
                    self._write(kind, shard, key, entries)  # re-read at start: "0" returns them until acked
                else:
                    held = self._held.setdefault(key, (kind, shard, time.monotonic(), []))
                    held[3].extend(entries)
            if pending and got == 0:
                self._pending.discard(shard)  # every entry left pending at start is handled
            handled += got
        return handled

    def _write(self, kind: str, shard: int, key: str, entries: list[Any]) -> None:
        with self._locked(fcntl.LOCK_SH):
            self._write_locked(kind, shard, key, entries)

    def _write_locked(self, kind: str, shard: int, key: str, entries: list[Any]) -> None:
        done = self._done.get((kind, shard), (0, 0))
        by_date: dict[str, list[tuple[StreamId, dict[str, Any]]]] = {}
        ids: list[str] = []
        records: list[tuple[StreamId, dict[str, Any], dict[str, Any]]] = []
        for raw_id, fields in entries:
            sid = parse_id(raw_id)
            ids.append(id_text(sid))
            if sid <= done:
                self.stats.replayed += 1
                self.metrics.skipped.inc()
                continue
            if not fields:
                continue  # deleted from the stream after it was read (an erasure): nothing to write
            raw = fields.get(b"d", fields.get("d"))
            try:
                record = json.loads(raw)
                records.append((sid, record, row(kind, id_text(sid), record)))
            except (ValueError, TypeError) as exc:  # TypeError: no "d" field at all
                # not an entry the service wrote (a hand-made XADD, a foreign writer): skipped and
                # acknowledged, or it would stop the shard at every start
                self.stats.bad += 1
                log.warning(
                    "event=eventlog_bad_entry stream=%s id=%s error=%s", key, id_text(sid), str(exc)[:200]
                )
        erased = self._erased_among({str(r.get("member", "")) for _, r, _ in records})
        for sid, record, parquet_row in records:
            if erased and record.get("member") in erased:
                self.stats.erased += 1
                self.metrics.erased.labels(kind).inc()
                continue
            date = datetime.fromtimestamp(sid[0] / 1000, tz=UTC).strftime("%Y-%m-%d")
            by_date.setdefault(date, []).append((sid, parquet_row))
        for date, rows in sorted(by_date.items()):  # dates follow the ids: the earlier file first
            first, last = rows[0][0], rows[-1][0]
            folder = self._dir / f"kind={kind}" / f"date={date}"
            table = pa.Table.from_pylist([r for _, r in rows], schema=SCHEMAS[kind])
            write_atomically(table, folder / part_name(shard, first, last))
            self._done[(kind, shard)] = last
            self.stats.written[kind] += len(rows)
            self.stats.files += 1
            self.metrics.written.labels(kind).inc(len(rows))
            self.metrics.files.inc()
        if self._before_ack is not None:
            self._before_ack()
        for start in range(0, len(ids), _ACK_CHUNK):
            self._ack(keys=[key], args=[GROUP, *ids[start : start + _ACK_CHUNK]])

    def _erased_among(self, members: set[str]) -> set[str]:
        members.discard("")
        if not members:
            return set()
        names = sorted(members)
        flags: Any = self._client.smismember(self._erased_key, names)
        return {m for m, hit in zip(names, flags, strict=True) if int(hit)}

    def _update_lag(self, force: bool = False) -> None:
        now = time.time()
        if not force and now - self._lag_at < 1.0:
            return
        self._lag_at = now
        pipe = self._client.pipeline(transaction=False)
        for shard in range(self._shards):
            for kind in KINDS:
                key = stream_key(self._prefix, shard, kind)
                pipe.xlen(key)
                pipe.xrange(key, count=1)
        replies = pipe.execute()
        entries = sum(int(n) for n in replies[0::2])
        oldest = [parse_id(r[0][0])[0] for r in replies[1::2] if r]
        self.metrics.lag_entries.set(entries)
        self.metrics.lag_seconds.set(max(0.0, now - min(oldest) / 1000) if oldest else 0.0)


def install_signal_handlers(sink: Sink) -> None:
    """SIGTERM/SIGINT finish the batch in hand, then stop."""
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: sink.stop())
