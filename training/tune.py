"""``--tune``: search ALS hyper-parameters on a validation split carved from the training period.

Long on purpose: the search space, the validation split rule and the Optuna loop are one decision;
the trial function needs all three.

Reads: :class:`training.prepare.Prepared`, the holdout :class:`training.split.Split` (only its
training events are used; the holdout is never seen here), the starting
:class:`training.fit.AlsParams` and the tuning settings.
Writes: a :class:`Tuned` (the best parameters, one row per trial, which validation was used and
why), one nested MLflow run per trial and, under the active run, ``tuning/trials.json``,
``tuning/parallel_coordinates.png`` and ``tuning/params.toml``.

Search space (:data:`SPACE`; log scale where good values differ by orders of magnitude between
data sets): factors 16..256, regularization 1e-3..1e3 (implicit does not scale it by a member's
event count, so dense data wants large values), alpha 0.1..100, iterations 5..50, event-weight
sharpness g 0.25..4 (each weight becomes ``w ** g``: the order purchase > add_to_cart >
favorite/share > view is kept while the contrast between them is searched; their overall scale
is alpha's, since implicit fits ``C = alpha * r``), recency: no decay, or a half-life of
7..720 days, the confidence scale: linear or log (:data:`SCALES`), and the weighting: none or
BM25 (:data:`WEIGHTINGS`).

Sampler: optuna's multivariate TPE (seeded) after ``tune_startup_trials`` random trials; trial 0
is the starting configuration, so tuning never returns something worse on validation than it,
and the best trial replaces it only when it leads by ``tune_min_gain_se`` standard errors of the
members' paired NDCG differences (:func:`paired_gain`). The trials are scored on a sample of
``tune_eval_members`` validation members; the lead is measured on up to ``tune_confirm_members``
others (:func:`confirmation_members`), which the choice of the best trial never saw, so the
best of many noisy scores does not inflate it. Where the window holds fewer than
:data:`MIN_CONFIRM_MEMBERS` others (small data), it is measured on the searched members, and the
bar is then what guards against that bias.
Pruning: each fit is scored part-way (after :data:`CHECKPOINTS` iterations) and stopped when it
is below the median of earlier trials at the same point (``MedianPruner``).

Validation (``training.validation_split``): ``time`` = the ``validation_days`` before the
holdout, the holdout's own kind; ``random`` = a random ``validation_share`` of each member's
items, for data whose time order is weak (e.g. timestamps of a bulk import, or members active
only for a short span); ``auto`` = ``time``, its window widened to 2x then 4x
``validation_days`` while it holds fewer than ``split.MIN_VALIDATION_MEMBERS`` test members
(:func:`training.split.widened_validation`), and ``random`` only if even the widened window is
too thin to judge by: fewer than :data:`MIN_TIME_MEMBERS` test members, or fewer than
:data:`MIN_TIME_SHARE` of the random split's. A window of 100 members is noisy, but the rule
that keeps the starting configuration unless a trial leads it by two standard errors guards
against that noise; a random split has many members but judges a different question (which
items of their past a member also had), and on MovieLens 100K the settings it chose lost on
the holdout where the widened time window's held (docs/training.md, "Tuning"). Either way
the NDCG@10 of recent popularity (the time window's last days) relative to all-time popularity
is logged for both splits (``tune.time.ratio``, ``tune.random.ratio``): a time ratio well above
the random one says recency matters on this data.
It does not decide: on generated data, whose time signal is in each member's own history, the
ratios were equal (0.95 / 0.96) while the random split chose parameters that did worse on the
holdout than the defaults (docs/training.md).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import scipy.sparse as sp

from recsvc.errors import DataContractError
from recsvc.settings import CONFIDENCE_SCALES, CONFIDENCE_WEIGHTINGS, TrainingSettings
from training.evaluate import evaluate, member_ndcg, sample_members
from training.factors import train_factors
from training.fit import AlsParams, resolve_weighting
from training.gate import GATE_METRIC
from training.prepare import DAY_S, Prepared
from training.split import (
    Split,
    random_validation,
    tested_members,
    validation,
    widened_validation,
)

if TYPE_CHECKING:
    from training.spark_als import SparkAls

log = logging.getLogger(__name__)

# name -> (low, high) of the searched range (log scale); tests check what experts find is inside
SPACE: dict[str, tuple[float, float]] = {
    "factors": (16, 256),
    "regularization": (1e-3, 1e3),
    "alpha": (0.1, 100.0),
    "iterations": (5, 50),
    "weight_sharpness": (0.25, 4.0),
    "half_life_days": (7.0, 720.0),
}
# r_ui -> confidence (recsvc/confidence_scale.py): searched, as data with many repeats of one
# item (views) wants log and data with one event per pair cannot tell them apart
SCALES = CONFIDENCE_SCALES
# scaled r_ui -> weighted: BM25 wins on sparse data and needs a lower alpha on dense data
# (docs/training.md, "Model"), so it is searched jointly with alpha
WEIGHTINGS = CONFIDENCE_WEIGHTINGS
CHECKPOINTS = (3, 10)  # iterations after which a fit is scored for pruning
MIN_TIME_MEMBERS = 50
MIN_TIME_SHARE = 0.05
MIN_CONFIRM_MEMBERS = 500  # fewer unsearched validation members: the lead is judged on the searched ones
_PLACEHOLDER_HALF_LIFE = 60.0  # what trial 0 records for half_life_days when the base has no decay


@dataclass
class Tuned:
    params: AlsParams
    trials: list[dict[str, Any]]
    validation: str  # "time" | "random"
    validation_reason: str
    best_value: float
    info: dict[str, float] = field(default_factory=dict)


def sharpen(weights: dict[str, float], sharpness: float) -> dict[str, float]:
    return {k: float(w**sharpness) if w > 0 else 0.0 for k, w in weights.items()}


def suggest(trial: Any, base: AlsParams) -> AlsParams:
    """The trial's parameters: every searched value comes from :data:`SPACE`."""
    lo, hi = SPACE["weight_sharpness"]
    sharpness = trial.suggest_float("weight_sharpness", lo, hi, log=True)
    decay = trial.suggest_categorical("recency_decay", [True, False])
    scale = trial.suggest_categorical("confidence_scale", list(SCALES))
    weighting = trial.suggest_categorical("confidence_weighting", list(WEIGHTINGS))
    # suggested even without decay, so every trial has every parameter (TPE models them jointly)
    half_life = trial.suggest_float("half_life_days", *SPACE["half_life_days"], log=True)
    return replace(
        base,
        factors=trial.suggest_int("factors", *(int(v) for v in SPACE["factors"]), log=True),
        regularization=trial.suggest_float("regularization", *SPACE["regularization"], log=True),
        alpha=trial.suggest_float("alpha", *SPACE["alpha"], log=True),
        iterations=trial.suggest_int("iterations", *(int(v) for v in SPACE["iterations"]), log=True),
        event_weights=sharpen(base.event_weights, sharpness),
        half_life_days=half_life if decay else 0.0,
        confidence_scale=scale,
        confidence_weighting=weighting,
    )


def _clip(name: str, value: float) -> float:
    lo, hi = SPACE[name]
    return float(min(max(value, lo), hi))


def start_points(base: AlsParams) -> list[dict[str, Any]]:
    """Trials run first: the starting configuration; one of the region that wins on small dense
    data (many factors, strong regularization, no decay), which random startup trials rarely hit
    in an 8-dimensional space; and the starting configuration with the other weighting, BM25 at
    a quarter of the alpha (where ``auto`` chose none, BM25 ties or wins only at a lower alpha:
    docs/training.md, "Confidence weighting"), or none at the same alpha."""
    own = {
        "weight_sharpness": 1.0,
        "recency_decay": base.half_life_days > 0,
        "half_life_days": _clip("half_life_days", base.half_life_days or _PLACEHOLDER_HALF_LIFE),
        "factors": int(_clip("factors", base.factors)),
        "regularization": _clip("regularization", base.regularization),
        "alpha": _clip("alpha", base.alpha),
        "iterations": int(_clip("iterations", base.iterations)),
        "confidence_scale": base.confidence_scale,
        "confidence_weighting": base.confidence_weighting,
    }
    dense = own | {
        "recency_decay": False,
        "factors": 128,
        "regularization": 30.0,
        "alpha": 5.0,
        "iterations": 15,
        "confidence_weighting": "none",  # the region as it was found, without BM25
    }
    if base.confidence_weighting == "bm25":
        other = own | {"confidence_weighting": "none"}
    else:
        other = own | {"confidence_weighting": "bm25", "alpha": _clip("alpha", base.alpha / 4)}
    return [own, dense, other]


def _popularity_ndcg(train: sp.csr_matrix, split: Split, item_kind: np.ndarray, members: int) -> float:
    scores = np.asarray(train.sum(axis=0), dtype=np.float32).ravel()
    ones = np.ones((train.shape[0], 1), dtype=np.float32)
    m = evaluate(
        ones,
        scores.reshape(-1, 1),
        split.seen,
        split.test,
        item_kind,
        None,
        max_members=members,
        kinds=("all",),
    )
    return float(m.get(GATE_METRIC, 0.0))


def _pop_matrix(split: Split, shape: tuple[int, int], since: int | None) -> sp.csr_matrix:
    ev = split.train if since is None else split.train.select(split.train.ts >= since)
    return sp.csr_matrix((np.ones(len(ev), dtype=np.float32), (ev.member, ev.item)), shape=shape)


def choose_validation(
    split: Split,
    shape: tuple[int, int],
    item_kind: np.ndarray,
    t: TrainingSettings,
    positive_types: np.ndarray,
) -> tuple[Split, str, str, dict[str, float]]:
    """(validation split, "time" | "random", why, the numbers the choice was made by)."""
    setting = t.validation_split
    if setting == "time":
        time_val = validation(split, shape, t.validation_days, positive_types)
        return time_val, "time", "training.validation_split = time", {}
    rand_val = random_validation(split, shape, t.validation_share, positive_types, t.random_state)
    if setting == "random":
        return rand_val, "random", "training.validation_split = random", {}
    time_val, days = widened_validation(split, shape, t.validation_days, positive_types)
    n_time = tested_members(time_val)
    n_random = tested_members(rand_val)
    info: dict[str, float] = {
        "time.members": float(n_time),
        "random.members": float(n_random),
        "time.days": float(days),
    }
    members = min(t.tune_eval_members, 5000)
    for name, val, recent_from in (
        ("time", time_val, time_val.start - days * DAY_S),
        ("random", rand_val, split.start - days * DAY_S),
    ):
        if val.test.nnz == 0:
            continue
        recent = _popularity_ndcg(_pop_matrix(val, shape, recent_from), val, item_kind, members)
        overall = _popularity_ndcg(_pop_matrix(val, shape, None), val, item_kind, members)
        info[f"{name}.ratio"] = recent / overall if overall > 0 else 0.0
    window = f"the time window of {days} days" + (
        f" (widened from {t.validation_days})" if days != t.validation_days else ""
    )
    if n_time < MIN_TIME_MEMBERS or n_time < MIN_TIME_SHARE * n_random:
        why = f"auto: {window} has {n_time} test members, the random split {n_random}"
        return rand_val, "random", why, info
    why = f"auto: {window} has {n_time} test members"
    if "time.ratio" in info and "random.ratio" in info:
        why += (
            f"; recent/all-time popularity NDCG@10 {info['time.ratio']:.2f} on it, "
            f"{info['random.ratio']:.2f} on the random split"
        )
    return time_val, "time", why, info


def confirmation_members(test: sp.csr_matrix, searched: np.ndarray, limit: int, seed: int) -> np.ndarray:
    """Validation members with something to find that the search did not score, up to ``limit``
    (sorted); none when fewer than :data:`MIN_CONFIRM_MEMBERS` are left."""
    tested = np.flatnonzero(np.diff(test.indptr) > 0)
    rest = np.setdiff1d(tested, searched, assume_unique=True)
    if rest.size > limit:
        rest = np.sort(np.random.default_rng(seed + 1).choice(rest, size=limit, replace=False))
    return rest if rest.size >= MIN_CONFIRM_MEMBERS else rest[:0]


class _Pruned(Exception):
    """Raised from inside a fit to stop a trial the pruner gave up on."""


def search(
    prepared: Prepared,
    split: Split,
    base: AlsParams,
    t: TrainingSettings,
    *,
    trials: int,
    positive_types: np.ndarray,
    log_trials: bool = True,
    on_trial: Callable[[int, float], None] | None = None,
    spark: SparkAls | None = None,
) -> Tuned:
    """Search, log every trial, and return the best parameters with the trial table."""
    import optuna

    shape = (len(prepared.members), len(prepared.items))
    base, _ = resolve_weighting(base, split.seen, t.bm25_auto_items)  # the start as training would fit it
    val, how, why, info = choose_validation(split, shape, prepared.item_kind, t, positive_types)
    if val.test.nnz == 0:
        fixes = (
            "a longer history, fewer training.validation_days or training.validation_split = random"
            if how == "time"
            else "more events per member (each member's items are split between fitting and judging)"
        )
        raise DataContractError(
            f"the {how} validation split has no interactions of members with earlier history: "
            f"tuning needs {fixes}"
        )
    log.info("tune validation=%s (%s)", how, why)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    sampler = optuna.samplers.TPESampler(
        seed=base.random_state, n_startup_trials=t.tune_startup_trials, multivariate=True
    )
    pruner: Any = (
        optuna.pruners.MedianPruner(n_startup_trials=t.tune_startup_trials, n_warmup_steps=0)
        if t.tune_prune
        else optuna.pruners.NopPruner()
    )
    study = optuna.create_study(direction="maximize", sampler=sampler, pruner=pruner)
    for point in start_points(base)[: max(1, trials)]:
        study.enqueue_trial(point, skip_if_exists=True)
    rows: list[dict[str, Any]] = []
    candidates: dict[int, AlsParams] = {}

    per_member: dict[int, np.ndarray] = {}  # complete trials: NDCG@10 of each validation member
    searched = sample_members(val.test, t.tune_eval_members, base.random_state)
    confirm = confirmation_members(val.test, searched, t.tune_confirm_members, base.random_state)
    confirm_seen, confirm_test = sp.csr_matrix(val.seen[confirm]), sp.csr_matrix(val.test[confirm])
    # trial 0's and the best trial so far's factors, of the confirmation members only
    leaders: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    lead = -np.inf  # the best validation score so far

    def keep_if_leading(number: int, value: float, trained: Any) -> None:
        nonlocal lead
        if confirm.size == 0 or (number != 0 and value <= lead):
            return
        lead = max(lead, value)
        for old in [n for n in leaders if n != 0]:
            del leaders[old]
        leaders[number] = (np.asarray(trained.member_factors)[confirm], np.asarray(trained.item_factors))

    def member_scores(user_factors: np.ndarray, item_factors: np.ndarray) -> np.ndarray:
        return member_ndcg(
            user_factors,
            item_factors,
            val.seen,
            val.test,
            max_members=t.tune_eval_members,
            seed=base.random_state,
        )

    def score(user_factors: np.ndarray, item_factors: np.ndarray) -> float:
        return float(member_scores(user_factors, item_factors).mean())

    def objective(trial: Any) -> float:
        params = suggest(trial, base)
        candidates[trial.number] = params
        partway: dict[int, float] = {}

        def checkpoint(iteration: int, model: Any) -> None:
            done = iteration + 1
            if done not in CHECKPOINTS or done >= params.iterations:
                return
            value = score(np.asarray(model.user_factors), np.asarray(model.item_factors))
            partway[done] = value
            trial.report(value, done)
            if trial.should_prune():
                raise _Pruned(f"NDCG@10 {value:.4f} after {done} iterations")

        row: dict[str, Any] = {"trial": trial.number, **trial.params}
        try:
            trained = train_factors(
                prepared,
                val.train,
                val.start,
                params,
                num_threads=t.num_threads,
                new_product_days=t.new_product_days,
                # Spark reports no model per iteration: its trials run to the end, unpruned.
                on_model=None if spark is not None else checkpoint,
                spark=spark,
            )
        except (_Pruned, DataContractError) as exc:
            # DataContractError: these parameters leave the fit nothing (a half-life that decays
            # every weight to 0), a dead end of the space rather than a fault of the data
            row |= {"state": "pruned", "why": str(exc)}
            rows.append(row)
            if log_trials:
                _log_trial(trial, partway, {}, "pruned")
            log.info("trial=%d pruned: %s params=%s", trial.number, exc, trial.params)
            if on_trial is not None:
                on_trial(trial.number, float("nan"))
            raise optuna.TrialPruned(str(exc)) from None
        scores = member_scores(trained.member_factors, trained.item_factors)
        per_member[trial.number] = scores
        value = float(scores.mean())
        keep_if_leading(trial.number, value, trained)
        row |= {"state": "complete", "val_ndcg_at_10": value, "fit_seconds": trained.fit.seconds}
        rows.append(row)
        if log_trials:
            metrics = {"val.all.ndcg_at_10": value, "fit_seconds": trained.fit.seconds}
            _log_trial(trial, partway, metrics, "complete")
        log.info("trial=%d val_ndcg_at_10=%.4f params=%s", trial.number, value, trial.params)
        if on_trial is not None:
            on_trial(trial.number, value)
        return value

    study.optimize(objective, n_trials=trials)
    best = study.best_trial
    chosen, value = best.number, float(best.value or 0.0)
    if best.number != 0 and 0 in per_member:
        gain, se = paired_gain(per_member[0], per_member[best.number])
        judged_on = f"the {per_member[0].size} searched validation members"
        if best.number in leaders and 0 in leaders:
            info["search_gain"] = gain

            def confirmed(number: int) -> np.ndarray:
                rows, items = leaders[number]
                return member_ndcg(rows, items, confirm_seen, confirm_test, max_members=confirm.size)

            gain, se = paired_gain(confirmed(0), confirmed(best.number))
            judged_on = f"{confirm.size} validation members the search did not score"
            info["confirm_members"] = float(confirm.size)
        info |= {k: v for k, v in (("best_gain", gain), ("best_gain_se", se)) if np.isfinite(v)}
        if gain < t.tune_min_gain_se * se:
            # a lead within the noise of the validation sample does not carry over to the
            # holdout, so what was there stays
            chosen, value = 0, float(per_member[0].mean())
            why += (
                f"; the starting configuration kept: the best trial ({best.number}) led it by "
                f"{gain:.4f} NDCG@10 on {judged_on}, under {t.tune_min_gain_se:g} standard errors "
                f"of it ({t.tune_min_gain_se:g} x {se:.4f})"
            )
            log.info(
                "tune kept the starting configuration: best trial %d gain %.4f se %.4f on %s",
                best.number,
                gain,
                se,
                judged_on,
            )
        else:
            why += (
                f"; the best trial ({best.number}) led the starting configuration by {gain:.4f} "
                f"NDCG@10 ({gain / se if se > 0 else float('inf'):.1f} standard errors) on {judged_on}"
            )
    info["kept_start"] = float(chosen == 0)
    tuned = Tuned(candidates[chosen], rows, how, why, value, info)
    if log_trials:
        _log_study(study, tuned)
    return tuned


def _log_trial(trial: Any, partway: dict[int, float], metrics: dict[str, float], state: str) -> None:
    """One nested MLflow run per trial, pruned ones included (with their part-way scores)."""
    import mlflow

    parent = mlflow.active_run()
    experiment_id = parent.info.experiment_id if parent is not None else None
    with mlflow.start_run(run_name=f"trial-{trial.number}", nested=True, experiment_id=experiment_id):
        mlflow.log_params(trial.params)
        mlflow.set_tag("state", state)
        for step, value in partway.items():
            mlflow.log_metric("val.partway.ndcg_at_10", value, step=step)
        if metrics:
            mlflow.log_metrics(metrics)


def _log_study(study: Any, tuned: Tuned) -> None:
    import matplotlib.pyplot as plt
    import mlflow

    mlflow.log_dict(
        {"validation": tuned.validation, "why": tuned.validation_reason, "trials": tuned.trials},
        "tuning/trials.json",
    )
    mlflow.log_text(params_toml(tuned.params, header=describe(tuned)), "tuning/params.toml")
    mlflow.log_metrics(
        {"tune.best_val_ndcg_at_10": tuned.best_value} | {f"tune.{k}": v for k, v in tuned.info.items()}
    )
    mlflow.set_tag("tune.validation", tuned.validation)
    complete = [t for t in study.trials if t.state.name == "COMPLETE"]
    if len(complete) < 2:
        return
    try:
        from optuna.visualization.matplotlib import plot_parallel_coordinate

        ax = plot_parallel_coordinate(study)
        fig: Any = ax.figure
        fig.set_size_inches(12, 5)
        fig.tight_layout()  # the rotated parameter names below the axes stay inside the image
        mlflow.log_figure(fig, "tuning/parallel_coordinates.png")
        plt.close(fig)
    except (ValueError, ImportError, RuntimeError) as exc:  # a plot never fails a training run
        log.warning("parallel-coordinates plot skipped: %s", exc)


def paired_gain(start: np.ndarray, other: np.ndarray) -> tuple[float, float]:
    """Mean per-member NDCG gain of ``other`` over ``start`` (the same validation members, in
    the same order) and its standard error: the members' differences, not the two means, so
    what both find hard or easy cancels out."""
    diff = np.asarray(other, dtype=np.float64) - np.asarray(start, dtype=np.float64)
    se = float(diff.std(ddof=1) / np.sqrt(diff.size)) if diff.size > 1 else float("inf")
    return float(diff.mean()), se


def describe(tuned: Tuned) -> str:
    done = sum(1 for r in tuned.trials if r.get("state") == "complete")
    return (
        f"chosen by recsvc train --tune: best validation NDCG@10 {tuned.best_value:.4f} over "
        f"{done} complete of {len(tuned.trials)} trials; "
        f"validation {tuned.validation} ({tuned.validation_reason})"
    )


def params_toml(params: AlsParams, header: str = "") -> str:
    """``params`` as a settings file fragment (``[training]``): ``recsvc train --params FILE``
    and ``--config FILE`` both read it."""
    lines = [f"# {line}" for line in header.splitlines()] if header else []
    lines += [
        "[training]",
        f"factors = {params.factors}",
        f"regularization = {params.regularization!r}",
        f"alpha = {params.alpha!r}",
        f"iterations = {params.iterations}",
        f"half_life_days = {float(params.half_life_days)!r}",
        f'confidence_scale = "{params.confidence_scale}"',
        f'confidence_weighting = "{params.confidence_weighting}"',
        f"bm25_k1 = {float(params.bm25_k1)!r}",
        f"bm25_b = {float(params.bm25_b)!r}",
        "",
        "[training.event_weights]",
        *(f"{k} = {float(v)!r}" for k, v in params.event_weights.items()),
    ]
    return "\n".join(lines) + "\n"


# what a --params file may set: the model's hyper-parameters, nothing else
PARAMS_KEYS = (
    "factors",
    "regularization",
    "alpha",
    "iterations",
    "half_life_days",
    "confidence_scale",
    "confidence_weighting",
    "bm25_k1",
    "bm25_b",
    "event_weights",
)


def read_params(path: Path) -> dict[str, Any]:
    """The ``[training]`` hyper-parameters of a ``--params`` file, as settings overrides;
    ConfigError naming the file and the key for anything else."""
    from recsvc.errors import ConfigError
    from recsvc.settings import read_toml

    raw = read_toml(path, "params file")
    table = raw.get("training")
    if set(raw) != {"training"} or not isinstance(table, dict):
        raise ConfigError(f"params file {path} must hold exactly one [training] table, found {sorted(raw)}")
    unknown = sorted(set(table) - set(PARAMS_KEYS))
    if unknown:
        raise ConfigError(f"params file {path} sets {unknown}; it may set only {list(PARAMS_KEYS)}")
    return dict(table)


def write_params(path: Path, tuned: Tuned) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(params_toml(tuned.params, header=describe(tuned)))
    return path
