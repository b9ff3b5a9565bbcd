"""Hot model swap under concurrent calls, and the bundle-path poller."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import grpc
import pytest
from bundle_factory import make_bundle
from serving_harness import RunningServer, running_server, serving_settings

from recsvc.v1 import recommender_pb2, recommender_pb2_grpc

pytestmark = pytest.mark.integration


def test_hot_swap_under_concurrent_calls_has_zero_failures(redis_url: str, tmp_path: Path) -> None:
    b1 = make_bundle(tmp_path / "b1", bundle_id="v1")
    b2 = make_bundle(tmp_path / "b2", bundle_id="v2", flip_clusters=True, seed=11)
    with running_server(serving_settings(str(b1.path), redis_url, tmp_path, threads_per_worker=8)) as srv:
        stop = threading.Event()
        failures: list[str] = []
        seen: dict[str, int] = {}
        wrong: list[str] = []
        lock = threading.Lock()
        member = b1.warm_members(cluster=0)[0]
        expected_cluster = {"v1": b1.member_cluster[member], "v2": b2.member_cluster[member]}

        def hammer() -> None:
            stub = recommender_pb2_grpc.RecommenderStub(srv.channel)
            while not stop.is_set():
                try:
                    resp = stub.RecommendProducts(
                        recommender_pb2.RecommendProductsRequest(member_id=member, k=5), timeout=5
                    )
                except grpc.RpcError as exc:
                    with lock:
                        failures.append(f"{exc.code()}: {exc.details()}")
                    continue
                clusters = {b1.item_cluster[it.item_id] for it in resp.items}
                with lock:
                    seen[resp.model_version] = seen.get(resp.model_version, 0) + 1
                    # every answer comes wholly from one model: never a mix of the two
                    if clusters != {expected_cluster[resp.model_version]}:
                        wrong.append(resp.model_version)

        threads = [threading.Thread(target=hammer) for _ in range(4)]
        for t in threads:
            t.start()
        try:
            for uri, version in ((b2.path, "v2"), (b1.path, "v1"), (b2.path, "v2")):
                time.sleep(0.3)
                reply = srv.stub.ReloadModel(
                    recommender_pb2.ReloadModelRequest(model_uri=str(uri)), timeout=30
                )
                assert reply.changed and reply.model_version == version
            time.sleep(0.3)
        finally:
            stop.set()
            for t in threads:
                t.join()
        assert failures == []
        assert wrong == []
        assert seen.get("v1", 0) > 0 and seen.get("v2", 0) > 0
        reloads = srv.deps.metrics.registry.get_sample_value(
            "recsvc_rec_model_reloads_total", {"variant": "default", "result": "swapped"}
        )
        assert reloads == 4  # first load + three swaps


def test_poller_picks_up_a_new_bundle_behind_a_path(redis_url: str, tmp_path: Path) -> None:
    b1 = make_bundle(tmp_path / "b1", bundle_id="v1")
    b2 = make_bundle(tmp_path / "b2", bundle_id="v2", flip_clusters=True)
    current = tmp_path / "current"
    current.symlink_to(b1.path)
    settings = serving_settings(str(current), redis_url, tmp_path)
    with running_server(settings) as srv:
        srv.deps.models.start_polling(0.2)
        info = srv.stub.GetModelInfo(recommender_pb2.GetModelInfoRequest(), timeout=5)
        assert info.model_version == "v1"
        assert (info.family.family, info.family.neighbours, info.family.als_weight) == ("als", 0, 1.0)
        tmp_link = tmp_path / "current.new"
        tmp_link.symlink_to(b2.path)
        tmp_link.replace(current)  # atomic switch, as a deploy script would do
        deadline = time.monotonic() + 10
        while srv.stub.GetModelInfo(recommender_pb2.GetModelInfoRequest(), timeout=5).model_version != "v2":
            assert time.monotonic() < deadline, "poller did not swap to v2"
            time.sleep(0.1)


def test_reload_model_reaches_every_server_sharing_redis(redis_backend: str, tmp_path: Path) -> None:
    redis_url = redis_backend  # the broadcast on a single server and on a Redis Cluster
    b1 = make_bundle(tmp_path / "b1", bundle_id="v1")
    b2 = make_bundle(tmp_path / "b2", bundle_id="v2", flip_clusters=True)
    settings = serving_settings(str(b1.path), redis_url, tmp_path)
    with running_server(settings) as a, running_server(settings) as b:
        time.sleep(0.3)  # both listeners subscribed
        reply = a.stub.ReloadModel(recommender_pb2.ReloadModelRequest(model_uri=str(b2.path)), timeout=30)
        assert reply.model_version == "v2"
        deadline = time.monotonic() + 5
        while b.stub.GetModelInfo(recommender_pb2.GetModelInfoRequest(), timeout=5).model_version != "v2":
            assert time.monotonic() < deadline, "the other server did not follow ReloadModel"
            time.sleep(0.05)
        # An empty URI unpins every server, back to the configured source.
        assert a.stub.ReloadModel(recommender_pb2.ReloadModelRequest(), timeout=30).model_version == "v1"
        deadline = time.monotonic() + 5
        while b.stub.GetModelInfo(recommender_pb2.GetModelInfoRequest(), timeout=5).model_version != "v1":
            assert time.monotonic() < deadline, "the other server did not return to its configured source"
            time.sleep(0.05)


def _version(srv: RunningServer) -> str:
    return str(srv.stub.GetModelInfo(recommender_pb2.GetModelInfoRequest(), timeout=5).model_version)


def test_reload_with_an_empty_uri_returns_to_the_configured_source(redis_url: str, tmp_path: Path) -> None:
    b1 = make_bundle(tmp_path / "b1", bundle_id="v1")
    b2 = make_bundle(tmp_path / "b2", bundle_id="v2", flip_clusters=True)
    with running_server(serving_settings(str(b1.path), redis_url, tmp_path)) as srv:
        pinned = srv.stub.ReloadModel(recommender_pb2.ReloadModelRequest(model_uri=str(b2.path)), timeout=30)
        assert pinned.changed and pinned.model_version == "v2"
        assert srv.deps.models.pinned == {"default": str(b2.path)}
        # The poller leaves a pin alone while the configured source has not changed.
        srv.deps.models.start_polling(0.1)
        time.sleep(0.5)
        assert _version(srv) == "v2"
        # An empty URI is the way back (it used to answer changed=false and stay on v2).
        back = srv.stub.ReloadModel(recommender_pb2.ReloadModelRequest(), timeout=30)
        assert back.changed and back.model_version == "v1"
        assert _version(srv) == "v1" and srv.deps.models.pinned == {}
        again = srv.stub.ReloadModel(recommender_pb2.ReloadModelRequest(), timeout=30)
        assert not again.changed and again.model_version == "v1"


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("index_product.faiss", "index_product.faiss is missing"),
        ("index_content.faiss", "index_content.faiss is missing"),
        ("popular.parquet", "popular.parquet is missing"),
        ("empty:item_price.npy", "item_price.npy is empty"),
        ("empty:index_product.faiss", "index_product.faiss is empty"),
    ],
)
def test_reload_refuses_a_bundle_missing_a_required_file(
    redis_url: str, tmp_path: Path, damage: str, message: str
) -> None:
    b1 = make_bundle(tmp_path / "b1", bundle_id="v1")
    broken = make_bundle(tmp_path / "b2", bundle_id="v2", flip_clusters=True)
    if damage.startswith("empty:"):
        (broken.path / damage.removeprefix("empty:")).write_bytes(b"")
    else:
        (broken.path / damage).unlink()
    with running_server(serving_settings(str(b1.path), redis_url, tmp_path)) as srv:
        with pytest.raises(grpc.RpcError) as err:
            srv.stub.ReloadModel(recommender_pb2.ReloadModelRequest(model_uri=str(broken.path)), timeout=30)
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        details = err.value.details() or ""
        assert details.startswith("BAD_BUNDLE") and message in details
        assert _version(srv) == "v1"  # the old model keeps serving
        member = b1.warm_members(cluster=0)[0]
        reply = srv.stub.RecommendProducts(
            recommender_pb2.RecommendProductsRequest(member_id=member, k=5), timeout=5
        )
        assert reply.model_version == "v1" and reply.items
