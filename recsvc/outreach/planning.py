"""PlanCampaign: decide (or reserve) for an audience, streaming decisions as they are made.

Members come from an iterator (explicit ids or the recommender's segment), are taken in chunks of
``chunk_size`` and decided in one pipelined Redis round trip per chunk, so memory stays bounded
by one chunk whatever the audience size.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace

from recsvc.outreach.throttle import Decision, OutreachAsk, Throttle


@dataclass(frozen=True)
class PlannedDecision:
    member_id: str
    decision: Decision


def plan_campaign(
    throttle: Throttle,
    members: Iterable[str],
    template: OutreachAsk,
    *,
    reserve: bool,
    chunk_size: int,
    limit: int = 0,
) -> Iterator[PlannedDecision]:
    """Yield one decision per member. ``limit`` > 0 stops after that many allowed decisions; when
    reserving, a chunk never asks for more than the allowed decisions still wanted, so the limit
    is never overshot."""
    it = iter(members)
    allowed = 0
    while True:
        size = chunk_size
        if limit and reserve:
            size = min(size, limit - allowed)
        batch = list(itertools.islice(it, size)) if size > 0 else []
        if not batch:
            return
        asks = [replace(template, member_id=m) for m in batch]
        for ask, decision in zip(asks, throttle.decide_many(asks, reserve=reserve), strict=True):
            yield PlannedDecision(ask.member_id, decision)
            if decision.allowed:
                allowed += 1
                if limit and allowed >= limit:
                    return
