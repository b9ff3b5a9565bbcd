"""A ``ReloadModel`` call fanned out to every server process and replica through Redis pub/sub."""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
import uuid
from typing import Any

from recsvc.errors import RecsvcError, StoreUnavailable
from recsvc.models.served import ServedModels
from recsvc.redis_client import STORE_ERRORS, with_timeout

log = logging.getLogger(__name__)

RELOAD_CHANNEL_SUFFIX = "model-reload"

# The notice is published on a client of its own with this socket timeout, not the hot path's
# (redis.socket_timeout_ms, 50 ms): a Redis busy for a moment must not leave the other workers on
# their old model while the caller is told the reload happened. Tried this many times, with a
# short pause between tries; a ReloadModel call waits at most about 3 * 2 s + 0.3 s for it.
PUBLISH_TIMEOUT_S = 1.0
PUBLISH_TRIES = 3
PUBLISH_PAUSE_S = 0.1


class ReloadNotBroadcast(StoreUnavailable):
    """``ReloadModel`` reloaded the process that answered, but its notice to the other server
    processes and replicas could not be published: they keep their previous model (the poller
    does not bring them to a pin). UNAVAILABLE: calling again is safe and tells them."""

    reason = "RELOAD_NOT_BROADCAST"


class ReloadBroadcast:
    """Fans a ``ReloadModel`` call out to every server process and replica through Redis pub/sub.

    Publishes ``{"origin": <process token>, "uri": <uri or "">}`` on
    ``<prefix>:global:model-reload``; a listener thread in each process reloads on every notice
    from another process. Without Redis the call still reloads the process that got it, but the
    caller is told the others were not (``ReloadNotBroadcast``): the poller brings them along to a
    moved alias, never to a pin.
    """

    def __init__(self, client: Any, prefix: str, registry: ServedModels) -> None:
        from recsvc.redis_keys import global_key

        self._client = client
        self._channel = global_key(prefix, RELOAD_CHANNEL_SUFFIX)
        self._registry = registry
        self._origin = uuid.uuid4().hex
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._publisher: Any = None  # made on first use (with_timeout): most processes never publish
        self._publisher_lock = threading.Lock()

    def publish(self, uri: str | None) -> int:
        """Publish the notice; returns how many processes subscribed to it received it.

        Tried ``PUBLISH_TRIES`` times on a client with a ``PUBLISH_TIMEOUT_S`` socket timeout;
        raises ``ReloadNotBroadcast`` when every try failed."""
        notice = json.dumps({"origin": self._origin, "uri": uri or ""})
        error = "?"
        for attempt in range(1, PUBLISH_TRIES + 1):
            try:
                return int(self._publishing_client().publish(self._channel, notice))
            except STORE_ERRORS as exc:
                error = type(exc).__name__
                log.warning(
                    "event=reload_broadcast_failed attempt=%d of=%d error=%s", attempt, PUBLISH_TRIES, error
                )
            if attempt < PUBLISH_TRIES:
                time.sleep(PUBLISH_PAUSE_S * attempt)
        raise ReloadNotBroadcast(
            f"this process reloaded, but the notice to the other server processes and replicas "
            f"could not be published on Redis ({error}, {PUBLISH_TRIES} tries): they still serve "
            "their previous model; call ReloadModel again once Redis answers"
        )

    def _publishing_client(self) -> Any:
        with self._publisher_lock:
            if self._publisher is None:
                self._publisher = with_timeout(self._client, PUBLISH_TIMEOUT_S)
            return self._publisher

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._listen, name="recsvc-reload-listener", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        with self._publisher_lock:
            if self._publisher is not None and self._publisher is not self._client:
                with contextlib.suppress(*STORE_ERRORS):
                    self._publisher.close()
            self._publisher = None

    def _listen(self) -> None:
        import redis

        backoff = 1.0
        while not self._stop.is_set():
            pubsub = self._client.pubsub(ignore_subscribe_messages=True)
            try:
                pubsub.subscribe(self._channel)
                backoff = 1.0
                while not self._stop.is_set():
                    try:
                        message = pubsub.get_message(timeout=0.5)
                    except redis.TimeoutError:
                        continue
                    if message is not None:
                        self._handle(message.get("data"))
            except STORE_ERRORS as exc:
                log.warning("event=reload_listener_error error=%s retry_s=%s", type(exc).__name__, backoff)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 30.0)
            finally:
                with contextlib.suppress(redis.RedisError):
                    pubsub.close()

    def _handle(self, data: Any) -> None:
        try:
            notice = json.loads(data)
            origin, uri = str(notice["origin"]), str(notice.get("uri", ""))
        except (TypeError, ValueError, KeyError):
            log.warning("event=bad_reload_notice")
            return
        if origin == self._origin:
            return
        try:
            self._registry.reload(uri or None)
        except RecsvcError as exc:
            log.warning("event=broadcast_reload_failed uri=%s error=%s", uri or "(configured)", exc)
