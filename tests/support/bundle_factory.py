"""Tiny model bundles with planted clusters, written with ``recsvc.bundle.write_bundle``.

Each cluster ``c`` owns one axis of the factor space: its products, content and members point
along that axis (plus small noise), so the right recommendations are known in advance: a member
of cluster ``c`` gets items of cluster ``c``. Categories and brands follow the clusters (products
of cluster c have category ``cat<c>``); brands alternate inside a cluster so brand filters can be
checked. Serving tests use this instead of a trained bundle.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import pandas as pd
import scipy.sparse as sp

from recsvc.bundle import KIND_CONTENT, KIND_PRODUCT, LIFECYCLE_STAGES, BundleContents, Manifest, write_bundle
from recsvc.idmap import IdMap

EVENT_WEIGHTS = {
    "purchase": 4.0,
    "add_to_cart": 2.0,
    "favorite": 1.5,
    "share": 1.5,
    "live_watch": 1.0,
    "content_view": 1.0,
    "click": 0.75,
    "view": 0.5,
}


@dataclass
class PlantedBundle:
    """What the test bundle holds, so tests can state the right answer."""

    path: Path
    bundle_id: str
    clusters: int
    member_cluster: dict[str, int]
    item_cluster: dict[str, int]
    item_kind: dict[str, int]
    item_brand: dict[str, str]
    item_price: dict[str, float]
    out_of_stock: set[str]
    purchased: dict[str, list[str]]
    cold_members: list[str]
    member_segment: dict[str, str]
    popular: pd.DataFrame = field(repr=False, default_factory=pd.DataFrame)

    def products(self, cluster: int | None = None) -> list[str]:
        return sorted(
            i
            for i, k in self.item_kind.items()
            if k == KIND_PRODUCT and (cluster is None or self.item_cluster[i] == cluster)
        )

    def content(self, cluster: int | None = None) -> list[str]:
        return sorted(
            i
            for i, k in self.item_kind.items()
            if k == KIND_CONTENT and (cluster is None or self.item_cluster[i] == cluster)
        )

    def warm_members(self, cluster: int | None = None) -> list[str]:
        return sorted(
            m
            for m, c in self.member_cluster.items()
            if m not in self.cold_members and (cluster is None or c == cluster)
        )


def make_bundle(
    out_dir: Path,
    *,
    clusters: int = 4,
    products_per_cluster: int = 30,
    content_per_cluster: int = 8,
    members_per_cluster: int = 10,
    cold_members: int = 4,
    factors: int = 16,
    bundle_id: str = "test-bundle-1",
    seed: int = 7,
    flip_clusters: bool = False,
) -> PlantedBundle:
    """Write a planted-cluster bundle to ``out_dir``.

    ``flip_clusters`` maps members to the next cluster (c -> c+1): a second "model version" whose
    answers differ visibly from the first, for hot-swap tests.
    """
    rng = np.random.default_rng(seed)
    assert clusters <= factors
    item_ids: list[str] = []
    item_cluster: dict[str, int] = {}
    item_kind: dict[str, int] = {}
    for c in range(clusters):
        for j in range(products_per_cluster):
            iid = f"P{c}-{j:03d}"
            item_ids.append(iid)
            item_cluster[iid] = c
            item_kind[iid] = KIND_PRODUCT
        for j in range(content_per_cluster):
            iid = f"C{c}-{j:03d}"
            item_ids.append(iid)
            item_cluster[iid] = c
            item_kind[iid] = KIND_CONTENT
    items = IdMap.from_values(item_ids)
    ordered = items.ids(range(len(items)))
    n_items = len(ordered)

    item_factors = np.zeros((n_items, factors), dtype=np.float32)
    kind = np.zeros(n_items, dtype=np.uint8)
    category = np.zeros(n_items, dtype=np.int32)
    brand = np.zeros(n_items, dtype=np.int32)
    price = np.zeros(n_items, dtype=np.float32)
    in_stock = np.ones(n_items, dtype=bool)
    titles: list[str] = []
    brands = [f"brand{b}" for b in range(2 * clusters)]
    for row, iid in enumerate(ordered):
        c = item_cluster[iid]
        j = int(iid.split("-")[1])
        # Relevance inside a cluster falls with j, so the best items are known: j = 0, 1, 2, ...
        strength = 1.0 - 0.01 * j
        item_factors[row, c] = strength
        item_factors[row] += rng.normal(0, 0.02, factors).astype(np.float32)
        kind[row] = item_kind[iid]
        category[row] = c if item_kind[iid] == KIND_PRODUCT else clusters + c
        brand[row] = 2 * c + (j % 2)
        price[row] = 10.0 + j
        # every 7th product is out of stock
        in_stock[row] = not (item_kind[iid] == KIND_PRODUCT and j % 7 == 6)
        titles.append(f"{'Product' if item_kind[iid] == KIND_PRODUCT else 'Story'} {iid}")
    categories = [f"cat{c}" for c in range(clusters)] + [f"content{c}" for c in range(clusters)]

    member_ids: list[str] = []
    member_cluster: dict[str, int] = {}
    for c in range(clusters):
        for j in range(members_per_cluster):
            mid = f"M{c}-{j:03d}"
            member_ids.append(mid)
            member_cluster[mid] = c
    cold = [f"N-{j:03d}" for j in range(cold_members)]
    for j, mid in enumerate(cold):
        member_ids.append(mid)
        member_cluster[mid] = j % clusters
    members = IdMap.from_values(member_ids)
    m_ordered = members.ids(range(len(members)))
    n_members = len(m_ordered)
    member_factors = np.zeros((n_members, factors), dtype=np.float32)
    segment = np.zeros(n_members, dtype=np.uint8)
    hist_rows: list[int] = []
    hist_cols: list[int] = []
    hist_data: list[float] = []
    purch_rows: list[int] = []
    purch_cols: list[int] = []
    purchased: dict[str, list[str]] = {}
    member_segment: dict[str, str] = {}
    for row, mid in enumerate(m_ordered):
        c = member_cluster[mid]
        target = (c + 1) % clusters if flip_clusters else c
        if mid in cold:
            segment[row] = LIFECYCLE_STAGES.index("new")
            member_segment[mid] = "new"
            continue
        member_factors[row, target] = 1.0
        member_factors[row] += rng.normal(0, 0.01, factors).astype(np.float32)
        seg = "active" if row % 2 == 0 else "at_risk"
        segment[row] = LIFECYCLE_STAGES.index(seg)
        member_segment[mid] = seg
        # history: bought the two best in-stock products of its cluster, viewed a third
        bought = [f"P{c}-000", f"P{c}-001"]
        viewed = [f"P{c}-010"]
        purchased[mid] = bought
        for iid in bought:
            r = items.row(iid)
            assert r is not None
            hist_rows.append(row)
            hist_cols.append(r)
            hist_data.append(EVENT_WEIGHTS["purchase"])
            purch_rows.append(row)
            purch_cols.append(r)
        for iid in viewed:
            r = items.row(iid)
            assert r is not None
            hist_rows.append(row)
            hist_cols.append(r)
            hist_data.append(EVENT_WEIGHTS["view"])
    history = sp.csr_matrix((hist_data, (hist_rows, hist_cols)), shape=(n_members, n_items), dtype=np.float32)
    purchased_m = sp.csr_matrix(
        (np.ones(len(purch_rows), dtype=np.float32), (purch_rows, purch_cols)), shape=(n_members, n_items)
    )

    # Popularity: cluster 0 is the most popular overall; "new" members on the live channel are
    # shown cluster 1 instead, so segment/channel lookups are visible in answers.
    pop_rows = []
    for seg, channel, best in (("all", "all", 0), ("new", "live", 1)):
        for kind_name, kind_code in (("product", KIND_PRODUCT), ("content", KIND_CONTENT)):
            ranked = [i for i in ordered if item_kind[i] == kind_code]
            ranked.sort(key=lambda i: ((item_cluster[i] - best) % clusters, int(i.split("-")[1])))
            for rank, iid in enumerate(ranked):
                pop_rows.append(
                    {
                        "segment": seg,
                        "channel": channel,
                        "kind": kind_name,
                        "rank": rank + 1,
                        "item_id": iid,
                        "score": float(len(ranked) - rank),
                    }
                )
    popular = pd.DataFrame(pop_rows)
    segments = pd.DataFrame(
        {
            "member_id": m_ordered,
            "lifecycle": [LIFECYCLE_STAGES[s] for s in segment],
            "recency_days": np.zeros(n_members, dtype=np.float64),
            "frequency": np.zeros(n_members, dtype=np.int64),
            "monetary": np.zeros(n_members, dtype=np.float64),
            "r": np.ones(n_members, dtype=np.int64),
            "f": np.ones(n_members, dtype=np.int64),
            "m": np.ones(n_members, dtype=np.int64),
            "rfm_score": np.ones(n_members, dtype=np.int64) * 3,
        }
    )
    indexes = {}
    for kind_name, kind_code in (("product", KIND_PRODUCT), ("content", KIND_CONTENT)):
        rows = np.flatnonzero(kind == kind_code).astype(np.int64)
        index = faiss.IndexIDMap2(faiss.IndexFlatIP(factors))
        index.add_with_ids(np.ascontiguousarray(item_factors[rows]), rows)
        indexes[kind_name] = index
    manifest = Manifest(
        schema_version=1,
        bundle_id=bundle_id,
        created_at=datetime.now(UTC).isoformat(timespec="seconds"),
        training_cutoff="2026-11-01T00:00:00+00:00",
        data_fingerprint="synthetic-" + bundle_id,
        factors=factors,
        params={
            "regularization": 0.05,
            "alpha": 2.0,
            "event_weights": EVENT_WEIGHTS,
            "half_life_days": 60.0,
            "iterations": 5,
        },
        metrics={"ndcg_at_10": 0.5},
        counts={"members": n_members, "items": n_items},
        index={"type": "flat"},
    )
    # each cluster's first story features two of its products (the catalog's featured_item_ids)
    f_rows = (
        [items.row(f"C{c}-000") for c in range(clusters) for _ in range(2)] if content_per_cluster else []
    )
    f_cols = (
        [items.row(f"P{c}-{j:03d}") for c in range(clusters) for j in (3, 2)] if content_per_cluster else []
    )
    featured = sp.csr_matrix(
        (np.ones(len(f_rows), dtype=np.float32), (f_rows, f_cols)), shape=(n_items, n_items)
    )
    contents = BundleContents(
        manifest=manifest,
        members=members,
        member_factors=member_factors,
        member_segment=segment,
        items=items,
        item_factors=item_factors,
        item_kind=kind,
        item_category=category,
        item_brand=brand,
        item_price=price,
        item_in_stock=in_stock,
        item_published_at=np.zeros(n_items, dtype=np.int64),
        item_titles=titles,
        categories=categories,
        brands=brands,
        history=history,
        purchased=purchased_m,
        segments=segments,
        popular=popular,
        indexes=indexes,
        item_featured=featured,
    )
    write_bundle(out_dir, contents)
    return PlantedBundle(
        path=out_dir,
        bundle_id=bundle_id,
        clusters=clusters,
        member_cluster={m: ((c + 1) % clusters if flip_clusters else c) for m, c in member_cluster.items()},
        item_cluster=item_cluster,
        item_kind=item_kind,
        item_brand={i: brands[brand[items.row(i) or 0]] for i in ordered},
        item_price={i: float(price[items.row(i) or 0]) for i in ordered},
        out_of_stock={i for i in ordered if not in_stock[items.row(i) or 0]},
        purchased=purchased,
        cold_members=cold,
        member_segment=member_segment,
        popular=popular,
    )


def train_small_bundle(tmp: Path, training: dict[str, object]) -> Path:
    """A bundle trained by the real pipeline on a small generated data set (300 members, 150
    products, 20 content items), with these training settings on top of small-model ones;
    not registered. Returns the bundle folder."""
    from recsvc.settings import load_settings
    from training import pipeline
    from training.synthetic import make_dataset

    s = load_settings(
        overrides={
            "mlflow": {"tracking_uri": f"sqlite:///{tmp}/mlflow.db", "artifact_location": str(tmp / "art")},
            # ALS serves unless the caller names another family: item-item wins on this data
            "training": {"factors": 16, "iterations": 6, "eval_members": 200, "family": "als", **training},
        }
    )
    data = make_dataset(members=300, products=150, content=20, events_per_member=25, seed=2)
    pipeline.run(
        s, pipeline.TrainOptions(data_dir=tmp, bundle_out=tmp / "bundle", register=False), dataset=data
    )
    return tmp / "bundle"


class FixedCatalog:
    """A catalog (``RecommendationEngine.catalog``) that serves one given view, whatever the model:
    a test's live-catalog state without a follower."""

    def __init__(self, view: Any) -> None:
        self._view = view

    def view(self, _model: Any) -> Any:
        return self._view


def fold_in_cosines(bundle_dir: Path, members: int = 300, **as_if: Any) -> np.ndarray:
    """Per trained member (the first ``members`` with history): the cosine between the vector
    training gave them and the one serving recomputes from their history (the bundle's r_ui)
    with ``recsvc.engine.member_state.fold_in``. ``as_if``: ServedModel attributes to replace
    (``confidence_scale``, ``bm25``, ``fold_in``), to see what a different formula would give."""
    from recsvc.engine.member_state import fold_in
    from recsvc.engine.served_model import ServedModel

    model = ServedModel.load(bundle_dir, version="fold-in", source_uri=str(bundle_dir))
    for name, value in as_if.items():
        setattr(model, name, value)
    items = np.asarray(model.item_factors)
    out = []
    for m in np.flatnonzero(np.diff(model.history_indptr) > 0)[:members]:
        rows, r = model.history(int(m))
        rows = rows.astype(np.int64)
        x = fold_in(model, items, rows, model.confidence(rows, r))
        u = model.member_vector(int(m))
        out.append(float(x @ u / max(float(np.linalg.norm(x) * np.linalg.norm(u)), 1e-12)))
    return np.array(out)
