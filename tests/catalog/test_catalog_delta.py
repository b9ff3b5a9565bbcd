"""The live catalog's quick paths give what the full paths give: a view moved on by a batch of
stock, listing, price and publication changes (recsvc/catalog/delta.py) equals the view built
whole from the same records, and the engine's answers through a view's quick paths (bundle
titles and serialized items, stored lists taken without a per-call check, the due-window look-up)
equal its answers through the checking paths, over random change sequences on a planted bundle."""

from __future__ import annotations

import copy
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from bundle_factory import FixedCatalog, PlantedBundle, make_bundle

from recsvc.catalog import delta, live
from recsvc.catalog.live import LiveCatalog
from recsvc.catalog.store import ItemRecord
from recsvc.catalog.view import ITEM_ARRAYS, CatalogView, catalog_as_of_ms
from recsvc.engine.filters import FilterSpec
from recsvc.engine.recommender import RecommendationEngine, SingleModel
from recsvc.engine.replenish import DAY_S, due_mask
from recsvc.engine.served_model import KIND_CODES, ServedModel
from recsvc.settings import load_settings

K = 5


@pytest.fixture(scope="module")
def listed(tmp_path_factory: pytest.TempPathFactory) -> PlantedBundle:
    from training.member_lists import add_to_bundle

    planted = make_bundle(tmp_path_factory.mktemp("delta") / "b1")
    s = load_settings(overrides={"serving": {"default_k": K}})
    add_to_bundle(planted.path, s.serving, s.training.hnsw_ef_search, K)
    return planted


class _Models:
    def __init__(self, model: ServedModel) -> None:
        self.model = model

    def snapshot(self) -> dict[str, ServedModel]:
        return {"control": self.model}


def _checking(view: CatalogView) -> CatalogView:
    """``view`` with every quick path turned off: titles and items through the per-row checks,
    stored lists checked on every call while the catalog is live."""
    slow = copy.copy(view)
    slow.titles = [slow.title(row) for row in range(slow.n + len(slow.new_ids))]
    slow.entries = {row: slow._build_entry(row) for row in range(slow.n + len(slow.new_ids))}
    slow.stored_lists_intact = not slow.live
    return slow


def _same_views(a: CatalogView, b: CatalogView) -> None:
    for name in ITEM_ARRAYS:
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)
    assert a.next_publish == b.next_publish and a.live == b.live
    assert a.stored_lists_intact == b.stored_lists_intact
    assert a.new_ids == b.new_ids and a.titles_override == b.titles_override
    assert a.new_row == b.new_row and a.new_featured == b.new_featured and a.last_new == b.last_new
    assert a.categories == b.categories and a.brands == b.brands
    assert a.category_code == b.category_code and a.brand_code == b.brand_code
    np.testing.assert_array_equal(a.new_factors, b.new_factors)
    np.testing.assert_array_equal(a.new_norms, b.new_norms)
    for kind in a.new_rows.keys() | b.new_rows.keys():
        np.testing.assert_array_equal(a.new_rows[kind], b.new_rows[kind])
        np.testing.assert_array_equal(a.new_kind_factors[kind], b.new_kind_factors[kind])
    assert a.version == b.version and a.records == b.records
    for row in range(a.n + len(a.new_ids)):
        assert a.entries[row] == b.entries[row] and a.titles[row] == b.titles[row]


def _answers(view: CatalogView, model: ServedModel, members: list[str], now: float) -> list[bytes]:
    s = load_settings(overrides={"serving": {"default_k": K}})
    engine = RecommendationEngine(SingleModel(model), None, s.serving, clock=lambda: now)
    engine.catalog = FixedCatalog(view)
    out = []
    for member in members:
        for spec in (FilterSpec(), FilterSpec(in_stock_only=False), FilterSpec(max_price=40.0)):
            rec = engine.recommend(member, KIND_CODES["product"], K, "", spec)
            out.append(rec.response.SerializeToString() + "|".join(rec.item_ids).encode())
    similar = engine.similar(model.items.id(0), None, K, FilterSpec())
    out.append(similar.response.SerializeToString())
    return out


def _change(
    rng: random.Random, products: list[str], step: int, now: float, made: list[str]
) -> tuple[str, dict[str, Any]]:
    """One random change: mostly row values, sometimes descriptive fields, a new product or a
    new piece of content (featuring trained and new products), rarely a kind (a whole build)."""
    roll = rng.random()
    item = rng.choice(products + made)
    if roll < 0.35:
        return item, {"in_stock": rng.random() < 0.5}
    if roll < 0.45:
        return item, {"listed": rng.random() < 0.7}
    if roll < 0.55:
        return item, {"price": round(rng.uniform(1.0, 80.0), 2)}
    if roll < 0.65:  # some come due a few steps later
        return item, {"published_at": rng.choice([0, 1_000, 4_000_000_000, int(now) + rng.randint(1, 60)])}
    if roll < 0.7:
        return item, {"title": f"Renamed {item} {step}"}
    if roll < 0.76:  # a known or an unknown category (no starting vector), a brand
        return item, {
            "category": rng.choice(["cat0", "cat1", "cat2", "tea"]),
            "brand": rng.choice(["brand1", ""]),
        }
    if roll < 0.78:
        return rng.choice(products), {"kind": "content"}
    new = f"NEW-{step}-{rng.randint(0, 99)}"
    if roll < 0.86:
        featured = rng.sample(products, 2) + made[-1:]
        return new, {"kind": "content", "title": new, "category": "content0", "featured_item_ids": featured}
    made.append(new)
    cat = rng.choice(["cat0", "cat1", "cat2"])
    return new, {
        "kind": "product",
        "title": new,
        "category": cat,
        "brand": "brand1",
        "price": 9.0,
        "in_stock": True,
    }


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_a_view_moved_on_by_each_batch_equals_the_view_built_whole(
    listed: PlantedBundle, monkeypatch: pytest.MonkeyPatch, seed: int
) -> None:
    """Row values, new items, descriptive changes and scheduled items coming due are applied to
    the view as it is (``delta.advance``); only a kind change (and the first changes, on a view
    without any) builds it whole."""
    model = ServedModel.load(listed.path, version="1", source_uri="t")
    clock = [1_900_000_000.0]
    ts = max(catalog_as_of_ms(model), int(clock[0] * 1000) - 1)
    catalog = LiveCatalog(_Models(model), clock=lambda: clock[0])
    catalog.view(model)
    moved: list[bool] = []
    real_advance = delta.advance

    def counting(*args: Any) -> CatalogView | None:
        out = real_advance(*args)
        moved.append(out is not None)
        return out

    monkeypatch.setattr(live, "advance", counting)
    rng = random.Random(seed)
    products = listed.products()
    members = listed.warm_members()[:6] + listed.cold_members[:1]
    records: dict[str, ItemRecord] = {}
    version = 0
    made: list[str] = []
    expected: list[bool] = []
    for step in range(60):
        clock[0] += rng.uniform(0, 30)
        live_before = bool(records)
        records = dict(records)
        changed = set()
        kinds = False
        for _ in range(rng.randint(0, 4)):  # none: only the time moved on
            item, patch = _change(rng, products, step, clock[0], made)
            version += 1
            old = records.get(item)
            fields = {**(old.fields if old else {}), **patch}
            times = {**(old.field_ts_ms if old else {}), **{k: ts for k in patch}}
            records[item] = ItemRecord(version, ts, fields, times, old.created if old else version)
            changed.add(item)
            kinds |= "kind" in patch and item in products
        catalog.update(records, version, changed)
        expected.append(live_before and not kinds)
        got = catalog.view(model)
        built = CatalogView(model, records, clock[0], version=version)
        _same_views(got, built)
        if step % 8 == 7:
            assert _answers(got, model, members, clock[0]) == _answers(built, model, members, clock[0])
    assert moved == expected
    assert made and any(catalog.view(model).new_featured.values())


@pytest.mark.parametrize("changes", [0, 3, 12])
def test_the_quick_paths_answer_as_the_checking_paths(listed: PlantedBundle, changes: int) -> None:
    model = ServedModel.load(listed.path, version="1", source_uri="t")
    now = 1_900_000_000.0
    ts = max(catalog_as_of_ms(model), int(now * 1000) - 1)
    rng = random.Random(changes)
    records: dict[str, ItemRecord] = {}
    for step in range(changes):
        item, patch = _change(rng, listed.products(), step, now, [])
        records[item] = ItemRecord(step + 1, ts, patch, {k: ts for k in patch})
    lists = model.member_lists
    assert lists is not None
    if changes:  # some members' own top stored items sold out too: their stored lists go stale
        for member in listed.warm_members()[:3]:
            top = model.items.id(int(lists.items[model.member_row(member) or 0][0]))
            records[top] = ItemRecord(changes + 1, ts, {"in_stock": False}, {"in_stock": ts})
    view = CatalogView(model, records, now)
    members = listed.warm_members() + listed.cold_members
    assert _answers(view, model, members, now) == _answers(_checking(view), model, members, now)
    assert view.stored_lists_intact == (not records)


def test_due_windows_never_hide_a_due_purchase(listed: PlantedBundle, tmp_path: Path) -> None:
    """Random repurchase intervals and purchase times: wherever the quick look-up says nothing
    is due, the full rule agrees, at many moments."""
    import shutil

    path = tmp_path / "b"
    shutil.copytree(listed.path, path)
    rng = np.random.default_rng(5)
    n_items = np.load(path / "item_ids.npy").shape[0]
    n_bought = np.load(path / "purchased_indices.npy").shape[0]
    now = 1_900_000_000.0
    np.save(path / "item_repurchase_days.npy", rng.choice([0.0, 7.0, 30.0, 90.0], n_items).astype(np.float32))
    np.save(path / "purchased_last_ts.npy", (now - rng.uniform(0, 200, n_bought) * DAY_S).astype(np.int64))
    model = ServedModel.load(path, version="1", source_uri="t")
    found = 0
    for at in now + rng.uniform(-30, 60, 25) * DAY_S:
        for row in range(len(model.members)):
            rows, _days = model.due_purchases(row, float(at), 0.2, 0.5)
            lo, hi = int(model.purchased_indptr[row]), int(model.purchased_indptr[row + 1])
            days = (at - model.purchased_last_ts[lo:hi]) / DAY_S  # type: ignore[index]
            every = model.purchased_indices[lo:hi][
                due_mask(model.item_repurchase_days[model.purchased_indices[lo:hi]], days, 0.2, 0.5)  # type: ignore[index]
            ]
            assert sorted(rows.tolist()) == sorted(np.asarray(every).tolist())
            found += rows.shape[0]
    assert found > 0


def test_a_model_prepared_before_its_swap_keeps_up_with_changes_and_serves_its_view(
    listed: PlantedBundle, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bundle loaded while changes arrive: its view is built before the swap
    (``LiveCatalog.prepare``), moved on by the batches that come before the swap like the served
    model's, and its first call after the swap takes that view without building one."""
    now = 1_900_000_000.0
    served = ServedModel.load(listed.path, version="1", source_uri="t")
    incoming = ServedModel.load(listed.path, version="2", source_uri="t")
    ts = max(catalog_as_of_ms(served), int(now * 1000) - 1)
    models = _Models(served)
    catalog = LiveCatalog(models, clock=lambda: now)
    item = listed.products()[0]
    records = {item: ItemRecord(1, ts, {"in_stock": False}, {"in_stock": ts})}
    catalog.update(records, 1)
    catalog.prepare(incoming)
    assert not catalog.view(incoming).item_stock_ok[incoming.items.row(item)]
    changed = ItemRecord(2, ts, {"in_stock": True, "price": 3.5}, {"in_stock": ts, "price": ts})
    records = {**records, item: changed}
    catalog.update(records, 2, {item})  # arrives before the swap
    builds: list[ServedModel] = []
    real_build = catalog._build

    def counted(m: ServedModel, r: Any, v: int) -> CatalogView:
        builds.append(m)
        return real_build(m, r, v)

    monkeypatch.setattr(catalog, "_build", counted)
    models.model = incoming  # the swap
    got = catalog.view(incoming)
    assert builds == []  # no whole build on the first call
    _same_views(got, CatalogView(incoming, records, now, version=2))
    assert got.item_stock_ok[incoming.items.row(item)] and got.version == 2
    catalog.update(records, 3, {item})
    assert list(catalog._prepared) == []  # served now: moved on as the served model


def test_the_collector_is_paused_for_a_whole_build_and_back_after_the_last_pause(
    listed: PlantedBundle, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A whole view build runs with the cyclic collector off (``recsvc.gc_pause``); nested and
    overlapping pauses turn it back on only when the last ends, and never turn on a collector
    that was off."""
    import gc

    from recsvc import gc_pause

    model = ServedModel.load(listed.path, version="1", source_uri="t")
    seen: list[bool] = []
    real_init = CatalogView.__init__

    def init(self: CatalogView, *args: Any, **kwargs: Any) -> None:
        seen.append(gc.isenabled())
        real_init(self, *args, **kwargs)

    monkeypatch.setattr(CatalogView, "__init__", init)
    assert gc.isenabled()
    LiveCatalog(_Models(model)).view(model)
    assert seen == [False] and gc.isenabled()
    with gc_pause.gc_paused():
        with gc_pause.gc_paused():
            assert not gc.isenabled()
        assert not gc.isenabled()
    assert gc.isenabled()
    gc.disable()
    try:
        with gc_pause.gc_paused():
            pass
        assert not gc.isenabled()
    finally:
        gc.enable()


@pytest.mark.parametrize("batch", [False, True])
def test_a_version_is_published_only_once_every_view_shows_it(
    listed: PlantedBundle, monkeypatch: pytest.MonkeyPatch, batch: bool
) -> None:
    """A caller that waits for version N and then reads a view (a replica checking a featured
    item a moment after creating it) finds the change of N there: while a batch's views are
    built or moved on, ``version`` still names the one before."""
    now = 1_900_000_000.0
    model = ServedModel.load(listed.path, version="1", source_uri="t")
    ts = max(catalog_as_of_ms(model), int(now * 1000) - 1)
    catalog = LiveCatalog(_Models(model), clock=lambda: now)
    item = listed.products()[0]
    records = {item: ItemRecord(1, ts, {"in_stock": False}, {"in_stock": ts})}
    catalog.update(records, 1)
    seen_while_building: list[int] = []
    real_init = CatalogView.__init__
    real_advance = delta.advance

    def init(self: CatalogView, *args: Any, **kwargs: Any) -> None:
        seen_while_building.append(catalog.version)
        real_init(self, *args, **kwargs)

    def advancing(*args: Any) -> CatalogView | None:
        seen_while_building.append(catalog.version)
        return real_advance(*args)

    monkeypatch.setattr(CatalogView, "__init__", init)
    monkeypatch.setattr(live, "advance", advancing)
    records = {item: ItemRecord(2, ts, {"in_stock": True}, {"in_stock": ts})}
    catalog.update(records, 2, {item} if batch else None)
    assert seen_while_building and set(seen_while_building) == {1}
    assert catalog.version == 2 and catalog.view(model).version == 2
    assert catalog.view(model).item_stock_ok[model.items.row(item)]
