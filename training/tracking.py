"""MLflow plumbing: experiment, registry look-ups, model versions and the champion alias.

Reads: MlflowSettings (tracking and registry URIs, experiment, artifact location, model name,
alias), a finished run's bundle artifact URI.
Writes: the experiment (created with ``artifact_location``), registered model versions whose
``source`` is the artifact URI of the run's ``bundle`` folder (so
``mlflow.artifacts.download_artifacts(artifact_uri=mv.source)`` yields a folder with
``manifest.json`` at its root), version tags (bundle_id, gate decision) and the alias.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from recsvc.bundle import MANIFEST, Manifest, read_manifest
from recsvc.errors import BundleError, ConfigError
from recsvc.settings import MlflowSettings

log = logging.getLogger(__name__)

BUNDLE_ARTIFACT_PATH = "bundle"


def client_for(m: MlflowSettings) -> Any:
    import mlflow
    from mlflow.tracking import MlflowClient

    _ensure_sqlite_parent(m.tracking_uri)
    if m.registry_uri:
        _ensure_sqlite_parent(m.registry_uri)
    mlflow.set_tracking_uri(m.tracking_uri)
    if m.registry_uri:
        mlflow.set_registry_uri(m.registry_uri)
    return MlflowClient(tracking_uri=m.tracking_uri, registry_uri=m.registry_uri or m.tracking_uri)


def _ensure_sqlite_parent(uri: str) -> None:
    if uri.startswith("sqlite:///"):
        path = Path(uri.removeprefix("sqlite:///"))
        path.parent.mkdir(parents=True, exist_ok=True)


def artifact_location_uri(location: str) -> str:
    """A plain path becomes an absolute file URI so runs do not depend on the working directory."""
    if urlparse(location).scheme and len(urlparse(location).scheme) > 1:
        return location
    path = Path(location).expanduser().resolve()
    path.mkdir(parents=True, exist_ok=True)
    return path.as_uri()


def ensure_experiment(client: Any, m: MlflowSettings) -> str:
    exp = client.get_experiment_by_name(m.experiment)
    if exp is not None:
        if exp.lifecycle_stage == "deleted":
            raise ConfigError(f"MLflow experiment {m.experiment!r} is deleted; restore it or pick another")
        return str(exp.experiment_id)
    return str(
        client.create_experiment(m.experiment, artifact_location=artifact_location_uri(m.artifact_location))
    )


def champion(client: Any, m: MlflowSettings) -> tuple[Any, Manifest | None] | None:
    """The model version under the champion alias and its bundle manifest, or None if there is
    no champion. The manifest is None when it cannot be read (e.g. another schema version)."""
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        mv = client.get_model_version_by_alias(m.model_name, m.champion_alias)
    except MlflowException as exc:
        log.info("no champion yet: %s", exc.message.splitlines()[0] if exc.message else exc)
        return None
    with tempfile.TemporaryDirectory() as tmp:
        try:
            local = mlflow.artifacts.download_artifacts(
                artifact_uri=f"{mv.source.rstrip('/')}/{MANIFEST}", dst_path=tmp
            )
            manifest = read_manifest(Path(local).parent)
        except (BundleError, MlflowException, OSError) as exc:
            log.warning("champion v%s manifest unreadable: %s", mv.version, exc)
            return mv, None
    return mv, manifest


def register(
    client: Any,
    m: MlflowSettings,
    *,
    run_id: str,
    source: str,
    bundle_id: str,
    tags: dict[str, str],
    promote: bool,
) -> str:
    """Create a model version for the bundle; move the champion alias when ``promote``."""
    from mlflow.exceptions import MlflowException

    try:
        client.create_registered_model(
            m.model_name, description="recsvc ALS + FAISS bundles (see docs/bundle.md)"
        )
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    mv = client.create_model_version(
        name=m.model_name,
        source=source,
        run_id=run_id,
        tags={"bundle_id": bundle_id, **tags},
        description=f"bundle {bundle_id}",
    )
    if promote:
        client.set_registered_model_alias(m.model_name, m.champion_alias, mv.version)
        log.info("alias %s -> %s v%s", m.champion_alias, m.model_name, mv.version)
    return str(mv.version)
