"""Which members have real-time state in Redis, known in each process without asking Redis.

Most recommendations are for members with no recent events, and reading their (absent) state
costs a Redis round trip and CPU on both sides of it. ``RealtimeStore.record`` publishes the
member id on ``<prefix>:global:rt-active`` in the same transaction that writes the event, and
every server process keeps the ids it hears, each until the state's TTL would have run out. A
member the directory does not list has no state to read.

The directory only says "no" when it is sure. Until its listener has subscribed *and then*
scanned Redis for the state that already exists (so no event can fall between the two), and
again from any pub/sub failure until it has re-subscribed and re-scanned, ``may_have`` answers
True for every member, and every read goes to Redis as it would without the directory. A notice
takes about a millisecond to arrive; the service promises an event shows within a second.

Outages: a failed subscription is retried every ``retry_s`` (``redis.reconnect_interval_ms``,
250 ms), not after a growing back-off, so the directory is synced again within about that long of
Redis coming back. Any Redis failure the real-time store sees also calls ``invalidate``: the
directory stops saying "no" at once and subscribes and scans again, even when its own
subscription seemed fine (a stall, or a connection that died without an error). So a member who
got events during or around an outage, through this process or another, is always read: until the
re-scan has seen their state, every member is.

Keys carry the member's hash tag (``recsvc.redis_keys``). On Redis Cluster (``recsvc.redis_client``)
the same code works: classic ``PUBLISH`` (from the record script, on whichever primary owns the
member's slot) reaches subscribers on every node, and the cluster client's ``scan_iter`` visits
every primary.
"""

from __future__ import annotations

import contextlib
import logging
import re
import threading
import time
from collections.abc import Callable
from typing import Any

from recsvc.redis_client import STORE_ERRORS
from recsvc.redis_keys import global_key

log = logging.getLogger(__name__)

CHANNEL_SUFFIX = "rt-active"
_SWEEP_EVERY_S = 60.0
_PING_EVERY_S = 5.0


def active_channel(prefix: str) -> str:
    return global_key(prefix, CHANNEL_SUFFIX)


class ActiveMembers:
    """Member ids with real-time state, fed by a listener thread (``start``/``stop``)."""

    def __init__(
        self,
        client: Any,
        prefix: str,
        ttl_s: float,
        state_suffixes: tuple[str, ...],
        on_sync_change: Callable[[bool], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        retry_s: float = 0.25,
    ) -> None:
        self._client = client
        self._channel = active_channel(prefix)
        self._ttl = float(ttl_s)
        self._clock = clock
        self._on_sync_change = on_sync_change
        # e.g. recsvc:{m:M001}:rt:events -> M001, for the state keys of this store only
        alternatives = "|".join(re.escape(s) for s in state_suffixes)
        self._key_re = re.compile(rf"^{re.escape(prefix)}:\{{m:(?P<member>[^}}]+)\}}:(?:{alternatives})$")
        self._patterns = [f"{prefix}:{{m:*}}:{s}" for s in state_suffixes]
        self._until: dict[str, float] = {}
        self._synced = False
        self._pong = 0.0
        self._retry_s = retry_s
        self._resync = threading.Event()  # set by invalidate: start over (subscribe, scan)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def synced(self) -> bool:
        return self._synced

    def may_have(self, member_id: str) -> bool:
        """False only when the member surely has no real-time state in Redis."""
        if not self._synced:
            return True
        until = self._until.get(member_id)
        return until is not None and until > self._clock()

    def invalidate(self) -> None:
        """Redis failed somewhere: answer "maybe" for everyone until subscribed and scanned again."""
        self._resync.set()
        self._set_synced(False)

    def heard(self, member_id: str) -> None:
        """The member has (new) state: remember it until its TTL would end."""
        self._until[member_id] = self._clock() + self._ttl

    def start(self) -> ActiveMembers:
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="recsvc-active-members", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        self._set_synced(False)

    # ---- listener -------------------------------------------------------------------------
    def _set_synced(self, synced: bool) -> None:
        if synced == self._synced:
            return
        self._synced = synced
        log.info("event=active_members_%s members=%d", "synced" if synced else "unsynced", len(self._until))
        if self._on_sync_change is not None:
            self._on_sync_change(synced)

    def _run(self) -> None:
        failures = 0
        try:
            while not self._stop.is_set():
                pubsub = self._client.pubsub(ignore_subscribe_messages=False)
                try:
                    self._resync.clear()  # an invalidate from here on is seen by _listen
                    self._subscribe(pubsub)
                    self._scan()
                    if not self._resync.is_set():
                        self._set_synced(True)
                    failures = 0
                    self._listen(pubsub)
                except Exception as exc:  # any failure: never stay "synced" while deaf
                    self._set_synced(False)
                    failures += 1
                    if not isinstance(exc, STORE_ERRORS):
                        log.exception("event=active_members_error retry_s=%s", self._retry_s)
                    elif failures == 1:  # once per outage, not every retry_s
                        log.warning(
                            "event=active_members_error error=%s retry_s=%s",
                            type(exc).__name__,
                            self._retry_s,
                        )
                    # A fixed, short wait: a refused connect costs nothing, and the directory
                    # must be back within about a second of Redis.
                    self._stop.wait(self._retry_s)
                finally:
                    with contextlib.suppress(Exception):
                        pubsub.close()
        finally:
            self._set_synced(False)  # the thread is ending: every member is read again

    def _subscribe(self, pubsub: Any) -> None:
        """Subscribe and wait for Redis to confirm it: from then on no notice is missed."""
        import redis

        pubsub.subscribe(self._channel)
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline and not self._stop.is_set():
            message = pubsub.get_message(timeout=0.5)
            if message is None:
                continue
            if message.get("type") == "subscribe":
                return
            self._on_message(message)
        raise redis.TimeoutError("no confirmation of the subscription")

    def _scan(self) -> None:
        """Every member with state in Redis now (after subscribing: later ones are notices)."""
        until = self._clock() + self._ttl
        for pattern in self._patterns:
            for key in self._client.scan_iter(match=pattern, count=1000):
                found = self._key_re.match(key.decode() if isinstance(key, bytes) else str(key))
                if found is not None:
                    self._until[found["member"]] = until

    def _listen(self, pubsub: Any) -> None:
        """Notices until stopped. A ping every few seconds proves the subscription alive: a
        connection that died without an error would otherwise leave the directory "synced" and
        deaf, so a missing answer counts as a failure (unsynced, then subscribe and scan again)."""
        import redis

        swept = pinged = self._pong = time.monotonic()
        while not self._stop.is_set():
            if self._resync.is_set():
                raise redis.ConnectionError("invalidated after a Redis failure; subscribing again")
            message = pubsub.get_message(timeout=0.5)
            if message is not None:
                self._on_message(message)
            now = time.monotonic()
            if now - pinged >= _PING_EVERY_S:
                if pinged - self._pong > _PING_EVERY_S:  # the previous ping was never answered
                    raise redis.ConnectionError("the subscription stopped answering pings")
                pubsub.ping()
                pinged = now
            if now - swept >= _SWEEP_EVERY_S:
                self._sweep()
                swept = now

    def _on_message(self, message: dict[str, Any]) -> None:
        if message.get("type") == "pong":
            self._pong = time.monotonic()
            return
        if message.get("type") != "message":
            return
        data = message.get("data")
        member_id = data.decode() if isinstance(data, bytes) else str(data)
        if member_id:
            self.heard(member_id)

    def _sweep(self) -> None:
        """Forget members whose state has expired, so the directory stays the size of the state."""
        now = self._clock()
        for member_id in [m for m, until in list(self._until.items()) if until <= now]:
            # Checked again: the serving thread may have heard this member since the list was made.
            with contextlib.suppress(KeyError):
                if self._until[member_id] <= now:
                    del self._until[member_id]
