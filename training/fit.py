"""Step 4: fit implicit's ALS on the CPU with BLAS on one thread.

Reads: a confidence matrix from :mod:`training.confidence` and :class:`AlsParams`.
Writes: a :class:`FitResult`: the fitted ``implicit.cpu.als.AlternatingLeastSquares``, the loss
per iteration (only when asked: computing it costs about a fifth of the fit) and fit seconds.
The fit itself is a bare ``model.fit``: nothing of ours runs inside its loop except the optional
callback that records time and loss.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np
import scipy.sparse as sp
from threadpoolctl import threadpool_limits

from recsvc.bundle_manifest import FoldInSpec
from recsvc.confidence_scale import BUNDLE_DEFAULT, BUNDLE_DEFAULT_WEIGHTING, confidence_input
from recsvc.settings import TrainingSettings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AlsParams:
    """Everything that decides a model (and what serving needs to recompute member vectors)."""

    factors: int
    regularization: float
    alpha: float
    iterations: int
    event_weights: dict[str, float]
    half_life_days: float
    random_state: int = 42
    confidence_scale: str = BUNDLE_DEFAULT  # recsvc/confidence_scale.py
    confidence_weighting: str = BUNDLE_DEFAULT_WEIGHTING
    bm25_k1: float = 100.0
    bm25_b: float = 0.8
    bm25_auto_items: float = 20.0  # how "auto" weighting is decided (resolve_weighting)

    @classmethod
    def from_settings(cls, t: TrainingSettings) -> AlsParams:
        return cls(
            factors=t.factors,
            regularization=t.regularization,
            alpha=t.alpha,
            iterations=t.iterations,
            event_weights=dict(t.event_weights),
            half_life_days=t.half_life_days,
            random_state=t.random_state,
            confidence_scale=t.confidence_scale,
            confidence_weighting=t.confidence_weighting,
            bm25_k1=t.bm25_k1,
            bm25_b=t.bm25_b,
            bm25_auto_items=t.bm25_auto_items,
        )

    @classmethod
    def from_manifest(cls, params: dict[str, Any], factors: int) -> AlsParams:
        return cls(
            factors=int(params.get("factors", factors)),
            regularization=float(params["regularization"]),
            alpha=float(params["alpha"]),
            iterations=int(params["iterations"]),
            event_weights={str(k): float(v) for k, v in params["event_weights"].items()},
            half_life_days=float(params["half_life_days"]),
            random_state=int(params.get("random_state", 42)),
            confidence_scale=str(params.get("confidence_scale", BUNDLE_DEFAULT)),
            confidence_weighting=str(params.get("confidence_weighting", BUNDLE_DEFAULT_WEIGHTING)),
            bm25_k1=float(params.get("bm25_k1", 100.0)),
            bm25_b=float(params.get("bm25_b", 0.8)),
        )

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def resolve_weighting(
    params: AlsParams, seen: sp.csr_matrix, threshold: float | None = None
) -> tuple[AlsParams, str]:
    """``params`` with an ``auto`` weighting decided on the training interactions ``seen``
    (members x items, an entry per pair), and why; other weightings as they are. BM25 when
    the members with any interaction have on average fewer than ``threshold`` distinct items
    (default: ``params.bm25_auto_items``). Training decides once, on the split it fits first, so
    the candidate, the tuning trials and the refit all use one weighting; a fit given ``auto``
    decides on its own matrix."""
    threshold = params.bm25_auto_items if threshold is None else threshold
    if params.confidence_weighting != "auto":
        return params, f"confidence_weighting = {params.confidence_weighting} (set)"
    active = int(np.count_nonzero(np.diff(seen.indptr)))
    per_member = seen.nnz / max(active, 1)
    chosen = "bm25" if per_member < threshold else "none"
    sign = "<" if chosen == "bm25" else ">="
    why = f"auto: {per_member:.1f} distinct items per member {sign} bm25_auto_items {threshold:g}"
    return replace(params, confidence_weighting=chosen), why


def warm_refit_iterations(t: TrainingSettings, params: AlsParams) -> int:
    """Iterations of the refit started from the candidate's factors; 0 = a refit from scratch
    (``training.refit_warm_iterations`` 0, or Spark, whose ALS takes no starting factors)."""
    if t.engine == "spark":
        return 0
    return min(t.refit_warm_iterations, params.iterations)


@dataclass
class FitResult:
    model: Any  # implicit.cpu.als.AlternatingLeastSquares
    losses: list[float] = field(default_factory=list)
    seconds: float = 0.0
    # how this fit solves a member (serving folds recent events in the same way)
    fold_in: FoldInSpec = field(default_factory=FoldInSpec)

    @property
    def user_factors(self) -> np.ndarray:
        return np.asarray(self.model.user_factors, dtype=np.float32)

    @property
    def item_factors(self) -> np.ndarray:
        return np.asarray(self.model.item_factors, dtype=np.float32)


def make_model(params: AlsParams, num_threads: int = 0, track_loss: bool = False) -> Any:
    from implicit.cpu.als import AlternatingLeastSquares

    return AlternatingLeastSquares(
        factors=params.factors,
        regularization=params.regularization,
        alpha=params.alpha,
        iterations=params.iterations,
        calculate_training_loss=track_loss,
        num_threads=num_threads,
        random_state=params.random_state,
    )


def fit_als(
    matrix: sp.csr_matrix,
    params: AlsParams,
    *,
    num_threads: int = 0,
    track_loss: bool = False,
    on_iteration: Callable[[int, float], None] | None = None,
    on_model: Callable[[int, Any], None] | None = None,
    init: tuple[np.ndarray, np.ndarray] | None = None,
) -> FitResult:
    """Fit on ``matrix`` (r_ui). ``on_iteration(iteration, loss)`` drives progress bars;
    ``on_model(iteration, model)`` sees the factors part-way (tuning scores them there and may
    raise to stop a hopeless fit). ``init``: (member, item) factors to start from instead of
    implicit's random ones (a warm start), shaped as ``matrix`` x ``params.factors``."""
    losses: list[float] = []
    model: Any = None

    def callback(iteration: int, _elapsed: float, loss: float | None) -> None:
        if loss is not None:
            losses.append(float(loss))
        if on_iteration is not None:
            on_iteration(iteration, float("nan") if loss is None else float(loss))
        if on_model is not None:
            on_model(iteration, model)

    # implicit parallelises over users itself; a multi-threaded BLAS underneath only fights it
    with threadpool_limits(limits=1, user_api="blas"):
        model = make_model(params, num_threads=num_threads, track_loss=track_loss)
        if init is not None:
            expected = (matrix.shape[0], params.factors), (matrix.shape[1], params.factors)
            if (init[0].shape, init[1].shape) != expected:
                raise ValueError(f"warm start factors {init[0].shape}, {init[1].shape}; expected {expected}")
            # copies: the fit updates its factors in place
            model.user_factors = np.array(init[0], dtype=np.float32, order="C")
            model.item_factors = np.array(init[1], dtype=np.float32, order="C")
        started = time.perf_counter()
        model.fit(
            confidence_values(matrix, resolve_weighting(params, matrix)[0]),
            show_progress=False,
            callback=callback,
        )
        seconds = time.perf_counter() - started
    log.info("als fit factors=%d iterations=%d seconds=%.2f", params.factors, params.iterations, seconds)
    return FitResult(model=model, losses=losses, seconds=seconds)


def confidence_values(matrix: sp.csr_matrix, params: AlsParams) -> sp.csr_matrix:
    """What the fit takes for r_ui ``matrix``: ``weighting(scale(r))`` (alpha is the fit's)."""
    return confidence_input(
        matrix, params.confidence_scale, params.confidence_weighting, params.bm25_k1, params.bm25_b
    )


def model_from_factors(user_factors: np.ndarray, item_factors: np.ndarray) -> Any:
    """An implicit ALS model around given factors (for evaluation helpers and cold start)."""
    from implicit.cpu.als import AlternatingLeastSquares

    model = AlternatingLeastSquares(factors=int(item_factors.shape[1]), num_threads=1)
    model.user_factors = np.ascontiguousarray(user_factors, dtype=np.float32)
    model.item_factors = np.ascontiguousarray(item_factors, dtype=np.float32)
    return model
