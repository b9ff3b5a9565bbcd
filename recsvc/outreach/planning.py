"""PlanCampaign: decide (or reserve) for an audience, streaming one batch of decisions per chunk.

Members come from an iterator (explicit ids or the recommender's segment), are taken in chunks of
``chunk_size`` and decided in one pipelined Redis round trip per chunk, so memory stays bounded
by one chunk whatever the audience size. Each chunk's decisions come out together (the gRPC
servicer sends them as one stream message).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from recsvc.outreach.decision import scheduled_at, scheduled_extra
from recsvc.outreach.throttle import Decision, OutreachAsk, Throttle


def plan_idempotency_key(template: OutreachAsk, scheduled: bool = False) -> str:
    """The idempotency key of a reserving plan's decisions: one per member and plan, the plan
    being every parameter the key's fingerprint holds (OutreachAsk.fingerprint), so a re-run of
    the same plan replays and a different plan for the same campaign (another channel, say) is
    decided afresh (DUPLICATE_CAMPAIGN where the campaign reached the member) instead of being
    refused as a reused key. ``scheduled``: the plan places each send in a window, so its
    decisions' fingerprints say so (OutreachAsk.at_ms)."""
    return f"|plan|{template.fingerprint()}{'|at' if scheduled else ''}"


@dataclass(frozen=True)
class PlannedDecision:
    member_id: str
    decision: Decision
    send_at_ms: int = 0  # the scheduled time the decision is for (0 = now)


def plan_campaign(
    throttle: Throttle,
    members: Iterable[str],
    template: OutreachAsk,
    *,
    reserve: bool,
    chunk_size: int,
    limit: int = 0,
    schedule: Callable[[list[str]], list[int]] | None = None,
) -> Iterator[list[PlannedDecision]]:
    """Yield the decisions of each chunk, in audience order; no chunk is pulled from ``members``
    before the previous one was taken by the caller. ``schedule`` gives each member of a chunk
    the time (epoch ms) to decide for, e.g. their best send time in a campaign window.
    ``limit`` > 0 stops after that many allowed decisions (the last batch ends with the last
    allowed one); when reserving, a chunk never asks for more than the allowed decisions still
    wanted, so the limit is never overshot."""
    it = iter(members)
    allowed = 0
    t = template
    while True:
        size = chunk_size
        if limit and reserve:
            size = min(size, limit - allowed)
        batch = list(itertools.islice(it, size)) if size > 0 else []
        if not batch:
            return
        at = schedule(batch) if schedule is not None else [0] * len(batch)
        # the constructor, not dataclasses.replace: this runs once per member of the audience
        asks = [
            OutreachAsk(
                member_id=m,
                channel=t.channel,
                campaign_id=t.campaign_id,
                message_class=t.message_class,
                priority=t.priority,
                idempotency_key=t.idempotency_key,
                item_id=t.item_id,
                extra=scheduled_extra(at_ms) if at_ms and not t.extra else t.extra,
                at_ms=at_ms,
            )
            for m, at_ms in zip(batch, at, strict=True)
        ]
        out: list[PlannedDecision] = []
        for ask, decision in zip(
            asks, throttle.decide_many(asks, reserve=reserve, replay_refusals=False), strict=True
        ):
            out.append(PlannedDecision(ask.member_id, decision, scheduled_at(decision, ask.at_ms)))
            if decision.allowed:
                allowed += 1
                if limit and allowed >= limit:
                    yield out
                    return
        yield out
