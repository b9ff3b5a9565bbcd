"""Content cold start: fresh content (no interactions) gets a vector from the products it features.

Reads: fitted item factors, which item rows had training interactions, item kinds and the
content -> featured products matrix from :mod:`training.prepare`.
Writes: a copy of the item factors where each untrained content row is the mean of its featured
products' factors, rescaled to the mean norm of trained content vectors (so fresh posts score on
the same scale as content members already interacted with). Content featuring no trained product
keeps a zero vector: serving cannot rank it personally and falls back to popularity.
"""

from __future__ import annotations

import logging

import numpy as np
import scipy.sparse as sp

from recsvc.bundle import KIND_CONTENT, KIND_PRODUCT

log = logging.getLogger(__name__)
DAY_S = 86_400
NEW_PRODUCT_DAYS = 30  # training.new_product_days' default


def fill_new_products(
    item_factors: np.ndarray,
    trained: np.ndarray,
    item_kind: np.ndarray,
    item_category: np.ndarray,
    item_brand: np.ndarray,
    item_published_at: np.ndarray,
    as_of: int,
    days: int,
) -> tuple[np.ndarray, int]:
    """Products without interactions published in the ``days`` before ``as_of`` or later (a
    launch, a scheduled item) start at their group's best sellers' vector (same category and
    brand, else category; ``recsvc.catalog.view.GroupMeans`` with ``best_sellers``).
    Without it a product launched last week, recommended since its creation, would lose its
    vector at the next retrain. Older products without interactions keep a zero vector: no one
    wanted them, and a seller's vector would push a long tail of them into every list.
    Returns (factors, number of rows filled)."""
    published = np.asarray(item_published_at, dtype=np.int64)
    new = (item_kind == KIND_PRODUCT) & ~trained & (published > 0) & (published >= as_of - days * DAY_S)
    if days <= 0 or not new.any() or not trained.any():
        return item_factors, 0
    from recsvc.catalog.view import GroupMeans

    means = GroupMeans(item_factors, item_kind, item_category, item_brand, trained, best_sellers=True)
    factors = np.array(item_factors, dtype=np.float32, copy=True)
    filled = 0
    for row in np.flatnonzero(new).tolist():
        cat = int(item_category[row])
        vec = means.vector(KIND_PRODUCT, cat if cat >= 0 else None, int(item_brand[row]))
        if vec is not None:
            factors[row] = vec
            filled += 1
    log.info("new products=%d filled_from_group=%d", int(new.sum()), filled)
    return factors, filled


def fill_fresh_content(
    item_factors: np.ndarray, trained: np.ndarray, item_kind: np.ndarray, featured: sp.csr_matrix
) -> tuple[np.ndarray, int]:
    """Return (factors with fresh content filled, number of rows filled)."""
    factors = np.array(item_factors, dtype=np.float32, copy=True)
    fresh = (item_kind == KIND_CONTENT) & ~trained
    if not fresh.any():
        return factors, 0
    # only trained products contribute: an untrained product's vector is ~0 and would dilute
    links = sp.csr_matrix(featured[fresh]) @ sp.diags(trained.astype(np.float32))
    links = sp.csr_matrix(links)
    links.eliminate_zeros()
    n_links = np.asarray(links.sum(axis=1)).ravel()
    means = np.asarray(links @ factors) / np.maximum(n_links, 1)[:, None]
    trained_content = (item_kind == KIND_CONTENT) & trained
    if trained_content.any():
        target = float(np.linalg.norm(factors[trained_content], axis=1).mean())
    else:
        target = float(np.linalg.norm(factors[trained], axis=1).mean()) if trained.any() else 1.0
    norms = np.linalg.norm(means, axis=1)
    scale = np.where(norms > 0, target / np.maximum(norms, 1e-12), 0.0)
    fresh_rows = np.flatnonzero(fresh)
    factors[fresh_rows] = (means * scale[:, None]).astype(np.float32)
    filled = int((n_links > 0).sum())
    log.info("fresh content=%d filled_from_featured=%d", fresh_rows.size, filled)
    return factors, filled
