"""Composition root: ``build_deps`` builds what a server process needs (one Redis client, the
real-time store, the model registry, the engine, metrics); ``build_server`` turns them into a
server (``grpc.aio``, see ``aio_host``) with the Recommender (and Outreach, when given)
services, gRPC health, server reflection and interceptors. Nothing else in recsvc creates
clients or reads settings.

Hooks for other parts of recsvc (see docs/operations.md):

- ``ServerDeps.outreach_servicer``: registered as ``recsvc.v1.Outreach`` when set
  (``build_deps`` builds it with ``recsvc.outreach.service.build_outreach_servicer`` when that
  module exists, handing it the shared Redis client and the in-process ``RecommendationPort``).
- ``ServerDeps.extra_interceptors``: run after the error interceptor (so a ``RecsvcError`` they
  raise inside a handler becomes its gRPC status), in the given order.
- ``ServerDeps.catalog_service``: adds ``recsvc.v1.Catalog`` (``recsvc.catalog.wiring``) and
  returns its full name; the catalog writer process (``catalog_only``) serves it alone.
- ``ServerDeps.extra_services``: callables ``(server) -> service_name`` that add a servicer and
  return its full name for health and reflection (e.g. an Admin service).
- ``ServerDeps.server_credentials``: TLS credentials; plaintext when None.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import importlib.util
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent import futures
from dataclasses import dataclass, field
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2_grpc

from recsvc.active_members import ActiveMembers
from recsvc.catalog.wiring import add_live_catalog
from recsvc.engine.recommender import EnginePort, RecommendationEngine
from recsvc.errors import ConfigError
from recsvc.eventlog.log import EventLog, EventLogMetrics
from recsvc.metrics import ProcessSampler, ServingMetrics
from recsvc.models.broadcast import ReloadBroadcast
from recsvc.models.resolve import ModelResolver
from recsvc.models.served import ServedModels
from recsvc.realtime import REALTIME_SUFFIXES, RealtimeStore, make_redis_client
from recsvc.redis_client import RedisClient, connect
from recsvc.security.wiring import secure_deps
from recsvc.server.aio_host import AioServerHost
from recsvc.server.decoding import RequestDecoding
from recsvc.server.handlers import MethodWrapper, SyncInterceptorAdapter, WrappingRegistrar
from recsvc.server.interceptors import ErrorInterceptor
from recsvc.server.readiness import Readiness
from recsvc.server.recommender_servicer import RecommenderServicer
from recsvc.server.rpc_metrics import RpcMetricsInterceptor
from recsvc.server.runner import host_port
from recsvc.server.streams import StreamsOnTheLoop
from recsvc.settings import Settings
from recsvc.v1 import (
    members_pb2,
    members_pb2_grpc,
    outreach_pb2,
    outreach_pb2_grpc,
    recommender_pb2,
    recommender_pb2_grpc,
)

log = logging.getLogger(__name__)

RECOMMENDER_SERVICE = recommender_pb2.DESCRIPTOR.services_by_name["Recommender"].full_name
OUTREACH_SERVICE = outreach_pb2.DESCRIPTOR.services_by_name["Outreach"].full_name
MEMBERS_SERVICE = members_pb2.DESCRIPTOR.services_by_name["Members"].full_name


@dataclass
class ServerDeps:
    models: ServedModels
    realtime: RealtimeStore | None
    metrics: ServingMetrics
    engine: RecommendationEngine
    redis_client: RedisClient | None = None
    outreach_servicer: Any | None = None
    # ``recsvc.v1.Members`` (member profiles and audiences); registered when set.
    members_servicer: Any | None = None
    extra_interceptors: Sequence[grpc.ServerInterceptor] = ()
    extra_services: Sequence[Callable[[grpc.aio.Server], str]] = ()
    server_credentials: grpc.ServerCredentials | None = None
    # ReloadModel fan-out to the other processes/replicas (Redis pub/sub); None = this process only.
    reload_broadcast: ReloadBroadcast | None = None
    # Called by ``shutdown`` after the server stopped (e.g. to stop listener threads).
    on_close: list[Callable[[], None]] = field(default_factory=list)
    # Impressions, events and outreach decisions to the durable log; None = not recorded.
    event_log: EventLog | None = None
    # Adds recsvc.v1.Catalog and returns its name (recsvc.catalog.wiring); None: the live catalog is off.
    catalog_service: Callable[[grpc.aio.Server], str] | None = None
    # The catalog writer process (catalog.writer_port): serves the Catalog service only.
    catalog_only: bool = False
    # Set by build_server: the port actually bound (useful with port 0).
    bound_port: int = 0
    health: health.HealthServicer | None = field(default=None, repr=False)

    @property
    def port(self) -> EnginePort:
        """The in-process ``RecommendationPort`` (for outreach)."""
        return EnginePort(self.engine, self.models, self.engine_default_diversity)

    engine_default_diversity: float = 0.3


def build_deps(
    settings: Settings,
    *,
    with_outreach: bool = True,
    metrics: ServingMetrics | None = None,
    worker: int = 0,
    catalog_only: bool = False,
) -> ServerDeps:
    """Everything one server process needs, built once at start-up (after fork). ``worker``:
    this process's index among the workers (the ``worker`` label of its process metrics).
    ``catalog_only``: the catalog writer, which answers change calls only, so it has no
    active-members directory, event log, outreach or members service."""
    import faiss

    # One search thread per process: concurrency comes from gRPC threads and worker processes,
    # and OpenMP threads spinning against each other on a small machine cost 10-50x in latency.
    faiss.omp_set_num_threads(1)
    metrics = metrics or ServingMetrics()
    client = make_redis_client(settings.redis)
    active = None
    if settings.redis.active_members and not catalog_only:
        active = ActiveMembers(
            client,
            settings.redis.key_prefix,
            settings.redis.recent_events_ttl_s,
            REALTIME_SUFFIXES,
            on_sync_change=metrics.set_active_members_synced,
            retry_s=settings.redis.reconnect_interval_ms / 1000,
        ).start()
    realtime = RealtimeStore(
        client,
        settings.redis,
        on_state_change=metrics.set_realtime_degraded,
        active=active,
        on_error=metrics.realtime_errors_by_operation,
    )
    models = ServedModels(settings, ModelResolver(settings), metrics)
    engine = RecommendationEngine(models, realtime, settings.serving)
    deps = ServerDeps(
        models=models,
        realtime=realtime,
        metrics=metrics,
        engine=engine,
        redis_client=client,
        engine_default_diversity=settings.serving.default_diversity,
        catalog_only=catalog_only,
    )
    sampler = ProcessSampler(metrics, worker).start()
    deps.on_close.append(sampler.stop)
    if active is not None:
        deps.on_close.append(active.stop)  # before the client closes under it
    deps.on_close.append(realtime.close)
    if settings.events.enabled and not catalog_only:
        flush_client = connect(settings.redis.url, timeout_s=settings.events.flush_timeout_ms / 1000)
        deps.event_log = EventLog(
            client, settings, EventLogMetrics(metrics.registry), flush_client=flush_client
        ).start()
        deps.on_close.append(deps.event_log.close)  # flushes what is buffered
        deps.on_close.append(flush_client.close)  # in order: after that last flush
    deps.reload_broadcast = ReloadBroadcast(client, settings.redis.key_prefix, models)
    deps.reload_broadcast.start()
    deps.on_close.append(deps.reload_broadcast.stop)
    if with_outreach and not catalog_only and importlib.util.find_spec("recsvc.outreach.service") is not None:
        from recsvc.outreach.service import build_outreach_servicer  # type: ignore[import-not-found,unused-ignore]

        deps.outreach_servicer = build_outreach_servicer(
            settings, client, deps.port, event_log=deps.event_log
        )
        # Probes Redis for the throttle's breaker, which readiness follows (recsvc.server.readiness).
        deps.outreach_servicer.throttle.start_watch()
        deps.on_close.append(deps.outreach_servicer.throttle.stop_watch)
    # Live stock, prices, delistings and new items in every list, and the Catalog service.
    add_live_catalog(settings, deps)
    if not catalog_only:
        _add_members(settings, deps, client)
    # API keys + roles, TLS, the Admin service, the erasure listener; refuses unsafe set-ups.
    security = secure_deps(settings, deps)
    # Until the next retrain the bundle still holds a forgotten member's vector: serve them as unknown.
    engine.forgotten = security.forgotten
    return deps


def _add_members(settings: Settings, deps: ServerDeps, client: RedisClient) -> None:
    """The Members service over the same throttle as Outreach (or its own when outreach is off);
    its audience resolver also serves PlanCampaign's audience queries."""
    from recsvc.members.service import build_members_servicer
    from recsvc.outreach.service import build_throttle

    outreach = deps.outreach_servicer
    throttle = outreach.throttle if outreach is not None else build_throttle(settings, client)
    engine = deps.engine
    # read at call time: the erasure wiring (secure_deps) replaces the engine's set after this
    deps.members_servicer, audiences = build_members_servicer(
        settings, deps.models, throttle, deps.realtime, lambda: engine.forgotten
    )
    if outreach is not None:
        from recsvc.members.schedule import SendScheduler
        from recsvc.outreach.member_records import read_zones

        outreach.audiences = audiences
        outreach.scheduler = SendScheduler(
            audiences, throttle.policies.current, lambda ids: read_zones(throttle, ids)
        )


def build_server(settings: Settings, deps: ServerDeps) -> AioServerHost:
    """A bound, not yet started server (``grpc.aio`` on its own loop thread, see
    ``recsvc.server.aio_host``); ``deps.bound_port`` holds its port."""
    s = settings.serving

    # Runs the synchronous handlers (RecordEvent, outreach, admin, health, streams, ReloadModel).
    pool = futures.ThreadPoolExecutor(max_workers=s.threads_per_worker, thread_name_prefix="recsvc-rpc")

    def build() -> grpc.aio.Server:
        options = [
            ("grpc.so_reuseport", 1 if s.workers > 1 else 0),
            ("grpc.max_receive_message_length", s.max_message_bytes),
            ("grpc.max_send_message_length", s.max_message_bytes),
        ]
        # The RPC counter sits inside the error interceptor: it sees each error before it is mapped.
        # RequestDecoding after the key check: a request that does not decode is refused as
        # INVALID_ARGUMENT, instead of grpc's UNKNOWN before any interceptor ran. StreamsOnTheLoop
        # innermost: plain-generator streams run step by step (a caller who stops reading holds
        # no pool thread), and every wrapper outside sees them as async generators.
        interceptors = [
            ErrorInterceptor(),
            RpcMetricsInterceptor(deps.metrics),
            *deps.extra_interceptors,
            RequestDecoding(),
            StreamsOnTheLoop(pool),
        ]
        # recsvc's own interceptors wrap each method's handler once, as services are added, so
        # calls skip grpc's per-call interceptor pipeline; any other interceptor runs per call.
        wrappers = [i for i in interceptors if isinstance(i, MethodWrapper)]
        per_call = len(wrappers) < len(interceptors)
        server = grpc.aio.server(
            migration_thread_pool=pool,
            interceptors=[SyncInterceptorAdapter(i) for i in interceptors] if per_call else None,
            options=options,
            maximum_concurrent_rpcs=s.threads_per_worker * 64,
        )
        _add_services(settings, deps, server, WrappingRegistrar(server, [] if per_call else wrappers))
        address = host_port(s.host, s.port)  # [::1]:port for an IPv6 address
        try:
            if deps.server_credentials is not None:
                deps.bound_port = server.add_secure_port(address, deps.server_credentials)
            else:
                deps.bound_port = server.add_insecure_port(address)
        except RuntimeError as exc:  # grpc's "Failed to bind to address": one named line instead
            tls = " with TLS" if deps.server_credentials is not None else ""
            raise ConfigError(
                f"cannot listen on {address}{tls}: serving.host is none of this machine's addresses, "
                "or the port was taken since start-up"
                + (", or security.tls_cert_file and security.tls_key_file are no usable pair" if tls else ""),
                reason="CANNOT_BIND",
            ) from exc
        return server

    host = AioServerHost(build, event_loop=s.event_loop, executor=pool)
    log.info("event=server_built address=%s", host_port(s.host, deps.bound_port))
    return host


class HealthServicer(health.HealthServicer):
    """grpc's thread-safe health servicer (model loads flip it from other threads), with two
    changes for the aio server:

    - ``Watch`` runs on the event loop. grpc's blocks a thread of the server's pool for as long as
      the stream is open, and its cancellation never reached it there: a few watches (health needs
      no key) held every pool thread, so RecordEvent, outreach and admin calls hung, and so did
      shutdown.
    - ``List`` exists: grpc's health proto has the method but its servicer does not implement it,
      so a call to it raised NotImplementedError, answered as INTERNAL.
    """

    def __init__(self) -> None:
        super().__init__()
        self._watchers: set[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = set()

    def set(self, service: str, status: Any) -> None:
        with self._lock:
            super().set(service, status)
            watchers = list(self._watchers)
        for loop, changed in watchers:
            with contextlib.suppress(RuntimeError):  # that loop is closed: nobody watches there
                loop.call_soon_threadsafe(changed.set)

    async def Watch(  # type: ignore[override]
        self, request: health_pb2.HealthCheckRequest, context: Any
    ) -> AsyncIterator[health_pb2.HealthCheckResponse]:
        watcher = (asyncio.get_running_loop(), asyncio.Event())
        with self._lock:
            self._watchers.add(watcher)
        try:
            last = None
            while True:
                watcher[1].clear()  # before reading: a change from now on wakes us
                with self._lock:
                    status = self._server_status.get(
                        request.service, health_pb2.HealthCheckResponse.SERVICE_UNKNOWN
                    )
                if status != last:
                    last = status
                    yield health_pb2.HealthCheckResponse(status=status)
                await watcher[1].wait()
        finally:
            with self._lock:
                self._watchers.discard(watcher)

    def List(self, request: Any, context: Any) -> health_pb2.HealthListResponse:
        with self._lock:
            statuses = dict(self._server_status)
        return health_pb2.HealthListResponse(
            statuses={name: health_pb2.HealthCheckResponse(status=s) for name, s in statuses.items()}
        )


def _add_services(
    settings: Settings, deps: ServerDeps, server: grpc.aio.Server, registrar: WrappingRegistrar
) -> None:
    """Every service goes through ``registrar`` (which wraps its handlers), reflection and health
    included, so their requests are decoded and checked like any other. The catalog writer
    (``deps.catalog_only``) serves the Catalog service alone (with health and reflection)."""
    target: Any = registrar  # stands in for the server while services are added
    names: list[str] = []
    model_names: list[str] = []
    store_names: list[str] = []
    if not deps.catalog_only:
        recommender_pb2_grpc.add_RecommenderServicer_to_server(
            RecommenderServicer(
                settings,
                deps.engine,
                deps.models,
                deps.realtime,
                deps.metrics,
                deps.reload_broadcast,
                deps.event_log,
            ),
            target,
        )
        names.append(RECOMMENDER_SERVICE)
        model_names.append(RECOMMENDER_SERVICE)
        if deps.outreach_servicer is not None:
            outreach_pb2_grpc.add_OutreachServicer_to_server(deps.outreach_servicer, target)
            names.append(OUTREACH_SERVICE)
            store_names.append(OUTREACH_SERVICE)
        if deps.members_servicer is not None:
            members_pb2_grpc.add_MembersServicer_to_server(deps.members_servicer, target)
            names.append(MEMBERS_SERVICE)
            model_names.append(MEMBERS_SERVICE)  # its live parts degrade without Redis; the bundle's do not
    if deps.catalog_service is not None:
        names.append(deps.catalog_service(target))
        model_names.append(names[-1])
    for add in [] if deps.catalog_only else deps.extra_services:
        names.append(add(target))
        model_names.append(names[-1])

    # Thread-safe: model loads flip it from other threads (its Watch runs on the loop, see above).
    health_servicer = HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, target)
    deps.health = health_servicer
    # SERVING only once a model can answer (every service shares the process's model); Outreach
    # also only while its Redis answers (the throttle's circuit breaker is closed).
    readiness = Readiness(health_servicer, model_names, store_names)
    if deps.outreach_servicer is not None:
        breaker = deps.outreach_servicer.throttle.breaker
        from recsvc.outreach import throttle_metrics

        for listener in (readiness.store_changed, throttle_metrics.breaker_changed):
            breaker.add_listener(listener)
            listener(breaker.is_open)  # it may have opened while the server was built
    deps.models.set_on_loaded(readiness.model_loaded)
    # What reflection.enable_server_reflection does for an aio server, but through the registrar
    # (given the registrar, it would pick the thread-pool servicer by the server's type).
    reflection_pb2_grpc.add_ServerReflectionServicer_to_server(
        reflection.aio.ReflectionServicer((*names, health.SERVICE_NAME, reflection.SERVICE_NAME)), target
    )
    registrar.finish()
    log.info("event=services_added services=%s", ",".join(names))


def settle_heap() -> None:
    """Move everything alive now (modules, the loaded model's lookups) out of the cyclic GC's
    reach: a process's full collections then walk only what requests create. At 1M × 100k a
    full collection over the ~200k objects of a loaded worker took ~130 ms here, a stall of the
    serving loop. Called once, after the first model load and before serving."""
    gc.collect()
    gc.freeze()


def shutdown(server: AioServerHost, deps: ServerDeps, grace_s: float) -> None:
    """Stop taking calls (health NOT_SERVING first), let in-flight ones finish, close clients."""
    if deps.health is not None:
        deps.health.enter_graceful_shutdown()
    deps.models.stop()
    server.stop(grace=grace_s).wait()
    for close in deps.on_close:
        try:
            close()
        except Exception:  # one failing closer must not keep the others from running
            log.exception("event=close_hook_failed")
    if deps.redis_client is not None:
        deps.redis_client.close()
