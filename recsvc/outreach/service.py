"""The ``recsvc.v1.Outreach`` gRPC servicer: validates requests, asks the throttle, explains.

Long on purpose: one servicer, one method per Outreach RPC, each thin over the throttle and
planning.

Errors are ``recsvc.errors`` types; the server's interceptor maps them to status codes. A store
outage is not an error for decisions (they answer THROTTLE_UNAVAILABLE); for writes (cancel,
feedback, consent) it is ``StoreUnavailable``.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator
from typing import Any

import grpc

from recsvc.bounds import timestamp_field_ms
from recsvc.breaker import CircuitBreaker
from recsvc.errors import InvalidArgument
from recsvc.outreach import ask_checks as v
from recsvc.outreach.decision import (
    Decision,
    OutreachAsk,
    scheduled_at,
    scheduled_extra,
    split_reservation_id,
)
from recsvc.outreach.holdout import HOLDOUT, Holdouts, HoldoutThrottle, check_holdout_share
from recsvc.outreach.member_records import read_consents
from recsvc.outreach.next_best import next_best_outreach
from recsvc.outreach.planning import PlannedDecision, plan_campaign, plan_idempotency_key
from recsvc.outreach.policy import PolicyStore
from recsvc.outreach.ports import RecommendationPort
from recsvc.outreach.throttle import Clock, Throttle
from recsvc.redis_client import RedisClient, with_timeout
from recsvc.security.auth import require_role
from recsvc.security.privacy import Pseudonymizer
from recsvc.settings import Settings
from recsvc.v1 import outreach_pb2, outreach_pb2_grpc

logger = logging.getLogger(__name__)


_REASON_CODES = dict(outreach_pb2.ReasonCode.items())
DAY_MS = 86_400_000
# How far ahead at_best_time looks for a good time (the next window opens within a day; waiting
# out a cap or a fatigue gap may take longer).
BEST_TIME_HORIZON_MS = 8 * DAY_MS
MAX_CAMPAIGN_WINDOW_MS = 7 * DAY_MS


def decision_message(d: Decision, send_at_ms: int = 0) -> outreach_pb2.OutreachDecision:
    msg = outreach_pb2.OutreachDecision()
    fill_decision(msg, d, send_at_ms)
    return msg


def fill_decision(msg: outreach_pb2.OutreachDecision, d: Decision, send_at_ms: int = 0) -> None:
    """Set ``msg`` (e.g. a field of a batch) in place: PlanCampaign fills 500 per message, and
    building a separate message to copy in cost twice as much."""
    msg.allowed = d.allowed
    msg.reason = _REASON_CODES[d.reason]
    if d.detail:
        msg.detail = d.detail
    if d.reservation_id:
        msg.reservation_id = d.reservation_id
    if d.replayed:
        msg.replayed = True
    if d.next_allowed_ms > 0:
        msg.next_allowed_at.FromMilliseconds(d.next_allowed_ms)
    if send_at_ms > 0 and d.allowed:
        # a time to send at: a refusal (NO_CONSENT, caps that do not free up in time) has none
        msg.send_at.FromMilliseconds(send_at_ms)


def batch_message(planned: list[PlannedDecision]) -> outreach_pb2.PlanCampaignBatch:
    batch = outreach_pb2.PlanCampaignBatch()
    add = batch.decisions.add
    for p in planned:
        fill_decision(add(member_id=p.member_id).decision, p.decision, p.send_at_ms)
    return batch


class OutreachServicer(outreach_pb2_grpc.OutreachServicer):
    def __init__(
        self,
        throttle: Throttle,
        recommendations: RecommendationPort,
        *,
        max_id_length: int = 64,
        plan_chunk_size: int = 500,
        max_plan_members: int = 100_000,
        next_best_candidates: int = 50,
        global_control_share: float = 0.0,
        event_log: Any | None = None,
    ) -> None:
        self.throttle = throttle
        self._recs = recommendations
        self._max_id = max_id_length
        self._chunk = plan_chunk_size
        self._max_plan = max_plan_members
        self._candidates = next_best_candidates
        # PlanCampaign's audience queries (recsvc.members.audience.AudienceResolver); set by the
        # composition root when the Members service is built, None = audience queries refused.
        self.audiences: Any | None = None
        # Best send times (recsvc.members.schedule.SendScheduler), set with the audiences.
        self.scheduler: Any | None = None
        self._global_share = global_control_share
        # recsvc.eventlog.log.EventLog: reserving decisions and sends go to the durable log
        self._log = event_log

    def _decider(self, campaign_id: str, holdout_share: float) -> Any:
        """The throttle, behind the holdouts when there are any (recsvc.outreach.holdout)."""
        share = check_holdout_share(holdout_share, campaign_id)
        if not share and not self._global_share:
            return self.throttle
        return HoldoutThrottle(self.throttle, Holdouts(self._global_share, share))

    def _record(
        self, asks: list[OutreachAsk], decisions: list[Decision], items: list[str] | None = None
    ) -> None:
        """Log reserving decisions (not replays: the first one is logged) and, for each send, an
        impression of its campaign (the reservation id names it)."""
        if self._log is None:
            return
        out: list[tuple[str, str, dict[str, Any]]] = []
        for ask, d in zip(asks, decisions, strict=True):
            if d.replayed:
                continue
            held = d.reason == HOLDOUT
            # the reservation's token only: the id names the member in clear after its dot, and
            # the log names members by their pseudonym alone (docs/experiments.md)
            logged_id = split_reservation_id(d.reservation_id)[0] if d.reservation_id else ""
            out.append(
                (
                    "decision",
                    ask.member_id,
                    {
                        "campaign": ask.campaign_id,
                        "channel": ask.channel,
                        "allowed": d.allowed,
                        "reason": d.reason,
                        "reservation_id": logged_id,
                        "mode": "reserve",
                        "would_allow": (d.extra == "would_allow") if held else d.allowed,
                    },
                )
            )
            if d.allowed and d.reservation_id:
                out.append(
                    (
                        "impression",
                        ask.member_id,
                        {
                            "id": logged_id,
                            "scene": "outreach",
                            "channel": ask.channel,
                            "items": items or [],
                            "source": "outreach",
                            "campaign": ask.campaign_id,
                        },
                    )
                )
        self._log.write_now(out)

    # ---------------------------------------------------------------- helpers
    def _ask(self, req: Any, idempotency_key: str = "") -> OutreachAsk:
        policy = self.throttle.policies.current()
        return OutreachAsk(
            member_id=v.check_id(req.member_id, "member_id", self._max_id),
            channel=v.check_channel(req.channel, policy),
            campaign_id=v.check_id(req.campaign_id, "campaign_id", self._max_id, required=False),
            message_class=v.message_class(req.message_class),
            priority=v.check_priority(req.priority),
            idempotency_key=v.check_idempotency_key(idempotency_key),
        )

    # ---------------------------------------------------------------- RPCs
    def CheckOutreach(
        self, request: outreach_pb2.OutreachRequest, context: grpc.ServicerContext
    ) -> outreach_pb2.OutreachDecision:
        ask = self._ask(request)
        if request.at_best_time:
            return self._at_best_time(ask, reserve=False, holdout_share=request.holdout_share)
        return decision_message(self.decide(ask, reserve=False, holdout_share=request.holdout_share))

    def decide(self, ask: OutreachAsk, *, reserve: bool, holdout_share: float = 0.0) -> Decision:
        """One decision as the API makes it: behind the global control group and the campaign's
        holdout, and a reserving one logged. ``recsvc outreach check`` decides through this too."""
        decider = self._decider(ask.campaign_id, holdout_share)
        if not reserve:
            return decider.check(ask)  # type: ignore[no-any-return]
        decision: Decision = decider.reserve(ask)
        self._record([ask], [decision])
        return decision

    def ReserveOutreach(
        self, request: outreach_pb2.ReserveOutreachRequest, context: grpc.ServicerContext
    ) -> outreach_pb2.OutreachDecision:
        ask = self._ask(request, request.idempotency_key)
        if request.at_best_time:
            return self._at_best_time(ask, reserve=True, holdout_share=request.holdout_share)
        return decision_message(self.decide(ask, reserve=True, holdout_share=request.holdout_share))

    def _scheduler(self) -> Any:
        if self.scheduler is None:
            raise InvalidArgument("best send times need the Members service", reason="NO_SEND_TIMES")
        return self.scheduler

    def _at_best_time(
        self, ask: OutreachAsk, *, reserve: bool, holdout_share: float = 0.0
    ) -> outreach_pb2.OutreachDecision:
        """Decide for the member's next good send time: their best window's next opening; when
        caps or quiet hours refuse it, the next opening after the time they free up (a few tries),
        so the answer is a time that would be allowed, or the refusal that stands."""
        scheduler = self._scheduler()
        decider = self._decider(ask.campaign_id, holdout_share)
        now = self.throttle.now_ms()
        horizon = now + BEST_TIME_HORIZON_MS
        at = scheduler.times([ask.member_id], now, horizon)[0]
        decision = decider.check(dataclasses.replace(ask, at_ms=at))
        for _ in range(3):
            if decision.allowed or not 0 < decision.next_allowed_ms <= horizon:
                break
            at = scheduler.times([ask.member_id], decision.next_allowed_ms, horizon)[0]
            decision = decider.check(dataclasses.replace(ask, at_ms=at))
        if reserve:
            timed = dataclasses.replace(ask, at_ms=at, extra=ask.extra or scheduled_extra(at))
            decision = decider.reserve(timed)
            self._record([timed], [decision])
            at = scheduled_at(decision, at)  # a replay answers the time it reserved
        return decision_message(decision, at)

    def CancelOutreach(
        self, request: outreach_pb2.CancelOutreachRequest, context: grpc.ServicerContext
    ) -> outreach_pb2.CancelOutreachResponse:
        token, member_id = v.check_reservation_id(request.reservation_id, self._max_id)
        return outreach_pb2.CancelOutreachResponse(cancelled=self.throttle.cancel(f"{token}.{member_id}"))

    def RecordOutreachFeedback(
        self, request: outreach_pb2.OutreachFeedbackRequest, context: grpc.ServicerContext
    ) -> outreach_pb2.OutreachFeedbackResponse:
        member_id = request.member_id
        if request.reservation_id:
            _, rid_member = v.check_reservation_id(request.reservation_id, self._max_id)
            if member_id and v.check_id(member_id, "member_id", self._max_id) != rid_member:
                raise InvalidArgument(
                    "member_id does not match the reservation_id", reason="RESERVATION_OF_ANOTHER_MEMBER"
                )
            member_id = rid_member
        member_id = v.check_id(member_id, "member_id", self._max_id)
        channel = v.check_channel(request.channel, self.throttle.policies.current())
        kind = v.feedback_kind(request.feedback)
        at_ms = timestamp_field_ms(request.ts, "ts") if request.HasField("ts") else None
        self.throttle.feedback(member_id, channel, kind, at_ms)  # checks the window (recsvc.bounds)
        return outreach_pb2.OutreachFeedbackResponse()

    def UpdateConsent(
        self, request: outreach_pb2.UpdateConsentRequest, context: grpc.ServicerContext
    ) -> outreach_pb2.UpdateConsentResponse:
        member_id = v.check_id(request.member_id, "member_id", self._max_id)
        channel = v.check_channel(request.channel, self.throttle.policies.current())
        v.check_id(request.source, "source", self._max_id, required=False)
        self.throttle.set_consent(member_id, channel, request.granted)
        logger.info(
            "consent updated channel=%s granted=%s source=%s", channel, request.granted, request.source
        )
        return outreach_pb2.UpdateConsentResponse()

    def PlanCampaign(
        self, request: outreach_pb2.PlanCampaignRequest, context: grpc.ServicerContext
    ) -> Iterator[outreach_pb2.PlanCampaignBatch]:
        policy = self.throttle.policies.current()
        channel = v.check_channel(request.channel, policy)
        campaign = v.check_id(request.campaign_id, "campaign_id", self._max_id)
        template = OutreachAsk(
            member_id="",
            channel=channel,
            campaign_id=campaign,
            message_class=v.message_class(request.message_class),
            priority=v.check_priority(request.priority),
        )
        if request.reserve:
            # Reserving is idempotent per (member, plan): a caller whose stream broke runs the
            # same request again and gets the first run's decisions and reservation ids back
            # (replayed), not DUPLICATE_CAMPAIGN for members it never heard about. '|' cannot
            # appear in a caller's own idempotency keys, so the two never collide.
            scheduled = request.HasField("window_start") or request.HasField("window_end")
            template = dataclasses.replace(
                template, idempotency_key=plan_idempotency_key(template, scheduled)
            )
        decider = self._decider(campaign, request.holdout_share)
        if request.limit < 0:
            raise InvalidArgument("limit must be >= 0", reason="INVALID_LIMIT")
        given = [n for n in ("member_ids", "segment", "audience") if _has(request, n)]
        if len(given) > 1:
            raise InvalidArgument(
                f"give one of member_ids, segment or audience, not both {given[0]} and {given[1]}",
                reason="INVALID_AUDIENCE_SOURCE",
            )
        members: Iterator[str]
        if request.member_ids:
            if len(request.member_ids) > self._max_plan:
                raise InvalidArgument(
                    f"{len(request.member_ids)} member_ids is more than {self._max_plan}; "
                    "use a segment or split the audience",
                    reason="TOO_MANY_MEMBERS",
                )
            ids = [v.check_id(m, "member_ids[]", self._max_id) for m in request.member_ids]
            members = iter(ids)
        elif request.segment:
            v.check_id(request.segment, "segment", self._max_id)
            members = self._recs.segment_members(request.segment)
        elif request.HasField("audience"):
            # an audience query reads profiles (interests, value, lifecycle): FindMembers' data,
            # whose role a campaign tool holds too or does not get it from here either
            require_role("members", "PlanCampaign's audience queries")
            if self.audiences is None:
                raise InvalidArgument("audience queries need the Members service", reason="NO_AUDIENCES")
            # resolved here from the served bundle: the caller never ships the ids
            members = self.audiences.members(
                request.audience, lambda ids, ch: read_consents(self.throttle, ids, ch)
            )
        else:
            raise InvalidArgument(
                "member_ids, segment or audience is required", reason="INVALID_AUDIENCE_SOURCE"
            )
        schedule = self._campaign_window(request)
        for planned in plan_campaign(
            decider,
            members,
            template,
            reserve=request.reserve,
            chunk_size=self._chunk,
            limit=request.limit,
            schedule=schedule,
        ):
            if request.reserve:
                self._record(
                    [dataclasses.replace(template, member_id=p.member_id) for p in planned],
                    [p.decision for p in planned],
                )
            yield batch_message(planned)

    def _campaign_window(self, request: outreach_pb2.PlanCampaignRequest) -> Any:
        """None (decide for now), or each member's best time inside [window_start, window_end]."""
        has_start, has_end = request.HasField("window_start"), request.HasField("window_end")
        if not has_start and not has_end:
            return None
        if has_start != has_end:
            raise InvalidArgument(
                "give both window_start and window_end, or neither", reason="INVALID_WINDOW"
            )
        start = timestamp_field_ms(request.window_start, "window_start")
        end = timestamp_field_ms(request.window_end, "window_end")
        now = self.throttle.now_ms()
        if end <= start or end <= now:
            raise InvalidArgument(
                "window_end must be after window_start and in the future", reason="INVALID_WINDOW"
            )
        if end - start > MAX_CAMPAIGN_WINDOW_MS or start > now + MAX_CAMPAIGN_WINDOW_MS:
            raise InvalidArgument(
                "a campaign window is at most 7 days long and starts within 7 days", reason="INVALID_WINDOW"
            )
        scheduler = self._scheduler()
        begin = max(start, now)
        return lambda ids: scheduler.times(ids, begin, end)

    def NextBestOutreach(
        self, request: outreach_pb2.NextBestOutreachRequest, context: grpc.ServicerContext
    ) -> outreach_pb2.NextBestOutreachResponse:
        policy = self.throttle.policies.current()
        ask = OutreachAsk(
            member_id=v.check_id(request.member_id, "member_id", self._max_id),
            channel=v.check_channel(request.channel, policy),
            campaign_id=v.check_id(request.campaign_id, "campaign_id", self._max_id, required=False),
            idempotency_key=v.check_idempotency_key(request.idempotency_key),
        )
        kind = v.item_kind(request.kind)
        decider = self._decider(ask.campaign_id, request.holdout_share)
        found = next_best_outreach(decider, self._recs, ask, kind, self._candidates)
        self._record([ask], [found.decision], [found.item.item_id] if found.item is not None else None)
        resp = outreach_pb2.NextBestOutreachResponse(decision=decision_message(found.decision))
        if found.item is not None:
            resp.has_item = True
            resp.item.CopyFrom(found.item)
        return resp


def _has(request: outreach_pb2.PlanCampaignRequest, name: str) -> bool:
    if name == "audience":
        return request.HasField("audience")
    return bool(getattr(request, name))


def throttle_client(client: RedisClient, timeout_s: float) -> RedisClient:
    """A client on the same server(s) whose socket timeouts are the throttle's and which does not
    retry, so a slow Redis fails a decision closed within ``timeout_s`` instead of stalling it."""
    return with_timeout(client, timeout_s)


def build_throttle(
    settings: Settings,
    redis_client: RedisClient,
    clock: Clock | None = None,
    timeout_s: float | None = None,
) -> Throttle:
    """``timeout_s`` overrides ``outreach.redis_timeout_ms`` (e.g. for bulk imports from the CLI)."""
    o = settings.outreach
    extra: dict[str, Any] = {"clock": clock} if clock is not None else {}
    return Throttle(
        throttle_client(redis_client, timeout_s if timeout_s is not None else o.redis_timeout_ms / 1000),
        PolicyStore(o.policy_file, o.policy_reload_s, event_channels=settings.data.event_channels),
        key_prefix=settings.redis.key_prefix,
        transactional_when_unavailable=o.transactional_when_unavailable,
        # The same keyed pseudonym as the audit log and the rest of recsvc's logs.
        pseudonymize=Pseudonymizer(settings.security.pseudonym_key),
        breaker=CircuitBreaker("outreach", o.breaker_failures, o.breaker_reset_ms / 1000),
        wait_replicas=o.wait_replicas,
        wait_timeout_ms=o.wait_timeout_ms,
        **extra,
    )


def build_outreach_servicer(
    settings: Settings,
    redis_client: RedisClient,
    recommendations: RecommendationPort,
    clock: Clock | None = None,
    event_log: Any | None = None,
) -> OutreachServicer:
    """Register with ``recsvc.v1.outreach_pb2_grpc.add_OutreachServicer_to_server``.
    Raises ConfigError when the policy file is bad at start-up."""
    o = settings.outreach
    return OutreachServicer(
        build_throttle(settings, redis_client, clock),
        recommendations,
        max_id_length=settings.data.max_id_length,
        plan_chunk_size=o.plan_pipeline_size,
        max_plan_members=o.max_plan_members,
        next_best_candidates=o.next_best_candidates,
        global_control_share=o.global_control_share,
        event_log=event_log,
    )
