"""What an adversarial probe of the outreach API found, replayed against a real gRPC server and a
real redis-server: far-future time stamps, member state poisoned by them, and idempotency keys
reused with other parameters."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import grpc
import pytest
import redis
from test_outreach_grpc import Harness, serve

from recsvc.outreach.member_keys import MemberKeys
from recsvc.v1 import outreach_pb2

pytestmark = pytest.mark.integration
pb = outreach_pb2
DAY_MS = 86_400_000
# What the old code stored for RecordOutreachFeedback(UNSUBSCRIBED, ts=9999-12-31T23:59:59Z):
# ts + 90 days of block (the shipped policy), an instant in the year 10000.
YEAR_10000_BLOCK_MS = int(datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC).timestamp() * 1000) + 90 * DAY_MS


@pytest.fixture
def harness(redis_url: str) -> Iterator[Harness]:
    with serve(redis_url) as h:
        yield h


def _status(call: object) -> tuple[grpc.StatusCode, str]:
    assert isinstance(call, grpc.RpcError)
    return call.code(), call.details()  # type: ignore[attr-defined]


def _ts(when: datetime) -> outreach_pb2.OutreachFeedbackRequest:
    req = pb.OutreachFeedbackRequest(member_id="M1", channel="wecom", feedback=pb.UNSUBSCRIBED)
    req.ts.FromDatetime(when)
    return req


def test_feedback_time_stamps_outside_the_window_are_invalid_argument(harness: Harness) -> None:
    s = harness.stub
    harness.consent("M1")
    now = datetime.fromtimestamp(harness.clock(), tz=UTC)
    for when in (
        datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC),
        datetime(2100, 1, 1, tzinfo=UTC),
        datetime(1970, 1, 1, tzinfo=UTC),
        datetime(2020, 1, 1, tzinfo=UTC),  # far past: more than bounds.MAX_PAST_DAYS ago
    ):
        with pytest.raises(grpc.RpcError) as err:
            s.RecordOutreachFeedback(_ts(when))
        code, details = _status(err.value)
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "TIMESTAMP_OUT_OF_RANGE" in details, when
    # seconds beyond what protobuf itself converts, and bad nanos: named, never INTERNAL
    for seconds, nanos in ((2**62, 0), (-(2**62), 0), (1_780_000_000, -1), (1_780_000_000, 10**9)):
        req = pb.OutreachFeedbackRequest(member_id="M1", channel="wecom", feedback=pb.IGNORED)
        req.ts.seconds, req.ts.nanos = seconds, nanos
        with pytest.raises(grpc.RpcError) as err:
            s.RecordOutreachFeedback(req)
        code, details = _status(err.value)
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "TIMESTAMP_OUT_OF_RANGE" in details
    # nothing was stored: the member is not blocked
    d = s.CheckOutreach(pb.OutreachRequest(member_id="M1", channel="wecom", campaign_id="c1"))
    assert d.allowed, d
    # an in-window ts (a late report of yesterday's unsubscribe) is accepted and blocks as before
    s.RecordOutreachFeedback(_ts(now - timedelta(hours=1)))
    d = s.CheckOutreach(pb.OutreachRequest(member_id="M1", channel="wecom", campaign_id="c1"))
    assert d.reason == pb.BLOCKED_UNSUBSCRIBED


def _poison(url: str) -> None:
    """Member state the old code or a skewed clock could leave behind, written straight to Redis."""
    client = redis.Redis.from_url(url)
    blocked = MemberKeys.of("recsvc", "POISON-BLOCK")
    client.hset(blocked.state, "b:wecom", f"U|{YEAR_10000_BLOCK_MS}")
    sent = MemberKeys.of("recsvc", "POISON-SEND")  # a send "made" in the year 9999 (MIN_GAP after it)
    client.zadd(sent.sends, {"0123456789abcdef|sms|old|": 253_402_300_000_000})
    tired = MemberKeys.of("recsvc", "POISON-FATIGUE")  # a huge streak and a send far ahead
    client.hset(tired.state, "streak", 10**15)
    client.zadd(tired.sends, {"0123456789abcdef|sms|old|": 10**17})
    broken = MemberKeys.of("recsvc", "POISON-GARBAGE")  # not even a number
    client.hset(broken.state, "b:wecom", "U|soon")
    client.close()


POISONED = ("POISON-BLOCK", "POISON-SEND", "POISON-FATIGUE", "POISON-GARBAGE")


def test_poisoned_member_state_never_fails_a_decision(harness: Harness) -> None:
    s = harness.stub
    for m in POISONED:
        harness.consent(m)
    _poison(harness.redis_url)
    now_ms = int(harness.clock() * 1000)
    for m in POISONED:
        decisions = [  # an INTERNAL status would raise here
            s.CheckOutreach(pb.OutreachRequest(member_id=m, channel="wecom", campaign_id="c1")),
            s.ReserveOutreach(
                pb.ReserveOutreachRequest(member_id=m, channel="wecom", campaign_id="c1", idempotency_key="k")
            ),
            s.NextBestOutreach(pb.NextBestOutreachRequest(member_id=m, channel="wecom")).decision,
        ]
        for d in decisions:
            assert not d.allowed, (m, d)
            if d.HasField("next_allowed_at"):
                # a representable time within the policy's longest wait (blocks, 180 days + margin)
                assert now_ms < d.next_allowed_at.ToMilliseconds() <= now_ms + 200 * DAY_MS
    d = s.CheckOutreach(pb.OutreachRequest(member_id="POISON-BLOCK", channel="wecom", campaign_id="c1"))
    assert d.reason == pb.BLOCKED_UNSUBSCRIBED and "out of range" in d.detail
    d = s.CheckOutreach(pb.OutreachRequest(member_id="POISON-SEND", channel="wecom", campaign_id="c1"))
    assert d.reason in (pb.CAP_DAY, pb.MIN_GAP) and d.HasField("next_allowed_at")
    d = s.CheckOutreach(pb.OutreachRequest(member_id="POISON-GARBAGE", channel="wecom", campaign_id="c1"))
    assert d.reason == pb.THROTTLE_UNAVAILABLE  # failing closed for this member only
    # the poisoned block is on wecom only: another channel is still decided normally
    d = s.CheckOutreach(pb.OutreachRequest(member_id="POISON-BLOCK", channel="sms", campaign_id="c1"))
    assert d.allowed


def test_a_plan_over_poisoned_members_plans_everyone_else(harness: Harness) -> None:
    """The probe's scenario: a reserving plan whose audience contains a poisoned member failed with
    INTERNAL for everyone, after its chunk's other members were reserved unseen; a re-run failed
    again. Now each member gets its own outcome and a re-run replays the same reservations."""
    s = harness.stub
    healthy = [f"H{n:02d}" for n in range(6)]
    audience = [healthy[0], *POISONED[:2], *healthy[1:4], *POISONED[2:], *healthy[4:]]
    for m in audience:
        harness.consent(m)
    _poison(harness.redis_url)
    request = pb.PlanCampaignRequest(member_ids=audience, channel="wecom", campaign_id="spring", reserve=True)
    first = [d for batch in s.PlanCampaign(request) for d in batch.decisions]
    assert [d.member_id for d in first] == audience
    by_member = {d.member_id: d.decision for d in first}
    assert all(by_member[m].allowed and by_member[m].reservation_id for m in healthy)
    assert not any(by_member[m].allowed for m in POISONED)
    assert by_member["POISON-BLOCK"].reason == pb.BLOCKED_UNSUBSCRIBED
    assert by_member["POISON-GARBAGE"].reason == pb.THROTTLE_UNAVAILABLE

    again = {d.member_id: d.decision for batch in s.PlanCampaign(request) for d in batch.decisions}
    for m in healthy:
        assert again[m].replayed and again[m].reservation_id == by_member[m].reservation_id
    assert not any(again[m].allowed for m in POISONED)


def _reserve(s: object, channel: str, campaign: str) -> outreach_pb2.OutreachDecision | grpc.RpcError:
    try:
        return s.ReserveOutreach(  # type: ignore[attr-defined,no-any-return]
            pb.ReserveOutreachRequest(
                member_id="M9", channel=channel, campaign_id=campaign, idempotency_key="order-1"
            )
        )
    except grpc.RpcError as exc:
        return exc


def test_an_idempotency_key_reused_with_other_parameters_is_refused(harness: Harness) -> None:
    """The probe sent one key with 32 channel/campaign pairs at once and got 1 ALLOWED and 31
    replays of a reservation on another channel. Now: 1 ALLOWED and 31 named refusals."""
    s = harness.stub
    harness.consent("M9")
    channels = ("app_push", "wecom", "sms", "official_account", "mini_program_subscribe")
    asks = [(channels[n % 5], f"camp-{n}") for n in range(32)]
    results: list[object] = [None] * 32
    start = threading.Barrier(32)

    def run(i: int) -> None:
        start.wait()
        results[i] = _reserve(s, *asks[i])

    threads = [threading.Thread(target=run, args=(i,)) for i in range(32)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    allowed = [i for i, r in enumerate(results) if isinstance(r, outreach_pb2.OutreachDecision)]
    refused = [r for r in results if isinstance(r, grpc.RpcError)]
    assert len(allowed) == 1 and len(refused) == 31
    first = results[allowed[0]]
    assert isinstance(first, outreach_pb2.OutreachDecision) and first.allowed and not first.replayed
    for exc in refused:
        code, details = _status(exc)
        assert code == grpc.StatusCode.FAILED_PRECONDITION and "IDEMPOTENCY_KEY_REUSED" in details
    # an identical retry is replayed with the first reservation
    again = _reserve(s, *asks[allowed[0]])
    assert isinstance(again, outreach_pb2.OutreachDecision)
    assert again.replayed and again.reservation_id == first.reservation_id
    # the priority and the message class are part of the request too
    for extra in ({"priority": 9}, {"message_class": pb.TRANSACTIONAL}):
        channel, campaign = asks[allowed[0]]
        with pytest.raises(grpc.RpcError) as err:
            s.ReserveOutreach(
                pb.ReserveOutreachRequest(
                    member_id="M9", channel=channel, campaign_id=campaign, idempotency_key="order-1", **extra
                )
            )
        assert _status(err.value)[0] == grpc.StatusCode.FAILED_PRECONDITION
    # the same key for another member is another key (keys are scoped to their member)
    harness.consent("M10")
    other = s.ReserveOutreach(
        pb.ReserveOutreachRequest(member_id="M10", channel="sms", campaign_id="x", idempotency_key="order-1")
    )
    assert other.allowed and not other.replayed


def test_a_plan_rerun_on_another_channel_does_not_replay_the_first_channel(harness: Harness) -> None:
    s = harness.stub
    harness.consent("P1")
    sms = pb.PlanCampaignRequest(member_ids=["P1"], channel="sms", campaign_id="launch", reserve=True)
    first = next(iter(s.PlanCampaign(sms))).decisions[0].decision
    assert first.allowed
    wecom = pb.PlanCampaignRequest(member_ids=["P1"], channel="wecom", campaign_id="launch", reserve=True)
    other = next(iter(s.PlanCampaign(wecom))).decisions[0].decision
    # not the sms reservation replayed: the campaign already reached the member
    assert (other.allowed, other.reason, other.reservation_id) == (False, pb.DUPLICATE_CAMPAIGN, "")
    assert next(iter(s.PlanCampaign(sms))).decisions[0].decision.reservation_id == first.reservation_id


@pytest.mark.parametrize(
    ("check", "value", "reason"),
    [
        ("idempotency_key", "abc\n", "INVALID_IDEMPOTENCY_KEY"),
        ("reservation_id", "0000000000000000\n.M000246", "INVALID_RESERVATION_ID"),
    ],
)
def test_a_final_newline_is_no_valid_character(check: str, value: str, reason: str) -> None:
    """A pattern ending in "$" matches before a final newline: such a key or id was accepted."""
    from recsvc.errors import InvalidArgument
    from recsvc.outreach import ask_checks

    with pytest.raises(InvalidArgument) as err:
        if check == "idempotency_key":
            ask_checks.check_idempotency_key(value)
        else:
            ask_checks.check_reservation_id(value, 64)
    assert err.value.reason == reason
    assert ask_checks.check_idempotency_key("abc") == "abc"
