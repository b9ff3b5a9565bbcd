"""A swapped-out bundle is freed: nothing the server caches per model (the live catalog's views,
their shared item entries) keeps an old model, and with it its arrays, alive. At 1M members
a bundle held per swap would be a gigabyte per worker per swap."""

from __future__ import annotations

import gc
import weakref
from pathlib import Path

from bundle_factory import make_bundle
from serving_harness import running_server, serving_settings

from recsvc.v1 import recommender_pb2


def test_swapped_out_models_are_freed(redis_url: str, tmp_path: Path) -> None:
    b1 = make_bundle(tmp_path / "b1", bundle_id="v1")
    b2 = make_bundle(tmp_path / "b2", bundle_id="v2", flip_clusters=True, seed=11)
    member = b1.warm_members(cluster=0)[0]
    with running_server(serving_settings(str(b1.path), redis_url, tmp_path)) as srv:
        loaded = []
        for uri in (b2.path, b1.path, b2.path, b1.path):
            # a call renders entries and builds the model's catalog view before the next swap
            reply = srv.stub.RecommendProducts(
                recommender_pb2.RecommendProductsRequest(member_id=member, k=5), timeout=5
            )
            assert reply.items
            loaded.append(weakref.ref(srv.deps.models.snapshot()["default"]))
            srv.stub.ReloadModel(recommender_pb2.ReloadModelRequest(model_uri=str(uri)), timeout=30)
        gc.collect()
        alive = [ref() is not None for ref in loaded]
        assert alive == [False, False, False, False], alive
        assert srv.stub.RecommendProducts(
            recommender_pb2.RecommendProductsRequest(member_id=member, k=5), timeout=5
        ).items
