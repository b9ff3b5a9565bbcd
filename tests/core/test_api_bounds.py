"""The accepted ranges of recsvc.bounds on the Recommender API (docs/api.md "Accepted ranges"):
RecordEvent's amount, quantity and ts, and the price and diversity filters. NaN, infinity, 1e308
and year-1 or far-future time stamps are INVALID_ARGUMENT with a named reason, and nothing is
stored for them."""

from __future__ import annotations

import math
import time
from typing import Any

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from serving_harness import RunningServer

from recsvc.bounds import MAX_AMOUNT, MAX_FUTURE_S, MAX_PAST_DAYS, MAX_PRICE, MAX_QUANTITY
from recsvc.errors import InvalidArgument
from recsvc.realtime import EVENTS_SUFFIX
from recsvc.redis_keys import member_key
from recsvc.v1 import common_pb2, recommender_pb2

pytestmark = [pytest.mark.integration]

DAY_S = 86_400


def _event(**kw: Any) -> recommender_pb2.RecordEventRequest:
    if isinstance(kw.get("ts"), int):
        kw["ts"] = Timestamp(seconds=int(time.time()) + kw["ts"])
    return recommender_pb2.RecordEventRequest(
        **{"member_id": "M-bounds", "item_id": "P0-001", "event_type": "purchase", **kw}
    )


# (what, fields, reason); a time stamp given as an int is seconds relative to the server's clock
# at call time, a Timestamp is absolute.
REFUSED: list[tuple[str, dict[str, Any], str]] = [
    ("amount-nan", {"amount": math.nan}, "NON_FINITE_NUMBER"),
    ("amount-inf", {"amount": math.inf}, "NON_FINITE_NUMBER"),
    ("amount-minus-inf", {"amount": -math.inf}, "NON_FINITE_NUMBER"),
    ("amount-1e308", {"amount": 1e308}, "INVALID_AMOUNT"),
    ("amount-above-max", {"amount": MAX_AMOUNT * 1.5}, "INVALID_AMOUNT"),
    ("amount-negative", {"amount": -0.01}, "INVALID_AMOUNT"),
    ("quantity-negative", {"quantity": -1}, "INVALID_QUANTITY"),
    ("quantity-above-max", {"quantity": MAX_QUANTITY + 1}, "INVALID_QUANTITY"),
    ("ts-year-1", {"ts": Timestamp(seconds=-62_135_596_800)}, "TIMESTAMP_OUT_OF_RANGE"),
    ("ts-epoch", {"ts": Timestamp(seconds=0)}, "TIMESTAMP_OUT_OF_RANGE"),
    ("ts-too-old", {"ts": -(MAX_PAST_DAYS + 1) * DAY_S}, "TIMESTAMP_OUT_OF_RANGE"),
    ("ts-future", {"ts": MAX_FUTURE_S + 120}, "TIMESTAMP_OUT_OF_RANGE"),
    ("ts-2100", {"ts": Timestamp(seconds=4_102_444_800)}, "TIMESTAMP_OUT_OF_RANGE"),
    ("ts-9999", {"ts": Timestamp(seconds=253_402_300_799)}, "TIMESTAMP_OUT_OF_RANGE"),
]


@pytest.mark.parametrize(("what", "kw", "reason"), REFUSED, ids=[what for what, _, _ in REFUSED])
def test_record_event_out_of_range_is_refused_and_not_stored(
    srv: RunningServer, what: str, kw: dict[str, Any], reason: str
) -> None:
    with pytest.raises(grpc.RpcError) as err:
        srv.stub.RecordEvent(_event(**kw), timeout=5)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details().startswith(reason + ":"), err.value.details()
    client = srv.deps.redis_client
    assert client is not None
    assert not client.keys("*{m:M-bounds}*"), "a refused event left real-time state"


def test_record_event_at_the_edges_of_the_ranges_is_stored(srv: RunningServer) -> None:
    accepted: list[dict[str, Any]] = [
        {"amount": 0.0, "quantity": 0},
        {"amount": MAX_AMOUNT, "quantity": MAX_QUANTITY},
        {"amount": 19.9, "quantity": 2, "ts": -(MAX_PAST_DAYS - 1) * DAY_S},
        {"ts": MAX_FUTURE_S - 60},
        {},  # unset ts: the server's clock
    ]
    for kw in accepted:
        assert srv.stub.RecordEvent(_event(**kw), timeout=5).stored, kw
    client = srv.deps.redis_client
    assert client is not None
    key = member_key(srv.deps.realtime._prefix, "M-bounds", EVENTS_SUFFIX)  # type: ignore[union-attr]
    assert client.llen(key) == len(accepted)


FILTERS = [
    (common_pb2.RecommendationFilters(max_price=math.inf), "INVALID_PRICE_RANGE"),
    (common_pb2.RecommendationFilters(max_price=math.nan), "INVALID_PRICE_RANGE"),
    (common_pb2.RecommendationFilters(min_price=-math.inf), "INVALID_PRICE_RANGE"),
    (common_pb2.RecommendationFilters(min_price=1e308), "INVALID_PRICE_RANGE"),
    (common_pb2.RecommendationFilters(max_price=MAX_PRICE * 2), "INVALID_PRICE_RANGE"),
    (common_pb2.RecommendationFilters(diversity=math.nan), "INVALID_DIVERSITY"),
    (common_pb2.RecommendationFilters(diversity=math.inf), "INVALID_DIVERSITY"),
    (common_pb2.RecommendationFilters(diversity=-math.inf), "INVALID_DIVERSITY"),
]


@pytest.mark.parametrize(("filters", "reason"), FILTERS, ids=[r + "-" + str(f).strip() for f, r in FILTERS])
def test_non_finite_and_extreme_filters_are_refused(
    srv: RunningServer, filters: common_pb2.RecommendationFilters, reason: str
) -> None:
    calls = [
        (
            srv.stub.RecommendProducts,
            recommender_pb2.RecommendProductsRequest(member_id="M0-000", filters=filters),
        ),
        (srv.stub.SimilarItems, recommender_pb2.SimilarItemsRequest(item_id="P0-001", filters=filters)),
    ]
    for call, request in calls:
        with pytest.raises(grpc.RpcError) as err:
            call(request, timeout=5)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert err.value.details().startswith(reason + ":"), err.value.details()
    batch = recommender_pb2.BatchRecommendRequest(member_ids=["M0-000"], filters=filters)
    with pytest.raises(grpc.RpcError) as err:
        list(srv.stub.BatchRecommend(batch, timeout=5))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_price_filter_at_the_bound_is_accepted() -> None:
    from recsvc.engine.filters import FilterSpec

    f = common_pb2.RecommendationFilters(min_price=0, max_price=MAX_PRICE)
    spec = FilterSpec.from_proto(f, default_diversity=0.3, max_values=5, max_id_length=16)
    assert spec.max_price == MAX_PRICE
    with pytest.raises(InvalidArgument):
        FilterSpec.from_proto(
            common_pb2.RecommendationFilters(max_price=math.inf),
            default_diversity=0.3,
            max_values=5,
            max_id_length=16,
        )
