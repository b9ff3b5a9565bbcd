"""Callers who abandon a server stream (cancel it, or stop reading) hold no server thread:
before, each such stream kept one of the pool's threads waiting for good, and a few of them made
every synchronous method (RecordEvent, outreach, admin) time out (recsvc/server/streams.py)."""

from __future__ import annotations

import time
from pathlib import Path

import grpc
import pytest
from bundle_factory import PlantedBundle
from serving_harness import running_server, serving_settings

from recsvc.v1 import catalog_pb2, catalog_pb2_grpc, recommender_pb2

pytestmark = [pytest.mark.integration]

THREADS = 2


def _event(member: str) -> recommender_pb2.RecordEventRequest:
    return recommender_pb2.RecordEventRequest(member_id=member, item_id="P0-003", event_type="view")


@pytest.mark.parametrize("how", ["cancel", "stop reading"])
def test_abandoned_streams_hold_no_thread(
    planted: PlantedBundle, redis_url: str, tmp_path: Path, how: str
) -> None:
    settings = serving_settings(str(planted.path), redis_url, tmp_path, threads_per_worker=THREADS)
    with running_server(settings) as srv:
        members = planted.warm_members()
        catalog = catalog_pb2_grpc.CatalogStub(srv.channel)
        open_streams = []
        for _ in range(3 * THREADS):  # more abandoned streams than the pool has threads
            for stream in (
                srv.stub.BatchRecommend(
                    recommender_pb2.BatchRecommendRequest(member_ids=members * 20), timeout=30
                ),
                catalog.ExportCatalog(catalog_pb2.ExportCatalogRequest(), timeout=30),
            ):
                next(stream)
                if how == "cancel":
                    stream.cancel()
                else:
                    open_streams.append(stream)
        t0 = time.monotonic()
        answer = srv.stub.RecordEvent(_event(members[0]), timeout=5)  # a synchronous method
        assert answer.stored
        assert time.monotonic() - t0 < 2.0
        # and a new stream still runs to its end
        assert len(list(srv.stub.BatchRecommend(
            recommender_pb2.BatchRecommendRequest(member_ids=members[:3]), timeout=10
        ))) == 3  # fmt: skip
        for stream in open_streams:
            stream.cancel()


def test_a_stream_s_errors_still_get_their_status(
    planted: PlantedBundle, redis_url: str, tmp_path: Path
) -> None:
    with running_server(serving_settings(str(planted.path), redis_url, tmp_path)) as srv:
        too_many = recommender_pb2.BatchRecommendRequest(member_ids=["M1"] * 20_000)
        with pytest.raises(grpc.RpcError) as err:
            list(srv.stub.BatchRecommend(too_many, timeout=10))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
