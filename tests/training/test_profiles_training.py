"""Member profiles in training: the BTYD fits recover planted parameters, active hours are in the
member's own time zone (DST included), and the trained bundle carries the profile arrays."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import numpy as np
import pytest
from bundle_factory import make_bundle, train_small_bundle

from recsvc.bundle import PROFILE_ARRAYS, load_bundle
from recsvc.errors import BundleError
from training import btyd, profiles

PLANTED = btyd.BgNbd(r=0.24, alpha=30.9, a=0.79, b=2.43)  # the papers' CDNOW values, in days


def test_bgnbd_recovers_planted_parameters() -> None:
    x, t_x, big_t = btyd.simulate_bgnbd(PLANTED, 20_000, 270.0, seed=1)
    fitted = btyd.fit_bgnbd(x, t_x, big_t)
    for name, want in PLANTED.as_dict().items():
        assert fitted.as_dict()[name] == pytest.approx(want, rel=0.2), name


def test_bgnbd_predicts_the_next_period() -> None:
    """Simulate 300 days, fit on the first 270, compare the prediction with the last 30."""
    rng = np.random.default_rng(3)
    n = 8000
    lam = rng.gamma(PLANTED.r, 1.0 / PLANTED.alpha, n)
    p = rng.beta(PLANTED.a, PLANTED.b, n)
    x, t_x, future = np.zeros(n), np.zeros(n), np.zeros(n)
    for i in range(n):
        t = 0.0
        while True:
            t += rng.exponential(1 / lam[i])
            if t > 300:
                break
            if t <= 270:
                x[i] += 1
                t_x[i] = t
            else:
                future[i] += 1
            if rng.random() < p[i]:
                break
    big_t = np.full(n, 270.0)
    model = btyd.fit_bgnbd(x, t_x, big_t)
    predicted = model.expected_purchases(30.0, x, t_x, big_t)
    assert predicted.sum() == pytest.approx(future.sum(), rel=0.15)
    alive = model.p_alive(x, t_x, big_t)
    assert (future[alive >= 0.7] > 0).mean() > 1.5 * (future[alive < 0.3] > 0).mean()
    assert profiles.auc(predicted, future > 0) > 0.7


def test_gamma_gamma_recovers_planted_parameters() -> None:
    rng = np.random.default_rng(0)
    p, q, v = 6.25, 3.74, 15.44
    nu = rng.gamma(q, 1 / v, 6000)
    x = rng.integers(1, 10, 6000).astype(float)
    m = np.array([rng.gamma(p, 1 / s, int(k)).mean() for s, k in zip(nu, x, strict=True)])
    fitted = btyd.fit_gamma_gamma(x, m)
    assert fitted is not None
    assert fitted.population_mean == pytest.approx(p * v / (q - 1), rel=0.1)
    # a member with many purchases is valued near their own mean, one with few near the population's
    many = fitted.expected_value(np.array([50.0]), np.array([100.0]))[0]
    few = fitted.expected_value(np.array([1.0]), np.array([100.0]))[0]
    assert abs(many - 100) < abs(few - 100)


def test_summary_counts_purchase_days() -> None:
    day = btyd.DAY_S
    member = np.array([0, 0, 0, 1])
    ts = np.array([10 * day, 10 * day + 60, 15 * day, 12 * day])
    amount = np.array([5.0, 5.0, 20.0, 7.0], dtype=np.float32)
    s = btyd.summarise(member, ts, amount, 3, as_of=20 * day)
    assert s.x.tolist() == [1.0, 0.0, 0.0]  # two purchase days -> one repeat
    assert s.t_x.tolist() == [5.0, 0.0, 0.0]
    assert s.T.tolist() == [10.0, 8.0, 0.0]
    assert s.monetary.tolist() == [20.0, 0.0, 0.0]  # repeat occasions only
    assert s.buyer.tolist() == [True, True, False]


def test_active_hours_are_local_across_dst() -> None:
    """New York is UTC-4 in summer and UTC-5 in winter: 13:00 local is 17:00 and 18:00 UTC."""
    ny = ZoneInfo("America/New_York")
    local = [datetime(2026, 7, 1, 13, tzinfo=ny), datetime(2026, 12, 1, 13, tzinfo=ny)]
    ts = np.array([int(d.timestamp()) for d in local])
    zones = np.array([0, 0], dtype=np.int16)
    assert profiles.local_hours(ts, zones, ["America/New_York"], "Asia/Shanghai").tolist() == [13, 13]
    # an unknown zone (-1) falls back to the default
    assert profiles.local_hours(ts[:1], np.array([-1], dtype=np.int16), [], "Asia/Shanghai").tolist() == [1]


@pytest.mark.slow
@pytest.mark.integration
def test_trained_bundle_carries_profiles(tmp_path: Path) -> None:
    bundle = load_bundle(train_small_bundle(tmp_path, {}))
    spec = bundle.manifest.profiles
    assert spec is not None and set(PROFILE_ARRAYS) <= set(bundle.arrays)
    assert bundle.manifest.metrics["profiles.calibration_ratio"] == pytest.approx(1.0, abs=0.5)
    assert 0.0 <= bundle.manifest.metrics["profiles.auc_active"] <= 1.0
    hours = np.asarray(bundle.arrays["profile_hours"])
    assert hours.sum() > 0 and hours.shape == (len(bundle.members), 24)
    buyers = ~np.isnan(np.asarray(bundle.arrays["profile_p_alive"]))
    assert buyers.any() and (np.asarray(bundle.arrays["profile_value_tier"])[buyers] > 0).all()


def test_old_bundles_without_profiles_still_load(tmp_path: Path) -> None:
    planted = make_bundle(tmp_path / "b")
    assert load_bundle(planted.path).manifest.profiles is None


def test_half_a_profile_is_refused(tmp_path: Path) -> None:
    planted = make_bundle(tmp_path / "b")
    np.save(planted.path / "profile_p_alive.npy", np.zeros(3, dtype=np.float32))
    with pytest.raises(BundleError, match="member profiles"):
        load_bundle(planted.path)


def test_training_summary_shows_the_profile_evaluation() -> None:
    from types import SimpleNamespace

    from rich.console import Console

    from training.gate import GateDecision
    from training.summary import summary_tables

    report = SimpleNamespace(
        metrics={
            "profiles.calibration_ratio": 0.97,
            "profiles.auc_active": 0.79,
            "profiles.holdout_buy_rate.likely_active": 0.24,
            "profiles.holdout_buy_rate.likely_lost": 0.027,
        },
        decision=GateDecision(
            promote=True, reason="first model", candidate=0.1, champion=None, tolerance=0.02
        ),
        bundle_id="b",
        bundle_dir=None,
        run_id="r",
        model_version=None,
        params=SimpleNamespace(
            factors=8,
            regularization=0.1,
            alpha=2.0,
            iterations=3,
            half_life_days=60.0,
            confidence_scale="log",
            confidence_weighting="none",
        ),
        counts={},
        index_info={},
        timings={},
        family=None,
    )
    console = Console(record=True, width=250)
    for table in summary_tables(report):
        console.print(table)
    text = console.export_text()
    assert "member profiles" in text and "AUC=0.790" in text and "likely_lost=2.7%" in text


def test_top_k_per_row_orders_by_weight() -> None:
    rows = np.array([0, 0, 0, 2, 2])
    cols = np.array([5, 1, 7, 3, 4])
    vals = np.array([0.2, 0.5, 0.3, 1.0, 1.0])
    codes, weights = profiles._top_k_per_row(rows, cols, vals, 3, 2)
    assert codes.tolist() == [[1, 7], [-1, -1], [3, 4]]  # ties keep code order
    assert weights[0].tolist() == pytest.approx([0.5, 0.3]) and weights[1].tolist() == [0.0, 0.0]
