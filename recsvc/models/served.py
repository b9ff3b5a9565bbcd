"""``ServedModels``: the served model of every variant, swapped atomically, polled for new ones.

A reload loads the new bundle beside the old one and replaces the whole ``{variant: model}``
mapping in one assignment; requests take the mapping once at their start, so no call fails or
mixes two models during a swap. A poller thread reloads every ``poll_interval_s``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from recsvc.engine.served_model import ServedModel
from recsvc.errors import BundleError, ModelUnavailable, RecsvcError
from recsvc.metrics import ServingMetrics
from recsvc.models.pins import Pin, PinFile
from recsvc.models.resolve import ModelResolver, ResolvedModel
from recsvc.models.variants import VariantSource, bucket, variant_sources
from recsvc.settings import Settings

log = logging.getLogger(__name__)


class ServedModels:
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
        self._prepare: Callable[[ServedModel], object] | None = None
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
        # Where this server's workers keep their pins (keep_pins_in); None: this process only.
        self._pin_file: PinFile | None = None
        self._saved_pins: dict[str, Pin] = {}
        self._reload_lock = threading.Lock()
        self._stop = threading.Event()
        self._poller: threading.Thread | None = None

    # ---- ModelProvider ---------------------------------------------------------------------
    @property
    def variants(self) -> list[VariantSource]:
        return list(self._variants)

    def variant_of(self, member_id: str) -> str:
        if len(self._variants) == 1:  # everyone's (the default): no bucket to hash on every call
            return self._variants[0].name
        b = bucket(member_id)
        for v, edge in zip(self._variants, self._edges, strict=True):
            if b < edge:
                return v.name
        return self._variants[-1].name

    def for_member(self, member_id: str) -> tuple[str, ServedModel]:
        # one read: the mapping is replaced, never changed in place
        return self.pick(self._models, self.variant_of(member_id))

    def default(self) -> tuple[str, ServedModel]:
        return self.pick(self._models, self._variants[0].name)

    def pick(self, models: dict[str, ServedModel], variant: str) -> tuple[str, ServedModel]:
        """``variant``'s model in ``models`` (the ones serving now, or a :class:`FrozenModels`'
        moment), else the fallback's."""
        model = models.get(variant)
        if model is not None:
            return variant, model
        return self._fallback(models)

    def _fallback(self, models: dict[str, ServedModel]) -> tuple[str, ServedModel]:
        # A variant whose alias has no model yet serves from the first variant that has one.
        for v in self._variants:
            if v.name in models:
                return v.name, models[v.name]
        raise ModelUnavailable("no model is loaded yet; try again shortly", reason="MODEL_UNAVAILABLE")

    def set_prepare(self, callback: Callable[[ServedModel], object] | None) -> None:
        """``callback(model)`` runs on each newly loaded model before it is swapped in (the live
        catalog builds its view there: the model's first calls then do not wait for it). Its
        failure is logged and the model still serves."""
        self._prepare = callback

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

    def frozen(self) -> FrozenModels:
        """The models serving now, fixed: a call that answers many members (BatchRecommend)
        answers every one from the same models, whatever swaps while it runs."""
        return FrozenModels(self, self._models)

    # ---- loading ---------------------------------------------------------------------------
    @property
    def pinned(self) -> dict[str, str]:
        """Variants serving an explicit ``ReloadModel`` URI instead of their configured source."""
        return dict(self._pinned)

    def keep_pins_in(self, pin_file: PinFile) -> None:
        """Resume the pins a sibling worker saved in ``pin_file`` and save every later change there.

        Call before the first ``reload(poll=True)``: a pinned variant then loads its pin, unless its
        configured source has moved since the pin was set (its siblings drop the pin at their
        next poll too). A worker the supervisor restarts thus serves what its siblings serve."""
        valid = {v.name for v in self._variants}
        with self._reload_lock:
            self._pin_file = pin_file
            self._saved_pins = {v: p for v, p in pin_file.load().items() if v in valid}
            for variant, pin in self._saved_pins.items():
                self._pinned[variant] = pin.uri
                if pin.source_version is not None:
                    self._resolved[variant] = pin.source_version
            if self._saved_pins:
                log.info(
                    "event=pins_resumed %s",
                    " ".join(f"{v}={p.uri}" for v, p in sorted(self._saved_pins.items())),
                )

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
                current = new_models.get(v.name)
                pin = uri  # what the variant is pinned to once loaded (None: its configured source)
                target = uri or v.uri
                try:
                    if uri is None and poll and current is None and v.name in self._pinned:
                        # Nothing loaded yet but a pin resumed from a sibling (keep_pins_in): load
                        # the pin while the configured source stays where it was when pinned.
                        try:
                            source: ResolvedModel | None = self._resolver.resolve(v.uri)
                        except RecsvcError as exc:  # e.g. the registry is down: the siblings'
                            source = None  # polls fail too, and they keep the pin meanwhile
                            log.warning("event=pin_source_unresolved variant=%s error=%s", v.name, exc)
                        if source is None or self._resolved.get(v.name) == source.version:
                            pin = self._pinned[v.name]
                            target, resolved = pin, self._resolver.resolve(pin)
                        else:
                            target, resolved = v.uri, source
                    else:
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
                            if uri is None:
                                # Only the configured source's version goes here: the pinned
                                # bundle's would read as the source having moved at the next poll,
                                # which would drop the pin (a repeated rollback undid itself).
                                self._resolved[v.name] = resolved.version
                            self._pin(v.name, uri)
                            results.append((v.name, current.version, False))
                            self._count(v.name, "unchanged")
                            continue
                    model, resolved = self._load(resolved, target, refetch_now=not poll)
                except RecsvcError as exc:
                    log.warning("event=model_reload_failed variant=%s uri=%s error=%s", v.name, target, exc)
                    self._count(v.name, "failed")
                    errors.append(exc)
                    continue
                if self._prepare is not None:
                    try:
                        self._prepare(model)
                    except Exception:  # the view is then built on the model's first call
                        log.exception(
                            "event=model_prepare_failed variant=%s version=%s", v.name, model.version
                        )
                if pin is None:
                    self._resolved[v.name] = resolved.version
                self._pin(v.name, pin)
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
            self._save_pins()
            if errors and not results:
                raise errors[0]
        if self._models and self._on_loaded is not None:
            self._on_loaded()
        return results

    def _load(
        self, resolved: ResolvedModel, target: str, *, refetch_now: bool
    ) -> tuple[ServedModel, ResolvedModel]:
        """Load ``resolved``; a cached registry copy that fails to load is downloaded again once
        (damaged on disk, or its artifact was repaired since it was cached) and loaded from the new
        copy. A poll does so at most every ``resolve.REFETCH_INTERVAL_S`` per version (an artifact
        still broken is not downloaded on every poll); ``ReloadModel`` at once."""
        try:
            return self._load_bundle(resolved, target), resolved
        except BundleError as exc:
            if exc.reason == "BUNDLE_SCHEMA_MISMATCH":  # another copy has the same schema
                raise
            fresh = self._resolver.refetch(resolved, now=refetch_now)
            if fresh is None:
                raise
            log.warning(
                "event=bundle_refetched uri=%s version=%s after=%s", target, resolved.version, exc.reason
            )
            return self._load_bundle(fresh, target), fresh

    def _load_bundle(self, resolved: ResolvedModel, target: str) -> ServedModel:
        return ServedModel.load(
            resolved.path,
            version=resolved.version,
            source_uri=target,
            hnsw_ef_search=self._settings.training.hnsw_ef_search,
            prefault=self._settings.serving.prefault_bundle,
        )

    def _save_pins(self) -> None:
        if self._pin_file is None:
            return
        pins = {v: Pin(uri, self._resolved.get(v)) for v, uri in self._pinned.items()}
        if pins != self._saved_pins:
            self._pin_file.save(pins)
            self._saved_pins = pins

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


class FrozenModels:
    """One moment's models of a :class:`ServedModels`, chosen per member as it chooses."""

    def __init__(self, owner: ServedModels, models: dict[str, ServedModel]) -> None:
        self._owner = owner
        self._models = models  # the owner replaces its mapping on a swap, never changes it

    def for_member(self, member_id: str) -> tuple[str, ServedModel]:
        return self._owner.pick(self._models, self._owner.variant_of(member_id))

    def default(self) -> tuple[str, ServedModel]:
        return self._owner.pick(self._models, self._owner._variants[0].name)
