"""Each member's whole default product list, computed once at training and stored in the bundle.

A "for you" page asks for the same thing for most members most of the time: k products with the
default filters (in stock, purchases excluded) and the default diversity. For a member without
recent events that list depends on the bundle alone, so it can be computed here instead of on
every page view: ``training.member_lists`` = K stores the list of K for every member
(``member_list_{item,score,reason}.npy``, recsvc/bundle.py). Serving then answers such a call
by reading the member's row, and computes the list live for anything else: another k, other
filters or diversity, a member with recent events (their vector and purchases have changed), or
serving settings that differ from the ones recorded here.

The lists are computed by the serving engine itself (``RecommendationEngine.trained_list``) on
the written bundle, under the serving settings, so a stored list is the list serving would
compute (tests/serving/test_member_lists.py checks them against each other for every member). Members
are split over ``workers`` processes, each loading the bundle (memory-mapped) on its own.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from recsvc.bundle import KIND_PRODUCT, StoredListSpec, add_member_lists, load_bundle
from recsvc.engine.served_model import hnsw_ef_in_use
from recsvc.settings import ServingSettings, TrainingSettings

log = logging.getLogger(__name__)

_CHUNK = 20_000  # members per task


_worker: dict[str, Any] = {}


def _load(bundle_dir: str, serving_json: str, ef_search: int) -> None:
    from recsvc.engine.recommender import RecommendationEngine, SingleModel
    from recsvc.engine.served_model import ServedModel

    serving = ServingSettings.model_validate_json(serving_json)
    model = ServedModel.load(
        Path(bundle_dir), version="lists", source_uri=bundle_dir, hnsw_ef_search=ef_search
    )
    _worker["model"] = model
    _worker["engine"] = RecommendationEngine(SingleModel(model), None, serving)
    _worker["serving"] = serving


def _lists(start: int, stop: int, k: int, spare: int) -> tuple[int, np.ndarray, np.ndarray, np.ndarray]:
    from recsvc.engine.filters import FilterSpec

    model, engine, serving = _worker["model"], _worker["engine"], _worker["serving"]
    filters = FilterSpec(diversity=serving.default_diversity)
    n = stop - start
    width = k + spare
    items = np.full((n, width), -1, dtype=np.int32)
    scores = np.zeros((n, width), dtype=np.float32)
    reasons = np.full((n, width), -1, dtype=np.int32)
    for i in range(n):
        found = engine.trained_list(model, start + i, KIND_PRODUCT, k, filters, spare=spare)
        if found is None or found[0].shape[0] < k:
            continue  # cold start, or a list shorter than k: serving computes it live
        got = found[0].shape[0]  # k, and as many spare picks as the pool had
        items[i, :got], scores[i, :got], reasons[i, :got] = found
    return start, items, scores, reasons


def compute(
    bundle_dir: Path,
    serving: ServingSettings,
    ef_search: int,
    k: int,
    workers: int = 1,
    chunk: int = _CHUNK,
    spare: int = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, StoredListSpec]:
    """(items, scores, reasons, spec) for every member of the bundle at ``bundle_dir``, under
    the ``serving`` settings and the efSearch serving gives HNSW indexes (``ef_search``, from
    ``training.hnsw_ef_search``): ``k`` picks and up to ``spare`` more per member (-1 after the
    last one the candidate pool had)."""
    bundle = load_bundle(bundle_dir)
    n_members = len(bundle.members)
    spec = StoredListSpec.for_serving(serving, k, hnsw_ef_in_use(bundle.indexes.values(), ef_search), spare)
    del bundle
    serving_json = serving.model_dump_json()
    ranges = [(s, min(s + chunk, n_members), k, spare) for s in range(0, n_members, chunk)]
    items = np.full((n_members, k + spare), -1, dtype=np.int32)
    scores = np.zeros((n_members, k + spare), dtype=np.float32)
    reasons = np.full((n_members, k + spare), -1, dtype=np.int32)

    def put(part: tuple[int, np.ndarray, np.ndarray, np.ndarray]) -> None:
        start, it, sc, re = part
        items[start : start + it.shape[0]], scores[start : start + it.shape[0]] = it, sc
        reasons[start : start + it.shape[0]] = re

    if workers <= 1 or len(ranges) <= 1:
        _load(str(bundle_dir), serving_json, ef_search)
        try:
            for r in ranges:
                put(_lists(*r))
        finally:
            _worker.clear()
    else:
        # Spawned, not forked: the parent may hold FAISS/OpenMP and BLAS thread state.
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(
            max_workers=workers,
            mp_context=ctx,
            initializer=_load,
            initargs=(str(bundle_dir), serving_json, ef_search),
        ) as pool:
            for part in pool.map(_lists, *zip(*ranges, strict=True)):
                put(part)
    return items, scores, reasons, spec


def for_settings(bundle_dir: Path, t: TrainingSettings, serving: ServingSettings) -> dict[str, Any] | None:
    """``add_to_bundle`` as the settings ask (``training.member_lists`` per member, on
    ``training.num_threads`` processes, 0 = every core); None when they ask for none."""
    if not t.member_lists:
        return None
    if t.member_lists != serving.default_k:
        log.warning(
            "event=member_lists_unused k=%d default_k=%d: lists of another length than serving's "
            "default page are never read (serving.default_k or training.member_lists)",
            t.member_lists,
            serving.default_k,
        )
    workers = t.num_threads or os.cpu_count() or 1
    return add_to_bundle(
        bundle_dir, serving, t.hnsw_ef_search, t.member_lists, workers, spare=t.member_list_spare
    )


def add_to_bundle(
    bundle_dir: Path,
    serving: ServingSettings,
    ef_search: int,
    k: int,
    workers: int = 1,
    chunk: int = _CHUNK,
    spare: int = 0,
) -> dict[str, Any]:
    """Compute the lists and write them into the bundle; returns what was done, for the logs."""
    t0 = time.perf_counter()
    items, scores, reasons, spec = compute(bundle_dir, serving, ef_search, k, workers, chunk, spare)
    add_member_lists(bundle_dir, items, scores, reasons, spec)
    stored = int((items[:, 0] >= 0).sum())
    info = {
        "members": int(items.shape[0]),
        "stored": stored,
        "k": k,
        "spare": spare,
        "seconds": round(time.perf_counter() - t0, 1),
    }
    log.info("event=member_lists %s", " ".join(f"{key}={v}" for key, v in info.items()))
    return info
