"""NextBestOutreach: the best recommendation the member may be sent now, reserved in the same call.

Reads the member's recently pushed items (one Redis read), asks the recommender for its top items
excluding them (the recommender already leaves out what the member bought), and reserves a send of
the best one; the reservation records the item as pushed in the same atomic script.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass

from recsvc.errors import StoreUnavailable
from recsvc.outreach.ports import RecommendationPort
from recsvc.outreach.throttle import UNAVAILABLE, Decision, OutreachAsk, Throttle
from recsvc.v1.common_pb2 import RecommendedItem

NOTHING_TO_RECOMMEND = "NOTHING_TO_RECOMMEND"


@dataclass(frozen=True)
class NextBest:
    decision: Decision
    item: RecommendedItem | None


def next_best_outreach(
    throttle: Throttle,
    recommendations: RecommendationPort,
    ask: OutreachAsk,
    kind: str,
    candidates: int,
) -> NextBest:
    try:
        pushed = set(throttle.recently_pushed(ask.member_id))
    except StoreUnavailable:
        # Like every marketing decision, fail closed with an answer rather than an error.
        return NextBest(Decision(False, UNAVAILABLE, "throttle store unavailable; failing closed"), None)
    items = recommendations.top_items(ask.member_id, kind, candidates, pushed)
    # The port is asked to exclude them; never trust a boundary with the member's inbox.
    fresh = [it for it in items if it.item_id and it.item_id not in pushed]
    if not fresh:
        return NextBest(
            Decision(
                False,
                NOTHING_TO_RECOMMEND,
                f"no {kind} left to recommend that was not pushed in the last "
                f"{throttle.policies.current().retention.recently_pushed_days} days",
            ),
            None,
        )
    best = fresh[0]
    extra = base64.b64encode(best.SerializeToString()).decode()
    decision = throttle.reserve(
        OutreachAsk(
            member_id=ask.member_id,
            channel=ask.channel,
            campaign_id=ask.campaign_id,
            message_class=ask.message_class,
            priority=ask.priority,
            idempotency_key=ask.idempotency_key,
            item_id=best.item_id,
            extra=extra,
        )
    )
    if not decision.allowed:
        return NextBest(decision, None)
    # On an idempotent replay the item is the one chosen the first time.
    item = RecommendedItem()
    item.ParseFromString(base64.b64decode(decision.extra or extra))
    return NextBest(decision, item)
