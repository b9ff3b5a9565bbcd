"""Model sources, A/B variants and hot swap.

A model URI is either ``models:/<name>@<alias>`` (MLflow registry: resolved with
``MlflowClient.get_model_version_by_alias``, its artifacts downloaded once into
``<bundle_cache_dir>/<name>/<version>``: downloaded to a temporary folder first, then renamed,
so a half-downloaded bundle is never seen) or a local bundle directory.

``ModelRegistry`` holds the served model of every variant. A reload loads the new bundle beside
the old one and replaces the whole ``{variant: model}`` mapping in one assignment; requests take
the mapping once at their start, so no call fails or mixes two models during a swap. A poller
thread reloads every ``poll_interval_s``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import tempfile
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from recsvc.bundle import MANIFEST, read_manifest
from recsvc.engine.served_model import ServedModel
from recsvc.errors import BundleError, ConfigError, InvalidArgument, ModelUnavailable, RecsvcError
from recsvc.metrics import ServingMetrics
from recsvc.settings import Settings

log = logging.getLogger(__name__)

DEFAULT_VARIANT = "default"
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


def bucket(member_id: str) -> float:
    """A member's stable position in [0, 1): the same in every process, replica and release."""
    digest = hashlib.blake2b(member_id.encode("utf-8"), digest_size=8, person=b"recsvc-ab").digest()
    return int.from_bytes(digest, "big") / 2.0**64


@dataclass(frozen=True)
class VariantSource:
    name: str
    uri: str
    share: float


def variant_sources(settings: Settings) -> list[VariantSource]:
    s = settings.serving
    if not s.variants:
        return [VariantSource(DEFAULT_VARIANT, s.model_uri, 1.0)]
    return [
        VariantSource(v.name, f"{MODELS_SCHEME}{settings.mlflow.model_name}@{v.alias}", v.share)
        for v in s.variants
    ]


class ModelRegistry:
    """The served model of each variant; implements ``ModelProvider`` for the engine."""

    def __init__(
        self,
        settings: Settings,
        resolver: ModelResolver,
        metrics: ServingMetrics | None = None,
        on_loaded: Callable[[], None] | None = None,
    ) -> None:
        self._settings = settings
        self._resolver = resolver
        self._metrics = metrics
        self._on_loaded = on_loaded
        self._variants = variant_sources(settings)
        edges, acc = [], 0.0
        for v in self._variants:
            acc += v.share
            edges.append(acc)
        self._edges = edges
        self._models: dict[str, ServedModel] = {}
        self._resolved: dict[str, str] = {}  # variant -> last resolved version of its configured URI
        # variant -> the explicit ReloadModel URI it serves instead of its configured source.
        self._pinned: dict[str, str] = {}
        self._reload_lock = threading.Lock()
        self._stop = threading.Event()
        self._poller: threading.Thread | None = None

    # ---- ModelProvider ---------------------------------------------------------------------
    @property
    def variants(self) -> list[VariantSource]:
        return list(self._variants)

    def variant_of(self, member_id: str) -> str:
        b = bucket(member_id)
        for v, edge in zip(self._variants, self._edges, strict=True):
            if b < edge:
                return v.name
        return self._variants[-1].name

    def for_member(self, member_id: str) -> tuple[str, ServedModel]:
        models = self._models  # one read: the mapping is replaced, never changed in place
        name = self.variant_of(member_id)
        model = models.get(name)
        if model is not None:
            return name, model
        return self._fallback(models)

    def default(self) -> tuple[str, ServedModel]:
        models = self._models
        first = self._variants[0].name
        if first in models:
            return first, models[first]
        return self._fallback(models)

    def _fallback(self, models: dict[str, ServedModel]) -> tuple[str, ServedModel]:
        # A variant whose alias has no model yet serves from the first variant that has one.
        for v in self._variants:
            if v.name in models:
                return v.name, models[v.name]
        raise ModelUnavailable("no model is loaded yet; try again shortly", reason="MODEL_UNAVAILABLE")

    def set_on_loaded(self, callback: Callable[[], None] | None) -> None:
        """Called after every reload that leaves a model in place (health turns SERVING)."""
        self._on_loaded = callback
        if callback is not None and self._models:
            callback()

    @property
    def loaded(self) -> bool:
        return bool(self._models)

    def snapshot(self) -> dict[str, ServedModel]:
        return dict(self._models)

    # ---- loading ---------------------------------------------------------------------------
    @property
    def pinned(self) -> dict[str, str]:
        """Variants serving an explicit ``ReloadModel`` URI instead of their configured source."""
        return dict(self._pinned)

    def reload(self, uri: str | None = None, *, poll: bool = False) -> list[tuple[str, str, bool]]:
        """Load the configured source of every variant (or ``uri`` for all of them) and swap.

        ``uri`` pins every variant to it. Without ``uri`` every variant returns to its configured
        source, pinned or not (``ReloadModel`` with an empty URI is the documented way back);
        ``poll=True`` (the poller) leaves a pinned variant alone until its configured source
        resolves to a new version. Returns ``(variant, version, changed)`` per variant. Raises the
        first error when nothing could be loaded; the previous models keep serving in any case.
        """
        with self._reload_lock:
            results: list[tuple[str, str, bool]] = []
            new_models = dict(self._models)
            errors: list[RecsvcError] = []
            for v in self._variants:
                target = uri or v.uri
                current = new_models.get(v.name)
                try:
                    resolved = self._resolver.resolve(target)
                    if (
                        uri is None
                        and (poll or v.name not in self._pinned)
                        and self._resolved.get(v.name) == resolved.version
                        and current is not None
                    ):
                        results.append((v.name, current.version, False))
                        self._count(v.name, "unchanged")
                        continue
                    if (
                        current is not None
                        and current.bundle.path == resolved.path
                        and current.version == resolved.version
                    ):
                        self._resolved[v.name] = resolved.version
                        self._pin(v.name, uri)
                        results.append((v.name, current.version, False))
                        self._count(v.name, "unchanged")
                        continue
                    model = ServedModel.load(
                        resolved.path,
                        version=resolved.version,
                        source_uri=target,
                        hnsw_ef_search=self._settings.training.hnsw_ef_search,
                        prefault=self._settings.serving.prefault_bundle,
                    )
                except RecsvcError as exc:
                    log.warning("event=model_reload_failed variant=%s uri=%s error=%s", v.name, target, exc)
                    self._count(v.name, "failed")
                    errors.append(exc)
                    continue
                if uri is None:
                    self._resolved[v.name] = resolved.version
                self._pin(v.name, uri)
                previous = current.version if current is not None else None
                new_models[v.name] = model
                results.append((v.name, model.version, True))
                self._count(v.name, "swapped")
                if self._metrics is not None:
                    self._metrics.set_model(v.name, model.version, previous, data_as_of=model.cutoff_ts)
                log.info(
                    "event=model_loaded variant=%s version=%s previous=%s path=%s",
                    v.name,
                    model.version,
                    previous,
                    resolved.path,
                )
                if model.member_lists is not None:
                    # Stored default lists made under other serving settings are never used.
                    differ = model.member_lists.spec.mismatches(self._settings.serving, model.hnsw_ef_search)
                    log.log(
                        logging.WARNING if differ else logging.INFO,
                        "event=member_lists variant=%s k=%d used=%s differ=%s",
                        v.name,
                        model.member_lists.k,
                        "no" if differ else "yes",
                        ",".join(differ).replace(" ", ":") or "none",
                    )
            self._models = new_models  # the atomic swap
            if errors and not results:
                raise errors[0]
        if self._models and self._on_loaded is not None:
            self._on_loaded()
        return results

    def _pin(self, variant: str, uri: str | None) -> None:
        if uri is None:
            if self._pinned.pop(variant, None) is not None:
                log.info("event=model_unpinned variant=%s", variant)
        else:
            self._pinned[variant] = uri

    def _count(self, variant: str, result: str) -> None:
        if self._metrics is not None:
            self._metrics.reloads.labels(variant, result).inc()

    def start_polling(self, interval_s: float) -> None:
        """Reload every ``interval_s`` seconds in a daemon thread (also retries a failed first load)."""
        if interval_s <= 0 or self._poller is not None:
            return

        def loop() -> None:
            while not self._stop.wait(interval_s):
                try:
                    self.reload(poll=True)
                except RecsvcError as exc:
                    log.warning("event=model_poll_failed error=%s", exc)
                except Exception:  # never let the poller die: the next poll may succeed
                    log.exception("event=model_poll_crashed")

        self._poller = threading.Thread(target=loop, name="recsvc-model-poller", daemon=True)
        self._poller.start()

    def stop(self) -> None:
        self._stop.set()
        if self._poller is not None:
            self._poller.join(timeout=5)
            self._poller = None


RELOAD_CHANNEL_SUFFIX = "model-reload"


class ReloadBroadcast:
    """Fans a ``ReloadModel`` call out to every server process and replica through Redis pub/sub.

    Publishes ``{"origin": <process token>, "uri": <uri or "">}`` on
    ``<prefix>:global:model-reload``; a listener thread in each process reloads on every notice
    from another process. Without Redis the call still reloads the process that got it, and the
    poller brings the others along.
    """

    def __init__(self, client: Any, prefix: str, registry: ModelRegistry) -> None:
        from recsvc.keys import global_key

        self._client = client
        self._channel = global_key(prefix, RELOAD_CHANNEL_SUFFIX)
        self._registry = registry
        self._origin = uuid.uuid4().hex
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def publish(self, uri: str | None) -> bool:
        import redis

        try:
            self._client.publish(self._channel, json.dumps({"origin": self._origin, "uri": uri or ""}))
        except redis.RedisError as exc:
            log.warning("event=reload_broadcast_failed error=%s", type(exc).__name__)
            return False
        return True

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._listen, name="recsvc-reload-listener", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def _listen(self) -> None:
        import redis

        backoff = 1.0
        while not self._stop.is_set():
            pubsub = self._client.pubsub(ignore_subscribe_messages=True)
            try:
                pubsub.subscribe(self._channel)
                backoff = 1.0
                while not self._stop.is_set():
                    try:
                        message = pubsub.get_message(timeout=0.5)
                    except redis.TimeoutError:
                        continue
                    if message is not None:
                        self._handle(message.get("data"))
            except redis.RedisError as exc:
                log.warning("event=reload_listener_error error=%s retry_s=%s", type(exc).__name__, backoff)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 30.0)
            finally:
                with contextlib.suppress(redis.RedisError):
                    pubsub.close()

    def _handle(self, data: Any) -> None:
        try:
            notice = json.loads(data)
            origin, uri = str(notice["origin"]), str(notice.get("uri", ""))
        except (TypeError, ValueError, KeyError):
            log.warning("event=bad_reload_notice")
            return
        if origin == self._origin:
            return
        try:
            self._registry.reload(uri or None)
        except RecsvcError as exc:
            log.warning("event=broadcast_reload_failed uri=%s error=%s", uri or "(configured)", exc)
