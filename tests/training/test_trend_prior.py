"""The trend prior end to end: on data whose buyers follow what is selling now, training chooses a
weight on validation, the holdout confirms it, the bundle records it, and serving ranks as
training evaluated; settings that switch it off or fix it, and the gate's margin."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from recsvc.bundle import KIND_CONTENT, KIND_PRODUCT, load_bundle
from recsvc.engine.filters import FilterSpec
from recsvc.engine.recommender import RecommendationEngine, SingleModel
from recsvc.engine.served_model import ServedModel
from recsvc.errors import ConfigError
from recsvc.settings import Settings, load_settings
from training import gate, itemknn, pipeline, trend
from training.prepare import DAY_S
from training.synthetic import SyntheticDataset, make_dataset

pytestmark = pytest.mark.integration


def _settings(tmp: Path, **training: Any) -> Settings:
    return load_settings(
        overrides={
            "mlflow": {"tracking_uri": f"sqlite:///{tmp}/mlflow.db", "artifact_location": str(tmp / "a")},
            # BM25 off: the planted hot list is judged against the model the scenario was built for
            "training": {
                "factors": 16,
                "iterations": 8,
                "eval_members": 500,
                "itemknn": "off",
                "confidence_weighting": "none",
                **training,
            },
        }
    )


def trending(seed: int = 0) -> SyntheticDataset:
    """Taste groups as usual, and on top a hot list of 8 products that drifts by two every ten
    days: a third of each day's purchases are hot products, bought by anyone."""
    data = make_dataset(members=500, products=150, content=20, events_per_member=25, days=120, seed=seed)
    rng = np.random.default_rng(seed + 1)
    end = data.events["ts"].max()
    products = data.catalog.loc[data.catalog["kind"] == "product", "item_id"].to_numpy()
    members = data.members["member_id"].to_numpy()
    rows = []
    for day in range(120):
        step = (119 - day) // 10
        hot = products[(np.arange(8) + 2 * step) % len(products)][::-1]
        for _ in range(40):
            item = hot[min(int(rng.zipf(1.6)) - 1, 7)]
            ts = end - pd.Timedelta(days=119 - day) + pd.Timedelta(seconds=float(rng.uniform(0, 86_000)))
            rows.append((rng.choice(members), item, "purchase", ts))
    hot_events = pd.DataFrame(rows, columns=["member_id", "item_id", "event_type", "ts"])
    hot_events["channel"] = "app"
    hot_events["quantity"] = 1
    price = data.catalog.set_index("item_id")["price"]
    hot_events["amount"] = price.reindex(hot_events["item_id"]).to_numpy()
    data.events = pd.concat([data.events, hot_events], ignore_index=True).sort_values("ts", ignore_index=True)
    data.counts = {"events_read": len(data.events), "events_ok": len(data.events)}
    return data


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[pipeline.TrainingReport, Path, SyntheticDataset]:
    store = tmp_path_factory.mktemp("trend")
    data = trending()
    report = pipeline.run(
        _settings(store),
        pipeline.TrainOptions(data_dir=store, bundle_out=store / "b", register=False, refit=False),
        dataset=data,
    )
    return report, store, data


def test_training_chooses_the_trend_and_the_holdout_confirms_it(run: Any) -> None:
    report, store, _ = run
    m = report.metrics
    assert report.family is not None and report.family.trend_weight == m["trend.weight"] > 0
    assert m["trend.all.ndcg_at_10"] > m["all.ndcg_at_10"] * 1.02  # past the margin, on the holdout
    assert m["trend.all.ndcg_at_10"] > m["recent.all.ndcg_at_10"]  # more than the trend alone
    assert m["trend.recent_share"] >= 0.25  # measured under the default screen
    val = {float(k.rsplit(".t", 1)[1]): v for k, v in m.items() if k.startswith("trend.val.ndcg_at_10.t")}
    assert set(val) == set(trend.WEIGHTS) and trend.choose(val) == m["trend.weight"]
    with_prior, without = gate.by_kind(m, "trend."), gate.by_kind(m)
    assert with_prior is not None and without is not None
    assert with_prior > without * 1.02  # judged per kind, as serving ranks
    assert "trend prior" in report.family.reason
    assert report.decision.candidate == m["trend.all.ndcg_at_10"]  # the gate judges what serves
    assert m["served.all.ndcg_at_10"] == m["trend.all.ndcg_at_10"]
    assert m["served.product.recall_at_20"] == m["trend.product.recall_at_20"]
    bundle = load_bundle(store / "b")
    assert bundle.manifest.family.trend_weight == m["trend.weight"]
    assert bundle.manifest.family.trend_days == 14
    assert bundle.arrays["item_trend"].shape == (len(bundle.items),)
    # the hot list is products: content's own figure is best without the prior, so its trend
    # is zeroed and it ranks by the family alone, while products keep theirs
    assert m["trend.content.off"] == 1 and "trend.product.off" not in m
    assert m["trend.content.ndcg_at_10"] == pytest.approx(m["content.ndcg_at_10"])
    kinds = np.asarray(bundle.arrays["item_kind"])
    item_trend = np.asarray(bundle.arrays["item_trend"])
    assert not item_trend[kinds == KIND_CONTENT].any() and item_trend[kinds == KIND_PRODUCT].any()


def test_the_served_lists_are_the_ones_training_evaluated(run: Any) -> None:
    _, store, _ = run
    bundle = load_bundle(store / "b")
    spec = bundle.manifest.family
    model = ServedModel.load(store / "b", version="t", source_uri="t")
    settings = load_settings(overrides={"serving": {"max_per_category": 0, "replenish": False}}).serving
    engine = RecommendationEngine(SingleModel(model), None, settings, clock=lambda: 2_000_000_000.0)
    products = np.flatnonzero(bundle.arrays["item_kind"] == KIND_PRODUCT)
    raw = np.asarray(bundle.arrays["item_trend"])[products]
    part = raw / raw.max()
    checked = 0
    for row in range(0, len(bundle.members), 7):
        scorer = itemknn._Scorer(
            np.asarray(bundle.arrays["member_factors"][[row]]),
            np.asarray(bundle.arrays["item_factors"][products]),
            sp.csr_matrix(bundle.history[[row]]),
            None,
            1.0,
            trend=part,
            trend_weight=spec.trend_weight,
        )
        ids, scores = scorer.recommend(
            np.array([0]),
            sp.csr_matrix(bundle.history[[row]][:, products]),
            N=10,  # seen items out
        )
        expected = [bundle.items.ids([int(products[i])])[0] for i in ids[0] if i >= 0]
        filters = FilterSpec(diversity=0.0, in_stock_only=False)
        resp = engine.recommend(bundle.members.ids([row])[0], KIND_PRODUCT, 10, "", filters).response
        assert [it.item_id for it in resp.items] == expected
        assert [it.score for it in resp.items] == pytest.approx(scores[0][: len(expected)].tolist(), abs=1e-5)
        checked += 1
    assert checked >= 50


def test_trend_weights_count_the_last_days_before_the_end() -> None:
    from training.prepare import EventArrays

    ts = np.array([0, 10, 20, 29, 30], dtype=np.int64) * DAY_S
    events = EventArrays(
        member=np.zeros(5, np.int32),
        item=np.array([0, 1, 1, 2, 0], np.int32),
        etype=np.zeros(5, np.int8),
        ts=ts,
        channel=np.zeros(5, np.int8),
        amount=np.zeros(5, np.float32),
    )
    from training.prepare import EVENT_TYPES

    weights = {EVENT_TYPES[0]: 2.0}
    got = trend.item_trend(events, weights, end=30 * DAY_S, days=14, n_items=4)
    assert got.tolist() == [0.0, 2.0, 2.0, 0.0]  # days 20 and 29 count; day 30 is the end, 10 too old
    assert trend.choose({0.0: 0.5, 0.2: 0.5, 0.5: 0.4}) == 0.0  # a tie keeps the smaller weight


def test_trend_settings(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="trend_weight is set but trend is 'off'"):
        _settings(tmp_path, trend="off", trend_weight=0.3)
    with pytest.raises(ConfigError, match="trend_weight"):
        _settings(tmp_path, trend_weight=1.0)
    data = make_dataset(members=200, products=60, content=10, events_per_member=15, seed=4)
    off = pipeline.run(
        _settings(tmp_path / "off", trend="off"),
        pipeline.TrainOptions(data_dir=tmp_path, bundle_out=tmp_path / "off" / "b", register=False),
        dataset=data,
    )
    assert not any(k.startswith(("trend.", "recent.")) for k in off.metrics)
    assert off.metrics["served.all.ndcg_at_10"] == off.metrics["all.ndcg_at_10"]  # ALS serves
    assert off.family is not None and off.family.trend_weight == 0
    screened = pipeline.run(
        _settings(tmp_path / "screen", trend_min_share=1.0),
        pipeline.TrainOptions(data_dir=tmp_path, bundle_out=tmp_path / "screen" / "b", register=False),
        dataset=data,
    )
    m = screened.metrics
    assert m["trend.recent_share"] < 1.0 and m["trend.weight"] == 0.0  # recent popularity is measured ...
    assert "recent.all.ndcg_at_10" in m and not any(k.startswith("trend.val.") for k in m)  # ... nothing more
    always = pipeline.run(
        _settings(tmp_path / "always", trend_min_share=0.0),
        pipeline.TrainOptions(data_dir=tmp_path, bundle_out=tmp_path / "always" / "b", register=False),
        dataset=data,
    )
    assert sum(k.startswith("trend.val.ndcg_at_10.t") for k in always.metrics) == len(trend.WEIGHTS)
    forced = pipeline.run(
        _settings(tmp_path / "on", trend_weight=0.2),
        pipeline.TrainOptions(data_dir=tmp_path, bundle_out=tmp_path / "on" / "b", register=False),
        dataset=data,
    )
    assert forced.family is not None and forced.family.trend_weight == 0.2
    assert load_bundle(tmp_path / "on" / "b").manifest.family.trend_weight == 0.2


def test_a_window_without_events_has_no_recent_popularity(tmp_path: Path) -> None:
    # no events in the 14 days before the holdout: the recent scores are all 0, whose ranking is
    # the items' index order; it once reported that order's NDCG as the baseline's
    data = make_dataset(members=300, products=60, content=10, events_per_member=20, days=90, seed=6)
    end = data.events["ts"].max()
    start = end - pd.Timedelta(days=14)
    gap = (data.events["ts"] >= start - pd.Timedelta(days=14)) & (data.events["ts"] < start)
    data.events = data.events[~gap].reset_index(drop=True)
    report = pipeline.run(
        _settings(tmp_path),
        pipeline.TrainOptions(data_dir=tmp_path, bundle_out=tmp_path / "b", register=False, refit=False),
        dataset=data,
    )
    m = report.metrics
    assert m["recent.all.ndcg_at_10"] == 0.0 and m["recent.all.recall_at_20"] == 0.0
    assert m["trend.weight"] == 0.0 and m["all.ndcg_at_10"] > 0


def test_the_trend_serves_only_past_the_margin() -> None:
    choice = gate.FamilyChoice("als", "als (simplest)", {"als": 0.10})
    metrics = {"trend.weight": 0.35, "trend.all.ndcg_at_10": 0.101}
    kept = gate.with_trend(choice, metrics, forced=False, margin=0.02)
    assert kept.trend_weight == 0 and "trend prior off" in kept.reason
    assert gate.spec_metric(kept) == "all.ndcg_at_10"
    won = gate.with_trend(choice, {**metrics, "trend.all.ndcg_at_10": 0.103}, forced=False, margin=0.02)
    assert won.trend_weight == 0.35 and gate.spec_metric(won) == gate.TREND_METRIC
    assert gate.with_trend(choice, metrics, forced=True, margin=0.02).trend_weight == 0.35
    assert gate.with_trend(choice, {"trend.weight": 0.0}, forced=False, margin=0.02) == choice


def test_the_trend_is_judged_per_kind_as_serving_ranks() -> None:
    """A joint ``all`` figure that says "on" does not turn the prior on when the kinds a call asks
    for, each ranked alone, say it loses; the mean weighs each kind by its test members."""
    per_kind = {"product.members": 300.0, "content.members": 100.0, "trend.product.members": 300.0}
    per_kind |= {"trend.content.members": 100.0, "product.ndcg_at_10": 0.20, "content.ndcg_at_10": 0.60}
    assert gate.by_kind(per_kind) == pytest.approx(0.30)
    assert gate.by_kind({"all.ndcg_at_10": 0.4}) == 0.4 and gate.by_kind({}) is None
    losing = per_kind | {"trend.weight": 0.5, "trend.all.ndcg_at_10": 0.9}
    losing |= {"trend.product.ndcg_at_10": 0.24, "trend.content.ndcg_at_10": 0.40}  # mean 0.28
    choice = gate.FamilyChoice("als", "als (simplest)", {"als": 0.1})
    assert gate.with_trend(choice, losing, forced=False, margin=0.02).trend_weight == 0
    winning = losing | {"trend.content.ndcg_at_10": 0.60}  # mean 0.33
    assert gate.with_trend(choice, winning, forced=False, margin=0.02).trend_weight == 0.5


def test_served_over_grpc_with_the_trend_named(run: Any, redis_url: str, tmp_path: Path) -> None:
    from serving_harness import running_server, serving_settings

    from recsvc.v1 import common_pb2, recommender_pb2

    report, store, _ = run
    settings = serving_settings(str(store / "b"), redis_url, tmp_path, max_per_category=0, replenish=False)
    bundle = load_bundle(store / "b")
    with running_server(settings) as s:
        info = s.stub.GetModelInfo(recommender_pb2.GetModelInfoRequest()).family
        assert (info.family, info.trend_days) == ("als", 14)
        assert info.trend_weight == pytest.approx(report.family.trend_weight)
        reasons = []
        for member in bundle.members.ids(list(range(0, 60, 3))):
            resp = s.stub.RecommendProducts(
                recommender_pb2.RecommendProductsRequest(
                    member_id=member, k=10, filters=common_pb2.RecommendationFilters(diversity=0.0)
                )
            )
            assert len(resp.items) == 10
            reasons += [it.reason for it in resp.items]
    # the hot products reach members through the trend, and say so
    assert any(r == "trending: popular in the last 14 days" for r in reasons)
    assert any(r.startswith("because you") for r in reasons)
