"""Step 6: one FAISS index per item kind that ranks items by inner product, and its recall
against exact search.

Default index (``training.ann_index = "ivf_mips"``): IVF-Flat with L2 distance over
norm-augmented item vectors. ALS item norms span orders of magnitude, so maximum-inner-product
search (MIPS) is not a nearest-neighbour problem: the best items for a query are long vectors far
from it, and k-means cells built for inner product need many probes (IVF-IP needed nprobe 36 of
315 cells at 1M members x 64 factors). The augmentation reduces MIPS to nearest-neighbour search
(Bachrach et al. 2014, "Speeding up the Xbox recommender system using a Euclidean transformation
for inner-product spaces"): every item vector x gets the extra coordinate sqrt(M^2 - ||x||^2),
M the largest item norm of its kind, so all items lie on a sphere of radius M; queries get 0.
Then ||q - x'||^2 = ||q||^2 + M^2 - 2 q.x, and L2 order equals inner-product order exactly. At
1M x 64 factors this halved the search time at the same recall (docs/benchmarks.md). The index
is stored self-describing: ``IndexPreTransform(RemapDimensionsTransform(d, d + 1), IVF-L2)``
appends the 0 to plain d-dimensional queries, so callers search it like any other index. It
returns L2 distances, not inner products: serving recomputes the scores
(``ServedModel.search``).

``"ivf"`` selects IVF-Flat with inner product directly (the previous default); ``"hnsw"`` an
inner-product HNSW graph, which on ALS factors stayed below 0.95 recall even at efSearch 2048
while costing more per query than exact search (measured on 95k products; docs/benchmarks.md).

Reads: item factors, item kinds, query vectors (a sample of trained member factors: what serving
searches with) and the HNSW settings.
Writes: ``{"product": index, "content": index}`` whose ids are item rows, plus an info dict for
``Manifest.index``: per kind the index type, size, nlist/nprobe (or efSearch), the max norm of the
augmentation, and the measured recall@k against exact search. Kinds with fewer than
``exact_index_below`` items get an exact ``IndexFlatIP`` (recall 1 by construction). nprobe
(efSearch for HNSW) is tuned by ``_tune`` until recall reaches ``target_recall``; the chosen value
is stored in the index file and the manifest.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import numpy as np

from recsvc.bundle import INDEX_FLAT, INDEX_L2_AUGMENTED, KIND_NAMES
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


def mips_nlist(n: int) -> int:
    """Cells for the norm-augmented IVF: 4 sqrt(n) (at 100k products, 4 sqrt(n) = 1260 cells beat
    2 sqrt(n) and matched 8 sqrt(n); docs/benchmarks.md), at least 16, but at most n / 39 so that
    k-means has the 39 points per centroid FAISS asks for (small kinds get fewer cells)."""
    return int(max(1, min(max(16, int(4 * np.sqrt(n))), n // 39, 65536)))


def augment(vectors: np.ndarray) -> tuple[np.ndarray, float]:
    """``vectors`` with the coordinate sqrt(M^2 - ||x||^2) appended (M: the largest norm), and M.

    All augmented vectors have norm M, so for a query q with 0 appended,
    ||q - x'||^2 = ||q||^2 + M^2 - 2 q.x: L2 order is inner-product order.
    """
    x = np.asarray(vectors, dtype=np.float64)
    sq = np.einsum("ij,ij->i", x, x)
    max_sq = float(sq.max()) if sq.size else 0.0
    extra = np.sqrt(np.maximum(max_sq - sq, 0.0))
    out = np.ascontiguousarray(np.hstack([x, extra[:, None]]), dtype=np.float32)
    return out, float(np.sqrt(max_sq))


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
    method: str = "ivf_mips",
) -> tuple[Any, dict[str, Any]]:
    import faiss

    d = int(vectors.shape[1])
    xb = np.ascontiguousarray(vectors, dtype=np.float32)
    ids = rows.astype(np.int64)
    index: Any
    if rows.size < exact_below:
        index = faiss.IndexIDMap(faiss.IndexFlatIP(d))
        index.add_with_ids(xb, ids)
        return index, {"type": INDEX_FLAT, "size": int(rows.size), "recall_at_k": 1.0, "k": k}
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
    if method in ("ivf", "ivf_mips"):
        if method == "ivf":
            # sqrt(n) cells: the usual balance between cell scan and list scan cost.
            nlist = int(max(16, min(65536, round(np.sqrt(rows.size)))))
            index = faiss.index_factory(d, f"IVF{nlist},Flat", faiss.METRIC_INNER_PRODUCT)
            index.train(xb)
            index.add_with_ids(xb, ids)
            info.update(type="ivf_flat_ip", nlist=nlist)
        else:
            nlist = mips_nlist(rows.size)
            xa, max_norm = augment(xb)
            inner = faiss.index_factory(d + 1, f"IVF{nlist},Flat", faiss.METRIC_L2)
            inner.train(xa)
            inner.add_with_ids(xa, ids)  # the IVF keeps the ids: item rows
            # Queries are d-dimensional: the transform appends the 0 coordinate (uniform=False maps
            # input dimension i to output i; the stub only knows the explicit-map signature).
            remap = faiss.RemapDimensionsTransform(d, d + 1, False)  # type: ignore[arg-type]
            index = faiss.IndexPreTransform(remap, inner)
            info.update(type=INDEX_L2_AUGMENTED, nlist=nlist, max_norm=max_norm)
        ivf = faiss.extract_index_ivf(index)

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
    if method != "hnsw":
        raise ValueError(f"unknown ANN index method {method!r}: ivf_mips, ivf or hnsw")
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
    method: str = "ivf_mips",
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
