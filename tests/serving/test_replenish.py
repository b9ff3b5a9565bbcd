"""Replenishment: intervals learnt from repeat purchases, the due window, the serving stage."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from recsvc.engine.replenish import DAY_S, due_mask, placement, splice
from recsvc.errors import BundleError, ConfigError
from recsvc.settings import TrainingSettings, load_settings
from training import prepare, replenish

NOW = 1_800_000_000.0


def test_due_window_around_the_interval() -> None:
    interval = np.array([30, 30, 30, 30, 30, 0], dtype=np.float32)
    age = np.array([23, 24, 30, 45, 46, 30], dtype=np.float64)
    # [30 * 0.8, 30 * 1.5] = [24, 45]; interval 0 (durable) is never due
    assert due_mask(interval, age, 0.2, 0.5).tolist() == [False, True, True, True, False, False]


def test_due_items_follow_the_first_picks_or_move_up_in_short_lists() -> None:
    assert placement(20, 2, 20, 10) == (10, 2)
    assert placement(5, 2, 5, 10) == (3, 2)  # k=5: the last two slots
    assert placement(3, 1, 20, 10) == (3, 1)  # fewer picks than `after`: right after them
    rows, _scores, flag = splice(
        np.arange(10), np.linspace(1, 0.1, 10), np.array([50, 51]), np.array([0.5, 0.4]), 6, 3
    )
    assert rows.tolist() == [0, 1, 2, 50, 51, 3] and flag.tolist() == [0, 0, 0, 1, 1, 0]


def _purchases(rows: list[tuple[str, str, float]]) -> prepare.Prepared:
    """rows: (member, item, days before the end) purchases; items 't*' are tea, 'k*' kitchen."""
    end = pd.Timestamp("2026-06-30T00:00:00Z")
    items = sorted({r[1] for r in rows})
    events = pd.DataFrame(
        {
            "member_id": [r[0] for r in rows],
            "item_id": [r[1] for r in rows],
            "event_type": "purchase",
            "ts": pd.to_datetime([end - pd.Timedelta(days=r[2]) for r in rows], utc=True),
            "channel": "app",
            "quantity": 1,
            "amount": 10.0,
        }
    ).sort_values("ts", ignore_index=True)
    catalog = pd.DataFrame(
        {
            "item_id": items,
            "kind": "product",
            "title": items,
            "category": ["tea" if i.startswith("t") else "kitchen" for i in items],
            "brand": "b",
            "price": 10.0,
            "in_stock": True,
            "published_at": pd.Timestamp("2025-01-01T00:00:00Z"),
            "featured_item_ids": None,
        }
    )
    members = pd.DataFrame(
        {
            "member_id": sorted({r[0] for r in rows}),
            "registered_at": pd.Timestamp("2025-01-01T00:00:00Z"),
            "tier": "basic",
            "timezone": "UTC",
        }
    )
    from training.synthetic import SyntheticDataset

    return prepare.prepare(SyntheticDataset(events=events, catalog=catalog, members=members))


def test_intervals_are_learnt_per_category_and_per_product_with_enough_repeats() -> None:
    rows: list[tuple[str, str, float]] = []
    for m in range(30):
        # tea t1 every 30 days, t2 every 20 days (its own interval once it has enough repeats)
        rows += [(f"m{m}", "t1", 200 - 30 * j) for j in range(3)]
        rows += [(f"m{m}", "t2", 100 - 20 * j) for j in range(2)]
        rows += [(f"m{m}", "k1", 150)]  # a kitchen knife, bought once
        rows += [(f"m{m}", "t3", 10)]  # a tea bought once: the category's interval applies
    p = _purchases(rows)
    t = TrainingSettings(replenish_min_repeats=20, replenish_min_item_repeats=25)
    learned = replenish.learn(p.events, p.item_category, p.categories, t)
    days = dict(zip(p.item_titles, learned.item_interval_days.tolist(), strict=True))
    assert days["t1"] == 30 and days["t2"] == 20  # own medians (60 and 30 repeats)
    assert days["t3"] == 30  # the tea category's median gap over all its repeats (60x30, 30x20)
    assert days["k1"] == 0  # kitchen is never bought again: durable
    assert learned.repurchased == {"tea": 30.0}
    # too few repeats anywhere: nothing is repurchased
    few = replenish.learn(
        p.events, p.item_category, p.categories, TrainingSettings(replenish_min_repeats=1000)
    )
    assert not few.item_interval_days.any()


def test_last_purchase_has_the_pattern_of_the_purchases_matrix() -> None:
    from training.confidence import purchased_matrix

    p = _purchases([("a", "t1", 40), ("a", "t1", 5), ("a", "k1", 20), ("b", "t1", 3)])
    shape = (len(p.members), len(p.items))
    last = replenish.last_purchase(p.events, shape)
    bought = purchased_matrix(p.events, shape)
    assert np.array_equal(last.indptr, bought.indptr) and np.array_equal(last.indices, bought.indices)
    a, t1 = p.members.row("a"), p.items.row("t1")
    ev = p.events
    times = ev.ts[(ev.member == a) & (ev.item == t1)]
    assert times.shape[0] == 2 and last[a, t1] == float(times.max())


# ---- serving ---------------------------------------------------------------------------------


def _engine(planted_path: Path, tmp: Path, days_ago: float, store: Any = None, **serving: object):  # type: ignore[no-untyped-def]
    """The planted bundle with replenishment data: every P<c>-000 is a 30-day consumable bought
    ``days_ago``; P<c>-001 (also bought) is durable."""
    import shutil

    from recsvc.engine.recommender import RecommendationEngine, SingleModel
    from recsvc.engine.served_model import ServedModel

    copy = tmp / "b"
    shutil.copytree(planted_path, copy)
    items = np.load(copy / "item_ids.npy")
    interval = np.array([30.0 if s.endswith(b"-000") else 0.0 for s in items], dtype=np.float32)
    n = np.load(copy / "purchased_indices.npy").shape[0]
    np.save(copy / "item_repurchase_days.npy", interval)
    np.save(copy / "purchased_last_ts.npy", np.full(n, int(NOW - days_ago * DAY_S), dtype=np.int64))
    model = ServedModel.load(copy, version="1", source_uri="t")
    s = load_settings(overrides={"serving": serving})
    return RecommendationEngine(SingleModel(model), store, s.serving, clock=lambda: NOW), model


def _call(engine, member: str, k: int = 5, **filters: Any):  # type: ignore[no-untyped-def]
    from recsvc.engine.filters import FilterSpec
    from recsvc.engine.served_model import KIND_CODES

    return engine.recommend(member, KIND_CODES["product"], k, "", FilterSpec(**filters)).response.items


def test_a_due_consumable_comes_back_with_its_reason(planted, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    engine, _ = _engine(planted.path, tmp_path, days_ago=32)
    member = planted.warm_members()[0]
    c = planted.member_cluster[member]
    items = _call(engine, member, k=5)
    assert len(items) == 5
    due = [i for i in items if i.source == "replenish"]
    assert [i.item_id for i in due] == [f"P{c}-000"]
    assert due[0].reason == f"time to restock: you bought {due[0].title} 32 days ago"
    assert items[4].source == "replenish"  # after 10 picks, so in a list of 5 the last slot
    # the durable P<c>-001 never comes back; the rest are personalised as before
    assert f"P{c}-001" not in {i.item_id for i in items}
    assert all(i.source == "personalized" for i in items[:4])


@pytest.mark.parametrize("days_ago", [10, 60])
def test_not_yet_due_and_long_overdue_stay_excluded(planted, tmp_path: Path, days_ago: float) -> None:  # type: ignore[no-untyped-def]
    engine, _ = _engine(planted.path, tmp_path, days_ago=days_ago)
    member = planted.warm_members()[0]
    items = _call(engine, member, k=5)
    assert not any(i.source == "replenish" for i in items)
    assert not set(planted.purchased[member]) & {i.item_id for i in items}


def test_replenishment_can_be_turned_off_and_honours_the_filters(planted, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    member = planted.warm_members()[0]
    c = planted.member_cluster[member]
    off, _ = _engine(planted.path, tmp_path / "off", days_ago=32, replenish=False)
    assert not any(i.source == "replenish" for i in _call(off, member))
    on, _ = _engine(planted.path, tmp_path / "on", days_ago=32, replenish_after=0)
    assert _call(on, member)[0].source == "replenish"  # replenish_after 0: first
    assert not any(
        i.source == "replenish" for i in _call(on, member, exclude_item_ids=frozenset({f"P{c}-000"}))
    )
    assert not any(i.source == "replenish" for i in _call(on, member, exclude_purchased=False))


def test_a_bundle_with_half_the_replenishment_arrays_is_refused(planted, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    import shutil

    from recsvc.bundle import load_bundle

    copy = tmp_path / "b"
    shutil.copytree(planted.path, copy)
    np.save(copy / "purchased_last_ts.npy", np.zeros(3, dtype=np.int64))
    with pytest.raises(BundleError, match="replenishment"):
        load_bundle(copy)


@pytest.mark.parametrize(
    ("key", "value"),
    [("replenish_early", 1.0), ("replenish_late", -0.1), ("replenish_max_items", 0), ("replenish_after", -1)],
)
def test_bad_replenishment_settings_get_a_named_error(key: str, value: object) -> None:
    with pytest.raises(ConfigError, match=key):
        load_settings(overrides={"serving": {key: value}})


def test_an_item_bought_again_since_the_bundle_is_not_due(planted, redis_url: str, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    import time

    from recsvc.realtime import RealtimeStore, make_redis_client
    from recsvc.settings import RedisSettings

    settings = RedisSettings(url=redis_url, key_prefix=f"rp{time.monotonic_ns()}")
    client = make_redis_client(settings)
    store = RealtimeStore(client, settings)
    try:
        engine, _ = _engine(planted.path, tmp_path, days_ago=32, store=store)
        member = planted.warm_members()[0]
        due = f"P{planted.member_cluster[member]}-000"
        assert due in {i.item_id for i in _call(engine, member) if i.source == "replenish"}
        assert store.record(member, due, "purchase", NOW - 3600, "app")
        items = _call(engine, member)
        assert due not in {i.item_id for i in items}
        assert not any(i.source == "replenish" for i in items)
    finally:
        store.close()
        client.close()
