"""Each member's first products by the product index, for the bundle (``member_top_product``).

Serving starts a default-filter product recommendation (in stock only, purchases excluded) from
these rows instead of searching the index (recsvc/engine/recommender.py, ``_first_search``): the
same rows the search would give, minus the ones those filters drop, in the index's order. The
search is the bundle's own index with its own settings, so for an IVF or exact index the lists are
exactly what serving's search returns; serving recomputes the scores as exact inner products.

A member whose list comes out shorter than serving's MMR pool (many purchases or out-of-stock
products near the top) is searched live as before; a member without a trained vector gets no list
(all -1). Lists are built in chunks on all of ``threads`` cores: 49 s for 1M members x 100k
products on 2 cores, 4 bytes per candidate (96 per member: 384 MB at 1M members).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.sparse as sp

from recsvc.settings import TrainingSettings

# Searched beyond the list's length, so purchases and out-of-stock products near the top can be
# dropped and the list still fills: with 48 extra and N = 96, 0.01 % of the 891,627 members with a
# vector in the 1M x 100k bench bundle came out short of 96, none short of the default pool of 80.
SEARCH_EXTRA = 48
_ROW_BITS = 32  # (member, item row) packed as member << 32 | row for one vectorised membership test


def for_settings(
    indexes: dict[str, Any],
    member_factors: np.ndarray,
    purchased: sp.csr_matrix,
    in_stock: np.ndarray,
    t: TrainingSettings,
) -> np.ndarray | None:
    """``member_top_products`` as training settings ask (``member_candidates`` per member, on
    ``num_threads`` cores) over the product index of ``indexes``; None when they ask for none or
    there is no product index."""
    if not t.member_candidates or "product" not in indexes:
        return None
    return member_top_products(
        indexes["product"],
        member_factors,
        purchased,
        in_stock,
        t.member_candidates,
        threads=t.num_threads or None,
    )


def member_top_products(
    index: Any,
    member_factors: np.ndarray,
    purchased: sp.csr_matrix,
    item_ok: np.ndarray,
    length: int,
    chunk: int = 20_000,
    threads: int | None = None,
) -> np.ndarray:
    """int32 [members, length]: per member the first ``length`` item rows ``index`` returns for
    the member's vector that ``item_ok`` (bool by item row: in stock) allows and the member did not
    buy (``purchased``, CSR members x items), best first; -1 pads short lists and members whose
    vector is all zero."""
    import faiss

    n_members = member_factors.shape[0]
    out = np.full((n_members, length), -1, dtype=np.int32)
    if n_members == 0 or length <= 0 or index.ntotal == 0:
        return out
    purchased = purchased.tocsr()
    k = min(length + SEARCH_EXTRA, int(index.ntotal))
    before = faiss.omp_get_max_threads()
    if threads is not None:
        faiss.omp_set_num_threads(threads)
    try:
        for start in range(0, n_members, chunk):
            stop = min(n_members, start + chunk)
            q = np.ascontiguousarray(member_factors[start:stop], dtype=np.float32)
            _, ids = index.search(q, k)
            out[start:stop] = _kept_first(ids, start, purchased, item_ok, length)
            out[start:stop][~q.any(axis=1)] = -1
    finally:
        faiss.omp_set_num_threads(before)
    return out


def _kept_first(
    ids: np.ndarray, start: int, purchased: sp.csr_matrix, item_ok: np.ndarray, length: int
) -> np.ndarray:
    """Per query row of ``ids`` (members ``start``...), the first ``length`` ids that are real
    (>= 0), allowed by ``item_ok`` and not bought; -1 pads."""
    n, k = ids.shape
    valid = ids >= 0
    safe = np.where(valid, ids, 0)
    keep = valid & np.asarray(item_ok, dtype=bool)[safe]
    members = np.arange(start, start + n, dtype=np.int64)
    lo, hi = purchased.indptr[start], purchased.indptr[start + n]
    bought = (
        np.repeat(members, np.diff(purchased.indptr[start : start + n + 1])) << _ROW_BITS
    ) | purchased.indices[lo:hi].astype(np.int64)
    if bought.shape[0]:
        keys = (np.repeat(members, k) << _ROW_BITS) | safe.reshape(-1).astype(np.int64)
        keep &= ~np.isin(keys, bought).reshape(n, k)
    rank = np.cumsum(keep, axis=1) - 1
    take = keep & (rank < length)
    r, c = np.nonzero(take)
    out = np.full((n, length), -1, dtype=np.int32)
    out[r, rank[r, c]] = ids[r, c]
    return out
