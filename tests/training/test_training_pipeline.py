"""The whole pipeline against a real MLflow sqlite tracking + registry store in a tmp folder:
the serving contract, the gate both ways, --force, re-measuring a champion on new data, --tune."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from settings_factory import build_settings

from recsvc.bundle import load_bundle
from recsvc.errors import BundleError, DataContractError
from recsvc.settings import Settings, load_settings
from training import pipeline
from training.synthetic import SyntheticDataset, make_dataset

pytestmark = pytest.mark.integration


def _settings(tmp: Path, model: str = "recsvc", **training: Any) -> Settings:
    # one sqlite store per module (creating one costs seconds); tests that need a registry
    # without a champion use their own model name in it
    # the gate tests here are about ALS; item-item wins on this data (test_itemknn_family.py)
    return build_settings(
        tmp,
        mlflow_model=model,
        training={"factors": 16, "iterations": 8, "eval_members": 500, "family": "als", **training},
    )


def _client(s: Settings) -> Any:
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=s.mlflow.tracking_uri, registry_uri=s.mlflow.tracking_uri)


@pytest.fixture(scope="module")
def data() -> SyntheticDataset:
    return make_dataset(members=400, products=120, content=30, events_per_member=30, seed=0)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("mlflow")


@pytest.fixture(scope="module")
def first(store: Path, data: SyntheticDataset) -> pipeline.TrainingReport:
    return pipeline.run(
        _settings(store),
        pipeline.TrainOptions(data_dir=store, bundle_out=store / "bundle1"),
        dataset=data,
    )


def test_first_model_is_promoted_and_loads_through_the_serving_contract(
    first: pipeline.TrainingReport, store: Path, tmp_path: Path
) -> None:
    import mlflow

    s = _settings(store)
    assert first.decision.promote and first.decision.method == "first_model"
    assert first.metrics["product.ndcg_at_10"] > first.metrics["baseline.product.ndcg_at_10"]
    assert first.metrics["content.ndcg_at_10"] > first.metrics["baseline.content.ndcg_at_10"]
    # exactly what the server does
    mv = _client(s).get_model_version_by_alias(s.mlflow.model_name, "champion")
    local = mlflow.artifacts.download_artifacts(artifact_uri=mv.source, dst_path=str(tmp_path))
    bundle = load_bundle(Path(local))
    assert (Path(local) / "manifest.json").is_file()
    assert bundle.manifest.bundle_id == first.bundle_id == mv.tags["bundle_id"]
    assert first.bundle_id in mv.description
    assert bundle.manifest.metrics["all.ndcg_at_10"] == pytest.approx(first.metrics["all.ndcg_at_10"])
    assert bundle.manifest.counts["quarantined_rows"] == 0
    assert set(bundle.indexes) == {"product", "content"}
    assert bundle.manifest.index["product"]["recall_at_k"] >= 0.95
    run = _client(s).get_run(first.run_id)
    assert run.data.params["data_fingerprint"] == bundle.manifest.data_fingerprint
    t = s.training  # the refit started from the candidate's factors
    assert run.data.params["refit_warm_iterations"] == str(min(t.refit_warm_iterations, t.iterations))
    assert "count.quarantined_rows" in run.data.metrics and "train_loss" in run.data.metrics
    assert (store / "bundle1" / "manifest.json").is_file()


def test_no_member_id_leaves_the_bundle(
    first: pipeline.TrainingReport, store: Path, data: SyntheticDataset
) -> None:
    import mlflow

    s = _settings(store)
    root = Path(mlflow.artifacts.download_artifacts(run_id=first.run_id, tracking_uri=s.mlflow.tracking_uri))
    files = [p for p in root.rglob("*") if p.is_file() and "bundle" not in p.relative_to(root).parts]
    names = {p.relative_to(root).as_posix() for p in files}
    assert {"plots/long_tail_popularity.png", "plots/metrics_vs_baseline.png", "gate.json"} <= names
    assert "plots/loss_per_iteration.png" in names
    member_ids = set(data.members["member_id"])
    for p in files:
        text = p.read_bytes().decode("latin-1")
        assert not any(m in text for m in list(member_ids)[:50]), p
    run = _client(s).get_run(first.run_id)
    logged = json.dumps([run.data.params, run.data.tags, list(run.data.metrics)])
    assert not any(m in logged for m in member_ids)


def test_worse_config_is_refused_then_force_promotes(
    first: pipeline.TrainingReport, store: Path, data: SyntheticDataset
) -> None:
    worse = _settings(store, factors=2, regularization=500.0, iterations=2)
    refused = pipeline.run(worse, pipeline.TrainOptions(data_dir=store), dataset=data)
    assert not refused.decision.promote
    assert refused.decision.method == "same_holdout_logged"
    assert refused.decision.champion == pytest.approx(first.metrics["all.ndcg_at_10"])
    client = _client(worse)
    champion = client.get_model_version_by_alias(worse.mlflow.model_name, "champion")
    assert str(champion.version) == first.model_version
    assert (
        client.get_model_version(worse.mlflow.model_name, refused.model_version).tags["gate.promote"]
        == "false"
    )
    run = client.get_run(refused.run_id)
    assert run.data.metrics["gate.promoted"] == 0.0
    assert "refused" in run.data.tags["gate.decision"]

    forced = pipeline.run(worse, pipeline.TrainOptions(data_dir=store, force=True), dataset=data)
    assert forced.decision.promote and forced.decision.forced and "FORCED" in forced.decision.reason
    champion = client.get_model_version_by_alias(worse.mlflow.model_name, "champion")
    assert str(champion.version) == forced.model_version
    assert champion.tags["gate.forced"] == "true"


def test_champion_from_other_data_is_refit_on_this_holdout(store: Path, tmp_path: Path) -> None:
    s = _settings(store, model="recsvc-refit")
    old = make_dataset(members=300, products=100, content=20, events_per_member=20, seed=1)
    new = make_dataset(members=300, products=100, content=20, events_per_member=20, seed=2)
    pipeline.run(s, pipeline.TrainOptions(data_dir=tmp_path, refit=False), dataset=old)
    report = pipeline.run(s, pipeline.TrainOptions(data_dir=tmp_path, refit=False), dataset=new)
    assert report.decision.method == "champion_refit"
    assert report.decision.champion is not None
    # same params, same data now: the re-measured champion scores what the candidate scores
    assert report.decision.champion == pytest.approx(report.decision.candidate, abs=1e-6)
    assert report.decision.promote


def test_no_register_logs_but_does_not_register(store: Path, tmp_path: Path) -> None:
    s = _settings(store, model="recsvc-unregistered", gate_min_test_members=1000)
    data = make_dataset(members=200, products=60, content=10, events_per_member=15, seed=4)
    report = pipeline.run(s, pipeline.TrainOptions(data_dir=tmp_path, register=False), dataset=data)
    assert report.model_version is None and report.run_id
    from mlflow.exceptions import MlflowException

    with pytest.raises(MlflowException):
        _client(s).get_model_version_by_alias(s.mlflow.model_name, "champion")
    # a gate judged on fewer test members than training.gate_min_test_members says so
    tested = int(report.metrics["all.members"])
    assert tested < s.training.gate_min_test_members
    assert f"caution: judged on {tested} test members only" in report.decision.reason


def test_holdout_without_interactions_is_a_clear_error(tmp_path: Path) -> None:
    data = make_dataset(members=50, products=20, content=5, events_per_member=5, days=10, seed=1)
    s = _settings(tmp_path, holdout_days=30)
    with pytest.raises(DataContractError, match="holdout"):
        pipeline.run(s, pipeline.TrainOptions(data_dir=tmp_path), dataset=data)


def test_non_empty_bundle_out_fails_before_training(tmp_path: Path, data: SyntheticDataset) -> None:
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "file").write_text("x")
    with pytest.raises(BundleError, match="not empty"):
        pipeline.run(
            _settings(tmp_path),
            pipeline.TrainOptions(data_dir=tmp_path, bundle_out=tmp_path / "out"),
            dataset=data,
        )


def test_tune_logs_nested_trials_and_reports_the_chosen_config(store: Path, data: SyntheticDataset) -> None:
    s = _settings(store, model="recsvc-tune", validation_days=14)
    report = pipeline.run(s, pipeline.TrainOptions(data_dir=store, tune=True, trials=3), dataset=data)
    assert len(report.trials) == 3
    # trial 0 is the untuned configuration itself
    assert report.trials[0]["factors"] == 16 and report.trials[0]["weight_sharpness"] == 1.0
    best = max(report.trials, key=lambda r: r["val_ndcg_at_10"])
    client = _client(s)
    # the best trial, unless its lead over trial 0 was within the validation's noise
    kept = client.get_run(report.run_id).data.metrics["tune.kept_start"]
    assert report.params.factors == (report.trials[0] if kept else best)["factors"]
    children = client.search_runs(
        [client.get_run(report.run_id).info.experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{report.run_id}'",
    )
    assert len(children) == 3
    assert all("val.all.ndcg_at_10" in c.data.metrics for c in children)
    # the holdout metrics reported are those of the chosen config only (one set, on the parent run)
    parent = client.get_run(report.run_id)
    assert parent.data.metrics["all.ndcg_at_10"] == pytest.approx(report.metrics["all.ndcg_at_10"])
    assert not any(k.startswith("all.") for c in children for k in c.data.metrics)


@pytest.mark.parametrize("refit", [True, False])
def test_a_bundle_only_knows_purchases_its_model_was_trained_on(
    store: Path, data: SyntheticDataset, refit: bool
) -> None:
    out = store / f"bundle-refit-{refit}"
    s = _settings(store, model=f"recsvc-purchases-{refit}")
    pipeline.run(s, pipeline.TrainOptions(data_dir=store, bundle_out=out, refit=refit), dataset=data)
    b = load_bundle(out)
    bought, history = b.purchased.tocoo(), b.history.tocsr()
    assert bought.nnz > 0
    # every (member, item) the bundle says was bought is in the history the model was fitted on;
    # a --no-refit bundle used to include the holdout's purchases here
    assert all(history[m, i] > 0 for m, i in zip(bought.row, bought.col, strict=True))


def test_champion_of_another_schema_is_only_replaced_with_force(store: Path, data: SyntheticDataset) -> None:
    from urllib.parse import urlparse

    s = _settings(store, model="recsvc-schema")
    first = pipeline.run(s, pipeline.TrainOptions(data_dir=store, refit=False), dataset=data)
    mv = _client(s).get_model_version_by_alias(s.mlflow.model_name, "champion")
    manifest_path = Path(urlparse(mv.source).path) / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["schema_version"] = 999
    manifest_path.write_text(json.dumps(manifest))

    refused = pipeline.run(s, pipeline.TrainOptions(data_dir=store, refit=False), dataset=data)
    assert not refused.decision.promote and refused.decision.method == "champion_uncomparable"
    assert "--force" in refused.decision.reason
    assert str(_client(s).get_model_version_by_alias(s.mlflow.model_name, "champion").version) == (
        first.model_version
    )
    forced = pipeline.run(s, pipeline.TrainOptions(data_dir=store, refit=False, force=True), dataset=data)
    assert forced.decision.promote and forced.decision.forced
    assert str(_client(s).get_model_version_by_alias(s.mlflow.model_name, "champion").version) == (
        forced.model_version
    )


def test_promotion_is_written_to_the_audit_trail(tmp_path: Path, data: SyntheticDataset) -> None:
    from recsvc.security.audit import verify

    audit = tmp_path / "audit" / "audit.log"
    s = load_settings(
        overrides={
            "mlflow": {
                "tracking_uri": f"sqlite:///{tmp_path}/mlflow.db",
                "artifact_location": str(tmp_path / "artifacts"),
            },
            "training": {"factors": 8, "iterations": 4, "eval_members": 200},
            "security": {"audit_log": str(audit)},
        }
    )
    report = pipeline.run(s, pipeline.TrainOptions(data_dir=tmp_path), dataset=data)
    assert report.decision.promote
    entries = [json.loads(line) for line in audit.read_text().splitlines()]
    assert [e["event"] for e in entries] == ["model_promotion"]
    assert entries[0]["version"] == report.model_version and entries[0]["alias"] == "champion"
    assert verify(audit).ok


LATE_PRODUCT = "p90000"


def _with_a_holdout_only_best_seller(data: SyntheticDataset, holdout_days: int) -> SyntheticDataset:
    """``data`` plus one product that 150 members buy, all inside the holdout window (the last
    ``holdout_days``) and before the last event (the cutoff stays put)."""
    import numpy as np
    import pandas as pd

    end = data.events["ts"].max()
    buyers = data.events["member_id"].drop_duplicates().to_numpy()[:150]
    offsets = np.linspace(holdout_days - 1, 0.5, len(buyers))
    late = pd.DataFrame(
        {
            "member_id": buyers,
            "item_id": LATE_PRODUCT,
            "event_type": "purchase",
            "ts": [end - pd.Timedelta(days=float(d)) for d in offsets],
            "channel": "app",
            "quantity": 1,
            "amount": 50.0,
        }
    )
    late_item = data.catalog[data.catalog["kind"] == "product"].iloc[[0]].assign(item_id=LATE_PRODUCT)
    return SyntheticDataset(
        events=pd.concat([data.events, late], ignore_index=True).sort_values("ts", ignore_index=True),
        catalog=pd.concat([data.catalog, late_item], ignore_index=True),
        members=data.members,
        counts=dict(data.counts),
    )


@pytest.mark.parametrize("refit", [True, False])
def test_no_refit_segments_and_popular_lists_do_not_know_the_holdout(
    store: Path, data: SyntheticDataset, refit: bool
) -> None:
    import numpy as np
    import pandas as pd

    s = _settings(store, model=f"recsvc-tables-{refit}")
    late = _with_a_holdout_only_best_seller(data, s.training.holdout_days)
    out = store / f"bundle-tables-refit-{refit}"
    pipeline.run(s, pipeline.TrainOptions(data_dir=store, bundle_out=out, refit=refit), dataset=late)
    b = load_bundle(out)
    manifest = b.manifest.model_dump()
    as_of = pd.Timestamp(manifest["data_as_of"])
    if refit:
        assert as_of == late.events["ts"].max().floor("s")
        # a bundle that saw everything lists the holdout's best seller for cold start
        assert LATE_PRODUCT in set(b.popular.item_id)
    else:
        assert as_of == pd.Timestamp(manifest["holdout"]["start"])
        # no popular list of a --no-refit bundle may know an item only the holdout has events for
        assert LATE_PRODUCT not in set(b.popular.item_id)
    # segments are those of the members as of data_as_of: purchases up to then only
    ev = late.events.assign(ts=late.events["ts"].dt.floor("s"))
    known = ev[(ev["ts"] <= as_of) if refit else (ev["ts"] < as_of)]
    bought = known[known["event_type"] == "purchase"].groupby("member_id")["ts"].agg(["size", "max"])
    seg = b.segments.set_index("member_id").loc[bought.index]
    assert (seg["frequency"].to_numpy() == bought["size"].to_numpy()).all()
    recency = (as_of - bought["max"]).dt.total_seconds().to_numpy() / 86400.0
    np.testing.assert_allclose(seg["recency_days"].to_numpy(), recency, atol=1e-3)


def test_manifest_records_when_its_catalog_was_read(
    first: pipeline.TrainingReport, store: Path, tmp_path: Path
) -> None:
    """``catalog_as_of`` is what a bundle swap retires live catalog changes by: a dataset handed
    over in memory was read before the run; a catalog file cannot know changes made after it was
    written (its modification time), nor after training read it."""
    import os
    from datetime import UTC, datetime, timedelta

    from training.assemble import catalog_as_of

    manifest = load_bundle(store / "bundle1").manifest.model_dump()
    as_of = datetime.fromisoformat(manifest["catalog_as_of"])
    # read before the bundle was made (created_at has second precision)
    assert as_of < datetime.fromisoformat(manifest["created_at"]) + timedelta(seconds=1)
    assert as_of.tzinfo is not None and as_of <= datetime.now(UTC)
    read_at = datetime(2026, 3, 1, 12, 0, 0, 250_000, tzinfo=UTC)
    assert catalog_as_of(None, read_at) == "2026-03-01T12:00:00.250+00:00"
    (tmp_path / "catalog.csv").write_text("item_id\n")
    exported = datetime(2026, 3, 1, 11, 0, 0, 500_000, tzinfo=UTC).timestamp()
    os.utime(tmp_path / "catalog.csv", (exported, exported))
    assert catalog_as_of(tmp_path, read_at) == "2026-03-01T11:00:00.500+00:00"
    # A file touched after training read it (a copy in flight) never moves the time forward.
    assert catalog_as_of(tmp_path, datetime(2026, 3, 1, 10, tzinfo=UTC)) == "2026-03-01T10:00:00.000+00:00"


def test_a_catalog_of_content_only_trains_and_serves(tmp_path: Path) -> None:
    # Replenishment's evaluation once ranked zero product columns and stopped with an IndexError.
    s = build_settings(tmp_path, mlflow=True, training={"factors": 8, "iterations": 4, "eval_members": 200})
    full = make_dataset(members=300, products=60, content=40, events_per_member=30, seed=4)
    content = full.catalog[full.catalog["kind"] == "content"].assign(featured_item_ids="")
    events = full.events[full.events["item_id"].isin(content["item_id"])]
    data = SyntheticDataset(events=events, catalog=content, members=full.members)
    pipeline.run(
        s, pipeline.TrainOptions(data_dir=tmp_path, bundle_out=tmp_path / "b", register=False), dataset=data
    )
    bundle = load_bundle(tmp_path / "b")
    assert len(bundle.items) == 40 and not (bundle.arrays["item_kind"] == 0).any()


def test_a_holdout_without_returning_members_says_so(tmp_path: Path) -> None:
    # one event per member over months: the period is long enough, the members never return
    full = make_dataset(members=300, products=60, content=10, events_per_member=20, days=120, seed=3)
    once = full.events.drop_duplicates("member_id").reset_index(drop=True)
    data = SyntheticDataset(events=once, catalog=full.catalog, members=full.members)
    s = build_settings(tmp_path, mlflow=True, training={"factors": 8, "iterations": 4})
    with pytest.raises(DataContractError, match="was active before it") as err:
        pipeline.run(s, pipeline.TrainOptions(data_dir=tmp_path, register=False), dataset=data)
    assert "too short a period" not in str(err.value)
