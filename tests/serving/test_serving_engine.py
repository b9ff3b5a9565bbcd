"""Pure engine pieces: member-vector recomputation, MMR, diversity, filter validation, bucketing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import scipy.sparse as sp
from implicit.cpu.als import AlternatingLeastSquares

from recsvc.bundle_manifest import FoldInSpec
from recsvc.engine.diversity import intra_list_diversity, mmr
from recsvc.engine.filters import FilterSpec
from recsvc.errors import InvalidArgument
from recsvc.models.variants import bucket
from recsvc.realtime import recalculate_member
from recsvc.v1 import common_pb2


def test_recalculate_member_matches_implicit_recalculate_user() -> None:
    rng = np.random.default_rng(0)
    y = rng.normal(0, 0.3, (40, 8)).astype(np.float32)
    rows = np.array([3, 7, 19], dtype=np.int64)
    weights = np.array([4.0, 0.5, 1.5], dtype=np.float32)
    model = AlternatingLeastSquares(factors=8, regularization=0.05, alpha=2.0, num_threads=1)
    model.item_factors = y.copy()
    user_items = sp.csr_matrix((weights, rows, np.array([0, 3])), shape=(1, 40))
    expected = model.recalculate_user(0, user_items)
    got = recalculate_member(y, y.T.dot(y), rows, weights, alpha=2.0, regularization=0.05)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    ("fold_in", "confidence", "reg"),
    [
        # implicit: C = alpha * r on the member's items, the same lambda for everyone
        (FoldInSpec(), lambda r: 2.0 * r, lambda n: 0.05),
        # Spark MLlib: C = 1 + alpha * r, lambda = regParam * the member's items (ALS-WR)
        (FoldInSpec(confidence_offset=1.0, reg_per_item=0.03), lambda r: 1.0 + 2.0 * r, lambda n: 0.03 * n),
    ],
)
def test_a_folded_in_member_minimises_the_engines_own_loss(fold_in: Any, confidence: Any, reg: Any) -> None:
    """The loss written out over every item: sum_i c_i (p_i - x.y_i)^2 + lambda |x|^2, c_i = 1 and
    p_i = 0 off the member's items. Its gradient vanishes at the recalculated vector."""
    rng = np.random.default_rng(1)
    y = rng.normal(0, 0.3, (40, 8))
    rows = np.array([3, 7, 19, 22], dtype=np.int64)
    weights = np.array([4.0, 0.5, 1.5, 0.8])
    x = recalculate_member(
        y.astype(np.float32), (y.T @ y).astype(np.float32), rows, weights, 2.0, 0.05, fold_in
    ).astype(np.float64)
    c, pref = np.ones(40), np.zeros(40)
    c[rows], pref[rows] = confidence(weights), 1.0
    gradient = (c * (y @ x - pref)) @ y + reg(len(rows)) * x
    assert np.abs(gradient).max() < 1e-4 * np.abs(x).max()
    # and the two forms do give different members: the spec matters
    other = FoldInSpec() if fold_in.reg_per_item else FoldInSpec(confidence_offset=1.0, reg_per_item=0.03)
    x2 = recalculate_member(
        y.astype(np.float32), (y.T @ y).astype(np.float32), rows, weights, 2.0, 0.05, other
    )
    assert np.abs(x2 - x).max() > 0.05 * np.abs(x).max()


def test_mmr_without_diversity_is_top_k() -> None:
    rel = np.array([0.1, 0.9, 0.5, 0.7], dtype=np.float32)
    vecs = np.eye(4, dtype=np.float32)
    assert mmr(rel, vecs, 3, 0.0).tolist() == [1, 3, 2]


def test_mmr_spreads_across_clusters_and_raises_intra_list_diversity() -> None:
    # Six near-duplicates along one axis are the most relevant; three on other axes follow.
    vecs = np.array(
        [[1, 0.01 * i, 0] for i in range(6)] + [[0, 1, 0], [0, 0, 1], [0.7, 0.7, 0]], dtype=np.float32
    )
    rel = np.array([1.0, 0.99, 0.98, 0.97, 0.96, 0.95, 0.8, 0.79, 0.78], dtype=np.float32)
    plain = mmr(rel, vecs, 3, 0.0)
    varied = mmr(rel, vecs, 3, 0.5)
    assert plain.tolist() == [0, 1, 2]
    assert varied[0] == 0  # the most relevant item always leads
    assert {6, 7} <= set(varied.tolist())
    assert intra_list_diversity(vecs[varied]) > intra_list_diversity(vecs[plain]) + 0.5


def _mmr_by_definition(rel: np.ndarray, vecs: np.ndarray, k: int, d: float) -> list[int]:
    """MMR written straight from its definition, to check the incremental version against."""
    r = (rel - rel.min()) / (rel.max() - rel.min())
    unit = vecs / np.linalg.norm(vecs, axis=1, keepdims=True)
    picks: list[int] = []
    for _ in range(k):
        best, best_gain = -1, -np.inf
        for i in range(len(rel)):
            if i in picks:
                continue
            sim = max((max(0.0, float(unit[i] @ unit[j])) for j in picks), default=0.0)
            gain = (1 - d) * r[i] - d * sim
            if gain > best_gain + 1e-9:
                best, best_gain = i, gain
        picks.append(best)
    return picks


@pytest.mark.parametrize("d", [0.1, 0.3, 0.7])
def test_mmr_matches_its_definition(d: float) -> None:
    rng = np.random.default_rng(int(d * 10))
    for _ in range(20):
        rel = rng.random(40).astype(np.float32)
        vecs = rng.normal(size=(40, 8)).astype(np.float32)
        assert mmr(rel, vecs, 10, d).tolist() == _mmr_by_definition(rel, vecs, 10, d)


def test_mmr_category_cap() -> None:
    rel = np.linspace(1, 0.5, 6).astype(np.float32)
    vecs = np.eye(6, dtype=np.float32)
    cats = np.array([0, 0, 0, 1, 1, 2])
    picks = mmr(rel, vecs, 4, 0.0, categories=cats, max_per_category=1)
    assert picks.tolist() == [0, 3, 5]  # only three categories exist


def test_intra_list_diversity_bounds() -> None:
    assert intra_list_diversity(np.ones((3, 4))) == pytest.approx(0.0, abs=1e-9)
    assert intra_list_diversity(np.eye(3)) == pytest.approx(1.0)
    assert intra_list_diversity(np.ones((1, 4))) == 0.0


def _spec(f: common_pb2.RecommendationFilters) -> FilterSpec:
    return FilterSpec.from_proto(f, default_diversity=0.3, max_values=5, max_id_length=16)


def test_filter_defaults_are_on_when_unset() -> None:
    spec = _spec(common_pb2.RecommendationFilters())
    assert spec.in_stock_only and spec.exclude_purchased and spec.diversity == 0.3
    spec = _spec(common_pb2.RecommendationFilters(in_stock_only=False, exclude_purchased=False, diversity=0))
    assert not spec.in_stock_only and not spec.exclude_purchased and spec.diversity == 0.0


@pytest.mark.parametrize(
    ("filters", "reason"),
    [
        (common_pb2.RecommendationFilters(diversity=1.5), "INVALID_DIVERSITY"),
        (common_pb2.RecommendationFilters(diversity=-0.1), "INVALID_DIVERSITY"),
        (common_pb2.RecommendationFilters(min_price=10, max_price=5), "INVALID_PRICE_RANGE"),
        (common_pb2.RecommendationFilters(min_price=-1), "INVALID_PRICE_RANGE"),
        (
            common_pb2.RecommendationFilters(include_brands=[f"b{i}" for i in range(6)]),
            "TOO_MANY_FILTER_VALUES",
        ),
        (common_pb2.RecommendationFilters(exclude_item_ids=["bad id"]), "INVALID_ITEM_ID"),
        (common_pb2.RecommendationFilters(exclude_item_ids=["x" * 17]), "INVALID_ITEM_ID"),
    ],
)
def test_filter_validation_names_the_problem(filters: common_pb2.RecommendationFilters, reason: str) -> None:
    with pytest.raises(InvalidArgument) as err:
        _spec(filters)
    assert err.value.reason == reason


def test_bucket_is_stable_and_uniform() -> None:
    ids = [f"M{i:06d}" for i in range(20000)]
    first = [bucket(m) for m in ids]
    assert first == [bucket(m) for m in ids]
    assert all(0.0 <= b < 1.0 for b in first)
    share = sum(b < 0.2 for b in first) / len(first)
    assert 0.18 < share < 0.22
    # pinned: a member's bucket must never change between releases (it would move them across variants)
    assert bucket("M000042") == pytest.approx(0.23277249309971978)


def test_ndcg_at_k() -> None:
    from recsvc.engine.tradeoff import ndcg_at_k

    assert ndcg_at_k(["a", "b", "c"], {"a", "b"}, 3) == pytest.approx(1.0)
    assert ndcg_at_k(["x", "a"], {"a"}, 2) == pytest.approx(1 / np.log2(3))
    assert ndcg_at_k(["x", "y"], {"a"}, 2) == 0.0


def test_diversity_tradeoff_on_planted_clusters(tmp_path: Path) -> None:
    from bundle_factory import make_bundle

    from recsvc.engine.recommender import RecommendationEngine
    from recsvc.engine.served_model import ServedModel
    from recsvc.engine.tradeoff import diversity_tradeoff
    from recsvc.models.resolve import ModelResolver
    from recsvc.models.served import ServedModels
    from recsvc.settings import load_settings

    planted = make_bundle(tmp_path / "b")
    settings = load_settings(overrides={"serving": {"model_uri": str(planted.path)}})
    models = ServedModels(settings, ModelResolver(settings))
    models.reload()
    model: ServedModel = models.default()[1]
    engine = RecommendationEngine(models, None, settings.serving)
    # held-out truth: the best not-yet-bought products of the member's own cluster
    holdout = {
        m: {f"P{planted.member_cluster[m]}-{j:03d}" for j in range(2, 12)} for m in planted.warm_members()
    }
    points = diversity_tradeoff(engine, model, holdout, diversities=(0.0, 0.3, 0.9), k=10)
    by_d = {p.diversity: p for p in points}
    assert by_d[0.0].ndcg > 0.6
    assert by_d[0.9].intra_list_diversity > by_d[0.0].intra_list_diversity
    assert by_d[0.9].ndcg < by_d[0.0].ndcg
    assert all(p.members == len(holdout) for p in points)


def test_history_decays_from_data_as_of_when_the_bundle_has_it(planted, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """A --no-refit bundle's history weights were decayed to the holdout start (``data_as_of``),
    not to the data's cutoff: serving must decay them on from there."""
    import json
    import shutil
    from datetime import datetime

    from recsvc.engine.served_model import ServedModel

    plain = ServedModel.load(planted.path, version="1", source_uri="t")
    copy = tmp_path / "b"
    shutil.copytree(planted.path, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["data_as_of"] = "2026-01-15T00:00:00+00:00"
    (copy / "manifest.json").write_text(json.dumps(manifest))
    dated = ServedModel.load(copy, version="1", source_uri="t")
    assert dated.cutoff_ts == datetime.fromisoformat("2026-01-15T00:00:00+00:00").timestamp()
    assert plain.cutoff_ts == datetime.fromisoformat(planted_cutoff(planted.path)).timestamp()


def planted_cutoff(path: Path) -> str:
    import json

    return str(json.loads((path / "manifest.json").read_text())["training_cutoff"])


def test_a_loaded_model_is_prepared_before_it_is_swapped_in(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """``set_prepare``'s callback sees each newly loaded model before any call can (the live
    catalog builds its view there); a failing callback is logged and the model serves anyway."""
    from bundle_factory import make_bundle

    from recsvc.models.resolve import ModelResolver
    from recsvc.models.served import ServedModels
    from recsvc.settings import load_settings

    planted = make_bundle(tmp_path / "b")
    settings = load_settings(overrides={"serving": {"model_uri": str(planted.path)}})
    models = ServedModels(settings, ModelResolver(settings))
    seen: list[tuple[object, bool]] = []
    models.set_prepare(lambda m: seen.append((m, m in models.snapshot().values())))
    models.reload()
    assert len(seen) == 1 and seen[0][1] is False  # prepared while not yet served
    assert models.default()[1] is seen[0][0]

    def broken(_m: object) -> None:
        raise RuntimeError("no view")

    again = ServedModels(settings, ModelResolver(settings))
    again.set_prepare(broken)
    again.reload()
    assert again.default()[1] is not None
    assert "model_prepare_failed" in caplog.text
