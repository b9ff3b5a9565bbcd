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


def test_a_repeated_pin_stays_pinned_after_the_next_poll(redis_url: str, tmp_path: Path) -> None:
    """A rollback repeated (a retry: the process already serves that bundle) used to record the
    pinned bundle as the configured source's version, so the next poll read it as the source
    having moved and dropped the pin (event=model_unpinned): the rollback undid itself."""
    b1 = make_bundle(tmp_path / "b1", bundle_id="v1")
    b2 = make_bundle(tmp_path / "b2", bundle_id="v2", flip_clusters=True)
    with running_server(serving_settings(str(b1.path), redis_url, tmp_path)) as srv:
        req = recommender_pb2.ReloadModelRequest(model_uri=str(b2.path))
        assert srv.stub.ReloadModel(req, timeout=30).changed
        again = srv.stub.ReloadModel(req, timeout=30)
        assert not again.changed and again.model_version == "v2"
        srv.deps.models.start_polling(0.1)
        time.sleep(0.6)  # several polls
        assert _version(srv) == "v2" and srv.deps.models.pinned == {"default": str(b2.path)}


def test_a_restarted_worker_resumes_the_pin_of_its_siblings(redis_url: str, tmp_path: Path) -> None:
    """What a worker the supervisor starts again builds first (recsvc/server/runner.py): its
    models from the pin file, not from the configured source alone."""
    from recsvc.models.pins import PinFile
    from recsvc.models.resolve import ModelResolver
    from recsvc.models.served import ServedModels

    b1 = make_bundle(tmp_path / "b1", bundle_id="v1")
    b2 = make_bundle(tmp_path / "b2", bundle_id="v2", flip_clusters=True)
    b3 = make_bundle(tmp_path / "b3", bundle_id="v3", seed=5)
    current = tmp_path / "current"
    current.symlink_to(b1.path)
    settings = serving_settings(str(current), redis_url, tmp_path)
    pins = PinFile(tmp_path / "pins.json")

    def worker() -> ServedModels:
        models = ServedModels(settings, ModelResolver(settings))
        models.keep_pins_in(pins)
        models.reload(poll=True)  # as run_worker starts
        return models

    sibling = worker()
    assert sibling.default()[1].version == "v1" and not pins.path.exists()
    sibling.reload(str(b2.path))  # the rollback (ReloadModel, or its broadcast)
    restarted = worker()
    assert restarted.default()[1].version == "v2"
    assert restarted.pinned == {"default": str(b2.path)}
    restarted.reload(poll=True)  # its poller keeps the pin while the source stays put
    assert restarted.default()[1].version == "v2" and restarted.pinned
    # Once the configured source moves, the pin is over: for the poller of a running worker, and
    # for a worker started before that poll got to the file.
    tmp_link = tmp_path / "current.new"
    tmp_link.symlink_to(b3.path)
    tmp_link.replace(current)
    late = worker()
    assert late.default()[1].version == "v3" and late.pinned == {}
    sibling.reload(poll=True)
    assert sibling.default()[1].version == "v3" and sibling.pinned == {}
    assert pins.load() == {}
    assert worker().default()[1].version == "v3"


def test_reload_model_says_so_when_the_other_workers_were_not_told(tmp_path: Path) -> None:
    """Without Redis the process that answers still reloads, but the caller learns that the
    notice to the others failed (UNAVAILABLE, RELOAD_NOT_BROADCAST) instead of a plain
    changed=True while the other workers keep their model (the poller never brings a pin)."""
    from recsvc.localstack import free_port

    b1 = make_bundle(tmp_path / "b1", bundle_id="v1")
    b2 = make_bundle(tmp_path / "b2", bundle_id="v2", flip_clusters=True)
    nobody = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    with running_server(serving_settings(str(b1.path), nobody, tmp_path)) as srv:
        with pytest.raises(grpc.RpcError) as err:
            srv.stub.ReloadModel(recommender_pb2.ReloadModelRequest(model_uri=str(b2.path)), timeout=30)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        details = err.value.details() or ""
        assert details.startswith("RELOAD_NOT_BROADCAST") and "other server processes" in details
        assert _version(srv) == "v2"  # this process did reload


def test_the_reload_notice_waits_out_a_brief_redis_stall(redis_url: str, tmp_path: Path) -> None:
    """A Redis busy for a few hundred ms used to fail the notice at the hot path's 50 ms socket
    timeout (event=reload_broadcast_failed error=TimeoutError), leaving the workers split."""
    import redis

    from recsvc.models.broadcast import ReloadBroadcast
    from recsvc.models.resolve import ModelResolver
    from recsvc.models.served import ServedModels
    from recsvc.redis_client import connect
    from recsvc.redis_keys import global_key

    settings = serving_settings(str(tmp_path), redis_url, tmp_path)
    hot_path = connect(redis_url, timeout_s=0.05)
    admin = redis.Redis.from_url(redis_url)
    listener = admin.pubsub(ignore_subscribe_messages=True)
    listener.subscribe(global_key(settings.redis.key_prefix, "model-reload"))
    broadcast = ReloadBroadcast(
        hot_path, settings.redis.key_prefix, ServedModels(settings, ModelResolver(settings))
    )
    try:
        assert listener.get_message(timeout=1) is None  # the subscription is in place
        admin.execute_command("CLIENT", "PAUSE", "400", "WRITE")  # PUBLISH waits ~400 ms
        with pytest.raises(redis.TimeoutError):
            hot_path.publish("recsvc-test-probe", "x")  # what the notice used to go through
        # at least this listener (the session's Redis may hold other tests' servers' listeners)
        assert broadcast.publish("/some/bundle") >= 1
        message = listener.get_message(timeout=5)
        assert message is not None and b"/some/bundle" in message["data"]
    finally:
        admin.execute_command("CLIENT", "UNPAUSE")
        broadcast.stop()
        listener.close()
        admin.close()
        hot_path.close()


def test_one_batch_answers_every_member_from_the_model_it_started_with(
    redis_url: str, tmp_path: Path
) -> None:
    """A swap while a BatchRecommend stream is being read: the rest of the stream still comes
    from the model it started with (docs/operations.md: calls in flight finish on their model)."""
    b1 = make_bundle(tmp_path / "b1", bundle_id="v1")
    b2 = make_bundle(tmp_path / "b2", bundle_id="v2", flip_clusters=True, seed=11)
    members = b1.warm_members() * 40
    with running_server(serving_settings(str(b1.path), redis_url, tmp_path)) as srv:
        stream = srv.stub.BatchRecommend(
            recommender_pb2.BatchRecommendRequest(member_ids=members, k=5), timeout=60
        )
        first = next(stream)
        swapped = srv.stub.ReloadModel(recommender_pb2.ReloadModelRequest(model_uri=str(b2.path)), timeout=30)
        assert swapped.changed and swapped.model_version == "v2"
        versions = {first.response.model_version} | {r.response.model_version for r in stream}
        assert versions == {"v1"}
        after = srv.stub.BatchRecommend(recommender_pb2.BatchRecommendRequest(member_ids=members[:3], k=5))
        assert {r.response.model_version for r in after} == {"v2"}
