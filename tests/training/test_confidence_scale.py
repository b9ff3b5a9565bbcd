"""r_ui -> confidence on a linear or log scale: the same formula in training and in serving."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
from bundle_factory import fold_in_cosines, train_small_bundle

from recsvc.bundle import read_manifest
from recsvc.confidence_scale import scaled, scaled_matrix
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
