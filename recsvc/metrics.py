"""Prometheus metrics of the recommendation service (prefix ``recsvc_``, subsystem ``rec``).

Each server process builds one ``ServingMetrics`` on its own ``CollectorRegistry`` (tests build
many side by side). With several worker processes, ``recsvc serve`` sets
``PROMETHEUS_MULTIPROC_DIR`` before the workers start: prometheus_client then writes every
process's samples to files there, and the parent serves them merged (``multiprocess_registry``).
"""

from __future__ import annotations

import contextlib
import os
import re
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

NAMESPACE = "recsvc"
SUBSYSTEM = "rec"
# Label names, in one place.
L_METHOD = "method"
L_SOURCE = "source"
L_VARIANT = "variant"
L_CODE = "code"
L_VERSION = "model_version"
L_RESULT = "result"

MAX_SCENES = 50
_SCENE_RE = re.compile(r"^[a-z0-9_]{1,40}$")
_LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.02, 0.05, 0.1, 0.25, 1.0)


def multiprocess_enabled() -> bool:
    return bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))


class ServingMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "requests_total",
            "Recommender RPCs answered, by method, source of the list, variant and status code.",
            [L_METHOD, L_SOURCE, L_VARIANT, L_CODE],
            namespace=NAMESPACE,
            subsystem=SUBSYSTEM,
            registry=r,
        )
        self.latency = Histogram(
            "request_latency_seconds",
            "Server-side RPC latency.",
            [L_METHOD, L_SOURCE, L_VARIANT],
            namespace=NAMESPACE,
            subsystem=SUBSYSTEM,
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.model_info = Gauge(
            "model_info",
            "1 for the model version each variant serves.",
            [L_VARIANT, L_VERSION],
            namespace=NAMESPACE,
            subsystem=SUBSYSTEM,
            registry=r,
            multiprocess_mode="liveall",
        )
        self.reloads = Counter(
            "model_reloads_total",
            "Model reload attempts by result (swapped, unchanged, failed).",
            [L_VARIANT, L_RESULT],
            namespace=NAMESPACE,
            subsystem=SUBSYSTEM,
            registry=r,
        )
        self.realtime_degraded = Gauge(
            "realtime_degraded",
            "1 while Redis is unavailable and recommendations come from the bundle only.",
            namespace=NAMESPACE,
            subsystem=SUBSYSTEM,
            registry=r,
            multiprocess_mode="livemax",
        )
        self.active_members_synced = Gauge(
            "active_members_synced",
            "1 while this process knows which members have recent events (reads for the others "
            "are skipped); 0 while it reads Redis for every member.",
            namespace=NAMESPACE,
            subsystem=SUBSYSTEM,
            registry=r,
            multiprocess_mode="livemin",
        )
        self.catalog_connected = Gauge(
            "catalog_connected",
            "1 while this process follows the live catalog's change feed in Redis; 0 while Redis "
            "is unavailable and the last known catalog stays in force (changes are refused).",
            namespace=NAMESPACE,
            subsystem=SUBSYSTEM,
            registry=r,
            multiprocess_mode="livemin",
        )
        self.events = Counter(
            "events_total",
            "RecordEvent calls by event type and whether Redis stored them.",
            ["event_type", "stored"],
            namespace=NAMESPACE,
            subsystem=SUBSYSTEM,
            registry=r,
        )

        self.scenes = Counter(
            "scene_requests_total",
            "Member recommendations by page (request 'scene'); names beyond the first "
            f"{MAX_SCENES} distinct ones, or not [a-z0-9_], count as 'other'.",
            ["method", "scene"],
            namespace=NAMESPACE,
            subsystem=SUBSYSTEM,
            registry=r,
        )
        self._scenes_seen: set[str] = set()
        # Label children by label values: ``labels()`` costs more than the update itself, and
        # every call would look the same few combinations up again. Bounded like the labels.
        self._request_children: dict[tuple[str, str, str, str], tuple[Any, Any]] = {}
        self._scene_children: dict[tuple[str, str], Any] = {}

    def observe_scene(self, method: str, scene: str) -> None:
        child = self._scene_children.get((method, scene))
        if child is None:
            # Scene is free-form caller input: bound the label's cardinality.
            label = scene if _SCENE_RE.match(scene) else "other"
            if label not in self._scenes_seen:
                if len(self._scenes_seen) >= MAX_SCENES:
                    label = "other"
                else:
                    self._scenes_seen.add(label)
            child = self.scenes.labels(method, label)
            if label == scene:  # only names that are their own label are remembered: bounded
                self._scene_children[(method, scene)] = child
        child.inc()

    def observe(self, method: str, source: str, variant: str, code: str, seconds: float) -> None:
        key = (method, source, variant, code)
        children = self._request_children.get(key)
        if children is None:
            children = (self.requests.labels(*key), self.latency.labels(method, source, variant))
            self._request_children[key] = children
        children[0].inc()
        children[1].observe(seconds)

    def set_model(self, variant: str, version: str, previous: str | None) -> None:
        if previous is not None and previous != version:
            with contextlib.suppress(KeyError):
                self.model_info.remove(variant, previous)
        self.model_info.labels(variant, version).set(1)

    def set_realtime_degraded(self, degraded: bool) -> None:
        self.realtime_degraded.set(1 if degraded else 0)

    def set_active_members_synced(self, synced: bool) -> None:
        self.active_members_synced.set(1 if synced else 0)

    def set_catalog_connected(self, connected: bool) -> None:
        self.catalog_connected.set(1 if connected else 0)


def multiprocess_registry() -> CollectorRegistry:
    """A registry that merges the samples every worker wrote to PROMETHEUS_MULTIPROC_DIR."""
    from prometheus_client import multiprocess

    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    return registry


def serve_metrics(port: int, registry: CollectorRegistry, host: str = "127.0.0.1") -> None:
    """Expose ``registry`` on http://host:port/metrics (a daemon thread)."""
    start_http_server(port, addr=host, registry=registry)
