"""The reports on logs with known effects: they recover a planted conversion margin and a planted
campaign uplift within their 95 % intervals, find nothing in A/A splits (about as often as 95 %
promises), flag a broken split, and answer an empty period with a reason, not a traceback."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from serving_harness import ROOT

from recsvc.eventlog.schema import SCHEMAS
from recsvc.eventlog.sink import write_atomically
from recsvc.experiments.report import LogFrames, ab_report, campaign_report

T0 = datetime(2026, 5, 1, tzinfo=UTC)


def ab_log(
    rates: dict[str, float], members: int, seed: int, shares: dict[str, float] | None = None
) -> LogFrames:
    """Members split over variants; each sees 3 lists; a member converts with their variant's rate
    (buying from a list, attributed to it)."""
    rng = np.random.default_rng(seed)
    names = list(rates)
    p = np.array([(shares or {}).get(n, 1 / len(names)) for n in names])
    assigned = rng.choice(len(names), size=members, p=p / p.sum())
    imps, events = [], []
    for m in range(members):
        variant = names[assigned[m]]
        ids = [f"r{m}-{j}" for j in range(3)]
        for j, rid in enumerate(ids):
            imps.append(
                dict(
                    recommendation_id=rid,
                    ts=T0 + timedelta(minutes=j),
                    member=f"p_{m}",
                    variant=variant,
                    model_version="v1",
                    scene="home",
                    channel="app",
                    items=["P1", "P2"],
                    source="personalized",
                    campaign="",
                    log_id=f"{m}-{j}",
                )
            )
        if rng.random() < 0.3:
            events.append(_event(m, ids[0], "click", 0.0, variant))
        if rng.random() < rates[variant]:
            events.append(_event(m, ids[1], "purchase", float(rng.uniform(50, 150)), variant))
    return LogFrames(_frame("impression", imps), _frame("event", events), _frame("decision", []))


def _event(
    m: int, rid: str, kind: str, amount: float, variant: str, ts: datetime | None = None
) -> dict[str, object]:
    return dict(
        member_id=f"M{m}",
        item_id="P1",
        event_type=kind,
        ts=ts or T0 + timedelta(hours=1),
        channel="app",
        quantity=1,
        amount=amount,
        recommendation_id=rid,
        variant=variant,
        member=f"p_{m}",
        log_id="1-0",
    )


def _frame(kind: str, rows: list[dict[str, object]]) -> pd.DataFrame:
    return pa.Table.from_pylist(rows, schema=SCHEMAS[kind]).to_pandas()


def test_ab_recovers_the_planted_margin_within_its_interval() -> None:
    report = ab_report(ab_log({"a": 0.06, "b": 0.10}, 8000, seed=1), {"a": 0.5, "b": 0.5})
    a, b = report.variants
    assert (a.variant, b.variant) == ("a", "b")
    assert report.comparisons[0].conversion_diff.excludes_zero
    assert report.srm_p > 0.001
    assert report.verdict.startswith("b is ahead on conversion") and ", significant" in report.verdict
    assert a.ctr.low <= 0.1 <= a.ctr.high  # 30% of members click one of their 3 lists
    assert b.revenue_per_member.value > a.revenue_per_member.value
    # a 95% interval holds the planted margin in about 19 experiments of 20
    covered = found = 0
    for seed in range(20):
        r = ab_report(ab_log({"a": 0.06, "b": 0.10}, 6000, seed=200 + seed), {"a": 0.5, "b": 0.5})
        d = r.comparisons[0].conversion_diff
        covered += d.low <= 0.04 <= d.high
        found += d.excludes_zero
    assert covered >= 17 and found >= 18


def test_aa_splits_find_no_effect_about_as_often_as_promised() -> None:
    significant = 0
    for seed in range(20):
        report = ab_report(ab_log({"a": 0.08, "b": 0.08}, 3000, seed=100 + seed), {"a": 0.5, "b": 0.5})
        significant += report.comparisons[0].conversion_diff.excludes_zero
    assert significant <= 3  # 95% intervals: about 1 in 20 by chance
    report = ab_report(ab_log({"a": 0.08, "b": 0.08}, 3000, seed=7), {"a": 0.5, "b": 0.5})
    assert "not significant" in report.verdict


def test_a_broken_split_is_flagged_as_a_sample_ratio_mismatch() -> None:
    report = ab_report(
        ab_log({"a": 0.06, "b": 0.06}, 8000, seed=2, shares={"a": 0.56, "b": 0.44}), {"a": 0.5, "b": 0.5}
    )
    assert report.srm_p < 0.001 and report.verdict.startswith("SAMPLE RATIO MISMATCH")


def test_a_configured_variant_that_served_no_one_is_a_mismatch() -> None:
    # the variant that crashed logs nothing: the test once left it out and saw a clean split
    three = ab_report(ab_log({"a": 0.06, "b": 0.06}, 3000, seed=3), {"a": 1 / 3, "b": 1 / 3, "c": 1 / 3})
    assert three.srm_p < 1e-100 and "served to no one in this period: c" in three.verdict
    assert "SAMPLE RATIO MISMATCH" in three.verdict
    alone = ab_report(ab_log({"b": 0.06}, 2000, seed=4), {"a": 0.5, "b": 0.5})
    assert alone.srm_p < 1e-100 and "served to no one in this period: a" in alone.verdict
    assert "only one variant (b)" in alone.verdict


def test_a_variant_renamed_mid_period_is_said_not_compared_silently() -> None:
    """Variant b renamed to b2 for each member's last list: b2 is served but not configured, and
    its members also appear under b. The verdict says both, with counts."""
    log = ab_log({"a": 0.06, "b": 0.06}, 3000, seed=5)
    imps = log.impressions.copy()
    later = (imps["variant"] == "b") & imps["recommendation_id"].str.endswith("-2")
    imps.loc[later, "variant"] = "b2"
    renamed = ab_report(LogFrames(imps, log.events, log.decisions), {"a": 0.5, "b": 0.5})
    crossed = int(imps[imps["variant"] == "b2"]["member"].nunique())
    assert renamed.unconfigured == ["b2"] and renamed.crossed_members == crossed > 1000
    assert "served in this period but not configured now: b2" in renamed.verdict
    assert f"{crossed} members were shown more than one variant" in renamed.verdict
    clean = ab_report(log, {"a": 0.5, "b": 0.5})
    assert clean.unconfigured == [] and clean.crossed_members == 0
    assert "more than one variant" not in clean.verdict


def test_tiny_arms_and_constant_revenue_get_no_certain_looking_intervals() -> None:
    tiny = ab_report(ab_log({"a": 0.5, "b": 0.5}, 12, seed=5), {"a": 0.5, "b": 0.5})
    assert "fewer than 30 members" in tiny.verdict
    none_buy = ab_report(ab_log({"a": 0.0, "b": 0.0}, 400, seed=6), {"a": 0.5, "b": 0.5})
    for v in none_buy.variants:
        assert v.revenue_per_member.value == 0 and np.isnan(v.revenue_per_member.low)
    c = none_buy.comparisons[0]
    assert np.isnan(c.revenue_diff.low) and np.isnan(c.revenue_p)
    assert "convert alike so far" in none_buy.verdict


def test_many_arms_keep_the_chance_of_any_false_significance_near_five_percent() -> None:
    # four A/A arms: three comparisons with the baseline; without a correction one of them is
    # "significant" in about 1 report of 7 instead of 1 of 20
    flagged = 0
    for seed in range(60):
        rates = dict.fromkeys("abcd", 0.08)
        r = ab_report(ab_log(rates, 2400, seed=300 + seed), dict.fromkeys("abcd", 0.25))
        flagged += ", significant" in r.verdict
    assert flagged <= 6  # 5 % of 60 is 3 (these seeds: 4); uncorrected, these seeds flag 9


def _decision(
    m: int, ts: datetime, allowed: bool, reason: str, would_allow: bool, campaign: str = "c"
) -> dict[str, object]:
    return dict(
        ts=ts,
        member=f"p_{m}",
        campaign=campaign,
        channel="wecom",
        allowed=allowed,
        reason=reason,
        reservation_id=f"t.{m}.{ts:%d}" if allowed else "",
        mode="reserve",
        would_allow=would_allow,
        log_id=f"{m}-{ts:%d}",
    )


def campaign_log(base: float, uplift: float, members: int, seed: int, campaign: str = "spring") -> LogFrames:
    """An audience: 20% held out; half of everyone consented (the others are refused NO_CONSENT,
    or held out without being reachable); reached members buy at base + uplift, others at base."""
    rng = np.random.default_rng(seed)
    decisions, events = [], []
    for m in range(members):
        consent = rng.random() < 0.5
        held = rng.random() < 0.2
        allowed = consent and not held
        reason = "HOLDOUT" if held else ("ALLOWED" if consent else "NO_CONSENT")
        decisions.append(_decision(m, T0, allowed, reason, consent, campaign))
        if rng.random() < base + (uplift if allowed else 0.0):
            events.append(_event(m, "", "purchase", 100.0, "", ts=T0 + timedelta(days=2)))
        if rng.random() < 0.5:  # long after the window: never counted
            events.append(_event(m, "", "purchase", 100.0, "", ts=T0 + timedelta(days=30)))
    return LogFrames(_frame("impression", []), _frame("event", events), _frame("decision", decisions))


def test_campaign_recovers_the_planted_uplift_against_its_holdout() -> None:
    report = campaign_report(campaign_log(0.05, 0.08, 12000, seed=3), "spring", 7 * 86400)
    treated, holdout = report.groups
    assert report.uplift.excludes_zero and treated.members == report.reached
    covered = 0
    for seed in range(10):
        r = campaign_report(campaign_log(0.05, 0.08, 6000, seed=300 + seed), "spring", 7 * 86400)
        covered += (r.uplift.low <= 0.08 <= r.uplift.high) + (
            r.revenue_uplift.low <= 8.0 <= r.revenue_uplift.high
        )
    assert covered >= 17  # of 20 intervals at 95%
    assert report.refusals == {"NO_CONSENT": report.audience - report.reached - report.held_out}
    assert holdout.members < report.held_out  # only held-out members who would have been reached
    assert "significant" in report.verdict and "not significant" not in report.verdict


def test_a_campaign_without_effect_shows_none() -> None:
    report = campaign_report(campaign_log(0.05, 0.0, 12000, seed=4), "spring", 7 * 86400)
    assert not report.uplift.excludes_zero and "not significant" in report.verdict


def test_a_member_reached_after_a_refusal_counts_as_reached() -> None:
    day = timedelta(days=1)
    decisions = [_decision(m, T0, False, "CAP_DAY", True) for m in range(100)]  # capped on day 1
    decisions += [_decision(m, T0 + day, True, "ALLOWED", True) for m in range(100)]  # reached on day 2
    decisions += [_decision(m, T0 + day, True, "ALLOWED", True) for m in range(100, 200)]
    decisions += [_decision(m, T0 + day, False, "HOLDOUT", True) for m in range(200, 250)]
    decisions += [_decision(m, T0 + day, False, "NO_CONSENT", False) for m in range(250, 260)]
    late = [_event(m, "", "purchase", 10.0, "", ts=T0 + 30 * day) for m in range(0, 260, 7)]
    frames = LogFrames(_frame("impression", []), _frame("event", late), _frame("decision", decisions))
    r = campaign_report(frames, "c", 7 * 86400)
    assert r.reached == 200 and r.held_out == 50 and r.refusals == {"NO_CONSENT": 10}
    assert r.audience == 260 and r.open_windows == 0


def test_windows_still_open_and_a_holdout_that_could_not_be_reached_are_said() -> None:
    decisions = [_decision(m, T0, True, "ALLOWED", True) for m in range(100)]
    decisions += [_decision(m, T0, False, "HOLDOUT", True) for m in range(100, 125)]
    buys = [_event(m, "", "purchase", 10.0, "", ts=T0 + timedelta(hours=2)) for m in range(0, 125, 9)]
    frames = LogFrames(_frame("impression", []), _frame("event", buys), _frame("decision", decisions))
    r = campaign_report(frames, "c", 7 * 86400)
    assert "so far: no member's 7-day window has ended" in r.verdict and r.open_windows == 125
    assert "against its holdout" in r.verdict  # the figures so far, said to be so
    unreachable = [_decision(m, T0, False, "HOLDOUT", False) for m in range(100, 125)]
    frames = LogFrames(
        _frame("impression", []), _frame("event", buys), _frame("decision", decisions[:100] + unreachable)
    )
    r = campaign_report(frames, "c", 7 * 86400)
    assert "held out 25 members, none of whom it would have reached" in r.verdict


def test_empty_periods_and_unknown_campaigns_give_a_reason() -> None:
    empty = LogFrames(_frame("impression", []), _frame("event", []), _frame("decision", []))
    r = ab_report(empty)
    assert r.empty and "no recommendation impressions" in r.empty_reason
    assert json.loads(json.dumps(r.as_dict()))["variants"] == []
    c = campaign_report(campaign_log(0.05, 0.0, 50, seed=5), "autumn", 86400)
    assert c.empty and "'autumn'" in c.empty_reason and "spring" in c.empty_reason


def _write_log(frames: LogFrames, log_dir: Path) -> None:
    for kind, df in (
        ("impression", frames.impressions),
        ("event", frames.events),
        ("decision", frames.decisions),
    ):
        if len(df):
            table = pa.Table.from_pandas(df, schema=SCHEMAS[kind], preserve_index=False)
            write_atomically(table, log_dir / f"kind={kind}" / "date=2026-05-01" / "part-0-1_0-9_0.parquet")


def test_an_event_logged_twice_counts_once(tmp_path: Path) -> None:
    """RecordEvent answers stored=false when one of its two writes failed, and the caller re-sends
    (with its ts); the log may then hold the event twice, under two log ids."""
    from recsvc.experiments.report import read_log

    frames = campaign_log(0.05, 0.08, 2000, seed=7)
    once = campaign_report(frames, "spring", 7 * 86400)
    events = frames.events
    twice = pd.concat([events, events.assign(log_id=events["log_id"] + "-resent")], ignore_index=True)
    _write_log(LogFrames(frames.impressions, twice, frames.decisions), tmp_path / "log")
    read = read_log(tmp_path / "log")
    assert len(read.events) == len(events)
    again = campaign_report(read, "spring", 7 * 86400)
    assert [(g.buyers, g.revenue_per_member.value) for g in again.groups] == [
        (g.buyers, g.revenue_per_member.value) for g in once.groups
    ]


def _cli(*args: str, env_extra: dict[str, str]) -> subprocess.CompletedProcess[str]:
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith("RECSVC_") or k == "RECSVC_HOME"}
    env.update(env_extra)
    return subprocess.run(
        [sys.executable, "-c", "from recsvc.cli import main; main()", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )


@pytest.mark.integration
def test_report_commands_print_write_a_page_and_log_to_mlflow(tmp_path: Path) -> None:
    log_dir = tmp_path / "log"
    frames = campaign_log(0.05, 0.08, 3000, seed=6)
    ab = ab_log({"a": 0.06, "b": 0.10}, 2000, seed=6)
    _write_log(LogFrames(ab.impressions, pd.concat([ab.events, frames.events]), frames.decisions), log_dir)
    env = {
        "RECSVC_MLFLOW__TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
        "RECSVC_MLFLOW__ARTIFACT_LOCATION": str(tmp_path / "artifacts"),
        "COLUMNS": "200",
    }
    page = tmp_path / "campaign.html"
    done = _cli("report", "campaign", "spring", "--log-dir", str(log_dir), "--html", str(page), env_extra=env)
    assert done.returncode == 0, done.stderr
    assert "treatment" in done.stdout and "holdout" in done.stdout and "verdict" in done.stdout
    html = page.read_text()
    assert "data:image/png;base64," in html and "<script" not in html  # self-contained, plots inline
    as_json = _cli("report", "ab", "--log-dir", str(log_dir), "--json", "--no-mlflow", env_extra=env)
    assert as_json.returncode == 0, as_json.stderr
    data = json.loads(as_json.stdout)
    assert [v["variant"] for v in data["variants"]] == ["a", "b"] and data["verdict"]
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=env["RECSVC_MLFLOW__TRACKING_URI"])
    runs = client.search_runs(
        [e.experiment_id for e in client.search_experiments()], "tags.`recsvc.kind` = 'report'"
    )
    assert len(runs) == 1 and "uplift" in runs[0].data.metrics
    assert [a.path for a in client.list_artifacts(runs[0].info.run_id, "report")] == [
        "report/report.html",
        "report/report.json",
    ]
    # regression: an empty or wrong folder printed an empty report and exited 0
    (tmp_path / "none").mkdir()
    for folder in ("none", "typo"):
        wrong = _cli("report", "ab", "--log-dir", str(tmp_path / folder), "--no-mlflow", env_extra=env)
        assert wrong.returncode == 2 and "NO_EVENT_LOG" in wrong.stderr, wrong.stderr
        assert "Traceback" not in wrong.stderr
    # a real log with nothing in the period: the empty report says why, and the exit says so too
    quiet = ["--since", "2020-01-01", "--until", "2020-01-31", "--no-mlflow"]
    empty = _cli("report", "ab", "--log-dir", str(log_dir), *quiet, env_extra=env)
    assert empty.returncode == 1 and "empty report" in empty.stdout and "Traceback" not in empty.stderr
    none = _cli("report", "campaign", "autumn", "--log-dir", str(log_dir), "--json", env_extra=env)
    assert none.returncode == 1 and json.loads(none.stdout)["empty_reason"], none.stderr
    back = _cli(
        "report",
        "ab",
        "--log-dir",
        str(log_dir),
        "--since",
        "2026-05-09",
        "--until",
        "2026-05-01",
        env_extra=env,
    )
    assert back.returncode == 2 and "is after --until" in back.stderr
    bad = _cli("report", "ab", "--log-dir", str(log_dir), "--since", "May 1", "--no-mlflow", env_extra=env)
    assert bad.returncode == 2 and "INVALID_DATE" in bad.stderr


def test_odd_files_in_the_log_folder_are_named_or_skipped(tmp_path: Path) -> None:
    from recsvc.errors import DataContractError
    from recsvc.experiments.report import read_log

    log_dir = tmp_path / "log"
    _write_log(ab_log({"a": 0.1, "b": 0.1}, 200, seed=9), log_dir)
    assert len(read_log(log_dir).impressions) == 600
    stray = log_dir / "kind=impression" / "date=latest"  # not a day: none of the sink's folders
    stray.mkdir()
    first = next(iter(sorted(log_dir.glob("kind=impression/date=2*/part-*.parquet"))))
    (stray / first.name).write_bytes(first.read_bytes())
    assert len(read_log(log_dir).impressions) == 600
    empty = first.parent / "part-9-0_0-0_0.parquet"
    empty.write_bytes(b"")  # a disk that filled up
    with pytest.raises(DataContractError, match=r"part-9-0_0-0_0\.parquet is not a file of the event log"):
        read_log(log_dir)
    pd.DataFrame({"a": [1]}).to_parquet(empty)  # another program's file
    with pytest.raises(DataContractError, match="move it out of the log folder"):
        read_log(log_dir)


@pytest.mark.parametrize("days", ["inf", "1e12", "nan", "-inf"])
def test_a_window_no_timestamp_can_hold_is_refused_in_one_line(tmp_path: Path, days: str) -> None:
    from typer.testing import CliRunner

    from recsvc.cli import app

    log_dir = tmp_path / "log"
    _write_log(campaign_log(0.05, 0.08, 200, seed=7), log_dir)
    done = CliRunner().invoke(
        app,
        ["report", "campaign", "spring", "--log-dir", str(log_dir), "--window-days", days, "--no-mlflow"],
        env={"COLUMNS": "200"},
    )
    assert done.exit_code == 2, done.output
    assert "--window-days" in done.output and "Traceback" not in done.output
    assert done.exception is None or isinstance(done.exception, SystemExit)
    widest = CliRunner().invoke(
        app,
        ["report", "campaign", "spring", "--log-dir", str(log_dir), "--window-days", "3650", "--no-mlflow"],
        env={"COLUMNS": "200"},
    )
    assert widest.exit_code == 0, widest.output


@pytest.mark.parametrize("campaign", ["", "bad id!", "x" * 300])
def test_a_campaign_id_the_api_would_refuse_is_refused_by_the_report(tmp_path: Path, campaign: str) -> None:
    """ "" used to report every send that named no campaign as one campaign."""
    from typer.testing import CliRunner

    from recsvc.cli import app

    log_dir = tmp_path / "log"
    _write_log(campaign_log(0.05, 0.08, 200, seed=7), log_dir)
    done = CliRunner().invoke(
        app,
        ["report", "campaign", campaign, "--log-dir", str(log_dir), "--no-mlflow"],
        env={"COLUMNS": "200"},
    )
    out = " ".join(done.output.split())
    assert done.exit_code == 2, out
    assert "campaign_id" in out and "Traceback" not in out


def test_a_tracking_uri_mlflow_cannot_use_is_one_line_naming_the_setting(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from recsvc.cli import app

    (tmp_path / "log" / "kind=impression").mkdir(parents=True)
    done = CliRunner().invoke(
        app,
        ["report", "ab", "--log-dir", str(tmp_path / "log")],
        env={"RECSVC_MLFLOW__TRACKING_URI": "notauri", "MLFLOW_ALLOW_FILE_STORE": "false", "COLUMNS": "200"},
    )
    assert done.exit_code == 2, done.output
    assert "mlflow.tracking_uri" in done.output and "Traceback" not in done.output
    assert done.exception is None or isinstance(done.exception, SystemExit)
