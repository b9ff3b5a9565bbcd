"""The Outreach service over a real gRPC server on a free port, with the project's real error
interceptor, a real redis-server and a fake recommender port."""

from __future__ import annotations

import re
from collections.abc import Iterator
from concurrent import futures
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
import redis
from outreach_support import CONSENTED, FakeRecommendations, WalkClock, local

from recsvc.localstack import LocalRedis as RedisServer
from recsvc.outreach.service import OutreachServicer, build_outreach_servicer
from recsvc.server.interceptors import ErrorInterceptor
from recsvc.settings import load_settings
from recsvc.v1 import common_pb2, outreach_pb2, outreach_pb2_grpc

pytestmark = pytest.mark.integration
pb = outreach_pb2


@dataclass
class Harness:
    stub: outreach_pb2_grpc.OutreachStub
    clock: WalkClock
    recs: FakeRecommendations
    servicer: OutreachServicer
    target: str
    redis_url: str

    def consent(self, member: str) -> None:
        for ch in CONSENTED:
            self.stub.UpdateConsent(pb.UpdateConsentRequest(member_id=member, channel=ch, granted=True))


@contextmanager
def serve(redis_url: str) -> Iterator[Harness]:
    settings = load_settings(
        overrides={
            "redis": {"url": redis_url},
            "outreach": {"plan_pipeline_size": 64, "max_plan_members": 100},
        }
    )
    clock = WalkClock(local(2026, 6, 1, 10))
    recs = FakeRecommendations(
        products=[f"P{n}" for n in range(1, 6)],
        content=["A1", "A2"],
        bought={"M1": {"P1"}},
        segments={"at_risk": 1000},
    )
    servicer = build_outreach_servicer(settings, redis.Redis.from_url(redis_url), recs, clock=clock)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4), interceptors=[ErrorInterceptor()])
    outreach_pb2_grpc.add_OutreachServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield Harness(
            outreach_pb2_grpc.OutreachStub(channel), clock, recs, servicer, f"127.0.0.1:{port}", redis_url
        )
    finally:
        channel.close()
        server.stop(grace=0)


@pytest.fixture
def harness(redis_url: str) -> Iterator[Harness]:
    with serve(redis_url) as h:
        yield h


def test_check_reserve_cancel_over_grpc(harness: Harness) -> None:
    s = harness.stub
    d = s.CheckOutreach(pb.OutreachRequest(member_id="M1", channel="app_push", campaign_id="c1"))
    assert (d.allowed, d.reason) == (False, pb.NO_CONSENT)
    harness.consent("M1")
    req = pb.ReserveOutreachRequest(
        member_id="M1", channel="app_push", campaign_id="c1", idempotency_key="k1"
    )
    first = s.ReserveOutreach(req)
    assert first.allowed and first.reason == pb.ALLOWED and first.reservation_id and not first.replayed
    again = s.ReserveOutreach(req)
    assert again.replayed and again.reservation_id == first.reservation_id
    d = s.CheckOutreach(pb.OutreachRequest(member_id="M1", channel="wecom", campaign_id="c2"))
    assert d.reason == pb.MIN_GAP and d.HasField("next_allowed_at")
    assert d.next_allowed_at.ToMilliseconds() == harness.clock.ms() + 4 * 3_600_000
    assert s.CancelOutreach(pb.CancelOutreachRequest(reservation_id=first.reservation_id)).cancelled
    assert s.CheckOutreach(pb.OutreachRequest(member_id="M1", channel="wecom", campaign_id="c2")).allowed


def test_a_reservation_id_spelt_in_nfd_names_the_same_reservation(harness: Harness) -> None:
    import unicodedata

    s = harness.stub
    member = "Café-7"
    harness.consent(member)
    first = s.ReserveOutreach(pb.ReserveOutreachRequest(member_id=member, channel="sms", campaign_id="c9"))
    assert first.allowed
    nfd = unicodedata.normalize("NFD", first.reservation_id)
    assert nfd != first.reservation_id
    s.RecordOutreachFeedback(
        pb.OutreachFeedbackRequest(member_id=member, reservation_id=nfd, channel="sms", feedback=pb.OPENED)
    )  # the NFC member beside its NFD reservation: one member, no RESERVATION_OF_ANOTHER_MEMBER
    assert s.CancelOutreach(pb.CancelOutreachRequest(reservation_id=nfd)).cancelled


def test_feedback_over_grpc_blocks_and_fatigues(harness: Harness) -> None:
    s = harness.stub
    harness.consent("M2")
    d = s.ReserveOutreach(pb.ReserveOutreachRequest(member_id="M2", channel="sms", campaign_id="c1"))
    # the member is taken from the reservation id when not given
    s.RecordOutreachFeedback(
        pb.OutreachFeedbackRequest(reservation_id=d.reservation_id, channel="sms", feedback=pb.UNSUBSCRIBED)
    )
    harness.clock.advance(days=1)
    d = s.CheckOutreach(pb.OutreachRequest(member_id="M2", channel="sms", campaign_id="c2"))
    assert d.reason == pb.BLOCKED_UNSUBSCRIBED
    harness.consent("M2b")
    for _ in range(3):
        s.RecordOutreachFeedback(
            pb.OutreachFeedbackRequest(member_id="M2b", channel="wecom", feedback=pb.IGNORED)
        )
    assert s.ReserveOutreach(
        pb.ReserveOutreachRequest(member_id="M2b", channel="wecom", campaign_id="c3")
    ).allowed
    harness.clock.advance(hours=5)
    d = s.CheckOutreach(pb.OutreachRequest(member_id="M2b", channel="app_push", campaign_id="c4"))
    assert d.reason == pb.FATIGUE
    s.RecordOutreachFeedback(
        pb.OutreachFeedbackRequest(member_id="M2b", channel="wecom", feedback=pb.CLICKED)
    )
    assert s.CheckOutreach(pb.OutreachRequest(member_id="M2b", channel="app_push", campaign_id="c4")).allowed


def _code(call: object) -> grpc.StatusCode:
    assert isinstance(call, grpc.RpcError)
    return call.code()  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    ("method", "request_", "needle"),
    [
        ("CheckOutreach", pb.OutreachRequest(member_id="", channel="app_push"), "member_id is required"),
        ("CheckOutreach", pb.OutreachRequest(member_id="M1", channel="fax"), "unknown channel"),
        ("CheckOutreach", pb.OutreachRequest(member_id="M1", channel=""), "channel is required"),
        ("CheckOutreach", pb.OutreachRequest(member_id="M" * 65, channel="sms"), "longer than 64"),
        ("CheckOutreach", pb.OutreachRequest(member_id="M}1", channel="sms"), "may contain only letters"),
        (
            "CheckOutreach",
            pb.OutreachRequest(member_id="M1", channel="sms", message_class=pb.MessageClass.ValueType(7)),
            "message_class",
        ),
        ("CheckOutreach", pb.OutreachRequest(member_id="M1", channel="sms", priority=10), "priority"),
        (
            "ReserveOutreach",
            pb.ReserveOutreachRequest(member_id="M1", channel="sms", idempotency_key="k" * 129),
            "128",
        ),
        ("CancelOutreach", pb.CancelOutreachRequest(reservation_id=""), "reservation_id is required"),
        ("CancelOutreach", pb.CancelOutreachRequest(reservation_id="nope.M1"), "not one this service issued"),
        (
            "RecordOutreachFeedback",
            pb.OutreachFeedbackRequest(member_id="M1", channel="sms"),
            "feedback must be",
        ),
        (
            "UpdateConsent",
            pb.UpdateConsentRequest(member_id="M1", channel="telegram", granted=True),
            "unknown channel",
        ),
        (
            "NextBestOutreach",
            pb.NextBestOutreachRequest(member_id="M1", channel="sms", kind=common_pb2.ItemKind.ValueType(9)),
            "unknown kind",
        ),
    ],
)
def test_bad_requests_are_invalid_argument(
    harness: Harness, method: str, request_: object, needle: str
) -> None:
    with pytest.raises(grpc.RpcError) as err:
        getattr(harness.stub, method)(request_)
    assert _code(err.value) == grpc.StatusCode.INVALID_ARGUMENT
    assert needle in err.value.details()  # type: ignore[attr-defined]
    _named(err.value.details())  # type: ignore[attr-defined]


def _named(details: str) -> None:
    """A refusal starts with its own stable reason code, not the generic status name."""
    reason = details.partition(":")[0]
    assert reason.isupper() and " " not in reason and reason != "INVALID_ARGUMENT", details


@pytest.mark.parametrize(
    ("request_", "code", "needle"),
    [
        (
            pb.PlanCampaignRequest(channel="sms", campaign_id="c"),
            grpc.StatusCode.INVALID_ARGUMENT,
            "required",
        ),
        (
            pb.PlanCampaignRequest(member_ids=["a"], segment="at_risk", channel="sms", campaign_id="c"),
            grpc.StatusCode.INVALID_ARGUMENT,
            "not both",
        ),
        (
            pb.PlanCampaignRequest(member_ids=[f"m{n}" for n in range(101)], channel="sms", campaign_id="c"),
            grpc.StatusCode.INVALID_ARGUMENT,
            "more than 100",
        ),
        (
            pb.PlanCampaignRequest(member_ids=["a", ""], channel="sms", campaign_id="c"),
            grpc.StatusCode.INVALID_ARGUMENT,
            "member_ids[]",
        ),
        (
            pb.PlanCampaignRequest(member_ids=["a"], channel="sms"),
            grpc.StatusCode.INVALID_ARGUMENT,
            "campaign_id",
        ),
        (
            pb.PlanCampaignRequest(segment="nobody", channel="sms", campaign_id="c"),
            grpc.StatusCode.NOT_FOUND,
            "nobody",
        ),
    ],
)
def test_bad_plans_are_refused_with_named_status(
    harness: Harness, request_: pb.PlanCampaignRequest, code: grpc.StatusCode, needle: str
) -> None:
    with pytest.raises(grpc.RpcError) as err:
        list(harness.stub.PlanCampaign(request_))
    assert _code(err.value) == code
    assert needle in err.value.details()  # type: ignore[attr-defined]
    _named(err.value.details())  # type: ignore[attr-defined]


def _decisions(batches: Iterator[pb.PlanCampaignBatch]) -> list[pb.PlanCampaignDecision]:
    return [d for batch in batches for d in batch.decisions]


def test_plan_campaign_streams_a_segment(harness: Harness) -> None:
    s = harness.stub
    for n in range(0, 1000, 3):
        s.UpdateConsent(pb.UpdateConsentRequest(member_id=f"at_risk-{n:07d}", channel="wecom", granted=True))
    stream = s.PlanCampaign(
        pb.PlanCampaignRequest(segment="at_risk", channel="wecom", campaign_id="winback", reserve=True)
    )
    batches = list(stream)
    # one stream message per pipelined chunk (plan_pipeline_size 64), in audience order
    assert [len(b.decisions) for b in batches] == [64] * 15 + [40]
    decided = _decisions(iter(batches))
    assert [p.member_id for p in decided] == [f"at_risk-{n:07d}" for n in range(1000)]
    first = decided[0]
    assert first.decision.allowed and first.decision.reservation_id.endswith(".at_risk-0000000")
    allowed = [p.member_id for p in decided if p.decision.allowed]
    assert len(allowed) == 334 and all(int(m.split("-")[1]) % 3 == 0 for m in allowed)
    refused = [p.decision for p in decided if not p.decision.allowed]
    assert {d.reason for d in refused} == {pb.NO_CONSENT}
    assert all(d.detail == "no recorded consent for wecom" for d in refused)
    # a dry run afterwards sees every reserved member as already reached
    dry = _decisions(
        s.PlanCampaign(pb.PlanCampaignRequest(member_ids=allowed[:5], channel="wecom", campaign_id="winback"))
    )
    assert [p.decision.reason for p in dry] == [pb.DUPLICATE_CAMPAIGN] * 5
    assert all(not p.decision.reservation_id for p in dry)
    limited = _decisions(
        s.PlanCampaign(pb.PlanCampaignRequest(segment="at_risk", channel="wecom", campaign_id="w2", limit=3))
    )
    assert sum(p.decision.allowed for p in limited) == 0  # the day cap after "winback" applies
    capped = [p.decision for p in limited if p.decision.reason == pb.CAP_CHANNEL_DAY]
    assert capped and all(d.HasField("next_allowed_at") for d in capped)  # waiting helps: when is sent
    harness.clock.advance(days=1, minutes=1)
    limited = _decisions(
        s.PlanCampaign(
            pb.PlanCampaignRequest(
                segment="at_risk", channel="wecom", campaign_id="w2", limit=3, reserve=True
            )
        )
    )
    assert sum(p.decision.allowed for p in limited) == 3 and limited[-1].decision.allowed


def test_the_campaign_bench_client_reads_every_batch(harness: Harness) -> None:
    from bench.campaign import audience, plan_campaign_over_grpc

    ids = list(audience(150))
    for m in ids[:60]:
        harness.stub.UpdateConsent(pb.UpdateConsentRequest(member_id=m, channel="sms", granted=True))
    run = plan_campaign_over_grpc(
        harness.target,
        150,
        "sms",
        reserve=True,
        request_size=100,  # the harness allows 100 ids per call: two calls
        redis_client=redis.Redis.from_url(harness.redis_url),
        server_pid=None,
        seed_seconds=0.0,
        timezone="Asia/Shanghai",
    )
    assert (run.decisions, run.errors) == (150, {})
    assert run.reasons == {"ALLOWED": 60, "NO_CONSENT": 90}
    assert run.first_decision_ms > 0


def test_next_best_outreach_never_repeats_bought_or_recent_items(harness: Harness) -> None:
    s = harness.stub
    harness.consent("M1")
    req = pb.NextBestOutreachRequest(
        member_id="M1", channel="app_push", campaign_id="nbo-1", idempotency_key="n1"
    )
    first = s.NextBestOutreach(req)
    # P1 is bought (the port leaves it out), so the best is P2; the reservation is made
    assert first.has_item and first.item.item_id == "P2" and first.decision.allowed
    assert first.decision.reservation_id and first.item.title == "title P2"
    replay = s.NextBestOutreach(req)
    assert replay.decision.replayed and replay.item.item_id == "P2"

    # right away the throttle says wait: no item, the reason and when
    d = s.NextBestOutreach(pb.NextBestOutreachRequest(member_id="M1", channel="wecom", campaign_id="nbo-2"))
    assert not d.has_item and d.decision.reason == pb.MIN_GAP and d.decision.HasField("next_allowed_at")

    pushed: list[str] = ["P2"]
    for n in range(3):
        harness.clock.advance(days=3)
        r = s.NextBestOutreach(
            pb.NextBestOutreachRequest(member_id="M1", channel="app_push", campaign_id=f"x{n}")
        )
        assert r.has_item, r.decision.detail
        assert r.item.item_id not in pushed and r.item.item_id != "P1"
        pushed.append(r.item.item_id)
    assert pushed == ["P2", "P3", "P4", "P5"]
    # the recommender was told what was pushed recently
    assert harness.recs.calls[-1][3] == {"P2", "P3", "P4"}
    harness.clock.advance(days=3)
    r = s.NextBestOutreach(pb.NextBestOutreachRequest(member_id="M1", channel="app_push", campaign_id="x9"))
    assert not r.has_item and r.decision.reason == pb.NOTHING_TO_RECOMMEND
    # content is its own catalogue
    r = s.NextBestOutreach(
        pb.NextBestOutreachRequest(
            member_id="M1", channel="app_push", campaign_id="x10", kind=common_pb2.CONTENT
        )
    )
    assert r.has_item and r.item.item_id == "A1"


def test_next_best_after_cancel_can_push_the_item_again(harness: Harness) -> None:
    s = harness.stub
    harness.consent("M3")
    r = s.NextBestOutreach(pb.NextBestOutreachRequest(member_id="M3", channel="app_push", campaign_id="a"))
    assert r.item.item_id == "P1"
    assert s.CancelOutreach(pb.CancelOutreachRequest(reservation_id=r.decision.reservation_id)).cancelled
    r = s.NextBestOutreach(pb.NextBestOutreachRequest(member_id="M3", channel="app_push", campaign_id="a"))
    assert r.item.item_id == "P1" and r.decision.allowed


@pytest.mark.slow
def test_redis_down_decisions_fail_closed_and_writes_are_unavailable(tmp_path: Path) -> None:
    own = RedisServer(tmp_path)
    own.start()
    try:
        with serve(own.url) as h:
            h.consent("M1")
            assert h.stub.CheckOutreach(
                pb.OutreachRequest(member_id="M1", channel="sms", campaign_id="c")
            ).allowed
            own.stop()
            d = h.stub.CheckOutreach(pb.OutreachRequest(member_id="M1", channel="sms", campaign_id="c"))
            assert (d.allowed, d.reason) == (False, pb.THROTTLE_UNAVAILABLE)
            d = h.stub.ReserveOutreach(
                pb.ReserveOutreachRequest(member_id="M1", channel="sms", message_class=pb.TRANSACTIONAL)
            )
            assert (d.allowed, d.reason) == (True, pb.THROTTLE_UNAVAILABLE)  # settings: allow
            with pytest.raises(grpc.RpcError) as err:
                h.stub.UpdateConsent(pb.UpdateConsentRequest(member_id="M1", channel="sms", granted=False))
            assert _code(err.value) == grpc.StatusCode.UNAVAILABLE
            # the reason code, then words: no internal exception class (StoreCircuitOpen...)
            details = [err.value.details() or ""]
            withdraw = pb.UpdateConsentRequest(member_id="M1", channel="sms", granted=False)
            for _ in range(3):  # the breaker is open by now: the store is not even tried
                with pytest.raises(grpc.RpcError) as again:
                    h.stub.UpdateConsent(withdraw)
                details.append(again.value.details() or "")
            assert all(d.startswith("STORE_UNAVAILABLE: outreach store unavailable: ") for d in details)
            assert any("(circuit open); try again shortly" in d for d in details), details
            assert not any(re.search(r"[a-z](Error|Open|Exception)\b", d) for d in details), details
            r = h.stub.NextBestOutreach(pb.NextBestOutreachRequest(member_id="M1", channel="sms"))
            assert (r.has_item, r.decision.reason) == (False, pb.THROTTLE_UNAVAILABLE)
    finally:
        own.stop()


def test_store_errors_reach_the_caller_in_words_not_exception_classes() -> None:
    """Regression: UNAVAILABLE details named internal classes ("outreach store unavailable:
    StoreCircuitOpen", "... ClusterDownError"); the reason code stays, the rest is readable."""
    from recsvc.outreach.member_records import StoreCircuitOpen, store_error

    cases = [
        (StoreCircuitOpen("circuit open"), "paused for a moment (circuit open)"),
        (redis.exceptions.ClusterDownError("CLUSTERDOWN The cluster is down"), "Cluster is failing over"),
        (redis.exceptions.TryAgainError("TRYAGAIN"), "Cluster is failing over"),
        (redis.TimeoutError("Timeout reading from socket"), "did not answer in time"),
        (redis.ConnectionError("Error 111 connecting"), "cannot be reached"),
    ]
    for exc, words in cases:
        err = store_error(exc)
        assert err.reason == "STORE_UNAVAILABLE" and words in str(err), str(err)
        assert str(err).startswith("STORE_UNAVAILABLE: outreach store unavailable: ")
        assert type(exc).__name__ not in str(err)


def test_a_broken_reserving_plan_is_recovered_by_running_it_again(harness: Harness) -> None:
    """A caller loses a reserving PlanCampaign stream after its first batch; running the same
    request again returns the reservations already made (replayed, same ids) and makes the rest,
    instead of DUPLICATE_CAMPAIGN for members whose reservation the caller never saw."""
    s = harness.stub
    members = [f"flash-{n:03d}" for n in range(100)]
    for m in members[:-1]:  # the last one has not consented yet
        s.UpdateConsent(pb.UpdateConsentRequest(member_id=m, channel="sms", granted=True))
    request = pb.PlanCampaignRequest(member_ids=members, channel="sms", campaign_id="flash", reserve=True)
    stream = s.PlanCampaign(request)
    first = next(iter(stream)).decisions  # one chunk of 64 ...
    stream.cancel()  # ... then the caller goes away
    assert len(first) == 64 and all(d.decision.allowed and not d.decision.replayed for d in first)

    late = _decisions(
        s.PlanCampaign(
            pb.PlanCampaignRequest(member_ids=members[-1:], channel="sms", campaign_id="flash", reserve=True)
        )
    )
    assert late[0].decision.reason == pb.NO_CONSENT
    s.UpdateConsent(pb.UpdateConsentRequest(member_id=members[-1], channel="sms", granted=True))

    again = _decisions(s.PlanCampaign(request))
    assert [d.member_id for d in again] == members
    # every member allowed: a refusal is not replayed (the late consent counts now)
    assert all(d.decision.allowed for d in again)
    assert not again[-1].decision.replayed
    assert [d.decision.reservation_id for d in again[:64]] == [d.decision.reservation_id for d in first]
    assert all(d.decision.replayed for d in again[:64])
    # One send per member, however many runs: a third run replays everything.
    third = _decisions(s.PlanCampaign(request))
    assert [d.decision.reservation_id for d in third] == [d.decision.reservation_id for d in again]
    assert all(d.decision.replayed for d in third)
    # A dry run records nothing, so it still sees each member as reached by the campaign.
    dry = _decisions(
        s.PlanCampaign(pb.PlanCampaignRequest(member_ids=members[:3], channel="sms", campaign_id="flash"))
    )
    assert [d.decision.reason for d in dry] == [pb.DUPLICATE_CAMPAIGN] * 3


def test_a_member_record_in_another_form_is_named_not_called_an_outage(harness: Harness) -> None:
    """A hand-edited or foreign key: retrying cannot help, so not UNAVAILABLE; the other members
    of a plan are decided as usual."""
    from recsvc.outreach.member_keys import MemberKeys

    s = harness.stub
    r = redis.Redis.from_url(harness.redis_url)
    for m in ("BAD1", "BAD2", "OK1"):
        harness.consent(m)
    r.hset(MemberKeys.of("recsvc", "BAD1").state, "streak", "lots")
    r.delete(MemberKeys.of("recsvc", "BAD2").profile)
    r.set(MemberKeys.of("recsvc", "BAD2").profile, "not a hash")
    calls = (
        lambda: s.RecordOutreachFeedback(
            pb.OutreachFeedbackRequest(member_id="BAD1", channel="sms", feedback=pb.IGNORED)
        ),
        lambda: s.UpdateConsent(pb.UpdateConsentRequest(member_id="BAD2", channel="sms", granted=True)),
    )
    for call in calls:
        with pytest.raises(grpc.RpcError) as err:
            call()
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert (err.value.details() or "").startswith("MEMBER_STATE_UNREADABLE")
    plan = list(
        s.PlanCampaign(pb.PlanCampaignRequest(campaign_id="c-bad", channel="sms", member_ids=["BAD2", "OK1"]))
    )
    decided = {d.member_id: d.decision for batch in plan for d in batch.decisions}
    assert decided["OK1"].allowed and not decided["BAD2"].allowed
