"""A bundle built by the training steps survives write_bundle/load_bundle unchanged, and a bundle
of another schema version (or with a file missing) is refused with a named error."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from recsvc.bundle import SCHEMA_VERSION, BundleContents, load_bundle
from recsvc.errors import BundleError
from recsvc.settings import TrainingSettings
from training import ann, assemble, prepare, segments
from training.confidence import purchased_matrix
from training.factors import train_factors
from training.fit import AlsParams
from training.synthetic import make_dataset


@pytest.fixture(scope="module")
def contents() -> BundleContents:
    t = TrainingSettings(factors=8, iterations=8, popular_per_table=10)
    p = prepare.prepare(make_dataset(members=80, products=30, content=8, events_per_member=8, seed=5))
    params = AlsParams.from_settings(t)
    trained = train_factors(p, p.events, p.cutoff, params)
    table, stage = segments.member_segments(p, t)
    popular = segments.popularity_tables(p, stage, t, window_days=90)
    queries = ann.query_sample(trained.member_factors, 20, 0)
    indexes, info = ann.build_indexes(
        trained.item_factors, p.item_kind, queries, exact_below=10, m=8, ef_construction=32, ef_search=16
    )
    return assemble.assemble(
        p,
        bundle_id="test-bundle",
        params=params,
        member_factors=trained.member_factors,
        item_factors=trained.item_factors,
        history=trained.matrix,
        purchased=purchased_matrix(p.events, trained.matrix.shape),
        member_segment=stage,
        segments=table,
        popular=popular,
        indexes=indexes,
        index_info=info,
        metrics={"all.ndcg_at_10": 0.5},
        counts=p.counts,
        extra={"holdout": {"start": "a", "end": "b"}},
    )


def test_round_trip_keeps_every_array_and_table(tmp_path: Path, contents: BundleContents) -> None:
    out = assemble.write(tmp_path / "bundle", contents)
    b = load_bundle(out)
    assert b.manifest.bundle_id == "test-bundle" and b.manifest.schema_version == SCHEMA_VERSION
    assert b.manifest.model_extra is not None
    assert b.manifest.model_extra["holdout"] == {"start": "a", "end": "b"}
    # params of settings' "auto" weighting: decided on the history the fit took (8 items a member: BM25)
    assert b.manifest.params["confidence_weighting"] == "bm25" and "item_idf" in b.arrays
    for key in ("regularization", "alpha", "event_weights", "half_life_days", "iterations", "factors"):
        assert key in b.manifest.params
    np.testing.assert_array_equal(b.member_factors, contents.member_factors)
    np.testing.assert_array_equal(b.item_factors, contents.item_factors)
    np.testing.assert_array_equal(b.member_segment, contents.member_segment)
    np.testing.assert_array_equal(b.item_in_stock, contents.item_in_stock)
    np.testing.assert_array_equal(b.members.array, contents.members.array)
    assert (b.history != contents.history).nnz == 0
    assert (b.purchased != contents.purchased).nnz == 0
    assert b.item_titles == contents.item_titles and b.categories == contents.categories
    assert b.segments.shape == contents.segments.shape
    assert list(b.popular.columns) == ["segment", "channel", "kind", "rank", "item_id", "score"]
    assert set(b.indexes) == {"product", "content"}
    # ids in the index are item rows
    q = np.ascontiguousarray(contents.member_factors[np.abs(contents.member_factors).sum(1) > 0][:2])
    _, ids = b.indexes["product"].search(q, 3)
    assert (contents.item_kind[ids[ids >= 0]] == 1).all()
    # A plain ndarray view over a read-only memory map: pages shared between processes.
    mf = b.arrays["member_factors"]
    assert type(mf) is np.ndarray and isinstance(mf.base, np.memmap) and not mf.flags.writeable


def test_featured_products_of_content_survive_and_a_broken_table_is_refused(
    tmp_path: Path, contents: BundleContents
) -> None:
    assert contents.item_featured is not None and contents.item_featured.nnz > 0  # the data has some
    b = load_bundle(assemble.write(tmp_path / "bundle", contents))
    for row in range(len(contents.items)):
        want = np.sort(contents.item_featured[row].indices)
        np.testing.assert_array_equal(np.sort(b.featured(row)), want)
    assert b.featured(len(contents.items)).size == 0  # past the bundle's rows: none
    for name, broken in (
        ("item_featured_indices", lambda a: np.full_like(a, len(contents.items))),  # a row past the end
        ("item_featured_indptr", lambda a: a[:-1]),  # a pointer short
    ):
        out = assemble.write(tmp_path / name, contents)
        np.save(out / f"{name}.npy", broken(np.load(out / f"{name}.npy")))
        with pytest.raises(BundleError, match="item_featured") as err:
            load_bundle(out)
        assert err.value.reason == "BAD_BUNDLE"
    out = assemble.write(tmp_path / "half", contents)
    (out / "item_featured_indptr.npy").unlink()
    with pytest.raises(BundleError, match="item_featured"):
        load_bundle(out)


def test_other_schema_version_is_refused_by_name(tmp_path: Path, contents: BundleContents) -> None:
    out = assemble.write(tmp_path / "bundle", contents)
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["schema_version"] = SCHEMA_VERSION + 1
    (out / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="schema version") as err:
        load_bundle(out)
    assert err.value.reason == "BUNDLE_SCHEMA_MISMATCH"


def test_missing_file_is_named(tmp_path: Path, contents: BundleContents) -> None:
    out = assemble.write(tmp_path / "bundle", contents)
    (out / "item_factors.npy").unlink()
    with pytest.raises(BundleError, match=r"item_factors\.npy"):
        load_bundle(out)


def test_writing_into_a_non_empty_folder_is_refused(tmp_path: Path, contents: BundleContents) -> None:
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "x").write_text("x")
    with pytest.raises(BundleError, match="not empty"):
        assemble.write(tmp_path / "b", contents)


def test_manifest_params_recompute_member_vectors_like_recalculate_user(
    tmp_path: Path, contents: BundleContents
) -> None:
    """What serving does for a member with new events: implicit's recalculate_user on the
    bundle's history row with the manifest's alpha and regularization. On training history it
    must land on (nearly) the member's trained vector; the residual is the CG solver's."""
    from implicit.cpu.als import AlternatingLeastSquares

    b = load_bundle(assemble.write(tmp_path / "bundle", contents))
    p = b.manifest.params
    model = AlternatingLeastSquares(
        factors=b.manifest.factors, regularization=p["regularization"], alpha=p["alpha"]
    )
    model.item_factors = np.array(b.item_factors)
    rows = np.flatnonzero(np.diff(b.history.indptr) > 0)
    recomputed = model.recalculate_user(rows, b.history[rows])
    trained = np.asarray(b.member_factors)[rows]
    cos = (recomputed * trained).sum(1) / np.linalg.norm(recomputed, axis=1) / np.linalg.norm(trained, axis=1)
    assert cos.mean() > 0.99, cos.mean()
    # with another engine's parameters (alpha and regularization a hundredth) the same solve
    # drifts away: the parameters matter
    model.alpha, model.regularization = p["alpha"] / 100, p["regularization"] / 100
    drifted = model.recalculate_user(rows, b.history[rows])
    cos_wrong = (drifted * trained).sum(1) / np.linalg.norm(drifted, axis=1) / np.linalg.norm(trained, axis=1)
    assert cos_wrong.mean() < cos.mean() - 0.01, (cos_wrong.mean(), cos.mean())


@pytest.mark.parametrize(
    "name", ["index_product.faiss", "index_content.faiss", "popular.parquet", "vocab.json"]
)
def test_every_required_file_is_checked_before_loading(
    tmp_path: Path, contents: BundleContents, name: str
) -> None:
    out = assemble.write(tmp_path / "bundle", contents)
    (out / name).unlink()
    with pytest.raises(BundleError, match=re.escape(name) + " is missing") as err:
        load_bundle(out)
    assert err.value.reason == "BAD_BUNDLE"
    out2 = assemble.write(tmp_path / "bundle2", contents)
    (out2 / name).write_bytes(b"")
    with pytest.raises(BundleError, match=re.escape(name) + " is empty"):
        load_bundle(out2)
