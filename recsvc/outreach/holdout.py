"""Holdouts: members who are measured but not messaged, so a campaign has a baseline.

Two groups, both by a stable hash of the member id (the same member is in or out in every
process, replica and release): the **global control group** (``outreach.global_control_share``,
default 0): members who receive no marketing at all, whatever the campaign; and a campaign's
**holdout** (``holdout_share`` in the request): members of that campaign's audience who do not
get that campaign. Transactional messages are never held out.

A held-out member gets ``HOLDOUT`` and nothing is recorded against their caps. The throttle is
still asked, as a dry run, what it would have decided: an erased member keeps ``SUPPRESSED``
(nothing about them is logged), and the decision log says whether a held-out member would have
been reached (``would_allow``), so a report compares reached members with members who would have
been reached (docs/experiments.md), not with everyone the campaign could not reach anyway.

``HoldoutThrottle`` wraps a ``Throttle`` for one request and answers the calls planning and
NextBestOutreach make (``check``, ``reserve``, ``decide_many``); everything else passes through.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from recsvc.errors import InvalidArgument
from recsvc.outreach.throttle import MARKETING, Decision, OutreachAsk, Throttle

HOLDOUT = "HOLDOUT"
SUPPRESSED = "SUPPRESSED"
MAX_HOLDOUT_SHARE = 0.5


def position(group: str, member_id: str) -> float:
    """The member's stable place in [0, 1) for ``group`` (a campaign id, or "global")."""
    digest = hashlib.blake2b(
        f"{group}|{member_id}".encode(), digest_size=8, person=b"recsvc-holdout"
    ).digest()
    return int.from_bytes(digest, "big") / 2.0**64


def check_holdout_share(share: float, campaign_id: str) -> float:
    if not 0 <= share <= MAX_HOLDOUT_SHARE:
        raise InvalidArgument(
            f"holdout_share must be 0..{MAX_HOLDOUT_SHARE}, got {share}", reason="INVALID_HOLDOUT_SHARE"
        )
    if share and not campaign_id:
        raise InvalidArgument("holdout_share needs a campaign_id", reason="INVALID_HOLDOUT_SHARE")
    return share


@dataclass(frozen=True)
class Holdouts:
    global_share: float = 0.0
    campaign_share: float = 0.0

    def reason(self, ask: OutreachAsk) -> str:
        """Why ``ask`` is held out ("" when it is not)."""
        if ask.message_class != MARKETING:
            return ""
        if self.global_share and position("global", ask.member_id) < self.global_share:
            return "in the global control group: receives no marketing (the baseline for every campaign)"
        if (
            self.campaign_share
            and ask.campaign_id
            and position(ask.campaign_id, ask.member_id) < self.campaign_share
        ):
            return (
                f"in campaign {ask.campaign_id}'s holdout ({self.campaign_share:.0%}): measured, not messaged"
            )
        return ""


def held(would: Decision, detail: str) -> Decision:
    """HOLDOUT, unless the dry run found the member erased; ``extra`` says whether they would
    have been reached (read by the decision log, never sent to callers)."""
    if would.reason == SUPPRESSED:
        return would
    return Decision(False, HOLDOUT, detail, extra="would_allow" if would.allowed else "")


class HoldoutThrottle:
    def __init__(self, throttle: Throttle, holdouts: Holdouts) -> None:
        self._throttle = throttle
        self._holdouts = holdouts

    def __getattr__(self, name: str) -> Any:
        return getattr(self._throttle, name)

    def check(self, ask: OutreachAsk) -> Decision:
        detail = self._holdouts.reason(ask)
        d = self._throttle.check(ask)
        return held(d, detail) if detail else d

    def reserve(self, ask: OutreachAsk) -> Decision:
        detail = self._holdouts.reason(ask)
        if detail:
            return held(self._throttle.check(replace(ask, idempotency_key="")), detail)
        return self._throttle.reserve(ask)

    def decide_many(
        self, asks: Sequence[OutreachAsk], *, reserve: bool, replay_refusals: bool = True
    ) -> list[Decision]:
        details = [self._holdouts.reason(a) for a in asks]
        if not any(details):
            return self._throttle.decide_many(asks, reserve=reserve, replay_refusals=replay_refusals)
        out: list[Decision | None] = [None] * len(asks)
        kept = [i for i, d in enumerate(details) if not d]
        out_idx = [i for i, d in enumerate(details) if d]
        if kept:
            got = self._throttle.decide_many(
                [asks[i] for i in kept], reserve=reserve, replay_refusals=replay_refusals
            )
            for i, d in zip(kept, got, strict=True):
                out[i] = d
        dry = self._throttle.decide_many(
            [replace(asks[i], idempotency_key="") for i in out_idx], reserve=False
        )
        for i, d in zip(out_idx, dry, strict=True):
            out[i] = held(d, details[i])
        return [d for d in out if d is not None]
