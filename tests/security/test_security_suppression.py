"""An erased member stays erased: after ``Admin/ForgetMember`` nothing new is stored about them
(events, consent, feedback, outreach reservations, idempotency records, time zones) and their
recommendations stay cold, until ``Admin/RestoreMember`` re-registers them (audited). Against a real
server and a real redis-server; every check reads Redis for the member's hash tag."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import redis
from bundle_factory import PlantedBundle
from outreach_support import WalkClock, local, make_throttle
from test_security_server import Secured, secured_server, secured_settings

from recsvc.errors import MemberErased
from recsvc.realtime import RealtimeStore
from recsvc.redis_keys import member_key
from recsvc.security.audit import AuditLog, verify
from recsvc.security.erasure import forget_member, suppression_key
from recsvc.security.privacy import ErasureList, Pseudonymizer
from recsvc.settings import RedisSettings
from recsvc.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    outreach_pb2,
    outreach_pb2_grpc,
    recommender_pb2,
    recommender_pb2_grpc,
)

pytestmark = pytest.mark.integration
PREFIX = "recsvc"


@pytest.fixture
def srv(planted: PlantedBundle, redis_url: str, tmp_path: Path) -> Iterator[Secured]:
    settings, keys = secured_settings(planted.path, redis_url, tmp_path)
    with secured_server(settings, keys) as s:
        yield s


def _member_keys(srv: Secured, member: str) -> list[str]:
    return sorted(srv.redis.scan_iter(match=f"*{{m:{member}}}*"))


def _only_suppression(srv: Secured, member: str) -> list[str]:
    return [suppression_key(srv.settings.redis.key_prefix, member)]


def _refused(fn: object, request: object, metadata: list[tuple[str, str]]) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        fn(request, metadata=metadata, timeout=5)  # type: ignore[operator]
    return info.value


def _forget(srv: Secured, member: str) -> None:
    admin_pb2_grpc.AdminStub(srv.channel).ForgetMember(
        admin_pb2.ForgetMemberRequest(member_id=member, reason="PIPL-7"), metadata=srv.md("ops"), timeout=5
    )


def _event(member: str, item: str, event_type: str = "purchase") -> recommender_pb2.RecordEventRequest:
    return recommender_pb2.RecordEventRequest(member_id=member, item_id=item, event_type=event_type)


def _products(srv: Secured, member: str) -> list[str]:
    reply = recommender_pb2_grpc.RecommenderStub(srv.channel).RecommendProducts(
        recommender_pb2.RecommendProductsRequest(member_id=member, k=10), metadata=srv.md("shop"), timeout=5
    )
    return [i.item_id for i in reply.items]


def _other_cluster(planted: PlantedBundle, member: str) -> int:
    return (planted.member_cluster[member] + 1) % planted.clusters


def test_erased_member_events_are_refused_and_recommendations_stay_cold(
    srv: Secured, planted: PlantedBundle
) -> None:
    member = planted.warm_members()[5]
    rec = recommender_pb2_grpc.RecommenderStub(srv.channel)
    cold = _products(srv, "NEVER-SEEN-1")  # what a member the service knows nothing about gets
    _forget(srv, member)
    assert _products(srv, member) == cold  # the trained vector is not used (the engine hook)
    for item in planted.products(_other_cluster(planted, member))[:4]:
        err = _refused(rec.RecordEvent, _event(member, item), srv.md("tracker"))
        assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert (err.details() or "").startswith("MEMBER_ERASED:")
    assert _member_keys(srv, member) == _only_suppression(srv, member)
    assert _products(srv, member) == cold  # nothing new to personalise from


def test_erased_member_outreach_writes_are_refused(srv: Secured, planted: PlantedBundle) -> None:
    member = planted.warm_members()[6]
    out = outreach_pb2_grpc.OutreachStub(srv.channel)
    _forget(srv, member)
    crm, ops = srv.md("crm"), srv.md("ops")

    consent = outreach_pb2.UpdateConsentRequest(member_id=member, channel="sms", granted=True, source="app")
    err = _refused(out.UpdateConsent, consent, ops)
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert (err.details() or "").startswith("MEMBER_ERASED:")
    for kind in (outreach_pb2.UNSUBSCRIBED, outreach_pb2.IGNORED, outreach_pb2.CLICKED):
        feedback = outreach_pb2.OutreachFeedbackRequest(member_id=member, channel="sms", feedback=kind)
        err = _refused(out.RecordOutreachFeedback, feedback, crm)
        assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert (err.details() or "").startswith("MEMBER_ERASED:")

    for message_class in (outreach_pb2.TRANSACTIONAL, outreach_pb2.MARKETING):
        for key in ("", f"order-{message_class}"):
            reserve = outreach_pb2.ReserveOutreachRequest(
                member_id=member,
                channel="sms",
                campaign_id="c7",
                message_class=message_class,
                idempotency_key=key,
            )
            got = out.ReserveOutreach(reserve, metadata=crm, timeout=5)
            assert not got.allowed and got.reason == outreach_pb2.SUPPRESSED and not got.reservation_id
    nbo = outreach_pb2.NextBestOutreachRequest(member_id=member, channel="sms", idempotency_key="nbo-1")
    assert out.NextBestOutreach(nbo, metadata=crm, timeout=5).decision.reason == outreach_pb2.SUPPRESSED
    plan = outreach_pb2.PlanCampaignRequest(
        channel="sms", campaign_id="c8", member_ids=[member], reserve=True
    )
    decisions = [d for batch in out.PlanCampaign(plan, metadata=crm, timeout=5) for d in batch.decisions]
    assert [d.decision.reason for d in decisions] == [outreach_pb2.SUPPRESSED]
    assert _member_keys(srv, member) == _only_suppression(srv, member)


def test_restore_member_lifts_suppression_and_is_audited(srv: Secured, planted: PlantedBundle) -> None:
    member = planted.warm_members()[7]
    rec = recommender_pb2_grpc.RecommenderStub(srv.channel)
    out = outreach_pb2_grpc.OutreachStub(srv.channel)
    admin = admin_pb2_grpc.AdminStub(srv.channel)
    cold = _products(srv, "NEVER-SEEN-2")
    rec.RecordEvent(
        _event(member, planted.products(planted.member_cluster[member])[0]), metadata=srv.md("tracker")
    )
    _forget(srv, member)

    restore = admin_pb2.RestoreMemberRequest(member_id=member, reason="re-registered, ticket CRM-88")
    assert _refused(admin.RestoreMember, restore, srv.md("crm")).code() == grpc.StatusCode.PERMISSION_DENIED
    no_reason = _refused(admin.RestoreMember, admin_pb2.RestoreMemberRequest(member_id=member), srv.md("ops"))
    assert no_reason.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (no_reason.details() or "").startswith("REASON_REQUIRED:")
    bad_id = admin_pb2.RestoreMemberRequest(member_id="x{y}", reason="t")
    assert _refused(admin.RestoreMember, bad_id, srv.md("ops")).code() == grpc.StatusCode.INVALID_ARGUMENT
    assert _member_keys(srv, member) == _only_suppression(srv, member)  # refusals lifted nothing

    assert admin.RestoreMember(restore, metadata=srv.md("ops"), timeout=5).lifted
    assert not admin.RestoreMember(restore, metadata=srv.md("ops"), timeout=5).lifted  # nothing left to lift
    assert _member_keys(srv, member) == []  # and the old data did not come back

    # New data is accepted again, and personalises from the new events only.
    other = _other_cluster(planted, member)
    for item in planted.products(other)[:4]:
        assert rec.RecordEvent(_event(member, item), metadata=srv.md("tracker"), timeout=5).stored
    consent = outreach_pb2.UpdateConsentRequest(member_id=member, channel="sms", granted=True, source="app")
    out.UpdateConsent(consent, metadata=srv.md("ops"), timeout=5)
    tx = outreach_pb2.ReserveOutreachRequest(
        member_id=member, channel="sms", message_class=outreach_pb2.TRANSACTIONAL, idempotency_key="order-9"
    )
    assert out.ReserveOutreach(tx, metadata=srv.md("crm"), timeout=5).reason != outreach_pb2.SUPPRESSED
    got = _products(srv, member)
    # the top of the list follows the new purchases (the tail is diversified), not the old vector
    assert got != cold and all(planted.item_cluster[i] == other for i in got[:5])
    prefix = srv.settings.redis.key_prefix
    assert (
        srv.redis.exists(member_key(prefix, member, "rt:events"), member_key(prefix, member, "out:profile"))
        == 2
    )

    audit_path = srv.settings.security.audit_log
    text = audit_path.read_text()
    pseudonym = Pseudonymizer(srv.settings.security.pseudonym_key)(member)
    restores = [ln for ln in text.splitlines() if '"event": "restore"' in ln or '"event":"restore"' in ln]
    assert len(restores) == 2 and all(pseudonym in ln and "CRM-88" in ln and '"ops"' in ln for ln in restores)
    assert f'"{member}"' not in text
    assert verify(audit_path).ok


def test_writes_racing_an_erasure_leave_nothing_behind(redis_url: str, tmp_path: Path) -> None:
    """The suppression record is written before the keys are deleted, and every write checks it
    atomically: events recorded while ForgetMember runs are either deleted or refused."""
    client = redis.Redis.from_url(redis_url)
    store = RealtimeStore(client, RedisSettings(url=redis_url, key_prefix=PREFIX, socket_timeout_ms=2000))
    audit = AuditLog(tmp_path / "audit.log", Pseudonymizer("test-pseudonym-key-0123"))
    stop = threading.Event()
    refused: list[int] = []

    def hammer() -> None:
        while not stop.is_set():
            try:
                store.record("RACER", "P1", "purchase", time.time(), "app")
            except MemberErased:
                refused.append(1)

    writers = [threading.Thread(target=hammer) for _ in range(3)]
    for w in writers:
        w.start()
    time.sleep(0.05)
    forget_member("RACER", redis=client, prefix=PREFIX, erasures=ErasureList(tmp_path / "e.txt"), audit=audit)
    time.sleep(0.05)
    stop.set()
    for w in writers:
        w.join()
    assert refused  # writers kept trying after the erasure and were refused
    left = sorted(k.decode() for k in client.scan_iter(match="*{m:RACER}*"))
    assert left == [suppression_key(PREFIX, "RACER")]
    store.close()
    client.close()


def test_profile_import_skips_erased_members(redis_url: str, tmp_path: Path) -> None:
    """``recsvc outreach import`` (Throttle.import_profiles) stores no time zone or consent for an
    erased member and does not count them."""
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    client.set(suppression_key(PREFIX, "GONE"), "1")
    t = make_throttle(redis_url, WalkClock(local(2026, 6, 1, 10)))
    n_tz, n_consent = t.import_profiles(
        timezones=[("GONE", "Europe/Berlin"), ("KEPT", "Europe/Berlin")],
        consents=[("GONE", "sms", True, 1), ("KEPT", "sms", True, 1)],
    )
    assert (n_tz, n_consent) == (1, 1)
    assert sorted(client.scan_iter(match="*{m:GONE}*")) == [suppression_key(PREFIX, "GONE")]
    assert client.hgetall(member_key(PREFIX, "KEPT", "out:profile")) == {
        "tz": "Europe/Berlin",
        "c:sms": "1|1",
    }
    client.close()
