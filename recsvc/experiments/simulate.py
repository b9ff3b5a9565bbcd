"""Served traffic with a known effect, for the demo and the tests: members ask a running server
for recommendations, click and buy with the probabilities planted in the sample data
(``pipelines.generate.effects``), and a campaign with a holdout is reserved and answered.

Everything goes through the public API (RecommendProducts, RecordEvent, PlanCampaign), so what
the reports read is what the service logged.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import grpc

from pipelines.generate.effects import PlantedEffects
from recsvc.v1 import outreach_pb2, outreach_pb2_grpc, recommender_pb2, recommender_pb2_grpc


@dataclass
class Traffic:
    lists: int = 0
    clicks: int = 0
    purchases: int = 0
    by_variant: Counter[str] = field(default_factory=Counter)
    decisions: Counter[str] = field(default_factory=Counter)
    campaign_purchases: int = 0


def play(
    channel: grpc.Channel,
    members: Sequence[str],
    effects: PlantedEffects,
    *,
    seed: int = 1,
    campaign_members: Sequence[str] | None = None,
    products: Sequence[str] = (),
) -> Traffic:
    """``members`` are served and respond; then, with ``campaign_members``, the campaign is
    reserved for them and its effect played out (purchases of ``products``, chosen at random,
    so the campaign's purchases do not come from recommendation lists)."""
    rng = random.Random(seed)
    recs = recommender_pb2_grpc.RecommenderStub(channel)
    out = Traffic()
    served = []
    for member in members:  # first every member is served; they respond later, as people do
        resp = recs.RecommendProducts(
            recommender_pb2.RecommendProductsRequest(
                member_id=member, k=10, channel="app", scene="home_feed"
            ),
            timeout=10,
        )
        out.lists += 1
        out.by_variant[resp.variant] += 1
        served.append((member, resp))
    for member, resp in served:
        if not resp.items:
            continue
        item = resp.items[0].item_id
        buys = rng.random() < effects.conversion(resp.variant)
        if buys or rng.random() < effects.click_rate:
            recs.RecordEvent(
                recommender_pb2.RecordEventRequest(
                    member_id=member, item_id=item, event_type="click", channel="app"
                ),
                timeout=10,
            )
            out.clicks += 1
        if buys:
            # half the callers send the list's id, half rely on attribution by item and window
            rec_id = resp.recommendation_id if rng.random() < 0.5 else ""
            recs.RecordEvent(
                recommender_pb2.RecordEventRequest(
                    member_id=member,
                    item_id=item,
                    event_type="purchase",
                    channel="app",
                    quantity=1,
                    amount=round(rng.uniform(0.5, 1.5) * effects.amount, 2),
                    recommendation_id=rec_id,
                ),
                timeout=10,
            )
            out.purchases += 1
    if campaign_members:
        _campaign(channel, recs, campaign_members, products, effects, rng, out)
    return out


def _campaign(
    channel: grpc.Channel,
    recs: recommender_pb2_grpc.RecommenderStub,
    members: Sequence[str],
    products: Sequence[str],
    effects: PlantedEffects,
    rng: random.Random,
    out: Traffic,
) -> None:
    stub = outreach_pb2_grpc.OutreachStub(channel)
    decided: list[tuple[str, bool]] = []
    for batch in stub.PlanCampaign(
        outreach_pb2.PlanCampaignRequest(
            member_ids=list(members),
            channel=effects.campaign_channel,
            campaign_id=effects.campaign,
            reserve=True,
            holdout_share=effects.holdout_share,
        ),
        timeout=120,
    ):
        for d in batch.decisions:
            out.decisions[outreach_pb2.ReasonCode.Name(d.decision.reason)] += 1
            decided.append((d.member_id, d.decision.allowed))
    for member, reached in decided:
        rate = effects.base_purchase_rate + (effects.campaign_uplift if reached else 0.0)
        if rng.random() >= rate or not products:
            continue
        recs.RecordEvent(
            recommender_pb2.RecordEventRequest(
                member_id=member,
                item_id=rng.choice(products),
                event_type="purchase",
                channel="wecom",
                quantity=1,
                amount=round(rng.uniform(0.5, 1.5) * effects.amount, 2),
            ),
            timeout=10,
        )
        out.campaign_purchases += 1
