"""The Members service on a real server and a real Redis, over a bundle trained by the real
pipeline: profiles (a buyer, a member in a DST time zone, a member with no events, an erased
member, an unknown one), live consent and fatigue, audiences (count, stream, consent, limit),
PlanCampaign by audience reference, and bad input."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import grpc
import numpy as np
import pandas as pd
import pytest
import redis
from serving_harness import RunningServer, running_server, serving_settings

from recsvc.bundle import load_bundle
from recsvc.security.audit import AuditLog
from recsvc.security.erasure import forget_member
from recsvc.security.privacy import ErasureList, Pseudonymizer
from recsvc.settings import load_settings
from recsvc.v1 import members_pb2, members_pb2_grpc, outreach_pb2, outreach_pb2_grpc

pytestmark = [pytest.mark.integration, pytest.mark.slow]
NY = "America/New_York"


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, pd.DataFrame, dict[str, str]]:
    """A bundle trained on a small synthetic data set where two members live in New York and
    one member never did anything. Returns (bundle, events, roles of the planted members)."""
    from training import pipeline
    from training.synthetic import make_dataset

    tmp = tmp_path_factory.mktemp("members")
    data = make_dataset(members=300, products=150, content=20, events_per_member=25, seed=2)
    counts = data.events["member_id"].astype(str).value_counts()
    busy = [str(m) for m in counts.index[:3]]
    quiet = str(counts.index[-1])
    data.events = data.events[data.events["member_id"].astype(str) != quiet].reset_index(drop=True)
    data.members.loc[data.members["member_id"].astype(str).isin(busy[:2]), "timezone"] = NY
    s = load_settings(
        overrides={
            "mlflow": {"tracking_uri": f"sqlite:///{tmp}/mlflow.db", "artifact_location": str(tmp / "art")},
            "training": {"factors": 8, "iterations": 3, "eval_members": 100, "member_lists": 0},
        }
    )
    pipeline.run(
        s, pipeline.TrainOptions(data_dir=tmp, bundle_out=tmp / "bundle", register=False), dataset=data
    )
    roles = {"ny": busy[0], "ny_in_bundle": busy[1], "buyer": busy[2], "silent": quiet}
    return tmp / "bundle", data.events, roles


@pytest.fixture
def server(
    trained: tuple[Path, pd.DataFrame, dict[str, str]], redis_url: str, tmp_path: Path
) -> Iterator[RunningServer]:
    with running_server(serving_settings(str(trained[0]), redis_url, tmp_path), with_outreach=True) as s:
        # as `recsvc outreach import` does from the members table: quiet hours in the member's zone
        s.deps.outreach_servicer.throttle.set_timezone(trained[2]["ny"], NY)  # type: ignore[union-attr]
        yield s


def _members(s: RunningServer) -> members_pb2_grpc.MembersStub:
    return members_pb2_grpc.MembersStub(s.channel)


def _find(
    s: RunningServer, limit: int = 0, count_only: bool = False, **query: Any
) -> list[members_pb2.FindMembersResponse]:
    req = members_pb2.FindMembersRequest(
        query=members_pb2.AudienceQuery(**query), limit=limit, count_only=count_only
    )
    return list(_members(s).FindMembers(req, timeout=10))


def _streamed(parts: list[members_pb2.FindMembersResponse]) -> list[str]:
    return [m for p in parts if p.WhichOneof("part") == "members" for m in p.members.member_ids]


def test_profile_of_a_buyer(
    server: RunningServer, trained: tuple[Path, pd.DataFrame, dict[str, str]]
) -> None:
    bundle = load_bundle(trained[0])
    member = trained[2]["buyer"]
    p = _members(server).GetMemberProfile(members_pb2.GetMemberProfileRequest(member_id=member), timeout=5)
    seg: Any = bundle.segments.set_index("member_id").loc[member]
    assert p.lifecycle.stage == seg["lifecycle"]
    assert p.lifecycle.frequency == int(seg["frequency"]) and p.lifecycle.rfm_score == int(seg["rfm_score"])
    assert "days ago" in p.lifecycle.why
    assert p.predictions.modelled and 0 < p.predictions.p_alive <= 1
    assert p.predictions.purchases_90d >= p.predictions.purchases_30d > 0
    assert p.predictions.value_tier in {"low", "mid", "high"} and p.predictions.why
    assert p.interests and all(0 < t.weight <= 1 for t in p.interests)
    assert [c.share for c in p.channels] == sorted((c.share for c in p.channels), reverse=True)
    assert len(p.active_hours) == 24 and sum(p.active_hours) > 0
    assert {w.channel for w in p.send_windows} == {o.channel for o in p.outreach} and p.send_windows
    assert p.bundle.source == "bundle" and p.live.source == "live" and p.live.available
    assert p.bundle.as_of.ToDatetime().isoformat()[:19] == bundle.manifest.profiles.data_as_of[:19]  # type: ignore[union-attr]
    # nothing recorded yet: consent unknown (= no), so marketing is not allowed on any channel
    assert all(o.consent == "unknown" and not o.marketing_allowed_now for o in p.outreach)
    assert p.bundle_id == bundle.manifest.bundle_id


def test_active_hours_are_in_the_members_own_dst_zone(
    server: RunningServer, trained: tuple[Path, pd.DataFrame, dict[str, str]]
) -> None:
    """New York moves between UTC-5 and UTC-4: the hours must be New York wall-clock hours."""
    _, events, roles = trained
    member = roles["ny"]
    p = _members(server).GetMemberProfile(members_pb2.GetMemberProfileRequest(member_id=member), timeout=5)
    assert p.time_zone == NY
    mine = pd.to_datetime(events.loc[events["member_id"].astype(str) == member, "ts"], utc=True)
    local = mine.dt.tz_convert(NY).dt.hour.to_numpy()
    assert list(p.active_hours) == np.bincount(local, minlength=24).tolist()
    utc_hours = np.bincount(mine.dt.hour.to_numpy(), minlength=24).tolist()
    assert list(p.active_hours) != utc_hours  # the test would not notice a UTC histogram otherwise
    for w in p.send_windows:
        opens = w.next_start.ToDatetime().replace(tzinfo=ZoneInfo("UTC")).astimezone(ZoneInfo(NY))
        # the window's next opening, in New York wall-clock hours: its start, or now when the
        # window is open at the moment the test runs
        assert (opens.hour - w.start_hour) % 24 < w.hours, (opens, w.start_hour, w.hours)


def test_member_without_events(
    server: RunningServer, trained: tuple[Path, pd.DataFrame, dict[str, str]]
) -> None:
    p = _members(server).GetMemberProfile(
        members_pb2.GetMemberProfileRequest(member_id=trained[2]["silent"]), timeout=5
    )
    assert not p.predictions.modelled and p.predictions.value_tier == "none"
    assert p.predictions.outlook == "no_purchase_yet" and "no purchase yet" in p.predictions.why
    assert sum(p.active_hours) == 0 and not p.interests and not p.channels
    assert {w.source for w in p.send_windows} <= {"segment", "policy"}
    assert p.recent.events_30d == 0 and p.lifecycle.frequency == 0


def test_unknown_and_bad_member_ids(server: RunningServer) -> None:
    stub = _members(server)
    with pytest.raises(grpc.RpcError) as err:
        stub.GetMemberProfile(members_pb2.GetMemberProfileRequest(member_id="NOBODY"), timeout=5)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND and "MEMBER_NOT_FOUND" in (err.value.details() or "")
    for bad, reason in (("", "EMPTY_MEMBER_ID"), ("has space", "INVALID_MEMBER_ID"), ("x" * 300, "TOO_LONG")):
        with pytest.raises(grpc.RpcError) as err:
            stub.GetMemberProfile(members_pb2.GetMemberProfileRequest(member_id=bad), timeout=5)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and reason in (err.value.details() or "")


def test_live_consent_and_fatigue(
    server: RunningServer, trained: tuple[Path, pd.DataFrame, dict[str, str]]
) -> None:
    member = trained[2]["buyer"]
    out = outreach_pb2_grpc.OutreachStub(server.channel)
    out.UpdateConsent(outreach_pb2.UpdateConsentRequest(member_id=member, channel="wecom", granted=True))
    out.UpdateConsent(outreach_pb2.UpdateConsentRequest(member_id=member, channel="sms", granted=False))
    for _ in range(3):  # the shipped policy's first fatigue level: 3 ignored in a row
        out.RecordOutreachFeedback(
            outreach_pb2.OutreachFeedbackRequest(
                member_id=member, channel="wecom", feedback=outreach_pb2.IGNORED
            )
        )
    p = _members(server).GetMemberProfile(members_pb2.GetMemberProfileRequest(member_id=member), timeout=5)
    by = {o.channel: o for o in p.outreach}
    assert (by["wecom"].consent, by["sms"].consent, by["app_push"].consent) == (
        "granted",
        "refused",
        "unknown",
    )
    assert p.fatigue_level == 1 and p.ignored_in_a_row == 3
    assert by["sms"].reason == "NO_CONSENT"
    if not by["wecom"].marketing_allowed_now:  # quiet hours now: it says when marketing is allowed
        assert by["wecom"].next_allowed_at.ToMilliseconds() > time.time() * 1000


def test_erased_member_is_not_found_and_leaves_audiences(
    server: RunningServer, trained: tuple[Path, pd.DataFrame, dict[str, str]], redis_url: str, tmp_path: Path
) -> None:
    member = trained[2]["buyer"]
    stage = (
        _members(server)
        .GetMemberProfile(members_pb2.GetMemberProfileRequest(member_id=member), timeout=5)
        .lifecycle.stage
    )
    before = _find(server, lifecycle_stages=[stage])
    client = redis.Redis.from_url(redis_url)
    prefix = load_settings().redis.key_prefix
    forget_member(
        member,
        redis=client,
        prefix=prefix,
        erasures=ErasureList(tmp_path / "erasures.txt"),
        audit=AuditLog(tmp_path / "audit.log", Pseudonymizer("test-pseudonym-key-0123")),
    )
    with pytest.raises(grpc.RpcError) as err:
        _members(server).GetMemberProfile(members_pb2.GetMemberProfileRequest(member_id=member), timeout=5)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    deadline = time.time() + 5  # the erasure notice reaches the server's forgotten set by pub/sub
    while member in _streamed(_find(server, lifecycle_stages=[stage])) and time.time() < deadline:
        time.sleep(0.05)
    after = _find(server, lifecycle_stages=[stage])
    assert member in _streamed(before) and member not in _streamed(after)
    assert after[0].count.count == before[0].count.count - 1


def test_find_members_counts_then_streams(
    server: RunningServer, trained: tuple[Path, pd.DataFrame, dict[str, str]]
) -> None:
    bundle = load_bundle(trained[0])
    stage = str(bundle.segments["lifecycle"].value_counts().index[0])
    want = bundle.segments.loc[bundle.segments["lifecycle"] == stage, "member_id"].astype(str).tolist()
    parts = _find(server, lifecycle_stages=[stage])
    assert parts[0].WhichOneof("part") == "count" and parts[-1].WhichOneof("part") == "summary"
    assert parts[0].count.count == len(want) and not parts[0].count.upper_bound
    assert sorted(_streamed(parts)) == sorted(want) and parts[-1].summary.streamed == len(want)
    only = _find(server, lifecycle_stages=[stage], count_only=True)
    assert len(only) == 1 and only[0].count.count == len(want)
    limited = _find(server, lifecycle_stages=[stage], limit=3)
    assert len(_streamed(limited)) == 3 and limited[-1].summary.truncated
    # value tier and interest tags narrow it; an empty query is everyone
    high = _find(server, value_tiers=["high"], count_only=True)[0].count.count
    tiers = np.asarray(bundle.arrays["profile_value_tier"])
    assert high == int((tiers == 3).sum()) > 0
    tag = bundle.categories[int(np.asarray(bundle.arrays["profile_tag"])[0, 0])]
    tagged = _find(server, interest_tags=[f"category:{tag}"], count_only=True)[0].count.count
    assert 0 < tagged < len(bundle.members)
    assert _find(server, count_only=True)[0].count.count == len(bundle.members)


def test_find_members_applies_consent_exactly_while_streaming(
    server: RunningServer, trained: tuple[Path, pd.DataFrame, dict[str, str]]
) -> None:
    out = outreach_pb2_grpc.OutreachStub(server.channel)
    bundle = load_bundle(trained[0])
    active = bundle.segments.loc[bundle.segments["lifecycle"] == "active", "member_id"].astype(str).tolist()
    granted = active[:4]
    for m in granted:
        out.UpdateConsent(outreach_pb2.UpdateConsentRequest(member_id=m, channel="wecom", granted=True))
    out.UpdateConsent(outreach_pb2.UpdateConsentRequest(member_id=active[5], channel="wecom", granted=False))
    parts = _find(server, lifecycle_stages=["active"], consent_channel="wecom")
    assert parts[0].count.upper_bound and parts[0].count.count == len(active)
    assert sorted(_streamed(parts)) == sorted(granted)
    assert parts[-1].summary.streamed == 4 and parts[-1].summary.left_out_no_consent == len(active) - 4


def test_bad_audience_queries(server: RunningServer) -> None:
    for query, needle in (
        ({"lifecycle_stages": ["sleepy"]}, "lifecycle_stages"),
        ({"value_tiers": ["gold"]}, "value_tiers"),
        ({"interest_tags": ["category:nope"]}, "interest_tags"),
        ({"min_p_alive": 1.5}, "min_p_alive"),
        ({"min_p_alive": 0.8, "max_p_alive": 0.2}, "exceed"),
        ({"consent_channel": "pigeon"}, "consent_channel"),
        # long values once made the message exceed grpc's 16 KiB header limit: RESOURCE_EXHAUSTED
        ({"interest_tags": ["x" * 20_000]}, "interest_tags"),
        ({"interest_tags": [f"category:{'品' * 300}{i}" for i in range(100)]}, "interest_tags"),
        ({"value_tiers": ["g" * 20_000]}, "value_tiers"),
        ({"consent_channel": "c" * 20_000}, "consent_channel"),
        ({"interest_tags": ["t"] * 1001}, "1001 values, at most 1000"),
    ):
        with pytest.raises(grpc.RpcError) as err:
            _find(server, **query)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, query
        assert "INVALID_AUDIENCE" in (err.value.details() or "") and needle in (err.value.details() or "")
    with pytest.raises(grpc.RpcError) as err:
        _find(server, limit=-1)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_plan_campaign_takes_an_audience_by_reference(
    server: RunningServer, trained: tuple[Path, pd.DataFrame, dict[str, str]]
) -> None:
    bundle = load_bundle(trained[0])
    want = bundle.segments.loc[bundle.segments["lifecycle"] == "active", "member_id"].astype(str).tolist()
    out = outreach_pb2_grpc.OutreachStub(server.channel)
    out.UpdateConsent(outreach_pb2.UpdateConsentRequest(member_id=want[0], channel="wecom", granted=True))
    req = outreach_pb2.PlanCampaignRequest(
        audience=members_pb2.AudienceQuery(lifecycle_stages=["active"]), channel="wecom", campaign_id="c-aud"
    )
    decided = [d for batch in out.PlanCampaign(req, timeout=10) for d in batch.decisions]
    assert sorted(d.member_id for d in decided) == sorted(want)
    reasons = {d.member_id: d.decision.reason for d in decided}
    assert reasons[want[1]] == outreach_pb2.NO_CONSENT  # consent is the decision's, member by member
    # with a consent filter only the consented member is planned
    req.audience.consent_channel = "wecom"
    assert [d.member_id for b in out.PlanCampaign(req, timeout=10) for d in b.decisions] == [want[0]]
    both = outreach_pb2.PlanCampaignRequest(
        member_ids=["A"], audience=members_pb2.AudienceQuery(), channel="wecom", campaign_id="c"
    )
    with pytest.raises(grpc.RpcError) as err:
        list(out.PlanCampaign(both, timeout=5))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "not both" in (err.value.details() or "")
    bad = outreach_pb2.PlanCampaignRequest(
        audience=members_pb2.AudienceQuery(value_tiers=["gold"]), channel="wecom", campaign_id="c"
    )
    with pytest.raises(grpc.RpcError) as err:
        list(out.PlanCampaign(bad, timeout=5))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_bundle_without_profiles_is_a_failed_precondition(srv: RunningServer) -> None:
    with pytest.raises(grpc.RpcError) as err:
        _members(srv).GetMemberProfile(members_pb2.GetMemberProfileRequest(member_id="M0"), timeout=5)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "NO_PROFILES" in (
        err.value.details() or ""
    )


def test_cli_show_and_find(server: RunningServer, trained: tuple[Path, pd.DataFrame, dict[str, str]]) -> None:
    from typer.testing import CliRunner

    from recsvc.cli import app

    def run(*args: str) -> str:
        result = CliRunner().invoke(
            app, ["members", *args, "--target", server.target], env={"COLUMNS": "250"}
        )
        assert result.exit_code == 0, result.output
        return result.output

    member = trained[2]["buyer"]
    shown = run("show", member)
    for needle in (member, "lifecycle", "RFM", "interests", "active hours", "outreach", "wecom"):
        assert needle in shown
    bundle = load_bundle(trained[0])
    n_active = int((bundle.segments["lifecycle"] == "active").sum())
    assert f"{n_active} members match" in run("find", "--stage", "active", "--count")
    listed = run("find", "--stage", "active", "--limit", "2", "--json")
    assert len(json.loads(listed)["member_ids"]) == 2
    bad = CliRunner().invoke(app, ["members", "find", "--tier", "gold", "--target", server.target])
    assert bad.exit_code == 2 and "INVALID_ARGUMENT" in bad.output
    missing = CliRunner().invoke(app, ["members", "show", "NOBODY", "--target", server.target])
    assert missing.exit_code == 2 and "NOT_FOUND" in missing.output
    for limit in ("99999999999999999999", "-1"):  # past int64, below 0: a usage error, not a traceback
        odd = CliRunner().invoke(app, ["members", "find", "--limit", limit, "--target", server.target])
        assert odd.exit_code == 2 and "--limit" in odd.output, odd.output


def _local(ts: Any, zone: str) -> Any:
    return ts.ToDatetime().replace(tzinfo=ZoneInfo("UTC")).astimezone(ZoneInfo(zone))


def test_check_and_reserve_at_the_members_best_time(
    server: RunningServer, trained: tuple[Path, pd.DataFrame, dict[str, str]]
) -> None:
    member = trained[2]["ny"]
    out = outreach_pb2_grpc.OutreachStub(server.channel)
    out.UpdateConsent(outreach_pb2.UpdateConsentRequest(member_id=member, channel="wecom", granted=True))
    profile = _members(server).GetMemberProfile(
        members_pb2.GetMemberProfileRequest(member_id=member), timeout=5
    )
    window = {w.channel: w for w in profile.send_windows}["wecom"]
    d = out.CheckOutreach(
        outreach_pb2.OutreachRequest(
            member_id=member, channel="wecom", campaign_id="c-best", at_best_time=True
        )
    )
    assert d.allowed and d.HasField("send_at")
    # the window's next opening, or now when the member's window is open now
    assert abs(d.send_at.ToMilliseconds() - window.next_start.ToMilliseconds()) < 60_000
    local = _local(d.send_at, NY)
    assert (local.hour - window.start_hour) % 24 < window.hours  # inside the member's window, NY time
    r = out.ReserveOutreach(
        outreach_pb2.ReserveOutreachRequest(
            member_id=member, channel="wecom", campaign_id="c-best", at_best_time=True, idempotency_key="k1"
        )
    )
    assert (
        r.allowed
        and r.reservation_id
        and abs(r.send_at.ToMilliseconds() - d.send_at.ToMilliseconds()) < 60_000
    )
    # a retry answers the time the first call reserved; the same key for a send now is another question
    best = outreach_pb2.ReserveOutreachRequest(
        member_id=member, channel="wecom", campaign_id="c-best", at_best_time=True, idempotency_key="k1"
    )
    replay = out.ReserveOutreach(best)
    assert replay.replayed and replay.send_at == r.send_at and replay.reservation_id == r.reservation_id
    now_instead = outreach_pb2.ReserveOutreachRequest(
        member_id=member, channel="wecom", campaign_id="c-best", idempotency_key="k1"
    )
    with pytest.raises(grpc.RpcError) as reused:
        out.ReserveOutreach(now_instead)
    assert reused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "IDEMPOTENCY_KEY_REUSED" in (reused.value.details() or "")
    # the scheduled send counts: another marketing message on wecom that day is refused
    again = out.CheckOutreach(
        outreach_pb2.OutreachRequest(
            member_id=member, channel="wecom", campaign_id="c-other", at_best_time=True
        )
    )
    assert not again.allowed or again.send_at.ToMilliseconds() > r.send_at.ToMilliseconds()
    # without the flag nothing changes: no send_at
    plain = out.CheckOutreach(outreach_pb2.OutreachRequest(member_id=member, channel="sms", campaign_id="c"))
    assert not plain.HasField("send_at")
    # regression: a refusal (no consent on sms) carried a send_at, as if there were a time to send
    refused = out.CheckOutreach(
        outreach_pb2.OutreachRequest(member_id=member, channel="sms", campaign_id="c", at_best_time=True)
    )
    assert (refused.allowed, refused.reason) == (False, outreach_pb2.NO_CONSENT)
    assert not refused.HasField("send_at")
    refused = out.ReserveOutreach(
        outreach_pb2.ReserveOutreachRequest(
            member_id=member, channel="sms", campaign_id="c", at_best_time=True
        )
    )
    assert refused.reason == outreach_pb2.NO_CONSENT and not refused.HasField("send_at")


def test_an_erased_member_is_scheduled_as_one_never_seen(
    server: RunningServer, trained: tuple[Path, pd.DataFrame, dict[str, str]]
) -> None:
    """Regression: after ForgetMember (and RestoreMember) at_best_time still read the erased
    member's trained hours and zone from the bundle; they start cold, as recommendations do."""
    member, stranger = trained[2]["ny_in_bundle"], "never-seen-member"
    out = outreach_pb2_grpc.OutreachStub(server.channel)

    def best(m: str) -> int:
        out.UpdateConsent(outreach_pb2.UpdateConsentRequest(member_id=m, channel="wecom", granted=True))
        ask = outreach_pb2.OutreachRequest(member_id=m, channel="wecom", campaign_id="c-f", at_best_time=True)
        d = out.CheckOutreach(ask)
        assert d.allowed and d.HasField("send_at"), d
        return int(d.send_at.ToMilliseconds())

    cold = best(stranger)
    assert abs(best(member) - cold) > 60_000  # the bundle's New York hours, not the default's
    server.deps.engine.forgotten.add(member)  # type: ignore[attr-defined]  # what the erasure notice does in each process
    assert abs(best(member) - cold) < 60_000


def test_best_time_is_placed_in_the_zone_the_throttle_judges_quiet_hours_in(
    server: RunningServer, trained: tuple[Path, pd.DataFrame, dict[str, str]]
) -> None:
    """A member whose imported zone is not the bundle's: the window's hours are the member's own,
    read on the imported zone's clock, so the throttle does not refuse the time as quiet hours."""
    member, zone = trained[2]["buyer"], "America/Los_Angeles"
    server.deps.outreach_servicer.throttle.set_timezone(member, zone)  # type: ignore[union-attr]
    out = outreach_pb2_grpc.OutreachStub(server.channel)
    out.UpdateConsent(outreach_pb2.UpdateConsentRequest(member_id=member, channel="wecom", granted=True))
    profile = _members(server).GetMemberProfile(
        members_pb2.GetMemberProfileRequest(member_id=member), timeout=5
    )
    window = {w.channel: w for w in profile.send_windows}["wecom"]
    d = out.CheckOutreach(
        outreach_pb2.OutreachRequest(
            member_id=member, channel="wecom", campaign_id="c-zone", at_best_time=True
        )
    )
    assert d.allowed and d.HasField("send_at"), d
    assert (_local(d.send_at, zone).hour - window.start_hour) % 24 < window.hours
    # the profile shows the window outreach uses: on the imported zone's clock
    assert profile.time_zone == zone
    assert abs(d.send_at.ToMilliseconds() - window.next_start.ToMilliseconds()) < 60_000


def test_plan_campaign_schedules_each_member_in_their_window(
    server: RunningServer, trained: tuple[Path, pd.DataFrame, dict[str, str]]
) -> None:
    bundle = load_bundle(trained[0])
    members = (
        bundle.segments.loc[bundle.segments["lifecycle"] == "active", "member_id"].astype(str).tolist()[:20]
    )
    out = outreach_pb2_grpc.OutreachStub(server.channel)
    for m in members:
        out.UpdateConsent(outreach_pb2.UpdateConsentRequest(member_id=m, channel="wecom", granted=True))
    now = int(time.time())
    req = outreach_pb2.PlanCampaignRequest(
        member_ids=members, channel="wecom", campaign_id="c-win", reserve=True
    )
    req.window_start.FromSeconds(now)
    req.window_end.FromSeconds(now + 3 * 86400)
    decided = [d for b in out.PlanCampaign(req, timeout=10) for d in b.decisions]
    assert len(decided) == len(members)
    profiles = {
        m: _members(server).GetMemberProfile(members_pb2.GetMemberProfileRequest(member_id=m), timeout=5)
        for m in members
    }
    for d in decided:
        at = d.decision.send_at.ToMilliseconds()
        assert now * 1000 - 1000 <= at <= (now + 3 * 86400) * 1000
        p = profiles[d.member_id]
        w = {x.channel: x for x in p.send_windows}["wecom"]
        assert (_local(d.decision.send_at, p.time_zone).hour - w.start_hour) % 24 < w.hours
        assert d.decision.allowed, d.decision.detail  # consented, nothing sent yet, outside quiet hours
    bad = outreach_pb2.PlanCampaignRequest(member_ids=members[:1], channel="wecom", campaign_id="c-bad")
    bad.window_start.FromSeconds(now)
    with pytest.raises(grpc.RpcError) as err:
        list(out.PlanCampaign(bad, timeout=5))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "INVALID_WINDOW" in (
        err.value.details() or ""
    )
    bad.window_end.FromSeconds(now + 30 * 86400)
    with pytest.raises(grpc.RpcError) as err:
        list(out.PlanCampaign(bad, timeout=5))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_profile_without_redis_answers_the_bundle_parts(
    trained: tuple[Path, pd.DataFrame, dict[str, str]], tmp_path: Path
) -> None:
    from recsvc.localstack import LocalRedis

    private = LocalRedis(tmp_path / "redis").start()
    try:
        with running_server(
            serving_settings(str(trained[0]), private.url, tmp_path), with_outreach=True
        ) as s:
            private.stop()
            p = _members(s).GetMemberProfile(
                members_pb2.GetMemberProfileRequest(member_id=trained[2]["buyer"]), timeout=10
            )
            assert not p.live.available and p.bundle.available
            assert p.lifecycle.stage and p.predictions.modelled and sum(p.active_hours) > 0
            assert all(not o.consent and not o.marketing_allowed_now for o in p.outreach)
            # counting needs no Redis; streaming with a consent filter does, and says so
            parts = _find(s, count_only=True)
            assert parts[0].count.count > 0
            with pytest.raises(grpc.RpcError) as err:
                _find(s, consent_channel="wecom")
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        private.stop()
