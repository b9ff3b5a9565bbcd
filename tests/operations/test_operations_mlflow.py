"""The MLflow store does not depend on the current folder, and `recsvc mlflow-ui` opens it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from recsvc.cli import app
from recsvc.settings import load_settings

ROOT = Path(__file__).resolve().parents[2]


def test_the_default_store_is_the_same_from_any_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = Path(os.environ["RECSVC_HOME"])  # set for every test (conftest)
    stores = []
    for folder in (ROOT, tmp_path):
        monkeypatch.chdir(folder)
        m = load_settings().mlflow
        stores.append((m.tracking_uri, m.artifact_location))
    assert (
        stores[0]
        == stores[1]
        == (
            f"sqlite:///{home / 'var' / 'mlflow' / 'mlflow.db'}",
            str(home / "var" / "mlflow" / "artifacts"),
        )
    )
    # Without RECSVC_HOME: the source checkout recsvc runs from, not the current folder.
    monkeypatch.delenv("RECSVC_HOME")
    assert load_settings().mlflow.tracking_uri == f"sqlite:///{ROOT / 'var' / 'mlflow' / 'mlflow.db'}"


def test_mlflow_ui_opens_the_project_store_from_any_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = Path(os.environ["RECSVC_HOME"])
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["mlflow-ui", "--dry-run", "--port", "5055"])
    assert result.exit_code == 0, result.output
    store = f"sqlite:///{home / 'var' / 'mlflow' / 'mlflow.db'}"
    assert f"mlflow ui --backend-store-uri {store}" in result.output and "--port 5055" in result.output
    demo = CliRunner().invoke(app, ["mlflow-ui", "--demo", "--dry-run"])
    assert f"sqlite:///{home / 'var' / 'demo' / 'mlflow' / 'mlflow.db'}" in demo.output


def test_mlflow_ui_without_a_store_says_how_to_make_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RECSVC_HOME", str(tmp_path / "empty-home"))
    result = CliRunner().invoke(app, ["mlflow-ui"])
    assert result.exit_code == 2
    assert "no MLflow store at" in result.output and "recsvc train" in result.output
