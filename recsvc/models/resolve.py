"""Resolving a model URI to a local bundle folder.

A model URI is either ``models:/<name>@<alias>`` (MLflow registry: resolved with
``MlflowClient.get_model_version_by_alias``, its artifacts downloaded once into
``<bundle_cache_dir>/<name>/<version>``: downloaded to a temporary folder first, then renamed,
so a half-downloaded bundle is never seen) or a local bundle directory.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from recsvc.bundle import MANIFEST, read_manifest
from recsvc.errors import BundleError, ConfigError, InvalidArgument, ModelUnavailable
from recsvc.settings import Settings

log = logging.getLogger(__name__)

MODELS_SCHEME = "models:/"


@dataclass(frozen=True)
class ResolvedModel:
    uri: str
    version: str
    path: Path


def parse_models_uri(uri: str) -> tuple[str, str]:
    body = uri[len(MODELS_SCHEME) :]
    name, sep, alias = body.partition("@")
    if not sep or not name or not alias or "/" in name:
        raise ConfigError(f"model URI {uri!r} must look like models:/<name>@<alias>")
    return name, alias


def find_bundle_dir(root: Path) -> Path:
    """The folder holding manifest.json: ``root`` itself or one level below (artifact sub-folder)."""
    if (root / MANIFEST).is_file():
        return root
    for manifest in sorted(root.glob(f"*/{MANIFEST}")) + sorted(root.glob(f"*/*/{MANIFEST}")):
        return manifest.parent
    raise BundleError(f"no {MANIFEST} under {root}")


class ModelResolver:
    """Turns a model URI into a local bundle folder and a version string."""

    def __init__(self, settings: Settings) -> None:
        self._mlflow = settings.mlflow
        self._cache = Path(settings.serving.bundle_cache_dir)
        self._registry_uri = settings.mlflow.registry_uri or settings.mlflow.tracking_uri

    def resolve(self, uri: str) -> ResolvedModel:
        if uri.startswith(MODELS_SCHEME):
            return self._resolve_registry(uri)
        path = Path(uri)
        try:
            is_dir = path.is_dir()
        except OSError as exc:  # e.g. a name longer than the file system allows
            raise InvalidArgument(
                f"model path is not usable: {exc.strerror}", reason="INVALID_MODEL_URI"
            ) from exc
        if not is_dir:
            raise ModelUnavailable(f"model path {uri[:200]} is not a directory", reason="MODEL_NOT_FOUND")
        bundle_dir = find_bundle_dir(path)
        manifest = read_manifest(bundle_dir)
        return ResolvedModel(uri=uri, version=manifest.bundle_id, path=bundle_dir.resolve())

    def _resolve_registry(self, uri: str) -> ResolvedModel:
        import mlflow.artifacts
        from mlflow import MlflowClient
        from mlflow.exceptions import MlflowException

        name, alias = parse_models_uri(uri)
        try:
            client = MlflowClient(tracking_uri=self._mlflow.tracking_uri, registry_uri=self._registry_uri)
            mv = client.get_model_version_by_alias(name, alias)
        except MlflowException as exc:
            raise ModelUnavailable(
                f"no model version under {uri}: {exc.message}", reason="MODEL_NOT_FOUND"
            ) from exc
        except Exception as exc:  # the MLflow client surfaces DB/HTTP failures under many types
            raise ModelUnavailable(
                f"model registry unreachable for {uri}: {type(exc).__name__}: {exc}",
                reason="REGISTRY_UNAVAILABLE",
            ) from exc
        dst = self._cache / name / str(mv.version)
        if not dst.is_dir():
            dst.parent.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=f".{mv.version}-", dir=dst.parent))
            try:
                mlflow.artifacts.download_artifacts(
                    artifact_uri=mv.source,
                    dst_path=str(tmp),
                    tracking_uri=self._mlflow.tracking_uri,
                    registry_uri=self._registry_uri,
                )
                try:
                    os.rename(tmp, dst)
                except OSError:
                    # Another worker renamed its copy first; theirs is complete, ours is surplus.
                    if not dst.is_dir():
                        raise
            except Exception as exc:  # MlflowException, OSError, HTTP errors: all mean "not now"
                raise ModelUnavailable(
                    f"could not download {uri} (version {mv.version}): {exc}", reason="MODEL_DOWNLOAD"
                ) from exc
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
        return ResolvedModel(uri=uri, version=f"{name}/v{mv.version}", path=find_bundle_dir(dst).resolve())
