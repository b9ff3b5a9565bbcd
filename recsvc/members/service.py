"""The ``recsvc.v1.Members`` gRPC servicer: member profiles and audiences (docs/profiles.md).

Errors are ``recsvc.errors`` types; the server's interceptor maps them to status codes. A Redis
outage is not an error here: the bundle parts of a profile are answered and ``live.available``
is false; an audience with a consent filter cannot be streamed without Redis
(``StoreUnavailable``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Container, Iterator

import grpc

from recsvc.errors import InvalidArgument, NotFound, StoreUnavailable
from recsvc.members.audience import AudienceResolver, StreamTally, match, parse_query, stream_ids
from recsvc.members.profile import LiveParts, fill_profile
from recsvc.members.sendtime import SendTimes
from recsvc.members.view import ProfileView
from recsvc.models.served import ServedModels
from recsvc.outreach.decision import Decision, OutreachAsk
from recsvc.outreach.member_records import MemberOutreachState, read_consents, read_member_state
from recsvc.outreach.policy import Policy
from recsvc.outreach.throttle import Throttle
from recsvc.realtime import RealtimeStore
from recsvc.server.request_checks import check_id
from recsvc.settings import Settings
from recsvc.v1 import members_pb2, members_pb2_grpc

log = logging.getLogger(__name__)

BATCH = 1000  # member ids per stream message
# What the throttle answers for marketing on a channel without consent (decide.lua's first rule).
NO_CONSENT = Decision(False, "NO_CONSENT", "no recorded consent")


class MembersServicer(members_pb2_grpc.MembersServicer):
    def __init__(
        self,
        settings: Settings,
        audiences: AudienceResolver,
        throttle: Throttle,
        realtime: RealtimeStore | None,
        forgotten: Callable[[], Container[str]],
    ) -> None:
        self._settings = settings
        self._audiences = audiences
        self._throttle = throttle
        self._realtime = realtime
        self._forgotten = forgotten
        self._send_times: tuple[ProfileView, Policy, SendTimes] | None = None

    def send_times(self, view: ProfileView) -> SendTimes:
        """One ``SendTimes`` per (bundle, policy) pair; rebuilt when either changes."""
        policy = self._throttle.policies.current()
        cached = self._send_times
        if cached is not None and cached[0] is view and cached[1] is policy:
            return cached[2]
        made = SendTimes(policy, view.spec.segment_hours)
        self._send_times = (view, policy, made)
        return made

    def _not_found(self, member_id: str) -> NotFound:
        # Erased and unknown members get the same answer: that a member asked to be erased is
        # itself personal data (docs/privacy.md).
        return NotFound(
            f"member {member_id!r} has no profile in the served bundle", reason="MEMBER_NOT_FOUND"
        )

    def GetMemberProfile(
        self, request: members_pb2.GetMemberProfileRequest, context: grpc.ServicerContext
    ) -> members_pb2.MemberProfile:
        member_id = check_id(request.member_id, "member_id", self._settings.data)
        view = self._audiences.view()
        row = view.model.members.row(member_id)
        if row is None or member_id in self._forgotten():
            raise self._not_found(member_id)
        live = self._live(member_id)
        if live.state is not None and live.state.suppressed:
            raise self._not_found(member_id)
        msg = members_pb2.MemberProfile()
        fill_profile(
            msg,
            view,
            row,
            member_id,
            training=self._settings.training,
            send_times=self.send_times(view),
            default_zone=self._throttle.policies.current().default_timezone,
            live=live,
            now_ms=self._throttle.now_ms(),
        )
        return msg

    def _live(self, member_id: str) -> LiveParts:
        # the recent-events read goes out first and is read last, overlapping the other two
        pending = self._realtime.start_recent(member_id) if self._realtime is not None else None
        try:
            state, checks = self._outreach_state(member_id)
        finally:
            recent = pending.result() if pending is not None else None  # always: the thread's connection
        return LiveParts(state=state, checks=checks, recent=recent)

    def _outreach_state(
        self, member_id: str
    ) -> tuple[MemberOutreachState | None, dict[str, Decision] | None]:
        try:
            state = read_member_state(self._throttle, member_id)
        except StoreUnavailable:
            return None, None
        if state.suppressed:
            return state, None
        # Only channels with consent need the throttle's dry run (caps, fatigue, quiet hours,
        # blocks); without consent marketing is refused whatever else holds, and most members have
        # consent on few channels, so this usually saves a round trip.
        every = self._throttle.policies.current().channels
        channels = [c for c in every if state.consent.get(c)]
        checks = {c: NO_CONSENT for c in every if c not in channels}
        if channels:
            decisions = self._throttle.decide_many(
                [OutreachAsk(member_id=member_id, channel=c) for c in channels], reserve=False
            )
            if any(d.reason == "THROTTLE_UNAVAILABLE" for d in decisions):
                return state, None
            checks |= dict(zip(channels, decisions, strict=True))
        return state, checks

    def FindMembers(
        self, request: members_pb2.FindMembersRequest, context: grpc.ServicerContext
    ) -> Iterator[members_pb2.FindMembersResponse]:
        if request.limit < 0:
            raise InvalidArgument("limit must be >= 0", reason="INVALID_LIMIT")
        view = self._audiences.view()
        audience = parse_query(request.query, view, self._throttle.policies.current().channels)
        mask = match(view, audience, self._forgotten())
        count = members_pb2.AudienceCount(
            count=int(mask.sum()), upper_bound=bool(audience.consent_channel), bundle_id=view.bundle_id
        )
        count.data_as_of.FromMilliseconds(view.data_as_of_ms)
        yield members_pb2.FindMembersResponse(count=count)
        if request.count_only:
            return
        tally = StreamTally()
        batch = members_pb2.MemberBatch()
        truncated = False
        consents = lambda ids, ch: read_consents(self._throttle, ids, ch)  # noqa: E731
        forgotten = self._forgotten()
        for member_id in stream_ids(view, audience, mask, consents, tally, forgotten=forgotten):
            if request.limit and tally.streamed > request.limit:
                tally.streamed -= 1
                truncated = True
                break
            batch.member_ids.append(member_id)
            if len(batch.member_ids) >= BATCH:
                yield members_pb2.FindMembersResponse(members=batch)
                batch = members_pb2.MemberBatch()
        if batch.member_ids:
            yield members_pb2.FindMembersResponse(members=batch)
        yield members_pb2.FindMembersResponse(
            summary=members_pb2.AudienceSummary(
                streamed=tally.streamed, left_out_no_consent=tally.left_out, truncated=truncated
            )
        )


def build_members_servicer(
    settings: Settings,
    models: ServedModels,
    throttle: Throttle,
    realtime: RealtimeStore | None,
    forgotten: Callable[[], Container[str]],
) -> tuple[MembersServicer, AudienceResolver]:
    audiences = AudienceResolver(models, forgotten, lambda: throttle.policies.current().channels)
    return MembersServicer(settings, audiences, throttle, realtime, forgotten), audiences
