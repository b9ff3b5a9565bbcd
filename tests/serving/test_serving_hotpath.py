"""Pieces of the recommendation hot path that are fast by construction: cached metric children,
the purchased-rows invariant, a bundle's pages mapped at load (prefault), item entries built once
and the response items written in protobuf's wire format."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from recsvc.engine import render
from recsvc.engine.entries import ItemEntries
from recsvc.engine.served_model import _rows_ascending
from recsvc.mapped import load_array, prefault
from recsvc.metrics import MAX_SCENES, ServingMetrics
from recsvc.v1 import common_pb2, recommender_pb2


def _value(m: ServingMetrics, name: str, labels: dict[str, str]) -> float | None:
    return m.registry.get_sample_value(name, labels)


def test_cached_metric_children_count_every_call_under_their_own_labels() -> None:
    m = ServingMetrics()
    for _ in range(3):
        m.observe("RecommendProducts", "personalized", "control", "OK", 0.001)
    m.observe("RecommendProducts", "popular", "control", "OK", 0.002)
    m.observe("RecommendProducts", "personalized", "control", "NOT_FOUND", 0.001)
    req = "recsvc_rec_requests_total"
    base = {"method": "RecommendProducts", "variant": "control"}
    assert _value(m, req, {**base, "source": "personalized", "code": "OK"}) == 3
    assert _value(m, req, {**base, "source": "popular", "code": "OK"}) == 1
    assert _value(m, req, {**base, "source": "personalized", "code": "NOT_FOUND"}) == 1
    lat = "recsvc_rec_request_latency_seconds_count"
    assert _value(m, lat, {**base, "source": "personalized"}) == 4


def test_scene_labels_stay_bounded_with_cached_children() -> None:
    m = ServingMetrics()
    for i in range(MAX_SCENES + 5):
        m.observe_scene("RecommendProducts", f"page_{i}")
        m.observe_scene("RecommendProducts", f"page_{i}")  # second time: the cached child
    m.observe_scene("RecommendProducts", "Not A Scene!")
    name = "recsvc_rec_scene_requests_total"
    assert _value(m, name, {"method": "RecommendProducts", "scene": "page_0"}) == 2
    assert _value(m, name, {"method": "RecommendProducts", "scene": f"page_{MAX_SCENES}"}) is None
    assert _value(m, name, {"method": "RecommendProducts", "scene": "other"}) == 2 * 5 + 1


def test_rows_ascending_checks_each_csr_row() -> None:
    indptr = np.array([0, 2, 2, 4])
    assert _rows_ascending(indptr, np.array([1, 5, 0, 3]))  # falls only between rows
    assert not _rows_ascending(indptr, np.array([5, 1, 0, 3]))  # unsorted within a row
    assert not _rows_ascending(indptr, np.array([1, 1, 0, 3]))  # a repeat within a row
    assert _rows_ascending(np.array([0, 0]), np.zeros(0, dtype=np.int32))


def _mapped_resident_kib(path: Path) -> int:
    """Resident KiB of this process's mappings of ``path`` (from /proc/self/smaps)."""
    total, inside = 0, False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        head = line.split()
        if head and "-" in head[0] and len(head) >= 5 and ":" in head[3]:  # a mapping's first line
            inside = line.endswith(str(path))
        elif inside and line.startswith("Rss:"):
            total += int(head[1])
    return total


def test_prefault_maps_every_page_of_the_array_into_the_process(tmp_path: Path) -> None:
    path = tmp_path / "factors.npy"
    np.save(path, np.arange(8 * 1024 * 1024, dtype=np.float32).reshape(-1, 64))  # 32 MiB
    arr = load_array(path)
    assert _mapped_resident_kib(path) < 8 * 1024  # mapped, not yet touched
    prefault(arr)
    assert _mapped_resident_kib(path) >= 32 * 1024  # every page is now this process's
    assert float(arr[-1, -1]) == 8 * 1024 * 1024 - 1  # and the contents are untouched
    prefault(np.zeros((0, 4), dtype=np.float32))  # empty arrays are fine


def test_settle_heap_moves_live_objects_out_of_the_collector() -> None:
    import gc

    from recsvc.server.app import settle_heap

    keep = [[i] for i in range(1000)]  # container objects the cyclic GC would track
    try:
        settle_heap()
        assert gc.get_freeze_count() >= len(keep)
        assert not any(gc.is_tracked(x) and x in gc.get_objects(generation=2) for x in keep[:3])
    finally:
        gc.unfreeze()


def _pinned_cpus(worker: int, out: Any) -> None:
    import os

    from recsvc.server.runner import pin_to_cpu

    cpu = pin_to_cpu(worker)
    out.put((cpu, sorted(os.sched_getaffinity(0))))


def test_worker_i_is_pinned_to_the_ith_cpu_it_may_use() -> None:
    import multiprocessing as mp
    import os

    allowed = sorted(os.sched_getaffinity(0))
    ctx = mp.get_context("spawn")
    for worker in (0, 1, len(allowed)):  # wraps around past the last CPU
        q = ctx.Queue()
        p = ctx.Process(target=_pinned_cpus, args=(worker, q))
        p.start()
        cpu, affinity = q.get(timeout=60)
        p.join(timeout=30)
        expected = allowed[worker % len(allowed)]
        assert cpu == expected and affinity == [expected]


def _own_fields(row: int) -> tuple[bytes, str]:
    item_id = f"P{row:04d}"
    fields = common_pb2.RecommendedItem(
        item_id=item_id, kind=common_pb2.PRODUCT, category="tea", brand="Ür", title=f"Tea {row} " + "é" * row
    )
    return fields.SerializeToString(), item_id


def test_item_entries_build_each_row_once_and_take_them_in_order() -> None:
    built: list[int] = []

    def build(row: int) -> tuple[bytes, str]:
        built.append(row)
        return _own_fields(row)

    entries = ItemEntries(build)
    assert entries.take([3, 1, 3]) == [_own_fields(3), _own_fields(1), _own_fields(3)]
    assert entries.take([1, 3]) == [_own_fields(1), _own_fields(3)] and built == [3, 1]
    assert entries[7] == _own_fields(7) and sorted(entries) == [1, 3, 7] and len(entries) == 3


def test_rendered_items_carry_the_call_and_the_item_fields() -> None:
    """Each item: the call's score, reason and source merged with the item's own serialized
    fields; two calls append to one response; a new item says source "new"."""
    view = SimpleNamespace(entries=ItemEntries(_own_fields), new_ids={"N1": 5}, n=5)
    reasons = ["because you bought Tea 1", "r" * 200, "ü" * 9000, ""]
    scores = np.array([1.5, -0.1, 3.4028235e38, 0.0], dtype=np.float32)
    resp = recommender_pb2.RecommendResponse(model_version="v1", variant="control")
    ids: list[str] = []
    render.items(resp.items, ids, view, np.array([2, 5, 0, 1]), scores, reasons, "personalized")  # type: ignore[arg-type]
    render.items(resp.items, ids, view, [4], [0.25], ["popular with members"], "popular")  # type: ignore[arg-type]
    want = recommender_pb2.RecommendResponse(model_version="v1", variant="control")
    for row, score, reason, source in [
        *zip(
            [2, 5, 0, 1],
            scores.tolist(),
            reasons,
            ["personalized", "new", "personalized", "personalized"],
            strict=True,
        ),
        (4, 0.25, "popular with members", "popular"),
    ]:
        want.items.add(score=score, reason=reason, source=source).MergeFromString(_own_fields(row)[0])
    assert resp == want
    assert ids == ["P0002", "P0005", "P0000", "P0001", "P0004"]
    with pytest.raises(ValueError):
        render.items(resp.items, ids, view, [1, 2], [0.5], ["one"], "popular")  # type: ignore[arg-type]
