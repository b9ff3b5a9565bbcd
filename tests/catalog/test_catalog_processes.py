"""The live catalog across real `recsvc serve` processes sharing one Redis: a change made through
one reaches the other within a second, and a restarted process sees every change."""

from __future__ import annotations

import time
from pathlib import Path

import grpc
import pytest
from bundle_factory import make_bundle
from serving_harness import serve_env, serve_subprocess, stop_subprocess, wait_serving

from recsvc.localstack import free_port
from recsvc.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    catalog_pb2,
    catalog_pb2_grpc,
    common_pb2,
    recommender_pb2,
    recommender_pb2_grpc,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _ids(stub: recommender_pb2_grpc.RecommenderStub, member: str, k: int = 10) -> list[str]:
    req = recommender_pb2.RecommendProductsRequest(member_id=member, k=k)
    return [it.item_id for it in stub.RecommendProducts(req, timeout=5).items]


def test_changes_reach_every_process_within_a_second_and_survive_a_restart(
    redis_url: str, tmp_path: Path
) -> None:
    planted = make_bundle(tmp_path / "b1")
    ports = [free_port(), free_port()]
    procs = [serve_subprocess(serve_env(planted.path, redis_url, p, tmp_path)) for p in ports]
    try:
        for p in ports:
            wait_serving(f"127.0.0.1:{p}")
        channels = [grpc.insecure_channel(f"127.0.0.1:{p}") for p in ports]
        recs = [recommender_pb2_grpc.RecommenderStub(c) for c in channels]
        catalog = catalog_pb2_grpc.CatalogStub(channels[0])
        member, cold = planted.warm_members(cluster=1)[0], planted.cold_members[0]
        top, popular = _ids(recs[1], member)[0], _ids(recs[1], cold)[0]

        catalog.SetStockMany(
            catalog_pb2.SetStockManyRequest(
                changes=[
                    catalog_pb2.StockChange(item_id=top, in_stock=False),
                    catalog_pb2.StockChange(item_id=popular, in_stock=False),
                ]
            ),
            timeout=5,
        )
        t0 = time.monotonic()
        for stub in recs:
            while top in _ids(stub, member) or popular in _ids(stub, cold):
                assert time.monotonic() - t0 < 1.0, "sold-out item still recommended after 1 s"
                time.sleep(0.01)
        new = catalog_pb2.CatalogItem(
            item_id="NEW-P",
            kind=common_pb2.PRODUCT,
            title="New tea",
            category="cat1",
            brand="brand2",
            price=15.0,
            in_stock=True,
        )
        catalog.UpsertItems(catalog_pb2.UpsertItemsRequest(items=[new]), timeout=5)
        t0 = time.monotonic()
        while "NEW-P" not in _ids(recs[1], member, k=20):
            assert time.monotonic() - t0 < 1.0, "new product not recommended by the other process"
            time.sleep(0.01)

        # Restart the second process; a change made while it is down counts as well.
        stop_subprocess(procs[1])
        catalog.DelistItems(catalog_pb2.ItemIdsRequest(item_ids=["NEW-P"]), timeout=5)
        procs[1] = serve_subprocess(serve_env(planted.path, redis_url, ports[1], tmp_path))
        wait_serving(f"127.0.0.1:{ports[1]}")
        restarted = recommender_pb2_grpc.RecommenderStub(grpc.insecure_channel(f"127.0.0.1:{ports[1]}"))
        ids = _ids(restarted, member, k=20)
        assert top not in ids and "NEW-P" not in ids
        assert popular not in _ids(restarted, cold)
        got = catalog_pb2_grpc.CatalogStub(grpc.insecure_channel(f"127.0.0.1:{ports[1]}")).GetItem(
            catalog_pb2.GetItemRequest(item_id="NEW-P"), timeout=5
        )
        assert got.origin == "new" and not got.listed
    finally:
        for proc in procs:
            stop_subprocess(proc)


def _server_processes_nice(pid: int) -> list[int]:
    """The niceness of the supervisor's server processes (not multiprocessing's resource tracker)."""
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    servers = [c for c in children if b"spawn_main" in Path(f"/proc/{c}/cmdline").read_bytes()]
    # field 19 of /proc/<pid>/stat, counted after the parenthesised command name
    return sorted(int(Path(f"/proc/{c}/stat").read_text().rsplit(")", 1)[1].split()[16]) for c in servers)


def test_the_catalog_writer_serves_changes_alone_at_a_lower_priority(redis_url: str, tmp_path: Path) -> None:
    planted = make_bundle(tmp_path / "b1")
    port, writer_port = free_port(), free_port()
    env = serve_env(planted.path, redis_url, port, tmp_path)
    env |= {"RECSVC_CATALOG__WRITER_PORT": str(writer_port), "RECSVC_CATALOG__WRITER_NICE": "7"}
    proc = serve_subprocess(env)
    try:
        wait_serving(f"127.0.0.1:{port}")
        writer = grpc.insecure_channel(f"127.0.0.1:{writer_port}")
        grpc.channel_ready_future(writer).result(timeout=60)
        catalog = catalog_pb2_grpc.CatalogStub(writer)
        rec = recommender_pb2_grpc.RecommenderStub(grpc.insecure_channel(f"127.0.0.1:{port}"))
        member = planted.warm_members(cluster=1)[0]
        top = _ids(rec, member)[0]
        deadline = time.monotonic() + 30
        while True:  # the writer loads its model after it listens
            try:
                catalog.SetStock(catalog_pb2.SetStockRequest(item_id=top, in_stock=False), timeout=5)
                break
            except grpc.RpcError as exc:
                assert exc.code() == grpc.StatusCode.UNAVAILABLE and time.monotonic() < deadline
                time.sleep(0.2)
        t0 = time.monotonic()
        while top in _ids(rec, member):
            assert time.monotonic() - t0 < 1.0, "a change through the writer did not reach the worker"
            time.sleep(0.01)
        with pytest.raises(grpc.RpcError) as refused:
            recommender_pb2_grpc.RecommenderStub(writer).RecommendProducts(
                recommender_pb2.RecommendProductsRequest(member_id=member, k=5), timeout=5
            )
        assert refused.value.code() == grpc.StatusCode.UNIMPLEMENTED
        with pytest.raises(grpc.RpcError) as no_admin:  # nor the Admin service every worker has
            admin_pb2_grpc.AdminStub(writer).ForgetMember(
                admin_pb2.ForgetMemberRequest(member_id=member), timeout=5
            )
        assert no_admin.value.code() == grpc.StatusCode.UNIMPLEMENTED
        worker_nice, writer_nice = _server_processes_nice(proc.pid)
        assert writer_nice - worker_nice == 7
    finally:
        stop_subprocess(proc)
