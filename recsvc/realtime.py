"""Real-time member state: recent events in Redis and member vectors recomputed from them.

Long on purpose: RealtimeStore is one class over one Redis key layout (write, read, recompute);
the connection helpers beside it serve only it.

Writes, per member (keys from ``recsvc.redis_keys.member_key``, so one member's keys share a cluster
slot): ``<prefix>:{m:<id>}:rt:events`` a capped list of recent events (JSON, newest first) and
``<prefix>:{m:<id>}:rt:purchased`` the set of items bought recently; both expire after
``recent_events_ttl_s``. Every server process and replica reads the same keys, so an event
recorded through any of them shows in the next recommendation from all of them. Nothing is
written for an erased member: the write script checks their suppression record
(``<prefix>:{m:<id>}:suppressed``, recsvc.security.erasure) in the same atomic step.

Redis being down never fails a recommendation: after a failed call the store is "degraded" (its
circuit breaker, ``recsvc.breaker``, is open) and answers at once with "no real-time data"
(``RecordEvent``: not stored), instead of waiting on a dead Redis for every call. A background
probe pings Redis every ``redis.reconnect_interval_ms`` (250 ms) and the first answer ends the
outage, so the store recovers within about that long of Redis coming back. (It used to wait a
back-off of 1 s doubling to 30 s, and only a request could end it: 10 s and more after a restart
or a stall.) Recommendation reads on the event loop never probe; ``RecordEvent`` (thread pool)
may. Every failure also tells the active-members directory to re-subscribe and re-scan
(``ActiveMembers.invalidate``), so it never skips the read of a member whose notice was lost. The
state is reported to metrics and logged on each transition.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import redis

from recsvc.active_members import ActiveMembers, active_channel
from recsvc.breaker import BreakerWatch, CircuitBreaker
from recsvc.bundle_manifest import FoldInSpec
from recsvc.errors import MemberErased
from recsvc.redis_client import REDIRECTED, UNAVAILABLE, RedisClient, connect, node_pool, refresh_topology
from recsvc.redis_keys import member_key
from recsvc.security.erasure import suppression_key
from recsvc.settings import RedisSettings

log = logging.getLogger(__name__)

EVENTS_SUFFIX = "rt:events"
PURCHASED_SUFFIX = "rt:purchased"
REALTIME_SUFFIXES = (EVENTS_SUFFIX, PURCHASED_SUFFIX)
# Both reads in one command (one round trip, no pipeline bookkeeping on the hot path); the two keys
# share the member's hash tag, so this runs unchanged on Redis Cluster.
_READ_SCRIPT = """
return {redis.call('LRANGE', KEYS[1], 0, tonumber(ARGV[1]) - 1), redis.call('SMEMBERS', KEYS[2])}
"""
# One event, written unless the member is erased (their suppression record exists): checked in the
# same atomic step as the write, so an erasure running at the same time never leaves a new event
# behind. KEYS: 1 events, 2 purchased, 3 suppression record. ARGV: 1 event JSON, 2 max events,
# 3 ttl s, 4 item bought ('' when not a purchase), 5 active-members channel, 6 member id.
# Returns 1 when stored, -1 when the member is erased (nothing written).
_RECORD_SCRIPT = """
if redis.call('EXISTS', KEYS[3]) == 1 then return -1 end
redis.call('LPUSH', KEYS[1], ARGV[1])
redis.call('LTRIM', KEYS[1], 0, tonumber(ARGV[2]) - 1)
redis.call('EXPIRE', KEYS[1], ARGV[3])
if ARGV[4] ~= '' then
  redis.call('SADD', KEYS[2], ARGV[4])
  redis.call('EXPIRE', KEYS[2], ARGV[3])
end
redis.call('PUBLISH', ARGV[5], ARGV[6])
return 1
"""
_REDIS_DOWN = UNAVAILABLE


class ThreadConnections:
    """One Redis connection per thread (and per cluster node) for the read every recommendation
    makes.

    The aio server runs every recommendation on its event-loop thread, so a connection owned by
    that thread needs none of the pool's locking and bookkeeping (about a third of redis-py's
    per-call cost here). Threads of the synchronous handlers get their own. Connections take the
    client's settings (address, timeouts, TLS); a failed one is dropped and made again next call.
    On Redis Cluster a command goes to the primary that owns ``key``'s slot in the client's slot
    map (``recsvc.redis_client.node_pool``), so a thread holds one connection per primary.

    A command can be sent and its reply read later (``send`` then ``read``), so the caller can
    work while Redis answers. A reply left unread (the caller failed in between) is never taken
    for the next command's: the connection is dropped and made again.

    Only reads go through here, so a command that fails on a connection made before (one a Redis
    restart or failover closed while it sat idle) is sent once more on a new one: without it,
    every thread's idle connection failed once after a restart, each failure opening the store's
    breaker again for a cool-down, for minutes on threads that serve rarely.
    """

    def __init__(self, client: RedisClient) -> None:
        self._client = client
        self._local = threading.local()
        self._all: list[redis.connection.AbstractConnection] = []
        self._lock = threading.Lock()

    def send(self, key: str, *args: str | int) -> redis.connection.AbstractConnection:
        """Send one command about ``key`` on this thread's connection; ``read`` its reply next."""
        local = self._local
        conns: dict[str, redis.connection.AbstractConnection] | None = getattr(local, "conns", None)
        if conns is None:
            conns = local.conns = {}
            local.unread = None
        if local.unread is not None:
            local.unread.disconnect()  # a reply nobody read: start clean rather than read it by mistake
            local.unread = None
        name, pool = node_pool(self._client, key)
        conn = conns.get(name)
        reused = conn is not None and conn._sock is not None
        if conn is None:
            conn = conns[name] = pool.connection_class(**pool.connection_kwargs)
            with self._lock:
                self._all.append(conn)
        local.unread = conn
        # what to send again if the reply shows the connection was dead (``read``)
        local.last = (args, reused)
        try:
            conn.send_command(*args)
        except _REDIS_DOWN as exc:
            conn.disconnect()
            if not reused or not _dead(exc):
                local.unread = None
                raise
            conn.send_command(*args)  # connects afresh; a second failure is Redis's
            local.last = (args, False)
        return conn

    def read(self, conn: redis.connection.AbstractConnection) -> object:
        """The reply to the command ``send`` just sent on ``conn`` (this thread's)."""
        local = self._local
        local.unread = None
        args, reused = getattr(local, "last", ((), False))
        local.last = ((), False)
        try:
            return conn.read_response()
        except _REDIS_DOWN as exc:
            conn.disconnect()
            if not reused or not args or not _dead(exc):
                raise
        conn.send_command(*args)  # the idle connection had died: once more on a new one
        try:
            return conn.read_response()
        except _REDIS_DOWN:
            conn.disconnect()
            raise

    def call(self, key: str, *args: str | int) -> object:
        return self.read(self.send(key, *args))

    def close(self) -> None:
        with self._lock:
            for conn in self._all:
                conn.disconnect()
            self._all.clear()


def _dead(exc: BaseException) -> bool:
    """A connection the server closed (not a slow answer: waiting again would double a stall)."""
    return isinstance(exc, redis.ConnectionError) and not isinstance(exc, redis.TimeoutError)


@dataclass(frozen=True)
class RecentEvent:
    item_id: str
    event_type: str
    ts: float  # epoch seconds
    channel: str


@dataclass(frozen=True)
class RecentActivity:
    events: list[RecentEvent]
    purchased: frozenset[str]

    @property
    def empty(self) -> bool:
        return not self.events and not self.purchased


class PendingRecent:
    """A recent-events read in flight (``RealtimeStore.start_recent``); ``result()`` once."""

    __slots__ = ("_conn", "_keys", "_known", "_store")

    def __init__(
        self,
        store: RealtimeStore,
        conn: redis.connection.AbstractConnection | None,
        keys: tuple[str, str] | None,
        known: RecentActivity | None = None,
    ) -> None:
        self._store = store
        self._conn = conn
        self._keys = keys
        self._known = known  # the answer without a read (no read in flight)

    def result(self) -> RecentActivity | None:
        """The member's recent activity; None when Redis is unavailable (degraded)."""
        conn, keys = self._conn, self._keys
        if conn is None or keys is None:
            return self._known
        self._conn = None
        return self._store._finish_read(conn, keys)


_NO_ACTIVITY = RecentActivity(events=[], purchased=frozenset())
_MAX_TS = 253402300799.0  # 9999-12-31T23:59:59Z, the last second a protobuf Timestamp holds


def make_redis_client(settings: RedisSettings) -> RedisClient:
    """The one Redis client of a server process (created at the composition root): a single
    server or a Redis Cluster, by ``redis.url`` (recsvc.redis_client). Calls fail within one
    socket timeout and the callers' breakers decide what next."""
    return connect(settings.url, timeout_s=settings.socket_timeout_ms / 1000.0)


class RealtimeStore:
    """Recent events per member in Redis, with a circuit breaker for when Redis is down."""

    def __init__(
        self,
        client: RedisClient,
        settings: RedisSettings,
        on_state_change: Callable[[bool], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        active: ActiveMembers | None = None,
        on_error: Callable[[str], None] | None = None,
    ) -> None:
        self._client = client
        # Told "read" or "write" for every failed Redis call (metrics count them).
        self._on_error = on_error or (lambda _operation: None)
        # Members known to have no state are not read (recsvc.active_members); None: read all.
        self._active = active
        self._channel = active_channel(settings.key_prefix)
        self._prefix = settings.key_prefix
        self._max = settings.recent_events_max
        self._ttl = settings.recent_events_ttl_s
        self._on_state_change = on_state_change
        # Opens at the first failure: a recommendation must never wait on Redis twice.
        self._breaker = CircuitBreaker("realtime", 1, settings.reconnect_interval_ms / 1000, clock)
        self._breaker.add_listener(self._state_changed)
        self._watch = BreakerWatch(self._breaker, self._probe, _REDIS_DOWN)
        self._last_error = ""
        self._read_sha = hashlib.sha1(_READ_SCRIPT.encode()).hexdigest()
        self._record = client.register_script(_RECORD_SCRIPT)
        self._conns = ThreadConnections(client)

    @property
    def degraded(self) -> bool:
        return self._breaker.is_open

    def _state_changed(self, degraded: bool) -> None:
        if degraded:
            log.warning("event=realtime_degraded error=%s serving from the bundle only", self._last_error)
            self._watch.start()  # the probe that ends the outage (started at the first one)
        else:
            log.info("event=realtime_recovered")
        if self._on_state_change:
            self._on_state_change(degraded)

    def _probe(self) -> None:
        # In the background watch, never on the event loop: on a cluster, first re-read the slot
        # map (a replica may own the failed primary's slots now; the reads follow it).
        refresh_topology(self._client)
        self._client.ping()

    def _failed(self, exc: Exception) -> None:
        self._last_error = type(exc).__name__
        if self._active is not None:
            # A notice may have been lost with the connection: read everyone until resynced.
            self._active.invalidate()
        self._breaker.failure()

    def _succeeded(self) -> None:
        self._breaker.success()

    def record(self, member_id: str, item_id: str, event_type: str, ts: float, channel: str) -> bool:
        """Store one event; False when Redis is unavailable (the event is not kept). False means
        "not confirmed": a write that timed out against a stalled Redis may still be applied when
        Redis resumes. ``MemberErased`` when the member was erased (nothing is stored about them)."""
        if not self._breaker.allow():
            return False
        ev_key = member_key(self._prefix, member_id, EVENTS_SUFFIX)
        pu_key = member_key(self._prefix, member_id, PURCHASED_SUFFIX)
        payload = json.dumps({"i": item_id, "t": event_type, "ts": ts, "c": channel}, separators=(",", ":"))
        bought = item_id if event_type == "purchase" else ""
        try:
            # the script publishes on the channel every process's ActiveMembers hears
            done = self._record(
                keys=[ev_key, pu_key, suppression_key(self._prefix, member_id)],
                args=[payload, self._max, self._ttl, bought, self._channel, member_id],
            )
        except _REDIS_DOWN as exc:
            self._on_error("write")
            self._failed(exc)
            return False
        except redis.ResponseError as exc:
            # a key of another type (WRONGTYPE: written by something else under our prefix): this
            # member's event is not kept, Redis itself is fine, so the breaker is not told
            self._on_error("write")
            log.error("event=realtime_write_refused member_key=%s error=%s", ev_key, exc)
            return False
        self._succeeded()
        if int(done) == -1:  # type: ignore[arg-type]
            raise MemberErased("the member was erased; their events are not stored until re-registration")
        if self._active is not None:
            self._active.heard(member_id)  # this process knows at once, before the notice
        return True

    def recent(self, member_id: str) -> RecentActivity | None:
        """The member's recent events; None when Redis is unavailable (degraded)."""
        return self.start_recent(member_id).result()

    def start_recent(self, member_id: str) -> PendingRecent:
        """Ask Redis for the member's recent events and return at once: ``result()`` on the
        returned handle reads the answer (None when Redis is unavailable). The caller can do
        work in between that does not depend on it (the engine searches with the trained
        vector), so the round trip costs no waiting. Call ``result()`` on the same thread,
        before this thread's next read."""
        if self._breaker.is_open:  # the event loop never probes: the background watch does
            return PendingRecent(self, None, None)
        if self._active is not None and not self._active.may_have(member_id):
            return PendingRecent(self, None, None, known=_NO_ACTIVITY)
        keys = (
            member_key(self._prefix, member_id, EVENTS_SUFFIX),
            member_key(self._prefix, member_id, PURCHASED_SUFFIX),
        )
        try:
            conn = self._conns.send(keys[0], "EVALSHA", self._read_sha, 2, *keys, self._max)
        except _REDIS_DOWN as exc:
            self._on_error("read")
            self._failed(exc)
            return PendingRecent(self, None, None)
        return PendingRecent(self, conn, keys)

    def _finish_read(
        self, conn: redis.connection.AbstractConnection, keys: tuple[str, str]
    ) -> RecentActivity | None:
        try:
            raw_events, raw_purchased = self._read_reply(conn, keys)
        except _REDIS_DOWN as exc:
            self._on_error("read")
            self._failed(exc)
            return None
        self._succeeded()
        events = []
        for raw in raw_events:
            try:
                d = json.loads(raw)
                ts = float(d["ts"])
                # RecordEvent stores only times it checked; anything else was written by hand
                if not 0 <= ts <= _MAX_TS:
                    raise ValueError(f"time stamp {ts} out of range")
                events.append(RecentEvent(str(d["i"]), str(d["t"]), ts, str(d.get("c", ""))))
            except (ValueError, KeyError, TypeError):
                log.warning(
                    "event=bad_realtime_entry member_key=%s", member_key(self._prefix, "?", EVENTS_SUFFIX)
                )
        purchased = frozenset(p.decode() if isinstance(p, bytes) else str(p) for p in raw_purchased)
        return RecentActivity(events=events, purchased=purchased)

    def _read_reply(
        self, conn: redis.connection.AbstractConnection, keys: tuple[str, str]
    ) -> tuple[list[bytes], list[bytes]]:
        try:
            reply = self._conns.read(conn)
        except redis.exceptions.NoScriptError:
            # First call on this Redis (or after its restart / SCRIPT FLUSH): load, then ask again.
            self._conns.call(keys[0], "SCRIPT", "LOAD", _READ_SCRIPT)
            reply = self._conns.call(keys[0], "EVALSHA", self._read_sha, 2, *keys, self._max)
        except REDIRECTED:
            # Redis Cluster: the slot moved (a failover, a resharding); nothing ran. The cluster
            # client follows the redirect and updates its slot map for the next reads.
            try:
                reply = self._client.evalsha(self._read_sha, 2, *keys, self._max)
            except redis.exceptions.NoScriptError:
                self._client.script_load(_READ_SCRIPT)
                reply = self._client.evalsha(self._read_sha, 2, *keys, self._max)
        if not isinstance(reply, list) or len(reply) != 2:
            raise redis.ResponseError(f"unexpected reply to the recent-events script: {type(reply).__name__}")
        return list(reply[0]), list(reply[1])

    def close(self) -> None:
        self._watch.stop()
        self._conns.close()

    def forget(self, member_id: str) -> None:
        """Delete a member's real-time state (erasure)."""
        self._client.delete(
            member_key(self._prefix, member_id, EVENTS_SUFFIX),
            member_key(self._prefix, member_id, PURCHASED_SUFFIX),
        )


def event_weights_by_item(
    events: Sequence[RecentEvent],
    item_rows: Callable[[list[str]], np.ndarray],
    event_weights: dict[str, float],
    half_life_days: float,
    now: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Confidence weights of recent events per item row (time-decayed like training does)."""
    if not events:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
    rows = item_rows([e.item_id for e in events])
    age_days = np.array([max(0.0, now - e.ts) / 86400.0 for e in events])
    w = np.array([event_weights.get(e.event_type, 0.0) for e in events]) * np.power(
        0.5, age_days / half_life_days
    )
    keep = (rows >= 0) & (w > 0)
    if not keep.any():
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
    uniq, inv = np.unique(rows[keep], return_inverse=True)
    summed = np.bincount(inv, weights=w[keep]).astype(np.float32)
    return uniq.astype(np.int64), summed


# implicit's member solve: what bundles without a recorded one were fitted with
IMPLICIT_FOLD_IN = FoldInSpec()


def recalculate_member(
    item_factors: np.ndarray,
    yty: np.ndarray,
    rows: np.ndarray,
    weights: np.ndarray,
    alpha: float,
    regularization: float,
    fold_in: FoldInSpec = IMPLICIT_FOLD_IN,
) -> np.ndarray:
    """A member vector from their item weights, solved as the engine that fitted the factors
    solves it (:class:`recsvc.bundle_manifest.FoldInSpec`).

    implicit (the default) solves ``(YtY + reg*I + Yt(Cu - I)Y) x = Yt Cu p`` with ``Cu = alpha *
    weights`` (its CPU ALS scales ``user_items`` by alpha), exactly as its ``recalculate_user``;
    Spark's ALS adds 1 to the confidence of the member's items and scales the regularization by
    their number. Written with numpy because implicit's Cython solver needs writable factors,
    and ours are read-only memory maps shared between processes.
    """
    f = yty.shape[0]
    if rows.shape[0] == 0:
        return np.zeros(f, dtype=np.float32)
    w = np.asarray(weights, dtype=np.float64)
    if fold_in.reg_per_item > 0:
        reg = fold_in.reg_per_item * float(np.count_nonzero(w > 0))
    else:
        reg = regularization
    a = yty.astype(np.float64) + reg * np.eye(f)
    y = np.asarray(item_factors[rows], dtype=np.float64)
    conf = alpha * w
    # the preference is 1 on positive weights (0 elsewhere); a negative weight is a confident 0
    b = y.T @ np.where(conf > 0, conf + fold_in.confidence_offset, 0.0)
    a += (y * (np.abs(conf) + fold_in.confidence_offset - 1.0)[:, None]).T @ y
    return np.linalg.solve(a, b).astype(np.float32)
