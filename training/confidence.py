"""Step 2: the member x item confidence matrix and the purchases matrix.

Reads: :class:`training.prepare.EventArrays` (a subset chosen by the holdout step), the event
weights and the recency half-life.
Writes: ``r_ui = sum over events of event_weight[type] * 0.5 ** (age_days / half_life_days)``
as a float32 CSR matrix [members x items] (half-life 0: no decay; implicit then fits
``C = alpha * r`` on the observed pairs against 1 on the others, so alpha scales every weight
alike, and a decayed pair with ``alpha * r < 1`` counts less than an unobserved one), and a
binary CSR of purchases. Serving recomputes member vectors from the same formula, so it lives
here once.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import scipy.sparse as sp

from recsvc.settings import EVENT_TYPES
from training.prepare import DAY_S, PURCHASE_CODE, EventArrays


def weight_table(event_weights: Mapping[str, float]) -> np.ndarray:
    """Weights indexed by event-type code; types missing from the mapping weigh 0."""
    return np.array([float(event_weights.get(t, 0.0)) for t in EVENT_TYPES], dtype=np.float64)


def event_confidence(
    events: EventArrays, event_weights: Mapping[str, float], half_life_days: float, as_of: int
) -> np.ndarray:
    """Per-event contribution to r_ui (float32); events after ``as_of`` count as age 0.
    ``half_life_days`` 0 means no decay: on data whose time order carries no signal, decay only
    throws information away."""
    if half_life_days <= 0:
        return weight_table(event_weights).astype(np.float32)[events.etype]
    # float32 in place: at 50M events every float64 temporary is 400 MB; a float32 age in
    # half-lives is exact to well under a second over years of history
    half_lives = np.maximum(as_of - events.ts, 0).astype(np.float32)
    half_lives *= np.float32(1.0 / (DAY_S * half_life_days))
    np.negative(half_lives, out=half_lives)
    np.exp2(half_lives, out=half_lives)
    half_lives *= weight_table(event_weights).astype(np.float32)[events.etype]
    return half_lives


def confidence_matrix(
    events: EventArrays,
    shape: tuple[int, int],
    event_weights: Mapping[str, float],
    half_life_days: float,
    as_of: int,
) -> sp.csr_matrix:
    """r_ui summed over events (duplicates summed by scipy), zero-weight entries dropped."""
    values = event_confidence(events, event_weights, half_life_days, as_of)
    keep = values > 0
    m = sp.csr_matrix((values[keep], (events.member[keep], events.item[keep])), shape=shape, dtype=np.float32)
    m.sum_duplicates()
    m.eliminate_zeros()
    m.sort_indices()
    return m


def purchased_matrix(events: EventArrays, shape: tuple[int, int]) -> sp.csr_matrix:
    """1 where the member bought the item at least once in ``events``."""
    bought = events.etype == PURCHASE_CODE
    m = sp.csr_matrix(
        (np.ones(int(bought.sum()), dtype=np.float32), (events.member[bought], events.item[bought])),
        shape=shape,
    )
    m.sum_duplicates()
    m.data[:] = 1.0
    m.sort_indices()
    return m
