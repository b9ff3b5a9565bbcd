"""`recsvc train` end to end: real generator, real loader, real MLflow sqlite store in tmp, and the
champion loaded exactly the way the server loads it."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from recsvc.bundle import load_bundle
from recsvc.cli import app

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _env(tmp: Path) -> dict[str, str]:
    return {
        "RECSVC_MLFLOW__TRACKING_URI": f"sqlite:///{tmp}/mlflow.db",
        "RECSVC_MLFLOW__ARTIFACT_LOCATION": str(tmp / "artifacts"),
        "RECSVC_TRAINING__FACTORS": "16",
        "RECSVC_TRAINING__ITERATIONS": "8",
        "RECSVC_TRAINING__EVAL_MEMBERS": "500",
    }


def test_train_on_generated_data_registers_a_loadable_champion(tmp_path: Path) -> None:
    import mlflow
    from mlflow.tracking import MlflowClient

    runner = CliRunner()
    data = tmp_path / "data"
    gen = runner.invoke(
        app,
        [
            "data",
            "generate",
            "--out",
            str(data),
            "--members",
            "600",
            "--seed",
            "3",
            "--bad-event-share",
            "0.02",
        ],
    )
    assert gen.exit_code == 0, gen.output
    env = _env(tmp_path)
    result = runner.invoke(app, ["train", "--data", str(data), "--bundle-out", str(tmp_path / "b")], env=env)
    assert result.exit_code == 0, result.output
    assert "PROMOTED" in result.output and "Holdout metrics" in result.output

    uri = env["RECSVC_MLFLOW__TRACKING_URI"]
    mv = MlflowClient(tracking_uri=uri, registry_uri=uri).get_model_version_by_alias("recsvc", "champion")
    local = mlflow.artifacts.download_artifacts(artifact_uri=mv.source, dst_path=str(tmp_path / "dl"))
    bundle = load_bundle(Path(local))
    assert bundle.manifest.bundle_id == mv.tags["bundle_id"]
    assert len(bundle.members) >= 600 and bundle.member_segment.shape == (len(bundle.members),)
    assert (
        bundle.manifest.metrics["product.ndcg_at_10"] > bundle.manifest.metrics["baseline.product.ndcg_at_10"]
    )
    assert set(bundle.segments["lifecycle"]) <= {"new", "active", "at_risk", "dormant", "churned"}
    # quarantined rows are counted in the manifest and in MLflow
    assert bundle.manifest.counts["quarantined_rows"] > 0
    assert mv.run_id is not None
    run = MlflowClient(tracking_uri=uri, registry_uri=uri).get_run(mv.run_id)
    assert run.data.metrics["count.quarantined_rows"] == bundle.manifest.counts["quarantined_rows"]
    # ... and the rows themselves, with their reasons, are in the data folder (never in MLflow)
    kept = pd.read_csv(data / "quarantine" / "events.csv", dtype=str, keep_default_na=False)
    assert (
        len(kept) == bundle.manifest.counts["ingest.events.rows_quarantined"] > 0
        and (kept["reason"] != "").all()
    )

    # a deliberately worse configuration is refused by the gate and says so (ALS forced: on this
    # small data the gate may let item-item serve, which these ALS settings do not touch)
    worse = runner.invoke(
        app,
        ["train", "--data", str(data), "--factors", "2", "--regularization", "500", "--iterations", "2"],
        env={**env, "RECSVC_TRAINING__FAMILY": "als"},
    )
    assert worse.exit_code == 0, worse.output
    assert "NOT PROMOTED" in worse.output and "refused" in worse.output
    again = MlflowClient(tracking_uri=uri, registry_uri=uri).get_model_version_by_alias("recsvc", "champion")
    assert again.version == mv.version


def test_bad_input_is_one_clear_line_and_exit_2(tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(app, ["train", "--data", str(tmp_path / "missing")], env=_env(tmp_path))
    assert result.exit_code == 2
    assert "data folder not found" in result.output
    assert "Traceback" not in result.output
    bad = runner.invoke(app, ["train", "--data", str(tmp_path), "--trials", "3"], env=_env(tmp_path))
    assert bad.exit_code == 2
    bad_setting = runner.invoke(
        app, ["train", "--data", str(tmp_path)], env={**_env(tmp_path), "RECSVC_TRAINING__ALPHA": "-1"}
    )
    assert bad_setting.exit_code == 2 and "alpha" in bad_setting.output


def test_help_explains_every_option() -> None:
    result = CliRunner().invoke(app, ["train", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    for option in ("--data", "--tune", "--trials", "--force", "--no-refit", "--no-register", "--bundle-out"):
        assert option in result.output


def test_benchmark_times_bare_and_pipeline_fit_of_the_same_matrix(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    from bench import als_fit

    runner = CliRunner()
    data = tmp_path / "data"
    gen = runner.invoke(app, ["data", "generate", "--out", str(data), "--members", "200", "--seed", "5"])
    assert gen.exit_code == 0, gen.output
    assert als_fit.main(["--data", str(data)]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["members"] >= 200 and result["nnz"] > 0
    assert result["bare_fit_seconds"] > 0 and result["pipeline_fit_seconds"] > 0
    assert result["ratio"] > 0 and result["peak_rss_gib"] > 0


def test_a_params_file_is_read_and_a_bad_one_is_one_clear_line(tmp_path: Path) -> None:
    runner = CliRunner()
    bad = tmp_path / "bad.toml"
    bad.write_text("[training]\nfactors = 8\nholdout_days = 3\n")
    result = runner.invoke(app, ["train", "--data", str(tmp_path), "--params", str(bad)], env=_env(tmp_path))
    assert result.exit_code == 2 and "holdout_days" in result.output
    assert "Traceback" not in result.output
    invalid = tmp_path / "invalid.toml"
    invalid.write_text("[training]\nregularization = -1\n")
    result = runner.invoke(
        app, ["train", "--data", str(tmp_path), "--params", str(invalid)], env=_env(tmp_path)
    )
    assert result.exit_code == 2 and "regularization" in result.output
    help_text = runner.invoke(app, ["train", "--help"], env={"COLUMNS": "200"}).output
    assert "--params" in help_text and "--save-params" in help_text


def test_options_that_would_be_ignored_or_contradict_are_refused(tmp_path: Path) -> None:
    runner = CliRunner()
    env = {**_env(tmp_path), "COLUMNS": "200"}
    cases = {
        "--save-params": ["--save-params", str(tmp_path / "p.toml")],  # without --tune: never written
        "NO_EVENT_LOG": ["--event-log", str(tmp_path / "no-such-log")],
        "--no-event-log": ["--event-log", str(tmp_path), "--no-event-log"],
    }
    for expected, args in cases.items():
        result = runner.invoke(app, ["train", "--data", str(tmp_path), *args], env=env)
        assert result.exit_code == 2, (args, result.output)
        assert expected in result.output and "Traceback" not in result.output, (args, result.output)
    assert not (tmp_path / "p.toml").exists()


def test_an_output_path_that_cannot_be_written_is_refused_before_any_work(tmp_path: Path) -> None:
    runner = CliRunner()
    env = {**_env(tmp_path), "COLUMNS": "200"}
    (tmp_path / "a-file").write_text("x")
    # the data folder is empty: a refusal naming the output proves it came before ingesting
    for args in (
        ["--tune", "--save-params", "/proc/x/params.toml"],
        ["--tune", "--save-params", str(tmp_path / "a-file" / "sub" / "params.toml")],
        ["--bundle-out", "/proc/x/b"],
        ["--bundle-out", str(tmp_path / "a-file" / "b")],
    ):
        result = runner.invoke(app, ["train", "--data", str(tmp_path), *args], env=env)
        assert result.exit_code == 2, (args, result.output)
        assert "OUTPUT_NOT_WRITABLE" in result.output and args[-1] in result.output, result.output
        assert "Traceback" not in result.output
    # a writable place passes, and the check leaves no folder behind (here ingesting then fails)
    nested = tmp_path / "new" / "deeper"
    result = runner.invoke(
        app,
        [
            "train",
            "--data",
            str(tmp_path),
            "--tune",
            "--save-params",
            str(nested / "p.toml"),
            "-o",
            str(nested),
        ],
        env=env,
    )
    assert result.exit_code == 2 and "OUTPUT_NOT_WRITABLE" not in result.output, result.output
    assert not (tmp_path / "new").exists()


def test_a_tracking_uri_mlflow_refuses_is_one_line_naming_the_setting(tmp_path: Path) -> None:
    runner = CliRunner()
    data = tmp_path / "data"
    gen = runner.invoke(app, ["data", "generate", "--out", str(data), "--members", "200", "--seed", "5"])
    assert gen.exit_code == 0, gen.output
    env = {**_env(tmp_path), "RECSVC_MLFLOW__TRACKING_URI": "notauri", "MLFLOW_ALLOW_FILE_STORE": "false"}
    result = runner.invoke(app, ["train", "--data", str(data), "--no-event-log"], env=env)
    assert result.exit_code == 2, result.output
    assert "mlflow.tracking_uri" in result.output and "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)


def test_a_tracking_server_that_does_not_answer_is_one_line_and_exit_3(tmp_path: Path) -> None:
    """Regression: an http:// URI nobody listens on kept MLflow retrying for about four minutes,
    after the whole ingest, and then ended in a traceback."""
    import socket

    with socket.socket() as sock:  # a port that was free a moment ago: connection refused
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    data = tmp_path / "missing-data"  # never read: the store is asked before the data
    env = {**_env(tmp_path), "RECSVC_MLFLOW__TRACKING_URI": f"http://127.0.0.1:{port}"}
    result = CliRunner().invoke(app, ["train", "--data", str(data)], env=env)
    out = " ".join(result.output.split())
    assert result.exit_code == 3, out  # try again later, as for Redis
    assert f"TRACKING_UNAVAILABLE: the MLflow store 'http://127.0.0.1:{port}'" in out
    assert "Connection refused" in out and "Traceback" not in out


def test_a_sqlite_store_that_cannot_be_opened_is_one_line_and_exit_2(tmp_path: Path) -> None:
    """Regression: MLflow retried such a store for about three minutes, then ended in a traceback."""
    (tmp_path / "a-file").write_text("not a folder")
    uri = f"sqlite:///{tmp_path}/a-file/mlflow.db"
    env = {**_env(tmp_path), "RECSVC_MLFLOW__TRACKING_URI": uri}
    result = CliRunner().invoke(app, ["train", "--data", str(tmp_path / "missing-data")], env=env)
    out = " ".join(result.output.split())
    assert result.exit_code == 2, out
    assert f"INVALID_CONFIG: mlflow.tracking_uri '{uri}': the sqlite file cannot be opened" in out
    assert "Traceback" not in out
