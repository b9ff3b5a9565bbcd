"""The one way recsvc makes a Redis client: a single server or a Redis Cluster, chosen by the URL.

``redis.url`` takes redis-py's single-server URLs (``redis://``, ``rediss://``, ``unix://``) or
``redis+cluster://[user:password@]host:port[,host:port...]`` (``rediss+cluster://`` with TLS):
one or more seed nodes of a cluster, from which redis-py's ``RedisCluster`` learns the rest. The
code above this module is the same for both: every key of a member carries the member's hash tag
(``recsvc.redis_keys``), so each script touches one slot; ``scan_iter`` of the cluster client visits
every primary; classic ``PUBLISH`` reaches subscribers on every node of a cluster.

What differs, and is handled here, is where a command goes when recsvc bypasses redis-py's command
layer for speed (``recsvc.realtime.ThreadConnections``, ``recsvc.script_runner.ScriptRunner``):
``node_pool(client, key)`` is the connection pool of the primary that owns ``key``'s slot, and
``refresh_topology`` re-reads the slot map after a failover moved it.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any
from urllib.parse import unquote, urlsplit

import redis
import redis.asyncio
import redis.asyncio.cluster
from redis.cluster import ClusterNode, RedisCluster

from recsvc.settings import REDIS_CLUSTER_SCHEMES as CLUSTER_SCHEMES

log = logging.getLogger(__name__)

RedisClient = redis.Redis | RedisCluster
AsyncRedisClient = redis.asyncio.Redis | redis.asyncio.cluster.RedisCluster


def is_cluster_url(url: str) -> bool:
    return url.split("://", 1)[0].lower() in CLUSTER_SCHEMES


def is_cluster(client: Any) -> bool:
    return isinstance(client, RedisCluster)


def cluster_seeds(url: str) -> list[tuple[str, int]]:
    """The ``host:port`` seed nodes of a ``redis+cluster://`` URL (ValueError when malformed)."""
    netloc = urlsplit(url).netloc.rpartition("@")[2]
    seeds = []
    for part in netloc.split(","):
        host, sep, port = part.strip().rpartition(":")
        if not sep or not host or not port.isdigit():
            raise ValueError(f"cluster node {part!r} is not host:port")
        seeds.append((host.strip("[]"), int(port)))
    return seeds


def connect(url: str, *, timeout_s: float | None = None, **kwargs: Any) -> RedisClient:
    """A client for ``url``. ``timeout_s`` sets the socket and connect timeouts and turns redis-py's
    own retries off, so a call fails within one timeout and the callers' breakers decide what next
    (redis-py 6+ retries 10 times with back-off by default)."""
    if timeout_s is not None:
        kwargs.update(
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            retry=None,
            retry_on_timeout=False,
            health_check_interval=0,
        )
    if not is_cluster_url(url):
        return redis.Redis.from_url(url, **kwargs)
    parts = urlsplit(url)
    if parts.username:
        kwargs.setdefault("username", unquote(parts.username))
    if parts.password:
        kwargs.setdefault("password", unquote(parts.password))
    if parts.scheme.lower().startswith("rediss"):
        kwargs.setdefault("ssl", True)
    if timeout_s is not None:
        kwargs.pop("retry", None)
        kwargs.pop("retry_on_timeout", None)
    # No retry inside a call: a write that timed out may have run (a stalled node answers late),
    # and redis-py would send it again, an event logged or counted twice. The failed call asks
    # for a refresh of the slot map, which the next call of any kind runs, so a failover costs
    # one failed call (the callers' breakers and retries decide what next).
    kwargs.setdefault("cluster_error_retry_attempts", 0)
    return RedisCluster(startup_nodes=[ClusterNode(h, p) for h, p in cluster_seeds(url)], **kwargs)


def connect_async(url: str, *, timeout_s: float) -> AsyncRedisClient:
    """``connect``'s asyncio twin (``redis.asyncio``) for code that runs on an event loop: the
    same URL forms, timeouts and retry policy. Its connections belong to the loop of their first
    call, so it is built once and used from that one loop."""
    kwargs: dict[str, Any] = {
        "socket_timeout": timeout_s,
        "socket_connect_timeout": timeout_s,
        "health_check_interval": 0,
    }
    if not is_cluster_url(url):
        return redis.asyncio.Redis.from_url(url, retry=None, **kwargs)
    parts = urlsplit(url)
    if parts.username:
        kwargs["username"] = unquote(parts.username)
    if parts.password:
        kwargs["password"] = unquote(parts.password)
    if parts.scheme.lower().startswith("rediss"):
        kwargs["ssl"] = True
    nodes = [redis.asyncio.cluster.ClusterNode(h, p) for h, p in cluster_seeds(url)]
    # No retry inside a call, as ``connect``'s cluster client: the next call refreshes the slot map.
    return redis.asyncio.cluster.RedisCluster(startup_nodes=nodes, cluster_error_retry_attempts=0, **kwargs)


def with_timeout(client: RedisClient, timeout_s: float) -> RedisClient:
    """A client for the same server(s) whose socket timeouts are ``timeout_s``, without retries
    (the throttle's: a slow Redis fails a decision closed within about ``timeout_s``)."""
    if isinstance(client, RedisCluster):
        seeds = [ClusterNode(n.host, n.port) for n in client.get_nodes()]
        kwargs = dict(client.get_default_node().redis_connection.connection_pool.connection_kwargs)
        options: dict[str, Any] = {k: kwargs[k] for k in ("username", "password") if kwargs.get(k)}
        if kwargs.get("connection_class") is redis.SSLConnection:
            options["ssl"] = True
        options.update(
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            cluster_error_retry_attempts=0,
            health_check_interval=0,
        )
        return RedisCluster(startup_nodes=seeds, **options)
    pool = client.connection_pool
    kwargs = dict(pool.connection_kwargs)
    kwargs.update(socket_timeout=timeout_s, socket_connect_timeout=timeout_s, retry=None)
    kwargs.pop("retry_on_error", None)
    try:
        new_pool = redis.ConnectionPool(connection_class=pool.connection_class, **kwargs)
    except TypeError:  # an unusual pool; keep the caller's client and its timeouts
        log.warning("outreach uses the shared Redis client's own timeouts")
        return client
    return redis.Redis(connection_pool=new_pool)


def node_pool(client: RedisClient, key: str) -> tuple[str, redis.ConnectionPool]:
    """(name, connection pool) of the server that holds ``key``: the single server, or the
    primary owning the key's slot in the client's current slot map."""
    if isinstance(client, RedisCluster):
        node = client.get_node_from_key(key)
        conn = node.redis_connection or client.get_redis_connection(node)
        return node.name, conn.connection_pool
    return "", client.connection_pool


_refresh_lock = threading.Lock()
_last_refresh: dict[int, float] = {}


def refresh_topology(client: RedisClient, min_interval_s: float = 0.2) -> None:
    """After a failed call on a cluster: re-read the slot map (a replica may have been promoted),
    at most once per ``min_interval_s`` per client. A no-op for a single server. Never raises: a
    cluster that cannot answer now is asked again after the next failure."""
    if not isinstance(client, RedisCluster):
        return
    now = time.monotonic()
    with _refresh_lock:
        if now - _last_refresh.get(id(client), 0.0) < min_interval_s:
            return
        _last_refresh[id(client)] = now
    try:
        client.nodes_manager.initialize()
    except Exception as exc:  # RedisClusterException is not a RedisError
        log.info("event=cluster_topology_refresh_failed error=%s", type(exc).__name__)


# "Redis cannot answer now": down, too slow, or a cluster between a primary's death and its
# replica's promotion (CLUSTERDOWN, TRYAGAIN, a slot no node serves). Every caller treats these
# alike: real time and the event log degrade (counted), outreach fails closed.
UNAVAILABLE: tuple[type[Exception], ...] = (
    redis.ConnectionError,
    redis.TimeoutError,
    redis.exceptions.ClusterDownError,
    redis.exceptions.TryAgainError,
    redis.exceptions.SlotNotCoveredError,
    # no node of the cluster answered a refresh of the slot map (not a RedisError)
    redis.exceptions.RedisClusterUnreachableError,
)


def outage_in_words(exc: Exception) -> str:
    """Why Redis could not answer, for a caller: the exception's class is for the logs."""
    if isinstance(exc, redis.TimeoutError | TimeoutError):
        return "Redis did not answer in time"
    if isinstance(exc, redis.ConnectionError):
        return "Redis cannot be reached"
    if isinstance(exc, UNAVAILABLE):
        return "the Redis Cluster is failing over (a slot has no primary yet)"
    return "Redis answered with an error"


# Anything a call to Redis can raise: a RedisError, or the cluster client's own exceptions.
STORE_ERRORS: tuple[type[Exception], ...] = (redis.RedisError, redis.exceptions.RedisClusterException)

# Replies meaning "this node does not serve that slot (now)": nothing ran; refresh and resend.
REDIRECTED = (redis.exceptions.MovedError, redis.exceptions.AskError, redis.exceptions.TryAgainError)
