"""What the composition root (``recsvc.server.app.build_deps``) calls: one line,

    add_live_catalog(settings, deps)

which builds the catalog's Redis clients (synchronous ones from the same factory as every other,
and an asyncio one for the change calls on the serving loop; the keys' one hash tag keeps them
cluster-ready), starts following the change feed (waiting up to ``catalog.sync_wait_s`` for the
current catalog before the process serves), points the engine at the live catalog and gives the
server ``recsvc.v1.Catalog`` (``deps.catalog_service``).
"""

from __future__ import annotations

import logging
import time
from typing import Any

from recsvc.catalog.live import LiveCatalog
from recsvc.catalog.service import add_catalog_service
from recsvc.catalog.store import CatalogFollower, CatalogStore
from recsvc.realtime import make_redis_client
from recsvc.redis_client import connect_async
from recsvc.settings import Settings

log = logging.getLogger(__name__)

_BLOCK_MS = 500  # XREAD BLOCK: a change arrives at once; this only bounds a stop's wait


def add_live_catalog(settings: Settings, deps: Any) -> LiveCatalog | None:
    if not settings.catalog.enabled or deps.redis_client is None:
        log.info("event=live_catalog_disabled the bundle's catalog is served as trained")
        return None
    cat = settings.catalog
    # Own clients: a change script over 1,000 items or a full read can outlast the hot path's
    # 50 ms socket timeout (a timed-out script would still run: the caller would be told
    # "unavailable" about a change that happened), and XREAD BLOCK needs a timeout above its block.
    writes = make_redis_client(settings.redis.model_copy(update={"socket_timeout_ms": cat.write_timeout_ms}))
    reads = make_redis_client(settings.redis.model_copy(update={"socket_timeout_ms": _BLOCK_MS + 2_000}))
    # The Catalog service's small calls await their script on the serving event loop (service.py).
    awrites = connect_async(settings.redis.url, timeout_s=cat.write_timeout_ms / 1000)
    store = CatalogStore(writes, settings.redis.key_prefix, cat.feed_maxlen, aclient=awrites)
    live = LiveCatalog(deps.models)

    def on_state(connected: bool) -> None:
        live.connected = connected
        deps.metrics.set_catalog_connected(connected)

    follower = CatalogFollower(
        store,
        reads,
        on_change=lambda records: live.update(records, follower.seq),
        on_state=on_state,
        retry_s=settings.redis.reconnect_interval_ms / 1000,
        block_ms=_BLOCK_MS,
        settle_s=cat.settle_ms / 1000,
        on_batch=lambda records, changed: live.update(records, follower.seq, changed),
    )

    def wake(publish_at: float | None) -> None:
        follower.wake_at = (
            None if publish_at is None else time.monotonic() + max(0.0, publish_at - time.time())
        )

    live.on_next_publish = wake
    follower.start(cat.sync_wait_s)
    deps.engine.catalog = live
    # A bundle loaded later gets its view before it is swapped in, not on its first call.
    deps.models.set_prepare(live.prepare)
    deps.catalog_service = lambda server: add_catalog_service(server, settings, deps.models, live, store)
    deps.on_close.extend([follower.stop, writes.close, reads.close])
    return live
