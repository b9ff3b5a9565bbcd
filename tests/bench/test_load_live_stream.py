"""The live-stream load scenario (load/live-stream.toml): the ledger members' answers are checked
against, the host that pins and sells out, the verdict row, and a short real run through
``recsvc load run`` against a two-process server."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from bundle_factory import make_bundle

from bench.livestream import LiveStreamHost, SoldOutLedger, most_recommended
from bench.loadconfig import LiveStream, Targets, load_config
from bench.report import RpcStats, Summary, evaluate, to_markdown

ROOT = Path(__file__).resolve().parents[2]
LIVE_STREAM_CONFIG = ROOT / "load" / "live-stream.toml"


def test_documented_live_stream_config_is_valid() -> None:
    config = load_config(LIVE_STREAM_CONFIG)
    assert config.live_stream.enabled and config.live_stream.pinned == 20
    assert config.live_stream.bound_s == 1.0 and config.targets.max_sold_out_past_bound == 0


def test_ledger_counts_sold_out_products_by_how_late_the_call_was_sent() -> None:
    ledger = SoldOutLedger(bound_s=1.0)
    ledger.pin(["A", "B", "C"])
    ledger.check(["A", "X"], sent_at=99.0)  # before any sell-out: A is pinned and in stock
    ledger.sold("A", 100.0)
    ledger.check(["A", "B"], sent_at=99.5)  # sent before A's change answered: not a miss
    ledger.check(["A", "B"], sent_at=100.4)  # within the bound
    ledger.check(["X", "A"], sent_at=101.5)  # past it
    ledger.check(["B", "X"], sent_at=103.0)  # B still in stock: fine
    c = ledger.counts
    assert (c.within_bound, c.past_bound, c.past_by_item) == (1, 1, {"A": 1})
    assert c.checked_calls == 3 and c.pinned_served == 5  # the 99.5 call came before any sell-out
    assert c.worst_lag_s == pytest.approx(1.5)


def test_a_sold_out_product_served_past_the_bound_fails_the_verdict() -> None:
    total = RpcStats("Aggregated", 10, 0, 10.0, 1.0, 1.0, 1.0, 1.0)
    ledger = SoldOutLedger(bound_s=1.0)
    ledger.pin(["A"])
    ledger.sold("A", 10.0)
    targets = Targets(max_sold_out_past_bound=0)
    ledger.check(["A"], sent_at=10.2)
    ok = Summary(title="t", rpcs=[], total=total, live_stream=ledger.counts.as_dict())
    assert [(v.target, v.passed) for v in evaluate(ok, targets)] == [("max_sold_out_past_bound", True)]
    ledger.check(["A"], sent_at=12.0)
    missed = Summary(title="t", rpcs=[], total=total, live_stream=ledger.counts.as_dict())
    verdicts = evaluate(missed, targets)
    missed.verdicts = verdicts
    assert [(v.target, v.passed, v.measured) for v in verdicts] == [("max_sold_out_past_bound", False, 1.0)]
    md = to_markdown(missed)
    assert "## Live stream" in md and "| 2 | 0 | 1 | 1 | 2.000 | none |" in md
    # Without a stream that sold anything out nothing was checked: not a pass.
    none = Summary(title="t", rpcs=[], total=total, live_stream=None)
    assert [v.passed for v in evaluate(none, targets)] == [False]


def test_host_pins_the_most_recommended_products_and_sells_them_out_on_schedule() -> None:
    assert most_recommended([["A", "B", "A"], ["B", "C"], ["B", "D"]], 2) == ["B", "A"]
    now = [1000.0]
    calls: list[tuple[str, bool, float]] = []
    lists = iter([["P1", "P2", "P3"], ["P2", "P3"], ["P2"]])

    def set_stock(item: str, in_stock: bool) -> None:
        if item == "P3" and not in_stock:
            raise RuntimeError("refused")
        calls.append((item, in_stock, now[0]))

    def sleep(s: float) -> None:
        now[0] += s

    ledger = SoldOutLedger(bound_s=1.0)
    host = LiveStreamHost(
        LiveStream(enabled=True, pinned=3, sample_members=3, start_after_s=2.0, sellout_interval_s=0.5),
        ledger,
        recommend=lambda member: next(lists),
        set_stock=set_stock,
        member=lambda: "M",
        sleep=sleep,
        clock=lambda: now[0],
    )
    host.run(started_at=1000.0)
    assert ledger.counts.pinned == ["P2", "P3", "P1"]
    assert [(i, s) for i, s, _ in calls] == [("P2", False), ("P1", False)]
    assert calls[0][2] == pytest.approx(1002.0) and calls[1][2] == pytest.approx(1003.0)
    assert set(ledger.counts.sold_out) == {"P2", "P1"}  # a refused SetStock is no sell-out
    assert ledger.counts.errors == {"RuntimeError": 1}
    host.restock()
    assert [(i, s) for i, s, _ in calls[2:]] == [("P2", True), ("P1", True)]


@pytest.mark.integration
def test_live_stream_scenario_runs_through_load_run_and_reports_its_counts(tmp_path: Path) -> None:
    """A short real run: two server processes, a host selling out 5 pinned products, members
    asking with in_stock_only; the summary has the counts and the verdict row."""
    planted = make_bundle(tmp_path / "bundle")
    text = LIVE_STREAM_CONFIG.read_text()
    for old, new in (
        ("pinned = 20 ", "pinned = 5 "),
        ("sample_members = 200 ", "sample_members = 30 "),
        ("start_after_s = 6.0 ", "start_after_s = 1.5 "),
        ("sellout_interval_s = 1.0 ", "sellout_interval_s = 0.3 "),
    ):
        assert old in text, old
        text = text.replace(old, new)
    cfg = tmp_path / "live.toml"
    cfg.write_text(text)
    results = tmp_path / "results"
    proc = subprocess.run(
        [
            sys.executable, "-m", "recsvc", "load", "run", "--load-config", str(cfg),
            "--bundle", str(planted.path), "--workers", "2", "--users", "6", "--duration", "4",
            "--warmup", "0", "--results", str(results), "--workdir", str(tmp_path / "work"),
            "--fail-on-miss",
        ],
        capture_output=True, text=True, timeout=180, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (out,) = [p for p in results.iterdir() if p.is_dir()]
    summary = json.loads((out / "summary.json").read_text())
    live = summary["live_stream"]
    assert len(live["pinned"]) == 5 and len(live["sold_out"]) == 5, live
    assert live["checked_calls"] > 0 and live["pinned_served"] > 0, live  # the check could bite
    assert live["past_bound"] == 0 and live["errors"] == {}, live
    verdicts = {v["target"]: v["passed"] for v in summary["verdicts"]}
    assert verdicts["max_sold_out_past_bound"] is True
    assert "## Live stream" in (out / "summary.md").read_text()
    assert (out / "live-stream.json").is_file()


def test_live_stream_refuses_several_locust_processes(tmp_path: Path) -> None:
    proc = subprocess.run(
        [
            sys.executable, "-m", "recsvc", "load", "run", "--load-config", str(LIVE_STREAM_CONFIG),
            "--processes", "2", "--bundle", str(tmp_path), "--results", str(tmp_path / "r"),
        ],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert proc.returncode == 2 and "runs in one Locust process" in proc.stderr, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
