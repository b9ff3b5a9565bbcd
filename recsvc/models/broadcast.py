"""A ``ReloadModel`` call fanned out to every server process and replica through Redis pub/sub."""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import uuid
from typing import Any

from recsvc.errors import RecsvcError
from recsvc.models.served import ServedModels
from recsvc.redis_client import STORE_ERRORS

log = logging.getLogger(__name__)

RELOAD_CHANNEL_SUFFIX = "model-reload"


class ReloadBroadcast:
    """Fans a ``ReloadModel`` call out to every server process and replica through Redis pub/sub.

    Publishes ``{"origin": <process token>, "uri": <uri or "">}`` on
    ``<prefix>:global:model-reload``; a listener thread in each process reloads on every notice
    from another process. Without Redis the call still reloads the process that got it, and the
    poller brings the others along.
    """

    def __init__(self, client: Any, prefix: str, registry: ServedModels) -> None:
        from recsvc.redis_keys import global_key

        self._client = client
        self._channel = global_key(prefix, RELOAD_CHANNEL_SUFFIX)
        self._registry = registry
        self._origin = uuid.uuid4().hex
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def publish(self, uri: str | None) -> bool:
        try:
            self._client.publish(self._channel, json.dumps({"origin": self._origin, "uri": uri or ""}))
        except STORE_ERRORS as exc:
            log.warning("event=reload_broadcast_failed error=%s", type(exc).__name__)
            return False
        return True

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._listen, name="recsvc-reload-listener", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

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
