"""`recsvc load bench throttle` (bench/inproc.run_throttle) briefly, against a real redis-server: every
decision it times is counted by reason, members with consent and a daytime zone get through the
whole policy (not refused for consent or quiet hours), and the report carries what was measured."""

from __future__ import annotations

import pytest

from bench.inproc import ThrottleBenchOptions, run_throttle
from recsvc.settings import load_settings

pytestmark = pytest.mark.integration


def test_throttle_bench_counts_every_decision_and_reports_them(redis_url: str) -> None:
    options = ThrottleBenchOptions(decisions=400, batch=50, members=20, single_calls=30, redis_url=redis_url)
    rates = run_throttle(options, lambda overrides: load_settings(overrides=overrides))

    assert sum(rates.reasons["check"].values()) == 400
    assert sum(rates.reasons["reserve"].values()) == 400
    assert sum(rates.reasons["single"].values()) == 30 + 200  # timed calls and the warm-up
    for mode in ("single", "check", "reserve"):
        assert not {"NO_CONSENT", "QUIET_HOURS"} & set(rates.reasons[mode]), rates.reasons[mode]
    assert rates.reasons["check"].get("ALLOWED", 0) > 0
    assert rates.pipelined_check_per_s > 0 and rates.pipelined_reserve_per_s > 0
    report = rates.as_dict()
    assert (report["batch"], report["decisions"], report["timezone"]) == (50, 400, rates.timezone)
    assert "400 each" in rates.markdown() and rates.timezone in rates.markdown()
