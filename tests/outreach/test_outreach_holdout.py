"""Holdouts over a real gRPC server and a real Redis: a stable share of a campaign's audience (and
of everyone, for the global control group) gets HOLDOUT instead of a message, and every
reserving decision lands in the event log with whether a held-out member would have been reached."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from concurrent import futures
from contextlib import contextmanager
from typing import Any

import grpc
import pytest
import redis
from outreach_support import CONSENTED, FakeRecommendations, WalkClock, local
from prometheus_client import CollectorRegistry

from recsvc.eventlog.log import EventLog, EventLogMetrics, stream_key
from recsvc.outreach.holdout import position
from recsvc.outreach.service import build_outreach_servicer
from recsvc.server.interceptors import ErrorInterceptor
from recsvc.settings import load_settings
from recsvc.v1 import outreach_pb2, outreach_pb2_grpc

pb = outreach_pb2


@contextmanager
def serve(redis_url: str, global_share: float = 0.0) -> Iterator[tuple[outreach_pb2_grpc.OutreachStub, Any]]:
    settings = load_settings(
        overrides={
            "redis": {"url": redis_url},
            "outreach": {"plan_pipeline_size": 64, "global_control_share": global_share},
            "events": {"shards": 2},
        }
    )
    client = redis.Redis.from_url(redis_url)
    elog = EventLog(client, settings, EventLogMetrics(CollectorRegistry()))
    recs = FakeRecommendations(products=["P1", "P2"], content=[], bought={}, segments={"all": 1000})
    clock = WalkClock(local(2026, 6, 1, 10))
    servicer = build_outreach_servicer(settings, client, recs, clock=clock, event_log=elog)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2), interceptors=[ErrorInterceptor()])
    outreach_pb2_grpc.add_OutreachServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield outreach_pb2_grpc.OutreachStub(channel), client
    finally:
        channel.close()
        server.stop(grace=0)


def logged_decisions(client: redis.Redis) -> list[dict[str, Any]]:
    out = []
    for shard in range(2):
        entries: list[Any] = client.xrange(stream_key("recsvc", shard, "decision"))  # type: ignore[assignment]
        for _id, fields in entries:
            out.append(json.loads(fields[b"d"]))
    return out


def plan(stub: outreach_pb2_grpc.OutreachStub, campaign: str, share: float) -> dict[str, int]:
    decisions = {}
    for batch in stub.PlanCampaign(
        pb.PlanCampaignRequest(
            segment="all", channel="wecom", campaign_id=campaign, reserve=True, holdout_share=share
        )
    ):
        for d in batch.decisions:
            decisions[d.member_id] = d.decision.reason
    return decisions


def test_a_campaign_holdout_is_a_stable_share_logged_with_what_would_have_happened(redis_url: str) -> None:
    with serve(redis_url) as (stub, client):
        for n in range(0, 1000, 2):  # half the audience consented on wecom
            stub.UpdateConsent(pb.UpdateConsentRequest(member_id=_member(n), channel="wecom", granted=True))
        first = plan(stub, "spring", 0.2)
        held = {m for m, r in first.items() if r == pb.HOLDOUT}
        assert 0.15 * 1000 < len(held) < 0.25 * 1000
        assert held == {m for m in first if position("spring", m) < 0.2}  # the stable hash
        assert {first[m] for m in first if m not in held} == {pb.ALLOWED, pb.NO_CONSENT}
        # a held-out member gets no message: nothing counted against their caps
        again = plan(stub, "summer", 0.0)
        assert all(again[m] == pb.ALLOWED for m in held if _num(m) % 2 == 0)
        logged = [d for d in logged_decisions(client) if d["campaign"] == "spring"]
        assert len(logged) == 1000
        holdouts = [d for d in logged if d["reason"] == "HOLDOUT"]
        assert len(holdouts) == len(held)
        # consented held-out members would have been reached, the others not
        assert Counter(d["would_allow"] for d in holdouts) == Counter(_num(m) % 2 == 0 for m in held)
        assert all(d["member"].startswith("p_") for d in logged)  # pseudonyms in the log
        sends = [
            json.loads(f[b"d"])
            for s in range(2)
            for _i, f in client.xrange(stream_key("recsvc", s, "impression"))
        ]
        assert len([i for i in sends if i["campaign"] == "spring"]) == sum(
            1 for r in first.values() if r == pb.ALLOWED
        )
        # no member named in clear: a reservation id ends in its member's id, so the log keeps
        # its token, which still pairs a send's impression with its decision
        tokens = {d["reservation_id"] for d in logged if d["reason"] == "ALLOWED"}
        assert tokens and all(t and "." not in t for t in tokens)
        assert {i["id"] for i in sends if i["campaign"] == "spring"} == tokens
        members = set(first)
        assert not any(m in json.dumps(record) for record in [*logged, *sends] for m in members)


def _member(n: int) -> str:
    return f"all-{n:07d}"  # FakeRecommendations' segment members


def _num(member: str) -> int:
    return int(member.rsplit("-", 1)[1])


def test_the_global_control_group_gets_no_marketing_but_transactional(redis_url: str) -> None:
    with serve(redis_url, global_share=0.3) as (stub, _client):
        control = next(m for m in (f"G{n}" for n in range(100)) if position("global", m) < 0.3)
        for ch in CONSENTED:
            stub.UpdateConsent(pb.UpdateConsentRequest(member_id=control, channel=ch, granted=True))
        for campaign in ("a", "b"):
            d = stub.ReserveOutreach(
                pb.ReserveOutreachRequest(member_id=control, channel="wecom", campaign_id=campaign)
            )
            assert (d.allowed, d.reason) == (False, pb.HOLDOUT) and "global control" in d.detail
        t = stub.ReserveOutreach(
            pb.ReserveOutreachRequest(member_id=control, channel="wecom", message_class=pb.TRANSACTIONAL)
        )
        assert t.allowed


@pytest.mark.parametrize(("share", "campaign"), [(0.7, "c"), (-0.1, "c"), (0.2, "")])
def test_a_bad_holdout_share_is_refused_by_name(redis_url: str, share: float, campaign: str) -> None:
    with serve(redis_url) as (stub, _client):
        with pytest.raises(grpc.RpcError) as err:
            stub.ReserveOutreach(
                pb.ReserveOutreachRequest(
                    member_id="M1", channel="wecom", campaign_id=campaign, holdout_share=share
                )
            )
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert err.value.details().startswith("INVALID_HOLDOUT_SHARE:")
