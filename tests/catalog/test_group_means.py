"""A new product's starting vector (``recsvc.catalog.view.GroupMeans``): its category's sellers'
direction, each weighted by its length, its brand counting double, at the length of the
category's best sellers; so a product of a small, weak brand still reaches its category's buyers,
and not the members of other categories."""

from __future__ import annotations

import numpy as np
import pytest

from recsvc.bundle import KIND_CONTENT, KIND_PRODUCT
from recsvc.catalog.view import GroupMeans


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v)


def test_the_vector_is_the_category_s_length_weighted_direction_at_its_best_sellers_length() -> None:
    rng = np.random.default_rng(3)
    n = 120
    f = rng.normal(size=(n, 8)).astype(np.float32) * rng.uniform(0.1, 2.0, size=(n, 1)).astype(np.float32)
    kind = np.where(np.arange(n) < 100, KIND_PRODUCT, KIND_CONTENT).astype(np.uint8)
    cat = rng.integers(0, 3, size=n).astype(np.int32)
    brand = rng.integers(-1, 4, size=n).astype(np.int32)
    trained = rng.random(n) < 0.8
    f[~trained] = 0.0
    means = GroupMeans(f, kind, cat, brand, trained)
    f64 = f.astype(np.float64)
    for k in (KIND_PRODUCT, KIND_CONTENT):
        for c in range(3):
            in_cat = trained & (kind == k) & (cat == c)
            if not in_cat.any():
                assert means.vector(k, c, None) is None
                continue
            vectors = f64[in_cat]
            norms = np.linalg.norm(vectors, axis=1)
            length = np.sort(norms)[::-1][: GroupMeans.TOP].mean()
            weighted = (vectors * norms[:, None]).sum(axis=0)
            got = means.vector(k, c, None)
            assert got is not None and got.dtype == np.float32
            assert np.linalg.norm(got) == pytest.approx(length, rel=1e-5)
            assert _unit(got) == pytest.approx(_unit(weighted), abs=1e-5)
            for b in range(-1, 5):
                in_brand = in_cat & (brand == b)
                with_brand = means.vector(k, c, b)
                assert with_brand is not None
                mine = f64[in_brand]
                extra = (mine * np.linalg.norm(mine, axis=1)[:, None]).sum(axis=0)
                expected = _unit(weighted + (GroupMeans.BRAND_WEIGHT - 1) * extra)
                assert np.linalg.norm(with_brand) == pytest.approx(length, rel=1e-5)
                assert _unit(with_brand) == pytest.approx(expected, abs=1e-5)
    assert means.vector(KIND_PRODUCT, None, 0) is None
    assert means.vector(KIND_PRODUCT, 7, 0) is None  # a category the bundle does not know


def test_a_small_weak_brand_s_new_product_reaches_its_category_s_buyers_and_no_one_else() -> None:
    """Category 0 sells mostly brand 0 (long vectors along e0); brand 1 has two short, scattered
    vectors (few sales). Category 1's products lie along e1. A new brand-1 product must enter the
    top 20 of a category-0 buyer (vector e0), not of a category-1 buyer (vector e1). Its own
    brand's best sellers alone would give it a short vector pointing nowhere in particular."""
    rng = np.random.default_rng(0)
    e = np.eye(8)
    strong = e[0] * rng.uniform(0.6, 1.2, size=(30, 1)) + rng.normal(scale=0.1, size=(30, 8))
    weak = np.stack([0.05 * _unit(e[2] + e[3]), 0.05 * _unit(e[4] - e[0])])
    other = e[1] * rng.uniform(0.6, 1.2, size=(30, 1)) + rng.normal(scale=0.1, size=(30, 8))
    f = np.concatenate([strong, weak, other]).astype(np.float32)
    cat = np.array([0] * 32 + [1] * 30, dtype=np.int32)
    brand = np.array([0] * 30 + [1] * 2 + [2] * 30, dtype=np.int32)
    kind = np.full(f.shape[0], KIND_PRODUCT, dtype=np.uint8)
    means = GroupMeans(f, kind, cat, brand, np.ones(f.shape[0], dtype=bool))
    new = means.vector(KIND_PRODUCT, 0, 1)
    assert new is not None

    def in_top20(member: np.ndarray) -> bool:
        return float(member @ new) > np.sort(f @ member)[::-1][19]

    assert in_top20(e[0])
    assert not in_top20(e[1])
    # the brand's own sellers still pull it their way
    assert float(_unit(new) @ _unit(weak.mean(axis=0))) > float(
        _unit(means.vector(KIND_PRODUCT, 0, None)) @ _unit(weak.mean(axis=0))  # type: ignore[arg-type]
    )


def test_training_fills_recent_products_with_their_group_s_best_sellers() -> None:
    """A retrain gives a product published lately without interactions the quieter best sellers'
    vector: the mean direction of its (category, brand) group's five longest vectors at their
    average length, else its category's (the category rule cost holdout NDCG in the evaluation
    fit)."""
    from training.coldstart import fill_new_products

    rng = np.random.default_rng(5)
    n = 60
    f = rng.normal(size=(n, 6)).astype(np.float32) * rng.uniform(0.1, 2.0, size=(n, 1)).astype(np.float32)
    kind = np.full(n, KIND_PRODUCT, dtype=np.uint8)
    cat = (np.arange(n) % 2).astype(np.int32)
    brand = (np.arange(n) % 5).astype(np.int32)
    trained = np.arange(n) < 50
    f[~trained] = 0.0
    published = np.where(trained, 1, 1_000_000).astype(np.int64)
    filled, count = fill_new_products(f, trained, kind, cat, brand, published, 1_000_000, 30)
    assert count == 10
    f64 = f.astype(np.float64)
    live = GroupMeans(f, kind, cat, brand, trained)
    for row in range(50, n):
        group = np.flatnonzero(trained & (cat == cat[row]) & (brand == brand[row]))
        top = group[np.argsort(-np.linalg.norm(f64[group], axis=1), kind="stable")[:5]]
        length = np.linalg.norm(f64[top], axis=1).mean()
        expected = _unit(f64[top].sum(axis=0)) * length
        np.testing.assert_allclose(filled[row], expected, rtol=1e-5, atol=1e-6)
        pushed = live.vector(KIND_PRODUCT, int(cat[row]), int(brand[row]))
        assert pushed is not None and not np.allclose(filled[row], pushed)
