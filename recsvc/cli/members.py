"""`recsvc members ...`: member profiles and audiences from the running service (Members RPCs)."""

from __future__ import annotations

import json
from typing import Any

import typer

from recsvc.cli.common import client_channel, friendly_errors, rpc_errors

app = typer.Typer(help="Member profiles and audiences (Members RPCs).", no_args_is_help=True)

_TARGET = typer.Option(None, "--target", "-t", help="host:port (default: serving.host:serving.port).")
_JSON = typer.Option(False, "--json", help="Print the response as JSON.")
_TIMEOUT = typer.Option(10.0, "--timeout", min=0.001, max=86400.0, help="Deadline in seconds.")


def _stub(ctx: typer.Context, target: str | None) -> Any:
    from recsvc.v1 import members_pb2_grpc

    return members_pb2_grpc.MembersStub(client_channel(ctx, target))


def _when(ts: Any) -> str:
    return ts.ToDatetime().strftime("%Y-%m-%d %H:%M UTC") if ts.seconds else "-"


def print_profile(p: Any) -> None:
    from rich.console import Console
    from rich.table import Table

    out = Console()
    lc, pr = p.lifecycle, p.predictions
    out.print(f"[bold]{p.member_id}[/]  bundle {p.bundle_id}  time zone {p.time_zone}")
    facts = Table("part", "value", "why / detail", title="who", show_header=True)
    facts.add_row("lifecycle", lc.stage, lc.why)
    facts.add_row(
        "RFM",
        f"{lc.rfm_score:03d}",
        f"R{lc.r_score} F{lc.f_score} M{lc.m_score}: {lc.frequency} purchases, spend {lc.monetary:.2f}, "
        f"last {lc.recency_days:.0f} days ago",
    )
    if pr.modelled:
        facts.add_row("outlook", pr.outlook, pr.why)
        facts.add_row(
            "predicted",
            f"{pr.purchases_30d:.2f} / {pr.purchases_90d:.2f}",
            f"purchases in 30 / 90 days; P(alive) {pr.p_alive:.0%}; {pr.value_per_purchase:.2f} per purchase",
        )
    else:
        facts.add_row("outlook", pr.outlook, pr.why)
    facts.add_row("value tier", pr.value_tier, f"expected 90-day spend {pr.expected_value_90d:.2f}")
    facts.add_row(
        "fatigue", str(p.fatigue_level), f"{p.ignored_in_a_row} marketing messages ignored in a row"
    )
    rc = p.recent
    facts.add_row(
        "recent",
        f"{rc.events_7d} / {rc.events_30d}",
        f"events in 7 / 30 days ({rc.purchases_30d} purchases); live store: {rc.live_events} events",
    )
    out.print(facts)
    tags = Table("interest", "kind", "weight", title="interests")
    for t in p.interests:
        tags.add_row(t.name, t.kind, f"{t.weight:.2f}")
    channels = Table("channel", "share", title="engagement by channel")
    for c in p.channels:
        channels.add_row(c.channel, f"{c.share:.0%}")
    out.print(tags, channels)
    hours = " ".join(f"{h:02d}:{n}" for h, n in enumerate(p.active_hours) if n)
    out.print(f"[bold]active hours[/] ({p.time_zone}): {hours or 'no events'}")
    windows = {w.channel: w for w in p.send_windows}
    reach = Table("channel", "consent", "now", "next allowed", "send window", "next window", title="outreach")
    for o in p.outreach:
        w = windows.get(o.channel)
        window = f"{w.start_hour:02d}:00+{w.hours}h ({w.source})" if w else "-"
        now = "allowed" if o.marketing_allowed_now else (o.reason or "-")
        reach.add_row(
            o.channel, o.consent, now, _when(o.next_allowed_at), window, _when(w.next_start) if w else "-"
        )
    out.print(reach)
    live = "live" if p.live.available else "live store unavailable"
    out.print(f"[dim]bundle data as of {_when(p.bundle.as_of)}; {live} as of {_when(p.live.as_of)}[/]")


@app.command("show")
@friendly_errors
def show(
    ctx: typer.Context,
    member_id: str = typer.Argument(..., help="member id"),
    target: str | None = _TARGET,
    as_json: bool = _JSON,
    timeout: float = _TIMEOUT,
) -> None:
    """One member's profile: lifecycle, predictions, interests, channels, hours, consent, fatigue."""
    from google.protobuf.json_format import MessageToDict

    from recsvc.v1 import members_pb2

    with rpc_errors():
        p = _stub(ctx, target).GetMemberProfile(
            members_pb2.GetMemberProfileRequest(member_id=member_id), timeout=timeout
        )
    if as_json:
        print(json.dumps(MessageToDict(p, preserving_proto_field_name=True), ensure_ascii=False, indent=2))
    else:
        print_profile(p)


@app.command("find")
@friendly_errors
def find(
    ctx: typer.Context,
    stage: list[str] | None = typer.Option(
        None, "--stage", help="lifecycle stage (repeat): new, active, ..."
    ),
    tier: list[str] | None = typer.Option(None, "--tier", help="value tier (repeat): none, low, mid, high"),
    tag: list[str] | None = typer.Option(None, "--tag", help="interest tag (repeat): category:tea, brand:B1"),
    outlook: list[str] | None = typer.Option(
        None, "--outlook", help="likely_active, uncertain, likely_lost, no_purchase_yet (repeat)"
    ),
    min_p_alive: float | None = typer.Option(None, "--min-p-alive", help="0..1"),
    max_p_alive: float | None = typer.Option(None, "--max-p-alive", help="0..1"),
    min_purchases_30d: float | None = typer.Option(None, "--min-purchases-30d"),
    consent: str = typer.Option("", "--consent", help="outreach channel the member must have consented to"),
    count_only: bool = typer.Option(False, "--count", help="only count"),
    limit: int = typer.Option(20, "--limit", min=0, max=2**62, help="members listed at most (0 = all)"),
    target: str | None = _TARGET,
    as_json: bool = _JSON,
    timeout: float = _TIMEOUT,
) -> None:
    """An audience: the count first, then its members."""
    from rich.console import Console
    from rich.table import Table

    from recsvc.v1 import members_pb2

    query = members_pb2.AudienceQuery(
        lifecycle_stages=stage or [],
        value_tiers=tier or [],
        interest_tags=tag or [],
        outlooks=outlook or [],
        consent_channel=consent,
    )
    for name, value in (
        ("min_p_alive", min_p_alive),
        ("max_p_alive", max_p_alive),
        ("min_purchases_30d", min_purchases_30d),
    ):
        if value is not None:
            setattr(query, name, value)
    req = members_pb2.FindMembersRequest(query=query, count_only=count_only, limit=limit)
    out = Console()
    ids: list[str] = []
    count = 0
    summary = members_pb2.AudienceSummary()
    with rpc_errors():
        for part in _stub(ctx, target).FindMembers(req, timeout=timeout):
            kind = part.WhichOneof("part")
            if kind == "count":
                c = part.count
                bound = " (upper bound: consent is checked while listing)" if c.upper_bound else ""
                if not as_json:
                    out.print(f"[bold]{c.count}[/] members match{bound}; bundle {c.bundle_id}")
                count = c.count
            elif kind == "members":
                ids.extend(part.members.member_ids)
            elif kind == "summary":
                summary = part.summary
    if as_json:
        body: dict[str, Any] = {"count": count, "member_ids": ids}
        if not count_only:
            body["left_out_no_consent"] = summary.left_out_no_consent
            body["truncated"] = summary.truncated
        print(json.dumps(body, indent=2))
        return
    if count_only:
        return
    table = Table("#", "member_id", title=f"first {len(ids)}" if summary.truncated else None)
    for n, member in enumerate(ids, 1):
        table.add_row(str(n), member)
    out.print(table)
    if summary.left_out_no_consent:
        out.print(
            f"{summary.left_out_no_consent} of the members checked have no consent on {consent} (left out)"
        )
