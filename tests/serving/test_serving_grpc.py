"""The Recommender service over real gRPC (free port) with a real redis-server and a planted
bundle: every RPC, filters, cold start, real-time events, errors, health."""

from __future__ import annotations

import time
from pathlib import Path

import grpc
import numpy as np
import pytest
from bundle_factory import PlantedBundle
from grpc_health.v1 import health_pb2, health_pb2_grpc
from serving_harness import RunningServer, running_server, serving_settings

from recsvc.v1 import common_pb2, recommender_pb2

pytestmark = pytest.mark.integration


def products(srv: RunningServer, member: str, k: int = 10, **kw: object) -> recommender_pb2.RecommendResponse:
    filters = kw.pop("filters", None)
    req = recommender_pb2.RecommendProductsRequest(member_id=member, k=k, **kw)  # type: ignore[arg-type]
    if filters is not None:
        req.filters.CopyFrom(filters)  # type: ignore[arg-type]
    return srv.stub.RecommendProducts(req, timeout=5)


def ids(resp: recommender_pb2.RecommendResponse) -> list[str]:
    return [it.item_id for it in resp.items]


def test_products_for_a_known_member_come_from_their_cluster(
    srv: RunningServer, planted: PlantedBundle
) -> None:
    for member in planted.warm_members()[::7]:
        resp = products(srv, member, k=10)
        c = planted.member_cluster[member]
        assert len(resp.items) == 10
        assert all(planted.item_cluster[i] == c for i in ids(resp)), (member, ids(resp))
        assert {it.source for it in resp.items} == {"personalized"}
        assert resp.model_version == planted.bundle_id and resp.variant == "default"
        # purchased and out-of-stock items never appear by default
        assert not set(ids(resp)) & set(planted.purchased[member])
        assert not set(ids(resp)) & planted.out_of_stock
        assert all(it.kind == common_pb2.PRODUCT for it in resp.items)
        assert resp.member_segment == planted.member_segment[member]


def test_reasons_name_the_history_item_that_contributed_most(
    srv: RunningServer, planted: PlantedBundle
) -> None:
    member = planted.warm_members(cluster=1)[0]
    resp = products(srv, member, k=5)
    bought_titles = {f"Product {i}" for i in planted.purchased[member]}
    for it in resp.items:
        verb, _, title = it.reason.removeprefix("because you ").partition(" ")
        assert verb in {"bought", "viewed"}
        # the history item is in the same cluster as the recommendation
        assert planted.item_cluster[title.removeprefix("Product ")] == 1
        assert (verb == "bought") == (title in bought_titles)


def test_default_k_and_k_bounds(srv: RunningServer, planted: PlantedBundle) -> None:
    member = planted.warm_members()[0]
    assert len(products(srv, member, k=0).items) == 20  # serving.default_k
    for bad in (-1, 201):
        with pytest.raises(grpc.RpcError) as err:
            products(srv, member, k=bad)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert err.value.details().startswith("INVALID_K")


@pytest.mark.parametrize(
    ("member", "kw", "reason"),
    [
        ("", {}, "EMPTY_MEMBER_ID"),
        ("x" * 65, {}, "MEMBER_ID_TOO_LONG"),
        ("bad id!", {}, "INVALID_MEMBER_ID"),
        ("M0-000", {"channel": "carrier_pigeon"}, "UNKNOWN_CHANNEL"),
        ("M0-000", {"scene": "x" * 65}, "INVALID_SCENE"),  # each one lands in the event log
        ("M0-000", {"scene": "home\x00"}, "INVALID_SCENE"),
        ("M0-000", {"scene": "cart\nfake line"}, "INVALID_SCENE"),
        ("M0-000", {"scene": "\u202ehome"}, "INVALID_SCENE"),  # right-to-left override
        ("M0-000", {"filters": common_pb2.RecommendationFilters(diversity=2)}, "INVALID_DIVERSITY"),
        (
            "M0-000",
            {"filters": common_pb2.RecommendationFilters(min_price=50, max_price=10)},
            "INVALID_PRICE_RANGE",
        ),
        (
            "M0-000",
            {"filters": common_pb2.RecommendationFilters(exclude_item_ids=[f"P{i}" for i in range(101)])},
            "TOO_MANY_FILTER_VALUES",
        ),
    ],
)
def test_invalid_arguments_are_named(
    srv: RunningServer, member: str, kw: dict[str, object], reason: str
) -> None:
    with pytest.raises(grpc.RpcError) as err:
        products(srv, member, k=10, **kw)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details().startswith(reason + ":"), err.value.details()


def test_a_scene_is_any_short_printable_page_name(srv: RunningServer, planted: PlantedBundle) -> None:
    member = planted.warm_members()[0]
    for scene in ("home_feed", "home feed", "直播间", "x" * 64):
        assert products(srv, member, k=5, scene=scene).items


def test_filters(srv: RunningServer, planted: PlantedBundle) -> None:
    member = planted.warm_members(cluster=2)[0]
    # include a category of another cluster: the list follows the filter
    resp = products(srv, member, filters=common_pb2.RecommendationFilters(include_categories=["cat3"]))
    assert resp.items and all(planted.item_cluster[i] == 3 for i in ids(resp))
    # exclude the member's own category: nothing from it
    resp = products(srv, member, filters=common_pb2.RecommendationFilters(exclude_categories=["cat2"]))
    assert resp.items and all(planted.item_cluster[i] != 2 for i in ids(resp))
    # brands
    resp = products(srv, member, filters=common_pb2.RecommendationFilters(include_brands=["brand5"]))
    assert resp.items and all(planted.item_brand[i] == "brand5" for i in ids(resp))
    resp = products(srv, member, filters=common_pb2.RecommendationFilters(exclude_brands=["brand4"]))
    assert all(planted.item_brand[i] != "brand4" for i in ids(resp))
    # price range (prices are 10 + j)
    resp = products(srv, member, filters=common_pb2.RecommendationFilters(min_price=20, max_price=25))
    assert resp.items and all(20 <= planted.item_price[i] <= 25 for i in ids(resp))
    # explicit exclusions
    top = ids(products(srv, member, k=3))
    resp = products(srv, member, k=3, filters=common_pb2.RecommendationFilters(exclude_item_ids=top))
    assert not set(ids(resp)) & set(top)
    # switching defaults off brings back purchased and out-of-stock items
    resp = products(
        srv,
        member,
        k=40,
        filters=common_pb2.RecommendationFilters(exclude_purchased=False, in_stock_only=False, diversity=0),
    )
    assert set(planted.purchased[member]) <= set(ids(resp))
    assert set(ids(resp)) & planted.out_of_stock


def test_items_the_member_interacted_with_are_left_out_unless_asked(
    srv: RunningServer, planted: PlantedBundle
) -> None:
    """The default list holds only items new to the member, the lists training's holdout scores:
    not the viewed item of their trained history, nor one viewed a moment ago; exclude_seen=False
    brings both back, and it is independent of exclude_purchased."""
    member = planted.warm_members(cluster=1)[1]
    trained_view, fresh_view = "P1-010", "P1-005"
    wide = {"k": 40}

    def listed(**filters: object) -> set[str]:
        f = common_pb2.RecommendationFilters(diversity=0, **filters)  # type: ignore[arg-type]
        return set(ids(products(srv, member, filters=f, **wide)))

    assert fresh_view in listed()
    assert _event(srv, member, fresh_view, "view")
    default = listed()
    assert not default & {trained_view, fresh_view, *planted.purchased[member]}
    assert {trained_view, fresh_view} <= listed(exclude_seen=False)
    assert not listed(exclude_seen=False) & set(planted.purchased[member])
    purchases_back = listed(exclude_purchased=False)
    assert set(planted.purchased[member]) <= purchases_back
    assert not purchases_back & {trained_view, fresh_view}


def test_filters_that_remove_most_candidates_widen_the_search(
    planted: PlantedBundle, redis_url: str, tmp_path: Path
) -> None:
    # ann_candidates=10: a category far from the member's vector is only found by widening.
    settings = serving_settings(str(planted.path), redis_url, tmp_path, ann_candidates=10)
    with running_server(settings) as srv:
        member = planted.warm_members(cluster=0)[0]
        resp = products(
            srv, member, k=15, filters=common_pb2.RecommendationFilters(include_categories=["cat3"])
        )
        assert len(resp.items) == 15 and all(planted.item_cluster[i] == 3 for i in ids(resp))


def test_diversity_changes_the_list_without_leaving_relevance(
    srv: RunningServer, planted: PlantedBundle
) -> None:
    member = planted.warm_members(cluster=0)[0]
    plain = products(srv, member, k=10, filters=common_pb2.RecommendationFilters(diversity=0))
    varied = products(srv, member, k=10, filters=common_pb2.RecommendationFilters(diversity=0.9))
    assert ids(plain) != ids(varied)
    scores = [it.score for it in plain.items]
    assert scores == sorted(scores, reverse=True)
    assert ids(varied)[0] == ids(plain)[0]  # the best item still leads


def test_cold_start_uses_segment_and_channel_popularity(srv: RunningServer, planted: PlantedBundle) -> None:
    cold = planted.cold_members[0]
    resp = products(srv, cold, k=5)
    assert {it.source for it in resp.items} == {"popular"}
    assert [planted.item_cluster[i] for i in ids(resp)] == [0] * 5  # ("all", "all") list: cluster 0
    live = products(srv, cold, k=5, channel="live")
    assert [planted.item_cluster[i] for i in ids(live)] == [1] * 5  # ("new", "live") list: cluster 1
    unknown = products(srv, "NEVER-SEEN-1", k=5)
    assert {it.source for it in unknown.items} == {"popular"} and unknown.member_segment == "new"
    assert not set(ids(resp)) & planted.out_of_stock


def test_a_filter_that_empties_the_popular_lists_still_fills_a_cold_start_list(
    planted: PlantedBundle, redis_url: str, tmp_path: Path
) -> None:
    # Training keeps the top training.popular_per_table items per list; a filter can leave
    # fewer than k of them, and the answer once stopped there although many more items passed.
    import shutil

    import pandas as pd

    shutil.copytree(planted.path, tmp_path / "b")
    popular = pd.read_parquet(tmp_path / "b" / "popular.parquet")
    popular[popular["rank"] <= 6].to_parquet(tmp_path / "b" / "popular.parquet", index=False)
    with running_server(serving_settings(str(tmp_path / "b"), redis_url, tmp_path)) as srv:
        passing = {
            i
            for i, c in planted.item_cluster.items()
            if c == 3 and i.startswith("P") and i not in planted.out_of_stock
        }
        assert len(passing) >= 10
        cat3 = common_pb2.RecommendationFilters(include_categories=["cat3"])
        for member in (planted.cold_members[0], "NEVER-SEEN-2"):
            resp = products(srv, member, k=len(passing) + 5, filters=cat3)
            assert sorted(ids(resp)) == sorted(passing), member  # all of them, each once
            assert {it.source for it in resp.items} == {"popular"}
            assert {it.reason for it in resp.items} <= {"popular with new members", "more from the catalog"}
            # the listed ones first, by their popularity; then the rest
            scores = [it.score for it in resp.items]
            assert scores == sorted(scores, reverse=True) and scores[-1] == 0.0


def test_content(srv: RunningServer, planted: PlantedBundle) -> None:
    member = planted.warm_members(cluster=3)[0]
    resp = srv.stub.RecommendContent(
        recommender_pb2.RecommendContentRequest(member_id=member, k=5), timeout=5
    )
    assert len(resp.items) == 5
    assert all(it.kind == common_pb2.CONTENT and planted.item_cluster[it.item_id] == 3 for it in resp.items)


def test_similar_items(srv: RunningServer, planted: PlantedBundle) -> None:
    resp = srv.stub.SimilarItems(recommender_pb2.SimilarItemsRequest(item_id="P2-004", k=5), timeout=5)
    assert len(resp.items) == 5 and "P2-004" not in ids(resp)
    assert all(planted.item_cluster[i] == 2 and i.startswith("P") for i in ids(resp))
    assert {it.source for it in resp.items} == {"similar"}
    content = srv.stub.SimilarItems(
        recommender_pb2.SimilarItemsRequest(item_id="P2-004", k=3, kind=common_pb2.CONTENT), timeout=5
    )
    assert all(i.startswith("C2-") for i in ids(content))
    with pytest.raises(grpc.RpcError) as err:
        srv.stub.SimilarItems(recommender_pb2.SimilarItemsRequest(item_id="P9-999"), timeout=5)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.RpcError) as err:
        srv.stub.SimilarItems(recommender_pb2.SimilarItemsRequest(item_id=""), timeout=5)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_batch_recommend_streams_one_result_per_member_in_order(
    srv: RunningServer, planted: PlantedBundle
) -> None:
    members = [
        planted.warm_members(cluster=0)[0],
        "bad id",
        planted.cold_members[0],
        planted.warm_members(cluster=2)[0],
    ]
    results = list(
        srv.stub.BatchRecommend(recommender_pb2.BatchRecommendRequest(member_ids=members, k=3), timeout=10)
    )
    assert [r.member_id for r in results] == members
    assert results[1].error.startswith("INVALID_MEMBER_ID") and not results[1].HasField("response")
    assert {it.source for it in results[2].response.items} == {"popular"}
    assert all(planted.item_cluster[it.item_id] == 2 for it in results[3].response.items)
    content = list(
        srv.stub.BatchRecommend(
            recommender_pb2.BatchRecommendRequest(member_ids=members[:1], k=2, kind=common_pb2.CONTENT),
            timeout=10,
        )
    )
    assert all(it.kind == common_pb2.CONTENT for it in content[0].response.items)
    with pytest.raises(grpc.RpcError) as err:
        list(
            srv.stub.BatchRecommend(
                recommender_pb2.BatchRecommendRequest(member_ids=members, k=999), timeout=5
            )
        )
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def _event(srv: RunningServer, member: str, item: str, event_type: str) -> bool:
    req = recommender_pb2.RecordEventRequest(
        member_id=member, item_id=item, event_type=event_type, channel="app"
    )
    return srv.stub.RecordEvent(req, timeout=5).stored


def test_purchase_leaves_the_list_and_events_recompute_the_vector(
    srv: RunningServer, planted: PlantedBundle
) -> None:
    member = planted.warm_members(cluster=0)[0]
    before = products(srv, member, k=5)
    top = before.items[0].item_id
    assert _event(srv, member, top, "purchase")
    after = products(srv, member, k=5)
    assert top not in ids(after)
    assert after.realtime and {it.source for it in after.items} == {"realtime"}
    assert any(it.reason == f"because you bought Product {top}" for it in after.items) or after.items


def test_response_items_carry_the_items_own_fields(srv: RunningServer, planted: PlantedBundle) -> None:
    """Items are built from per-item bytes serialized once per process: every field must still be
    the item's own, on the first call and on later calls served from those bytes."""
    _, model = srv.deps.models.default()
    member = planted.warm_members(cluster=1)[0]
    for _ in range(2):
        resp = products(srv, member, k=8)
        assert len(resp.items) == 8
        for it in resp.items:
            row = model.items.row(it.item_id)
            assert row is not None
            assert it.kind == common_pb2.PRODUCT
            assert it.category == model.categories[int(model.item_category[row])]
            assert it.brand == planted.item_brand[it.item_id]
            assert it.title == model.titles[row] and it.title
            assert it.source == "personalized" and it.reason.startswith("because you")
            assert it.score > 0
        assert [it.score for it in resp.items] != [resp.items[0].score] * 8  # per-call scores differ


def test_the_search_overlaps_the_redis_read_and_yields_to_recent_events(
    srv: RunningServer, planted: PlantedBundle, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The engine searches with the trained vector while Redis answers. Without recent events that
    search is the one served; with them, the vector is recomputed and searched again, and the
    early result must not leak into the list."""
    from recsvc.bundle import KIND_PRODUCT
    from recsvc.engine.filters import FilterSpec

    engine = srv.deps.engine
    _, model = srv.deps.models.default()
    planted_rows = model.items.rows(planted.products(cluster=2)[:6])  # not this member's cluster
    marker = np.asarray(planted_rows, dtype=np.int64)
    early_calls: list[str] = []

    def first_search(*args: object) -> tuple[np.ndarray, np.ndarray, int]:
        early_calls.append("searched")
        return marker, np.linspace(9.0, 8.0, marker.shape[0]).astype(np.float32), 10**9

    monkeypatch.setattr(engine, "_first_search", first_search)
    member = planted.warm_members(cluster=0)[1]
    spec = FilterSpec(diversity=0.0)
    quiet = engine.recommend(member, KIND_PRODUCT, 5, "", spec).response
    assert early_calls and quiet.items[0].source == "personalized"
    assert set(ids(quiet)) <= set(planted.products(cluster=2)[:6])  # the early search was served

    for item in planted.products(cluster=3)[:3]:
        assert _event(srv, member, item, "view")
    early_calls.clear()
    busy = engine.recommend(member, KIND_PRODUCT, 5, "", spec).response
    assert early_calls and busy.realtime
    assert {it.source for it in busy.items} == {"realtime"}
    assert not set(ids(busy)) & set(planted.products(cluster=2)[:6])  # searched again


def test_unknown_member_is_personalised_from_first_events(srv: RunningServer, planted: PlantedBundle) -> None:
    member = "BRAND-NEW-7"
    assert {it.source for it in products(srv, member).items} == {"popular"}
    for item in ("P3-002", "P3-003", "P3-004"):
        assert _event(srv, member, item, "view")
    resp = products(srv, member, k=5)
    assert {it.source for it in resp.items} == {"realtime"}
    assert all(planted.item_cluster[i] == 3 for i in ids(resp))
    assert all(it.reason.startswith("because you viewed Product P3-") for it in resp.items)


def test_record_event_validation(srv: RunningServer) -> None:
    cases = [
        (dict(member_id="", item_id="P0-001", event_type="view"), "EMPTY_MEMBER_ID"),
        (dict(member_id="M0-000", item_id="", event_type="view"), "EMPTY_ITEM_ID"),
        (dict(member_id="M0-000", item_id="P0-001", event_type="stare"), "UNKNOWN_EVENT_TYPE"),
        (dict(member_id="M0-000", item_id="P0-001", event_type="view", channel="fax"), "UNKNOWN_CHANNEL"),
    ]
    for kw, reason in cases:
        with pytest.raises(grpc.RpcError) as err:
            srv.stub.RecordEvent(recommender_pb2.RecordEventRequest(**kw), timeout=5)  # type: ignore[arg-type]
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert err.value.details().startswith(reason)


def test_deadline_exceeded(srv: RunningServer, planted: PlantedBundle) -> None:
    members = planted.warm_members() * 200
    with pytest.raises(grpc.RpcError) as err:
        list(srv.stub.BatchRecommend(recommender_pb2.BatchRecommendRequest(member_ids=members), timeout=0.05))
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED


def test_unavailable_and_health_before_a_model_then_serving(
    planted: PlantedBundle, redis_url: str, tmp_path: Path
) -> None:
    settings = serving_settings(str(planted.path), redis_url, tmp_path)
    with running_server(settings, load=False) as srv:
        health = health_pb2_grpc.HealthStub(srv.channel)
        for service in ("", "recsvc.v1.Recommender"):
            status = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status
            assert status == health_pb2.HealthCheckResponse.NOT_SERVING
        with pytest.raises(grpc.RpcError) as err:
            products(srv, "M0-000")
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        assert err.value.details().startswith("MODEL_UNAVAILABLE")
        with pytest.raises(grpc.RpcError) as err:
            srv.stub.GetModelInfo(recommender_pb2.GetModelInfoRequest(), timeout=5)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        reply = srv.stub.ReloadModel(recommender_pb2.ReloadModelRequest(), timeout=30)
        assert reply.changed and reply.model_version == planted.bundle_id
        status = health.Check(
            health_pb2.HealthCheckRequest(service="recsvc.v1.Recommender"), timeout=5
        ).status
        assert status == health_pb2.HealthCheckResponse.SERVING
        again = srv.stub.ReloadModel(recommender_pb2.ReloadModelRequest(), timeout=30)
        assert not again.changed
        info = srv.stub.GetModelInfo(recommender_pb2.GetModelInfoRequest(), timeout=5)
        assert info.model_version == planted.bundle_id and info.products == 120 and info.content == 32
        assert dict(info.variants) == {"default": planted.bundle_id}


def test_reload_of_a_missing_bundle_keeps_serving_and_says_why(srv: RunningServer, tmp_path: Path) -> None:
    with pytest.raises(grpc.RpcError) as err:
        srv.stub.ReloadModel(recommender_pb2.ReloadModelRequest(model_uri=str(tmp_path / "nope")), timeout=30)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    assert products(srv, "M0-000").items


@pytest.mark.parametrize("uri", ["models:/recsvc/1", "models:/", "models:/recsvc@", "models:/a/b@champion"])
def test_reload_of_a_malformed_registry_uri_is_the_callers_error(srv: RunningServer, uri: str) -> None:
    with pytest.raises(grpc.RpcError) as err:
        srv.stub.ReloadModel(recommender_pb2.ReloadModelRequest(model_uri=uri), timeout=30)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    details = err.value.details()
    assert details.startswith("INVALID_MODEL_URI: ") and "models:/<name>@<alias>" in details
    assert products(srv, "M0-000").items


def test_reflection_lists_the_services(srv: RunningServer) -> None:
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    stub = reflection_pb2_grpc.ServerReflectionStub(srv.channel)
    req = reflection_pb2.ServerReflectionRequest(list_services="")
    resp = next(iter(stub.ServerReflectionInfo(iter([req]), timeout=5)))
    names = {s.name for s in resp.list_services_response.service}
    assert {"recsvc.v1.Recommender", "grpc.health.v1.Health"} <= names


def test_metrics_split_by_method_source_and_variant(srv: RunningServer, planted: PlantedBundle) -> None:
    products(srv, planted.warm_members()[0])
    products(srv, planted.cold_members[0])
    reg = srv.deps.metrics.registry
    get = reg.get_sample_value
    labels = {"method": "RecommendProducts", "variant": "default", "code": "OK"}
    assert get("recsvc_rec_requests_total", {**labels, "source": "personalized"}) == 1
    assert get("recsvc_rec_requests_total", {**labels, "source": "popular"}) == 1
    assert (
        get(
            "recsvc_rec_request_latency_seconds_count",
            {"method": "RecommendProducts", "source": "personalized", "variant": "default"},
        )
        == 1
    )
    assert get("recsvc_rec_model_info", {"variant": "default", "model_version": planted.bundle_id}) == 1
    products(srv, planted.cold_members[0], scene="home_feed")
    products(srv, planted.cold_members[0], scene="Weird Scene!")
    assert get("recsvc_rec_scene_requests_total", {"method": "RecommendProducts", "scene": "home_feed"}) == 1
    assert get("recsvc_rec_scene_requests_total", {"method": "RecommendProducts", "scene": "other"}) == 1
    assert get("recsvc_rec_scene_requests_total", {"method": "RecommendProducts", "scene": "none"}) == 2


def test_redis_down_still_serves_from_the_bundle(planted: PlantedBundle, tmp_path: Path) -> None:
    from recsvc.localstack import LocalRedis as RedisServer

    redis = RedisServer(tmp_path)
    redis.start()
    try:
        with running_server(serving_settings(str(planted.path), redis.url, tmp_path)) as srv:
            member = planted.warm_members()[0]
            assert products(srv, member).realtime
            redis.stop()
            # Until the process notices (its active-members listener loses the connection, or a
            # read fails), a member the directory knows has no recent events is answered without
            # asking Redis, as realtime; that lasts a moment after Redis dies.
            deadline = time.monotonic() + 2.0
            while products(srv, member).realtime and time.monotonic() < deadline:
                time.sleep(0.02)
            t0 = time.monotonic()
            for _ in range(20):
                resp = products(srv, member)
                assert resp.items and not resp.realtime
                assert {it.source for it in resp.items} == {"personalized"}
            # back-off: 20 calls do not each wait for the dead Redis
            assert time.monotonic() - t0 < 2.0
            assert not _event(srv, member, "P0-003", "view")
            assert srv.deps.metrics.registry.get_sample_value("recsvc_rec_realtime_degraded") == 1
    finally:
        redis.stop()


def test_outreach_is_registered_and_the_recommendation_port_works(
    planted: PlantedBundle, redis_url: str, tmp_path: Path
) -> None:
    from recsvc.errors import InvalidArgument, NotFound

    settings = serving_settings(str(planted.path), redis_url, tmp_path)
    with running_server(settings, with_outreach=True) as srv:
        assert srv.deps.outreach_servicer is not None
        health = health_pb2_grpc.HealthStub(srv.channel)
        status = health.Check(health_pb2.HealthCheckRequest(service="recsvc.v1.Outreach"), timeout=5).status
        assert status == health_pb2.HealthCheckResponse.SERVING
        port = srv.deps.port
        member = planted.warm_members(cluster=2)[0]
        top = port.top_items(member, "product", 4, exclude_item_ids={"P2-002"})
        assert len(top) == 4 and all(planted.item_cluster[it.item_id] == 2 for it in top)
        assert "P2-002" not in {it.item_id for it in top}
        assert all(it.kind == common_pb2.CONTENT for it in port.top_items(member, "content", 2, ()))
        active = set(port.segment_members("active"))
        assert active == {m for m, seg in planted.member_segment.items() if seg == "active"}
        with pytest.raises(NotFound):
            list(port.segment_members("vip"))
        with pytest.raises(InvalidArgument):
            port.top_items(member, "coupon", 3, ())


def test_a_stalled_redis_write_does_not_hold_up_recommendations(
    srv: RunningServer, planted: PlantedBundle, redis_url: str
) -> None:
    """RecordEvent runs in the thread pool: while its write waits on a stalled Redis (up to
    ``redis.socket_timeout_ms``), the event loop keeps answering recommendations."""
    import threading

    import redis

    member = planted.warm_members()[0]
    products(srv, member, k=5)  # warm
    admin = redis.Redis.from_url(redis_url)
    stall = threading.Thread(target=lambda: admin.execute_command("DEBUG", "SLEEP", "0.4"))
    done: dict[str, float] = {}
    try:
        stall.start()
        time.sleep(0.05)  # Redis is now asleep
        event = srv.stub.RecordEvent.future(
            recommender_pb2.RecordEventRequest(member_id="M-stall", item_id="p1", event_type="view"),
            timeout=5,
        )
        event.add_done_callback(lambda _f: done.setdefault("event", time.monotonic()))
        time.sleep(0.005)  # the write is in flight, waiting on Redis
        rec = srv.stub.RecommendProducts.future(
            recommender_pb2.RecommendProductsRequest(member_id=member, k=5), timeout=5
        )
        rec.add_done_callback(lambda _f: done.setdefault("rec", time.monotonic()))
        assert len(rec.result().items) == 5
        assert event.result().stored is False  # Redis did not answer in time: not kept, no error
    finally:
        stall.join()
        admin.close()
    assert done["rec"] < done["event"]  # answered while the write was still waiting
