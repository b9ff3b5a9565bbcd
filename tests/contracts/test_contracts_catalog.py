"""The live catalog's contract on every Redis recsvc runs on: one suite, two backends (a single
server and a real 3-primary Redis Cluster, ``redis_backend`` in conftest.py).

What a server process may rely on: each change (upsert, stock, delisting, relisting) reaches a
follower within a second, in version order and once; a follower that missed feed entries (they
were trimmed while it was busy) re-reads the whole state and misses nothing; a process that
starts later reads exactly the current state; concurrent writers get contiguous versions."""

from __future__ import annotations

import threading
from collections.abc import Mapping
from pathlib import Path

import pytest
from bundle_factory import PlantedBundle
from serving_harness import running_server, serving_settings
from waiting import within

from recsvc.catalog.store import CatalogFollower, CatalogStore, Change, ItemRecord
from recsvc.redis_client import RedisClient, connect, is_cluster
from recsvc.v1 import catalog_pb2, catalog_pb2_grpc, common_pb2, recommender_pb2

pytestmark = pytest.mark.integration

PREFIX = "contract"


@pytest.fixture
def redis_url(redis_backend: str) -> str:
    return redis_backend


def _store(redis_client: RedisClient) -> CatalogStore:
    return CatalogStore(redis_client, PREFIX, feed_maxlen=1000)


def _fields(follower: CatalogFollower, item: str) -> dict[str, object]:
    rec = follower.records.get(item)
    return {} if rec is None else rec.fields


def test_the_catalog_keys_share_one_slot(redis_client: RedisClient) -> None:
    store = _store(redis_client)
    keys = [store.items_key, store.seq_key, store.feed_key]
    if is_cluster(redis_client):
        assert len({redis_client.keyslot(k) for k in keys}) == 1  # type: ignore[union-attr]
    store.apply([Change("A", {"price": 1.0}, False)])
    assert all(redis_client.exists(k) for k in keys)


def test_each_change_reaches_a_follower_within_a_second_in_order(
    redis_url: str, redis_client: RedisClient
) -> None:
    store = _store(redis_client)
    follower = CatalogFollower(
        store, connect(redis_url, socket_timeout=5), on_change=lambda r: None, block_ms=200
    )
    follower.start(wait_s=5)
    try:
        assert follower.ok and len(follower.records) == 0
        new = {
            "kind": "product",
            "title": "Tea",
            "category": "c1",
            "brand": "b1",
            "price": 9.5,
            "in_stock": True,
        }
        steps: list[tuple[Change, dict[str, object]]] = [
            (Change("NEW-1", new, False), new),
            (Change("NEW-1", {"in_stock": False}, True), {**new, "in_stock": False}),
            (Change("NEW-1", {"listed": False}, True), {**new, "in_stock": False, "listed": False}),
            (
                Change("NEW-1", {"listed": True, "price": 8.0}, True),
                {**new, "in_stock": False, "listed": True, "price": 8.0},
            ),
        ]
        for version, (change, expected) in enumerate(steps, start=1):
            [outcome] = store.apply([change])
            assert outcome.applied and outcome.version == version
            within(1.0, lambda e=expected: _fields(follower, "NEW-1") == e, f"change {version} not followed")  # type: ignore[misc]
            assert follower.seq == version and follower.records["NEW-1"].version == version
        # An item Redis does not know is refused when the caller requires it to exist.
        assert not store.apply([Change("NOPE", {"in_stock": False}, True)])[0].applied
        assert "NOPE" not in follower.records
    finally:
        follower.stop()


def test_a_follower_that_missed_trimmed_entries_rereads_and_misses_nothing(
    redis_url: str, redis_client: RedisClient
) -> None:
    store = _store(redis_client)
    busy = threading.Event()
    release = threading.Event()
    rebuilds: list[int] = []

    def on_change(records: Mapping[str, ItemRecord]) -> None:
        rebuilds.append(len(records))
        if busy.is_set():
            release.wait(10)  # a slow rebuild: the follower reads no feed meanwhile

    follower = CatalogFollower(store, connect(redis_url, socket_timeout=5), on_change=on_change, block_ms=200)
    follower.start(wait_s=5)
    try:
        store.apply([Change("A", {"price": 1.0}, False)])
        within(1.0, lambda: "A" in follower.records, "first change not followed")
        busy.set()
        store.apply([Change("B", {"price": 2.0}, False)])  # the follower is stuck rebuilding this one
        within(1.0, lambda: len(rebuilds) >= 3, "the follower did not start rebuilding")
        for i in range(5):
            store.apply([Change(f"C{i}", {"in_stock": False}, False)])
        store.apply([Change("A", {"price": 3.0}, False)])
        redis_client.xtrim(store.feed_key, maxlen=1, approximate=False)  # the entries for C0..C4 are gone
        busy.clear()
        release.set()
        # seq is set before records on a re-read (CatalogFollower._resync): wait for both
        within(
            2.0,
            lambda: follower.seq == 8 and {f"C{i}" for i in range(5)} <= set(follower.records.keys()),
            "the follower did not catch up",
        )
        assert follower.records["A"].fields == {"price": 3.0} and follower.records["A"].version == 8
    finally:
        release.set()
        follower.stop()


def test_a_process_started_later_reads_exactly_the_current_state(
    redis_url: str, redis_client: RedisClient
) -> None:
    store = _store(redis_client)
    store.apply([Change(f"I{i}", {"price": float(i)}, False) for i in range(20)])
    store.apply([Change("I3", {"in_stock": False}, False), Change("I4", {"listed": False}, False)])
    seq, last_id, records = CatalogStore(connect(redis_url), PREFIX, feed_maxlen=1000).snapshot()
    assert seq == 22 and last_id != "0-0"
    assert records["I3"].fields == {"price": 3.0, "in_stock": False} and records["I3"].version == 21
    assert records["I3"].created == 4  # the version that created it: new items take rows in that order
    assert records["I4"].fields == {"price": 4.0, "listed": False}
    assert len(records) == 20 and store.get("I5") == records["I5"]
    # Following from the snapshot's feed id: nothing is applied twice, the next change is.
    later = CatalogFollower(
        store, connect(redis_url, socket_timeout=5), on_change=lambda r: None, block_ms=200
    )
    later.start(wait_s=5)
    try:
        assert later.seq == 22 and dict(later.records) == records
        store.apply([Change("I5", {"price": 55.0}, False)])
        # seq moves on before records are swapped in (CatalogFollower._apply): wait for both
        within(
            1.0,
            lambda: later.seq == 23 and later.records["I5"].version == 23,
            "the change after the snapshot was not followed",
        )
        assert later.records["I5"].fields == {"price": 55.0}
    finally:
        later.stop()


def test_a_change_of_kind_is_refused_by_redis_and_changes_nothing(redis_client: RedisClient) -> None:
    """The script itself refuses a patch whose kind differs from the record's (a process may
    not have seen the record yet); the other items of the call are applied."""
    store = _store(redis_client)
    store.apply([Change("K1", {"kind": "product", "title": "Tea"}, False)])
    kinded, other = store.apply(
        [Change("K1", {"kind": "content", "title": "Tea video"}, False), Change("K2", {"price": 2.0}, False)]
    )
    assert not kinded.applied and kinded.kind_conflict and other.applied and other.version == 2
    held = store.get("K1")
    assert held is not None and held.fields == {"kind": "product", "title": "Tea"} and held.version == 1
    [same] = store.apply([Change("K1", {"kind": "product", "price": 3.0}, False)])
    assert same.applied and not same.kind_conflict


def test_concurrent_writers_get_contiguous_versions_and_lose_no_change(redis_url: str) -> None:
    writers = [_store(connect(redis_url, socket_timeout=5)) for _ in range(3)]

    def write(n: int, store: CatalogStore) -> None:
        for i in range(40):
            store.apply(
                [
                    Change(f"W{n}-{i}", {"price": float(i)}, False),
                    Change("SHARED", {"price": float(n)}, False),
                ]
            )

    threads = [threading.Thread(target=write, args=(n, s)) for n, s in enumerate(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seq, _, records = writers[0].snapshot()
    assert seq == 3 * 40 * 2 and len(records) == 3 * 40 + 1
    feed = writers[0]._client.xrange(writers[0].feed_key)
    firsts = [int(fields[b"v0"]) for _, fields in feed]
    counts = [int(fields[b"n"]) for _, fields in feed]
    assert firsts == [1 + 2 * i for i in range(120)] and set(counts) == {2}  # contiguous, in order


def test_a_sold_out_product_leaves_the_served_list_on_every_backend(
    planted: PlantedBundle, redis_url: str, tmp_path: Path
) -> None:
    """The same through a real server: the Catalog service's change reaches the engine's view."""
    with running_server(serving_settings(str(planted.path), redis_url, tmp_path)) as s:
        catalog = catalog_pb2_grpc.CatalogStub(s.channel)
        member = planted.warm_members(cluster=1)[0]

        def ids() -> list[str]:
            req = recommender_pb2.RecommendProductsRequest(member_id=member, k=5)
            return [it.item_id for it in s.stub.RecommendProducts(req, timeout=5).items]

        top = ids()[0]
        catalog.SetStock(catalog_pb2.SetStockRequest(item_id=top, in_stock=False), timeout=5)
        within(1.0, lambda: top not in ids(), "sold-out item still served")
        new = catalog_pb2.CatalogItem(
            item_id="NEW-C",
            kind=common_pb2.PRODUCT,
            title="t",
            category="cat1",
            brand="brand2",
            price=5.0,
            in_stock=True,
        )
        assert catalog.UpsertItems(catalog_pb2.UpsertItemsRequest(items=[new]), timeout=5).applied == 1
        catalog.DelistItems(catalog_pb2.ItemIdsRequest(item_ids=[top]), timeout=5)
        get = lambda item: catalog.GetItem(catalog_pb2.GetItemRequest(item_id=item), timeout=5)  # noqa: E731
        within(1.0, lambda: not get(top).listed, "delisting not in the process's catalog")
        got = get(top)
        assert (
            not got.in_stock and got.origin == "changed" and got.version == 3
        )  # SetStock, UpsertItems, DelistItems
        assert get("NEW-C").origin == "new"
        catalog.RelistItems(catalog_pb2.ItemIdsRequest(item_ids=[top]), timeout=5)
        within(1.0, lambda: get(top).listed, "relisting not in the process's catalog")
