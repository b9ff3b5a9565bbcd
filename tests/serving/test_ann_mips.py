"""The default ANN index: IVF with L2 over norm-augmented item vectors (training/ann.py).

Item factors here are ALS-like: norms spread over orders of magnitude, so the inner-product top-k
is far from the L2 nearest neighbours of the raw vectors (checked below, so a missing
augmentation cannot pass). Serving must rank with the index but score by exact inner product,
for the augmented index and for the plain inner-product IVF of older bundles.
"""

from __future__ import annotations

from pathlib import Path

import faiss
import numpy as np
import pytest

from recsvc.bundle import KIND_CONTENT, KIND_PRODUCT
from recsvc.settings import TrainingSettings, load_settings
from training import ann

D = 16
K = 20


def _als_like(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(n, D)) * rng.lognormal(0, 1.0, size=(n, 1))).astype(np.float32)


@pytest.fixture(scope="module")
def planted() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """300 content rows first, then 3000 products: product ids are not positions in the kind."""
    vectors = _als_like(3300, 1)
    kind = np.array([KIND_CONTENT] * 300 + [KIND_PRODUCT] * 3000, dtype=np.uint8)
    queries = np.random.default_rng(2).normal(size=(200, D)).astype(np.float32)
    return vectors, kind, queries


def _exact_top(vectors: np.ndarray, rows: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    ip = queries @ vectors[rows].T
    return rows[np.argsort(-ip, axis=1, kind="stable")[:, :k]]


def _recall(found: np.ndarray, exact: np.ndarray) -> float:
    return sum(np.intersect1d(f, e).size for f, e in zip(found, exact, strict=True)) / exact.size


def test_mips_is_the_default() -> None:
    assert TrainingSettings().ann_index == "ivf_mips"


def test_mips_index_meets_the_target_recall_with_item_rows_as_ids(planted) -> None:  # type: ignore[no-untyped-def]
    vectors, kind, queries = planted
    indexes, info = ann.build_indexes(
        vectors, kind, queries, exact_below=100, m=16, ef_construction=64, ef_search=16, k=K
    )
    p = info["product"]
    products = np.flatnonzero(kind == KIND_PRODUCT)
    assert p["type"] == "ivf_flat_l2_augmented"
    assert p["nlist"] == ann.mips_nlist(3000) == 76  # 4 sqrt(3000) = 219 > 3000 / 39
    assert 1 <= p["nprobe"] < p["nlist"]  # tuned, not a full scan
    assert p["max_norm"] == pytest.approx(float(np.linalg.norm(vectors[products], axis=1).max()), rel=1e-6)
    assert p["recall_at_k"] >= 0.95
    index = indexes["product"]
    assert isinstance(index, faiss.IndexPreTransform) and index.d == D  # callers pass d-dim queries
    _, found = index.search(queries, K)
    assert np.isin(found, products).all()  # ids are item rows of the kind
    exact = _exact_top(vectors, products, queries, K)
    assert _recall(found, exact) == pytest.approx(p["recall_at_k"])
    # the data discriminates: L2 neighbours of the raw vectors are not the inner-product top-k
    l2 = ((queries[:, None, :] - vectors[products][None]) ** 2).sum(-1)
    assert _recall(products[np.argsort(l2, axis=1)[:, :K]], exact) < 0.2
    assert info["content"]["type"] == "ivf_flat_l2_augmented" and info["content"]["nlist"] == 300 // 39


def test_mips_index_ranks_in_inner_product_order(planted) -> None:  # type: ignore[no-untyped-def]
    vectors, kind, queries = planted
    indexes, info = ann.build_indexes(
        vectors, kind, queries, exact_below=100, m=16, ef_construction=64, ef_search=16, k=K
    )
    index = indexes["product"]
    ivf = faiss.extract_index_ivf(index)
    ivf.nprobe = ivf.nlist  # every cell: the index must then be exact inner-product search
    dist, found = index.search(queries, K)
    products = np.flatnonzero(kind == KIND_PRODUCT)
    exact = _exact_top(vectors, products, queries, K)
    assert all(set(f) == set(e) for f, e in zip(found, exact, strict=True))
    assert (found == exact).mean() > 0.99
    # the distances are ||q||^2 + M^2 - 2 q.x: ascending L2 is descending inner product, up to
    # float32 rounding of distances near M^2 (a near-tie may swap two neighbours)
    m = info["product"]["max_norm"]
    ip = np.einsum("qd,qkd->qk", queries, vectors[found])
    np.testing.assert_allclose(dist, (queries**2).sum(1)[:, None] + m**2 - 2 * ip, rtol=1e-5)
    assert (np.diff(ip, axis=1) <= 1e-6 * m**2).all()


def test_mips_index_round_trip_keeps_item_rows_and_nprobe(planted, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    vectors, kind, queries = planted
    indexes, info = ann.build_indexes(
        vectors, kind, queries, exact_below=100, m=16, ef_construction=64, ef_search=16, k=K
    )
    faiss.write_index(indexes["product"], str(tmp_path / "index.faiss"))
    loaded = faiss.read_index(str(tmp_path / "index.faiss"))  # load_bundle reads it like this
    assert faiss.extract_index_ivf(loaded).nprobe == info["product"]["nprobe"]
    assert faiss.extract_index_ivf(loaded).nlist == info["product"]["nlist"]
    before = indexes["product"].search(queries, K)
    after = loaded.search(queries, K)
    np.testing.assert_array_equal(after[1], before[1])
    np.testing.assert_array_equal(after[0], before[0])
    assert np.isin(after[1], np.flatnonzero(kind == KIND_PRODUCT)).all()


def test_mips_nlist_keeps_39_points_per_cell(capfd: pytest.CaptureFixture[str]) -> None:
    assert ann.mips_nlist(99_360) == 1260  # the 1M x 64 bundle's products: 4 sqrt(n)
    assert ann.mips_nlist(10_000) == 256  # 4 sqrt(n) = 400 would leave 25 points per cell
    assert ann.mips_nlist(100_000_000) == 40_000
    for n in (39, 100, 624, 625, 5000, 20_000, 10**6):
        assert ann.mips_nlist(n) >= 1 and 39 * ann.mips_nlist(n) <= n
    assert ann.mips_nlist(5000) >= 16
    # a small kind builds without FAISS's "please provide at least ... training points" warning
    rows = np.arange(500)
    ann.build_index(
        _als_like(500, 3),
        rows,
        _als_like(30, 4),
        exact_below=10,
        m=8,
        ef_construction=32,
        ef_search=16,
        k=10,
        target_recall=0.9,
        max_ef_search=64,
    )
    assert "WARNING" not in capfd.readouterr().err


def test_augment_puts_every_item_on_the_sphere_of_the_max_norm() -> None:
    x = _als_like(50, 5)
    xa, m = ann.augment(x)
    assert xa.shape == (50, D + 1) and xa.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(xa, axis=1), m, rtol=1e-5)
    np.testing.assert_array_equal(xa[:, :D], x)
    assert m == pytest.approx(float(np.linalg.norm(x, axis=1).max()), rel=1e-6)


# ---- serving -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def served_bundles(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A planted bundle with ALS-like item norms, reindexed with each index method."""
    from bundle_factory import make_bundle

    from training.reindex import reindex

    root = tmp_path_factory.mktemp("ann-serving")
    src = make_bundle(root / "src", products_per_cluster=200, content_per_cluster=20).path
    factors = np.load(src / "item_factors.npy")
    scale = np.random.default_rng(6).lognormal(0, 1.0, size=(factors.shape[0], 1))
    np.save(src / "item_factors.npy", (factors * scale).astype(np.float32))
    out = {}
    for method in ("ivf_mips", "ivf"):
        t = load_settings(overrides={"training": {"exact_index_below": 10, "ann_index": method}}).training
        reindex(src, root / method, t)
        out[method] = root / method
    return out


@pytest.mark.parametrize(
    ("method", "index_type"), [("ivf_mips", "ivf_flat_l2_augmented"), ("ivf", "ivf_flat_ip")]
)
def test_serving_search_returns_exact_inner_products_best_first(
    served_bundles: dict[str, Path], method: str, index_type: str
) -> None:
    from recsvc.engine.served_model import ServedModel

    model = ServedModel.load(served_bundles[method], version="1", source_uri="test")
    assert model.manifest.index["product"]["type"] == index_type
    assert KIND_PRODUCT in model.indexes and KIND_CONTENT in model.indexes
    warm = np.flatnonzero(np.abs(model.member_factors).sum(axis=1) > 0)
    hits = total = 0
    for row in warm:
        vector = model.member_vector(int(row))
        for kind in (KIND_PRODUCT, KIND_CONTENT):
            rows, scores = model.search(vector, kind, 20)
            assert rows.dtype == np.int64 and scores.dtype == np.float32 and len(rows) == 20
            assert (model.item_kind[rows] == kind).all()
            exact_scores = np.asarray(model.item_factors[rows], dtype=np.float32) @ vector
            # An augmented index's scores come from float32 L2 distances: exact to their rounding.
            norm_sq = float(vector @ vector) + float(np.linalg.norm(model.item_factors, axis=1).max()) ** 2
            np.testing.assert_allclose(scores, exact_scores, rtol=1e-5, atol=8 * 6e-8 * norm_sq)
            assert (np.diff(scores) <= 0).all()  # best first
            ref_rows, _ = model.exact_search(vector, kind, 20)
            hits += np.intersect1d(rows, ref_rows).size
            total += 20
    assert hits / total >= 0.9


def test_an_exact_index_is_searched_as_faiss_searches_it(tmp_path: Path) -> None:
    """Kinds below ``exact_index_below`` get a flat index; serving scores its items with one
    matrix-vector product instead of FAISS's heap: the same rows in the same order, FAISS's
    scores to float32 rounding, only the items the index holds (an item without a trained
    vector is left out, as the index leaves it out)."""
    from bundle_factory import make_bundle

    from recsvc.engine.served_model import ServedModel
    from training.reindex import reindex

    src = make_bundle(tmp_path / "src", products_per_cluster=60, content_per_cluster=10).path
    factors = np.load(src / "item_factors.npy")
    factors[3] = 0  # an untrained product: not in the index
    np.save(src / "item_factors.npy", factors)
    reindex(
        src, tmp_path / "flat", load_settings(overrides={"training": {"exact_index_below": 10_000}}).training
    )
    model = ServedModel.load(tmp_path / "flat", version="1", source_uri="test")
    assert model.manifest.index["product"]["type"] == "flat_ip"
    rng = np.random.default_rng(2)
    for _ in range(30):
        vector = rng.normal(size=factors.shape[1]).astype(np.float32)
        for kind in (KIND_PRODUCT, KIND_CONTENT):
            for n in (5, 50, 10_000):
                rows, scores = model.search(vector, kind, n)
                ref_scores, ref_rows = model.indexes[kind].search(vector.reshape(1, -1), n)
                keep = ref_rows[0] >= 0
                assert rows.tolist() == ref_rows[0][keep].tolist()
                np.testing.assert_allclose(scores, ref_scores[0][keep], rtol=1e-5, atol=1e-6)
                assert 3 not in rows.tolist()
