"""The A/B report and the campaign report, computed from the event log's Parquet files
(``recsvc events sink``). Pure functions of the log (``LogFrames``): the CLI renders them
(``recsvc.experiments.render``). Definitions: docs/experiments.md.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from recsvc.eventlog.schema import SCHEMAS
from recsvc.experiments import stats

SRM_ALPHA = 0.001  # a mismatch this unlikely by chance means the split itself is broken
ALPHA = 0.05  # the intervals' 95 %
# below this many members an arm's t interval (revenue) leans on an approximation it cannot
# carry, and a difference of a few buyers reads as a large effect: the verdict says so
MIN_MEMBERS = 30


@dataclass
class LogFrames:
    impressions: pd.DataFrame
    events: pd.DataFrame
    decisions: pd.DataFrame
    since: date | None = None
    until: date | None = None
    log_dir: Path | None = None

    def period(self) -> str:
        a = self.since.isoformat() if self.since else "the start"
        b = self.until.isoformat() if self.until else "now"
        return f"{a} to {b}"


def _empty(kind: str) -> pd.DataFrame:
    return SCHEMAS[kind].empty_table().to_pandas()


def read_log(log_dir: Path, since: date | None = None, until: date | None = None) -> LogFrames:
    """The log's three kinds, restricted to the days [since, until] (the ``date=`` partitions)."""
    from recsvc.eventlog.files import log_parts, read_parts

    frames: dict[str, pd.DataFrame] = {}
    for kind in ("impression", "event", "decision"):
        files = log_parts(Path(log_dir), kind, since, until)
        frames[kind] = read_parts(files, SCHEMAS[kind]).to_pandas() if files else _empty(kind)
    events = frames["event"]
    # an event re-sent with its ts after an unconfirmed answer (stored=false: one of its two
    # writes failed, the log's may not have) is logged twice: it counts once, as in training
    frames["event"] = events.drop_duplicates(
        subset=[c for c in events.columns if c != "log_id"], keep="first", ignore_index=True
    )
    return LogFrames(frames["impression"], frames["event"], frames["decision"], since, until, Path(log_dir))


# ---------------------------------------------------------------------------------------- A/B


@dataclass
class VariantRow:
    variant: str
    members: int
    impressions: int
    ctr: stats.Estimate
    conversion: stats.Estimate
    revenue_per_member: stats.Estimate
    clicks: int = 0
    buyers: int = 0
    revenue: float = 0.0


@dataclass
class Comparison:
    variant: str
    baseline: str
    conversion_diff: stats.Estimate
    conversion_p: float
    revenue_diff: stats.Estimate
    revenue_p: float


@dataclass
class AbReport:
    period: str
    variants: list[VariantRow] = field(default_factory=list)
    comparisons: list[Comparison] = field(default_factory=list)
    srm_p: float = math.nan
    expected_shares: dict[str, float] = field(default_factory=dict)
    # served in the period but not configured now (renamed or removed), and members shown more
    # than one variant (counted in each): either mixes arms, which the verdict says
    unconfigured: list[str] = field(default_factory=list)
    crossed_members: int = 0
    verdict: str = ""
    empty_reason: str = ""

    @property
    def empty(self) -> bool:
        return bool(self.empty_reason)

    def as_dict(self) -> dict[str, Any]:
        return _plain(
            {
                "report": "ab",
                "period": self.period,
                "empty_reason": self.empty_reason,
                "verdict": self.verdict,
                "sample_ratio_mismatch_p": self.srm_p,
                "expected_shares": self.expected_shares,
                "unconfigured_variants": self.unconfigured,
                "members_shown_several_variants": self.crossed_members,
                "variants": [
                    {
                        "variant": v.variant,
                        "members": v.members,
                        "impressions": v.impressions,
                        "clicks": v.clicks,
                        "buyers": v.buyers,
                        "revenue": v.revenue,
                        "ctr": v.ctr.as_dict(),
                        "conversion": v.conversion.as_dict(),
                        "revenue_per_member": v.revenue_per_member.as_dict(),
                    }
                    for v in self.variants
                ],
                "comparisons": [
                    {
                        "variant": c.variant,
                        "baseline": c.baseline,
                        "conversion_difference": c.conversion_diff.as_dict(),
                        "conversion_p": c.conversion_p,
                        "revenue_per_member_difference": c.revenue_diff.as_dict(),
                        "revenue_p": c.revenue_p,
                    }
                    for c in self.comparisons
                ],
            }
        )


def ab_report(frames: LogFrames, expected_shares: dict[str, float] | None = None) -> AbReport:
    """Per variant: members shown a list, lists shown, click-through (lists with an attributed
    click / lists), conversion (members with an attributed purchase / members) and attributed
    revenue per member; each variant against the first (the baseline)."""
    report = AbReport(period=frames.period())
    imps = frames.impressions
    imps = imps[(imps["source"] != "outreach") & (imps["variant"] != "") & (imps["member"] != "")]
    if imps.empty:
        report.empty_reason = (
            f"no recommendation impressions in the log for {frames.period()} "
            f"(log: {frames.log_dir}; is `recsvc events sink` running, and did the service serve members?)"
        )
        return report
    ev = frames.events
    ev = ev[ev["recommendation_id"] != ""].merge(
        imps[["recommendation_id", "variant"]].rename(columns={"variant": "shown_variant"}),
        on="recommendation_id",
        how="inner",
    )
    clicked = set(ev.loc[ev["event_type"] == "click", "recommendation_id"])
    buys = ev[ev["event_type"] == "purchase"]
    names = sorted(imps["variant"].unique())
    if expected_shares:
        names = [n for n in expected_shares if n in set(names)] + [
            n for n in names if n not in expected_shares
        ]
    if expected_shares:
        report.unconfigured = [n for n in names if n not in expected_shares]
    report.crossed_members = int((imps.groupby("member")["variant"].nunique() > 1).sum())
    revenue: dict[str, np.ndarray] = {}
    for name in names:
        shown = imps[imps["variant"] == name]
        members = shown["member"].unique()
        b = buys[buys["shown_variant"] == name]
        revenue_by_member = b.groupby("member")["amount"].sum()
        per_member = np.zeros(len(members))
        index = {m: i for i, m in enumerate(members)}
        for m, amount in revenue_by_member.items():
            if m in index:
                per_member[index[m]] = amount
        clicks = int(shown["recommendation_id"].isin(clicked).sum())
        buyers = int(b["member"].nunique())
        report.variants.append(
            VariantRow(
                variant=name,
                members=len(members),
                impressions=len(shown),
                ctr=stats.proportion(clicks, len(shown)),
                conversion=stats.proportion(buyers, len(members)),
                revenue_per_member=stats.mean(per_member),
                clicks=clicks,
                buyers=buyers,
                revenue=float(per_member.sum()),
            )
        )
        revenue[name] = per_member
    base = report.variants[0]
    for v in report.variants[1:]:
        cd, cp = stats.proportion_difference(v.buyers, v.members, base.buyers, base.members)
        rd, rp = stats.mean_difference(revenue[v.variant], revenue[base.variant])
        report.comparisons.append(Comparison(v.variant, base.variant, cd, cp, rd, rp))
    shares = expected_shares or {v.variant: 1.0 for v in report.variants}
    report.expected_shares = {k: float(s) for k, s in shares.items()}
    report.srm_p = stats.sample_ratio({v.variant: v.members for v in report.variants}, shares)
    report.verdict = _ab_verdict(report)
    return report


def _ab_verdict(r: AbReport) -> str:
    parts = []
    served = {v.variant for v in r.variants}
    missing = [n for n, share in r.expected_shares.items() if share > 0 and n not in served]
    if missing:
        parts.append(f"configured but served to no one in this period: {', '.join(missing)}")
    if r.unconfigured:
        parts.append(
            f"served in this period but not configured now: {', '.join(r.unconfigured)} (renamed or "
            "removed?); the sample-ratio check covers the configured variants only"
        )
    if r.crossed_members:
        parts.append(
            f"{r.crossed_members} members were shown more than one variant (a variant renamed or "
            "reshared during the period?): they count in each, so the arms are not independent; "
            "report a period after the change"
        )
    if not math.isnan(r.srm_p) and r.srm_p < SRM_ALPHA:
        parts.append(
            f"SAMPLE RATIO MISMATCH (p={r.srm_p:.2g}): members did not split as configured; "
            "fix the assignment before trusting any difference"
        )
    if len(r.variants) < 2:
        parts.append(f"only one variant ({r.variants[0].variant}) served in this period: nothing to compare")
        return "; ".join(parts)
    small = [v.variant for v in r.variants if v.members < MIN_MEMBERS]
    if small:
        parts.append(
            f"fewer than {MIN_MEMBERS} members in {', '.join(small)}: too few for the intervals' "
            "approximations; keep collecting"
        )
    m = len(r.comparisons)
    for c in r.comparisons:
        d = c.conversion_diff
        if d.value == 0:
            parts.append(f"{c.variant} and {c.baseline} convert alike so far")
            continue
        lead = c.variant if d.value > 0 else c.baseline
        text = (
            f"{lead} is ahead on conversion: {c.variant} - {c.baseline} = {d.value * 100:+.2f} pp "
            f"(95% CI {d.low * 100:+.2f} to {d.high * 100:+.2f} pp)"
        )
        if not d.excludes_zero:
            text += ", not significant (the interval includes 0): keep collecting"
        elif m > 1 and not c.conversion_p < ALPHA / m:
            # each comparison errs 1 time in 20; with m of them one of them would m times as
            # often: Bonferroni keeps the report's chance of any false "significant" at 5 %
            needs = f"p={c.conversion_p:.2g}, needs < {ALPHA / m:.2g}"
            text += f", not significant over {m} comparisons ({needs})"
        else:
            text += ", significant"
        parts.append(text)
    return "; ".join(parts)


# ---------------------------------------------------------------------------------- campaign


@dataclass
class GroupRow:
    group: str
    members: int
    buyers: int
    conversion: stats.Estimate
    revenue_per_member: stats.Estimate


@dataclass
class CampaignReport:
    campaign: str
    period: str
    window_days: float
    groups: list[GroupRow] = field(default_factory=list)
    uplift: stats.Estimate = stats.NAN
    uplift_p: float = math.nan
    revenue_uplift: stats.Estimate = stats.NAN
    revenue_p: float = math.nan
    reached: int = 0
    held_out: int = 0
    audience: int = 0
    refusals: dict[str, int] = field(default_factory=dict)
    open_windows: int = 0  # members (both groups) whose window ends after the log's last record
    verdict: str = ""
    empty_reason: str = ""

    @property
    def empty(self) -> bool:
        return bool(self.empty_reason)

    def as_dict(self) -> dict[str, Any]:
        return _plain(
            {
                "report": "campaign",
                "campaign": self.campaign,
                "period": self.period,
                "attribution_window_days": self.window_days,
                "empty_reason": self.empty_reason,
                "verdict": self.verdict,
                "audience": self.audience,
                "members_reached": self.reached,
                "held_out": self.held_out,
                "refusals": self.refusals,
                "open_windows": self.open_windows,
                "groups": [
                    {
                        "group": g.group,
                        "members": g.members,
                        "buyers": g.buyers,
                        "conversion": g.conversion.as_dict(),
                        "revenue_per_member": g.revenue_per_member.as_dict(),
                    }
                    for g in self.groups
                ],
                "uplift": self.uplift.as_dict(),
                "uplift_p": self.uplift_p,
                "revenue_per_member_uplift": self.revenue_uplift.as_dict(),
                "revenue_p": self.revenue_p,
            }
        )


def campaign_report(frames: LogFrames, campaign: str, window_s: float) -> CampaignReport:
    """Treatment (members the campaign reached) against holdout (held-out members the throttle
    would have let through): purchases within ``window_s`` after each member's decision."""
    report = CampaignReport(campaign=campaign, period=frames.period(), window_days=window_s / 86400)
    dec = frames.decisions
    dec = dec[(dec["campaign"] == campaign) & (dec["mode"] == "reserve")].sort_values("ts")
    if dec.empty:
        known = sorted(c for c in frames.decisions["campaign"].unique() if c)
        report.empty_reason = (
            f"no reserving decisions for campaign {campaign!r} in the log for {frames.period()}"
            + (f" (campaigns in this period: {', '.join(known[:10])})" if known else "")
        )
        return report
    # A member may be decided on more than once (refused by a cap on day 1, reached on day 2):
    # reached = any decision allowed, from the first allowed one; held out = the holdout's hash
    # (the same every time), comparable from the first decision that would have reached them.
    first = dec.drop_duplicates("member", keep="first")
    report.audience = len(first)
    treated = dec[dec["allowed"]].drop_duplicates("member", keep="first")
    held_all = dec[dec["reason"] == "HOLDOUT"]
    held = held_all.drop_duplicates("member", keep="first")
    comparable = held_all[held_all["would_allow"]].drop_duplicates("member", keep="first")
    report.reached = len(treated)
    report.held_out = len(held)
    decided = set(treated["member"]) | set(held["member"])
    refused = first[~first["member"].isin(decided)]
    report.refusals = {str(k): int(v) for k, v in refused["reason"].value_counts().items()}
    buys = frames.events[frames.events["event_type"] == "purchase"][["member", "ts", "amount"]]
    window = pd.Timedelta(seconds=window_s)
    outcomes = {}
    for name, group in (("treatment", treated), ("holdout", comparable)):
        joined = group[["member", "ts"]].merge(buys, on="member", how="left", suffixes=("", "_buy"))
        inside = joined[(joined["ts_buy"] >= joined["ts"]) & (joined["ts_buy"] <= joined["ts"] + window)]
        spend = inside.groupby("member")["amount"].sum()
        per_member = group["member"].map(spend).fillna(0.0).to_numpy(dtype=np.float64)
        buyers = int(inside["member"].nunique())
        outcomes[name] = (buyers, len(group), per_member)
        report.groups.append(
            GroupRow(name, len(group), buyers, stats.proportion(buyers, len(group)), stats.mean(per_member))
        )
    (bt, nt, rt), (bh, nh, rh) = outcomes["treatment"], outcomes["holdout"]
    if nt == 0 or nh == 0:
        if nt == 0:
            missing = "reached no member"
        elif report.held_out:
            missing = (
                f"held out {report.held_out} members, none of whom it would have reached "
                "(each was refused for another reason too), so there is no comparable holdout"
            )
        else:
            missing = "has no holdout (ask with holdout_share > 0)"
        report.verdict = f"campaign {campaign} {missing}: no uplift can be measured"
        return report
    # the log's last moment: purchases after it are not in it yet
    end = max(frames.events["ts"].max() if len(frames.events) else dec["ts"].max(), dec["ts"].max())
    decided_at = pd.concat([treated["ts"], comparable["ts"]])
    open_windows = int((decided_at + window > end).sum())
    report.open_windows = open_windows
    report.uplift, report.uplift_p = stats.proportion_difference(bt, nt, bh, nh)
    report.revenue_uplift, report.revenue_p = stats.mean_difference(rt, rh)
    u = report.uplift
    sig = (
        "significant"
        if u.excludes_zero
        else "not significant (the interval includes 0): no evidence the campaign changed purchases"
    )
    report.verdict = (
        f"campaign {campaign}: conversion {u.value * 100:+.2f} pp against its holdout "
        f"(95% CI {u.low * 100:+.2f} to {u.high * 100:+.2f} pp), {sig}"
    )
    if open_windows == len(decided_at):
        report.verdict += (
            f"; so far: no member's {report.window_days:g}-day window has ended by the log's last "
            f"record ({end:%Y-%m-%d %H:%M} UTC), purchases are still to come; report again after "
            "the window for the final figure"
        )
    elif open_windows:
        report.verdict += (
            f"; {open_windows} of {len(decided_at)} members' windows are still open, so both "
            "groups' purchases are still growing"
        )
    return report


def parse_day(text: str | None) -> date | None:
    if not text:
        return None
    return date.fromisoformat(text)


def default_since(days: int) -> date:
    return (datetime.now(tz=UTC) - timedelta(days=days)).date()


def _plain(value: Any) -> Any:
    """JSON-safe: NaN becomes null, numpy numbers become Python numbers."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
