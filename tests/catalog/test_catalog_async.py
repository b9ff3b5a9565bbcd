"""The Catalog service's small calls on the serving event loop (``async def``, the change script
awaited through ``redis.asyncio``), on a real Redis (a single server and a real cluster) and a real
server: the same answers and errors as the synchronous path, large calls in a thread, and Redis
down answered UNAVAILABLE with a reason while the last catalog keeps serving."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from bundle_factory import PlantedBundle
from serving_harness import RunningServer, running_server, serving_settings
from waiting import within

from recsvc.catalog.service import ON_LOOP_ITEMS
from recsvc.catalog.store import CatalogStore, Change
from recsvc.localstack import LocalRedis, LocalRedisCluster
from recsvc.redis_client import connect, connect_async
from recsvc.v1 import catalog_pb2, catalog_pb2_grpc, recommender_pb2

pytestmark = pytest.mark.integration


@pytest.fixture
def redis_url(redis_backend: str) -> str:
    return redis_backend


@pytest.fixture
def writes(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """How many change calls went each way: ``apply`` (a thread, the synchronous client) or
    ``apply_async`` (the event loop, the asyncio client)."""
    counts = {"thread": 0, "loop": 0}
    sync_apply, async_apply = CatalogStore.apply, CatalogStore.apply_async

    def apply(self: CatalogStore, changes: Any) -> Any:
        counts["thread"] += 1
        return sync_apply(self, changes)

    async def apply_async(self: CatalogStore, changes: Any) -> Any:
        counts["loop"] += 1
        return await async_apply(self, changes)

    monkeypatch.setattr(CatalogStore, "apply", apply)
    monkeypatch.setattr(CatalogStore, "apply_async", apply_async)
    return counts


@pytest.fixture
def server(planted: PlantedBundle, redis_url: str, tmp_path: Path) -> Iterator[RunningServer]:
    with running_server(serving_settings(str(planted.path), redis_url, tmp_path)) as s:
        yield s


def _catalog(s: RunningServer) -> catalog_pb2_grpc.CatalogStub:
    return catalog_pb2_grpc.CatalogStub(s.channel)


def _error(call: Callable[[], object]) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as err:
        call()
    return err.value.code(), (err.value.details() or "").split(":")[0]


def test_small_changes_are_written_on_the_loop_and_large_ones_in_a_thread(
    server: RunningServer, planted: PlantedBundle, writes: dict[str, int]
) -> None:
    catalog = _catalog(server)
    products = planted.products(cluster=0)
    get = lambda item: catalog.GetItem(catalog_pb2.GetItemRequest(item_id=item), timeout=5)  # noqa: E731

    one = catalog.SetStock(catalog_pb2.SetStockRequest(item_id=products[0], in_stock=False), timeout=5)
    assert [(r.item_id, r.applied, r.version) for r in one.results] == [(products[0], True, 1)]
    few = catalog.SetStockMany(
        catalog_pb2.SetStockManyRequest(
            changes=[catalog_pb2.StockChange(item_id=p, in_stock=False) for p in products[1:3]]
        ),
        timeout=5,
    )
    assert [r.version for r in few.results] == [2, 3] and few.applied == 2
    assert catalog.DelistItems(catalog_pb2.ItemIdsRequest(item_ids=[products[3]]), timeout=5).applied == 1
    assert catalog.RelistItems(catalog_pb2.ItemIdsRequest(item_ids=[products[3]]), timeout=5).applied == 1
    assert writes == {"thread": 0, "loop": 4}
    within(1.0, lambda: get(products[3]).version == 5, "a change on the loop did not reach the catalog")
    assert get(products[3]).listed and not get(products[2]).in_stock

    ids = [f"BIG-{i:04d}" for i in range(ON_LOOP_ITEMS + 1)]
    big = catalog.SetStockMany(
        catalog_pb2.SetStockManyRequest(changes=[catalog_pb2.StockChange(item_id=i) for i in ids]),
        timeout=10,
    )
    # Unknown items are refused item by item, as on the loop; the call went through a thread.
    assert big.applied == 0 and {r.reason for r in big.results} == {"ITEM_NOT_FOUND"}
    assert writes == {"thread": 1, "loop": 4}
    # A recommendation still answers beside them: the loop was not left in a bad state.
    member = planted.warm_members(cluster=0)[0]
    server.stub.RecommendProducts(recommender_pb2.RecommendProductsRequest(member_id=member, k=5), timeout=5)


def test_bad_inputs_on_the_loop_get_their_named_errors(server: RunningServer, planted: PlantedBundle) -> None:
    catalog = _catalog(server)
    nf, ia = grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT

    def set_stock(item: str) -> Callable[[], object]:
        return lambda: catalog.SetStock(catalog_pb2.SetStockRequest(item_id=item, in_stock=False), timeout=5)

    assert _error(set_stock("NOPE")) == (nf, "ITEM_NOT_FOUND")
    assert _error(set_stock("")) == (ia, "EMPTY_ITEM_ID")
    assert _error(set_stock("bad id!")) == (ia, "INVALID_ITEM_ID")
    assert _error(lambda: catalog.GetItem(catalog_pb2.GetItemRequest(item_id="NOPE"), timeout=5)) == (
        nf,
        "ITEM_NOT_FOUND",
    )
    assert _error(lambda: catalog.SetStockMany(catalog_pb2.SetStockManyRequest(), timeout=5)) == (
        ia,
        "NO_ITEMS",
    )
    assert _error(lambda: catalog.DelistItems(catalog_pb2.ItemIdsRequest(), timeout=5)) == (ia, "NO_ITEMS")
    too_many = catalog_pb2.ItemIdsRequest(item_ids=["P0-000"] * 10_001)
    assert _error(lambda: catalog.RelistItems(too_many, timeout=5)) == (ia, "TOO_MANY_ITEMS")

    good = planted.products(cluster=1)[0]
    mixed = catalog.DelistItems(catalog_pb2.ItemIdsRequest(item_ids=[good, "NOPE", "", good]), timeout=5)
    assert [(r.applied, r.code, r.reason) for r in mixed.results] == [
        (True, "", ""),
        (False, "NOT_FOUND", "ITEM_NOT_FOUND"),
        (False, "INVALID_ARGUMENT", "EMPTY_ITEM_ID"),
        (False, "INVALID_ARGUMENT", "DUPLICATE_ITEM"),
    ]
    assert (mixed.applied, mixed.failed) == (1, 3)
    # Bytes that are no SetStockRequest: INVALID_ARGUMENT before the handler, never UNKNOWN.
    raw = server.channel.unary_unary("/recsvc.v1.Catalog/SetStock")
    with pytest.raises(grpc.RpcError) as err:
        raw(b"\x0a\xff\xff\xff\xff\x0f", timeout=5)
    assert err.value.code() == ia


def test_the_asyncio_store_writes_what_the_synchronous_one_reads(redis_url: str) -> None:
    """``apply_async`` is the same script as ``apply``: contiguous versions across both clients,
    an item that must exist (a whole record) refused, and each chunk of a call larger than a
    script's chunk."""
    sync_client = connect(redis_url, socket_timeout=5)

    async def run() -> list[list[Any]]:
        aclient = connect_async(redis_url, timeout_s=5)
        store = CatalogStore(sync_client, "async", feed_maxlen=1000, aclient=aclient)
        try:
            first = await store.apply_async([Change("A", {"kind": "product", "in_stock": False}, False)])
            second = store.apply([Change("B", {"price": 2.0}, False)])
            many = [Change(f"M{i}", {"price": float(i)}, False) for i in range(1500)]
            third = await store.apply_async(
                [Change("A", {"listed": False}, True), Change("Z", {}, True), *many]
            )
            return [first, second, third]
        finally:
            await aclient.aclose()

    first, second, third = asyncio.run(run())
    assert [(o.item_id, o.applied, o.version) for o in first + second] == [("A", True, 1), ("B", True, 2)]
    assert (third[0].applied, third[0].version, third[1].applied) == (True, 3, False)
    assert [o.version for o in third[2:]] == list(range(4, 1504))
    seq, _, records = CatalogStore(sync_client, "async", feed_maxlen=1000).snapshot()
    assert seq == 1503 and records["A"].fields == {"kind": "product", "in_stock": False, "listed": False}
    sync_client.close()


@pytest.mark.parametrize("backend", ["single", "cluster"])
def test_redis_down_refuses_changes_on_the_loop_with_unavailable(
    backend: str, planted: PlantedBundle, tmp_path: Path
) -> None:
    """Its own Redis (or cluster), stopped under a running server: SetStock, SetStockMany and
    DelistItems answer UNAVAILABLE / CATALOG_UNAVAILABLE, the last catalog keeps serving."""
    own: LocalRedis | LocalRedisCluster = (
        LocalRedis(tmp_path / "redis") if backend == "single" else LocalRedisCluster(tmp_path / "cluster")
    )
    own.start()
    try:
        with running_server(serving_settings(str(planted.path), own.url, tmp_path)) as s:
            catalog = _catalog(s)
            item = planted.products(cluster=2)[0]
            catalog.SetStock(catalog_pb2.SetStockRequest(item_id=item, in_stock=False), timeout=5)
            get = lambda: catalog.GetItem(catalog_pb2.GetItemRequest(item_id=item), timeout=5)  # noqa: E731
            within(1.0, lambda: not get().in_stock, "change not followed")
            own.stop()
            calls: list[Callable[[], object]] = [
                lambda: catalog.SetStock(
                    catalog_pb2.SetStockRequest(item_id=item, in_stock=True), timeout=10
                ),
                lambda: catalog.SetStockMany(
                    catalog_pb2.SetStockManyRequest(changes=[catalog_pb2.StockChange(item_id=item)]),
                    timeout=10,
                ),
                lambda: catalog.DelistItems(catalog_pb2.ItemIdsRequest(item_ids=[item]), timeout=10),
            ]
            for call in calls:
                assert _error(call) == (grpc.StatusCode.UNAVAILABLE, "CATALOG_UNAVAILABLE")
            # in words: the exception's class (ConnectionError, ClusterDownError) is for the logs
            with pytest.raises(grpc.RpcError) as refused:
                calls[0]()
            details = refused.value.details() or ""
            assert "Redis cannot be reached" in details or "failing over" in details, details
            assert "Error" not in details, details
            assert not get().in_stock  # the last known catalog, not the bundle's
    finally:
        own.stop()
