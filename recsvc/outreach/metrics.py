"""Prometheus metrics of the outreach throttle (subsystem ``outreach``)."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

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
