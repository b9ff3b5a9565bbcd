"""What ``load_bundle`` checks before a swap besides which files are there: every array's dtype
and shape against the manifest and the id maps, the CSR pointers and item rows, the JSON side
files and the manifest's numbers. A damaged bundle used to be refused as INTERNAL, or swapped in
to fail every call (KeyError, ValueError, IndexError), or to crash the worker (SIGSEGV, an item
row past the end read by a compiled kernel). Each is now refused through ``ReloadModel`` with
``FAILED_PRECONDITION`` / ``BAD_BUNDLE`` naming the file, and the old model keeps serving."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import grpc
import numpy as np
import pandas as pd
import pytest
from bundle_factory import make_bundle
from serving_harness import running_server, serving_settings

from recsvc.bundle import StoredListSpec, add_member_lists, load_bundle
from recsvc.engine.served_model import ServedModel
from recsvc.errors import BundleError
from recsvc.v1 import recommender_pb2


def _npy(name: str, change: Callable[[np.ndarray], np.ndarray]) -> Callable[[Path], None]:
    def damage(path: Path) -> None:
        np.save(path / f"{name}.npy", np.ascontiguousarray(change(np.load(path / f"{name}.npy"))))

    return damage


def _json(name: str, change: Callable[[object], object]) -> Callable[[Path], None]:
    def damage(path: Path) -> None:
        (path / name).write_text(json.dumps(change(json.loads((path / name).read_text()))))

    return damage


def _set(*keys: str, value: object) -> Callable[[object], object]:
    def change(doc: object) -> object:
        node = doc
        for key in keys[:-1]:
            node = node[key]  # type: ignore[index]
        node[keys[-1]] = value  # type: ignore[index]
        return doc

    return change


def _falling(indptr: np.ndarray) -> np.ndarray:
    out = indptr.copy()
    row = int(np.flatnonzero(np.diff(out) > 0)[0]) + 1  # a row with entries starts after its end
    out[row] = out[row + 1] + 1
    return out


# The planted bundle (tests/support/bundle_factory.py): 44 members, 152 items, 16 factors.
DAMAGES: dict[str, tuple[Callable[[Path], None], str]] = {
    # refused before, but as INTERNAL
    "vocab_empty": (_json("vocab.json", lambda _: {}), "vocab.json has no list of strings 'categories'"),
    "alpha_not_a_number": (
        _json("manifest.json", _set("params", "alpha", value="abc")),
        "manifest.json params.alpha is 'abc', expected a finite number",
    ),
    # swapped in, then every call failed
    "titles_object": (
        _json("item_titles.json", lambda _: {}),
        "item_titles.json holds a JSON dict, expected a list of 152 titles",
    ),
    "item_factors_width": (
        _npy("item_factors", lambda a: a[:, :5]),
        "item_factors.npy is float32 (152, 5), expected float32 or float64 (152, 16)",
    ),
    "member_segment_short": (
        _npy("member_segment", lambda a: a[:10]),
        "member_segment.npy is uint8 (10,), expected an integer dtype (44,)",
    ),
    # crashed the worker
    "history_item_out_of_range": (
        _npy("history_indices", lambda a: np.where(np.arange(a.size) == 0, 99_999, a)),
        "history_indices.npy holds item 99999, the bundle has 152 items",
    ),
    # and more
    "history_data_wrong_dtype": (
        _npy("history_data", lambda a: a.astype(np.int32)),
        "history_data.npy is int32",
    ),
    "item_price_2d": (_npy("item_price", lambda a: a[:, None]), "item_price.npy is float32 (152, 1)"),
    "history_indptr_falls": (_npy("history_indptr", _falling), "history_indptr.npy is not monotone"),
    "purchased_indptr_short": (
        _npy("purchased_indptr", lambda a: a[:10]),
        "purchased_indptr.npy is int64 (10,)",
    ),
    "purchased_indptr_end": (
        _npy("purchased_indptr", lambda a: np.append(a[:-1], a[-1] + 1)),
        "purchased_indptr.npy ends at",
    ),
    "purchased_item_negative": (
        _npy("purchased_indices", lambda a: np.where(np.arange(a.size) == 0, -1, a)),
        "purchased_indices.npy holds item -1",
    ),
    "category_past_vocab": (
        _npy("item_category", lambda a: a + 100),
        "item_category.npy holds category 100, vocab.json has 8 categories",
    ),
    "segment_past_manifest": (
        _npy("member_segment", lambda a: a + 9),
        "member_segment.npy holds segment 9, manifest.json names 5 segments",
    ),
    "titles_short": (
        _json("item_titles.json", lambda t: t[:-1]),  # type: ignore[index]
        "item_titles.json holds a list of 151, expected a list of 152 titles",
    ),
    "manifest_factors": (
        _json("manifest.json", _set("factors", value=7)),
        "item_factors.npy is float32 (152, 16), expected float32 or float64 (152, 7)",
    ),
    "event_weight_nan": (
        _json("manifest.json", _set("params", "event_weights", "view", value=float("nan"))),
        "params.event_weights.view is nan",
    ),
    "segments_empty": (_json("manifest.json", _set("segments", value=[])), "manifest.json segments is empty"),
    "member_ids_unsorted": (_npy("member_ids", lambda a: a[::-1]), "member_ids.npy is not sorted and unique"),
    "item_ids_not_bytes": (_npy("item_ids", lambda a: a.astype(str)), "item_ids.npy is <U"),
    "item_in_stock_float": (
        _npy("item_in_stock", lambda a: a.astype(np.float32)),
        "item_in_stock.npy is float32 (152,), expected bool",
    ),
}


def _version(srv: object) -> str:
    info = srv.stub.GetModelInfo(recommender_pb2.GetModelInfoRequest(), timeout=5)  # type: ignore[attr-defined]
    return str(info.model_version)


@pytest.mark.integration
@pytest.mark.parametrize("case", sorted(DAMAGES))
def test_reload_refuses_a_damaged_bundle_and_the_old_model_keeps_serving(
    redis_url: str, tmp_path: Path, case: str
) -> None:
    damage, message = DAMAGES[case]
    b1 = make_bundle(tmp_path / "b1", bundle_id="v1")
    broken = make_bundle(tmp_path / "b2", bundle_id="v2", flip_clusters=True)
    damage(broken.path)
    with running_server(serving_settings(str(b1.path), redis_url, tmp_path)) as srv:
        with pytest.raises(grpc.RpcError) as err:
            srv.stub.ReloadModel(recommender_pb2.ReloadModelRequest(model_uri=str(broken.path)), timeout=30)
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        details = err.value.details() or ""
        assert details.startswith("BAD_BUNDLE"), details
        assert message in details, details
        assert _version(srv) == "v1"  # the old model keeps serving
        member = b1.warm_members(cluster=0)[0]
        reply = srv.stub.RecommendProducts(
            recommender_pb2.RecommendProductsRequest(member_id=member, k=5), timeout=5
        )
        assert reply.model_version == "v1" and reply.items


def test_a_good_bundle_loads_and_serves(tmp_path: Path) -> None:
    planted = make_bundle(tmp_path / "b")
    bundle = load_bundle(planted.path)
    assert len(bundle.members) == 44 and len(bundle.items) == 152
    assert bundle.categories[0] == "cat0" and len(bundle.item_titles) == 152
    # still memory-mapped: the checks copy nothing
    assert isinstance(bundle.arrays["history_indices"].base, np.memmap)
    model = ServedModel.load(planted.path, version="1", source_uri=str(planted.path))
    assert model.factors == 16


def test_stored_lists_naming_items_past_the_end_are_refused(tmp_path: Path) -> None:
    planted = make_bundle(tmp_path / "b")
    n_members, n_items = 44, 152
    spec = StoredListSpec(k=3, diversity=0.0, max_per_category=0, ann_candidates=100)
    items = np.zeros((n_members, 3), dtype=np.int32)
    items[5, 1] = n_items
    scores = np.ones((n_members, 3), dtype=np.float32)
    reasons = np.full((n_members, 3), -1, dtype=np.int32)
    with pytest.raises(BundleError, match=r"member_list_item\.npy holds item 152, the bundle has 152 items"):
        add_member_lists(planted.path, items, scores, reasons, spec)
    items[5, 1] = 0
    reasons[0, 0] = -2
    with pytest.raises(BundleError, match=r"member_list_reason\.npy holds item -2"):
        add_member_lists(planted.path, items, scores, reasons, spec)


def test_a_bundle_the_model_cannot_be_built_from_is_bad_bundle_not_internal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The last line of defence: whatever the checks miss and preparing the model raises."""
    planted = make_bundle(tmp_path / "b")

    def broken(*_args: object, **_kwargs: object) -> None:
        raise KeyError("max_norm")

    monkeypatch.setattr(ServedModel, "__init__", broken)
    with pytest.raises(BundleError, match="cannot be served: KeyError") as err:
        ServedModel.load(planted.path, version="1", source_uri=str(planted.path))
    assert err.value.reason == "BAD_BUNDLE"


@pytest.mark.parametrize(
    ("name", "row", "bad"),
    [("member_factors", 7, np.nan), ("item_factors", 3, np.inf), ("history_data", 5, -np.inf)],
)
def test_a_non_finite_factor_or_weight_is_refused_naming_the_file_and_row(
    tmp_path: Path, name: str, row: int, bad: float
) -> None:
    """A NaN member vector would give NaN scores, and lists in garbage order, with no error."""
    planted = make_bundle(tmp_path / "b")
    arr = np.load(planted.path / f"{name}.npy")
    arr[(row, 2) if arr.ndim == 2 else row] = bad
    np.save(planted.path / f"{name}.npy", arr)
    with pytest.raises(
        BundleError, match=rf"{name} holds NaN or infinite values, the first in row {row} of {name}\.npy"
    ) as err:
        load_bundle(planted.path)
    assert err.value.reason == "BAD_BUNDLE"
    with pytest.raises(BundleError, match=rf"{name}\.npy"):
        ServedModel.load(planted.path, version="1", source_uri=str(planted.path))


def test_the_finite_scan_names_the_first_bad_row_across_steps(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The scan reads a memory-mapped array a step at a time; a row in a later step, and the
    first of two, is the one named."""
    from recsvc import bundle_parts

    planted = make_bundle(tmp_path / "b")
    factors = np.load(planted.path / "member_factors.npy")
    factors[30, 0], factors[41, 15] = np.inf, np.nan
    np.save(planted.path / "member_factors.npy", factors)
    monkeypatch.setattr(bundle_parts, "_FINITE_STEP_BYTES", 16 * 4 * 8)  # 8 rows of 16 float32
    with pytest.raises(BundleError, match=r"the first in row 30 of member_factors\.npy"):
        load_bundle(planted.path)


def test_non_finite_stored_list_and_popular_scores_are_refused(tmp_path: Path) -> None:
    planted = make_bundle(tmp_path / "b")
    spec = StoredListSpec(k=3, diversity=0.0, max_per_category=0, ann_candidates=100)
    items = np.zeros((44, 3), dtype=np.int32)
    scores = np.ones((44, 3), dtype=np.float32)
    scores[12, 1] = np.nan
    reasons = np.full((44, 3), -1, dtype=np.int32)
    with pytest.raises(BundleError, match=r"member_list_score holds NaN .* row 12 of member_list_score\.npy"):
        add_member_lists(planted.path, items, scores, reasons, spec)
    other = make_bundle(tmp_path / "c")
    popular = pd.read_parquet(other.path / "popular.parquet")
    popular.loc[4, "score"] = np.inf
    popular.to_parquet(other.path / "popular.parquet", index=False)
    with pytest.raises(
        BundleError, match=r"popular\.parquet holds a score that is not a finite number, the first in row 4"
    ) as err:
        load_bundle(other.path)
    assert err.value.reason == "BAD_BUNDLE"
