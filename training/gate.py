"""The promotion gate: is the candidate better than popularity and no worse than the champion on
the same holdout?

A candidate below the popularity baseline's NDCG@10 on its own holdout is never promoted, not even
as the first champion: serving popular items would do better. Reads: the candidate's and the
baseline's holdout NDCG@10, the champion's (either from its manifest, when it was
evaluated on the same data and holdout window, or re-measured by refitting its parameters on the
candidate's training split), the tolerance and ``--force``.
Writes: a :class:`GateDecision` that the orchestrator logs and acts on.

Before that, :func:`choose_family` picks which model family serves (ALS, item-item or their
blend, training/itemknn.py): the candidate's score is that family's holdout NDCG@10, and a
champion's is the one of the family its manifest records.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

from recsvc.errors import ConfigError

GATE_METRIC = "all.ndcg_at_10"
BASELINE_METRIC = "baseline.all.ndcg_at_10"  # popularity on the same holdout (training.evaluate)
UNCOMPARABLE = "champion_uncomparable"


@dataclass(frozen=True)
class GateDecision:
    promote: bool
    reason: str
    candidate: float
    champion: float | None
    tolerance: float
    forced: bool = False
    method: str = "first_model"  # first_model | same_holdout_logged | champion_refit | champion_uncomparable
    champion_version: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def same_holdout(champion_manifest: Any, fingerprint: str, window: dict[str, str]) -> bool:
    extra = champion_manifest.model_extra or {}
    return champion_manifest.data_fingerprint == fingerprint and extra.get("holdout") == window


def decide(
    candidate: float,
    champion: float | None,
    *,
    tolerance: float,
    force: bool,
    method: str = "first_model",
    champion_version: str | None = None,
    baseline: float | None = None,
) -> GateDecision:
    if baseline is not None and candidate < baseline:
        what = (
            f"candidate NDCG@10 {candidate:.4f} is below the popularity baseline's {baseline:.4f} "
            "on the same holdout"
        )
        return GateDecision(
            force,
            f"FORCED: {what}" if force else f"refused: {what}; --force promotes it anyway",
            candidate,
            champion,
            tolerance,
            forced=force,
            method=method,
            champion_version=champion_version,
        )
    if champion is None and method == UNCOMPARABLE:
        # e.g. the champion's bundle has another schema version: nothing to measure it by, so
        # replacing it is a human decision
        what = f"champion v{champion_version} cannot be re-measured (unreadable manifest or parameters)"
        reason = f"FORCED: {what}" if force else f"refused: {what}; --force replaces it"
        return GateDecision(
            force,
            reason,
            candidate,
            None,
            tolerance,
            forced=force,
            method=method,
            champion_version=champion_version,
        )
    if champion is None:
        return GateDecision(True, "no champion yet: first model is promoted", candidate, None, tolerance)
    passed = candidate >= champion - tolerance
    verdict = (
        f"candidate NDCG@10 {candidate:.4f} vs champion v{champion_version} {champion:.4f} "
        f"(tolerance {tolerance:.4f}, {method})"
    )
    if passed:
        reason = f"passed: {verdict}"
    elif force:
        reason = f"FORCED past a failed gate: {verdict}"
    else:
        reason = f"refused: {verdict}"
    return GateDecision(
        promote=passed or force,
        reason=reason,
        candidate=candidate,
        champion=champion,
        tolerance=tolerance,
        forced=force and not passed,
        method=method,
        champion_version=champion_version,
    )


# The families in order of simplicity: a later one serves only when it beats every simpler one
# by the margin (recsvc.bundle.FamilySpec; docs/training.md, "Model families").
FAMILY_ORDER = ("als", "itemknn", "blend")
_FAMILY_PREFIX = {"als": "", "itemknn": "itemknn.", "blend": "blend."}


def family_metric(family: str) -> str:
    """The metric the gate reads for a family: its holdout NDCG@10 over all items."""
    return f"{_FAMILY_PREFIX[family]}{GATE_METRIC}"


TREND_METRIC = f"trend.{GATE_METRIC}"  # the chosen family with the trend prior (training/trend.py)
SERVED_KINDS = ("product", "content")  # the kinds a call asks for: serving never ranks both together


def by_kind(metrics: dict[str, float], prefix: str = "", metric: str = "ndcg_at_10") -> float | None:
    """``metric`` as serving sees it: the mean of the ``product`` and ``content`` figures under
    ``prefix``, weighted by each kind's test members (each kind ranked alone, as a call asks for
    one); the ``all`` figure when neither kind was measured, None when nothing was."""
    total = weight = 0.0
    for kind in SERVED_KINDS:
        value, members = metrics.get(f"{prefix}{kind}.{metric}"), metrics.get(f"{prefix}{kind}.members", 0.0)
        if value is not None and members > 0:
            total, weight = total + value * members, weight + members
    if weight > 0:
        return total / weight
    return metrics.get(f"{prefix}all.{metric}")


def _served_prefix(served: Any) -> str:
    """The metric prefix of what serves: the family's, or with the trend prior ``trend.``."""
    return "trend." if getattr(served, "trend_weight", 0.0) else _FAMILY_PREFIX[served.family]


def spec_metric(served: Any) -> str:
    """The metric the gate reads for what serves, a bundle's ``FamilySpec`` or a run's
    :class:`FamilyChoice`: its family's, or with the trend prior the trend's."""
    return f"{_served_prefix(served)}{GATE_METRIC}"


@dataclass(frozen=True)
class FamilyChoice:
    family: str
    reason: str
    scores: dict[str, float]  # holdout NDCG@10 of each family measured
    trend_weight: float = 0.0  # the trend prior's weight when it serves (0: off)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def choose_family(metrics: dict[str, float], setting: str, margin: float) -> FamilyChoice:
    """The family that serves. ``setting`` "auto": the simplest family unless a more complex
    one's holdout NDCG@10 exceeds the chosen one's by more than ``margin`` (relative), each step
    judged against the family chosen so far; a family not measured (item-item skipped) cannot be
    chosen. Any other ``setting`` names the family, which must have been measured."""
    scores = {f: float(metrics[family_metric(f)]) for f in FAMILY_ORDER if family_metric(f) in metrics}
    if setting != "auto":
        if setting not in scores:
            raise ConfigError(
                f"training.family={setting!r} was not measured on the holdout "
                f"(measured: {sorted(scores)}); item-item needs training.itemknn 'on' or 'auto'",
                reason="FAMILY_NOT_MEASURED",
            )
        return FamilyChoice(setting, f"training.family forces {setting}", scores)
    chosen = FAMILY_ORDER[0]
    why = f"{chosen} (simplest)"
    for family in FAMILY_ORDER[1:]:
        if family in scores and scores[family] > scores[chosen] * (1 + margin):
            why = (
                f"{family}: NDCG@10 {scores[family]:.4f} beats {chosen}'s {scores[chosen]:.4f} "
                f"by more than {margin:.0%}"
            )
            chosen = family
    return FamilyChoice(chosen, why, scores)


def with_trend(choice: FamilyChoice, metrics: dict[str, float], forced: bool, margin: float) -> FamilyChoice:
    """``choice`` with the trend prior when it was measured (``trend.weight`` above 0) and either
    ``forced`` (``training.trend_weight`` set) or its holdout NDCG@10 beats the family's by more
    than ``margin`` (relative), as a more complex family must. Both are judged per kind
    (:func:`by_kind`): serving divides the trend by each kind's largest, which a joint ranking of
    both kinds cannot show."""
    weight = float(metrics.get("trend.weight", 0.0))
    got = by_kind(metrics, "trend.")
    if weight <= 0 or got is None:
        return choice
    base = by_kind(metrics, _FAMILY_PREFIX[choice.family])
    if base is None:
        base = choice.scores.get(choice.family, 0.0)
    if forced:
        why = f"trend prior {weight:g}: training.trend_weight forces it"
    elif got > base * (1 + margin):
        why = f"trend prior {weight:g}: NDCG@10 {got:.4f} beats {base:.4f} by more than {margin:.0%}"
    else:
        why = f"trend prior off: {weight:g} scored {got:.4f} against {base:.4f}, not {margin:.0%} more"
        return replace(choice, reason=f"{choice.reason}; {why}")
    return replace(choice, reason=f"{choice.reason}; {why}", trend_weight=weight)


def served_metrics(metrics: dict[str, float], choice: FamilyChoice) -> dict[str, float]:
    """The holdout metrics of what serves (the chosen family, with the trend prior when it is on)
    as ``served.<kind>.<metric>_at_<k>``: one name to read whichever candidate won."""
    prefix = _served_prefix(choice)
    kinds = ("all.", "product.", "content.")
    return {
        f"served.{key[len(prefix) :]}": value
        for key, value in metrics.items()
        if key.startswith(prefix) and key[len(prefix) :].startswith(kinds)
    }


def family_spec(
    family: str,
    metrics: dict[str, float],
    neighbours: Any | None,
    history_items: int = 0,
    trend_weight: float = 0.0,
) -> Any:
    """The manifest's ``FamilySpec`` for the chosen family: the neighbour table's width
    (``neighbours``: its (items, scores) arrays), the history cut it was measured with
    (``training.itemknn_history``, 0 = none), for the blend the ALS weight, and the trend prior's
    weight and days when it serves."""
    from recsvc.bundle import FamilySpec

    trend: dict[str, Any] = {}
    if trend_weight:
        trend = {"trend_weight": trend_weight, "trend_days": int(metrics["trend.days"])}
    if family == "als":
        return FamilySpec(**trend)
    width = int(neighbours[0].shape[1]) if neighbours is not None else None
    weight = float(metrics["blend.als_weight"]) if family == "blend" else None
    return FamilySpec(
        family=family, neighbours=width, als_weight=weight, history_items=history_items or None, **trend
    )
