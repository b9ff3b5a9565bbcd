"""`recsvc load bench ann` (bench/ann_recall.py) on a small planted bundle: recall of the bundle's
indexes against exact search on members outside the tuning sample, and search times."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from bench.ann_recall import AnnRow, ann_costs, markdown, query_rows
from recsvc.bundle import KIND_NAMES, KIND_PRODUCT
from recsvc.settings import load_settings
from training import ann as training_ann

TUNING = {"training": {"exact_index_below": 100, "ann_index": "ivf_mips", "ann_queries": 20}}


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """60 trained members (20 tune the index), 800 products in a norm-augmented IVF, 80 content
    items in an exact index (below exact_index_below); item norms spread like ALS factors."""
    from bundle_factory import make_bundle

    from training.reindex import reindex

    root = tmp_path_factory.mktemp("bench-ann")
    src = make_bundle(
        root / "src", products_per_cluster=200, content_per_cluster=20, members_per_cluster=15
    ).path
    factors = np.load(src / "item_factors.npy")
    scale = np.random.default_rng(6).lognormal(0, 1.0, size=(factors.shape[0], 1))
    np.save(src / "item_factors.npy", (factors * scale).astype(np.float32))
    reindex(src, root / "mips", load_settings(overrides=TUNING).training)
    return root / "mips"


def test_queries_are_trained_members_outside_the_tuning_sample() -> None:
    rng = np.random.default_rng(3)
    mf = rng.normal(size=(500, 8)).astype(np.float32)
    mf[::7] = 0  # untrained members
    tuning = training_ann.query_sample(mf, 100, 42)
    tuned = np.flatnonzero(np.isin(mf[:, 0], tuning[:, 0]))
    assert tuned.size == 100
    rows, held_out = query_rows(mf, 300, 12345, tuning_queries=100, tuning_seed=42)
    assert held_out and rows.size == 300 and (np.diff(rows) > 0).all()
    assert not np.isin(rows, tuned).any() and (np.abs(mf[rows]).sum(axis=1) > 0).all()
    # every trained member tuned the index: all trained members, flagged
    rows, held_out = query_rows(mf, 300, 12345, tuning_queries=1000, tuning_seed=42)
    assert not held_out and rows.size == 300 and (np.abs(mf[rows]).sum(axis=1) > 0).all()


def test_ann_costs_per_kind(bundle: Path) -> None:
    manifest = json.loads((bundle / "manifest.json").read_text())["index"]
    rows = ann_costs(bundle, queries=1000, repeats=1, tuning_queries=20, tuning_seed=42)
    assert [r.kind for r in rows] == list(KIND_NAMES.values())
    by_kind = {r.kind: r for r in rows}
    for r in rows:
        assert r.index_type == manifest[r.kind]["type"]
        assert r.items == manifest[r.kind]["size"]
        assert 0.0 <= r.recall_at_k <= 1.0 and r.recall_at_k >= 0.9
        assert r.index_ms > 0 and r.served_ms > 0
        assert r.queries == 40 and r.held_out  # 60 trained, 20 in the tuning sample
        assert r.k == 20 and r.n == 100
    product = by_kind[KIND_NAMES[KIND_PRODUCT]]
    assert product.index_type == "ivf_flat_l2_augmented"
    assert (product.nlist, product.nprobe) == (manifest["product"]["nlist"], manifest["product"]["nprobe"])
    assert product.effort == f"nprobe {product.nprobe}"
    content = by_kind["content"]
    assert content.index_type == "flat_ip" and content.effort == "exact" and content.recall_at_k == 1.0
    table = markdown(rows)
    assert "recall@20" in table and "`ivf_flat_l2_augmented`" in table and "| exact |" in table
    assert AnnRow(**product.as_dict()) == product


def test_cli_writes_results_and_prints_the_table(bundle: Path, tmp_path: Path) -> None:
    from recsvc.cli import app

    result = CliRunner().invoke(
        app,
        ["load", "bench", "ann", "--bundle", str(bundle), "--queries", "30", "--results", str(tmp_path)],
        env={"RECSVC_TRAINING__ANN_QUERIES": "20", "COLUMNS": "250"},
    )
    assert result.exit_code == 0, result.output
    assert "| mips | product | `ivf_flat_l2_augmented` |" in result.output
    (out,) = (tmp_path / "bench").iterdir()
    payload = json.loads((out / "ann.json").read_text())
    assert [r["kind"] for r in payload["rows"]] == ["product", "content"]
    assert all(r["queries"] == 30 and r["held_out"] for r in payload["rows"])
    assert (out / "ann.md").read_text().startswith("| bundle | kind |")
