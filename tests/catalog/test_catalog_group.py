"""Group commit of the Catalog service's small change calls (``catalog.write_linger_ms``), on a
real Redis (a single server and a real cluster) and a real server: calls that arrive within the
linger share one change script (one feed entry), each caller still gets its own outcomes and its
own errors, a second change of an item goes into the next write (so each item's changes apply in
the order they arrived), and Redis down refuses every call of the group with UNAVAILABLE."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import pytest
from bundle_factory import PlantedBundle
from serving_harness import RunningServer, running_server
from settings_factory import build_settings
from waiting import within

from recsvc.catalog.group import GroupCommit
from recsvc.catalog.store import CatalogStore, Change, ChangeOutcome
from recsvc.localstack import LocalRedis
from recsvc.redis_client import connect, connect_async
from recsvc.v1 import catalog_pb2, catalog_pb2_grpc

pytestmark = pytest.mark.integration

LINGER_MS = 200  # long enough that calls sent together arrive within it on a busy machine


@pytest.fixture
def writes(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """The item ids of each Redis write the event loop made."""
    made: list[list[str]] = []
    async_apply = CatalogStore.apply_async

    async def apply_async(self: CatalogStore, changes: Any) -> Any:
        made.append([c.item_id for c in changes])
        return await async_apply(self, changes)

    monkeypatch.setattr(CatalogStore, "apply_async", apply_async)
    return made


def _server(planted: PlantedBundle, redis_url: str, tmp_path: Path, linger_ms: int = LINGER_MS) -> Any:
    return running_server(
        build_settings(
            tmp_path, redis_url=redis_url, model_uri=str(planted.path), catalog={"write_linger_ms": linger_ms}
        )
    )


def _together(calls: list[Callable[[], Any]]) -> list[Any]:
    """Run ``calls`` at once (each in its own thread); each one's answer, or the error it raised."""

    def run(call: Callable[[], Any]) -> Any:
        try:
            return call()
        except grpc.RpcError as err:
            return err

    with ThreadPoolExecutor(len(calls)) as pool:
        return list(pool.map(run, calls))


def _set_stock(catalog: catalog_pb2_grpc.CatalogStub, item: str, in_stock: bool) -> Callable[[], Any]:
    return lambda: catalog.SetStock(catalog_pb2.SetStockRequest(item_id=item, in_stock=in_stock), timeout=10)


def _get(s: RunningServer, item: str) -> catalog_pb2.CatalogItem:
    return catalog_pb2_grpc.CatalogStub(s.channel).GetItem(
        catalog_pb2.GetItemRequest(item_id=item), timeout=5
    )


def _store(redis_url: str, prefix: str) -> tuple[Any, Any, CatalogStore]:
    client = connect(redis_url, socket_timeout=5)
    aclient = connect_async(redis_url, timeout_s=5)
    return client, aclient, CatalogStore(client, prefix, feed_maxlen=1000, aclient=aclient)


def test_calls_within_the_linger_share_one_script_and_keep_their_own_outcomes(redis_backend: str) -> None:
    """Four callers on one loop: one feed entry for all, each caller its own outcomes in its own
    order (an item that must exist refused for its caller only), contiguous versions."""
    client, aclient, store = _store(redis_backend, "group")

    async def run() -> list[list[ChangeOutcome]]:
        group = GroupCommit(store.apply_async, linger_s=0.05, max_items=1000)
        try:
            return list(
                await asyncio.gather(
                    group.apply([Change("A", {"kind": "product", "in_stock": False}, False)]),
                    group.apply([Change("B", {"price": 2.0}, False), Change("C", {"price": 3.0}, False)]),
                    group.apply([Change("NOPE", {"in_stock": False}, True)]),
                    group.apply([Change("D", {"in_stock": True}, False), Change("GONE", {}, True)]),
                )
            )
        finally:
            await aclient.aclose()

    a, bc, nope, d = asyncio.run(run())
    assert [(o.item_id, o.applied, o.version) for o in a] == [("A", True, 1)]
    assert [(o.item_id, o.applied, o.version) for o in bc] == [("B", True, 2), ("C", True, 3)]
    assert [(o.item_id, o.applied) for o in nope] == [("NOPE", False)]
    assert [(o.item_id, o.applied, o.version) for o in d] == [("D", True, 4), ("GONE", False, 0)]
    assert client.xlen(store.feed_key) == 1  # one script call, one feed entry
    seq, _, records = store.snapshot()
    assert seq == 4 and sorted(records) == ["A", "B", "C", "D"]
    client.close()


def test_a_second_change_of_an_item_goes_into_the_next_write_in_order(redis_backend: str) -> None:
    """A, then B and A again, then C: the second change of A starts the next group (C joins
    it), so A's changes reach Redis in the order they arrived and the later one stays."""
    client, aclient, store = _store(redis_backend, "order")
    sizes: list[list[str]] = []

    async def write(changes: Any) -> list[ChangeOutcome]:
        sizes.append([c.item_id for c in changes])
        return await store.apply_async(changes)

    async def run() -> list[list[ChangeOutcome]]:
        group = GroupCommit(write, linger_s=0.05, max_items=1000)
        try:
            return list(
                await asyncio.gather(
                    group.apply([Change("A", {"in_stock": False}, False)]),
                    group.apply([Change("B", {"in_stock": False}, False)]),
                    group.apply([Change("A", {"in_stock": True}, False)]),
                    group.apply([Change("C", {"in_stock": False}, False)]),
                )
            )
        finally:
            await aclient.aclose()

    first, b, second, c = asyncio.run(run())
    assert sizes == [["A", "B"], ["A", "C"]]
    assert [o.version for o in (*first, *b, *second, *c)] == [1, 2, 3, 4]
    assert client.xlen(store.feed_key) == 2
    assert store.get("A") is not None and store.get("A").fields == {"in_stock": True}  # type: ignore[union-attr]
    client.close()


def test_a_caller_that_gives_up_leaves_the_others_answered(redis_backend: str) -> None:
    """A caller cancelled while its group waits (its deadline passed) gets no answer; the group
    is still written for the others (its change with them, as a stalled Redis may apply it)."""
    client, aclient, store = _store(redis_backend, "cancel")

    async def run() -> tuple[list[ChangeOutcome], bool, list[ChangeOutcome]]:
        group = GroupCommit(store.apply_async, linger_s=0.05, max_items=1000)
        try:
            a = asyncio.ensure_future(group.apply([Change("A", {"price": 1.0}, False)]))
            gone = asyncio.ensure_future(group.apply([Change("B", {"price": 2.0}, False)]))
            c = asyncio.ensure_future(group.apply([Change("C", {"price": 3.0}, False)]))
            await asyncio.sleep(0.01)
            gone.cancel()
            return await a, gone.cancelled(), await c
        finally:
            await aclient.aclose()

    a, cancelled, c = asyncio.run(run())
    assert cancelled and [(o.item_id, o.version) for o in a + c] == [("A", 1), ("C", 3)]
    assert client.xlen(store.feed_key) == 1
    client.close()


def test_concurrent_set_stock_calls_are_one_write_with_per_call_answers(
    planted: PlantedBundle, redis_backend: str, tmp_path: Path, writes: list[list[str]]
) -> None:
    """SetStock calls sent together: one Redis write; each answered with its own result and
    version; an unknown item is NOT_FOUND for its own call only; a SetStockMany and a
    DelistItems beside them join the same write."""
    a, b, c, d, e = planted.products(cluster=0)[:5]
    with _server(planted, redis_backend, tmp_path) as s:
        catalog = catalog_pb2_grpc.CatalogStub(s.channel)
        answers = _together(
            [
                _set_stock(catalog, a, False),
                _set_stock(catalog, b, False),
                _set_stock(catalog, "NOPE", False),
                lambda: catalog.SetStockMany(
                    catalog_pb2.SetStockManyRequest(
                        changes=[
                            catalog_pb2.StockChange(item_id=c, in_stock=False),
                            catalog_pb2.StockChange(item_id="NOPE-2", in_stock=False),
                        ]
                    ),
                    timeout=10,
                ),
                lambda: catalog.DelistItems(catalog_pb2.ItemIdsRequest(item_ids=[d, e]), timeout=10),
            ]
        )
        one_a, one_b, nope, many, delist = answers
        assert [(r.item_id, r.applied) for r in one_a.results] == [(a, True)]
        assert [(r.item_id, r.applied) for r in one_b.results] == [(b, True)]
        assert isinstance(nope, grpc.RpcError) and nope.code() == grpc.StatusCode.NOT_FOUND
        assert (nope.details() or "").startswith("ITEM_NOT_FOUND")
        assert [(r.item_id, r.applied, r.code) for r in many.results] == [
            (c, True, ""),
            ("NOPE-2", False, "NOT_FOUND"),
        ]
        assert (delist.applied, delist.failed) == (2, 0)
        # one write for all five calls (the order of the calls in it is their arrival's)
        assert len(writes) == 1 and sorted(writes[0]) == sorted([a, b, "NOPE", c, "NOPE-2", d, e])
        versions = [r.version for x in (one_a, one_b, many, delist) for r in x.results if r.applied]
        assert sorted(versions) == [1, 2, 3, 4, 5]
        within(2.0, lambda: not _get(s, e).listed, "the group's last change not followed")
        assert not _get(s, a).in_stock and not _get(s, b).in_stock and not _get(s, c).in_stock
        assert not _get(s, d).listed


def test_the_same_item_twice_together_is_two_writes_and_the_later_change_holds(
    planted: PlantedBundle, redis_backend: str, tmp_path: Path, writes: list[list[str]]
) -> None:
    a, b = planted.products(cluster=1)[:2]
    with _server(planted, redis_backend, tmp_path) as s:
        catalog = catalog_pb2_grpc.CatalogStub(s.channel)
        off, on, other = _together(
            [_set_stock(catalog, a, False), _set_stock(catalog, a, True), _set_stock(catalog, b, False)]
        )
        assert [len(w) for w in writes] in ([2, 1], [1, 2]) and [w.count(a) for w in writes] == [1, 1]
        v_off, v_on = off.results[0].version, on.results[0].version
        assert v_off != v_on and other.results[0].applied
        # the change that arrived later went into the later write: its value is the one kept
        last = max((v_off, False), (v_on, True))
        within(2.0, lambda: _get(s, a).version == last[0], "the later change of a not followed")
        assert _get(s, a).in_stock is last[1]


def test_a_call_alone_is_answered_after_the_linger(
    planted: PlantedBundle, redis_url: str, tmp_path: Path, writes: list[list[str]]
) -> None:
    """One call with nobody beside it: written alone once the linger passed, then the next."""
    a = planted.products(cluster=2)[0]
    with _server(planted, redis_url, tmp_path, linger_ms=20) as s:
        catalog = catalog_pb2_grpc.CatalogStub(s.channel)
        assert _set_stock(catalog, a, False)().results[0].version == 1
        assert _set_stock(catalog, a, True)().results[0].version == 2
        assert writes == [[a], [a]]


def test_redis_down_refuses_every_call_of_the_group_with_unavailable(
    planted: PlantedBundle, tmp_path: Path, writes: list[list[str]]
) -> None:
    own = LocalRedis(tmp_path / "redis")
    own.start()
    try:
        with _server(planted, own.url, tmp_path) as s:
            catalog = catalog_pb2_grpc.CatalogStub(s.channel)
            items = planted.products(cluster=3)[:3]
            assert _set_stock(catalog, items[0], False)().results[0].applied
            within(2.0, lambda: not _get(s, items[0]).in_stock, "change not followed")
            writes.clear()
            own.stop()
            answers = _together([_set_stock(catalog, item, True) for item in items])
            assert all(isinstance(x, grpc.RpcError) for x in answers), answers
            assert {(x.code(), (x.details() or "").split(":")[0]) for x in answers} == {
                (grpc.StatusCode.UNAVAILABLE, "CATALOG_UNAVAILABLE")
            }
            assert len(writes) == 1 and sorted(writes[0]) == sorted(items)  # one group, refused whole
            assert not _get(s, items[0]).in_stock  # the last known catalog, not the bundle's
    finally:
        own.stop()
