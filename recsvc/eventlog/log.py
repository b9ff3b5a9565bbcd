"""The service's side of the durable event log: impressions, events and outreach decisions go to
Redis Streams, which ``recsvc events sink`` (``recsvc.eventlog.sink``) writes to Parquet.

Layout (docs/operations.md): the log is spread over ``events.shards`` shards, a member's records
always in the same one (a stable hash of the member id). Shard ``n`` holds one stream per kind,
``<prefix>:{log:<n>}:event``, ``...:impression`` and ``...:decision``; the three share the hash tag
``{log:<n>}``, so on Redis Cluster a shard lives in one slot (the sink reads its three streams in
one XREADGROUP and acknowledges in one single-slot script) while the shards spread over the
cluster. Each entry has one field, ``d``: the record as JSON.

- Impressions and decisions are buffered per process and written in batches by a background
  thread (one round trip per ``events.flush_interval_ms``), so a recommendation call only appends
  to a bounded in-memory queue. A batch is one script call per stream (its records appended by
  one ``XADD`` each) and one per impression for the member's recent impressions, sent through
  ``recsvc.script_runner`` (the writer's CPU per impression was mostly redis-py's per-command
  pipeline work). A full queue, or a batch Redis refused, is dropped
  and counted (``recsvc_eventlog_dropped_total``) and logged: never retried forever in memory.
- Events are written synchronously by ``RecordEvent`` (it already waits for Redis), so an event
  the server confirmed is in the log even if the process dies right after.
- Per member, the latest impressions (``<prefix>:{m:<id>}:rt:impressions``, newest first, at most
  ``events.recent_impressions_max``, expiring ``events.attribution_window_s`` after the last one)
  let ``RecordEvent`` attribute a click or purchase without a recommendation id.

Redis down: a shard's circuit breaker opens at the first failure of its streams; until a probe
succeeds, that shard's records are dropped at once (counted), the other shards' are written (on
Redis Cluster another primary holds them), and recommendations and events are served as without
the log.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from itertools import chain
from typing import Any

import orjson
from prometheus_client import CollectorRegistry, Counter

from recsvc.breaker import CircuitBreaker
from recsvc.redis_client import STORE_ERRORS, UNAVAILABLE, RedisClient
from recsvc.redis_keys import member_key
from recsvc.script_runner import Call, ScriptRunner
from recsvc.security.erasure import suppression_key
from recsvc.security.privacy import Pseudonymizer
from recsvc.settings import Settings

log = logging.getLogger(__name__)

KINDS = ("event", "impression", "decision")
IMPRESSIONS_SUFFIX = "rt:impressions"
# Events a list can lead to; only these are attributed (docs/experiments.md).
ATTRIBUTED_EVENTS = frozenset({"click", "add_to_cart", "purchase"})
_REDIS_DOWN = UNAVAILABLE
# The member's erasure record lives in the same slot: an impression queued before an erasure
# and written after it must not bring the member's record back (docs/privacy.md).
# KEYS: recent impressions, suppression record. ARGV: entry, last index kept, TTL (s).
_RECENT_SCRIPT = """
if redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
redis.call('LPUSH', KEYS[1], ARGV[1])
redis.call('LTRIM', KEYS[1], 0, tonumber(ARGV[2]))
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[3]))
return 1
"""
# KEYS: one stream. ARGV: its records (the field ``d`` of each entry), appended in order.
_APPEND_SCRIPT = """
for i = 1, #ARGV do redis.call('XADD', KEYS[1], '*', 'd', ARGV[i]) end
return #ARGV
"""


def shard_of(member_id: str, shards: int) -> int:
    digest = hashlib.blake2b(member_id.encode("utf-8"), digest_size=4, person=b"recsvc-log").digest()
    return int.from_bytes(digest, "big") % shards


def shard_tag(shard: int) -> str:
    return "{log:" + str(shard) + "}"


def stream_key(prefix: str, shard: int, kind: str) -> str:
    """e.g. ``recsvc:{log:3}:event``."""
    return f"{prefix}:{shard_tag(shard)}:{kind}"


_JSON_OPTIONS = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS


def dumps(record: dict[str, Any]) -> str:
    """Compact JSON with non-ASCII text as UTF-8 (what ``json.dumps`` with compact separators and
    ``ensure_ascii=False`` writes), several times faster."""
    return orjson.dumps(record, option=_JSON_OPTIONS).decode()


class EventLogMetrics:
    def __init__(self, registry: CollectorRegistry | None) -> None:
        kw: dict[str, Any] = {"namespace": "recsvc", "subsystem": "eventlog"}
        if registry is not None:
            kw["registry"] = registry
        self.written = Counter(
            "written_total", "Records written to the event log's streams, by kind.", ["kind"], **kw
        )
        self.dropped = Counter(
            "dropped_total",
            "Records that could not be written to the event log (buffer_full, redis_down, rejected: "
            "Redis answered with an error), by kind.",
            ["kind", "reason"],
            **kw,
        )


class EventLog:
    """One per server process (``recsvc.server.app.build_deps``); thread-safe."""

    def __init__(
        self,
        client: RedisClient,
        settings: Settings,
        metrics: EventLogMetrics,
        clock: Callable[[], float] = time.time,
        flush_client: RedisClient | None = None,
    ) -> None:
        """``flush_client``: the client the background flush writes buffered impressions with
        (``events.flush_timeout_ms``): no call waits on it, so it may wait longer than the hot
        path's 50 ms, which a loaded machine exceeds and which dropped whole batches as
        ``redis_down`` while Redis was up. Default: ``client``."""
        e = settings.events
        self._client = client
        self._prefix = settings.redis.key_prefix
        self._shards = e.shards
        self._window = e.attribution_window_s
        self._recent_max = e.recent_impressions_max
        self._capacity = e.buffer_size
        self._interval = e.flush_interval_ms / 1000
        self._metrics = metrics
        self._clock = clock
        self._pseudonym = Pseudonymizer(settings.security.pseudonym_key)
        # (kind, member_id, record): a deque's append and popleft are atomic, so the hot path
        # takes no lock; the length check may overshoot by a few under races, which is harmless.
        self._buffer: deque[tuple[str, str, dict[str, Any]]] = deque()
        # Batches taken from the buffer whose write has not returned: a click on an item of one
        # is still attributed (it is in neither the buffer nor Redis meanwhile).
        self._in_flight: list[list[tuple[str, str, dict[str, Any]]]] = []
        self._append = ScriptRunner(client, _APPEND_SCRIPT)
        self._remember = ScriptRunner(client, _RECENT_SCRIPT)
        background = flush_client or client
        self._flush_runners = (
            ScriptRunner(background, _APPEND_SCRIPT),
            ScriptRunner(background, _RECENT_SCRIPT),
        )
        # One breaker per shard: on Redis Cluster a shard's streams live on one primary, and a
        # primary that fails must not stop the writes to the shards the others hold. The members'
        # recent-impression lists (read for attribution) live in the members' own slots.
        interval = settings.redis.reconnect_interval_ms / 1000
        self._breakers = [CircuitBreaker(f"eventlog-{n}", 1, interval) for n in range(self._shards)]
        for n, breaker in enumerate(self._breakers):
            breaker.add_listener(functools.partial(self._state_changed, n))
        self._recent_breaker = CircuitBreaker("eventlog-recent", 1, interval)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ buffered records
    def impression(
        self,
        rec_id: str,
        member_id: str,
        *,
        variant: str,
        model_version: str,
        scene: str,
        channel: str,
        items: Sequence[str],
        source: str,
        campaign: str = "",
    ) -> None:
        """Queue one impression (never blocks, never raises)."""
        if len(self._buffer) >= self._capacity:
            self._metrics.dropped.labels("impression", "buffer_full").inc()
            return
        self._buffer.append(
            (
                "impression",
                member_id,
                {
                    "id": rec_id,
                    "ts": self._clock(),
                    "variant": variant,
                    "model_version": model_version,
                    "scene": scene,
                    "channel": channel,
                    "items": list(items),
                    "source": source,
                    "campaign": campaign,
                },
            )
        )

    def decision(self, member_id: str, record: dict[str, Any]) -> None:
        """Queue one outreach decision (campaign, channel, allowed, reason, reservation_id, mode)."""
        if len(self._buffer) >= self._capacity:
            self._metrics.dropped.labels("decision", "buffer_full").inc()
            return
        self._buffer.append(("decision", member_id, {"ts": self._clock(), **record}))

    def start(self) -> EventLog:
        self._thread = threading.Thread(target=self._run, name="recsvc-eventlog", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop the writer after a last flush (graceful shutdown loses nothing buffered)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self.flush()

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                while self.flush() >= 1000:  # a backlog: keep writing without waiting
                    pass
            except Exception:  # the writer must outlive any one bad batch
                log.exception("event=eventlog_flush_failed")

    def flush(self, limit: int = 1000) -> int:
        """Write up to ``limit`` buffered records in one pipelined round trip; their count."""
        batch: list[tuple[str, str, dict[str, Any]]] = []
        # visible before the first record leaves the buffer: a reader that looks at the buffer
        # and then at the batches in flight finds each record in one of them
        self._in_flight.append(batch)
        try:
            pop = self._buffer.popleft
            try:
                while len(batch) < limit:
                    batch.append(pop())
            except IndexError:
                pass
            if not batch:
                return 0
            return self._write(batch, self._flush_runners)
        finally:
            self._in_flight.remove(batch)

    def write_now(self, batch: list[tuple[str, str, dict[str, Any]]]) -> int:
        """Write records (kind, member id, record) in one round trip now, not through the buffer:
        outreach decisions, whose caller already waits for Redis and which must not be dropped
        for a full buffer when a campaign of 100,000 members is planned."""
        now = self._clock()
        for kind, _member, record in batch:
            record.setdefault("ts", now)
            if kind == "impression":
                record.setdefault("variant", "")
                record.setdefault("model_version", "")
        return self._write(batch) if batch else 0

    def _write(
        self,
        batch: list[tuple[str, str, dict[str, Any]]],
        runners: tuple[ScriptRunner, ScriptRunner] | None = None,
    ) -> int:
        """``runners``: (append, remember) on the client to write with; default the hot path's."""
        append, remember = runners or (self._append, self._remember)
        streams: dict[str, list[str]] = {}
        kinds: dict[str, str] = {}
        shard_of_key: dict[str, int] = {}
        recent: list[Call] = []
        closed: list[tuple[str, str, dict[str, Any]]] = []  # the records of shards not tried now
        sent: list[tuple[str, str, dict[str, Any]]] = []
        allowed: dict[int, bool] = {}
        for kind, member_id, record in batch:
            shard = shard_of(member_id, self._shards)
            if shard not in allowed:
                allowed[shard] = self._breakers[shard].allow()
            if not allowed[shard]:
                closed.append((kind, member_id, record))
                continue
            sent.append((kind, member_id, record))
            record["member"] = self._pseudonym(member_id) if member_id else ""
            key = stream_key(self._prefix, shard, kind)
            entries = streams.get(key)
            if entries is None:
                entries = streams[key] = []
                kinds[key] = kind
                shard_of_key[key] = shard
            entries.append(dumps(record))
            if kind == "impression" and member_id and record["items"]:
                recent.append(
                    (
                        (
                            member_key(self._prefix, member_id, IMPRESSIONS_SUFFIX),
                            suppression_key(self._prefix, member_id),
                        ),
                        (dumps({"r": record["id"], "ts": record["ts"], "i": record["items"]}),),
                    )
                )
        if closed:
            self._dropped(closed, "redis_down")
        keys = list(streams)
        if not keys:
            return len(batch)
        tried = {shard_of_key[key] for key in keys}
        try:
            appended = append.call_many([((key,), streams[key]) for key in keys])
        except _REDIS_DOWN as exc:
            for shard in tried:
                self._breakers[shard].failure()
            self._dropped(sent, "redis_down", exc)
            return len(batch)
        down: set[int] = set()
        # Replies in place: on Redis Cluster one primary can be failing over while the others answer.
        for key, reply in zip(keys, appended, strict=True):
            kind, n = kinds[key], len(streams[key])
            if not isinstance(reply, Exception):
                self._metrics.written.labels(kind).inc(n)
                continue
            unavailable = isinstance(reply, _REDIS_DOWN)
            if unavailable:
                down.add(shard_of_key[key])
            self._metrics.dropped.labels(kind, "redis_down" if unavailable else "rejected").inc(n)
            log.warning(
                "event=eventlog_dropped records=%d kind=%s error=%s %s", n, kind, type(reply).__name__, reply
            )
        for shard in tried:
            if shard in down:
                self._breakers[shard].failure()
            else:
                self._breakers[shard].success()
        self._remember_impressions(recent, remember)
        return len(batch)

    def _remember_impressions(self, recent: list[Call], remember: ScriptRunner) -> None:
        """Write the members' recent impressions (attribution without a recommendation id). They
        live in the members' own slots, not a shard's, so a failure here opens no shard's breaker;
        losing some only weakens attribution: logged."""
        if not recent:
            return
        try:
            replies = remember.call_many(recent, shared=(self._recent_max - 1, self._window))
        except _REDIS_DOWN as exc:
            replies = [exc] * len(recent)
        failed = [r for r in replies if isinstance(r, Exception)]
        if failed:
            log.warning(
                "event=eventlog_recent_impressions_lost members=%d error=%s",
                len(failed),
                type(failed[0]).__name__,
            )

    def _dropped(
        self, batch: list[tuple[str, str, dict[str, Any]]], reason: str, exc: Exception | None = None
    ) -> None:
        for kind in KINDS:
            n = sum(1 for k, _, _ in batch if k == kind)
            if n:
                self._metrics.dropped.labels(kind, reason).inc(n)
        log.warning(
            "event=eventlog_dropped records=%d reason=%s error=%s",
            len(batch),
            reason,
            type(exc).__name__ if exc else "",
        )

    def _state_changed(self, shard: int, down: bool) -> None:
        if down:
            log.warning("event=eventlog_degraded shard=%d records dropped (counted) until it answers", shard)
        else:
            log.info("event=eventlog_recovered shard=%d", shard)

    # ------------------------------------------------------------------ events (synchronous)
    def event(self, member_id: str, record: dict[str, Any]) -> bool:
        """Write one event now; False (counted, logged) when Redis is unavailable."""
        shard = shard_of(member_id, self._shards)
        breaker = self._breakers[shard]
        if not breaker.allow():
            self._metrics.dropped.labels("event", "redis_down").inc()
            return False
        record["member"] = self._pseudonym(member_id)
        try:
            self._client.xadd(stream_key(self._prefix, shard, "event"), {"d": dumps(record)})
        except _REDIS_DOWN as exc:
            breaker.failure()
            self._dropped([("event", member_id, record)], "redis_down", exc)
            return False
        except STORE_ERRORS as exc:  # answered with an error (a key of another type): not down
            self._dropped([("event", member_id, record)], "rejected", exc)
            return False
        breaker.success()
        self._metrics.written.labels("event").inc()
        return True

    def attribute(self, member_id: str, item_id: str, at: float) -> str:
        """The id of the member's latest impression within the attribution window (before ``at``)
        that showed ``item_id``; "" when none (or Redis is unavailable)."""
        if not self._recent_breaker.allow():
            return ""
        try:
            raw = self._client.lrange(
                member_key(self._prefix, member_id, IMPRESSIONS_SUFFIX), 0, self._recent_max - 1
            )
        except _REDIS_DOWN:
            self._recent_breaker.failure()
            return ""
        self._recent_breaker.success()
        since, until = at - self._window, at + 1
        # The newest list showing the item, written or still buffered here: a list served within
        # the last flush interval is newer than any this process wrote, but another process may
        # have written a newer one, so both are compared by time.
        best_ts, best = self._buffered_match(member_id, item_id, since, until)
        for entry in raw:  # type: ignore[union-attr]
            try:
                d = json.loads(entry)
                ts = float(d["ts"])
                if since <= ts <= until and item_id in d["i"]:
                    if ts > best_ts:
                        best_ts, best = ts, str(d["r"])
                    break  # newest first: the rest are older
            except (ValueError, KeyError, TypeError):
                continue
        return best

    def _buffered_match(self, member_id: str, item_id: str, since: float, until: float) -> tuple[float, str]:
        """(time, id) of the newest list this process served in [since, until] showing the item
        and not written yet (an answer within ``flush_interval_ms``); (-inf, "") when none."""
        # the buffer's snapshot first, then the batches being written (older records): a record
        # the writer moves in between is found in its batch
        buffered = list(self._buffer)
        in_flight = list(self._in_flight)
        newest_first = chain(reversed(buffered), *(reversed(batch) for batch in reversed(in_flight)))
        for kind, member, record in newest_first:
            if (
                kind == "impression"
                and member == member_id
                and since <= record["ts"] <= until
                and item_id in record["items"]
            ):
                return float(record["ts"]), str(record["id"])
        return float("-inf"), ""

    @property
    def window_s(self) -> int:
        return self._window

    def forget(self, member_id: str) -> None:
        """Delete a member's recent-impressions record (erasure)."""
        self._client.delete(member_key(self._prefix, member_id, IMPRESSIONS_SUFFIX))
