"""r_ui -> confidence on a linear or log scale: the same formula in training and in serving."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
from bundle_factory import fold_in_cosines, train_small_bundle

from recsvc.bundle import read_manifest
from recsvc.confidence_scale import IDF_FLOOR, Bm25, confidence_input, scaled, scaled_matrix
from recsvc.errors import ConfigError
from recsvc.settings import load_settings


def test_log_scale_adds_less_for_each_repeat_and_keeps_order_and_sign() -> None:
    r = np.array([0.0, 0.5, 1.0, 2.0, 10.0, 100.0, -3.0], dtype=np.float32)
    got = scaled(r, "log")
    np.testing.assert_allclose(got[:6], np.log1p(r[:6]), rtol=1e-6)
    assert got[6] == pytest.approx(-np.log1p(3.0))
    assert np.all(np.diff(got[:6]) > 0)  # more events, more confidence ...
    steps = np.diff(scaled(np.array([1.0, 2.0, 3.0, 4.0], dtype=np.float32), "log"))
    assert np.all(np.diff(steps) < 0)  # ... but ever less for each further event
    assert scaled(r, "linear") is r
    with pytest.raises(ValueError, match="unknown confidence scale"):
        scaled(r, "sqrt")


def test_the_matrix_keeps_its_entries_and_the_original_is_untouched() -> None:
    m = sp.csr_matrix(np.array([[0.0, 3.0], [1.0, 0.0]], dtype=np.float32))
    log = scaled_matrix(m, "log")
    assert (log != 0).nnz == m.nnz and m[0, 1] == 3.0
    assert log[0, 1] == pytest.approx(np.log1p(3.0))
    assert scaled_matrix(m, "linear") is m


def test_an_unknown_scale_in_settings_is_a_named_error() -> None:
    with pytest.raises(ConfigError, match="confidence_scale"):
        load_settings(overrides={"training": {"confidence_scale": "sqrt"}})
    assert load_settings().training.confidence_scale == "log"


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return {
        scale: train_small_bundle(tmp_path_factory.mktemp(scale), {"confidence_scale": scale})
        for scale in ("log", "linear")
    }


def test_the_bundle_records_its_scale_and_serving_folds_members_in_on_it(bundles: dict[str, Path]) -> None:
    """A member recomputed from their history as serving does (recent events are folded in the
    same way) is the member training fitted, on either scale; the other scale gives another."""
    for scale, path in bundles.items():
        assert read_manifest(path).params["confidence_scale"] == scale
    own = {scale: fold_in_cosines(path) for scale, path in bundles.items()}
    crossed = fold_in_cosines(bundles["log"], confidence_scale="linear")
    print(
        {s: np.percentile(c, [5, 50]).round(4).tolist() for s, c in own.items()},
        np.percentile(crossed, [5, 50]).round(4).tolist(),
        file=sys.stderr,
    )
    for scale, cos in own.items():
        assert np.median(cos) > 0.99 and np.percentile(cos, 5) > 0.95, scale
    # the angle to the trained vector, as 1 - cosine: several times larger on the wrong scale
    assert 1 - np.median(crossed) > 3 * (1 - np.median(own["log"]))


def test_a_bundle_with_an_unknown_scale_does_not_load(bundles: dict[str, Path], tmp_path: Path) -> None:
    import json
    import shutil

    from recsvc.errors import BundleError

    copy = tmp_path / "bundle"
    shutil.copytree(bundles["log"], copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["params"]["confidence_scale"] = "cubic"
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="confidence_scale is 'cubic'"):
        read_manifest(copy)


# --- BM25 weighting ------------------------------------------------------------------------------


def _sparse(seed: int, shape: tuple[int, int] = (60, 30), density: float = 0.2) -> sp.csr_matrix:
    rng = np.random.default_rng(seed)
    m = sp.random(*shape, density=density, random_state=rng, format="csr", dtype=np.float32)
    m.data = (m.data * 5 + 0.2).astype(np.float32)
    return m


def test_bm25_weighs_as_implicits_bm25_weight() -> None:
    """Every member has values and no item is held by over a third of them: then the weighting is implicit's
    ``bm25_weight`` to the float (which averages lengths over all rows and lets idf go below 0)."""
    from implicit.nearest_neighbours import bm25_weight

    m = _sparse(1)
    m = m[np.diff(m.indptr) > 0]
    assert np.log(m.shape[0]) - np.log1p(np.bincount(m.indices).max()) > 1e-3
    got = confidence_input(m, "linear", "bm25", 100.0, 0.8)
    want = sp.csr_matrix(bm25_weight(m, K1=100, B=0.8), dtype=np.float32)
    assert got.nnz == m.nnz
    np.testing.assert_allclose(got.toarray(), want.toarray(), rtol=1e-5)
    assert m.data.max() > 0.2 and not np.shares_memory(got.data, m.data)  # the input is untouched


def test_bm25_favours_rare_items_and_spreads_a_long_history_thinner() -> None:
    # member 0: items 0 and 1; member 1: item 0 and eight more; item 0 is everyone's
    m = sp.csr_matrix(
        (np.ones(11, np.float32), ([0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1], [0, 1, 0, 2, 3, 4, 5, 6, 7, 8, 9])),
        shape=(3, 10),
    )
    w = confidence_input(m, "linear", "bm25", 100.0, 0.8).toarray()
    assert w[0, 1] > w[0, 0] > 0  # the rarer item of the same member weighs more (item 0: the floor)
    assert w[0, 1] > w[1, 2] > 0  # the same rarity, a member of many items: thinner
    assert confidence_input(m, "log", "none", 100.0, 0.8).nnz == m.nnz
    with pytest.raises(ValueError, match="unknown confidence weighting"):
        confidence_input(m, "log", "tfidf", 100.0, 0.8)


def test_one_member_is_weighed_as_their_row_of_the_matrix() -> None:
    """Serving weighs one member's values with the numbers of the bundle's history: what
    training gave that member's row of the same matrix, on either scale."""
    m = _sparse(2)
    for scale in ("linear", "log"):
        bm25 = Bm25.of_matrix(m, scale, 100.0, 0.8)
        want = bm25.weigh_matrix(scaled_matrix(m, scale))
        for member in np.flatnonzero(np.diff(m.indptr) > 0)[:10]:
            lo, hi = m.indptr[member], m.indptr[member + 1]
            got = bm25.weigh(m.indices[lo:hi], scaled(m.data[lo:hi], scale))
            np.testing.assert_allclose(got, want.data[lo:hi], rtol=1e-5)


def test_an_item_past_the_trained_ones_weighs_as_an_item_no_member_had() -> None:
    m = _sparse(3)
    bm25 = Bm25.of_matrix(m, "log", 100.0, 0.8)
    got = bm25.weigh(np.array([0, m.shape[1] + 5]), np.array([1.0, 1.0], np.float32))
    assert bm25.new_item_idf == pytest.approx(np.log(m.shape[0]))
    assert got[1] / got[0] == pytest.approx(bm25.new_item_idf / bm25.idf[0], rel=1e-5)
    # one member: log(1) = 0 would fold an unseen item in as a dislike; it keeps the floor
    one = Bm25.of_matrix(m[:1], "log", 100.0, 0.8)
    assert (
        one.new_item_idf == IDF_FLOOR
        and one.weigh(np.array([m.shape[1]]), np.array([1.0], np.float32))[0] > 0
    )


def test_lengths_read_in_steps_are_the_lengths(monkeypatch: pytest.MonkeyPatch) -> None:
    """A bundle's history is read a few rows at a time (a memory-mapped history is never copied
    whole): steps smaller than a member's row, and empty rows between, give the same sums."""
    import recsvc.confidence_scale as cs

    m = _sparse(4, shape=(200, 40), density=0.1)
    m = sp.vstack([m[:50], sp.csr_matrix((30, 40), dtype=np.float32), m[50:]]).tocsr()
    whole = Bm25.of_matrix(m, "log", 100.0, 0.8)
    monkeypatch.setattr(cs, "_STEP", 3)
    stepped = Bm25.of_matrix(m, "log", 100.0, 0.8)
    assert stepped.avg_length == pytest.approx(whole.avg_length, rel=1e-9)
    want = np.log1p(np.abs(m.toarray())).sum(axis=1)
    assert whole.avg_length == pytest.approx(want[want > 0].mean(), rel=1e-6)


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"confidence_weighting": "tfidf"}, "confidence_weighting"),
        ({"bm25_b": 1.5}, "bm25_b"),
        ({"bm25_k1": 0}, "bm25_k1"),
    ],
)
def test_bad_weighting_settings_are_named_errors(overrides: dict[str, object], field: str) -> None:
    with pytest.raises(ConfigError, match=field):
        load_settings(overrides={"training": overrides})


@pytest.fixture(scope="module")
def bm25_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_small_bundle(
        tmp_path_factory.mktemp("bm25"), {"confidence_scale": "log", "confidence_weighting": "bm25"}
    )


def test_a_bm25_bundle_records_it_and_serving_folds_members_in_with_its_weights(bm25_bundle: Path) -> None:
    params = read_manifest(bm25_bundle).params
    assert (params["confidence_weighting"], params["bm25_k1"], params["bm25_b"]) == ("bm25", 100.0, 0.8)
    # the stored numbers are those of the history the fit took
    h = {n: np.load(bm25_bundle / f"history_{n}.npy") for n in ("indptr", "indices", "data")}
    idf = np.load(bm25_bundle / "item_idf.npy")
    again = Bm25.of(h["indptr"], h["indices"], h["data"], idf.shape[0], "log", 100.0, 0.8)
    np.testing.assert_allclose(idf, again.idf, rtol=1e-6)
    assert params["bm25_avg_length"] == pytest.approx(again.avg_length, rel=1e-9)
    own = fold_in_cosines(bm25_bundle)
    unweighted = fold_in_cosines(bm25_bundle, bm25=None)
    print(np.percentile(own, [5, 50]).round(4).tolist(), np.percentile(unweighted, [5, 50]).round(4).tolist())
    assert np.median(own) > 0.99 and np.percentile(own, 5) > 0.95
    assert 1 - np.median(unweighted) > 3 * (1 - np.median(own))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"confidence_weighting": "tfidf"}, "confidence_weighting is 'tfidf'"),
        ({"bm25_k1": "x"}, "bm25_k1 is 'x'"),
        ({"bm25_b": 2.0}, "bm25_b is 2.0"),
        ({"bm25_avg_length": 0}, "bm25_avg_length is 0"),
    ],
)
def test_a_bundle_with_a_bad_weighting_does_not_load(
    bm25_bundle: Path, tmp_path: Path, change: dict[str, object], message: str
) -> None:
    import json
    import shutil

    from recsvc.errors import BundleError

    copy = tmp_path / "bundle"
    shutil.copytree(bm25_bundle, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["params"].update(change)
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match=message):
        read_manifest(copy)


def test_auto_weighting_is_bm25_on_sparse_data_and_none_on_dense() -> None:
    from training.fit import AlsParams, resolve_weighting

    base = AlsParams.from_settings(load_settings().training)
    assert base.confidence_weighting == "auto"
    # 3 members with 2, 4 and 0 items: 3 per member with any
    seen = sp.csr_matrix((np.ones(6, np.float32), ([0, 0, 1, 1, 1, 1], [0, 1, 0, 1, 2, 3])), shape=(3, 5))
    sparse, why = resolve_weighting(base, seen, 3.5)
    assert (
        sparse.confidence_weighting == "bm25" and "3.0 distinct items per member < bm25_auto_items 3.5" in why
    )
    dense, why = resolve_weighting(base, seen, 3.0)
    assert dense.confidence_weighting == "none" and ">=" in why
    # a weighting that is set stays, whatever the data
    fixed, why = resolve_weighting(dense, seen, 100.0)
    assert fixed.confidence_weighting == "none" and "(set)" in why
    with pytest.raises(ValueError, match="unknown confidence weighting 'auto'"):
        confidence_input(seen, "log", "auto", 100.0, 0.8)


def test_a_bundle_records_the_weighting_auto_chose(tmp_path: Path) -> None:
    """The data of ``train_small_bundle`` has about 20 distinct items per member: a threshold
    above it gives BM25, one below it none, and the bundle records what was chosen, never auto."""
    import json

    chosen = {}
    for threshold in (1.0, 1000.0):
        path = train_small_bundle(tmp_path / str(threshold), {"bm25_auto_items": threshold})
        chosen[threshold] = json.loads((path / "manifest.json").read_text())["params"]["confidence_weighting"]
    assert chosen == {1.0: "none", 1000.0: "bm25"}


@pytest.mark.parametrize("damage", ["missing", "nan", "negative", "extra"])
def test_a_bundle_whose_item_weights_do_not_fit_its_weighting_does_not_load(
    bm25_bundle: Path, bundles: dict[str, Path], tmp_path: Path, damage: str
) -> None:
    import json
    import shutil

    from recsvc.bundle import load_bundle
    from recsvc.errors import BundleError

    copy = tmp_path / "bundle"
    shutil.copytree(bm25_bundle, copy)
    idf = np.load(copy / "item_idf.npy")
    if damage == "missing":
        (copy / "item_idf.npy").unlink()
    elif damage in ("nan", "negative"):
        idf[3] = np.nan if damage == "nan" else -1.0
        np.save(copy / "item_idf.npy", idf)
    else:  # a bundle without BM25 that carries the weights anyway
        shutil.rmtree(copy)
        shutil.copytree(bundles["linear"], copy)
        manifest = json.loads((copy / "manifest.json").read_text())
        manifest["params"]["confidence_weighting"] = "none"
        (copy / "manifest.json").write_text(json.dumps(manifest))
        np.save(copy / "item_idf.npy", np.ones(len(np.load(copy / "item_ids.npy")), np.float32))
    with pytest.raises(BundleError, match="item_idf"):
        load_bundle(copy)
