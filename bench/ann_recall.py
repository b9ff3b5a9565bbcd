"""ANN index costs of a bundle, per item kind: recall@k of its FAISS index against exact
inner-product search, and the time of one search, bare and as serving calls it.

- Queries are trained members (non-zero factors) that are *not* in the sample training tuned
  nprobe / efSearch on (``training.ann.query_sample``: ``ann_queries`` members drawn with
  ``random_state``), so the recall is not the tuning figure again. A bundle so small that every
  trained member was in the tuning sample falls back to all trained members (``held_out`` False).
- Recall: the index's top ``k`` against the exact top ``k`` by inner product over the kind's items
  with a vector (the items the index holds), as ``training.ann`` measures it.
- Time: single-vector searches of ``n`` results, one OpenMP thread, best of ``repeats`` passes over
  all queries, for the index alone and for ``ServedModel.search`` (the serving call: ids and scores
  as inner products; an augmented index's L2 distances are turned back into them).

The indexes are the ones ``ServedModel`` loads and tunes (HNSW efSearch raised to
``hnsw_ef_search``, as servers do), so the figures are what serving gets.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from recsvc.bundle import INDEX_L2_AUGMENTED, KIND_NAMES


@dataclass(frozen=True)
class AnnRow:
    bundle: str  # folder name
    kind: str  # product / content
    index_type: str  # ivf_flat_l2_augmented, ivf_flat_ip, hnsw_ip, flat_ip
    items: int  # vectors in the index
    nlist: int | None  # IVF cells
    nprobe: int | None  # IVF cells searched
    ef_search: int | None  # HNSW
    k: int
    recall_at_k: float  # against exact inner-product search
    n: int  # results per timed search
    index_ms: float  # one index.search of one vector
    served_ms: float  # one ServedModel.search of one vector
    queries: int
    held_out: bool  # the queries are outside the tuning sample

    @property
    def effort(self) -> str:
        if self.nprobe is not None:
            return f"nprobe {self.nprobe}"
        if self.ef_search is not None:
            return f"efSearch {self.ef_search}"
        return "exact"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def markdown_row(self) -> str:
        nlist = "" if self.nlist is None else str(self.nlist)
        return (
            f"| {self.bundle} | {self.kind} | `{self.index_type}` | {self.items:,} | {nlist} | "
            f"{self.effort} | {self.recall_at_k:.4f} | {self.index_ms:.3f} | {self.served_ms:.3f} |"
        )


MARKDOWN_HEADER = (
    "| bundle | kind | index | items | nlist | search effort | recall@k | index ms/query | "
    "ServedModel.search ms/query |\n"
    "|---|---|---|---:|---:|---|---:|---:|---:|"
)


def markdown(rows: list[AnnRow], repeats: int = 3) -> str:
    """The table (recall@k and the result count spelled out), and how it was measured."""
    if not rows:
        return "no bundle has an ANN index"
    k, n = rows[0].k, rows[0].n
    header = MARKDOWN_HEADER.replace("recall@k", f"recall@{k}")
    lines = [header, *(r.markdown_row() for r in rows), ""]
    queries = ", ".join(sorted({f"{r.queries:,}" for r in rows}))
    lines.append(
        f"recall@{k} against exact inner-product search over {queries} trained members outside "
        f"the tuning sample; ms per single-vector search of {n} results, 1 OMP thread, best of {repeats}."
    )
    fallback = sorted({r.bundle for r in rows if not r.held_out})
    if fallback:
        lines.append(
            f"{', '.join(fallback)}: every trained member was in the tuning sample; "
            "all trained members were used."
        )
    return "\n".join(lines)


def _trained_rows(member_factors: np.ndarray, chunk: int = 65536) -> np.ndarray:
    """Rows with a non-zero vector, read in chunks (the array is memory-mapped)."""
    out = [
        lo + np.flatnonzero(np.abs(np.asarray(member_factors[lo : lo + chunk])).sum(axis=1) > 0)
        for lo in range(0, member_factors.shape[0], chunk)
    ]
    return np.concatenate(out) if out else np.zeros(0, dtype=np.int64)


def query_rows(
    member_factors: np.ndarray, queries: int, seed: int, tuning_queries: int, tuning_seed: int
) -> tuple[np.ndarray, bool]:
    """Up to ``queries`` trained member rows outside the tuning sample (drawn as
    ``training.ann.query_sample`` draws it), sorted; and whether they are outside it."""
    trained = _trained_rows(member_factors)
    tuning = trained
    if trained.size > tuning_queries:
        tuning = np.random.default_rng(tuning_seed).choice(trained, size=tuning_queries, replace=False)
    pool = np.setdiff1d(trained, tuning)
    held_out = pool.size > 0
    if not held_out:
        pool = trained
    if pool.size > queries:
        pool = np.random.default_rng(seed).choice(pool, size=queries, replace=False)
    return np.sort(pool), held_out


def _exact_top(items: np.ndarray, ids: np.ndarray, q: np.ndarray, k: int, batch: int = 256) -> np.ndarray:
    """Ids of the top ``k`` items by inner product for every query, in query batches."""
    out = np.empty((q.shape[0], k), dtype=np.int64)
    for lo in range(0, q.shape[0], batch):
        ip = q[lo : lo + batch] @ items.T
        out[lo : lo + batch] = ids[np.argpartition(-ip, k - 1, axis=1)[:, :k]]
    return out


def _recall(found: np.ndarray, exact: np.ndarray) -> float:
    hits = sum(np.intersect1d(f[f >= 0], e).size for f, e in zip(found, exact, strict=True))
    return hits / exact.size if exact.size else 1.0


def _best_ms(call: Callable[[np.ndarray], object], vectors: list[np.ndarray], repeats: int) -> float:
    best = float("inf")
    clock = time.perf_counter
    for _ in range(repeats):
        t0 = clock()
        for v in vectors:
            call(v)
        best = min(best, (clock() - t0) / len(vectors) * 1e3)
    return best


def _describe(index: Any, manifest_type: str | None) -> tuple[str, int | None, int | None, int | None]:
    """Type, nlist, nprobe and efSearch of a loaded index (the type as the manifest names it)."""
    import faiss

    try:
        ivf = faiss.extract_index_ivf(index)
    except RuntimeError:
        ivf = None
    if ivf is not None:
        inferred = INDEX_L2_AUGMENTED if ivf.metric_type == faiss.METRIC_L2 else "ivf_flat_ip"
        return manifest_type or inferred, int(ivf.nlist), int(ivf.nprobe), None
    inner = faiss.downcast_index(index.index) if hasattr(index, "index") else index
    if hasattr(inner, "hnsw"):
        return manifest_type or "hnsw_ip", None, None, int(inner.hnsw.efSearch)
    return manifest_type or "flat_ip", None, None, None


def ann_costs(
    bundle: Path,
    queries: int = 3000,
    seed: int = 12345,
    k: int = 20,
    n: int = 100,
    *,
    repeats: int = 3,
    tuning_queries: int = 2000,
    tuning_seed: int = 42,
    hnsw_ef_search: int = 128,
) -> list[AnnRow]:
    """One row per item kind that has an index. ``tuning_queries`` / ``tuning_seed`` are
    ``training.ann_queries`` / ``training.random_state`` of the run that built the index."""
    import faiss

    from recsvc.engine.served_model import ServedModel

    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        model = ServedModel.load(
            bundle, version="bench", source_uri=str(bundle), hnsw_ef_search=hnsw_ef_search
        )
        rows, held_out = query_rows(model.member_factors, queries, seed, tuning_queries, tuning_seed)
        q = np.ascontiguousarray(model.member_factors[rows], dtype=np.float32)
        singles = [q[i : i + 1] for i in range(q.shape[0])]  # what index.search takes
        vectors = [model.member_vector(int(r)) for r in rows]  # what the engine passes
        item_factors = np.asarray(model.item_factors, dtype=np.float32)
        nonzero = np.abs(item_factors).sum(axis=1) > 0
        index_info = model.manifest.index or {}
        out = []
        for code, name in KIND_NAMES.items():
            index = model.indexes.get(code)
            ids = np.flatnonzero((np.asarray(model.item_kind) == code) & nonzero)
            if index is None or ids.size == 0 or q.shape[0] == 0:
                continue
            kk = min(k, ids.size)
            truth = _exact_top(item_factors[ids], ids, q, kk)
            _, found = index.search(q, kk)
            recall = _recall(np.asarray(found), truth)
            index_type, nlist, nprobe, ef_search = _describe(index, (index_info.get(name) or {}).get("type"))
            nn = min(n, int(index.ntotal))
            index_ms = _best_ms(lambda v: index.search(v, nn), singles, repeats)  # noqa: B023
            served_ms = _best_ms(lambda v: model.search(v, code, n), vectors, repeats)  # noqa: B023
            out.append(
                AnnRow(
                    bundle=bundle.name,
                    kind=name,
                    index_type=index_type,
                    items=int(index.ntotal),
                    nlist=nlist,
                    nprobe=nprobe,
                    ef_search=ef_search,
                    k=kk,
                    recall_at_k=recall,
                    n=n,
                    index_ms=index_ms,
                    served_ms=served_ms,
                    queries=int(q.shape[0]),
                    held_out=held_out,
                )
            )
        return out
    finally:
        faiss.omp_set_num_threads(threads)
