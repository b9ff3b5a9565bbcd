"""The catalog each server process serves with: the bundle's, or the bundle's with the live
changes a ``CatalogFollower`` keeps current.

``view(model)`` is the engine's one read per call: a dict look-up of the ``CatalogView`` built
for that model and the current records. Views are moved on off the request path, in the
follower's thread, after each batch of changes and when a scheduled item's time comes
(``recsvc.catalog.delta``; built whole after a full read), then swapped in as a whole. A model is
given its view before it is swapped in (``prepare``); one without gets it on its first call.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from collections.abc import Callable, Collection, Mapping
from typing import Protocol

from recsvc.catalog.delta import advance
from recsvc.catalog.store import ItemRecord
from recsvc.catalog.view import CatalogView, GroupMeans
from recsvc.engine.served_model import ServedModel
from recsvc.gc_pause import gc_paused

log = logging.getLogger(__name__)


class Models(Protocol):
    def snapshot(self) -> dict[str, ServedModel]: ...


class StaticCatalog:
    """The bundle's own catalog (no live changes): engines without Redis, training, benchmarks."""

    def __init__(self) -> None:
        self._views: weakref.WeakKeyDictionary[ServedModel, CatalogView] = weakref.WeakKeyDictionary()
        self._lock = threading.Lock()

    def view(self, model: ServedModel) -> CatalogView:
        found = self._views.get(model)
        if found is None:
            with self._lock:
                found = self._views.get(model)
                if found is None:
                    found = self._views[model] = CatalogView(model)
        return found


class LiveCatalog:
    """Views of every loaded model under the records the follower holds."""

    def __init__(self, models: Models, clock: Callable[[], float] = time.time) -> None:
        self._models = models
        self._clock = clock
        self._records: Mapping[str, ItemRecord] = {}
        self._version = 0
        self._views: weakref.WeakKeyDictionary[ServedModel, CatalogView] = weakref.WeakKeyDictionary()
        self._means: weakref.WeakKeyDictionary[ServedModel, GroupMeans] = weakref.WeakKeyDictionary()
        self._lock = threading.Lock()
        self._prepared: weakref.WeakSet[ServedModel] = weakref.WeakSet()
        # Set by the owner: where to ask for a wake-up when a scheduled item's time comes.
        self.on_next_publish: Callable[[float | None], None] | None = None
        self.connected = True

    # ---- the engine's read -----------------------------------------------------------------
    def view(self, model: ServedModel) -> CatalogView:
        found = self._views.get(model)
        if found is not None and (found.next_publish is None or found.next_publish > self._clock()):
            return found
        with self._lock:  # a model loaded since the last rebuild, or a scheduled item is due
            found = self._views.get(model)
            if found is not None and found.records is self._records:
                due = advance(
                    found, self._records, (), self._clock(), self._version, lambda: self._means_for(model)
                )
                if due is not None:
                    self._swap(model, due)
                    return due
            return self._build(model, self._records, self._version)

    def prepare(self, model: ServedModel) -> CatalogView:
        """``model``'s view, built before the model is swapped in (``ServedModels.set_prepare``)
        and kept current until it is: its first calls do not wait for a whole build."""
        with self._lock:
            self._prepared.add(model)
            return self._build(model, self._records, self._version)

    @property
    def records(self) -> Mapping[str, ItemRecord]:
        return self._records

    @property
    def version(self) -> int:
        return self._version

    # ---- the follower's writes -------------------------------------------------------------
    def update(
        self,
        records: Mapping[str, ItemRecord] | None,
        version: int | None = None,
        changed: Collection[str] | None = None,
    ) -> None:
        """New records (None: the same ones; time moved on): every loaded model's view anew.
        ``changed``: the items whose records are new since the last update (a feed batch); the
        views are then moved on by those alone when the batch allows (``recsvc.catalog.delta``),
        else, and after a full read (None), built whole."""
        t0 = time.perf_counter()
        with self._lock:
            if records is not None:
                self._records = records
            now = self._version if version is None else version
            views = []
            served = self._models.snapshot().values()
            # and the models prepared but not yet swapped in: their views must not miss this batch
            self._prepared = weakref.WeakSet(m for m in self._prepared if m not in served)
            for model in [*served, *self._prepared]:
                view = None
                if changed is not None and records is not None:
                    view = self._advance(model, changed, now)
                views.append(view if view is not None else self._build(model, self._records, now))
            # published once every view shows it: a caller that saw this version reads views
            # holding its change
            self._version = now
        pending = [v.next_publish for v in views if v.next_publish is not None]
        if self.on_next_publish is not None:
            self.on_next_publish(min(pending) if pending else None)
        log.debug(
            "event=catalog_views_built records=%d models=%d ms=%.1f",
            len(self._records),
            len(views),
            (time.perf_counter() - t0) * 1000,
        )

    def _advance(self, model: ServedModel, changed: Collection[str], version: int) -> CatalogView | None:
        current = self._views.get(model)
        if current is None:
            return None
        view = advance(
            current, self._records, changed, self._clock(), version, lambda: self._means_for(model)
        )
        if view is not None:
            self._swap(model, view)
        return view

    def _build(self, model: ServedModel, records: Mapping[str, ItemRecord], version: int) -> CatalogView:
        with gc_paused():
            view = CatalogView(model, records, self._clock(), lambda: self._means_for(model), version)
        self._swap(model, view)
        return view

    def _means_for(self, model: ServedModel) -> GroupMeans:
        means = self._means.get(model)
        if means is None:
            means = self._means[model] = GroupMeans.of_model(model)
        return means

    def _swap(self, model: ServedModel, view: CatalogView) -> None:
        views = weakref.WeakKeyDictionary(self._views)
        views[model] = view
        self._views = views  # swapped whole: readers never see a half-built map
