"""``recsvc.v1.Recommender``: checks requests, calls the engine, records metrics.

Gets everything in ``__init__``; never picks a status code (errors are typed, the interceptor
maps them).

The per-page calls (``RecommendProducts``, ``RecommendContent``, ``SimilarItems``) are ``async
def`` and run on the aio server's event loop: each is a fraction of a millisecond of CPU, and
reads Redis only for members with recent events (``recsvc.active_members``), so running them
inline costs less than handing every call to a thread (and lets the GIL stay with one thread).
When Redis is down, the real-time store's circuit breaker answers at once after the first
timeout, so the loop is not held up call after call. ``RecordEvent`` (always one Redis write) and
everything slow or streaming (``BatchRecommend``, ``ReloadModel``, ``GetModelInfo``) stay
synchronous and run in the server's thread pool."""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Iterator

import grpc

from recsvc.bounds import check_amount, check_quantity, check_timestamp_ms, timestamp_field_ms
from recsvc.bundle import KIND_CONTENT, KIND_PRODUCT
from recsvc.engine.filters import FilterSpec
from recsvc.engine.recommender import Recommendation, RecommendationEngine
from recsvc.errors import InvalidArgument, MemberErased, ModelUnavailable, RecsvcError
from recsvc.eventlog.ids import RecommendationIds
from recsvc.eventlog.log import ATTRIBUTED_EVENTS, EventLog
from recsvc.metrics import ServingMetrics
from recsvc.models.broadcast import ReloadBroadcast
from recsvc.models.served import ServedModels
from recsvc.realtime import RealtimeStore
from recsvc.server.interceptors import check_deadline
from recsvc.server.request_checks import check_channel, check_event_type, check_id, check_k, check_scene
from recsvc.settings import Settings
from recsvc.v1 import common_pb2, recommender_pb2, recommender_pb2_grpc

log = logging.getLogger(__name__)

_KIND = {
    common_pb2.ITEM_KIND_UNSPECIFIED: None,
    common_pb2.PRODUCT: KIND_PRODUCT,
    common_pb2.CONTENT: KIND_CONTENT,
}


class RecommenderServicer(recommender_pb2_grpc.RecommenderServicer):
    def __init__(
        self,
        settings: Settings,
        engine: RecommendationEngine,
        models: ServedModels,
        realtime: RealtimeStore | None,
        metrics: ServingMetrics,
        reload_broadcast: ReloadBroadcast | None = None,
        event_log: EventLog | None = None,
    ) -> None:
        self._settings = settings
        # The sections and values the per-page calls read, once: each read through the settings
        # object is a pydantic attribute look-up.
        self._data, self._serving = settings.data, settings.serving
        self._filter_spec = functools.partial(
            FilterSpec.from_proto,
            default_diversity=settings.serving.default_diversity,
            max_values=settings.serving.max_filter_values,
            max_id_length=settings.data.max_id_length,
        )
        self._engine = engine
        self._models = models
        self._realtime = realtime
        self._metrics = metrics
        self._broadcast = reload_broadcast
        # Every response gets a recommendation id; with a log, also an impression (docs/experiments.md).
        self._ids = RecommendationIds(
            settings.security.pseudonym_key, settings.security.previous_pseudonym_keys
        )
        self._log = event_log

    def _shown(self, rec: Recommendation, member_id: str, scene: str, channel: str) -> None:
        """Name the list and queue its impression (a deque append; written by the log's thread)."""
        resp = rec.response
        rec_id = resp.recommendation_id = self._ids.new(member_id)
        if self._log is not None:
            self._log.impression(
                rec_id,
                member_id,
                variant=resp.variant,
                model_version=resp.model_version,
                scene=scene,
                channel=channel,
                items=rec.item_ids,
                source=rec.source,
            )

    def _filters(self, f: common_pb2.RecommendationFilters | None) -> FilterSpec:
        return self._filter_spec(f)

    def _observe(self, method: str, t0: float, source: str, variant: str, code: str = "OK") -> None:
        self._metrics.observe(method, source, variant, code, time.perf_counter() - t0)

    def _member_call(
        self,
        method: str,
        kind: int,
        request: recommender_pb2.RecommendProductsRequest | recommender_pb2.RecommendContentRequest,
        context: grpc.aio.ServicerContext,
    ) -> recommender_pb2.RecommendResponse:
        t0 = time.perf_counter()
        try:
            member_id = check_id(request.member_id, "member_id", self._data)
            k = check_k(request.k, self._serving)
            channel = check_channel(request.channel, self._data)
            scene = check_scene(request.scene)
            filters = self._filters(request.filters if request.HasField("filters") else None)
            check_deadline(context)
            rec = self._engine.recommend(member_id, kind, k, channel, filters)
        except RecsvcError as exc:
            self._observe(method, t0, "none", "none", exc.code.name)
            raise
        self._shown(rec, member_id, scene, channel)
        self._observe(method, t0, rec.source, rec.response.variant)
        if rec.stored:
            self._metrics.observe_stored(method)
        self._metrics.observe_scene(method, scene or "none")
        return rec.response

    async def RecommendProducts(
        self, request: recommender_pb2.RecommendProductsRequest, context: grpc.aio.ServicerContext
    ) -> recommender_pb2.RecommendResponse:
        return self._member_call("RecommendProducts", KIND_PRODUCT, request, context)

    async def RecommendContent(
        self, request: recommender_pb2.RecommendContentRequest, context: grpc.aio.ServicerContext
    ) -> recommender_pb2.RecommendResponse:
        return self._member_call("RecommendContent", KIND_CONTENT, request, context)

    async def SimilarItems(
        self, request: recommender_pb2.SimilarItemsRequest, context: grpc.aio.ServicerContext
    ) -> recommender_pb2.RecommendResponse:
        t0 = time.perf_counter()
        try:
            item_id = check_id(request.item_id, "item_id", self._settings.data)
            k = check_k(request.k, self._settings.serving)
            if request.kind not in _KIND:
                raise InvalidArgument(f"unknown kind {request.kind}", reason="INVALID_KIND")
            filters = self._filters(request.filters if request.HasField("filters") else None)
            check_deadline(context)
            rec = self._engine.similar(item_id, _KIND[request.kind], k, filters)
        except RecsvcError as exc:
            self._observe("SimilarItems", t0, "none", "none", exc.code.name)
            raise
        self._shown(rec, "", "similar", "")
        self._observe("SimilarItems", t0, rec.source, rec.response.variant)
        return rec.response

    def BatchRecommend(
        self, request: recommender_pb2.BatchRecommendRequest, context: grpc.ServicerContext
    ) -> Iterator[recommender_pb2.BatchRecommendResult]:
        s = self._settings
        if len(request.member_ids) > s.serving.max_batch_members:
            raise InvalidArgument(
                f"{len(request.member_ids)} members in one batch; at most {s.serving.max_batch_members}",
                reason="TOO_MANY_MEMBERS",
            )
        k = check_k(request.k, s.serving)
        channel = check_channel(request.channel, s.data)
        if request.kind not in _KIND:
            raise InvalidArgument(f"unknown kind {request.kind}", reason="INVALID_KIND")
        kind = _KIND[request.kind] or KIND_PRODUCT
        filters = self._filters(request.filters if request.HasField("filters") else None)
        models = self._models.frozen()  # every member from the same models, whatever swaps meanwhile
        models.default()  # UNAVAILABLE before the first member when no model is loaded
        for member_id in request.member_ids:
            check_deadline(context)
            t0 = time.perf_counter()
            try:
                member_id = check_id(member_id, "member_id", s.data)
                rec = self._engine.recommend(member_id, kind, k, channel, filters, models)
            except InvalidArgument as exc:
                self._observe("BatchRecommend", t0, "none", "none", exc.code.name)
                yield recommender_pb2.BatchRecommendResult(member_id=member_id, error=str(exc))
                continue
            self._shown(rec, member_id, "batch", channel)
            self._observe("BatchRecommend", t0, rec.source, rec.response.variant)
            yield recommender_pb2.BatchRecommendResult(member_id=member_id, response=rec.response)

    def RecordEvent(
        self, request: recommender_pb2.RecordEventRequest, context: grpc.ServicerContext
    ) -> recommender_pb2.RecordEventResponse:
        # Synchronous on purpose: the aio server runs it in its thread pool, so the Redis write
        # (a round trip, up to redis.socket_timeout_ms when Redis stalls) never holds up the event
        # loop that serves the recommendations.
        t0 = time.perf_counter()
        s = self._settings
        try:
            member_id = check_id(request.member_id, "member_id", s.data)
            item_id = check_id(request.item_id, "item_id", s.data)
            event_type = check_event_type(request.event_type)
            channel = check_channel(request.channel, s.data)
            # The documented ranges (recsvc.bounds, docs/api.md "Accepted ranges"): no NaN,
            # infinity or 1e308 amount, no event from year 1 or far in the future.
            check_quantity(request.quantity)
            check_amount(request.amount)
            if request.HasField("ts"):
                ts_ms = check_timestamp_ms(timestamp_field_ms(request.ts, "ts"), "ts")
                ts = ts_ms / 1000
            else:
                ts = time.time()
            rec_id = request.recommendation_id
            minted_ms = self._ids.check(rec_id, member_id) if rec_id else 0
        except RecsvcError as exc:
            self._observe("RecordEvent", t0, "none", "none", exc.code.name)
            raise
        try:
            stored = (
                self._realtime.record(member_id, item_id, event_type, ts, channel)
                if self._realtime
                else False
            )
        except MemberErased as exc:
            # An erased member's events are refused, not dropped silently (docs/privacy.md).
            self._observe("RecordEvent", t0, "none", "none", exc.code.name)
            raise
        variant = self._models.variant_of(member_id)
        attributed, logged = self._log_event(
            request, member_id, item_id, event_type, channel, ts, variant, minted_ms
        )
        # Confirmed only when both writes are: with the member's keys and the log's shard on two
        # Redis Cluster nodes one can fail alone, and the caller keeps (and re-sends) what was not
        # confirmed; training drops an event logged twice (recsvc/eventlog/feed.py).
        stored = stored and logged
        self._metrics.events.labels(event_type, str(stored).lower()).inc()
        self._observe("RecordEvent", t0, "event", variant)
        return recommender_pb2.RecordEventResponse(
            stored=stored, item_known=self._knows(member_id, item_id), recommendation_id=attributed
        )

    def _log_event(
        self,
        request: recommender_pb2.RecordEventRequest,
        member_id: str,
        item_id: str,
        event_type: str,
        channel: str,
        ts: float,
        variant: str,
        minted_ms: int,
    ) -> tuple[str, bool]:
        """Attribute the event (docs/experiments.md) and write it to the log: (the id attributed
        to, whether the log has it; True without a log)."""
        if self._log is None:
            return "", True
        attributed = ""
        if request.recommendation_id:
            # The caller named the list: it counts within the window after the list was served
            # (a small tolerance for clocks); older, the event is kept but not attributed.
            minted = minted_ms / 1000
            if minted - self._settings.data.future_tolerance_s <= ts <= minted + self._log.window_s:
                attributed = request.recommendation_id
        elif event_type in ATTRIBUTED_EVENTS:
            attributed = self._log.attribute(member_id, item_id, ts)
        logged = self._log.event(
            member_id,
            {
                "member_id": member_id,
                "item_id": item_id,
                "event_type": event_type,
                "ts": ts,
                "channel": channel,
                "quantity": request.quantity or 1,
                "amount": request.amount,
                "recommendation_id": attributed,
                "variant": variant,
            },
        )
        return attributed, logged

    def _knows(self, member_id: str, item_id: str) -> bool:
        """Whether the model serving ``member_id`` knows ``item_id``: trained, or created in the
        live catalog since (its event counts in the member's real-time vector); False while no
        model is loaded."""
        try:
            _variant, model = self._models.for_member(member_id)
        except ModelUnavailable:
            return False
        return item_id in model.items or self._engine.catalog.view(model).row(item_id) is not None

    def ReloadModel(
        self, request: recommender_pb2.ReloadModelRequest, context: grpc.ServicerContext
    ) -> recommender_pb2.ReloadModelResponse:
        t0 = time.perf_counter()
        results = self._models.reload(request.model_uri or None)
        if self._broadcast is not None:
            # The other worker processes and replicas reload too (they ignore our own notice).
            self._broadcast.publish(request.model_uri or None)
        changed = any(c for _, _, c in results)
        _, model = self._models.default()
        log.info(
            "event=reload_rpc uri=%s changed=%s version=%s",
            request.model_uri or "(configured)",
            changed,
            model.version,
        )
        self._observe("ReloadModel", t0, "admin", "all")
        return recommender_pb2.ReloadModelResponse(model_version=model.version, changed=changed)

    def GetModelInfo(
        self, request: recommender_pb2.GetModelInfoRequest, context: grpc.ServicerContext
    ) -> recommender_pb2.ModelInfo:
        _variant, model = self._models.default()
        m = model.manifest
        counts = model.info_counts()
        return recommender_pb2.ModelInfo(
            model_version=model.version,
            schema_version=m.schema_version,
            training_cutoff=m.training_cutoff,
            data_fingerprint=m.data_fingerprint,
            loaded_at=model.bundle.loaded_at,
            metrics={k: float(v) for k, v in m.metrics.items()},
            members=counts["members"],
            products=counts["products"],
            content=counts["content"],
            variants={name: sm.version for name, sm in self._models.snapshot().items()},
            family=recommender_pb2.ModelFamily(
                family=m.family.family,
                neighbours=m.family.neighbours or 0,
                als_weight=1.0 - m.family.knn_weight,
                trend_weight=m.family.trend_weight,
                trend_days=m.family.trend_days or 0,
            ),
        )
