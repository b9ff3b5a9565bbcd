"""The live catalog (recsvc/catalog): stock, prices, delistings and new products through the
Catalog service, on a real Redis and real servers, reaching every list within a second."""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pandas as pd
import pytest
import redis
from bundle_factory import PlantedBundle, make_bundle
from serving_harness import RunningServer, running_server, serving_settings
from waiting import within

from recsvc.catalog.store import (
    _BURST_BATCHES,
    CatalogFollower,
    CatalogStore,
    Change,
    ItemRecord,
    _Gap,
    _slices,
)
from recsvc.localstack import LocalRedis
from recsvc.settings import load_settings
from recsvc.v1 import catalog_pb2, catalog_pb2_grpc, common_pb2, recommender_pb2

K = 5


@pytest.fixture(scope="module")
def listed(tmp_path_factory: pytest.TempPathFactory) -> PlantedBundle:
    """The planted bundle with every member's default list stored (the lists a live change must
    not leave stale)."""
    from training.member_lists import add_to_bundle

    planted = make_bundle(tmp_path_factory.mktemp("catalog") / "b1")
    s = load_settings(overrides={"serving": {"default_k": K}})
    add_to_bundle(planted.path, s.serving, s.training.hnsw_ef_search, K)
    return planted


@pytest.fixture
def server(listed: PlantedBundle, redis_url: str, tmp_path: Path) -> Iterator[RunningServer]:
    with running_server(serving_settings(str(listed.path), redis_url, tmp_path, default_k=K)) as s:
        yield s


def _catalog(s: RunningServer) -> catalog_pb2_grpc.CatalogStub:
    return catalog_pb2_grpc.CatalogStub(s.channel)


def _ids(s: RunningServer, member: str, **filters: object) -> list[str]:
    req = recommender_pb2.RecommendProductsRequest(member_id=member, k=K)
    if filters:
        req.filters.CopyFrom(common_pb2.RecommendationFilters(**filters))  # type: ignore[arg-type]
    return [it.item_id for it in s.stub.RecommendProducts(req, timeout=5).items]


def _new_product(item_id: str, category: str, brand: str, price: float = 20.0) -> catalog_pb2.CatalogItem:
    return catalog_pb2.CatalogItem(
        item_id=item_id,
        kind=common_pb2.PRODUCT,
        title=f"New {item_id}",
        category=category,
        brand=brand,
        price=price,
        in_stock=True,
    )


def test_sold_out_item_leaves_stored_and_cold_start_lists_within_a_second(
    server: RunningServer, listed: PlantedBundle
) -> None:
    _, model = server.deps.models.default()
    assert model.member_lists is not None  # the stored lists are what this call serves
    member = listed.warm_members(cluster=1)[0]
    before = _ids(server, member)
    top = before[0]
    resp = _catalog(server).SetStock(catalog_pb2.SetStockRequest(item_id=top, in_stock=False), timeout=5)
    assert resp.results[0].applied and resp.results[0].version > 0
    within(1.0, lambda: top not in _ids(server, member), "sold-out item still in the stored list")
    after = _ids(server, member)
    assert len(after) == K  # completed from the live path, not just shortened
    # Without in_stock_only a sold-out item may still be shown (it is listed).
    assert top in _ids(server, member, in_stock_only=False)

    cold = listed.cold_members[0]
    popular = _ids(server, cold)
    _catalog(server).SetStock(catalog_pb2.SetStockRequest(item_id=popular[0], in_stock=False), timeout=5)
    within(1.0, lambda: popular[0] not in _ids(server, cold), "sold-out item still in the cold-start list")

    got = _catalog(server).GetItem(catalog_pb2.GetItemRequest(item_id=top), timeout=5)
    assert not got.in_stock and got.origin == "changed" and got.changed_at > 0 and got.listed
    _catalog(server).SetStock(catalog_pb2.SetStockRequest(item_id=top, in_stock=True), timeout=5)
    within(1.0, lambda: _ids(server, member)[0] == top, "restocked item did not come back")


def test_delisted_item_vanishes_from_lists_and_similar_items(
    server: RunningServer, listed: PlantedBundle
) -> None:
    member = listed.warm_members(cluster=2)[0]
    top = _ids(server, member)[0]
    sibling = next(p for p in listed.products(cluster=2) if p != top and p not in listed.out_of_stock)
    similar = recommender_pb2.SimilarItemsRequest(item_id=sibling, k=40)
    assert top in [it.item_id for it in server.stub.SimilarItems(similar, timeout=5).items]

    _catalog(server).DelistItems(catalog_pb2.ItemIdsRequest(item_ids=[top]), timeout=5)
    within(1.0, lambda: top not in _ids(server, member, in_stock_only=False), "delisted item still listed")
    assert top not in [it.item_id for it in server.stub.SimilarItems(similar, timeout=5).items]
    with pytest.raises(grpc.RpcError) as err:
        server.stub.SimilarItems(recommender_pb2.SimilarItemsRequest(item_id=top, k=5), timeout=5)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert (err.value.details() or "").startswith("ITEM_DELISTED")

    _catalog(server).RelistItems(catalog_pb2.ItemIdsRequest(item_ids=[top]), timeout=5)
    within(1.0, lambda: top in _ids(server, member), "relisted item did not come back")


def test_price_change_moves_an_item_in_and_out_of_a_price_filter(
    server: RunningServer, listed: PlantedBundle
) -> None:
    member = listed.warm_members(cluster=3)[0]
    cheap = _ids(server, member, max_price=15.0)
    item = cheap[0]
    catalog = _catalog(server)
    catalog.UpsertItems(
        catalog_pb2.UpsertItemsRequest(items=[catalog_pb2.CatalogItem(item_id=item, price=99.0)])
    )
    within(1.0, lambda: item not in _ids(server, member, max_price=15.0), "repriced item still under 15")
    assert item in _ids(server, member, min_price=90.0)
    catalog.UpsertItems(
        catalog_pb2.UpsertItemsRequest(items=[catalog_pb2.CatalogItem(item_id=item, price=11.0)])
    )
    within(1.0, lambda: item in _ids(server, member, max_price=15.0), "item back under 15 not shown")
    assert catalog.GetItem(catalog_pb2.GetItemRequest(item_id=item)).price == pytest.approx(11.0)


def test_new_product_is_recommended_to_its_category_buyers_and_in_similar_items(
    server: RunningServer, listed: PlantedBundle
) -> None:
    catalog = _catalog(server)
    resp = catalog.UpsertItems(
        catalog_pb2.UpsertItemsRequest(items=[_new_product("NEW-1", "cat1", "brand2")]), timeout=5
    )
    assert resp.applied == 1, resp
    buyer = next(m for m in listed.warm_members(cluster=1) if listed.purchased.get(m))

    def shown() -> list[common_pb2.RecommendedItem]:
        req = recommender_pb2.RecommendProductsRequest(member_id=buyer, k=20)
        return [it for it in server.stub.RecommendProducts(req, timeout=5).items if it.item_id == "NEW-1"]

    within(1.0, lambda: bool(shown()), "new product not recommended to a cat1 buyer")
    item = shown()[0]
    assert item.source == "new" and item.reason == "new in cat1, which you buy"
    assert item.category == "cat1" and item.brand == "brand2" and item.title == "New NEW-1"
    # The stored default page too: a new item scoring above its last entry makes it live.
    assert "NEW-1" in _ids(server, buyer) or len(_ids(server, buyer)) == K
    other = listed.warm_members(cluster=3)[0]
    assert "NEW-1" not in _ids(server, other)

    similar = server.stub.SimilarItems(recommender_pb2.SimilarItemsRequest(item_id="NEW-1", k=10), timeout=5)
    assert {listed.item_cluster[it.item_id] for it in similar.items} == {1}
    near = server.stub.SimilarItems(recommender_pb2.SimilarItemsRequest(item_id="P1-000", k=30), timeout=5)
    assert "NEW-1" in [it.item_id for it in near.items]
    # A member with no history who views the new product gets its neighbours (real-time vector).
    cold = listed.cold_members[1]
    for _ in range(3):
        answer = server.stub.RecordEvent(
            recommender_pb2.RecordEventRequest(member_id=cold, item_id="NEW-1", event_type="view")
        )
        assert answer.item_known  # created in the live catalog: the event counts, and says so
    made_up = recommender_pb2.RecordEventRequest(member_id=cold, item_id="NEVER-MADE", event_type="view")
    assert not server.stub.RecordEvent(made_up).item_known
    req = recommender_pb2.RecommendProductsRequest(member_id=cold, k=5)
    recs = server.stub.RecommendProducts(req, timeout=5)
    assert recs.items[0].source in ("realtime", "new")
    assert {listed.item_cluster.get(it.item_id, 1) for it in recs.items} == {1}


def test_scheduled_product_appears_when_its_time_comes(server: RunningServer, listed: PlantedBundle) -> None:
    item = _new_product("SOON-1", "cat0", "brand0")
    item.published_at = int(time.time()) + 2
    _catalog(server).UpsertItems(catalog_pb2.UpsertItemsRequest(items=[item]), timeout=5)
    buyer = listed.warm_members(cluster=0)[0]

    def shown() -> bool:
        req = recommender_pb2.RecommendProductsRequest(member_id=buyer, k=30)
        return "SOON-1" in [it.item_id for it in server.stub.RecommendProducts(req, timeout=5).items]

    time.sleep(0.5)
    assert not shown()
    within(4.0, shown, "scheduled product did not appear at its time")


def test_each_bad_input_gets_its_named_error(server: RunningServer) -> None:
    catalog = _catalog(server)
    bad = [
        catalog_pb2.CatalogItem(item_id="", price=1.0),
        catalog_pb2.CatalogItem(item_id="bad id!", price=1.0),
        catalog_pb2.CatalogItem(item_id="P0-001", price=-1.0),
        catalog_pb2.CatalogItem(item_id="P0-002", price=float("inf")),
        catalog_pb2.CatalogItem(item_id="P0-003", price=2e8),
        catalog_pb2.CatalogItem(item_id="P0-004", title="x" * 201),
        catalog_pb2.CatalogItem(item_id="P0-005"),
        catalog_pb2.CatalogItem(item_id="NEW-X", kind=common_pb2.PRODUCT, title="t", category="c", price=1.0),
        catalog_pb2.CatalogItem(item_id="P0-006", kind=common_pb2.CONTENT),
        catalog_pb2.CatalogItem(item_id="C0-001", set_featured=True, featured_item_ids=["NOPE"]),
        catalog_pb2.CatalogItem(item_id="P0-007", set_featured=True, featured_item_ids=["P0-001"]),
        catalog_pb2.CatalogItem(item_id="P0-008", price=12.0),  # the good one
        catalog_pb2.CatalogItem(item_id="P0-008", price=13.0),
        # data files read it as 12347: created so, the export and the next training disagree
        catalog_pb2.CatalogItem(
            item_id="12347.0", kind=common_pb2.PRODUCT, title="t", category="c", brand="b"
        ),
    ]
    resp = catalog.UpsertItems(catalog_pb2.UpsertItemsRequest(items=bad), timeout=5)
    reasons = [(r.code, r.reason) for r in resp.results]
    assert reasons == [
        ("INVALID_ARGUMENT", "EMPTY_ITEM_ID"),
        ("INVALID_ARGUMENT", "INVALID_ITEM_ID"),
        ("INVALID_ARGUMENT", "NEGATIVE_PRICE"),
        ("INVALID_ARGUMENT", "BAD_PRICE"),
        ("INVALID_ARGUMENT", "PRICE_OUT_OF_RANGE"),
        ("INVALID_ARGUMENT", "TITLE_TOO_LONG"),
        ("INVALID_ARGUMENT", "EMPTY_CHANGE"),
        ("INVALID_ARGUMENT", "MISSING_BRAND"),
        ("INVALID_ARGUMENT", "KIND_CHANGE"),
        ("INVALID_ARGUMENT", "UNKNOWN_FEATURED_ITEM"),
        ("INVALID_ARGUMENT", "FEATURED_ON_PRODUCT"),
        ("", ""),
        ("INVALID_ARGUMENT", "DUPLICATE_ITEM"),
        ("INVALID_ARGUMENT", "INVALID_ITEM_ID"),
    ]
    assert "send '12347'" in resp.results[-1].message
    assert resp.applied == 1 and resp.failed == 13
    # A bad item is never half-applied: P0-001's price is the bundle's.
    assert catalog.GetItem(catalog_pb2.GetItemRequest(item_id="P0-001")).origin == "bundle"

    def code_and_reason(call: Callable[[], object]) -> tuple[grpc.StatusCode, str]:
        with pytest.raises(grpc.RpcError) as err:
            call()
        return err.value.code(), (err.value.details() or "").split(":")[0]

    nf = grpc.StatusCode.NOT_FOUND
    ia = grpc.StatusCode.INVALID_ARGUMENT
    assert code_and_reason(lambda: catalog.SetStock(catalog_pb2.SetStockRequest(item_id="NOPE"))) == (
        nf,
        "ITEM_NOT_FOUND",
    )
    assert code_and_reason(lambda: catalog.SetStock(catalog_pb2.SetStockRequest(item_id=""))) == (
        ia,
        "EMPTY_ITEM_ID",
    )
    assert code_and_reason(lambda: catalog.GetItem(catalog_pb2.GetItemRequest(item_id="NOPE"))) == (
        nf,
        "ITEM_NOT_FOUND",
    )
    assert code_and_reason(lambda: catalog.UpsertItems(catalog_pb2.UpsertItemsRequest())) == (ia, "NO_ITEMS")
    many = catalog_pb2.SetStockManyRequest(changes=[catalog_pb2.StockChange(item_id="P0-001")] * 10_001)
    assert code_and_reason(lambda: catalog.SetStockMany(many)) == (ia, "TOO_MANY_ITEMS")
    stock = catalog.SetStockMany(
        catalog_pb2.SetStockManyRequest(
            changes=[catalog_pb2.StockChange(item_id="P0-001"), catalog_pb2.StockChange(item_id="NOPE")]
        )
    )
    assert [(r.applied, r.reason) for r in stock.results] == [(True, ""), (False, "ITEM_NOT_FOUND")]


def test_a_kind_change_is_refused_even_before_this_process_has_seen_the_item(
    server: RunningServer, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A new product, then the same id as content in a second call that reaches the process
    before its view has the product (frozen here: a second replica, or within the propagation
    time): Redis refuses the kind change, and the record stays a product."""
    catalog = _catalog(server)
    live = server.deps.engine.catalog
    monkeypatch.setattr(live, "update", lambda *args, **kwargs: None)  # this process sees nothing new
    product = _new_product("RACE-1", "cat0", "brand0")
    assert catalog.UpsertItems(catalog_pb2.UpsertItemsRequest(items=[product]), timeout=5).applied == 1
    content = catalog_pb2.CatalogItem(
        item_id="RACE-1", kind=common_pb2.CONTENT, title="t", category="content0", price=0.0, published_at=1
    )
    second = catalog.UpsertItems(catalog_pb2.UpsertItemsRequest(items=[content]), timeout=5)
    assert [(r.code, r.reason) for r in second.results] == [("INVALID_ARGUMENT", "KIND_CHANGE")]
    assert second.applied == 0
    client = redis.Redis.from_url(redis_url)
    held = [client.hget(key, "RACE-1") for key in client.scan_iter(match="*:{catalog}:items")]
    assert [ItemRecord.parse(raw).fields["kind"] for raw in held if raw] == ["product"]


def test_undecodable_request_bytes_are_invalid_argument(server: RunningServer) -> None:
    # Raw bytes that are no UpsertItemsRequest message: INVALID_ARGUMENT, never UNKNOWN or INTERNAL.
    raw = server.channel.unary_unary("/recsvc.v1.Catalog/UpsertItems")
    with pytest.raises(grpc.RpcError) as err:
        raw(b"\x0a\xff\xff\xff\xff\x0f", timeout=5)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_upsert_of_a_thousand_new_products_in_one_call(server: RunningServer, listed: PlantedBundle) -> None:
    items = [_new_product(f"BULK-{i:05d}", f"cat{i % 4}", f"brand{2 * (i % 4)}") for i in range(1000)]
    resp = _catalog(server).UpsertItems(catalog_pb2.UpsertItemsRequest(items=items), timeout=30)
    assert resp.applied == 1000
    buyer = listed.warm_members(cluster=1)[0]

    def recommended() -> bool:
        req = recommender_pb2.RecommendProductsRequest(member_id=buyer, k=20)
        return any(it.source == "new" for it in server.stub.RecommendProducts(req, timeout=5).items)

    within(2.0, recommended, "bulk new products not recommended")
    got = _catalog(server).GetItem(catalog_pb2.GetItemRequest(item_id="BULK-00999"), timeout=5)
    assert got.origin == "new" and got.category == "cat3"


def test_bundle_swap_retires_older_changes_and_keeps_newer_ones(
    server: RunningServer, listed: PlantedBundle, tmp_path: Path
) -> None:
    catalog = _catalog(server)
    catalog.UpsertItems(
        catalog_pb2.UpsertItemsRequest(items=[catalog_pb2.CatalogItem(item_id="P2-003", price=77.0)])
    )
    catalog.UpsertItems(catalog_pb2.UpsertItemsRequest(items=[_new_product("NEW-OLD", "cat2", "brand4")]))
    catalog.DelistItems(catalog_pb2.ItemIdsRequest(item_ids=["P2-005"]))
    time.sleep(1.1)  # the new bundle's created_at has second precision
    second = tmp_path / "b2"
    shutil.copytree(listed.path, second)
    import json

    manifest = json.loads((second / "manifest.json").read_text())
    manifest["bundle_id"] = "test-bundle-2"
    manifest["created_at"] = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime())
    (second / "manifest.json").write_text(json.dumps(manifest))
    time.sleep(1.1)
    catalog.UpsertItems(
        catalog_pb2.UpsertItemsRequest(items=[catalog_pb2.CatalogItem(item_id="P2-004", price=88.0)])
    )
    server.stub.ReloadModel(recommender_pb2.ReloadModelRequest(model_uri=str(second)), timeout=30)
    get = lambda i: catalog.GetItem(catalog_pb2.GetItemRequest(item_id=i), timeout=5)  # noqa: E731
    assert get("P2-003").price == pytest.approx(listed.item_price["P2-003"])  # older: in the bundle's data
    assert get("P2-004").price == pytest.approx(88.0)  # newer: still in force
    assert get("NEW-OLD").origin == "new"  # not in the bundle: stays
    # older, but no catalog file can hold a delisting: it stays until relisted
    assert not get("P2-005").listed
    assert "P2-005" not in _ids(server, listed.warm_members(cluster=2)[0], in_stock_only=False)


def test_refused_odd_ids_never_make_the_answer_too_large_to_send(server: RunningServer) -> None:
    """9,999 refused ids of control characters (each printed four times its size in a message)
    beside one valid change: the answer reaches a client with gRPC's default 4 MiB limit, and
    says the valid change was applied."""
    changes = [catalog_pb2.StockChange(item_id="\x01" * 64) for _ in range(9_999)]
    changes.append(catalog_pb2.StockChange(item_id="P2-007", in_stock=False))
    reply = _catalog(server).SetStockMany(catalog_pb2.SetStockManyRequest(changes=changes), timeout=30)
    assert (reply.applied, reply.failed) == (1, 9_999)
    assert reply.results[-1].applied and reply.results[0].reason == "INVALID_ITEM_ID"
    assert reply.ByteSize() < 4 * 1024 * 1024


def test_changes_to_an_item_no_bundle_holds_are_not_found(
    server: RunningServer, redis_url: str, listed: PlantedBundle, tmp_path: Path
) -> None:
    """An item a retrain dropped (its catalog file left it out) keeps only a record of changes,
    without a kind: stock, listing and reads answer NOT_FOUND instead of 'applied' to nothing,
    and a whole upsert brings it back."""
    from recsvc.catalog.store import CatalogStore, Change
    from recsvc.redis_client import connect

    prefix = serving_settings(str(listed.path), redis_url, tmp_path).redis.key_prefix
    CatalogStore(connect(redis_url), prefix, feed_maxlen=1000).apply(
        [Change("GONE-1", {"listed": False}, False)]
    )
    catalog = _catalog(server)
    for reply in (
        catalog.RelistItems(catalog_pb2.ItemIdsRequest(item_ids=["GONE-1"]), timeout=5),
        catalog.SetStockMany(
            catalog_pb2.SetStockManyRequest(
                changes=[catalog_pb2.StockChange(item_id="GONE-1", in_stock=True)]
            ),
            timeout=5,
        ),
    ):
        assert [(r.applied, r.reason) for r in reply.results] == [(False, "ITEM_NOT_FOUND")]
    with pytest.raises(grpc.RpcError) as err:
        catalog.SetStock(catalog_pb2.SetStockRequest(item_id="GONE-1", in_stock=True), timeout=5)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    back = catalog.UpsertItems(
        catalog_pb2.UpsertItemsRequest(items=[_new_product("GONE-1", "cat1", "brand1")])
    )
    assert [r.applied for r in back.results] == [True]


def test_follower_applies_each_change_once_and_rereads_after_a_gap(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    store = CatalogStore(client, "gap", feed_maxlen=1000)
    seen: list[int] = []
    follower = CatalogFollower(store, client, on_change=lambda r: seen.append(len(r)))
    follower._resync()
    store.apply([Change("A", {"in_stock": False}, False), Change("B", {"in_stock": False}, False)])
    entries = client.xread({store.feed_key: "0-0"})
    assert follower._apply(entries) and follower.seq == 2
    assert not follower._apply(entries)  # the same entries again: nothing applied twice
    assert follower.records["A"].fields == {"in_stock": False}
    last = follower._last_id
    store.apply([Change("C", {"listed": False}, False)])
    store.apply([Change("A", {"in_stock": True}, False)])
    client.xtrim(store.feed_key, maxlen=1, approximate=False)  # the entry for C is gone
    with pytest.raises(_Gap):
        follower._apply(client.xread({store.feed_key: last}))
    follower._resync()
    assert follower.seq == 4 and follower.records["A"].fields["in_stock"] is True and "C" in follower.records
    # Refused for an item Redis does not know when the caller did not find it either.
    assert not store.apply([Change("Z", {"in_stock": False}, True)])[0].applied


def test_redis_down_keeps_the_last_catalog_and_refuses_changes(listed: PlantedBundle, tmp_path: Path) -> None:
    own = LocalRedis(tmp_path / "redis").start()
    try:
        with running_server(serving_settings(str(listed.path), own.url, tmp_path, default_k=K)) as s:
            member = listed.warm_members(cluster=0)[0]
            top = _ids(s, member)[0]
            _catalog(s).SetStock(catalog_pb2.SetStockRequest(item_id=top, in_stock=False), timeout=5)
            within(1.0, lambda: top not in _ids(s, member), "sold-out item still listed")
            own.stop()
            time.sleep(0.5)
            assert top not in _ids(s, member)  # nothing reverts to the bundle
            with pytest.raises(grpc.RpcError) as err:
                _catalog(s).SetStock(catalog_pb2.SetStockRequest(item_id=top, in_stock=True), timeout=5)
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
            assert (err.value.details() or "").startswith("CATALOG_UNAVAILABLE")
            assert not s.deps.engine.catalog.connected
    finally:
        own.stop()


def test_cli_export_then_sync_pushes_only_the_difference(server: RunningServer, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from recsvc.cli import app

    runner = CliRunner()
    out = tmp_path / "catalog.csv"
    done = runner.invoke(app, ["catalog", "export", str(out), "--target", server.target])
    assert done.exit_code == 0, done.output
    lines = out.read_text().splitlines()
    assert lines[0] == "item_id,kind,title,category,brand,price,in_stock,published_at,featured_item_ids"
    # a trained story's featured products come from the bundle, for the next training to keep
    assert "C1-000,content,Story C1-000,content1,brand2,10,true,1970-01-01T00:00:00Z,P1-002|P1-003" in lines
    story = _catalog(server).GetItem(catalog_pb2.GetItemRequest(item_id="C1-000"))
    assert story.set_featured and list(story.featured_item_ids) == ["P1-002", "P1-003"]
    same = runner.invoke(app, ["catalog", "sync", str(out), "--target", server.target])
    assert same.exit_code == 0, same.output
    assert "upsert=0" in same.output  # the service's own catalog: nothing to push
    # an existing file is someone's catalog: replaced only when asked
    out.write_text("mine\n")
    kept = runner.invoke(app, ["catalog", "export", str(out), "--target", server.target])
    assert kept.exit_code == 2 and "--overwrite" in kept.output, kept.output
    assert out.read_text() == "mine\n"
    again = runner.invoke(app, ["catalog", "export", str(out), "--overwrite", "--target", server.target])
    assert again.exit_code == 0 and out.read_text().splitlines() == lines, again.output
    text = out.read_text().replace(
        "P0-000,product,Product P0-000,cat0,brand0,10,", "P0-000,product,Product P0-000,cat0,brand0,55,"
    )
    text += "NEW-CLI,product,Fresh tea,cat0,brand0,9.5,true,,\n"
    out.write_text(text)
    pushed = runner.invoke(app, ["catalog", "sync", str(out), "--target", server.target])
    assert pushed.exit_code == 0, pushed.output
    assert "upsert=2" in pushed.output and "applied=2" in pushed.output
    catalog = _catalog(server)
    within(1.0, lambda: catalog.GetItem(catalog_pb2.GetItemRequest(item_id="P0-000")).price == 55.0, "price")
    got = runner.invoke(app, ["catalog", "get", "NEW-CLI", "--target", server.target])
    assert got.exit_code == 0 and '"origin": "new"' in got.output, got.output
    sold = runner.invoke(app, ["catalog", "stock", "NEW-CLI", "OUT", "--target", server.target])
    assert sold.exit_code == 0 and "applied=1" in sold.output  # the words stock-feed takes, any case
    within(1.0, lambda: not catalog.GetItem(catalog_pb2.GetItemRequest(item_id="NEW-CLI")).in_stock, "out")
    odd = runner.invoke(app, ["catalog", "stock", "NEW-CLI", "outt", "--target", server.target])
    assert odd.exit_code == 2
    gone = runner.invoke(app, ["catalog", "delist", "NOPE", "--target", server.target])
    assert "ITEM_NOT_FOUND" in gone.output and gone.exit_code == 1  # a refused change: exit 1


def test_follower_applies_lone_changes_at_once_and_a_stream_in_paced_batches(redis_url: str) -> None:
    """With ``settle_s`` changes a moment apart are each applied at once, up to an allowance of
    ``_BURST_BATCHES``; once a stream has spent it, its changes wait for one rebuild per
    ``settle_s`` instead of one each."""
    store = CatalogStore(redis.Redis.from_url(redis_url), "burst", feed_maxlen=1000)
    calls: list[int] = []
    follower = CatalogFollower(
        store,
        redis.Redis.from_url(redis_url, socket_timeout=5),
        on_change=lambda r: calls.append(len(r)),
        block_ms=200,
        settle_s=2.0,  # the allowance grows by half a batch a second: spent below, it stays spent
    ).start()
    try:
        first = len(calls)  # the first full read

        def rebuilds(n: int) -> Callable[[], bool]:
            return lambda: len(calls) == first + n

        for i in range(_BURST_BATCHES + 1):
            store.apply([Change(f"A{i}", {"in_stock": False}, False)])
            within(0.4, rebuilds(i + 1), f"lone change {i} waited")
        # the allowance is spent: the follower waits (about a second) before its next batch
        t0 = time.monotonic()
        for i in range(5):
            store.apply([Change(f"B{i}", {"in_stock": False}, False)])
        assert time.monotonic() - t0 < 0.3  # the stream is inside the wait
        # records are swapped in before on_change runs: wait for the rebuild, not the records alone
        within(
            4.0,
            lambda: (
                len(calls) >= first + _BURST_BATCHES + 2
                and {f"B{i}" for i in range(5)} <= set(follower.records.keys())
            ),
            "stream not applied",
        )
        assert len(calls) == first + _BURST_BATCHES + 2, calls  # one rebuild for the five changes
    finally:
        follower.stop()


def test_slices_keep_the_feed_order_and_never_split_an_entry() -> None:
    def entry(n: int, tag: str) -> tuple[bytes, dict[bytes, bytes]]:
        fields = {b"v0": b"1", b"n": str(n).encode()}
        fields.update({f"{tag}{i}".encode(): b"{}" for i in range(n)})
        return tag.encode(), fields

    found = [(b"feed", [entry(1, "a"), entry(1, "b"), entry(30, "c"), entry(1, "d"), entry(2, "e")])]
    parts = list(_slices(found, 2))
    assert [[e[0] for _, es in p for e in es] for p in parts] == [[b"a", b"b"], [b"c"], [b"d"], [b"e"]]
    assert list(_slices(None, 16)) == [] and list(_slices([], 16)) == []
    bulk = [(b"feed", [entry(1, "a"), entry(30, "b"), entry(30, "c"), entry(1, "d")])]
    assert [[e[0] for _, es in p for e in es] for p in _slices(bulk, 2)] == [[b"a"], [b"b", b"c"], [b"d"]]
    assert [len(es) for p in _slices(found, 100) for _, es in p] == [5]


def test_follower_applies_a_large_batch_in_slices_and_misses_nothing(redis_url: str) -> None:
    """A feed batch of many changes reaches the owner in slices of about ``slice_items`` changes,
    in feed order, each with the records as of its last change: between slices the serving
    thread gets the GIL (the follower sleeps a moment), so no call waits for a whole batch."""
    client = redis.Redis.from_url(redis_url)
    store = CatalogStore(client, "slices", feed_maxlen=1000)
    batches: list[tuple[set[str], dict[str, bool]]] = []
    follower = CatalogFollower(
        store,
        client,
        on_change=lambda r: None,
        on_batch=lambda r, changed: batches.append((set(changed), {k: r[k].fields["in_stock"] for k in r})),
        slice_items=16,
    )
    follower._resync()
    for i in range(40):
        store.apply([Change(f"S{i:02d}", {"in_stock": False}, False)])
    store.apply([Change(f"M{i:02d}", {"in_stock": True}, False) for i in range(30)])  # one entry
    follower.wake_at = time.monotonic() + 60  # a scheduled item far off: a slice clears it
    real_xread, reads = client.xread, []

    def xread_once(*args: Any, **kwargs: Any) -> Any:
        reads.append(1)
        if len(reads) > 1:
            follower._stop.set()  # one feed batch is enough
            return None
        return real_xread(*args, **kwargs)

    follower._client = type("C", (), {"xread": staticmethod(xread_once)})()
    follower._follow()
    ids = [f"S{i:02d}" for i in range(40)] + [f"M{i:02d}" for i in range(30)]
    assert [len(b[0]) for b in batches] == [16, 16, 8, 30]
    bounds = ((0, 16), (16, 32), (32, 40), (40, 70))
    assert [sorted(b[0]) for b in batches] == [sorted(ids[i:j]) for i, j in bounds]
    # each slice saw the records up to its own last change, not the batch's
    assert len(batches[0][1]) == 16 and len(batches[-1][1]) == 70
    assert follower.seq == 70 and follower.wake_at is None


def test_featured_refused_products_content_prices_and_unicode_ids(server: RunningServer) -> None:
    """Content may feature a product the same call creates only if that product is applied; known
    content cannot take a price; an id is one item whatever its Unicode form (stored as NFC)."""
    catalog = _catalog(server)
    content = catalog_pb2.CatalogItem(
        item_id="C-FEAT",
        kind=common_pb2.CONTENT,
        title="Guide",
        category="cat0",
        price=0.0,
        published_at=1_700_000_000,
        set_featured=True,
    )
    refused = _new_product("FP-BAD", "cat0", "brand0", price=float("nan"))
    one = catalog_pb2.CatalogItem()
    one.CopyFrom(content)
    one.featured_item_ids.append("FP-BAD")
    two = catalog_pb2.CatalogItem()
    two.CopyFrom(content)
    two.item_id = "C-FEAT2"
    two.featured_item_ids.extend(["FP-OK"])
    resp = catalog.UpsertItems(
        catalog_pb2.UpsertItemsRequest(items=[refused, one, _new_product("FP-OK", "cat0", "brand0"), two]),
        timeout=5,
    )
    assert [r.reason for r in resp.results] == ["BAD_PRICE", "UNKNOWN_FEATURED_ITEM", "", ""]
    priced = catalog.UpsertItems(
        catalog_pb2.UpsertItemsRequest(items=[catalog_pb2.CatalogItem(item_id="C0-002", price=5.0)]),
        timeout=5,
    )
    assert [r.reason for r in priced.results] == ["PRICE_ON_CONTENT"]
    decomposed = "Cafe\u0301-1"
    made = catalog.UpsertItems(
        catalog_pb2.UpsertItemsRequest(items=[_new_product(decomposed, "cat0", "brand0")]), timeout=5
    )
    assert made.applied == 1
    within(1.0, lambda: _exists(catalog, "Caf\u00e9-1"), "NFC id not found")
    assert catalog.GetItem(catalog_pb2.GetItemRequest(item_id=decomposed), timeout=5).item_id == "Caf\u00e9-1"
    sold = catalog.SetStockMany(
        catalog_pb2.SetStockManyRequest(
            changes=[catalog_pb2.StockChange(item_id=decomposed, in_stock=False)]
        ),
        timeout=5,
    )
    assert sold.applied == 1
    within(1.0, lambda: not _item(catalog, "Caf\u00e9-1").in_stock, "stock change on the NFC id")


def _item(catalog: catalog_pb2_grpc.CatalogStub, item_id: str) -> catalog_pb2.CatalogItem:
    return catalog.GetItem(catalog_pb2.GetItemRequest(item_id=item_id), timeout=5)


def _exists(catalog: catalog_pb2_grpc.CatalogStub, item_id: str) -> bool:
    try:
        _item(catalog, item_id)
    except grpc.RpcError as exc:
        if exc.code() == grpc.StatusCode.NOT_FOUND:
            return False
        raise
    return True


def test_cli_sync_reads_a_catalog_file_as_training_does(server: RunningServer, tmp_path: Path) -> None:
    """What `export` writes comes back unchanged through `sync` (formula-like titles, precise
    prices); blank required cells are skipped with the validation's reason, never read as 0 or
    false; a Parquet file with a missing publication time and list-valued featured ids syncs; a
    file that cannot be read or written is one line, exit 2."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from typer.testing import CliRunner

    from recsvc.cli import app

    catalog = _catalog(server)
    tricky = _new_product("RT-1", "cat0", "@home", price=12345.67)
    tricky.title = "-50% off tea"
    resp = catalog.UpsertItems(catalog_pb2.UpsertItemsRequest(items=[tricky]), timeout=5)
    assert resp.applied == 1
    within(1.0, lambda: _exists(catalog, "RT-1"), "RT-1")
    runner = CliRunner()
    out = tmp_path / "catalog.csv"
    assert runner.invoke(app, ["catalog", "export", str(out), "--target", server.target]).exit_code == 0
    same = runner.invoke(app, ["catalog", "sync", str(out), "--target", server.target])
    assert same.exit_code == 0 and "upsert=0" in same.output, same.output
    # blank price and in_stock for a known product: skipped, not zeroed
    blank = tmp_path / "blank.csv"
    blank.write_text(out.read_text() + "P1-002,product,Product P1-002,cat1,brand1,,,,\n")
    before = _item(catalog, "P1-002")
    skipped = runner.invoke(app, ["catalog", "sync", str(blank), "--target", server.target])
    assert skipped.exit_code == 1 and "bad_price" in skipped.output, skipped.output
    after = _item(catalog, "P1-002")
    assert (after.price, after.in_stock) == (before.price, before.in_stock)
    # a row the checks reject is still in the file: --delist-missing leaves that item listed
    rows = pd.read_csv(out, dtype=str, keep_default_na=False)
    assert (rows["item_id"] == "P1-003").sum() == 1
    rows.loc[rows["item_id"] == "P1-003", "price"] = "12,50"  # a decimal comma: bad_price
    rows.to_csv(tmp_path / "typo.csv", index=False)
    dry = runner.invoke(
        app,
        [
            "catalog",
            "sync",
            str(tmp_path / "typo.csv"),
            "--delist-missing",
            "--dry-run",
            "--target",
            server.target,
        ],
    )
    assert dry.exit_code == 1 and "bad_price" in dry.output and "delist=0" in dry.output, dry.output
    real = runner.invoke(
        app, ["catalog", "sync", str(tmp_path / "typo.csv"), "--delist-missing", "--target", server.target]
    )
    assert real.exit_code == 1 and "delist=0" in real.output, real.output
    assert _item(catalog, "P1-003").listed
    table = pa.table(
        {
            "item_id": ["PQ-1", "PQ-C"],
            "kind": ["product", "content"],
            "title": ["Parquet tea", "Parquet guide"],
            "category": ["cat0", "cat0"],
            "brand": ["brand0", None],
            "price": [7.5, 0.0],
            "in_stock": [True, True],
            "published_at": pa.array([None, 1_700_000_000_000_000], pa.timestamp("us", tz="UTC")),
            "featured_item_ids": pa.array([[], ["PQ-1"]], pa.list_(pa.string())),
        }
    )
    pq.write_table(table, tmp_path / "catalog.parquet")
    synced = runner.invoke(
        app, ["catalog", "sync", str(tmp_path / "catalog.parquet"), "--target", server.target]
    )
    assert synced.exit_code == 0 and "applied=2" in synced.output, synced.output
    within(1.0, lambda: _exists(catalog, "PQ-C"), "PQ-C")
    assert list(_item(catalog, "PQ-C").featured_item_ids) == ["PQ-1"]
    for args in (["sync", str(tmp_path / "no-such.csv")], ["export", str(tmp_path)]):
        failed = runner.invoke(app, ["catalog", *args, "--target", server.target])
        assert failed.exit_code == 2 and "error FILE:" in failed.output, failed.output
        assert "Traceback" not in failed.output


def test_blank_or_control_character_text_and_too_many_featured_items_are_refused(
    server: RunningServer,
) -> None:
    catalog = _catalog(server)
    items = [
        catalog_pb2.CatalogItem(item_id="P0-001", title="   "),
        catalog_pb2.CatalogItem(item_id="P0-002", category=" "),
        catalog_pb2.CatalogItem(item_id="P0-003", brand="\t"),
        catalog_pb2.CatalogItem(item_id="P0-004", title="Tea\x00bag"),
        catalog_pb2.CatalogItem(item_id="P0-005", title="Tea\x1b[31m"),
        catalog_pb2.CatalogItem(item_id="C0-003", set_featured=True, featured_item_ids=["P0-000"] * 201),
        catalog_pb2.CatalogItem(item_id="P0-007", title="\u200b"),  # only a zero-width space
        catalog_pb2.CatalogItem(item_id="P0-008", title="Tea\u2028bag"),  # a line separator
        catalog_pb2.CatalogItem(
            item_id="P0-009", title="Family \U0001f468\u200d\U0001f469 pack"
        ),  # ZWJ: fine
        catalog_pb2.CatalogItem(item_id="P0-006", title="Oolong 250g"),  # the good one
    ]
    resp = catalog.UpsertItems(catalog_pb2.UpsertItemsRequest(items=items), timeout=5)
    assert [r.reason for r in resp.results] == [
        "BLANK_TITLE",
        "BLANK_CATEGORY",
        "BLANK_BRAND",
        "BAD_TITLE",
        "BAD_TITLE",
        "TOO_MANY_FEATURED",
        "BLANK_TITLE",
        "BAD_TITLE",
        "",
        "",
    ]
    assert {r.code for r in resp.results[:-2]} == {"INVALID_ARGUMENT"}


def test_a_process_that_followed_every_change_answers_as_one_started_after_them(
    listed: PlantedBundle, redis_url: str, tmp_path: Path
) -> None:
    """The views a process moves on batch by batch (new products, content featuring them,
    stock, prices, listings, renames, category changes, a scheduled item) against the view a
    process started afterwards builds whole from Redis: the same catalog, the same answers."""
    import random

    rng = random.Random(11)
    trained = listed.products()
    with running_server(serving_settings(str(listed.path), redis_url, tmp_path / "a", default_k=K)) as first:
        catalog = _catalog(first)
        made: list[str] = []
        for step in range(30):
            items = []
            for j in range(rng.randint(1, 6)):
                roll = rng.random()
                known = rng.choice(trained + made)
                if roll < 0.3:
                    new = _new_product(f"E2E-{step}-{j}", rng.choice(["cat0", "cat1", "cat2"]), "brand1")
                    made.append(new.item_id)
                    items.append(new)
                elif roll < 0.4 and made:
                    items.append(_new_content(f"E2E-C{step}-{j}", [made[-1], trained[0]]))
                elif roll < 0.6:
                    items.append(catalog_pb2.CatalogItem(item_id=known, in_stock=rng.random() < 0.5))
                elif roll < 0.75:
                    items.append(catalog_pb2.CatalogItem(item_id=known, price=round(rng.uniform(1, 60), 2)))
                elif roll < 0.85:
                    items.append(
                        catalog_pb2.CatalogItem(item_id=known, category=rng.choice(["cat1", "cat3"]))
                    )
                elif roll < 0.95:
                    items.append(catalog_pb2.CatalogItem(item_id=known, title=f"Renamed {step}"))
                else:
                    items.append(catalog_pb2.CatalogItem(item_id=known, published_at=int(time.time()) + 1))
            unique = list({it.item_id: it for it in reversed(items)}.values())  # one change per item
            resp = catalog.UpsertItems(catalog_pb2.UpsertItemsRequest(items=unique), timeout=5)
            assert resp.failed == 0, resp
            if step % 5 == 0:
                delisted = rng.sample(trained + made, 2)
                resp = catalog.DelistItems(catalog_pb2.ItemIdsRequest(item_ids=delisted), timeout=5)
            # the next call's checks read this process's view: let it see this one first
            last = max(r.version for r in resp.results)

            def followed(v: int = last) -> bool:
                return bool(first.deps.engine.catalog.version >= v)

            within(2.0, followed, "change not followed")
        time.sleep(1.5)  # the scheduled items' times pass
        with running_server(
            serving_settings(str(listed.path), redis_url, tmp_path / "b", default_k=K)
        ) as second:
            live = [s.deps.engine.catalog for s in (first, second)]
            within(
                2.0, lambda: live[0].version == live[1].version > 0, "the processes disagree on the version"
            )

            def exported(s: RunningServer) -> list[bytes]:
                items = _catalog(s).ExportCatalog(catalog_pb2.ExportCatalogRequest(), timeout=10)
                return [it.SerializeToString() for it in items]

            assert exported(first) == exported(second)
            members = listed.warm_members()[:12] + listed.cold_members[:2]
            for member in members:
                for filters in (
                    {},
                    {"in_stock_only": False},
                    {"max_price": 30.0},
                    {"include_categories": ["cat1"]},
                ):
                    a, b = (_answer(s, member, **filters) for s in (first, second))
                    assert a == b, (member, filters)
            for item in [*made[-3:], *trained[:3]]:
                req = recommender_pb2.SimilarItemsRequest(item_id=item, k=10)
                try:
                    a_sim = [(i.item_id, i.score) for i in first.stub.SimilarItems(req, timeout=5).items]
                    b_sim = [(i.item_id, i.score) for i in second.stub.SimilarItems(req, timeout=5).items]
                except grpc.RpcError as err:  # a delisted query item: NOT_FOUND on both
                    assert err.code() == grpc.StatusCode.NOT_FOUND
                    continue
                assert a_sim == b_sim, item


def _new_content(item_id: str, featured: list[str]) -> catalog_pb2.CatalogItem:
    return catalog_pb2.CatalogItem(
        item_id=item_id,
        kind=common_pb2.CONTENT,
        title="Look",
        category="content1",
        price=0.0,
        published_at=1,
        set_featured=True,
        featured_item_ids=featured,
    )


def _answer(s: RunningServer, member: str, **filters: object) -> list[tuple[str, float, str, str]]:
    req = recommender_pb2.RecommendProductsRequest(member_id=member, k=K)
    if filters:
        req.filters.CopyFrom(common_pb2.RecommendationFilters(**filters))  # type: ignore[arg-type]
    return [
        (it.item_id, round(it.score, 5), it.source, it.reason) for it in s.stub.RecommendProducts(req).items
    ]


def test_a_change_on_a_cluster_that_stopped_answering_is_refused_within_the_write_timeout(
    listed: PlantedBundle, redis_cluster: Any, tmp_path: Path
) -> None:
    """Every node paused: the cluster client re-reads the slot map from each seed in turn, a
    timeout each; the call still answers within catalog.write_timeout_ms (it took four times
    that)."""
    import os
    import signal

    redis_cluster.flush()
    settings = serving_settings(str(listed.path), redis_cluster.url, tmp_path, default_k=K)
    settings = settings.model_copy(
        update={"catalog": settings.catalog.model_copy(update={"write_timeout_ms": 500})}
    )
    with running_server(settings) as s:
        item = listed.products()[0]
        catalog = _catalog(s)
        catalog.SetStock(catalog_pb2.SetStockRequest(item_id=item, in_stock=False), timeout=10)
        pids = [n.proc.pid for n in redis_cluster.nodes if n.proc is not None]
        for pid in pids:
            os.kill(pid, signal.SIGSTOP)
        try:
            for _ in range(3):
                started = time.monotonic()
                with pytest.raises(grpc.RpcError) as err:
                    catalog.SetStock(catalog_pb2.SetStockRequest(item_id=item, in_stock=True), timeout=30)
                assert err.value.code() == grpc.StatusCode.UNAVAILABLE
                assert (err.value.details() or "").startswith("CATALOG_UNAVAILABLE")
                assert time.monotonic() - started < 1.5  # 0.5 s allowed, with room for a busy machine
        finally:
            for pid in pids:
                os.kill(pid, signal.SIGCONT)


def _sync(runner: Any, path: Path, target: str, *extra: str) -> Any:
    from recsvc.cli import app

    return runner.invoke(app, ["catalog", "sync", str(path), "--target", target, *extra])


def _export(runner: Any, path: Path, target: str, *extra: str) -> Any:
    from recsvc.cli import app

    done = runner.invoke(app, ["catalog", "export", str(path), "--overwrite", "--target", target, *extra])
    assert done.exit_code == 0, done.output
    return pd.read_csv(path, dtype=str, keep_default_na=False)


def test_cli_sync_pushes_what_the_service_keeps_and_nothing_else(
    server: RunningServer, tmp_path: Path
) -> None:
    """Price changes below a part per million that float32 keeps are pushed; the service's own
    export (delisted items included) syncs as nothing, twice; an empty brand cell of content
    (which the API cannot clear) is no difference; --relist relists."""
    from typer.testing import CliRunner

    catalog = _catalog(server)
    items = [_new_product("PX-1", "cat0", "brand0", price=99999.99), _new_product("PX-2", "cat0", "brand0")]
    items[1].price = 1234567.89
    assert catalog.UpsertItems(catalog_pb2.UpsertItemsRequest(items=items), timeout=5).applied == 2
    within(1.0, lambda: _exists(catalog, "PX-2"), "PX-2")
    catalog.DelistItems(catalog_pb2.ItemIdsRequest(item_ids=["P0-001"]), timeout=5)
    within(1.0, lambda: not _item(catalog, "P0-001").listed, "P0-001 delisted")
    runner = CliRunner()
    out = tmp_path / "now.csv"
    rows = _export(runner, out, server.target)
    assert "P0-001" in set(rows["item_id"])  # delisted items are exported, to stay delisted
    for _ in range(2):
        same = _sync(runner, out, server.target)
        assert same.exit_code == 0, same.output
        assert "upsert=0 relist=0 delist=0" in same.output and "applied=0" in same.output, same.output
    assert not _item(catalog, "P0-001").listed
    # content's brand left empty in the file: the API cannot clear it, so nothing to push
    rows.loc[rows["item_id"] == "C1-000", "brand"] = ""
    rows.to_csv(out, index=False)
    blank = _sync(runner, out, server.target)
    assert blank.exit_code == 0 and "upsert=0" in blank.output, blank.output
    assert _item(catalog, "C1-000").brand == "brand2"
    # real price changes of less than one part per million
    rows.loc[rows["item_id"] == "PX-1", "price"] = "99999.9"
    rows.loc[rows["item_id"] == "PX-2", "price"] = "1234568.9"
    rows.to_csv(out, index=False)
    moved = _sync(runner, out, server.target)
    assert moved.exit_code == 0 and "upsert=2" in moved.output and "applied=2" in moved.output, moved.output
    within(
        1.0,
        lambda: (
            np.float32(_item(catalog, "PX-1").price) == np.float32(99999.9)
            and np.float32(_item(catalog, "PX-2").price) == np.float32(1234568.9)
        ),
        "price changes not pushed",
    )
    assert "upsert=0" in _sync(runner, out, server.target).output
    relisted = _sync(runner, out, server.target, "--relist")
    assert relisted.exit_code == 0 and "relist=1" in relisted.output, relisted.output
    within(1.0, lambda: _item(catalog, "P0-001").listed, "P0-001 relisted")


def test_cli_export_excluding_delisted_items_drops_them_from_featured_lists(
    server: RunningServer, tmp_path: Path
) -> None:
    from typer.testing import CliRunner

    catalog = _catalog(server)
    assert list(_item(catalog, "C1-000").featured_item_ids) == ["P1-002", "P1-003"]
    catalog.DelistItems(catalog_pb2.ItemIdsRequest(item_ids=["P1-002"]), timeout=5)
    within(1.0, lambda: not _item(catalog, "P1-002").listed, "P1-002 delisted")
    rows = _export(CliRunner(), tmp_path / "catalog.csv", server.target, "--exclude-delisted")
    assert "P1-002" not in set(rows["item_id"])
    featured = rows.set_index("item_id")["featured_item_ids"]
    assert featured["C1-000"] == "P1-003"
    assert not any("P1-002" in cell.split("|") for cell in featured)
    # the service itself still features it (only the file leaves it out)
    assert list(_item(catalog, "C1-000").featured_item_ids) == ["P1-002", "P1-003"]


def test_texts_are_stored_trimmed(server: RunningServer) -> None:
    catalog = _catalog(server)
    item = _new_product("PT-1", " cat0 ", " Lumi Field ")
    item.title = "  Oolong 250g\t"
    assert catalog.UpsertItems(catalog_pb2.UpsertItemsRequest(items=[item]), timeout=5).applied == 1
    within(1.0, lambda: _exists(catalog, "PT-1"), "PT-1")
    got = _item(catalog, "PT-1")
    assert (got.title, got.category, got.brand) == ("Oolong 250g", "cat0", "Lumi Field")
    change = catalog_pb2.CatalogItem(item_id="PT-1", brand="  Lumi  Field ")  # inner spaces stay
    assert catalog.UpsertItems(catalog_pb2.UpsertItemsRequest(items=[change]), timeout=5).applied == 1
    within(1.0, lambda: _item(catalog, "PT-1").brand == "Lumi  Field", "brand change")


def test_cli_sync_reads_a_gbk_catalog_as_data_validate_does(server: RunningServer, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    header = "item_id,kind,title,category,brand,price,in_stock,published_at,featured_item_ids\n"
    gbk = tmp_path / "catalog.csv"
    gbk.write_bytes((header + "PG-1,product,乌龙茶 250克,茶叶,山野,9.5,true,,\n").encode("gbk"))
    runner = CliRunner()
    detected = _sync(runner, gbk, server.target)
    assert detected.exit_code == 0 and "applied=1" in detected.output, detected.output
    catalog = _catalog(server)
    within(1.0, lambda: _exists(catalog, "PG-1"), "PG-1")
    got = _item(catalog, "PG-1")
    assert (got.title, got.category, got.brand) == ("乌龙茶 250克", "茶叶", "山野")
    named = _sync(runner, gbk, server.target, "--encoding", "gb18030", "--dry-run")
    assert named.exit_code == 0 and "upsert=0" in named.output, named.output
