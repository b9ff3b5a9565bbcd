"""Step 7: put the pieces together as ``recsvc.bundle.BundleContents`` and write the bundle.

Reads: :class:`training.prepare.Prepared` (id maps, catalog attributes), the bundle's member and
item factors, its confidence (history) and purchases matrices, segments, popularity tables,
FAISS indexes and everything the manifest records.
Writes: a bundle folder through ``recsvc.bundle.write_bundle`` (format: docs/bundle.md).
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from recsvc.bundle import (
    LIFECYCLE_STAGES,
    SCHEMA_VERSION,
    BundleContents,
    Manifest,
    ReplenishSpec,
    write_bundle,
)
from recsvc.confidence_scale import Bm25
from training.fit import AlsParams, resolve_weighting
from training.prepare import Prepared
from training.replenish import Learned


def new_bundle_id(prepared: Prepared) -> str:
    cutoff = datetime.fromtimestamp(prepared.cutoff, UTC).strftime("%Y%m%dT%H%M%S")
    return f"{cutoff}-{prepared.fingerprint[:8]}-{uuid.uuid4().hex[:8]}"


def catalog_as_of(data_dir: Path | None, read_at: datetime) -> str:
    """The time the training catalog describes, for the manifest's ``catalog_as_of``: live
    catalog changes older than it are retired when the bundle is served (recsvc/catalog/view.py),
    newer ones stay in force. A catalog file cannot know a change made after it was written, so
    that is its modification time (``recsvc catalog export`` writes it at the moment it reads the
    service); never later than ``read_at``, the time training read it. Without a file (a dataset
    handed over in memory and no catalog file in ``data_dir``) the data was read before the run:
    ``read_at``."""
    from pipelines.contract import CATALOG
    from pipelines.read import SUFFIXES

    as_of = read_at
    if data_dir is not None:
        for suffix in SUFFIXES:
            path = data_dir / f"{CATALOG.name}{suffix}"
            if path.is_file():
                as_of = min(as_of, datetime.fromtimestamp(path.stat().st_mtime, UTC))
    # Milliseconds: the live catalog stamps its changes in ms, and a change made in the same
    # second as the export must not be retired by rounding up.
    return as_of.astimezone(UTC).isoformat(timespec="milliseconds")


def manifest_params(params: AlsParams, bm25: Bm25 | None = None) -> dict[str, Any]:
    """What serving needs to recompute a member vector like ``recalculate_user``: the
    confidence formula (event_weights, half_life_days, decay measured from the cutoff) and the
    ALS solve (regularization, alpha, factors, iterations)."""
    return {
        "factors": params.factors,
        "regularization": params.regularization,
        "alpha": params.alpha,
        "iterations": params.iterations,
        "event_weights": dict(params.event_weights),
        "half_life_days": params.half_life_days,
        "random_state": params.random_state,
        "confidence_scale": params.confidence_scale,
        "confidence_weighting": params.confidence_weighting,
        "bm25_k1": params.bm25_k1,
        "bm25_b": params.bm25_b,
        "confidence": "C = alpha * weighting(scale(r)), r = sum(event_weight[type] * 0.5 ** (age_days / "
        "half_life_days)), scale = confidence_scale (linear: r; log: log(1 + r)), weighting = "
        "confidence_weighting (none; bm25: BM25 with bm25_k1, bm25_b over the history's scaled "
        "values, recsvc/confidence_scale.py), on observed pairs, 1 on the others (implicit's "
        "recalculate_user; fold_in for the engine's own form)",
        "decay_reference": "data_as_of",  # the training cutoff, or the holdout start without refit
    } | ({"bm25_avg_length": bm25.avg_length} if bm25 is not None else {})


def assemble(
    prepared: Prepared,
    *,
    bundle_id: str,
    params: AlsParams,
    member_factors: np.ndarray,
    item_factors: np.ndarray,
    history: sp.csr_matrix,
    purchased: sp.csr_matrix,
    member_segment: np.ndarray,
    segments: pd.DataFrame,
    popular: pd.DataFrame,
    indexes: dict[str, Any],
    index_info: dict[str, Any],
    metrics: dict[str, float],
    counts: dict[str, int],
    extra: dict[str, Any],
    replenish: tuple[Learned, sp.csr_matrix] | None = None,
) -> BundleContents:
    """The bundle of a fit. With BM25 weighting its numbers (item weights, average length) come
    from ``history``, the r_ui matrix the fit took, as the fit computed them; an ``auto``
    weighting is decided on it as the fit decided it (training decides before, and passes it)."""
    params, _ = resolve_weighting(params, history)
    bm25 = (
        Bm25.of_matrix(history, params.confidence_scale, params.bm25_k1, params.bm25_b)
        if params.confidence_weighting == "bm25"
        else None
    )
    manifest = Manifest(
        schema_version=SCHEMA_VERSION,
        bundle_id=bundle_id,
        created_at=datetime.now(UTC).isoformat(timespec="seconds"),
        training_cutoff=prepared.cutoff_iso,
        data_fingerprint=prepared.fingerprint,
        factors=params.factors,
        params=manifest_params(params, bm25),
        metrics={k: float(v) for k, v in metrics.items() if np.isfinite(v)},
        counts=counts,
        segments=list(LIFECYCLE_STAGES),
        index=index_info,
        replenish=(
            ReplenishSpec(
                categories=replenish[0].repurchased,
                items_with_own_interval=replenish[0].items_with_own_interval,
            )
            if replenish is not None
            else None
        ),
        **extra,
    )
    return BundleContents(
        manifest=manifest,
        members=prepared.members,
        member_factors=member_factors,
        member_segment=member_segment,
        items=prepared.items,
        item_factors=item_factors,
        item_kind=prepared.item_kind,
        item_category=prepared.item_category,
        item_brand=prepared.item_brand,
        item_price=prepared.item_price,
        item_in_stock=prepared.item_in_stock,
        item_published_at=prepared.item_published_at,
        item_titles=prepared.item_titles,
        categories=prepared.categories,
        brands=prepared.brands,
        history=history,
        purchased=purchased,
        segments=segments,
        popular=popular,
        indexes=indexes,
        item_repurchase_days=replenish[0].item_interval_days if replenish is not None else None,
        purchased_last_ts=replenish[1] if replenish is not None else None,
        item_featured=prepared.featured,
        item_idf=bm25.idf if bm25 is not None else None,
    )


def write(out_dir: Path, contents: BundleContents) -> Path:
    return write_bundle(out_dir, contents)
