"""Step 6: one FAISS inner-product index per item kind, and its recall against exact search.

Default index: IVF-Flat with inner product, ``nprobe`` doubled until the measured recall@k against
exact search reaches ``target_recall``. ALS item norms span orders of magnitude, and on such
factors an inner-product HNSW graph stayed below 0.95 recall even at efSearch 2048 while costing
more per query than exact search (measured on 95k products; docs/benchmarks.md); HNSW remains
available with ``training.ann_index = "hnsw"``.

Reads: item factors, item kinds, query vectors (a sample of trained member factors: what serving
searches with) and the HNSW settings.
Writes: ``{"product": index, "content": index}`` whose ids are item rows (``IndexIDMap``), plus
an info dict for ``Manifest.index``: per kind the index type, size, efSearch and measured
recall@k against exact search. Kinds with fewer than ``exact_index_below`` items get an exact
``IndexFlatIP`` (recall 1 by construction). For HNSW, efSearch starts at the configured value
and doubles until recall reaches ``target_recall`` (or ``max_ef_search``); the chosen efSearch is
stored in the index file and the manifest.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import numpy as np

from recsvc.bundle import KIND_NAMES
from recsvc.settings import TrainingSettings

log = logging.getLogger(__name__)


def _recall(found: np.ndarray, exact: np.ndarray) -> float:
    hits = 0
    total = 0
    for f, e in zip(found, exact, strict=True):
        e = e[e >= 0]
        hits += np.intersect1d(f[f >= 0], e).size
        total += e.size
    return hits / total if total else 1.0


def _tune(
    search: Callable[[], np.ndarray],
    set_param: Callable[[int], None],
    start: int,
    stop: int,
    truth: np.ndarray,
    target_recall: float,
    what: str,
    size: int,
) -> tuple[int, float]:
    """The smallest search-effort value (nprobe / efSearch) whose recall reaches the target.

    Doubles from ``start`` until the target or ``stop`` is reached, then bisects between the last
    value that missed and the first that met it: search cost grows with the value, and doubling
    alone can overshoot by up to 2x (at 1M members x 64 factors, nprobe 32 gave 0.9475 and 64
    gave 0.979). Recall grows with the value, so the bisection keeps the target met.
    """
    measured: dict[int, float] = {}

    def recall_at(v: int) -> float:
        if v not in measured:
            set_param(v)
            measured[v] = _recall(search(), truth)
            log.info("ann recall size=%d %s=%d recall=%.4f", size, what, v, measured[v])
        return measured[v]

    low, value = 0, start  # low: the largest value known to miss the target (0 = none)
    while recall_at(value) < target_recall and value < stop:
        low, value = value, min(value * 2, stop)
    if recall_at(value) >= target_recall:
        while value - low > max(1, value // 16):  # to within ~6 % of the smallest value
            mid = (low + value) // 2
            if recall_at(mid) >= target_recall:
                value = mid
            else:
                low = mid
    recall = recall_at(value)
    set_param(value)
    if recall < target_recall:
        log.warning("ann recall %.3f below target %.2f at %s=%d", recall, target_recall, what, value)
    return value, recall


def build_index(
    vectors: np.ndarray,
    rows: np.ndarray,
    queries: np.ndarray,
    *,
    exact_below: int,
    m: int,
    ef_construction: int,
    ef_search: int,
    k: int,
    target_recall: float,
    max_ef_search: int,
    method: str = "ivf",
) -> tuple[Any, dict[str, Any]]:
    import faiss

    d = int(vectors.shape[1])
    xb = np.ascontiguousarray(vectors, dtype=np.float32)
    ids = rows.astype(np.int64)
    index: Any
    if rows.size < exact_below:
        index = faiss.IndexIDMap(faiss.IndexFlatIP(d))
        index.add_with_ids(xb, ids)
        return index, {"type": "flat_ip", "size": int(rows.size), "recall_at_k": 1.0, "k": k}
    q = np.ascontiguousarray(queries, dtype=np.float32)
    kk = min(k, rows.size)
    truth = np.zeros((0, kk), dtype=np.int64)
    if q.shape[0]:
        exact = faiss.IndexIDMap(faiss.IndexFlatIP(d))
        exact.add_with_ids(xb, ids)
        _, truth = exact.search(q, kk)

    def search_ids() -> np.ndarray:
        return np.asarray(index.search(q, kk)[1])

    info: dict[str, Any] = {"size": int(rows.size), "k": k}
    if method == "ivf":
        # sqrt(n) cells: the usual balance between cell scan and list scan cost.
        nlist = int(max(16, min(65536, round(np.sqrt(rows.size)))))
        index = faiss.index_factory(d, f"IVF{nlist},Flat", faiss.METRIC_INNER_PRODUCT)
        index.train(xb)
        index.add_with_ids(xb, ids)
        ivf = faiss.extract_index_ivf(index)
        info.update(type="ivf_flat_ip", nlist=nlist)

        def set_nprobe(v: int) -> None:
            ivf.nprobe = v

        if q.shape[0] == 0:
            set_nprobe(min(nlist, 32))
            info.update(nprobe=ivf.nprobe, recall_at_k=float("nan"))
            return index, info
        nprobe, recall = _tune(
            search_ids, set_nprobe, min(8, nlist), nlist, truth, target_recall, "nprobe", rows.size
        )
        info.update(nprobe=nprobe, recall_at_k=float(recall))
        return index, info
    hnsw = faiss.IndexHNSWFlat(d, m, faiss.METRIC_INNER_PRODUCT)
    hnsw.hnsw.efConstruction = ef_construction
    index = faiss.IndexIDMap(hnsw)
    index.add_with_ids(xb, ids)
    info.update(type="hnsw_ip", m=m)

    def set_ef(v: int) -> None:
        hnsw.hnsw.efSearch = v

    if q.shape[0] == 0:
        set_ef(ef_search)
        info.update(ef_search=ef_search, recall_at_k=float("nan"))
        return index, info
    ef, recall = _tune(
        search_ids, set_ef, ef_search, max_ef_search, truth, target_recall, "ef_search", rows.size
    )
    info.update(ef_search=ef, recall_at_k=float(recall))
    return index, info


def build_indexes(
    item_factors: np.ndarray,
    item_kind: np.ndarray,
    queries: np.ndarray,
    *,
    exact_below: int,
    m: int,
    ef_construction: int,
    ef_search: int,
    k: int = 20,
    target_recall: float = 0.95,
    max_ef_search: int = 2048,
    method: str = "ivf",
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Indexes by kind name over the item rows that have a non-zero vector."""
    indexes: dict[str, Any] = {}
    info: dict[str, Any] = {"metric": "inner_product", "ids": "item_rows", "target_recall": target_recall}
    nonzero = np.abs(item_factors).sum(axis=1) > 0
    for code, name in KIND_NAMES.items():
        rows = np.flatnonzero((item_kind == code) & nonzero)
        if rows.size == 0:
            log.warning("no %s item has a vector: no %s index", name, name)
            continue
        indexes[name], info[name] = build_index(
            item_factors[rows],
            rows,
            queries,
            exact_below=exact_below,
            m=m,
            ef_construction=ef_construction,
            ef_search=ef_search,
            k=k,
            target_recall=target_recall,
            max_ef_search=max_ef_search,
            method=method,
        )
    return indexes, info


def query_sample(member_factors: np.ndarray, n: int, seed: int) -> np.ndarray:
    trained = np.flatnonzero(np.abs(member_factors).sum(axis=1) > 0)
    if trained.size > n:
        trained = np.random.default_rng(seed).choice(trained, size=n, replace=False)
    return member_factors[trained]


def indexes_for(
    item_factors: np.ndarray, item_kind: np.ndarray, member_factors: np.ndarray, t: TrainingSettings
) -> tuple[dict[str, Any], dict[str, Any]]:
    """``build_indexes`` as training settings ask: queries sampled from the trained members,
    tuned to ``ann_target_recall`` + ``ann_recall_margin``."""
    return build_indexes(
        item_factors,
        item_kind,
        query_sample(member_factors, t.ann_queries, t.random_state),
        exact_below=t.exact_index_below,
        m=t.hnsw_m,
        ef_construction=t.hnsw_ef_construction,
        ef_search=t.hnsw_ef_search,
        target_recall=min(1.0, t.ann_target_recall + t.ann_recall_margin),
        max_ef_search=t.ann_max_ef_search,
        method=t.ann_index,
    )
