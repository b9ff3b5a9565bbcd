"""Stored default lists per member (training/member_lists.py, bundle member_list_*): a call they
were made for is answered from them with exactly the response serving would compute, and every
other call (another k, filters, diversity or serving settings, a member with recent events)
is computed live as before."""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from bundle_factory import FixedCatalog, train_small_bundle

from recsvc.bundle import KIND_PRODUCT, MEMBER_LIST_ARRAYS, load_bundle
from recsvc.engine.filters import FilterSpec
from recsvc.engine.recommender import RecommendationEngine, SingleModel
from recsvc.engine.served_model import ServedModel
from recsvc.errors import BundleError
from recsvc.realtime import RealtimeStore, make_redis_client
from recsvc.settings import RedisSettings, ServingSettings, Settings, TrainingSettings, load_settings
from training import member_lists
from training.reindex import reindex

K = 10


def _settings(serving: dict[str, Any] | None = None, training: dict[str, Any] | None = None) -> Settings:
    """Settings whose default page is the stored lists' length (K), plus ``serving`` changes."""
    serving = {"default_k": K, **(serving or {})}
    return load_settings(overrides={"serving": serving, "training": training or {}})


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_small_bundle(tmp_path_factory.mktemp("lists"), {"member_lists": K})


class _Counted:
    """Counts the searches a model makes, by index or exact (a stored list needs none)."""

    def __init__(self, model: ServedModel) -> None:
        self.n = 0
        for name in ("search", "exact_search"):
            setattr(model, name, self._counting(getattr(model, name)))

    def _counting(self, search: Any) -> Any:
        def counted(*args: Any) -> Any:
            self.n += 1
            return search(*args)

        return counted


def _pair(
    bundle: Path, serving: ServingSettings
) -> tuple[RecommendationEngine, RecommendationEngine, _Counted]:
    stored = ServedModel.load(bundle, version="1", source_uri=str(bundle))
    live = ServedModel.load(bundle, version="1", source_uri=str(bundle))
    assert stored.member_lists is not None and stored.member_lists.k == K
    live.member_lists = None
    counter = _Counted(stored)
    return (
        RecommendationEngine(SingleModel(stored), None, serving),
        RecommendationEngine(SingleModel(live), None, serving),
        counter,
    )


def test_every_stored_list_is_the_response_serving_computes(trained: Path) -> None:
    serving = _settings().serving
    fast, slow, searches = _pair(trained, serving)
    default = FilterSpec(diversity=serving.default_diversity)
    model = load_bundle(trained)
    items = model.arrays["member_list_item"]
    read = 0
    for row in range(len(model.members)):
        member = model.members.id(row)
        before = searches.n
        got = fast.recommend(member, KIND_PRODUCT, K, "app", default)
        want = slow.recommend(member, KIND_PRODUCT, K, "app", default)
        assert got.response == want.response, member  # items, scores, reasons, source, everything
        assert got.source == want.source
        assert got.stored == (items[row, 0] >= 0) and not want.stored  # what metrics count
        if items[row, 0] >= 0:
            assert searches.n == before, member  # answered from the stored list
            read += 1
    # a member without a trained vector (cold start) has no list; nearly every other one does
    assert read >= 0.8 * len(model.members), read
    # the reasons are real ones ("because you ..."), not the no-history fallback
    some = fast.recommend(
        model.members.id(int(np.flatnonzero(items[:, 0] >= 0)[0])), KIND_PRODUCT, K, "", default
    )
    assert some.response.items[0].reason.startswith("because you ")


def test_a_blend_bundle_stores_the_lists_its_family_serves(tmp_path: Path) -> None:
    """Stored lists of an item-item blend bundle are the responses the live family path gives,
    and they differ from what the bundle's ALS part alone would serve."""
    bundle = train_small_bundle(tmp_path, {"member_lists": K, "family": "blend", "blend_als_weight": 0.5})
    serving = _settings().serving
    fast, slow, _ = _pair(bundle, serving)
    model = load_bundle(bundle)
    assert model.manifest.family.family == "blend"
    als_only = ServedModel.load(bundle, version="1", source_uri=str(bundle))
    als_only.member_lists, als_only.neighbours = None, None
    als_engine = RecommendationEngine(SingleModel(als_only), None, serving)
    default = FilterSpec(diversity=serving.default_diversity)
    rows = np.flatnonzero(model.arrays["member_list_item"][:, 0] >= 0)
    assert rows.shape[0] > 0.8 * len(model.members)
    differs = 0
    for row in rows[:60].tolist():
        member = model.members.id(row)
        stored = fast.recommend(member, KIND_PRODUCT, K, "", default)
        assert stored.stored
        assert stored.response == slow.recommend(member, KIND_PRODUCT, K, "", default).response
        als = als_engine.recommend(member, KIND_PRODUCT, K, "", default).response
        differs += [i.item_id for i in als.items] != [i.item_id for i in stored.response.items]
    assert differs > 0


@pytest.mark.parametrize(
    "k, filters",
    [
        (K + 2, FilterSpec(diversity=0.3)),  # another page size
        (K - 3, FilterSpec(diversity=0.3)),
        (K, FilterSpec(diversity=0.0)),  # another diversity than the one stored
        (K, FilterSpec(in_stock_only=False, diversity=0.3)),
        (K, FilterSpec(exclude_purchased=False, diversity=0.3)),
        (K, FilterSpec(min_price=20.0, diversity=0.3)),
        (K, FilterSpec(exclude_item_ids=frozenset({"P000001"}), diversity=0.3)),
    ],
)
def test_calls_the_lists_were_not_made_for_are_computed_live(
    trained: Path, k: int, filters: FilterSpec
) -> None:
    fast, slow, searches = _pair(trained, _settings().serving)
    model = load_bundle(trained)
    rows = np.flatnonzero(model.arrays["member_list_item"][:, 0] >= 0)[:15]
    for row in rows.tolist():
        member = model.members.id(row)
        before = searches.n
        assert fast.recommend(member, KIND_PRODUCT, k, "", filters).response == (
            slow.recommend(member, KIND_PRODUCT, k, "", filters).response
        )
        assert searches.n > before  # searched: the stored list was not used
        assert not fast.recommend(member, KIND_PRODUCT, k, "", filters).stored


@pytest.mark.parametrize(
    "change", [{"max_per_category": 2}, {"ann_candidates": 300}, {"default_diversity": 0.5}]
)
def test_other_serving_settings_do_not_use_lists_made_under_different_ones(
    trained: Path, change: dict[str, Any]
) -> None:
    serving = _settings(change).serving
    fast, slow, searches = _pair(trained, serving)
    default = FilterSpec(diversity=serving.default_diversity)
    model = load_bundle(trained)
    for row in np.flatnonzero(model.arrays["member_list_item"][:, 0] >= 0)[:10].tolist():
        member = model.members.id(row)
        before = searches.n
        got = fast.recommend(member, KIND_PRODUCT, K, "", default)
        assert got.response == slow.recommend(member, KIND_PRODUCT, K, "", default).response
        assert searches.n > before


@pytest.fixture
def store(redis_url: str) -> Iterator[RealtimeStore]:
    settings = RedisSettings(url=redis_url, key_prefix=f"ml{time.monotonic_ns()}")
    client = make_redis_client(settings)
    s = RealtimeStore(client, settings)
    try:
        yield s
    finally:
        s.close()
        client.close()


def test_a_member_with_recent_events_is_computed_live_and_never_gets_a_bought_item(
    trained: Path, store: RealtimeStore
) -> None:
    serving = _settings().serving
    model = ServedModel.load(trained, version="1", source_uri=str(trained))
    engine = RecommendationEngine(SingleModel(model), store, serving)
    default = FilterSpec(diversity=serving.default_diversity)
    row = int(np.flatnonzero(np.asarray(model.member_lists.items)[:, 0] >= 0)[0])  # type: ignore[union-attr]
    member = model.members.id(row)
    first = engine.recommend(member, KIND_PRODUCT, K, "", default)
    assert first.source == "personalized" and first.response.realtime  # Redis answered: no events
    bought = first.response.items[0].item_id
    assert store.record(member, bought, "purchase", time.time(), "app")
    after = engine.recommend(member, KIND_PRODUCT, K, "", default)
    assert after.source == "realtime"
    assert bought not in [i.item_id for i in after.response.items]
    assert len(after.response.items) == K


def test_lists_computed_in_several_processes_are_the_same(trained: Path) -> None:
    serving = _settings().serving
    spare = TrainingSettings().member_list_spare
    items, scores, reasons, spec = member_lists.compute(
        trained, serving, 128, K, workers=2, chunk=80, spare=spare
    )
    stored = load_bundle(trained)
    assert np.array_equal(items, stored.arrays["member_list_item"])
    assert np.array_equal(scores, stored.arrays["member_list_score"])
    assert np.array_equal(reasons, stored.arrays["member_list_reason"])
    assert spec == stored.manifest.member_lists


@pytest.mark.parametrize(
    "damage, match",
    [
        ("member_list_score.npy", "member_list_score"),  # removed: two of three
        ("shape", "member_list_reason"),
    ],
)
def test_malformed_stored_lists_are_a_named_bundle_error(
    trained: Path, tmp_path: Path, damage: str, match: str
) -> None:
    copy = tmp_path / "b"
    shutil.copytree(trained, copy)
    if damage == "shape":
        np.save(copy / "member_list_reason.npy", np.zeros((3, K), dtype=np.int32))
    else:
        (copy / damage).unlink()
    with pytest.raises(BundleError, match=match):
        load_bundle(copy)


def test_reindex_rebuilds_the_lists_or_drops_them(trained: Path, tmp_path: Path) -> None:
    settings = _settings(training={"member_lists": K})
    reindex(trained, tmp_path / "with", settings.training, settings.serving)
    again = load_bundle(tmp_path / "with")
    assert again.manifest.member_lists is not None and again.manifest.member_lists.k == K
    spare = again.manifest.member_lists.spare
    assert spare == TrainingSettings().member_list_spare
    assert again.arrays["member_list_item"].shape == (len(again.members), K + spare)
    off = _settings(training={"member_lists": 0})
    reindex(trained, tmp_path / "without", off.training, off.serving)
    dropped = load_bundle(tmp_path / "without")
    assert dropped.manifest.member_lists is None
    assert not any(name in dropped.arrays for name in MEMBER_LIST_ARRAYS)
    assert ServedModel(dropped, version="1", source_uri="x").member_lists is None


def test_the_settings_that_keep_stored_lists_from_being_used_are_named(trained: Path) -> None:
    model = ServedModel.load(trained, version="1", source_uri=str(trained))
    lists = model.member_lists
    assert lists is not None
    assert lists.spec.mismatches(_settings().serving, model.hnsw_ef_search) == []
    changed = _settings({"max_per_category": 2, "default_diversity": 0.5}).serving
    assert lists.spec.mismatches(changed, model.hnsw_ef_search) == [
        "default_diversity 0.5!=0.3",
        "max_per_category 2!=0",
    ]


@pytest.mark.parametrize(
    ("change", "used", "named"),
    [
        ({}, "yes", ""),
        ({"ann_candidates": 300}, "no", "ann_candidates:300!=100"),
        ({"default_k": K + 10}, "no", f"default_k:{K + 10}!={K}"),  # lists of another page size
    ],
)
def test_a_model_load_says_whether_its_stored_lists_will_be_used(
    trained: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    change: dict[str, Any],
    used: str,
    named: str,
) -> None:
    from recsvc.models.resolve import ModelResolver
    from recsvc.models.served import ServedModels

    serving = {"model_uri": str(trained), "bundle_cache_dir": str(tmp_path / "cache"), **change}
    settings = _settings(serving)
    caplog.set_level("INFO", logger="recsvc.models")
    ServedModels(settings, ModelResolver(settings)).reload()
    lines = [r.getMessage() for r in caplog.records if "event=member_lists" in r.getMessage()]
    assert len(lines) == 1 and f"k={K} used={used}" in lines[0], lines
    assert (named or "differ=none") in lines[0]


def test_the_hnsw_search_setting_matters_only_when_an_index_is_hnsw() -> None:
    import faiss

    from recsvc.engine.served_model import hnsw_ef_in_use

    flat = faiss.IndexIDMap(faiss.IndexFlatIP(8))
    hnsw = faiss.IndexIDMap(faiss.IndexHNSWFlat(8, 16, faiss.METRIC_INNER_PRODUCT))
    assert hnsw_ef_in_use([flat], 256) is None
    assert hnsw_ef_in_use([flat, hnsw], 256) == 256


def test_items_sold_out_since_training_are_stood_in_for_by_the_spare_picks(trained: Path) -> None:
    """Up to ``spare`` of a stored list's first k sold out: the call is still read from the
    stored list, without them, the next picks moved up in MMR's order; one more: computed live.
    Neither holds a sold-out item."""
    from recsvc.catalog.store import ItemRecord
    from recsvc.catalog.view import CatalogView, catalog_as_of_ms

    serving = _settings({"replenish": False}).serving  # due purchases would be placed in the list
    model = ServedModel.load(trained, version="1", source_uri=str(trained))
    lists = model.member_lists
    assert lists is not None and lists.spec.spare > 0
    spare = lists.spec.spare
    engine = RecommendationEngine(SingleModel(model), None, serving)
    now = time.time()
    ts = max(catalog_as_of_ms(model), int(now * 1000) - 1)
    default = FilterSpec(diversity=serving.default_diversity)
    checked = 0
    for row in np.flatnonzero(np.asarray(lists.items)[:, -1] >= 0)[:8].tolist():
        stored = np.asarray(lists.items[row])
        for gone in (1, spare, spare + 1):
            sold = [model.items.id(int(r)) for r in stored[[0, 2, 4, 5, 6, 7, 8, 9][:gone]]]
            records = {
                item: ItemRecord(v + 1, ts, {"in_stock": False}, {"in_stock": ts})
                for v, item in enumerate(sold)
            }
            engine.catalog = FixedCatalog(CatalogView(model, records, now))
            got = engine.recommend(model.members.id(row), KIND_PRODUCT, K, "app", default)
            ids = [it.item_id for it in got.response.items]
            assert not set(ids) & set(sold)
            if gone <= spare:
                assert got.stored
                left = [model.items.id(int(r)) for r in stored if model.items.id(int(r)) not in sold]
                assert ids == left[:K]
                kept = {model.items.id(int(r)): i for i, r in enumerate(stored)}
                assert [it.score for it in got.response.items] == [
                    pytest.approx(float(lists.scores[row][kept[i]])) for i in ids
                ]
            else:
                assert not got.stored and len(ids) == K  # more gone than spare picks: live
            checked += 1
    assert checked >= 12
