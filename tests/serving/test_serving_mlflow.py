"""Model sources in a real MLflow sqlite registry: ``models:/name@alias``, A/B variants by
alias, alias moves picked up by reload, and a bundle trained by the training pipeline."""

from __future__ import annotations

import contextlib
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from bundle_factory import PlantedBundle, make_bundle
from serving_harness import running_server
from settings_factory import build_settings

from recsvc.bundle import read_manifest
from recsvc.models.variants import bucket
from recsvc.settings import Settings, load_settings
from recsvc.v1 import recommender_pb2

pytestmark = [pytest.mark.integration, pytest.mark.slow]

MODEL = "recsvc-test"


def _settings(tmp: Path, redis_url: str, **serving: Any) -> Settings:
    return build_settings(
        tmp, redis_url=redis_url, model_uri=f"models:/{MODEL}@champion", mlflow_model=MODEL, serving=serving
    )


def _register(s: Settings, bundle: PlantedBundle, alias: str) -> str:
    import mlflow
    from mlflow import MlflowClient

    mlflow.set_tracking_uri(s.mlflow.tracking_uri)
    client = MlflowClient(tracking_uri=s.mlflow.tracking_uri, registry_uri=s.mlflow.tracking_uri)
    if client.get_experiment_by_name("serving-test") is None:
        client.create_experiment(
            "serving-test", artifact_location=Path(s.mlflow.artifact_location).resolve().as_uri()
        )
    exp = client.get_experiment_by_name("serving-test")
    assert exp is not None
    with mlflow.start_run(experiment_id=exp.experiment_id) as run:
        mlflow.log_artifacts(str(bundle.path), artifact_path="bundle")
    with contextlib.suppress(mlflow.exceptions.MlflowException):
        client.create_registered_model(MODEL)
    mv = client.create_model_version(MODEL, source=f"{run.info.artifact_uri}/bundle", run_id=run.info.run_id)
    client.set_registered_model_alias(MODEL, alias, mv.version)
    return str(mv.version)


def _move_alias(s: Settings, alias: str, version: str) -> None:
    from mlflow import MlflowClient

    MlflowClient(
        tracking_uri=s.mlflow.tracking_uri, registry_uri=s.mlflow.tracking_uri
    ).set_registered_model_alias(MODEL, alias, version)


def test_variants_by_alias_with_stable_bucketing(tmp_path: Path, redis_url: str) -> None:
    b1 = make_bundle(tmp_path / "b1", bundle_id="v1")
    b2 = make_bundle(tmp_path / "b2", bundle_id="v2", flip_clusters=True)
    variants = [
        {"name": "control", "alias": "champion", "share": 0.5},
        {"name": "treatment", "alias": "challenger", "share": 0.5},
    ]
    s = _settings(tmp_path, redis_url, variants=variants)
    v1 = _register(s, b1, "champion")
    v2 = _register(s, b2, "challenger")
    with running_server(s) as srv:
        members = b1.warm_members()
        seen: Counter[str] = Counter()
        for member in members:
            req = recommender_pb2.RecommendProductsRequest(member_id=member, k=3)
            first = srv.stub.RecommendProducts(req, timeout=10)
            again = srv.stub.RecommendProducts(req, timeout=10)
            expected = "control" if bucket(member) < 0.5 else "treatment"
            assert first.variant == again.variant == expected
            version = f"{MODEL}/v{v1}" if expected == "control" else f"{MODEL}/v{v2}"
            assert first.model_version == version
            truth = b1 if expected == "control" else b2
            assert all(b1.item_cluster[it.item_id] == truth.member_cluster[member] for it in first.items)
            seen[first.variant] += 1
        assert seen["control"] > 5 and seen["treatment"] > 5
        info = srv.stub.GetModelInfo(recommender_pb2.GetModelInfoRequest(), timeout=10)
        assert dict(info.variants) == {"control": f"{MODEL}/v{v1}", "treatment": f"{MODEL}/v{v2}"}
        get = srv.deps.metrics.registry.get_sample_value
        assert (
            get(
                "recsvc_rec_requests_total",
                {"method": "RecommendProducts", "source": "personalized", "variant": "control", "code": "OK"},
            )
            == 2 * seen["control"]
        )
        # promote the challenger: the control variant follows its alias on the next reload
        _move_alias(s, "champion", v2)
        reply = srv.stub.ReloadModel(recommender_pb2.ReloadModelRequest(), timeout=60)
        assert reply.changed
        info = srv.stub.GetModelInfo(recommender_pb2.GetModelInfoRequest(), timeout=10)
        assert info.variants["control"] == f"{MODEL}/v{v2}"
        # downloaded once per version into the cache, by a rename of a complete folder
        assert sorted(p.name for p in (tmp_path / "bundle-cache" / MODEL).iterdir()) == sorted([v1, v2])


def test_serves_a_bundle_trained_by_the_training_pipeline(tmp_path: Path, redis_url: str) -> None:
    pipeline = pytest.importorskip("training.pipeline")
    synthetic = pytest.importorskip("training.synthetic")
    s = _settings(tmp_path, redis_url)
    s = load_settings(
        overrides={
            **s.model_dump(mode="json", include={"mlflow", "serving", "redis"}),
            "training": {"factors": 16, "iterations": 5, "eval_members": 200},
        }
    )
    data = synthetic.make_dataset(members=300, products=100, content=20, events_per_member=20, seed=1)
    report = pipeline.run(s, pipeline.TrainOptions(data_dir=tmp_path), dataset=data)
    assert report.decision.promote
    with running_server(s) as srv:
        info = srv.stub.GetModelInfo(recommender_pb2.GetModelInfoRequest(), timeout=10)
        assert info.model_version == f"{MODEL}/v{report.model_version}"
        assert info.products == 100
        bundle = srv.deps.models.default()[1]
        member = next(
            m
            for m in bundle.members.ids(range(len(bundle.members)))
            if bundle.history(bundle.members.row(m) or 0)[0].size
        )
        resp = srv.stub.RecommendProducts(
            recommender_pb2.RecommendProductsRequest(member_id=member, k=10), timeout=10
        )
        assert len(resp.items) == 10 and {it.source for it in resp.items} == {"personalized"}
        assert all(it.reason.startswith("because you") for it in resp.items)
        item = resp.items[0].item_id
        similar = srv.stub.SimilarItems(recommender_pb2.SimilarItemsRequest(item_id=item, k=5), timeout=10)
        assert len(similar.items) == 5 and item not in {it.item_id for it in similar.items}


def test_a_new_store_under_the_same_cache_serves_its_own_version_1(tmp_path: Path, redis_url: str) -> None:
    """Version numbers restart in a new store (or a recreated registry database); the cache used
    to serve the old store's copy of v1 under the new v1's name."""
    from recsvc.models.resolve import ModelResolver

    cache = str(tmp_path / "shared-cache")
    old = _settings(tmp_path / "old", redis_url, bundle_cache_dir=cache)
    new = _settings(tmp_path / "new", redis_url, bundle_cache_dir=cache)
    assert _register(old, make_bundle(tmp_path / "b1", bundle_id="old-v1"), "champion") == "1"
    assert _register(new, make_bundle(tmp_path / "b2", bundle_id="new-v1", seed=3), "champion") == "1"
    uri = f"models:/{MODEL}@champion"
    first = ModelResolver(old).resolve(uri)
    assert read_manifest(first.path).bundle_id == "old-v1"
    second = ModelResolver(new).resolve(uri)
    assert second.version == f"{MODEL}/v1" and read_manifest(second.path).bundle_id == "new-v1"
    # and a server of the old store again gets its own copy back, not the new store's
    assert read_manifest(ModelResolver(old).resolve(uri).path).bundle_id == "old-v1"


def test_a_cached_copy_that_fails_to_load_is_downloaded_again(
    tmp_path: Path, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A corrupt bundle, once cached, used to fail every poll with BAD_BUNDLE even after its
    artifact was repaired, until someone deleted the cache folder by hand."""
    from urllib.parse import unquote, urlsplit

    from mlflow import MlflowClient

    import recsvc.models.resolve as resolve
    from recsvc.errors import BundleError
    from recsvc.models.resolve import ModelResolver
    from recsvc.models.served import ServedModels

    s = _settings(tmp_path, redis_url)
    good = make_bundle(tmp_path / "good", bundle_id="fixed")
    broken = make_bundle(tmp_path / "broken", bundle_id="fixed")
    factors = broken.path / "member_factors.npy"
    factors.write_bytes(factors.read_bytes()[:200])  # truncated: refused with BAD_BUNDLE
    version = _register(s, broken, "champion")
    models = ServedModels(s, ModelResolver(s))
    with pytest.raises(BundleError):
        models.reload()
    # The artifact is repaired in the store.
    mv = MlflowClient(tracking_uri=s.mlflow.tracking_uri).get_model_version(MODEL, version)
    stored = Path(unquote(urlsplit(mv.source).path))
    (stored / "member_factors.npy").write_bytes((good.path / "member_factors.npy").read_bytes())
    # A poll right after a download does not download again (a broken artifact would be fetched
    # on every poll of every worker) ...
    with pytest.raises(BundleError):
        models.reload(poll=True)
    # ... ReloadModel does, at once.
    assert models.reload() == [("default", f"{MODEL}/v{version}", True)]
    # A copy damaged on disk: a poll downloads it again (at most every REFETCH_INTERVAL_S).
    cached = next((tmp_path / "bundle-cache" / MODEL / version).rglob("member_factors.npy"))
    cached.write_bytes(cached.read_bytes()[:200])
    resolver = ModelResolver(s)  # a restarted worker's: it has downloaded nothing yet
    assert ServedModels(s, resolver).reload(poll=True)[0][2]
    cached.write_bytes(cached.read_bytes()[:200])
    monkeypatch.setattr(resolve, "REFETCH_INTERVAL_S", 0.0)
    # (the same process downloaded it moments ago: only once the interval has passed)
    assert ServedModels(s, resolver).reload(poll=True)[0][2]
