"""Steps 2+4 together: events -> confidence matrix -> ALS -> serving-ready factors.

Reads: events (a split's training events or all events), the reference time for recency decay,
:class:`training.fit.AlsParams`, and the catalog's kinds and featured products.
Writes: a :class:`TrainedFactors`: the r_ui matrix it was fitted on, the fit result, member
factors with all-zero rows for members without events (serving falls back to popularity), and
item factors with untrained rows zeroed and fresh content filled by :mod:`training.coldstart`.
Used for the candidate, the champion's re-measurement, every tuning trial and the final refit,
so all of them are built exactly alike. The one switch between engines is here: ``spark`` given
(``training.engine = "spark"``), Spark MLlib fits the factors (:mod:`training.spark_als`);
otherwise implicit does (:mod:`training.fit`). Everything after the fit is the same code.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import scipy.sparse as sp

from recsvc.errors import DataContractError
from training.coldstart import NEW_PRODUCT_DAYS, fill_fresh_content, fill_new_products
from training.confidence import confidence_matrix
from training.fit import AlsParams, FitResult, fit_als, resolve_weighting
from training.prepare import DAY_S, EventArrays, Prepared

if TYPE_CHECKING:
    from training.spark_als import SparkAls


@dataclass
class TrainedFactors:
    matrix: sp.csr_matrix
    fit: FitResult
    member_factors: np.ndarray
    item_factors: np.ndarray
    fresh_content_filled: int


NEGLIGIBLE_NORM = 1e-6  # of the median trained vector's length


def _negligible(factors: np.ndarray, trained: np.ndarray) -> np.ndarray:
    """Rows whose vector is a rounding residue (length under NEGLIGIBLE_NORM of the median
    trained one): a member whose every item nobody else had fits to ~1e-12. Kept, such a vector
    counts as trained: serving gives the member a "personalized" list of ties, and the index's
    recall check samples members whose every score ties."""
    norms = np.linalg.norm(factors, axis=1)
    if not trained.any():
        return np.zeros(factors.shape[0], dtype=bool)
    return norms < NEGLIGIBLE_NORM * float(np.median(norms[trained]))


def train_factors(
    prepared: Prepared,
    events: EventArrays,
    as_of: int,
    params: AlsParams,
    *,
    num_threads: int = 0,
    track_loss: bool = False,
    on_iteration: Callable[[int, float], None] | None = None,
    on_model: Callable[[int, Any], None] | None = None,
    spark: SparkAls | None = None,
    init: tuple[np.ndarray, np.ndarray] | None = None,
    new_product_days: int = NEW_PRODUCT_DAYS,
) -> TrainedFactors:
    """``init``: (member, item) factors the implicit fit starts from (a warm start); Spark's ALS
    has no such input and starts afresh. ``new_product_days``: products without interactions
    published that recently start at their group's vector (``training.new_product_days``,
    training/coldstart.py)."""
    shape = (len(prepared.members), len(prepared.items))
    matrix = confidence_matrix(events, shape, params.event_weights, params.half_life_days, as_of)
    if matrix.nnz == 0 and len(events) and params.half_life_days > 0:
        # every weight underflowed: ALS would fit nothing, and a bundle of zero vectors serves
        # popularity under the name of a model
        days = (as_of - int(events.ts.max())) / DAY_S
        raise DataContractError(
            f"recency decay leaves no training interaction: the newest training event is {days:,.0f} "
            f"days before the cutoff, and with training.half_life_days = {params.half_life_days:g} "
            "its weight is below what a float can hold; raise training.half_life_days, set it to 0 "
            "(no decay), or train on a period with recent history"
        )
    params, _ = resolve_weighting(params, matrix)  # the engines take a decided weighting
    if spark is not None:
        # Spark builds r_ui from the events itself; ``matrix`` (the same values) stays the
        # bundle's history and decides which rows count as trained, as for implicit.
        fit = spark.fit(events, as_of, shape, params, on_iteration=on_iteration)
    else:
        fit = fit_als(
            matrix,
            params,
            num_threads=num_threads,
            track_loss=track_loss,
            on_iteration=on_iteration,
            on_model=on_model,
            init=init,
        )
    members_trained = np.diff(matrix.indptr) > 0
    items_trained = np.bincount(matrix.indices, minlength=shape[1]) > 0
    member_factors = fit.user_factors
    member_factors[~members_trained | _negligible(member_factors, members_trained)] = 0.0
    item_factors = fit.item_factors
    item_factors[~items_trained | _negligible(item_factors, items_trained)] = 0.0
    item_factors, _ = fill_new_products(
        item_factors,
        items_trained,
        prepared.item_kind,
        prepared.item_category,
        prepared.item_brand,
        prepared.item_published_at,
        as_of,
        new_product_days,
    )
    item_factors, filled = fill_fresh_content(
        item_factors, items_trained, prepared.item_kind, prepared.featured
    )
    return TrainedFactors(matrix, fit, member_factors, item_factors, filled)
