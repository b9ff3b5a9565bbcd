"""Step 6: one FAISS inner-product index per item kind, and its recall against exact search.

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
from typing import Any

import numpy as np

from recsvc.bundle import KIND_NAMES

log = logging.getLogger(__name__)


def _recall(found: np.ndarray, exact: np.ndarray) -> float:
    hits = 0
    total = 0
    for f, e in zip(found, exact, strict=True):
        e = e[e >= 0]
        hits += np.intersect1d(f[f >= 0], e).size
        total += e.size
    return hits / total if total else 1.0


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
) -> tuple[Any, dict[str, Any]]:
    import faiss

    d = int(vectors.shape[1])
    xb = np.ascontiguousarray(vectors, dtype=np.float32)
    ids = rows.astype(np.int64)
    if rows.size < exact_below:
        index = faiss.IndexIDMap(faiss.IndexFlatIP(d))
        index.add_with_ids(xb, ids)
        return index, {"type": "flat_ip", "size": int(rows.size), "recall_at_k": 1.0, "k": k}
    hnsw = faiss.IndexHNSWFlat(d, m, faiss.METRIC_INNER_PRODUCT)
    hnsw.hnsw.efConstruction = ef_construction
    index = faiss.IndexIDMap(hnsw)
    index.add_with_ids(xb, ids)
    info: dict[str, Any] = {"type": "hnsw_ip", "size": int(rows.size), "m": m, "k": k}
    if queries.shape[0] == 0:
        hnsw.hnsw.efSearch = ef_search
        info.update(ef_search=ef_search, recall_at_k=float("nan"))
        return index, info
    exact = faiss.IndexIDMap(faiss.IndexFlatIP(d))
    exact.add_with_ids(xb, ids)
    q = np.ascontiguousarray(queries, dtype=np.float32)
    kk = min(k, rows.size)
    _, truth = exact.search(q, kk)
    ef = ef_search
    while True:
        hnsw.hnsw.efSearch = ef
        _, found = index.search(q, kk)
        recall = _recall(found, truth)
        log.info("ann recall size=%d ef_search=%d recall_at_%d=%.4f", rows.size, ef, kk, recall)
        if recall >= target_recall or ef >= max_ef_search:
            break
        ef = min(ef * 2, max_ef_search)
    if recall < target_recall:
        log.warning("ann recall %.3f below target %.2f at ef_search=%d", recall, target_recall, ef)
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
        )
    return indexes, info


def query_sample(member_factors: np.ndarray, n: int, seed: int) -> np.ndarray:
    trained = np.flatnonzero(np.abs(member_factors).sum(axis=1) > 0)
    if trained.size > n:
        trained = np.random.default_rng(seed).choice(trained, size=n, replace=False)
    return member_factors[trained]
