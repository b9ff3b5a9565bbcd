"""The trend prior's live path (recsvc/engine/trend_source.py, ranking.rank and
itemknn_source.candidates) against a dense reference: every item of the kind scored with
training's definition, ``(1 - t) * family + t * trend / max(trend)``. Serving scores only the ANN's
best and the kind's most trending items; with a trend on fewer items than ``trend_source.TOP`` per
kind (a fortnight's events touch a part of a catalog) that set holds the whole top, so the lists
must agree exactly, under the live catalog's changes, filters and exclusions."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from bundle_factory import FixedCatalog, PlantedBundle, make_bundle
from test_family_ranking import FILTERS, NOW, _family_bundle, _live_view, _reference, assert_serves_reference

from recsvc.bundle import KIND_CONTENT, KIND_PRODUCT, load_bundle
from recsvc.catalog.view import CatalogView
from recsvc.engine import itemknn_source, ranking, trend_source
from recsvc.engine.candidates import candidate_sizes
from recsvc.engine.member_state import trained_state
from recsvc.engine.recommender import RecommendationEngine, SingleModel
from recsvc.engine.served_model import ServedModel
from recsvc.errors import BundleError
from recsvc.settings import load_settings


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> PlantedBundle:
    # 8 taste clusters of 200 products: a member's best lie beyond a first search and the 200
    # most trending items when the trend is flat, so serving must widen (the threshold)
    return make_bundle(
        tmp_path_factory.mktemp("trend") / "b",
        clusters=8,
        products_per_cluster=200,
        content_per_cluster=12,
        seed=5,
    )


def _with_trend(path: Path, weight: float, seed: int, share: float = 0.3) -> np.ndarray:
    """A trend on a random ``share`` of the items (heavy-tailed counts), and the weight in the
    manifest. With every item trending (``share`` 1) the most trending 200 of a kind are not
    enough: serving must widen until nothing unscored can enter the list."""
    rng = np.random.default_rng(seed)
    n = int(np.load(path / "item_kind.npy").shape[0])
    if share >= 1:  # flat: the 201st most trending item is nearly as trending as the first
        trend = (1 + rng.random(n)).astype(np.float32)
    else:
        trend = np.where(rng.random(n) < share, rng.pareto(1.5, n) + 1, 0).astype(np.float32)
    np.save(path / "item_trend.npy", trend)
    raw = json.loads((path / "manifest.json").read_text())
    raw["family"] = {**raw.get("family", {"family": "als"}), "trend_weight": weight, "trend_days": 14}
    (path / "manifest.json").write_text(json.dumps(raw))
    return trend


def _dense(view: CatalogView, family: np.ndarray, rows: np.ndarray) -> np.ndarray:
    prior = view.model.trend
    assert prior is not None
    return trend_source.mix(family, prior.of_rows(rows), prior.weight)


def _als_reference(view: CatalogView, vector: np.ndarray, kind: int) -> tuple[np.ndarray, np.ndarray]:
    model = view.model
    rows = model.kind_rows[kind].astype(np.int64)
    als = np.asarray(model.item_factors)[rows] @ vector
    new_rows, new_als = view.search_new(vector, kind)
    norm_max = float(np.linalg.norm(np.asarray(model.item_factors)[rows], axis=1).max())
    scale = float(itemknn_source.als_scale(als.max(initial=0.0), np.linalg.norm(vector), norm_max))
    all_rows = np.concatenate([rows, new_rows.astype(np.int64)])
    scores = _dense(view, np.concatenate([als, new_als]) / np.float32(scale), all_rows)
    order = np.argsort(-scores, kind="stable")
    return all_rows[order], scores[order]


def _engine(model: ServedModel, view: CatalogView) -> RecommendationEngine:
    settings = load_settings(overrides={"serving": {"max_per_category": 0, "replenish": False}}).serving
    engine = RecommendationEngine(SingleModel(model), None, settings, clock=lambda: NOW)
    engine.catalog = FixedCatalog(view)
    return engine


@pytest.fixture(params=[200, 3], ids=["top200", "top3"])
def top(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> int:
    """How many trending items a call scores first: with 3 the lists need many more, which only
    the threshold's widening finds."""
    monkeypatch.setattr(trend_source, "TOP", request.param)
    return int(request.param)


@pytest.mark.parametrize(("weight", "share"), [(0.5, 0.3), (0.2, 1.0), (0.35, 1.0)])
def test_als_with_trend_serves_the_dense_reference(
    base: PlantedBundle, tmp_path: Path, weight: float, share: float, top: int
) -> None:
    shutil.copytree(base.path, tmp_path / "b")
    _with_trend(tmp_path / "b", weight, 1, share)
    model = ServedModel.load(tmp_path / "b", version="t", source_uri="t")
    assert model.trend is not None and model.neighbours is None
    view = _live_view(model, 1)
    engine = _engine(model, view)
    moved = checked = trending = 0
    for row in range(0, len(model.members), 3):
        state = trained_state(model, row)
        if state.vector is None:
            continue
        member = model.members.id(row)
        for kind in (KIND_PRODUCT, KIND_CONTENT):
            ref_rows, ref_scores = _als_reference(view, state.vector, kind)
            plain = ranking.search(model, state.vector, kind, 10)[0]
            for filters, k in ((FILTERS[0], 10), (FILTERS[2], 25), (FILTERS[3], 60)):
                resp, got, _ = assert_serves_reference(
                    engine, view, member, kind, k, filters, state.excluded(filters)[0], ref_rows, ref_scores
                )
                prior = model.trend
                for it, row_ in zip(resp.items, got, strict=True):  # the reason follows the larger part
                    part = float(prior.of_rows(np.array([row_]))[0]) * prior.weight
                    assert it.reason.startswith("trending: popular in the last 14 days") == (
                        0 < part > it.score - part
                    ), (it.item_id, it.reason)
                    trending += it.reason.startswith("trending")
                checked += 1
            moved += not set(ref_rows[:10].tolist()) <= set(plain.tolist())
    assert checked >= 60
    assert moved > 0  # the trend brought items outside the ALS search's best into lists
    assert trending > 0


@pytest.mark.parametrize(
    ("family", "weight", "seed", "share"),
    [("blend", 0.5, 2, 0.3), ("blend", 0.7, 5, 1.0), ("itemknn", None, 3, 0.3), ("itemknn", None, 6, 1.0)],
)
def test_item_item_families_with_trend_serve_the_dense_reference(
    base: PlantedBundle, tmp_path: Path, family: str, weight: float | None, seed: int, share: float, top: int
) -> None:
    plain_model = _family_bundle(base, tmp_path / "b", family, weight, seed)
    _with_trend(tmp_path / "b", 0.35, seed, share)
    model = ServedModel.load(tmp_path / "b", version="t", source_uri="t")
    nb = model.neighbours
    assert nb is not None and model.trend is not None and plain_model.trend is None
    view = _live_view(model, seed)
    engine = _engine(model, view)
    checked = 0
    for row in range(0, len(model.members), 3):
        state = trained_state(model, row)
        if state.vector is None:
            continue
        member = model.members.id(row)
        ref_rows, ref_family, _ = _reference(
            view, nb, state.vector, state.hist_rows, state.hist_w, KIND_PRODUCT
        )
        if nb.als_weight == 0:  # training ranks items without a neighbour score by their trend alone
            knn_zero = ref_family < 0
            ref_family = np.where(knn_zero, 0, ref_family)
        ref_scores = _dense(view, ref_family, ref_rows)
        order = np.argsort(-ref_scores, kind="stable")
        ref_rows, ref_scores = ref_rows[order], ref_scores[order]
        for filters, k in ((FILTERS[0], 10), (FILTERS[2], 25)):
            excluded = ranking.excluded_rows(view, filters, state.excluded(filters)[0])
            keep = filters.mask(view, ref_rows, excluded)
            resp = engine.recommend(member, KIND_PRODUCT, k, "", filters).response
            got = [view.row(it.item_id) for it in resp.items]
            # item-item alone: ties at a trend of 0 are ordered by ALS in serving (any order in
            # training); the scores must agree, the rows where scores differ
            np.testing.assert_allclose(
                [it.score for it in resp.items], ref_scores[keep][: len(got)], rtol=1e-4, atol=1e-4
            )
            # a position is fixed when its score differs from both neighbours' (the next one
            # past the list included)
            ranked = ref_scores[keep][: len(got) + 1]
            gaps = np.concatenate([[np.inf], -np.diff(ranked), [np.inf]]) > 1e-4
            fixed = (gaps[:-1] & gaps[1:])[: len(got)]
            same = np.array(got) == ref_rows[keep][: len(got)]
            assert same[fixed].all(), (np.flatnonzero(~same & fixed), got)
            assert fixed.sum() >= len(got) // 2
            checked += 1
    assert checked >= 20


def test_a_trend_bundle_needs_its_array_and_a_valid_weight(base: PlantedBundle, tmp_path: Path) -> None:
    shutil.copytree(base.path, tmp_path / "b")
    _with_trend(tmp_path / "b", 0.5, 4)
    (tmp_path / "b" / "item_trend.npy").unlink()
    with pytest.raises(BundleError, match=r"item_trend\.npy is missing"):
        load_bundle(tmp_path / "b")
    shutil.copytree(base.path, tmp_path / "c")
    np.save(tmp_path / "c" / "item_trend.npy", np.ones(3, dtype=np.float32))
    with pytest.raises(BundleError, match="item_trend"):
        load_bundle(tmp_path / "c")  # an array the manifest does not ask for
    shutil.copytree(base.path, tmp_path / "d")
    _with_trend(tmp_path / "d", 0.5, 4)
    raw = json.loads((tmp_path / "d" / "manifest.json").read_text())
    raw["family"]["trend_weight"] = 1.5
    (tmp_path / "d" / "manifest.json").write_text(json.dumps(raw))
    with pytest.raises(BundleError, match="trend_weight"):
        load_bundle(tmp_path / "d")


def test_trend_parts_and_extra_rows() -> None:
    kinds = np.array([KIND_PRODUCT] * 4 + [KIND_CONTENT] * 2, dtype=np.uint8)
    trend = np.array([0, 4, 2, 0, 5, 0], dtype=np.float32)
    prior = trend_source.Trend.of(0.5, trend, kinds, np.eye(6, dtype=np.float32))
    assert prior.part.tolist() == [0, 1, 0.5, 0, 1, 0]  # divided by each kind's largest
    assert prior.top[KIND_PRODUCT].tolist() == [1, 2]  # items with a trend, best first
    assert prior.extra_rows(KIND_PRODUCT, np.array([2, 3])).tolist() == [1]
    assert prior.of_rows(np.array([1, 6, 9])).tolist() == [1.0, 0.0, 0.0]  # new items: none yet


@pytest.mark.parametrize("family", ["als", "blend"])
def test_items_beyond_the_first_candidates_are_found_by_the_threshold(
    base: PlantedBundle, tmp_path: Path, family: str
) -> None:
    """A trend built against one member: the most trending items are another cluster's (ALS near
    0), and 20 items of the member's own cluster just past any first search trend nearly as
    much, so the member's best mixed scores lie beyond the first search and beyond the first
    trending items. Serving must find them (widening until nothing unscored can reach the list)
    and rank as the dense reference does."""
    if family == "als":
        shutil.copytree(base.path, tmp_path / "b")
    else:  # neighbours on a sparse random table: items outside a history's lists score ALS alone
        _family_bundle(base, tmp_path / "b", "blend", 0.6, 9)
    model = ServedModel.load(tmp_path / "b", version="plain", source_uri="p")
    row = next(r for r in range(len(model.members)) if trained_state(model, r).vector is not None)
    vector = trained_state(model, row).vector
    assert vector is not None
    products = model.kind_rows[KIND_PRODUCT].astype(np.int64)
    als = np.asarray(model.item_factors)[products] @ vector
    order = np.argsort(-als)
    trend = np.zeros(int(np.load(tmp_path / "b" / "item_kind.npy").shape[0]), dtype=np.float32)
    beyond = order[180:200]  # in the member's cluster, past any first search
    others = order[-400:]  # far from the member: the most trending of all
    trend[products[others]] = 3.0
    trend[products[beyond]] = 2.9
    np.save(tmp_path / "b" / "item_trend.npy", trend)
    raw = json.loads((tmp_path / "b" / "manifest.json").read_text())
    raw["family"] = {**raw.get("family", {"family": "als"}), "trend_weight": 0.5, "trend_days": 14}
    (tmp_path / "b" / "manifest.json").write_text(json.dumps(raw))
    model = ServedModel.load(tmp_path / "b", version="t", source_uri="t")
    view = CatalogView(model, {}, NOW, version=1)
    engine = _engine(model, view)
    state = trained_state(model, row)
    if model.neighbours is None:
        ref_rows, ref_scores = _als_reference(view, vector, KIND_PRODUCT)
    else:
        ref_rows, ref_family, _ = _reference(
            view, model.neighbours, vector, state.hist_rows, state.hist_w, KIND_PRODUCT
        )
        ref_scores = _dense(view, ref_family, ref_rows)
        by_score = np.argsort(-ref_scores, kind="stable")
        ref_rows, ref_scores = ref_rows[by_score], ref_scores[by_score]
    filters = FILTERS[1]  # nothing filtered but the member's purchases
    _, got, excluded = assert_serves_reference(
        engine,
        view,
        model.members.id(row),
        KIND_PRODUCT,
        20,
        filters,
        state.excluded(filters)[0],
        ref_rows,
        ref_scores,
    )
    assert len(got) == 20
    _, n = candidate_sizes(engine._settings, 20, excluded.shape[0])
    assert n < 180
    first = set(ranking.search(model, vector, KIND_PRODUCT, n)[0].tolist())
    first |= set(model.trend.top[KIND_PRODUCT][:200].tolist())  # type: ignore[union-attr]
    assert set(got) - first  # some of the list lay beyond both: only the widening found them


@pytest.mark.parametrize("bad", [np.nan, np.inf, -1.0])
def test_a_trend_or_item_vector_that_is_not_a_finite_number_is_refused(
    base: PlantedBundle, tmp_path: Path, bad: float
) -> None:
    shutil.copytree(base.path, tmp_path / "b")
    _with_trend(tmp_path / "b", 0.5, 4)
    trend = np.load(tmp_path / "b" / "item_trend.npy")
    trend[1] = bad
    np.save(tmp_path / "b" / "item_trend.npy", trend)
    with pytest.raises(BundleError, match="item_trend holds NaN, infinite or negative"):
        load_bundle(tmp_path / "b")
    if bad < 0:
        return  # a negative factor is a fine vector
    shutil.copytree(base.path, tmp_path / "c")
    factors = np.load(tmp_path / "c" / "item_factors.npy")
    factors[2, 0] = bad
    np.save(tmp_path / "c" / "item_factors.npy", factors)
    with pytest.raises(BundleError, match="item_factors holds NaN or infinite"):
        load_bundle(tmp_path / "c")
