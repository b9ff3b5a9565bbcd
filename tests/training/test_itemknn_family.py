"""The model families (ALS, item-item, blend): training chooses one and records it in the bundle,
serving ranks with the scoring training evaluated, bad settings and manifests get named errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import scipy.sparse as sp

from recsvc.bundle import KIND_PRODUCT, NEIGHBOUR_ARRAYS, FamilySpec, load_bundle
from recsvc.engine import itemknn_source
from recsvc.errors import BundleError, ConfigError
from recsvc.settings import Settings, TrainingSettings, load_settings
from training import gate, itemknn, pipeline
from training.synthetic import SyntheticDataset, make_dataset

pytestmark = pytest.mark.integration


def _settings(tmp: Path, **training: Any) -> Settings:
    return load_settings(
        overrides={
            "mlflow": {
                "tracking_uri": f"sqlite:///{tmp}/mlflow.db",
                "artifact_location": str(tmp / "artifacts"),
            },
            "training": {"factors": 16, "iterations": 8, "eval_members": 500, **training},
        }
    )


@pytest.fixture(scope="module")
def data() -> SyntheticDataset:
    return make_dataset(members=400, products=120, content=30, events_per_member=30, seed=0)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("families")


@pytest.fixture(scope="module")
def blend_run(store: Path, data: SyntheticDataset) -> pipeline.TrainingReport:
    """A bundle forced to serve the blend, with a weight that gives both parts a say."""
    return pipeline.run(
        _settings(store, family="blend", blend_als_weight=0.5, trend="off"),
        pipeline.TrainOptions(data_dir=store, bundle_out=store / "blend", register=False),
        dataset=data,
    )


def test_auto_picks_a_measured_family_and_the_bundle_records_it(store: Path, data: SyntheticDataset) -> None:
    from mlflow.tracking import MlflowClient

    s = _settings(store, itemknn="on")
    report = pipeline.run(
        s, pipeline.TrainOptions(data_dir=store, bundle_out=store / "auto", register=False), dataset=data
    )
    assert report.family is not None
    chosen = report.family.family
    m = report.metrics
    assert set(report.family.scores) == {"als", "itemknn", "blend"}
    # the rule: a more complex family only with more than the margin over the simpler choice
    expected = gate.choose_family(m, "auto", s.training.family_margin).family
    assert chosen == expected
    assert report.decision.candidate == pytest.approx(m[gate.family_metric(chosen)])
    manifest = load_bundle(store / "auto").manifest
    assert manifest.family.family == chosen
    assert report.run_id is not None
    run = MlflowClient(tracking_uri=s.mlflow.tracking_uri).get_run(report.run_id)
    assert run.data.tags["family"] == chosen
    for prefix in ("", "baseline.", "itemknn.", "blend."):  # every candidate beside popularity
        assert f"{prefix}all.ndcg_at_10" in run.data.metrics


def test_choose_family_prefers_the_simpler_model_within_the_margin() -> None:
    m = {"all.ndcg_at_10": 0.100, "itemknn.all.ndcg_at_10": 0.101, "blend.all.ndcg_at_10": 0.1015}
    assert gate.choose_family(m, "auto", 0.02).family == "als"
    assert gate.choose_family(m, "auto", 0.0).family == "blend"
    m["blend.all.ndcg_at_10"] = 0.1025
    assert gate.choose_family(m, "auto", 0.02).family == "blend"  # 2.5% over ALS
    assert gate.choose_family({"all.ndcg_at_10": 0.1}, "auto", 0.0).family == "als"
    with pytest.raises(ConfigError) as err:
        gate.choose_family({"all.ndcg_at_10": 0.1}, "itemknn", 0.0)
    assert err.value.reason == "FAMILY_NOT_MEASURED"


def test_blend_bundle_holds_the_neighbours_and_weight(
    blend_run: pipeline.TrainingReport, store: Path
) -> None:
    bundle = load_bundle(store / "blend")
    spec = bundle.manifest.family
    assert (spec.family, spec.als_weight) == ("blend", 0.5)
    assert spec.history_items == TrainingSettings().itemknn_history  # the cut it was measured with
    items, scores = bundle.arrays["item_neighbour_item"], bundle.arrays["item_neighbour_score"]
    assert items.dtype == np.int32 and scores.dtype == np.float32
    assert items.shape == scores.shape == (len(bundle.items), spec.neighbours)
    assert isinstance(items.base, np.memmap) and not items.flags.writeable  # shared pages
    assert (np.diff(scores, axis=1) <= 0).all()  # best first
    # the stored lists were computed with the family's scoring (the engine's trained_list)
    assert bundle.manifest.member_lists is not None


def test_serving_scores_are_training_scores() -> None:
    """The neighbour table gives back the fitted similarity, and one member's serving scores
    (the sparse gather over the history's neighbours) are the rows training evaluates, bit for
    bit, with the reason of each item the history row of its largest weight x similarity."""
    rng = np.random.default_rng(0)
    history = sp.random(300, 100, density=0.08, format="csr", random_state=1, dtype=np.float32)
    history.data = (1 + 3 * history.data).astype(np.float32)
    model = itemknn.fit(history, neighbours=15, num_threads=1)
    items, scores = itemknn.table(model)
    sim = itemknn_source.similarity_matrix(items, scores, 100)
    fitted = sp.csr_matrix(model.similarity, dtype=np.float32)
    fitted.eliminate_zeros()
    assert (abs(sim - fitted)).max() == 0
    kinds = np.where(np.arange(100) < 80, KIND_PRODUCT, KIND_PRODUCT + 1).astype(np.uint8)
    factors = rng.normal(size=(100, 8)).astype(np.float32)
    nb = itemknn_source.Neighbours(
        items,
        scores,
        FamilySpec(family="itemknn", neighbours=15),
        kinds,
        itemknn_source.kind_norm_max(factors, kinds),
    )
    batch = itemknn_source.knn_scores_batch(history[:50], sim)
    dense_sim = sim.toarray()
    for m in rng.choice(50, 10, replace=False):
        row = history[m]
        vector = rng.normal(size=8).astype(np.float32)
        hist = row.indices.astype(np.int64)
        got, knn, als, knn_max, als_max = itemknn_source.gather(
            nb, factors, vector, hist, row.data, KIND_PRODUCT
        )
        because = itemknn_source.reason_rows(nb, hist, row.data, got)
        products = np.flatnonzero((batch[m] > 0) & (kinds == KIND_PRODUCT))
        assert sorted(got.tolist()) == products.tolist()  # every non-zero score of the kind, once
        assert np.array_equal(knn, batch[m][got])
        contrib = dense_sim[row.indices][:, got] * row.data[:, None]
        assert because.tolist() == row.indices[contrib.argmax(axis=0)].tolist()
        np.testing.assert_allclose(als, factors[got] @ vector, rtol=1e-5, atol=1e-5)
        assert (knn_max, als_max) == (knn.max(), max(als.max(), 0))


def test_als_scale_is_the_largest_score_or_the_bound() -> None:
    assert itemknn_source.als_scale(np.float32(2.5), 3.0, 4.0) == np.float32(2.5)
    # no positive score: |u| max|v|, so the ALS part stays within [-1, 1]
    assert itemknn_source.als_scale(np.float32(-1.0), 3.0, 4.0) == np.float32(12.0)
    many = itemknn_source.als_scale(np.array([2.5, 0.0]), np.array([1.0, 3.0]), 4.0)
    assert many.tolist() == [2.5, 12.0]
    blended = itemknn_source.blend(np.array([[2.0, -1.0]]), np.array([[0.0, 4.0]]), 0.5, np.array([2.0]))
    assert blended.tolist() == [[0.5, -0.25 + 0.5]]


@pytest.fixture
def served_blend(blend_run: pipeline.TrainingReport, store: Path, redis_url: str, tmp_path: Path) -> Any:
    from serving_harness import running_server, serving_settings

    # no per-category cap and no restock insertions: the list is the ranking alone
    settings = serving_settings(
        str(store / "blend"), redis_url, tmp_path, max_per_category=0, replenish=False
    )
    with running_server(settings) as s:
        yield s


def test_blend_served_over_grpc_ranks_like_training(served_blend: Any, store: Path) -> None:
    from recsvc.v1 import common_pb2, recommender_pb2

    bundle = load_bundle(store / "blend")
    spec = bundle.manifest.family
    info = served_blend.stub.GetModelInfo(recommender_pb2.GetModelInfoRequest()).family
    assert (info.family, info.neighbours, info.als_weight) == ("blend", spec.neighbours, 0.5)
    products = np.flatnonzero(bundle.arrays["item_kind"] == KIND_PRODUCT)
    history = bundle.history
    sim = itemknn_source.similarity_matrix(
        bundle.arrays["item_neighbour_item"], bundle.arrays["item_neighbour_score"], len(bundle.items)
    )
    member_rows = [r for r in range(len(bundle.members)) if history[r].nnz >= 5][:8]
    k = 10
    checked = 0
    for row in member_rows:
        scorer = itemknn._Scorer(
            np.asarray(bundle.arrays["member_factors"][[row]]),
            np.asarray(bundle.arrays["item_factors"][products]),
            sp.csr_matrix(history[[row]]),
            sp.csr_matrix(sim[:, products]),
            1.0 - spec.knn_weight,
        )
        # the default filters leave out every item the member interacted with, as training does
        ids, scores = scorer.recommend(np.array([0]), sp.csr_matrix(history[[row]][:, products]), N=k)
        expected = [bundle.items.ids([int(products[i])])[0] for i in ids[0] if i >= 0]
        member = bundle.members.ids([row])[0]
        resp = served_blend.stub.RecommendProducts(
            recommender_pb2.RecommendProductsRequest(
                member_id=member,
                k=k,
                filters=common_pb2.RecommendationFilters(diversity=0.0, in_stock_only=False),
            )
        )
        got = [it.item_id for it in resp.items]
        assert got == expected, (member, got, expected)
        assert [it.score for it in resp.items] == pytest.approx(scores[0][: len(got)].tolist(), abs=1e-5)
        assert any(it.reason.startswith("because you") for it in resp.items)
        checked += 1
    assert checked >= 5


def test_bad_family_settings_are_named_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"training\.family"):
        _settings(tmp_path, family="knn")
    with pytest.raises(ConfigError, match="blend_als_weight"):
        _settings(tmp_path, blend_als_weight=1.5)
    with pytest.raises(ConfigError, match="itemknn must not be 'off'"):
        _settings(tmp_path, family="itemknn", itemknn="off")


def _rewrite_manifest(path: Path, change: Any) -> None:
    raw = json.loads((path / "manifest.json").read_text())
    change(raw)
    (path / "manifest.json").write_text(json.dumps(raw))


def test_old_bundle_without_family_loads_as_als(planted: Any, tmp_path: Path) -> None:
    old = tmp_path / "old"
    shutil.copytree(planted.path, old)
    _rewrite_manifest(old, lambda raw: raw.pop("family", None))
    assert load_bundle(old).manifest.family.family == "als"


def test_bad_family_manifests_are_refused(
    blend_run: pipeline.TrainingReport, store: Path, tmp_path: Path
) -> None:
    bad = tmp_path / "weight"
    shutil.copytree(store / "blend", bad)
    _rewrite_manifest(bad, lambda raw: raw["family"].update(als_weight=1.5))
    with pytest.raises(BundleError, match="als_weight"):
        load_bundle(bad)
    missing = tmp_path / "missing"
    shutil.copytree(store / "blend", missing)
    (missing / f"{next(iter(NEIGHBOUR_ARRAYS))}.npy").unlink()
    with pytest.raises(BundleError, match=r"item_neighbour_item\.npy is missing"):
        load_bundle(missing)
    unknown = tmp_path / "unknown"
    shutil.copytree(store / "blend", unknown)
    _rewrite_manifest(unknown, lambda raw: raw["family"].update(family="deep"))
    with pytest.raises(BundleError, match="family"):
        load_bundle(unknown)


def test_blend_recent_events_move_the_list_and_its_reasons(served_blend: Any, store: Path) -> None:
    """Recent events join the trained history of the item-item part: neighbours of an item the
    member just put in the cart enter the list, explained by that item."""
    from recsvc.v1 import common_pb2, recommender_pb2

    bundle = load_bundle(store / "blend")
    row = next(r for r in range(len(bundle.members)) if bundle.history[r].nnz >= 5)
    member = bundle.members.ids([row])[0]
    known = set(bundle.history[row].indices.tolist())
    products = np.flatnonzero(bundle.arrays["item_kind"] == KIND_PRODUCT)
    fresh = [int(p) for p in products if int(p) not in known]
    # the unseen product with the most neighbours the member has not seen either
    nbrs = bundle.arrays["item_neighbour_item"]
    item = max(fresh, key=lambda p: len(set(nbrs[p][nbrs[p] >= 0].tolist()) - known))
    item_id = bundle.items.ids([item])[0]
    request = recommender_pb2.RecommendProductsRequest(
        member_id=member, k=10, filters=common_pb2.RecommendationFilters(diversity=0.0, in_stock_only=False)
    )
    before = served_blend.stub.RecommendProducts(request)
    for _ in range(5):
        served_blend.stub.RecordEvent(
            recommender_pb2.RecordEventRequest(member_id=member, item_id=item_id, event_type="add_to_cart")
        )
    after = served_blend.stub.RecommendProducts(request)
    assert after.realtime and all(it.source == "realtime" for it in after.items)
    assert [it.item_id for it in after.items] != [it.item_id for it in before.items]
    title = bundle.item_titles[item]
    assert any(it.reason == f"because you viewed {title}" for it in after.items)


def test_a_blend_champion_from_other_data_is_remeasured_as_a_blend(store: Path, tmp_path: Path) -> None:
    """A registered blend champion, then new data: the gate refits the champion's ALS
    parameters, its neighbours and its blend weight on this holdout (``itemknn.remeasure``) and
    compares that blend's NDCG@10, which equals the candidate's own blend (same settings, same
    data), not the ALS score."""
    from mlflow.tracking import MlflowClient

    s = _settings(store, family="blend", blend_als_weight=0.5)
    s = s.model_copy(update={"mlflow": s.mlflow.model_copy(update={"model_name": "recsvc-blend-refit"})})
    old = make_dataset(members=300, products=100, content=20, events_per_member=20, seed=1)
    new = make_dataset(members=300, products=100, content=20, events_per_member=20, seed=2)
    first = pipeline.run(s, pipeline.TrainOptions(data_dir=tmp_path, refit=False), dataset=old)
    assert first.decision.promote and first.family is not None and first.family.family == "blend"
    client = MlflowClient(tracking_uri=s.mlflow.tracking_uri, registry_uri=s.mlflow.tracking_uri)
    champion = client.get_model_version_by_alias("recsvc-blend-refit", "champion")
    assert str(champion.version) == first.model_version
    report = pipeline.run(s, pipeline.TrainOptions(data_dir=tmp_path, refit=False), dataset=new)
    assert report.decision.method == "champion_refit"
    m = report.metrics
    assert report.decision.champion == pytest.approx(m["blend.all.ndcg_at_10"], abs=1e-6)
    assert report.decision.candidate == pytest.approx(m["blend.all.ndcg_at_10"], abs=1e-6)
    assert abs(m["blend.all.ndcg_at_10"] - m["all.ndcg_at_10"]) > 1e-6  # the blend, not ALS


def test_reason_rows_is_the_largest_contribution_also_where_rows_share_filter_bits() -> None:
    """Over 12,288 items (three rows per 4,096-bit filter slot, so entries of other items pass
    the filter), each pick's reason is the history row of largest ``weight * similarity``, the
    first on a tie, -1 where no history row has the pick as a neighbour."""
    rng = np.random.default_rng(5)
    n_items, width = 12_288, 30
    items = rng.integers(0, n_items, size=(n_items, width)).astype(np.int32)
    items[:, -5:] = -1  # padding after each row's neighbours
    scores = rng.choice([0.25, 0.5, 1.0], size=(n_items, width)).astype(np.float32)  # ties
    kinds = np.full(n_items, KIND_PRODUCT, np.uint8)
    nb = itemknn_source.Neighbours(
        items, scores, FamilySpec(family="itemknn", neighbours=width), kinds, {KIND_PRODUCT: 1.0}
    )
    for _ in range(20):
        hist = rng.choice(n_items, 40, replace=False).astype(np.int64)
        weights = rng.choice([1.0, 2.0], size=40).astype(np.float32)
        reached = np.unique(items[hist][items[hist] >= 0])
        slot = reached[0] & 4095
        picks = np.concatenate(
            [rng.choice(reached, 15, replace=False), [slot + 4096 * i for i in range(3)], [n_items + 1]]
        ).astype(np.int64)
        expect = []
        for j in picks:
            best, source = 0.0, -1
            for r, w in zip(hist, weights, strict=True):
                for c in range(width):
                    if items[r, c] == j and float(w) * float(scores[r, c]) > best:
                        best, source = float(w) * float(scores[r, c]), int(r)
            expect.append(source)
        assert itemknn_source.reason_rows(nb, hist, weights, picks).tolist() == expect
