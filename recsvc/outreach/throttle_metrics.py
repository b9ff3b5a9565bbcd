"""Prometheus metrics of the outreach throttle (subsystem ``outreach``), on the default registry
(served by every worker count: ``recsvc.metrics.served_registry``, or merged from the workers'
files in multiprocess mode)."""

from __future__ import annotations

import redis
from prometheus_client import Counter, Gauge, Histogram

from recsvc.redis_client import UNAVAILABLE

LABEL_CHANNEL = "channel"
LABEL_CLASS = "message_class"
LABEL_REASON = "reason"

DECISIONS = Counter(
    "recsvc_outreach_decisions_total",
    "Outreach decisions by channel, message class and reason code.",
    [LABEL_CHANNEL, LABEL_CLASS, LABEL_REASON],
)
FEEDBACK = Counter(
    "recsvc_outreach_feedback_total",
    "Outreach feedback events by channel and kind.",
    [LABEL_CHANNEL, "feedback"],
)
DECISION_SECONDS = Histogram(
    "recsvc_outreach_decision_seconds",
    "Wall time of one single (not pipelined) outreach decision including the Redis round trip.",
    buckets=(0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25),
)
STORE_ERRORS = Counter(
    "recsvc_outreach_store_errors_total",
    "Outreach decisions the throttle store could not make (answered UNAVAILABLE), by cause: "
    "connection, timeout, cluster (a slot without a primary during a failover), script (an error "
    "reply from the decision script) or other.",
    ["kind"],
)
STORE_AVAILABLE = Gauge(
    "recsvc_outreach_store_available",
    "1 while the throttle store (Redis) answers: the last outreach decision reached it and the "
    "circuit breaker is closed; 0 after a decision did not or while the breaker is open; the "
    "lowest of all workers.",
    multiprocess_mode="livemin",
)


def store_failed(exc: BaseException) -> None:
    """One decision answered UNAVAILABLE because of ``exc``."""
    if isinstance(exc, redis.ConnectionError):
        kind = "connection"
    elif isinstance(exc, redis.TimeoutError):
        kind = "timeout"
    elif isinstance(exc, UNAVAILABLE):
        kind = "cluster"  # a slot without a primary (CLUSTERDOWN, TRYAGAIN) during a failover
    elif isinstance(exc, redis.ResponseError):
        kind = "script"
    else:
        kind = "other"
    STORE_ERRORS.labels(kind).inc()
    if kind in ("connection", "timeout", "cluster"):
        STORE_AVAILABLE.set(0)


def store_answered() -> None:
    STORE_AVAILABLE.set(1)


def breaker_changed(down: bool) -> None:
    """The throttle's circuit breaker opened (``down``) or closed: the gauge follows it, so a
    replica without outreach traffic reads what its health says, not 0 until a first decision."""
    STORE_AVAILABLE.set(0 if down else 1)
