"""Precomputed product candidates per member (training/candidates.py, bundle member_top_product):
they are the index's own answer minus purchases and out-of-stock products, and serving from them
gives the same lists as searching."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import faiss
import numpy as np
import pytest
import scipy.sparse as sp
from bundle_factory import train_small_bundle

from recsvc.bundle import KIND_PRODUCT, load_bundle
from recsvc.engine.filters import FilterSpec
from recsvc.engine.recommender import RecommendationEngine, SingleModel
from recsvc.engine.served_model import ServedModel
from recsvc.errors import BundleError
from recsvc.settings import load_settings
from training import ann, candidates


def _factors(rng: np.random.Generator, n: int, d: int = 16) -> np.ndarray:
    return rng.normal(size=(n, d)).astype(np.float32)


def _expected(order: np.ndarray, bought: set[int], ok: np.ndarray, length: int) -> list[int]:
    return [int(r) for r in order if r >= 0 and ok[r] and int(r) not in bought][:length]


def test_candidates_are_the_top_allowed_not_bought_products_by_inner_product() -> None:
    rng = np.random.default_rng(3)
    items, members = _factors(rng, 300), _factors(rng, 50)
    members[7] = 0.0  # no trained vector: no list
    ok = rng.random(300) > 0.2
    bought = sp.random(50, 300, density=0.1, format="csr", random_state=4)
    index = faiss.IndexIDMap(faiss.IndexFlatIP(16))
    index.add_with_ids(items, np.arange(300, dtype=np.int64))
    top = candidates.member_top_products(index, members, bought, ok, length=20, chunk=16)
    assert top.shape == (50, 20) and top.dtype == np.int32
    assert (top[7] == -1).all()
    for m in (0, 1, 25, 49):
        order = np.argsort(-(items @ members[m]), kind="stable")
        assert top[m].tolist() == _expected(order, set(bought[m].indices.tolist()), ok, 20)


def test_short_lists_are_padded_when_the_search_runs_out() -> None:
    rng = np.random.default_rng(5)
    items, members = _factors(rng, 30), _factors(rng, 4)
    ok = np.ones(30, dtype=bool)
    ok[:10] = False
    bought = sp.csr_matrix(([1.0] * 5, ([0] * 5, [10, 11, 12, 13, 14])), shape=(4, 30))
    index = faiss.IndexIDMap(faiss.IndexFlatIP(16))
    index.add_with_ids(items, np.arange(30, dtype=np.int64))
    top = candidates.member_top_products(index, members, bought, ok, length=25)
    assert (top[0] >= 0).sum() == 15 and (top[0, 15:] == -1).all()  # 30 - 10 out of stock - 5 bought
    assert (top[1] >= 0).sum() == 20
    assert not set(top[0].tolist()) & {10, 11, 12, 13, 14}


def test_ivf_candidates_are_what_a_single_search_of_the_same_index_returns() -> None:
    # the property serving relies on: for the bundle's IVF index, the list is the first rows of
    # the search serving would make for the member, minus what the default filters drop
    rng = np.random.default_rng(11)
    items, members = _factors(rng, 6000), _factors(rng, 200)
    kinds = np.full(6000, KIND_PRODUCT, dtype=np.uint8)
    t = load_settings(overrides={"training": {"exact_index_below": 100, "ann_queries": 100}}).training
    indexes, info = ann.indexes_for(items, kinds, members, t)
    index = indexes["product"]
    assert "ivf" in info["product"]["type"]
    ok = rng.random(6000) > 0.1
    bought = sp.random(200, 6000, density=0.002, format="csr", random_state=12)
    top = candidates.member_top_products(index, members, bought, ok, length=40)
    for m in range(0, 200, 17):
        _, ids = index.search(members[m : m + 1], 200)
        assert top[m].tolist() == _expected(ids[0], set(bought[m].indices.tolist()), ok, 40)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_small_bundle(tmp_path_factory.mktemp("cand"), {"member_candidates": 64})


def _ids(engine: RecommendationEngine, member: str, k: int, filters: FilterSpec) -> list[tuple[str, str]]:
    resp = engine.recommend(member, KIND_PRODUCT, k, "", filters).response
    return [(i.item_id, i.reason) for i in resp.items]


def test_serving_from_candidates_gives_the_lists_a_search_gives(trained: Path) -> None:
    settings = load_settings()
    with_top = ServedModel.load(trained, version="1", source_uri=str(trained))
    live = ServedModel.load(trained, version="1", source_uri=str(trained))
    live.member_top = {}
    assert with_top.member_top[KIND_PRODUCT].shape[1] == 64
    searches: list[int] = []
    search = with_top.search

    def counted(*args: Any) -> Any:
        searches.append(1)
        return search(*args)

    with_top.search = counted  # type: ignore[method-assign,assignment]
    fast = RecommendationEngine(SingleModel(with_top), None, settings.serving)
    slow = RecommendationEngine(SingleModel(live), None, settings.serving)
    default = FilterSpec(diversity=settings.serving.default_diversity)
    members = [with_top.members.id(r) for r in range(0, len(with_top.members), 7)]
    served_from_top = 0
    for m in members:
        before = len(searches)
        assert _ids(fast, m, 10, default) == _ids(slow, m, 10, default), m
        row = with_top.member_row(m)
        top = with_top.top_candidates(row, KIND_PRODUCT) if row is not None else None
        if row is not None and top is not None and top.shape[0] >= 50 and with_top.member_vector(row).any():
            assert len(searches) == before  # answered from the list: no search
            served_from_top += 1
    assert served_from_top >= len(members) // 2
    # filters the lists were not made for search as before, with the same answers
    for f in (
        FilterSpec(in_stock_only=False, diversity=0.3),
        FilterSpec(exclude_purchased=False, diversity=0.3),
        FilterSpec(min_price=20.0, diversity=0.3),
    ):
        for m in members[:10]:
            assert _ids(fast, m, 10, f) == _ids(slow, m, 10, f), (m, f)
    # a long list (pool above the precomputed length) searches too, same answer
    for m in members[:5]:
        assert _ids(fast, m, 30, default) == _ids(slow, m, 30, default)


def test_a_malformed_candidate_array_is_a_named_bundle_error(trained: Path, tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "b"
    shutil.copytree(trained, copy)
    np.save(copy / "member_top_product.npy", np.zeros((3, 4), dtype=np.int64))
    with pytest.raises(BundleError, match="member_top_product"):
        load_bundle(copy)
