"""A product launched shortly before a retrain, with no interactions yet, keeps a vector in the
new bundle: its group's best sellers' vector (the quieter of the two starting rules), so it stays
recommendable and similar to its group, instead of dropping out of every list at the retrain.
An old product no one interacted with keeps a zero vector."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from recsvc.bundle import load_bundle
from recsvc.catalog.view import GroupMeans
from recsvc.engine.filters import FilterSpec
from recsvc.engine.recommender import RecommendationEngine, SingleModel
from recsvc.engine.served_model import ServedModel
from recsvc.settings import load_settings
from training import pipeline
from training.synthetic import make_dataset

pytestmark = pytest.mark.integration


def _settings(tmp: Path, **training: Any) -> Any:
    return load_settings(
        overrides={
            "mlflow": {"tracking_uri": f"sqlite:///{tmp}/mlflow.db", "artifact_location": str(tmp / "a")},
            "training": {"factors": 16, "iterations": 8, "eval_members": 300, "itemknn": "off", **training},
        }
    )


@pytest.mark.parametrize("days", [30, 0])
def test_a_recent_product_without_interactions_keeps_its_group_vector(tmp_path: Path, days: int) -> None:
    data = make_dataset(members=400, products=60, content=8, events_per_member=15, days=60, seed=3)
    end = data.events["ts"].max()
    sold = data.events.loc[data.events["event_type"] == "purchase", "item_id"].value_counts()
    best = data.catalog.set_index("item_id").loc[sold.index[0]]
    rows = []
    for item_id, published in (
        ("NEWP-1", end - pd.Timedelta(days=3)),
        ("OLDP-1", end - pd.Timedelta(days=300)),
    ):
        row = best.to_dict() | {"item_id": item_id, "title": item_id, "published_at": published}
        rows.append(row)
    data.catalog = pd.concat([data.catalog, pd.DataFrame(rows)], ignore_index=True)
    out = tmp_path / "b"
    pipeline.run(
        _settings(tmp_path, new_product_days=days),
        pipeline.TrainOptions(data_dir=tmp_path, bundle_out=out, register=False),
        dataset=data,
    )
    bundle = load_bundle(out)
    factors = np.asarray(bundle.arrays["item_factors"])
    new_row, old_row = (bundle.items.row(i) for i in ("NEWP-1", "OLDP-1"))
    assert new_row is not None and old_row is not None
    assert not factors[old_row].any()
    if days == 0:
        assert not factors[new_row].any()
        return
    trained = np.abs(factors).sum(axis=1) > 0
    trained[[new_row, old_row]] = False
    a = bundle.arrays
    sellers = GroupMeans(
        factors, a["item_kind"], a["item_category"], a["item_brand"], trained, best_sellers=True
    )
    expected = sellers.vector(
        int(a["item_kind"][new_row]), int(a["item_category"][new_row]), int(a["item_brand"][new_row])
    )
    assert expected is not None
    np.testing.assert_allclose(factors[new_row], expected, rtol=1e-5)
    model = ServedModel.load(out, version="t", source_uri="t")
    engine = RecommendationEngine(SingleModel(model), None, load_settings().serving)
    similar = engine.similar("NEWP-1", None, 5, FilterSpec(diversity=0.0)).response.items
    assert similar and all(it.item_id != "NEWP-1" for it in similar)
