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

from recsvc.bundle import KIND_CONTENT

log = logging.getLogger(__name__)


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
