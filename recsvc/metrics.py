"""Prometheus metrics of the recommendation service (prefix ``recsvc_``, subsystem ``rec``; every
RPC of every service under ``recsvc_grpc_server_*``; per-worker CPU and memory under
``recsvc_process_*``; audit entries lost under ``recsvc_audit_*``). The full list, with example
alert rules: docs/operations.md.

Each server process builds one ``ServingMetrics`` on its own ``CollectorRegistry`` (tests build
many side by side). With several worker processes, ``recsvc serve`` sets
``PROMETHEUS_MULTIPROC_DIR`` before the workers start: prometheus_client then writes every
process's samples to files there, and the parent serves them merged (``multiprocess_registry``).
With one worker, that worker serves its own registry together with the default one, which holds
the outreach metrics (``recsvc.outreach.throttle_metrics``) and prometheus_client's ``process_*`` and
``python_*`` collectors (``served_registry``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import threading
import time
from collections.abc import Iterable
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.registry import Collector

log = logging.getLogger(__name__)

NAMESPACE = "recsvc"
SUBSYSTEM = "rec"
# Label names, in one place.
L_METHOD = "method"
L_SOURCE = "source"
L_VARIANT = "variant"
L_CODE = "code"
L_VERSION = "model_version"
L_RESULT = "result"
L_SERVICE = "service"
L_WORKER = "worker"
L_EVENT = "event"

MAX_SCENES = 50
_SCENE_RE = re.compile(r"^[a-z0-9_]{1,40}\Z")
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
            "1 for the model version each variant serves (0: served before, with several workers).",
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

        self.stored_lists = Counter(
            "stored_list_answers_total",
            "Member recommendations answered from the bundle's stored default lists (no search).",
            [L_METHOD],
            namespace=NAMESPACE,
            subsystem=SUBSYSTEM,
            registry=r,
        )
        self.realtime_errors = Counter(
            "realtime_errors_total",
            "Redis calls of the real-time store that failed (connection error or timeout), by "
            "operation (read: a member's recent events; write: RecordEvent).",
            ["operation"],
            namespace=NAMESPACE,
            subsystem=SUBSYSTEM,
            registry=r,
        )
        self.model_age = Gauge(
            "model_age_seconds",
            "Seconds since the served bundle's data ends (its training cutoff), per variant; "
            "updated every few seconds.",
            [L_VARIANT],
            namespace=NAMESPACE,
            subsystem=SUBSYSTEM,
            registry=r,
            multiprocess_mode="livemax",
        )
        # Every RPC of every service (Recommender, Outreach, Admin, health, reflection), counted by
        # one wrapper in the per-method chain (recsvc.server.rpc_metrics).
        self.rpc_handled = Counter(
            "grpc_server_handled_total",
            "RPCs completed on the server, by service, method and gRPC status code.",
            [L_SERVICE, L_METHOD, L_CODE],
            namespace=NAMESPACE,
            registry=r,
        )
        self.rpc_seconds = Histogram(
            "grpc_server_handling_seconds",
            "Server-side time from the handler's start to its answer (a stream: to its end).",
            [L_SERVICE, L_METHOD],
            namespace=NAMESPACE,
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        # Per worker (label ``worker``: 0..N-1, stable across restarts), in multiprocess mode too,
        # where prometheus_client's own process collector reports only the supervisor.
        self.process_cpu = Counter(
            "process_cpu_seconds_total",
            "User and system CPU seconds of the server process.",
            [L_WORKER],
            namespace=NAMESPACE,
            registry=r,
        )
        self.process_memory = Gauge(
            "process_resident_memory_bytes",
            "Resident memory of the server process (includes the page-cache pages of the bundle it "
            "has touched, which are shared between workers).",
            [L_WORKER],
            namespace=NAMESPACE,
            registry=r,
            multiprocess_mode="livemax",
        )
        self.process_fds = Gauge(
            "process_open_fds",
            "Open file descriptors of the server process.",
            [L_WORKER],
            namespace=NAMESPACE,
            registry=r,
            multiprocess_mode="livemax",
        )
        self._data_as_of: dict[str, float] = {}
        self.audit_write_failures = Counter(
            "write_failures_total",
            "Audit entries that could not be written (log unwritable, disk full), by audit event; "
            "an audited call whose entry is lost still succeeds (its change was made).",
            [L_EVENT],
            namespace=NAMESPACE,
            subsystem="audit",
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
        self._stored_children: dict[str, Any] = {}

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

    def observe_stored(self, method: str) -> None:
        """One list served from the bundle's stored member lists (``method``: a fixed RPC name)."""
        child = self._stored_children.get(method)
        if child is None:
            child = self._stored_children[method] = self.stored_lists.labels(method)
        child.inc()

    def observe(self, method: str, source: str, variant: str, code: str, seconds: float) -> None:
        key = (method, source, variant, code)
        children = self._request_children.get(key)
        if children is None:
            children = (self.requests.labels(*key), self.latency.labels(method, source, variant))
            self._request_children[key] = children
        children[0].inc()
        children[1].observe(seconds)

    def set_model(
        self, variant: str, version: str, previous: str | None, data_as_of: float | None = None
    ) -> None:
        if previous is not None and previous != version:
            if multiprocess_enabled():
                # the files of several workers cannot drop a series: the old version reads 0
                self.model_info.labels(variant, previous).set(0)
            else:
                with contextlib.suppress(KeyError):
                    self.model_info.remove(variant, previous)
        self.model_info.labels(variant, version).set(1)
        if data_as_of is not None:
            self._data_as_of[variant] = data_as_of
            self.model_age.labels(variant).set(max(0.0, time.time() - data_as_of))

    def update_model_age(self, now: float | None = None) -> None:
        now = time.time() if now is None else now
        for variant, as_of in list(self._data_as_of.items()):
            self.model_age.labels(variant).set(max(0.0, now - as_of))

    def audit_write_failed(self, event: str) -> None:
        """One audit entry not written (``event``: an audit event name, a fixed set)."""
        self.audit_write_failures.labels(event).inc()

    def realtime_errors_by_operation(self, operation: str) -> None:
        self.realtime_errors.labels(operation).inc()

    def set_realtime_degraded(self, degraded: bool) -> None:
        self.realtime_degraded.set(1 if degraded else 0)

    def set_active_members_synced(self, synced: bool) -> None:
        self.active_members_synced.set(1 if synced else 0)

    def set_catalog_connected(self, connected: bool) -> None:
        self.catalog_connected.set(1 if connected else 0)


class ProcessSampler:
    """A daemon thread that refreshes the metrics that are a reading, not an event, every
    ``interval_s``: this process's CPU, memory and open files, and the model age. (A worker
    cannot read them at scrape time in multiprocess mode: the supervisor answers the scrape.)"""

    def __init__(self, metrics: ServingMetrics, worker: int = 0, interval_s: float = 5.0) -> None:
        self._metrics = metrics
        self._worker = str(worker)
        self._interval_s = interval_s
        self._stop = threading.Event()
        self._cpu_seen = 0.0
        self._thread: threading.Thread | None = None

    def sample(self) -> None:
        m = self._metrics
        cpu = time.process_time()
        if cpu > self._cpu_seen:
            m.process_cpu.labels(self._worker).inc(cpu - self._cpu_seen)
            self._cpu_seen = cpu
        rss = _resident_bytes()
        if rss is not None:
            m.process_memory.labels(self._worker).set(rss)
        with contextlib.suppress(OSError):
            m.process_fds.labels(self._worker).set(len(os.listdir("/proc/self/fd")))
        m.update_model_age()

    def start(self) -> ProcessSampler:
        self.sample()
        self._thread = threading.Thread(target=self._run, name="recsvc-metrics-sampler", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self._interval_s):
            try:
                self.sample()
            except Exception:  # a failed reading must not end the thread
                log.exception("event=metrics_sample_failed")

    def stop(self) -> None:
        self._stop.set()


def _resident_bytes() -> int | None:
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):  # not Linux
        return None


class _Merged(Collector):
    """Every metric of several registries, as one collector."""

    def __init__(self, registries: Iterable[CollectorRegistry]) -> None:
        self._registries = tuple(registries)

    def collect(self) -> Iterable[Any]:
        for registry in self._registries:
            yield from registry.collect()


def served_registry(own: CollectorRegistry) -> CollectorRegistry:
    """What a single server process serves on /metrics: its ``ServingMetrics`` registry and the
    default registry (outreach metrics, ``process_*``, ``python_*``)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Merged((own, REGISTRY)))
    return registry


def multiprocess_registry() -> CollectorRegistry:
    """A registry that merges the samples every worker wrote to PROMETHEUS_MULTIPROC_DIR."""
    from prometheus_client import multiprocess

    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    return registry


def mark_worker_dead(pid: int) -> None:
    """Drop a worker's live gauges (model info, memory...) from the merged view once it exited."""
    if multiprocess_enabled():
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]


def serve_metrics(port: int, registry: CollectorRegistry, host: str = "127.0.0.1") -> None:
    """Expose ``registry`` on http://host:port/metrics (a daemon thread); ConfigError
    (PORT_IN_USE) when the port is taken, (INVALID_PORT) when the port or host cannot be one."""
    import socket

    from recsvc.errors import ConfigError

    try:
        start_http_server(port, addr=host, registry=registry)
    except (OverflowError, ValueError, socket.gaierror) as exc:
        # bind() refuses a port past 65535 with OverflowError; a negative one, or a host that is
        # no address, fails the address look-up (gaierror): neither is a port someone else holds
        raise ConfigError(
            f"metrics port {port} on {host} cannot be served ({getattr(exc, 'strerror', None) or exc}); "
            "choose a port 1..65535 and a local address",
            reason="INVALID_PORT",
        ) from None
    except OSError as exc:
        raise ConfigError(
            f"metrics port {port} on {host} is in use ({exc.strerror}); choose another", reason="PORT_IN_USE"
        ) from None
