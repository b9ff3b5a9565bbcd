"""The promotion gate: is the candidate better than popularity and no worse than the champion on
the same holdout?

A candidate below the popularity baseline's NDCG@10 on its own holdout is never promoted, not even
as the first champion: serving popular items would do better. Reads: the candidate's and the
baseline's holdout NDCG@10, the champion's (either from its manifest, when it was
evaluated on the same data and holdout window, or re-measured by refitting its parameters on the
candidate's training split), the tolerance and ``--force``.
Writes: a :class:`GateDecision` that the orchestrator logs and acts on.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

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
