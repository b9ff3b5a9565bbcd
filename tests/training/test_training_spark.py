"""``training.engine = "spark"``: Spark MLlib's ALS in local mode behind the same pipeline.

One module-scoped pair of bundles (implicit and Spark, same small data, same settings) carries
the end-to-end checks, so the JVM starts once for them; the confidence check starts it once more.
Without Java or pyspark the Spark tests skip, saying so (`make test` installs both under CI).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from bundle_factory import fold_in_cosines
from spark_support import HAVE_SPARK, NO_SPARK, random_events, with_spark
from typer.testing import CliRunner

from recsvc.bundle import load_bundle, read_manifest
from recsvc.bundle_manifest import FoldInSpec
from recsvc.cli import app
from recsvc.errors import ConfigError, DataContractError, SparkUnavailable
from recsvc.settings import load_settings
from training.confidence import confidence_matrix
from training.gate import GATE_METRIC
from training.spark_als import SparkAls, factors_by_row, first_line, spark_reg_param

spark_slow = [pytest.mark.skipif(not HAVE_SPARK, reason=NO_SPARK), pytest.mark.slow, pytest.mark.integration]


# --- no JVM ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "master", ["local", "local[2]", "local[*]", "local[4,2]", "spark://h1:7077,h2:7077", "yarn",
               "k8s://https://10.0.0.1:6443", "local-cluster[2,1,1024]"]
)  # fmt: skip
def test_spark_master_accepts_spark_urls(master: str) -> None:
    s = load_settings(overrides={"training": {"engine": "spark", "spark_master": master}})
    assert s.training.spark_master == master


@pytest.mark.parametrize("master", ["localhost", "local[x]", "local[0]", "spark://nohostport", "", "mesos"])
def test_bad_spark_master_is_a_config_error_before_any_jvm(master: str) -> None:
    with pytest.raises(ConfigError, match="spark_master"):
        load_settings(overrides={"training": {"spark_master": master}})


def test_bad_engine_on_the_command_line_is_one_line_and_exit_2(tmp_path: Path) -> None:
    runner = CliRunner()
    bad_engine = runner.invoke(app, ["train", "--data", str(tmp_path), "--engine", "tensorflow"])
    assert bad_engine.exit_code == 2 and "engine" in bad_engine.output
    bad_master = runner.invoke(
        app,
        ["train", "--data", str(tmp_path), "--engine", "spark"],
        env={"RECSVC_TRAINING__SPARK_MASTER": "local[two]"},
    )
    assert bad_master.exit_code == 2 and "spark_master" in bad_master.output
    assert "Traceback" not in bad_master.output + bad_engine.output


def test_a_spark_heap_that_ran_out_names_the_setting_that_gives_it_more() -> None:
    class JavaError(Exception):
        java_exception = "java.lang.OutOfMemoryError: Java heap space\n\tat org.apache.spark.Foo(Foo.java:1)"

    message = first_line(JavaError())
    assert message.startswith("java.lang.OutOfMemoryError: Java heap space (")
    assert "training.spark_driver_memory" in message and "\tat " not in message
    assert first_line(Exception("Job aborted\n\tat x")) == "Job aborted"  # no hint for other failures


def test_default_engine_is_implicit_and_default_master_is_local() -> None:
    t = load_settings().training
    assert t.engine == "implicit" and t.spark_master.startswith("local")


class _Frame:
    """What ``factors_by_row`` reads from Spark's userFactors / itemFactors: ``toPandas()``."""

    def __init__(self, pdf: pd.DataFrame) -> None:
        self.pdf = pdf

    def toPandas(self) -> pd.DataFrame:
        return self.pdf


def test_spark_ids_land_on_their_idmap_rows() -> None:
    # Spark returns factors in no particular order and only for ids it saw
    ids = np.array([7, 0, 3, 5], dtype=np.int32)
    features = [np.full(4, float(i) + 0.5, dtype=np.float32) for i in ids]
    out = factors_by_row(_Frame(pd.DataFrame({"id": ids, "features": features})), rows=9, rank=4)
    assert out.shape == (9, 4) and out.dtype == np.float32
    for row in range(9):
        expected = row + 0.5 if row in ids else 0.0
        assert np.all(out[row] == expected), row
    with pytest.raises(ValueError, match="outside"):
        factors_by_row(_Frame(pd.DataFrame({"id": [9], "features": [np.ones(4)]})), rows=9, rank=4)


def test_reg_param_gives_the_average_member_implicits_regularization() -> None:
    # ALS-WR: Spark multiplies regParam by the member's rating count; 20 ratings per member
    assert spark_reg_param(0.1, ratings=2000, members_with_ratings=100) == pytest.approx(0.005)
    assert spark_reg_param(0.1, ratings=50, members_with_ratings=100) == pytest.approx(0.1)  # never above


def test_manifest_without_engine_loads_as_implicit(tmp_path: Path) -> None:
    """Bundles written before Manifest.engine existed load unchanged (same schema version)."""
    from bundle_factory import make_bundle

    planted = make_bundle(tmp_path / "b")
    path = planted.path / "manifest.json"
    raw = json.loads(path.read_text())
    raw.pop("engine", None)
    path.write_text(json.dumps(raw))
    assert read_manifest(planted.path).engine == "implicit"
    assert load_bundle(planted.path).manifest.engine == "implicit"


# --- real Spark (local mode) ----------------------------------------------------------------


@pytest.mark.parametrize("engine", ["implicit", pytest.param("spark", marks=spark_slow)])
def test_broken_data_file_is_the_same_named_error_for_both_engines(tmp_path: Path, engine: str) -> None:
    from pipelines.generate import generate
    from pipelines.generate.params import GeneratorParams
    from training import pipeline

    data = tmp_path / "data"
    generate(GeneratorParams(members=40, seed=1), data, fmt="csv")
    (data / "events.csv").write_text("member,when\nM1,yesterday\n")  # not the contract's columns
    s = load_settings(
        overrides={
            "training": {"engine": engine},
            "mlflow": {
                "tracking_uri": f"sqlite:///{tmp_path}/m.db",
                "artifact_location": str(tmp_path / "a"),
            },
        }
    )
    with pytest.raises(DataContractError) as err:
        pipeline.run(s, pipeline.TrainOptions(data_dir=data, register=False))
    assert err.value.reason == "DATA_CONTRACT" and "events" in str(err.value)


@with_spark
def test_a_master_spark_refuses_is_a_named_error_not_a_java_trace(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    master = "yarn"
    # a valid URL Spark cannot use here: yarn without HADOOP_CONF_DIR / YARN_CONF_DIR
    monkeypatch.delenv("HADOOP_CONF_DIR", raising=False)
    monkeypatch.delenv("YARN_CONF_DIR", raising=False)
    from training import pipeline
    from training.synthetic import make_dataset

    s = load_settings(
        overrides={
            "training": {"engine": "spark", "spark_master": master, "factors": 8, "iterations": 2},
            "mlflow": {
                "tracking_uri": f"sqlite:///{tmp_path}/m.db",
                "artifact_location": str(tmp_path / "a"),
            },
        }
    )
    data = make_dataset(members=60, products=30, content=5, events_per_member=10, seed=3)
    with pytest.raises(SparkUnavailable) as err:
        pipeline.run(s, pipeline.TrainOptions(data_dir=tmp_path, register=False), dataset=data)
    assert err.value.reason == "SPARK_UNAVAILABLE" and master in str(err.value)
    assert "\n" not in err.value.message  # one line, no stack trace


@with_spark
def test_spark_confidence_equals_the_numpy_formula() -> None:
    """The Spark SQL r_ui (training/spark_als.py) is training/confidence.py's on the same events:
    every event type (zero weights dropped), ages around and beyond the half-life, events after
    the reference time (age 0) and repeated pairs (summed)."""
    from training.spark_als import confidence_frame

    n, shape, as_of = 4000, (50, 40), 1_790_000_000
    events = random_events(n, shape, as_of, seed=5)
    weights = {"purchase": 2.0, "add_to_cart": 1.4, "view": 0.7, "click": 0.0, "share": 1.2}
    expected = confidence_matrix(events, shape, weights, 45.0, as_of)
    with SparkAls(load_settings(overrides={"training": {"engine": "spark"}}).training) as spark:
        got = confidence_frame(spark.events_frame(events), weights, 45.0, as_of).toPandas()
    assert len(got) == expected.nnz
    coo = expected.tocoo()
    want = pd.DataFrame({"member": coo.row, "item": coo.col, "want": coo.data})
    both = want.merge(got, on=["member", "item"], how="inner", validate="1:1")
    assert len(both) == expected.nnz
    np.testing.assert_allclose(both["r"].to_numpy(), both["want"].to_numpy(), rtol=1e-5)


@with_spark
def test_spark_bm25_weights_equal_the_numpy_ones() -> None:
    """BM25 in Spark SQL (training/spark_als.py) weighs the scaled r_ui as
    recsvc/confidence_scale.py does: the same idf over every member row, the same lengths."""
    from recsvc.confidence_scale import confidence_input
    from training.spark_als import bm25_frame, confidence_frame, scaled_frame

    n, shape, as_of = 3000, (80, 40), 1_790_000_000
    events = random_events(n, shape, as_of, seed=7)
    weights = {"purchase": 2.0, "add_to_cart": 1.4, "view": 0.7, "click": 0.5}
    expected = confidence_input(
        confidence_matrix(events, shape, weights, 45.0, as_of), "log", "bm25", 100.0, 0.8
    )
    with SparkAls(load_settings(overrides={"training": {"engine": "spark"}}).training) as spark:
        ratings = scaled_frame(confidence_frame(spark.events_frame(events), weights, 45.0, as_of), "log")
        got = bm25_frame(ratings, shape[0], 100.0, 0.8).toPandas()
    coo = expected.tocoo()
    want = pd.DataFrame({"member": coo.row, "item": coo.col, "want": coo.data})
    both = want.merge(got, on=["member", "item"], how="inner", validate="1:1")
    assert len(both) == len(got) == expected.nnz
    np.testing.assert_allclose(both["r"].to_numpy(), both["want"].to_numpy(), rtol=1e-4)


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The same data and settings trained by each engine (pipeline.run, refit included)."""
    from bundle_factory import train_small_bundle

    if not HAVE_SPARK:
        pytest.skip(NO_SPARK)
    return {
        # the trend prior off: its choice on this small holdout may differ between the engines' fits;
        # BM25 weighting on, so serving's fold-in checks Spark's weights too
        engine: train_small_bundle(
            tmp_path_factory.mktemp(engine),
            {"engine": engine, "trend": "off", "confidence_weighting": "bm25"},
        )
        for engine in ("implicit", "spark")
    }


@with_spark
def test_spark_ndcg_is_within_ten_percent_of_implicit(bundles: dict[str, Path]) -> None:
    got = {e: read_manifest(p).metrics for e, p in bundles.items()}
    implicit, spark = got["implicit"][GATE_METRIC], got["spark"][GATE_METRIC]
    print(f"{GATE_METRIC}: implicit {implicit:.4f} spark {spark:.4f}", file=sys.stderr)
    assert spark > 2 * got["spark"][f"baseline.{GATE_METRIC}"]  # learnt something beyond popularity
    assert abs(spark - implicit) <= 0.10 * implicit


@with_spark
def test_a_spark_bundle_is_an_implicit_bundle_but_for_the_recorded_engine(bundles: dict[str, Path]) -> None:
    a, b = (load_bundle(bundles[e], mmap=False) for e in ("implicit", "spark"))
    assert (a.manifest.engine, b.manifest.engine) == ("implicit", "spark")
    assert sorted(p.name for p in bundles["implicit"].iterdir()) == sorted(
        p.name for p in bundles["spark"].iterdir()
    )
    ma, mb = a.manifest.model_dump(), b.manifest.model_dump()
    assert (
        set(ma) == set(mb) and ma["params"] == mb["params"] and ma["schema_version"] == mb["schema_version"]
    )
    assert ma["data_fingerprint"] == mb["data_fingerprint"]
    for name in ("member_factors", "item_factors"):
        x, y = np.asarray(getattr(a, name)), np.asarray(getattr(b, name))
        assert x.shape == y.shape and x.dtype == y.dtype
        # the same rows are trained (non-zero) in both: rows mean the same ids
        assert np.array_equal(np.abs(x).sum(axis=1) > 0, np.abs(y).sum(axis=1) > 0), name


def _own_history_auc(history: Any, users: np.ndarray, items: np.ndarray) -> float:
    """How often a member's own history items outscore random items under its factor row."""
    rng = np.random.default_rng(0)
    wins, total = 0, 0
    for m in np.flatnonzero(np.diff(history.indptr) > 0):
        own = history.indices[history.indptr[m] : history.indptr[m + 1]]
        other = rng.integers(0, items.shape[0], len(own))
        wins += int((items[own] @ users[m] > items[other] @ users[m]).sum())
        total += len(own)
    return wins / total


@with_spark
def test_spark_factor_rows_belong_to_their_members(bundles: dict[str, Path]) -> None:
    """A member's Spark factor row ranks that member's own history high; a row shifted to
    another member would not (the end-to-end check of the id -> row mapping)."""
    b = load_bundle(bundles["spark"], mmap=False)
    users, items = np.asarray(b.member_factors), np.asarray(b.item_factors)
    assert _own_history_auc(b.history, users, items) > 0.85
    assert _own_history_auc(b.history, np.roll(users, 1, axis=0), items) < 0.75


@with_spark
def test_serving_folds_a_member_in_as_the_engine_that_trained_them(bundles: dict[str, Path]) -> None:
    """A member recomputed from their history with the bundle's recorded solve is the member the
    engine trained (up to the last half-iteration): Spark's (C = 1 + alpha r, lambda per item)
    for a Spark bundle, implicit's for an implicit one. Spark's members recomputed with implicit's
    solve point elsewhere."""
    spark = read_manifest(bundles["spark"]).fold_in
    assert spark.confidence_offset == 1.0 and spark.reg_per_item > 0
    assert read_manifest(bundles["implicit"]).fold_in == FoldInSpec()
    own = {e: fold_in_cosines(p) for e, p in bundles.items()}
    foreign = fold_in_cosines(bundles["spark"], fold_in=FoldInSpec())
    shown = {e: np.percentile(c, [5, 50]).round(4).tolist() for e, c in own.items()}
    print(shown, np.percentile(foreign, [5, 50]).round(4).tolist(), file=sys.stderr)
    for engine, cos in own.items():
        assert np.median(cos) > 0.99 and np.percentile(cos, 5) > 0.95, engine
    # Spark solves members last, from the final item factors: its own solve is exact
    assert np.percentile(own["spark"], 5) > 0.9999 > np.median(foreign)


@with_spark
def test_a_spark_bundle_serves_over_grpc(bundles: dict[str, Path], redis_url: str, tmp_path: Path) -> None:
    from serving_harness import running_server, serving_settings

    from recsvc.v1 import recommender_pb2

    b = load_bundle(bundles["spark"], mmap=False)
    warm = b.members.id(int(np.flatnonzero(np.abs(np.asarray(b.member_factors)).sum(axis=1) > 0)[0]))
    with running_server(serving_settings(str(bundles["spark"]), redis_url, tmp_path)) as s:
        info = s.stub.GetModelInfo(recommender_pb2.GetModelInfoRequest())
        assert info.data_fingerprint == b.manifest.data_fingerprint
        reply = s.stub.RecommendProducts(recommender_pb2.RecommendProductsRequest(member_id=warm, k=10))
        assert len(reply.items) == 10
        assert len({i.item_id for i in reply.items}) == 10


@with_spark
def test_training_leaves_no_spark_jvm_behind(bundles: dict[str, Path]) -> None:
    """The session and the driver JVM end with the last fit: neither training nor the tests that
    follow keep a JVM heap alive."""
    import psutil
    from pyspark import SparkContext

    children = [p.name() for p in psutil.Process().children(recursive=True)]
    assert "java" not in children
    assert SparkContext._active_spark_context is None and SparkContext._gateway is None


class _Builder:
    """``getOrCreate`` fails with each of ``errors`` in turn, then returns "session"."""

    def __init__(self, *errors: Exception) -> None:
        self.errors = list(errors)
        self.calls = 0

    def getOrCreate(self) -> str:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return "session"


def test_a_jvm_that_exits_at_start_is_launched_once_more_and_only_once() -> None:
    """Pure unit test of the retry rule (the real start is covered by every Spark test)."""
    pytest.importorskip("pyspark")
    from pyspark.errors import PySparkRuntimeError

    from training.spark_als import _get_or_create

    def exited() -> Exception:
        return PySparkRuntimeError(errorClass="JAVA_GATEWAY_EXITED", messageParameters={})

    once = _Builder(exited())
    assert _get_or_create(once, owned=True) == "session" and once.calls == 2
    twice = _Builder(exited(), exited())
    with pytest.raises(PySparkRuntimeError):
        _get_or_create(twice, owned=True)
    assert twice.calls == 2
    other = _Builder(RuntimeError("master refused"))  # not a launch that died: no retry
    with pytest.raises(RuntimeError):
        _get_or_create(other, owned=True)
    assert other.calls == 1
    shared = _Builder(exited())  # someone else's session: not ours to relaunch
    with pytest.raises(PySparkRuntimeError):
        _get_or_create(shared, owned=False)
    assert shared.calls == 1
