"""--tune: the search space holds what experts find, the validation split is chosen by a stated
rule, the chosen parameters are saved and read back, bad settings get a named error."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from recsvc.errors import ConfigError
from recsvc.settings import TrainingSettings, load_settings
from training import prepare, split, tune
from training.confidence import confidence_matrix, weight_table
from training.fit import AlsParams, resolve_weighting
from training.synthetic import make_dataset


def _base(**kw: object) -> AlsParams:
    return AlsParams.from_settings(TrainingSettings(**kw))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("name", "expert_values"),
    [
        # small dense data (e.g. MovieLens-like): many factors, strong regularization
        ("regularization", (1e-2, 0.1, 1.0, 10.0, 100.0, 500.0)),
        ("alpha", (0.5, 1.0, 10.0, 40.0, 80.0)),
        ("factors", (16, 32, 64, 128, 256)),
        ("iterations", (5, 15, 30, 50)),
        ("half_life_days", (14.0, 60.0, 365.0)),
    ],
)
def test_search_space_contains_what_experts_find(name: str, expert_values: tuple[float, ...]) -> None:
    lo, hi = tune.SPACE[name]
    assert all(lo <= v <= hi for v in expert_values)


def test_a_trial_can_ask_for_no_decay_and_large_regularization() -> None:
    import optuna

    base = _base()
    trial = optuna.trial.FixedTrial(
        {
            "weight_sharpness": 0.5,
            "recency_decay": False,
            "half_life_days": 30.0,
            "factors": 128,
            "regularization": 300.0,
            "alpha": 40.0,
            "iterations": 20,
            "confidence_scale": "linear",
            "confidence_weighting": "none",
        }
    )
    p = tune.suggest(trial, base)
    assert p.half_life_days == 0.0  # no decay
    assert base.confidence_scale == "log" and p.confidence_scale == "linear"  # searched, both ways
    assert base.confidence_weighting == "auto" and p.confidence_weighting == "none"
    assert (p.factors, p.regularization, p.alpha, p.iterations) == (128, 300.0, 40.0, 20)
    assert p.event_weights["purchase"] == pytest.approx(base.event_weights["purchase"] ** 0.5)
    # the order of the event weights is kept
    assert p.event_weights["purchase"] > p.event_weights["add_to_cart"] > p.event_weights["view"]


def test_start_points_are_the_base_and_a_dense_data_point_inside_the_space() -> None:
    points = tune.start_points(_base(half_life_days=0, factors=32, confidence_weighting="bm25"))
    assert points[0]["recency_decay"] is False and points[0]["factors"] == 32
    assert points[1]["regularization"] >= 10 and points[1]["recency_decay"] is False
    for point in points:
        for name, (lo, hi) in tune.SPACE.items():
            assert lo <= point[name] <= hi, name
        assert point["confidence_scale"] in tune.SCALES
        assert point["confidence_weighting"] in tune.WEIGHTINGS
    # the dense region as it was found; the base keeps its own weighting, and is tried with the other
    assert [p["confidence_weighting"] for p in points] == ["bm25", "none", "none"]
    assert points[2] == points[0] | {"confidence_weighting": "none"}
    unweighted = tune.start_points(_base(confidence_weighting="none", alpha=8.0))[2]
    assert (unweighted["confidence_weighting"], unweighted["alpha"]) == ("bm25", 2.0)


def test_no_decay_weighs_old_and_new_events_alike() -> None:
    p = prepare.prepare(make_dataset(members=30, events_per_member=5, seed=3))
    shape = (len(p.members), len(p.items))
    flat = confidence_matrix(p.events, shape, {"purchase": 1.0, "view": 1.0}, 0.0, p.cutoff)
    decayed = confidence_matrix(p.events, shape, {"purchase": 1.0, "view": 1.0}, 10.0, p.cutoff)
    assert flat.sum() > decayed.sum()
    positive = weight_table({"purchase": 1.0, "view": 1.0}) > 0
    assert flat.sum() == pytest.approx(float(positive[p.events.etype].sum()))


def test_random_split_holds_out_whole_member_item_pairs() -> None:
    p = prepare.prepare(make_dataset(members=200, events_per_member=20, seed=1))
    shape = (len(p.members), len(p.items))
    positive = weight_table(TrainingSettings().event_weights) > 0
    s = split.random_split(p.events, shape, p.cutoff, 0.25, positive, seed=0)
    assert s.test.nnz > 0
    # no held-out pair has a single event left in training
    assert s.test.multiply(s.seen).nnz == 0
    # every tested member keeps training history; about a quarter of the pairs are held out
    tested = np.flatnonzero(np.diff(s.test.indptr) > 0)
    assert (np.diff(s.seen.indptr)[tested] > 0).all()
    share = s.test.nnz / (s.test.nnz + s.seen.nnz)
    assert 0.15 < share < 0.35


def _trending(seed: int) -> prepare.Prepared:
    """Synthetic data whose last 40 days are dominated by a few new best sellers: time order
    carries signal (recent popularity predicts the next days)."""
    data = make_dataset(members=600, events_per_member=30, days=120, seed=seed)
    ev = data.events
    rng = np.random.default_rng(seed)
    recent = ev["ts"] > ev["ts"].max() - pd.Timedelta(days=40)
    swap = recent & (rng.random(len(ev)) < 0.6) & ev["item_id"].str.startswith("p")
    trending = np.array([f"p{i:05d}" for i in range(100, 110)])
    ev.loc[swap, "item_id"] = rng.choice(trending, int(swap.sum()))
    return prepare.prepare(data)


def _choose(p: prepare.Prepared, **kw: object) -> tuple[str, str]:
    t = TrainingSettings(**kw)  # type: ignore[arg-type]
    shape = (len(p.members), len(p.items))
    positive = weight_table(t.event_weights) > 0
    holdout = split.holdout(p, t.holdout_days, positive)
    _, how, why, _ = tune.choose_validation(holdout, shape, p.item_kind, t, positive)
    return how, why


def _thin_recent(seed: int, quiet_days: int = 100, keep_every: int = 16) -> prepare.Prepared:
    """All but every ``keep_every``-th member went quiet ``quiet_days`` before the end (e.g. a
    bulk import of old history): the weeks before the holdout hold few members to validate on."""
    data = make_dataset(members=600, events_per_member=30, days=120, seed=seed)
    ev = data.events
    late = ev["ts"] > ev["ts"].max() - pd.Timedelta(days=quiet_days)
    keep = ~late | ev["member_id"].isin([f"m{i:06d}" for i in range(0, 600, keep_every)])
    data.events = ev[keep].reset_index(drop=True)
    return prepare.prepare(data)


def test_auto_validation_picks_random_when_the_time_window_is_too_thin() -> None:
    how, why = _choose(_thin_recent(seed=2))
    assert how == "random", why
    assert "test members" in why


def test_auto_validation_keeps_a_widened_window_of_some_dozens_of_members() -> None:
    # 74 members after widening: noisy, but the two-standard-error rule guards the choice; a
    # random split would judge another question
    how, why = _choose(_thin_recent(seed=2, keep_every=8))
    assert how == "time", why
    assert "widened from 14" in why and tune.MIN_TIME_MEMBERS <= int(why.split(" has ")[1].split()[0]) < 200


def test_auto_validation_keeps_the_holdouts_kind_when_the_window_is_full() -> None:
    for p in (_trending(seed=4), prepare.prepare(make_dataset(members=600, events_per_member=30, seed=2))):
        how, why = _choose(p)
        assert how == "time", why
        assert "widened" not in why, why


def test_auto_validation_widens_a_thin_time_window_before_giving_up_on_time() -> None:
    # quiet for the last 35 days: 14 days before the holdout hold a few dozen members, 28 hold
    # the week before the quiet began
    p = _thin_recent(seed=2, quiet_days=35)
    how, why = _choose(p)
    assert how == "time", why
    assert "of 28 days (widened from 14)" in why, why
    t = TrainingSettings()
    shape = (len(p.members), len(p.items))
    positive = weight_table(t.event_weights) > 0
    holdout = split.holdout(p, t.holdout_days, positive)
    narrow = split.validation(holdout, shape, 14, positive)
    wide, days = split.widened_validation(holdout, shape, 14, positive)
    assert days == 28
    assert split.tested_members(narrow) < split.MIN_VALIDATION_MEMBERS <= split.tested_members(wide)
    # the wider window is still the last days before the holdout, nothing of the holdout in it
    assert wide.end < holdout.start and wide.start == holdout.start - 1 - 28 * prepare.DAY_S


def test_widening_stops_at_half_the_training_span() -> None:
    p = _thin_recent(seed=3, quiet_days=100)
    t = TrainingSettings()
    shape = (len(p.members), len(p.items))
    positive = weight_table(t.event_weights) > 0
    holdout = split.holdout(p, t.holdout_days, positive)
    wide, days = split.widened_validation(holdout, shape, 14, positive)
    # 106 days of training: 28 fits in half of it, 56 does not
    assert days == 28
    assert split.tested_members(wide) < split.MIN_VALIDATION_MEMBERS


def test_validation_split_setting_overrides_the_rule() -> None:
    assert _choose(_trending(seed=4), validation_split="random")[0] == "random"
    assert _choose(prepare.prepare(make_dataset(seed=2)), validation_split="time")[0] == "time"


def test_search_prunes_logs_nothing_without_mlflow_and_returns_the_best_trial() -> None:
    p = prepare.prepare(make_dataset(members=300, events_per_member=25, seed=5))
    # tune_min_gain_se 0: the best trial wins by any margin (the rule has its own test below)
    t = TrainingSettings(
        factors=16, iterations=12, tune_startup_trials=2, tune_eval_members=200, tune_min_gain_se=0
    )
    shape = (len(p.members), len(p.items))
    positive = weight_table(t.event_weights) > 0
    holdout = split.holdout(p, t.holdout_days, positive)
    tuned = tune.search(
        p, holdout, AlsParams.from_settings(t), t, trials=8, positive_types=positive, log_trials=False
    )
    assert len(tuned.trials) == 8 and shape[0] > 0
    complete = [r for r in tuned.trials if r["state"] == "complete"]
    assert tuned.best_value == max(r["val_ndcg_at_10"] for r in complete)
    best = max(complete, key=lambda r: r["val_ndcg_at_10"])
    assert tuned.params.factors == best["factors"]
    assert tuned.trials[0]["factors"] == 16  # trial 0 is the starting configuration
    # hopeless fits are stopped part-way (seeded: the same trials every run)
    assert any(r["state"] == "pruned" for r in tuned.trials)


def test_a_lead_within_the_validation_noise_keeps_the_starting_configuration() -> None:
    p = prepare.prepare(make_dataset(members=300, events_per_member=25, seed=5))
    positive = weight_table(TrainingSettings().event_weights) > 0
    runs = {}
    for need in (0.0, 1e9):  # any lead replaces the start / none can
        t = TrainingSettings(factors=16, iterations=12, tune_startup_trials=2, tune_eval_members=200)
        t = t.model_copy(update={"tune_min_gain_se": need})
        holdout = split.holdout(p, t.holdout_days, positive)
        runs[need] = tune.search(
            p, holdout, AlsParams.from_settings(t), t, trials=6, positive_types=positive, log_trials=False
        )
    free, strict = runs[0.0], runs[1e9]
    start = free.trials[0]["val_ndcg_at_10"]
    assert free.best_value > start  # some trial led the start on validation ...
    assert free.info["kept_start"] == 0.0 and free.info["best_gain"] > 0
    # ... and with the bar out of reach the start stays, said so in the saved file's header
    assert strict.info["kept_start"] == 1.0
    # the start as training fits it: "auto" weighting decided on the training interactions
    start_params, _ = resolve_weighting(AlsParams.from_settings(t), holdout.seen, t.bm25_auto_items)
    assert start_params.confidence_weighting in tune.WEIGHTINGS
    assert strict.params == start_params
    assert strict.best_value == pytest.approx(start)
    assert "starting configuration kept" in tune.describe(strict)


def test_confirmation_members_are_tested_unsearched_and_capped() -> None:
    rng = np.random.default_rng(0)
    rows = 2_000
    counts = rng.integers(0, 3, size=rows)  # about a third of the members have nothing to find
    indptr = np.concatenate([[0], np.cumsum(counts)])
    test = sp.csr_matrix((np.ones(indptr[-1]), rng.integers(0, 50, indptr[-1]), indptr), shape=(rows, 50))
    tested = np.flatnonzero(counts > 0)
    searched = tested[::3]
    confirm = tune.confirmation_members(test, searched, 10_000, seed=0)
    assert np.array_equal(confirm, np.setdiff1d(tested, searched))  # all the others, in order
    capped = tune.confirmation_members(test, searched, tune.MIN_CONFIRM_MEMBERS, seed=0)
    assert capped.size == tune.MIN_CONFIRM_MEMBERS and np.isin(capped, confirm).all()
    assert np.all(np.diff(capped) > 0)
    # too few left to judge by: none, and the lead is measured on the searched members
    assert tune.confirmation_members(test, tested[5:], 10_000, seed=0).size == 0


def test_the_best_trials_lead_is_measured_on_members_the_search_did_not_score() -> None:
    p = prepare.prepare(make_dataset(members=1500, events_per_member=20, seed=5))
    positive = weight_table(TrainingSettings().event_weights) > 0
    runs = {}
    for confirm in (10_000, 0):
        t = TrainingSettings(
            factors=16,
            iterations=12,
            tune_startup_trials=2,
            tune_eval_members=100,
            tune_min_gain_se=0,
            tune_confirm_members=confirm,
        )
        holdout = split.holdout(p, t.holdout_days, positive)
        runs[confirm] = tune.search(
            p, holdout, AlsParams.from_settings(t), t, trials=5, positive_types=positive, log_trials=False
        )
    confirmed, searched_only = runs[10_000], runs[0]

    def search_of(tuned: tune.Tuned) -> list[dict[str, object]]:
        return [{k: v for k, v in row.items() if k != "fit_seconds"} for row in tuned.trials]

    assert search_of(confirmed) == search_of(searched_only)  # the same search: only the judging differs
    assert confirmed.info["kept_start"] == 0.0, "some trial must lead for the lead to be measured"
    shape = (len(p.members), len(p.items))
    defaults = TrainingSettings()
    holdout = split.holdout(p, defaults.holdout_days, positive)
    tested = split.tested_members(split.validation(holdout, shape, defaults.validation_days, positive))
    assert confirmed.info["confirm_members"] == tested - 100
    # on the searched members the lead is the one the search saw; on the others it is new
    assert confirmed.info["search_gain"] == pytest.approx(searched_only.info["best_gain"])
    assert confirmed.info["best_gain"] != pytest.approx(searched_only.info["best_gain"])
    assert "confirm_members" not in searched_only.info
    assert f"{tested - 100} validation members the search did not score" in confirmed.validation_reason


def test_the_paired_gain_is_the_mean_difference_with_its_standard_error() -> None:
    rng = np.random.default_rng(3)
    start = rng.random(400)
    gain, se = tune.paired_gain(start, start + 0.01)
    assert gain == pytest.approx(0.01) and se == pytest.approx(0.0, abs=1e-12)  # the same shift for all
    noisy = start + rng.normal(0.0, 0.1, 400)
    gain, se = tune.paired_gain(start, noisy)
    assert se == pytest.approx(np.std(noisy - start, ddof=1) / 20)
    assert abs(gain) < 3 * se  # pure noise: no lead worth the name


def test_saved_params_are_a_settings_fragment_that_params_reads_back(tmp_path: Path) -> None:
    params = _base(
        half_life_days=0, regularization=123.5, factors=96, confidence_weighting="none", bm25_b=0.5
    )
    tuned = tune.Tuned(params, [], "time", "training.validation_split = time", 0.25)
    path = tune.write_params(tmp_path / "p" / "params.toml", tuned)
    overrides = tune.read_params(path)
    s = load_settings(overrides={"training": overrides}).training
    assert (s.factors, s.regularization, s.half_life_days) == (96, 123.5, 0.0)
    assert (s.confidence_weighting, s.bm25_b) == ("none", 0.5)
    assert s.event_weights == params.event_weights
    # and the same file works as a settings file
    assert load_settings(config_file=path).training.regularization == 123.5


def test_params_file_with_other_settings_is_refused_by_name(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("[training]\nfactors = 8\nholdout_days = 3\n")
    with pytest.raises(ConfigError, match="holdout_days"):
        tune.read_params(path)
    path.write_text("[serving]\nport = 1\n")
    with pytest.raises(ConfigError, match="exactly one \\[training\\] table"):
        tune.read_params(path)
    with pytest.raises(ConfigError, match="not found"):
        tune.read_params(tmp_path / "missing.toml")


@pytest.mark.parametrize(
    ("key", "value", "named"),
    [
        ("validation_split", "sometimes", "validation_split"),
        ("validation_share", 1.5, "validation_share"),
        ("half_life_days", -1, "half_life_days"),
        ("tune_eval_members", 5, "tune_eval_members"),
        ("tune_confirm_members", -1, "tune_confirm_members"),
    ],
)
def test_bad_tuning_settings_get_a_named_error(key: str, value: object, named: str) -> None:
    with pytest.raises(ConfigError, match=named):
        load_settings(overrides={"training": {key: value}})


def test_itemknn_and_blend_are_measured_like_als() -> None:
    from training import evaluate, itemknn
    from training.factors import train_factors

    p = prepare.prepare(make_dataset(members=300, events_per_member=25, seed=6))
    t = TrainingSettings(factors=16, iterations=8)
    shape = (len(p.members), len(p.items))
    params = AlsParams.from_settings(t)
    positive = weight_table(params.event_weights) > 0
    h = split.holdout(p, t.holdout_days, positive)
    trained = train_factors(p, h.train, h.start, params)
    knn = itemknn.fit(trained.matrix, neighbours=50)
    assert knn.similarity.shape == (shape[1], shape[1])
    args = (trained.member_factors, trained.item_factors, trained.matrix, knn.similarity, h.seen, h.test)
    # ALS weight 1 is exactly ALS as training.evaluate measures it
    als = evaluate.evaluate(
        trained.member_factors, trained.item_factors, h.seen, h.test, p.item_kind, None, max_members=500
    )
    blend_1 = itemknn.evaluate(*args, p.item_kind, 1.0, max_members=500, seed=0)
    assert blend_1["all.ndcg_at_10"] == pytest.approx(als["all.ndcg_at_10"], abs=1e-6)
    assert blend_1["product.recall_at_20"] == pytest.approx(als["product.recall_at_20"], abs=1e-6)
    knn_only = itemknn.evaluate(*args, p.item_kind, 0.0, max_members=500, seed=0)
    assert knn_only["all.ndcg_at_10"] > 0.05  # the planted groups are found by neighbours too
    weight, scores = itemknn.choose_weight(*args, p.item_kind, max_members=500, seed=0)
    assert weight in itemknn.WEIGHTS and scores[weight] == max(scores.values())
