"""Resolving a model URI to a local bundle folder.

A model URI is either ``models:/<name>@<alias>`` (MLflow registry: resolved with
``MlflowClient.get_model_version_by_alias``, its artifacts downloaded once into
``<bundle_cache_dir>/<name>/<version>``: downloaded to a temporary folder first, then renamed,
so a half-downloaded bundle is never seen) or a local bundle directory.

A version number names a version only within one registry: a new store (or a recreated registry
database) under the same cache starts again at 1. So each cached copy records where it came from
(``.recsvc-source.json``: the version's run id, artifact source and ``bundle_id`` tag), and a copy
recording another origin, or none (cached before this was kept), is downloaded again over it.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from recsvc.bundle import MANIFEST, read_manifest
from recsvc.errors import BundleError, InvalidArgument, ModelUnavailable
from recsvc.settings import Settings

log = logging.getLogger(__name__)

MODELS_SCHEME = "models:/"

# Beside a cached copy's files: the origin of the registry version it was downloaded from.
SOURCE_FILE = ".recsvc-source.json"

# A poll downloads a cached copy that fails to load again at most this often per version: an
# artifact that is still broken would otherwise be downloaded on every poll of every worker.
REFETCH_INTERVAL_S = 300.0


@dataclass(frozen=True)
class RegistryCopy:
    """A registry version's cached copy: what ``ModelResolver.refetch`` needs to download it again."""

    uri: str
    name: str
    version: str
    source: str
    origin: dict[str, str]
    dst: Path


@dataclass(frozen=True)
class ResolvedModel:
    uri: str
    version: str
    path: Path
    copy: RegistryCopy | None = field(default=None, compare=False, repr=False)
    # The copy was downloaded by this very resolve: downloading it again at once would not help.
    downloaded: bool = field(default=False, compare=False, repr=False)


def parse_models_uri(uri: str) -> tuple[str, str]:
    body = uri[len(MODELS_SCHEME) :]
    name, sep, alias = body.partition("@")
    if not sep or not name or not alias or "/" in name:
        raise InvalidArgument(
            f"model URI {uri[:200]!r} must look like models:/<name>@<alias>", reason="INVALID_MODEL_URI"
        )
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
        self._fetched: dict[Path, float] = {}  # cached copy -> when this process last downloaded it

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
        origin = {
            "run_id": str(mv.run_id or ""),
            "source": str(mv.source),
            "bundle_id": str((getattr(mv, "tags", None) or {}).get("bundle_id", "")),
        }
        copy = RegistryCopy(
            uri, name, str(mv.version), str(mv.source), origin, self._cache / name / str(mv.version)
        )
        downloaded = not _holds(copy.dst, origin)
        if downloaded:
            if copy.dst.exists():
                log.warning(
                    "event=bundle_cache_stale path=%s run_id=%s (cached from another origin: downloading)",
                    copy.dst,
                    origin["run_id"],
                )
            self._download(copy)
        return ResolvedModel(
            uri=uri,
            version=f"{name}/v{mv.version}",
            path=find_bundle_dir(copy.dst).resolve(),
            copy=copy,
            downloaded=downloaded,
        )

    def refetch(self, resolved: ResolvedModel, *, now: bool = False) -> ResolvedModel | None:
        """Download a registry version again over its cached copy, which failed to load: damaged on
        disk, or its artifact was repaired after it was cached (a cached copy is otherwise never
        downloaded again). ``now`` (ReloadModel): at once; else (a poll) at most every
        ``REFETCH_INTERVAL_S`` per version. None: not a registry copy, just downloaded, or too soon."""
        copy = resolved.copy
        if copy is None or resolved.downloaded:
            return None
        last = self._fetched.get(copy.dst)
        if not now and last is not None and time.monotonic() - last < REFETCH_INTERVAL_S:
            return None
        self._download(copy, stale=True)
        return ResolvedModel(
            uri=resolved.uri,
            version=resolved.version,
            path=find_bundle_dir(copy.dst).resolve(),
            copy=copy,
            downloaded=True,
        )

    def _download(self, copy: RegistryCopy, *, stale: bool = False) -> None:
        """Download ``copy`` into a temporary folder beside its place, then rename it there whole.
        ``stale``: the copy in place holds the right origin but is broken, so is replaced too."""
        import mlflow.artifacts

        dst = copy.dst
        try:
            dst.parent.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=f".{copy.version}-", dir=dst.parent))
        except OSError as exc:
            raise ModelUnavailable(
                f"could not download {copy.uri} (version {copy.version}): {exc}", reason="MODEL_DOWNLOAD"
            ) from exc
        try:
            mlflow.artifacts.download_artifacts(
                artifact_uri=copy.source,
                dst_path=str(tmp),
                tracking_uri=self._mlflow.tracking_uri,
                registry_uri=self._registry_uri,
            )
            (tmp / SOURCE_FILE).write_text(json.dumps(copy.origin), encoding="utf-8")
            _install(tmp, dst, copy.origin, stale=stale)
        except Exception as exc:  # MlflowException, OSError, HTTP errors: all mean "not now"
            raise ModelUnavailable(
                f"could not download {copy.uri} (version {copy.version}): {exc}", reason="MODEL_DOWNLOAD"
            ) from exc
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        self._fetched[dst] = time.monotonic()


def _holds(dst: Path, origin: dict[str, str]) -> bool:
    """Whether the cached copy at ``dst`` was downloaded from ``origin``."""
    try:
        recorded: Any = json.loads((dst / SOURCE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return bool(recorded == origin)


def _install(tmp: Path, dst: Path, origin: dict[str, str], *, stale: bool) -> None:
    """Rename the complete download ``tmp`` to ``dst``. An old copy there is first renamed aside
    and then deleted (a process serving it keeps its memory-mapped files). Workers may race
    here: a copy of the same origin another one put in place meanwhile is as good as ours."""
    aside: Path | None = None
    if dst.exists() and (stale or not _holds(dst, origin)):
        aside = dst.with_name(f".{dst.name}-old-{uuid.uuid4().hex[:8]}")
        try:
            os.rename(dst, aside)
        except FileNotFoundError:  # another worker moved it aside first
            aside = None
    try:
        os.rename(tmp, dst)
    except OSError:
        # Another worker renamed its complete copy first; it is as good as ours if its origin
        # matches (a broken copy of the same origin was moved aside above, not renamed back).
        if not _holds(dst, origin):
            raise
    finally:
        if aside is not None:
            shutil.rmtree(aside, ignore_errors=True)
