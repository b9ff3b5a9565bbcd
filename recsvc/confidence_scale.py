"""How a member's summed event weight for an item, r_ui, becomes the ALS confidence.

``linear``: ``C = alpha * r`` (implicit's own form). ``log``: ``C = alpha * log(1 + r)`` (Hu,
Koren and Volinsky's logarithmic scaling, 2008): the tenth view of a product adds far less than
the first, so a member who browses one item over and over does not pull the model towards it
as if each view were a separate taste. Training applies it to r_ui before the fit and serving to
a member's r (trained history decayed to now plus recent events) before folding them in, so both
sides stay one formula. docs/training.md, "Model", has the measurements behind the default.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from recsvc.settings import ConfidenceScale

# what bundles that record no scale were trained with
BUNDLE_DEFAULT: ConfidenceScale = "linear"


def scaled(r: np.ndarray, scale: str) -> np.ndarray:
    """``r`` (summed weights, float32) on ``scale``; ``r`` itself when linear. A negative r
    keeps its sign (a confident 0 in the solve), scaled by its size."""
    if scale == "linear":
        return r
    if scale == "log":
        return (np.sign(r) * np.log1p(np.abs(r))).astype(np.float32)
    raise ValueError(f"unknown confidence scale {scale!r}; expected linear or log")


def scaled_matrix(matrix: sp.csr_matrix, scale: str) -> sp.csr_matrix:
    """A CSR r_ui matrix on ``scale`` (a copy unless linear); the same pattern of entries."""
    if scale == "linear":
        return matrix
    out = matrix.copy()
    out.data = scaled(out.data, scale)
    return out
