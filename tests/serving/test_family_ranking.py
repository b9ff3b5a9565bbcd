"""The item-item and blend families' live path (recsvc/engine/family_ranking.py,
itemknn_source.candidates) against a brute-force reference: every item of the kind scored densely
with training's functions (``knn_scores_batch`` over the similarity matrix, ``als_scale``,
``blend``). The live path scores only the history's neighbours and the ALS search's best, so the
checks use catalogs larger than its first search, random neighbour tables, live-catalog changes
(stock, delistings, prices, new items), filters, exclusions and the largest k."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import scipy.sparse as sp
from bundle_factory import FixedCatalog, PlantedBundle, make_bundle

from recsvc.bundle import KIND_CONTENT, KIND_PRODUCT
from recsvc.catalog.store import ItemRecord
from recsvc.catalog.view import CatalogView, catalog_as_of_ms
from recsvc.engine import family_ranking, itemknn_source, ranking
from recsvc.engine.candidates import candidate_sizes
from recsvc.engine.filters import FilterSpec
from recsvc.engine.member_state import trained_state
from recsvc.engine.recommender import RecommendationEngine, SingleModel
from recsvc.engine.served_model import ServedModel
from recsvc.settings import ServingSettings, load_settings

NOW = 1_900_000_000.0


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> PlantedBundle:
    # 400 products, 100 content items: more than a first search asks for (n ~ 100 + purchases)
    return make_bundle(
        tmp_path_factory.mktemp("family") / "b", products_per_cluster=100, content_per_cluster=25, seed=3
    )


def _family_bundle(
    base: PlantedBundle,
    out: Path,
    family: str,
    weight: float | None,
    seed: int,
    history_items: int | None = None,
) -> ServedModel:
    """``base`` with a random non-negative neighbour table (``width`` per item, some rows
    shorter) and the given family, whose scores sum over ``history_items`` history items."""
    shutil.copytree(base.path, out)
    rng = np.random.default_rng(seed)
    raw = json.loads((out / "manifest.json").read_text())
    n = int(np.load(out / "item_kind.npy").shape[0])
    width = 12
    sim = sp.random(n, n, density=0.05, random_state=seed, dtype=np.float32, format="csr")
    sim.data = rng.uniform(0.01, 1.0, sim.nnz).astype(np.float32)
    items = np.full((n, width), -1, dtype=np.int32)
    scores = np.zeros((n, width), dtype=np.float32)
    full_items, full_scores = itemknn_source.neighbour_table(sim)
    keep = min(width, full_items.shape[1])
    items[:, :keep], scores[:, :keep] = full_items[:, :keep], full_scores[:, :keep]
    scores[items < 0] = 0
    np.save(out / "item_neighbour_item.npy", items)
    np.save(out / "item_neighbour_score.npy", scores)
    raw["family"] = {"family": family, "neighbours": width, "history_items": history_items}
    if weight is not None:
        raw["family"]["als_weight"] = weight
    (out / "manifest.json").write_text(json.dumps(raw))
    return ServedModel.load(out, version=f"{family}-{seed}", source_uri=str(out))


def _live_view(model: ServedModel, seed: int) -> CatalogView:
    """Some products sold out, delisted or repriced, and three new products."""
    rng = np.random.default_rng(seed)
    ts = max(catalog_as_of_ms(model), int(NOW * 1000) - 1)
    products = model.items.ids(model.kind_rows[KIND_PRODUCT].tolist())
    records: dict[str, ItemRecord] = {}
    for v, item in enumerate(rng.choice(products, 60, replace=False).tolist()):
        patches: list[dict[str, Any]] = [
            {"in_stock": False},
            {"listed": False},
            {"price": rng.uniform(1, 80)},
        ]
        patch = patches[v % 3]
        records[item] = ItemRecord(v + 1, ts, patch, {key: ts for key in patch})
    for i, category in enumerate(model.categories[:3]):
        fields: dict[str, Any] = {"kind": "product", "title": f"New {i}", "category": category}
        fields |= {"brand": "brand0", "price": 12.0, "in_stock": True}
        records[f"NEW-{i}"] = ItemRecord(100 + i, ts, fields, {key: ts for key in fields})
    return CatalogView(model, records, NOW, version=200)


def _reference(
    view: CatalogView,
    nb: itemknn_source.Neighbours,
    vector: np.ndarray,
    rows: np.ndarray,
    w: np.ndarray,
    kind: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every item of ``kind`` (and the view's new ones) by the family's score, best first, with
    each one's item-item reason (the history row of the largest weight x similarity, -1: none),
    the history cut by training's function to the bundle's ``history_items``."""
    model = view.model
    n = model.item_factors.shape[0]
    kind_rows = model.kind_rows[kind]
    inside = (rows >= 0) & (rows < n)
    hist = sp.csr_matrix((w[inside], (np.zeros(inside.sum(), dtype=np.int64), rows[inside])), shape=(1, n))
    sim = itemknn_source.similarity_matrix(nb.items, nb.scores, n)
    knn = itemknn_source.knn_scores_batch(hist, sim, nb.spec.history_items)[0][kind_rows]
    if nb.spec.history_items is not None:
        cut = itemknn_source.strongest_matrix(hist, nb.spec.history_items)
        rows, w = cut.indices.astype(np.int64), cut.data.astype(np.float32)
        inside = np.ones(rows.shape[0], dtype=bool)
    als = np.asarray(model.item_factors)[kind_rows] @ vector
    scale = itemknn_source.als_scale(als.max(initial=0.0), np.linalg.norm(vector), nb.norm_max[kind])
    a = nb.als_weight
    scores = itemknn_source.blend(als if a > 0 else None, knn, a, scale)
    dense = sim.toarray()[rows[inside]][:, kind_rows] * w[inside][:, None]
    best = np.where(dense.max(axis=0, initial=0.0) > 0, rows[inside][dense.argmax(axis=0)], -1)
    new_rows, new_als = view.search_new(vector, kind)
    all_rows = np.concatenate([kind_rows, new_rows]).astype(np.int64)
    new_knn = np.zeros(new_rows.shape[0], dtype=np.float32)
    scores = np.concatenate([scores, itemknn_source.blend(new_als, new_knn, a, scale, knn.max(initial=0.0))])
    als = np.concatenate([als, new_als])
    knn = np.concatenate([knn, np.zeros(new_rows.shape[0], dtype=np.float32)])
    best = np.concatenate([best, np.full(new_rows.shape[0], -1)])
    if a == 0:
        scores = np.where(knn <= 0, (als / scale - 1) / 2, scores).astype(np.float32)
    order = np.argsort(-scores, kind="stable")
    return all_rows[order], scores[order], best[order]


def assert_serves_reference(
    engine: RecommendationEngine,
    view: CatalogView,
    member: str,
    kind: int,
    k: int,
    filters: FilterSpec,
    member_rows: np.ndarray,
    ref_rows: np.ndarray,
    ref_scores: np.ndarray,
) -> tuple[Any, list[int | None], np.ndarray]:
    """The engine's list for the member is the reference's best k that pass the filters, with
    their scores: (the response, its item rows, the rows no list may hold)."""
    excluded = ranking.excluded_rows(view, filters, member_rows)
    keep = filters.mask(view, ref_rows, excluded)
    resp = engine.recommend(member, kind, k, "", filters).response
    got = [view.row(it.item_id) for it in resp.items]
    assert got == ref_rows[keep][: len(got)].tolist()
    assert len(got) == min(k, int(keep.sum()))
    np.testing.assert_allclose(
        [it.score for it in resp.items], ref_scores[keep][: len(got)], rtol=1e-5, atol=1e-6
    )
    return resp, got, excluded


FILTERS = [
    FilterSpec(diversity=0.0),
    FilterSpec(diversity=0.0, in_stock_only=False, exclude_purchased=False, exclude_seen=False),
    FilterSpec(diversity=0.0, min_price=15.0, max_price=60.0),
    FilterSpec(
        diversity=0.0, include_categories=frozenset({"cat1", "cat2"}), exclude_brands=frozenset({"brand3"})
    ),
    FilterSpec(diversity=0.0, exclude_categories=frozenset({"cat0"}), exclude_item_ids=frozenset({"P1-000"})),
]


@pytest.mark.parametrize(
    ("family", "weight", "seed"), [("blend", 0.5, 1), ("blend", 0.85, 2), ("itemknn", None, 3)]
)
def test_the_sparse_path_ranks_as_every_item_scored(
    base: PlantedBundle, tmp_path: Path, family: str, weight: float | None, seed: int
) -> None:
    model = _family_bundle(base, tmp_path / "b", family, weight, seed)
    nb = model.neighbours
    assert nb is not None
    settings = ServingSettings(max_per_category=0)
    rng = np.random.default_rng(seed)
    view = _live_view(model, seed)
    assert view.new_ids
    checked = widened = 0
    for row in rng.choice(len(model.members), 12, replace=False).tolist():
        state = trained_state(model, row)
        if state.vector is None:
            continue
        hist_rows, hist_w = state.hist_rows.astype(np.int64), state.hist_w.astype(np.float32)
        # a recent event on a new item (no neighbours) and on a bundle item the history holds
        ev_rows = np.array([view.n, int(hist_rows[0])] if hist_rows.shape[0] else [view.n], dtype=np.int64)
        rows, weights = itemknn_source.history_with_events(
            hist_rows, hist_w, ev_rows, np.full(ev_rows.shape[0], 2.0, np.float32), 0.8
        )
        for kind in (KIND_PRODUCT, KIND_CONTENT):
            ref_rows, ref_scores, ref_best = _reference(view, nb, state.vector, rows, weights, kind)
            for filters in FILTERS:
                excluded = ranking.excluded_rows(view, filters, state.excluded(filters)[0])
                for k in (5, settings.max_k):
                    pool_size, n = candidate_sizes(settings, k, excluded.shape[0])
                    got, scores = itemknn_source.candidates(
                        view, nb, state.vector, rows, weights, kind, filters, excluded, n, pool_size
                    )
                    best = itemknn_source.reason_rows(nb, rows, weights, got)
                    widened += got.shape[0] > n
                    take = got.shape[0]
                    assert got.tolist() == ref_rows[:take].tolist()
                    np.testing.assert_allclose(scores, ref_scores[:take], rtol=1e-5, atol=1e-6)
                    assert best.tolist() == ref_best[:take].tolist()
                    kept = filters.mask(view, got, excluded)
                    ref_kept = filters.mask(view, ref_rows, excluded)
                    assert kept.sum() >= min(pool_size, ref_kept.sum())  # enough, or all there are
                    expect = ref_rows[ref_kept][: min(pool_size, int(kept.sum()))]
                    assert got[kept][: expect.shape[0]].tolist() == expect.tolist()
                    checked += 1
    assert checked >= 100
    assert widened > 0  # some filters needed more than the first search


@pytest.mark.parametrize("history_items", [None, 2])  # planted histories hold 3 items
def test_the_engine_serves_the_reference_list_and_reasons(
    base: PlantedBundle, tmp_path: Path, history_items: int | None
) -> None:
    """Through the engine (live path: no stored lists), no diversity and no category cap: the
    reference's best k that pass the filters, and each pick's reason is the history item that
    added most to its item-item score, else the ALS reason. With a history cut, serving cuts
    each member's history as training's matrix function does."""
    model = _family_bundle(base, tmp_path / "b", "blend", 0.5, 4, history_items)
    nb = model.neighbours
    assert nb is not None and model.member_lists is None
    view = _live_view(model, 4)
    settings = load_settings(overrides={"serving": {"max_per_category": 0, "replenish": False}}).serving
    engine = RecommendationEngine(SingleModel(model), None, settings, clock=lambda: NOW)

    engine.catalog = FixedCatalog(view)
    named = cut = 0
    for row in range(0, len(model.members), 3):
        state = trained_state(model, row)
        if state.vector is None:
            continue
        cut += history_items is not None and state.hist_rows.shape[0] > history_items
        member = model.members.id(row)
        for filters, k in ((FILTERS[0], 10), (FILTERS[2], 25), (FILTERS[3], settings.max_k)):
            ref_rows, ref_scores, ref_best = _reference(
                view, nb, state.vector, state.hist_rows, state.hist_w, KIND_PRODUCT
            )
            _, got_rows, excluded = assert_serves_reference(
                engine,
                view,
                member,
                KIND_PRODUCT,
                k,
                filters,
                state.excluded(filters)[0],
                ref_rows,
                ref_scores,
            )
            keep = filters.mask(view, ref_rows, excluded)
            picks, _, because = family_ranking.rank(
                settings, view, state, KIND_PRODUCT, k, filters, excluded, lambda: NOW
            )
            assert picks.tolist() == got_rows
            best = ref_best[keep][: len(got_rows)]
            assert because[best >= 0].tolist() == best[best >= 0].tolist()
            named += int((best >= 0).sum())
    assert named > 0
    assert (cut > 0) == (history_items is not None)  # the cut changed some members' histories


def test_serving_cuts_a_history_as_training_does() -> None:
    """``strongest`` (one member, serving, rows possibly listed twice) keeps the rows
    ``strongest_matrix`` (training's matrix) keeps, with the same weights, ties included."""
    rng = np.random.default_rng(0)
    for trial in range(200):
        length = int(rng.integers(0, 40))
        rows = rng.integers(0, 30, length).astype(np.int64)
        weights = rng.choice([0.5, 1.0, 2.0, 3.5], length).astype(np.float32)  # many ties
        cap = int(rng.integers(1, 12))
        got_rows, got_w = itemknn_source.strongest(rows, weights, cap)
        matrix = sp.csr_matrix((weights, (np.zeros(length, dtype=np.int64), rows)), shape=(1, 30))
        ref = itemknn_source.strongest_matrix(matrix, cap)
        got: dict[int, float] = {}
        for r, w in zip(got_rows.tolist(), got_w.tolist(), strict=True):  # a row twice: summed
            got[r] = got.get(r, 0.0) + w
        assert got == dict(zip(ref.indices.tolist(), ref.data.tolist(), strict=True)), trial
        assert len(got) == min(cap, np.unique(rows).shape[0])
    assert itemknn_source.strongest(rows, weights, None)[0] is rows  # no cut: untouched


def test_a_pick_unrelated_to_the_history_names_no_history_item(base: PlantedBundle, tmp_path: Path) -> None:
    """A filler with no vector (an item no one interacted with scores 0) or one pointing away
    from everything the member did gets no "because you ...": naming the first history item
    would be a made-up reason."""
    from recsvc.engine import explain

    model = ServedModel.load(base.path, version="r", source_uri="r")
    view = CatalogView(model, {}, NOW)
    row = next(r for r in range(len(model.members)) if trained_state(model, r).vector is not None)
    state = trained_state(model, row)
    hist = state.hist_rows.astype(np.int64)
    factors = np.asarray(model.item_factors)
    related = int(hist[0])
    unrelated = next(r for r in range(factors.shape[0]) if (factors[hist] @ factors[r]).max(initial=0.0) <= 0)
    got = explain.explain(view, np.array([related, unrelated]), state)
    assert got[0] in hist and got[1] == -1
