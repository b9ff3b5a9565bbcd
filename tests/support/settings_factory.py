"""One builder of Settings for tests: a real sqlite MLflow store in the test's tmp folder, a test
server's serving section (port 0, no polling, bundle cache in tmp), a Redis URL, and any other
sections merged over those, so a test states only what it is about."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from recsvc.settings import Settings, load_settings


def mlflow_store(tmp: Path, model: str | None = None) -> dict[str, Any]:
    """The ``mlflow`` section of a sqlite tracking and registry store in ``tmp``."""
    section: dict[str, Any] = {
        "tracking_uri": f"sqlite:///{tmp}/mlflow.db",
        "artifact_location": str(tmp / "artifacts"),
    }
    if model is not None:
        section["model_name"] = model
    return section


def server_section(model_uri: str, tmp: Path, **serving: Any) -> dict[str, Any]:
    """The ``serving`` section of a server on a free port over ``model_uri``, reloaded by hand."""
    return {
        "model_uri": model_uri,
        "port": 0,
        "host": "127.0.0.1",
        "workers": 1,
        "poll_interval_s": 0,
        "bundle_cache_dir": str(tmp / "bundle-cache"),
        **serving,
    }


def build_settings(
    tmp: Path,
    *,
    redis_url: str | None = None,
    model_uri: str | None = None,
    mlflow_model: str | None = None,
    mlflow: bool = False,
    **sections: dict[str, Any],
) -> Settings:
    """Settings for a test in ``tmp``: with ``mlflow`` (or an ``mlflow_model``) a sqlite MLflow
    store there; with ``model_uri`` a test server's serving section (keys in ``serving=`` go over
    it); with ``redis_url`` that Redis. Other sections are passed as they are."""
    overrides: dict[str, Any] = {}
    if mlflow or mlflow_model is not None:
        overrides["mlflow"] = mlflow_store(tmp, mlflow_model) | sections.pop("mlflow", {})
    if model_uri is not None:
        overrides["serving"] = server_section(model_uri, tmp, **sections.pop("serving", {}))
    if redis_url is not None:
        overrides["redis"] = {"url": redis_url}
    overrides |= sections
    return load_settings(overrides=overrides)
