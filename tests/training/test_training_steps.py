"""Each training step on small hand-made data whose right answer is known in advance."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from recsvc.bundle import ALL, KIND_CONTENT, KIND_PRODUCT, LIFECYCLE_STAGES
from recsvc.errors import DataContractError
from recsvc.settings import TrainingSettings
from training import ann, coldstart, evaluate, gate, prepare, segments, split
from training.confidence import confidence_matrix, purchased_matrix, weight_table
from training.fit import AlsParams, fit_als
from training.synthetic import SyntheticDataset, make_dataset

END = pd.Timestamp("2026-06-30T00:00:00Z")


def _dataset(rows: list[tuple[str, str, str, float]], members: list[tuple[str, float]] | None = None):
    """rows: (member, item, event_type, days before END)."""
    events = pd.DataFrame(
        {
            "member_id": [r[0] for r in rows],
            "item_id": [r[1] for r in rows],
            "event_type": [r[2] for r in rows],
            "ts": pd.to_datetime([END - pd.Timedelta(days=r[3]) for r in rows], utc=True),
            "channel": ["app"] * len(rows),
            "quantity": [1] * len(rows),
            "amount": [10.0 if r[2] == "purchase" else np.nan for r in rows],
        }
    )
    catalog = pd.DataFrame(
        {
            "item_id": ["p1", "p2", "p3", "c1", "c2"],
            "kind": ["product", "product", "product", "content", "content"],
            "title": ["P1", "P2", "P3", "C1", "C2"],
            "category": ["a", "a", "b", "a", "b"],
            "brand": ["x", "y", "x", "x", "y"],
            "price": [1.0, 2.0, 3.0, 0.0, 0.0],
            "in_stock": [True, False, True, True, True],
            "published_at": pd.to_datetime([END - pd.Timedelta(days=100)] * 5, utc=True),
            "featured_item_ids": [None, None, None, ["p1"], ["p2", "p3"]],
        }
    )
    members_df = pd.DataFrame(
        {
            "member_id": [m for m, _ in members or []],
            "registered_at": pd.to_datetime([END - pd.Timedelta(days=d) for _, d in members or []], utc=True),
            "tier": ["basic"] * len(members or []),
            "timezone": ["UTC"] * len(members or []),
        }
    )
    return SyntheticDataset(
        events=events,
        catalog=catalog,
        members=members_df,
        quarantine=pd.DataFrame({"reason": ["bad_timestamp", "bad_timestamp", "unknown_item"]}),
        counts={"events_read": len(rows) + 3},
    )


def test_prepare_maps_ids_counts_and_fingerprint() -> None:
    ds = _dataset(
        [("m2", "p1", "view", 3), ("m1", "p2", "purchase", 1), ("m1", "c1", "content_view", 0)],
        members=[("m3", 5)],
    )
    p = prepare.prepare(ds)
    assert p.members.ids(range(len(p.members))) == ["m1", "m2", "m3"]
    assert p.items.ids(range(len(p.items))) == ["c1", "c2", "p1", "p2", "p3"]
    assert p.item_kind.tolist() == [KIND_CONTENT, KIND_CONTENT, KIND_PRODUCT, KIND_PRODUCT, KIND_PRODUCT]
    assert p.item_in_stock.tolist() == [True, True, True, False, True]
    # c2 features p2 and p3; featured ids point to item rows
    assert sorted(p.featured[p.items.row("c2")].indices.tolist()) == [3, 4]
    assert p.cutoff == int(END.timestamp())
    assert p.counts["quarantined_rows"] == 3
    assert p.counts["quarantined.bad_timestamp"] == 2
    assert p.counts["ingest.events_read"] == 6
    assert p.counts["members"] == 3 and p.counts["purchases"] == 1
    assert p.fingerprint == prepare.prepare(ds).fingerprint
    ds.events.loc[0, "event_type"] = "click"
    assert prepare.prepare(ds).fingerprint != p.fingerprint


def test_prepare_rejects_empty_input_with_a_clear_error() -> None:
    ds = _dataset([("m1", "p1", "view", 1)])
    ds.events = ds.events.iloc[0:0]
    with pytest.raises(DataContractError, match="no clean events"):
        prepare.prepare(ds)


def test_confidence_weights_and_decay_known_answer() -> None:
    p = prepare.prepare(
        _dataset([("m1", "p1", "purchase", 10), ("m1", "p1", "view", 0), ("m2", "p2", "view", 20)])
    )
    weights = {"purchase": 4.0, "view": 0.5}
    m = confidence_matrix(p.events, (2, 5), weights, half_life_days=10, as_of=p.cutoff)
    p1, p2 = p.items.row("p1"), p.items.row("p2")
    assert m[0, p1] == pytest.approx(4.0 * 0.5 + 0.5)  # purchase one half-life ago + view today
    assert m[1, p2] == pytest.approx(0.5 * 0.25)
    assert m.nnz == 2
    bought = purchased_matrix(p.events, (2, 5))
    assert bought.toarray().sum() == 1 and bought[0, p1] == 1
    # a zero-weight type contributes no entry at all
    assert confidence_matrix(p.events, (2, 5), {"purchase": 1.0}, 10, p.cutoff).nnz == 1


def test_holdout_keeps_only_new_future_items_of_known_members() -> None:
    p = prepare.prepare(
        _dataset(
            [
                ("m1", "p1", "purchase", 30),
                ("m1", "p1", "view", 2),  # seen in training: not a test item
                ("m1", "p2", "view", 1),  # new: a test item
                ("m2", "p3", "view", 1),  # m2 has no training history: not tested
            ]
        )
    )
    positive = weight_table(TrainingSettings().event_weights) > 0
    s = split.holdout(p, holdout_days=7, positive_types=positive)
    assert len(s.train) == 1
    assert s.test.nnz == 1 and s.test[0, p.items.row("p2")] == 1
    assert s.seen[0, p.items.row("p1")] == 1
    assert s.start == p.cutoff - 7 * 86400
    val = split.validation(s, (2, 5), validation_days=7, positive_types=positive)
    assert val.start < s.start and len(val.train) <= len(s.train)


def test_fit_records_loss_per_iteration_and_zero_rows_stay_out() -> None:
    rng = np.random.default_rng(0)
    m = sp.random(40, 30, density=0.2, format="csr", dtype=np.float32, random_state=rng)
    params = AlsParams(8, 0.1, 2.0, 5, {"view": 1.0}, 30.0, random_state=1)
    seen: list[int] = []
    result = fit_als(m, params, track_loss=True, on_iteration=lambda i, _loss: seen.append(i))
    assert seen == list(range(5))
    assert len(result.losses) == 5 and result.losses[-1] <= result.losses[0]
    assert result.user_factors.shape == (40, 8) and result.item_factors.shape == (30, 8)


def test_a_warm_fit_starts_from_the_given_factors_and_leaves_them_alone() -> None:
    """One iteration from converged factors keeps their loss; one from implicit's random start
    does not. The given arrays are copied, and factors of another shape are refused."""
    rng = np.random.default_rng(0)
    m = sp.random(60, 40, density=0.2, format="csr", dtype=np.float32, random_state=rng)
    m.data = (1 + 4 * m.data).astype(np.float32)
    params = AlsParams(8, 0.1, 2.0, 15, {"view": 1.0}, 30.0, random_state=1)
    converged = fit_als(m, params, track_loss=True)
    init = (converged.user_factors.copy(), converged.item_factors.copy())
    kept = (init[0].copy(), init[1].copy())
    one = AlsParams(8, 0.1, 2.0, 1, {"view": 1.0}, 30.0, random_state=1)
    warm = fit_als(m, one, track_loss=True, init=init)
    cold = fit_als(m, one, track_loss=True)
    assert warm.losses[0] <= converged.losses[-1] * 1.01
    assert cold.losses[0] > converged.losses[-1] * 1.5
    assert np.array_equal(init[0], kept[0]) and np.array_equal(init[1], kept[1])
    with pytest.raises(ValueError, match="warm start factors"):
        fit_als(m, one, init=(init[0][:, :4], init[1][:, :4]))


def test_the_refit_starts_from_the_candidate_for_its_warm_iterations() -> None:
    """``training.refit_warm_iterations`` iterations from the candidate's factors (at most
    ``iterations``); 0 or Spark: from scratch with ``iterations``."""
    from training import stages
    from training.factors import train_factors
    from training.progress import Steps

    prepared = prepare.prepare(make_dataset(members=300, seed=3))
    params = AlsParams.from_settings(TrainingSettings(factors=8, iterations=6))
    candidate = train_factors(prepared, prepared.events, prepared.cutoff, params, num_threads=1)
    cases = (("implicit", 2, 2), ("implicit", 20, 6), ("implicit", 0, 6), ("spark", 2, 6))
    for engine, warm_iterations, expected in cases:
        t = TrainingSettings(
            factors=8, iterations=6, refit_warm_iterations=warm_iterations, num_threads=1, engine=engine
        )
        warm = stages.warm_start(candidate, params, t)
        assert (warm is None) == (warm_iterations == 0 or engine == "spark")
        final = stages.refit(prepared, params, t, Steps(None), None, warm)
        assert final.fit.model.iterations == expected
    # warm from the candidate of the same events: two iterations land where the candidate is
    t = TrainingSettings(factors=8, iterations=6, refit_warm_iterations=2, num_threads=1)
    warm = stages.warm_start(candidate, params, t)
    final = stages.refit(prepared, params, t, Steps(None), None, warm)
    cosine = np.sum(final.item_factors * candidate.item_factors) / (
        np.linalg.norm(final.item_factors) * np.linalg.norm(candidate.item_factors)
    )
    assert cosine > 0.9


def test_fresh_content_gets_mean_of_featured_products_at_trained_content_norm() -> None:
    # rows: 0,1,2 products, 3 trained content, 4 fresh content featuring 0 and 1, 5 fresh featuring nothing
    factors = np.array(
        [[1, 0], [0, 1], [5, 5], [0, 4], [0, 0], [0, 0]],
        dtype=np.float32,
    )
    kind = np.array([1, 1, 1, 2, 2, 2], dtype=np.uint8)
    trained = np.array([True, True, True, True, False, False])
    featured = sp.csr_matrix(([1.0, 1.0], ([4, 4], [0, 1])), shape=(6, 6))
    out, filled = coldstart.fill_fresh_content(factors, trained, kind, featured)
    assert filled == 1
    np.testing.assert_allclose(out[4], np.array([1, 1]) / np.sqrt(2) * 4.0, rtol=1e-6)
    assert not out[5].any()
    np.testing.assert_array_equal(out[:4], factors[:4])


def test_fresh_content_ignores_untrained_featured_products() -> None:
    factors = np.array([[2, 0], [0, 0], [0, 3], [0, 0]], dtype=np.float32)
    kind = np.array([1, 1, 2, 2], dtype=np.uint8)
    trained = np.array([True, False, True, False])
    featured = sp.csr_matrix(([1.0, 1.0], ([3, 3], [0, 1])), shape=(4, 4))
    out, _ = coldstart.fill_fresh_content(factors, trained, kind, featured)
    np.testing.assert_allclose(out[3], [3.0, 0.0], rtol=1e-6)  # direction of p0 only, norm of c2


def test_evaluate_perfect_model_beats_popularity() -> None:
    # member u likes exactly item u (products 0..4) and content 5+u%2; factors encode that exactly
    n = 5
    kind = np.array([1] * n + [2, 2], dtype=np.uint8)
    items = np.eye(7, dtype=np.float32)
    users = np.zeros((n, 7), dtype=np.float32)
    users[np.arange(n), np.arange(n)] = 1.0
    users[np.arange(n), 5 + np.arange(n) % 2] = 0.5
    test = sp.csr_matrix(
        (np.ones(2 * n), (np.r_[np.arange(n), np.arange(n)], np.r_[np.arange(n), 5 + np.arange(n) % 2])),
        shape=(n, 7),
    )
    train = sp.csr_matrix((n, 7), dtype=np.float32)
    popularity = np.array([0, 0, 0, 0, 9, 1, 0], dtype=np.float32)
    metrics = evaluate.evaluate(users, items, train, test, kind, popularity, ks=(1, 2))
    assert metrics["product.ndcg_at_1"] == pytest.approx(1.0)
    assert metrics["product.precision_at_1"] == pytest.approx(1.0)
    assert metrics["product.recall_at_1"] == pytest.approx(1.0)
    assert metrics["product.hit_rate_at_1"] == pytest.approx(1.0)
    assert metrics["product.coverage_at_1"] == pytest.approx(1.0)
    assert metrics["baseline.product.hit_rate_at_1"] == pytest.approx(1 / n)
    assert metrics["baseline.product.coverage_at_1"] == pytest.approx(1 / n)
    assert metrics["content.ndcg_at_1"] == pytest.approx(1.0)
    assert metrics["baseline.content.hit_rate_at_1"] == pytest.approx(3 / 5)  # members 0, 2, 4 like c5
    assert metrics["all.members"] == n
    # items a member already has are filtered: with item u seen, the product hit is impossible
    seen = sp.csr_matrix((np.ones(n), (np.arange(n), np.arange(n))), shape=(n, 7))
    filtered = evaluate.evaluate(users, items, seen, test, kind, None, ks=(1,))
    assert filtered["product.hit_rate_at_1"] == 0.0
    assert not any(k.startswith("baseline.") for k in filtered)


def test_ann_reaches_target_recall_and_small_kinds_are_exact() -> None:
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(600, 16)).astype(np.float32)
    kind = np.array([1] * 500 + [2] * 100, dtype=np.uint8)
    queries = rng.normal(size=(50, 16)).astype(np.float32)
    indexes, info = ann.build_indexes(
        vectors, kind, queries, exact_below=200, m=16, ef_construction=64, ef_search=16, k=10
    )
    assert info["product"]["type"] == "ivf_flat_l2_augmented" and info["product"]["recall_at_k"] >= 0.95
    assert info["content"]["type"] == "flat_ip"
    _, ids = indexes["content"].search(queries[:3], 5)
    assert (ids >= 500).all()  # ids are item rows, not positions in the kind
    _, ids = indexes["product"].search(queries[:3], 5)
    assert (ids < 500).all()


def test_ann_tuning_finds_the_smallest_value_that_meets_the_target() -> None:
    state = {"v": 0}
    truth = np.arange(100)[None, :]

    def set_param(v: int) -> None:
        state["v"] = v

    def search() -> np.ndarray:  # recall grows with the value: min(1, v / 80)
        good = min(100, int(100 * state["v"] / 80))
        return np.concatenate([np.arange(good), np.arange(1000, 1100 - good)])[None, :]

    value, recall = ann._tune(search, set_param, 8, 1024, truth, 0.95, "nprobe", 100)
    # doubling alone would stop at 128; the smallest value meeting 0.95 is 76
    assert recall >= 0.95 and 76 <= value <= 80
    assert state["v"] == value  # the index is left at the chosen value (it is saved with it)
    value, recall = ann._tune(search, set_param, 8, 40, truth, 0.95, "nprobe", 100)
    assert value == 40 and recall == pytest.approx(0.5)  # capped: the best it can do


@pytest.mark.parametrize(
    ("method", "index_type"), [("ivf_mips", "ivf_flat_l2_augmented"), ("ivf", "ivf_flat_ip")]
)
def test_ann_index_recall_survives_a_round_trip_and_hnsw_stays_available(
    tmp_path: Path, method: str, index_type: str
) -> None:
    import faiss

    rng = np.random.default_rng(1)
    # ALS-like: item norms spread over orders of magnitude
    vectors = (rng.normal(size=(3000, 16)) * rng.lognormal(0, 1.0, size=(3000, 1))).astype(np.float32)
    queries = rng.normal(size=(200, 16)).astype(np.float32)
    kind = np.ones(3000, dtype=np.uint8)
    indexes, info = ann.build_indexes(
        vectors, kind, queries, exact_below=100, m=16, ef_construction=64, ef_search=16, k=20, method=method
    )
    assert info["product"]["type"] == index_type
    assert info["product"]["recall_at_k"] >= 0.95 and info["product"]["nprobe"] <= info["product"]["nlist"]
    faiss.write_index(indexes["product"], str(tmp_path / "ivf.faiss"))
    loaded = faiss.read_index(str(tmp_path / "ivf.faiss"))  # serving reads it like this
    exact = np.argsort(-(queries @ vectors.T), axis=1)[:, :20]
    _, found = loaded.search(queries, 20)
    hits = sum(np.intersect1d(f, e).size for f, e in zip(found, exact, strict=True))
    assert hits / exact.size == pytest.approx(info["product"]["recall_at_k"])  # nprobe was saved
    _, hinfo = ann.build_indexes(
        vectors, kind, queries, exact_below=100, m=16, ef_construction=64, ef_search=16, k=20, method="hnsw"
    )
    assert hinfo["product"]["type"] == "hnsw_ip" and "ef_search" in hinfo["product"]


def _int(cell: object) -> int:
    """A table cell that holds an integer, as int (pandas types ``.loc[row, col]`` as any scalar)."""
    assert isinstance(cell, int | np.integer), cell
    return int(cell)


def test_segments_on_hand_made_members() -> None:
    t = TrainingSettings(new_member_days=30, at_risk_days=60, dormant_days=120, churned_days=240)
    ds = _dataset(
        [
            ("active", "p1", "purchase", 5),
            ("active", "p2", "purchase", 10),
            ("risk", "p1", "purchase", 90),
            ("dormant", "p1", "purchase", 200),
            ("gone", "p1", "purchase", 300),
            ("browser", "p2", "view", 100),  # never bought: judged by last activity
            ("newbuyer", "p3", "purchase", 2),
        ],
        members=[
            ("active", 400),
            ("risk", 400),
            ("dormant", 400),
            ("gone", 400),
            ("browser", 400),
            ("newbuyer", 5),
            ("fresh", 3),  # no events, registered recently
            ("silent", 150),  # no events, registered long ago
        ],
    )
    p = prepare.prepare(ds)
    table, stage = segments.member_segments(p, t)
    got = dict(zip(table["member_id"], table["lifecycle"], strict=True))
    assert got == {
        "active": "active",
        "risk": "at_risk",
        "dormant": "dormant",
        "gone": "churned",
        "browser": "at_risk",
        "newbuyer": "active",
        "fresh": "new",
        "silent": "dormant",
    }
    assert [LIFECYCLE_STAGES[s] for s in stage] == table["lifecycle"].tolist()
    row = table.set_index("member_id")
    assert row.loc["active", "frequency"] == 2 and row.loc["active", "monetary"] == pytest.approx(20.0)
    assert row.loc["browser", "f"] == 0 and row.loc["browser", "m"] == 0
    assert row.loc["active", "f"] == 5  # the most frequent buyer is in the top quintile
    assert row.loc["newbuyer", "r"] == 5 and row.loc["gone", "r"] == 1
    r, m = _int(row.loc["active", "r"]), _int(row.loc["active", "m"])
    assert _int(row.loc["active", "rfm_score"]) == r * 100 + 50 + m
    # Seen as of 4 days before the cutoff, "fresh" (registered 3 days before it) did not exist
    # yet: new, with recency 0 rather than a negative age.
    earlier, _ = segments.member_segments(p, t, as_of=int(p.cutoff) - 4 * 86400)
    before = earlier.set_index("member_id")
    assert (earlier["recency_days"] >= 0).all()
    assert before.loc["fresh", "lifecycle"] == "new" and before.loc["fresh", "recency_days"] == 0


def test_an_unknown_registration_date_is_the_first_event_not_today() -> None:
    """Without a members file, a member who never bought is new only if first seen within
    ``new_member_days``; one first seen long ago is judged by recency like everyone else."""
    t = TrainingSettings(new_member_days=30, at_risk_days=60, dormant_days=120, churned_days=240)
    ds = _dataset(
        [
            ("lately", "p1", "view", 3),
            ("longago", "p1", "view", 400),
            ("longago", "p2", "view", 200),
            ("buyer", "p3", "purchase", 10),
        ]
    )
    table, _ = segments.member_segments(prepare.prepare(ds), t)
    got = dict(zip(table["member_id"], table["lifecycle"], strict=True))
    assert got == {"lately": "new", "longago": "dormant", "buyer": "active"}


def test_data_whose_every_event_type_weighs_zero_is_a_named_error() -> None:
    from recsvc.errors import ConfigError
    from training import stages
    from training.progress import Steps

    p = prepare.prepare(_dataset([("a", "p1", "view", 30), ("a", "p2", "view", 3), ("b", "p1", "view", 2)]))
    positive = weight_table({"purchase": 1.0, "view": 0.0}) > 0
    with pytest.raises(ConfigError, match=r"every event type in the data \(view\) weighs 0"):
        stages.holdout(p, TrainingSettings(), positive, Steps(None))


def test_monetary_is_finite_even_from_huge_amounts() -> None:
    # Three purchases of 1e308 once made monetary = inf (float32 cast and sum); prepare bounds each
    # amount to recsvc.bounds.MAX_AMOUNT, and the sums are float64.
    ds = _dataset([("m1", "p1", "purchase", 1), ("m1", "p2", "purchase", 2), ("m1", "p3", "purchase", 3)])
    ds.events["amount"] = [1e308, 1e308, np.inf]
    p = prepare.prepare(ds)
    assert np.isfinite(p.events.amount).all() and p.events.amount.max() == pytest.approx(1e8)
    table, _ = segments.member_segments(p, TrainingSettings())
    monetary = float(table.set_index("member_id")["monetary"].to_numpy()[0])
    assert np.isfinite(monetary) and monetary == pytest.approx(2e8)  # two capped at 1e8; inf counts as 0


def test_non_finite_monetary_is_a_named_error() -> None:
    p = prepare.prepare(_dataset([("m1", "p1", "purchase", 1)]))
    p.events.amount[:] = np.inf  # what prepare now prevents
    with pytest.raises(DataContractError, match="monetary is not finite") as err:
        segments.member_segments(p, TrainingSettings())
    assert err.value.reason == "NON_FINITE_SEGMENT"


def test_popularity_tables_have_all_fallbacks_and_ranks() -> None:
    t = TrainingSettings(popular_per_table=10)
    ds = make_dataset(members=60, products=20, content=6, events_per_member=10, seed=3)
    p = prepare.prepare(ds)
    _, stage = segments.member_segments(p, t)
    table = segments.popularity_tables(p, stage, t, window_days=60)
    assert set(table.columns) == {"segment", "channel", "kind", "rank", "item_id", "score"}
    overall = table[(table.segment == ALL) & (table.channel == ALL) & (table.kind == "product")]
    assert overall["rank"].tolist() == list(range(len(overall)))
    assert overall["score"].is_monotonic_decreasing
    assert set(overall["item_id"]) <= {f"p{i:05d}" for i in range(20)}
    assert (table.groupby(["segment", "channel", "kind"]).size() <= 10).all()
    assert {"app", ALL} <= set(table.channel) and ALL in set(table.segment)


def test_gate_decisions() -> None:
    first = gate.decide(0.1, None, tolerance=0.02, force=False)
    assert first.promote and first.method == "first_model"
    ok = gate.decide(0.29, 0.30, tolerance=0.02, force=False, method="champion_refit", champion_version="3")
    assert ok.promote and not ok.forced and "passed" in ok.reason
    bad = gate.decide(0.20, 0.30, tolerance=0.02, force=False, method="champion_refit", champion_version="3")
    assert not bad.promote and "refused" in bad.reason and "0.3000" in bad.reason
    forced = gate.decide(0.20, 0.30, tolerance=0.02, force=True)
    assert forced.promote and forced.forced and "FORCED" in forced.reason
    stuck = gate.decide(
        0.9, None, tolerance=0.02, force=False, method=gate.UNCOMPARABLE, champion_version="2"
    )
    assert not stuck.promote and "v2" in stuck.reason
    assert gate.decide(0.9, None, tolerance=0.02, force=True, method=gate.UNCOMPARABLE).forced


def test_ndcg_and_map_agree_with_implicits_ranking_metrics() -> None:
    from implicit.evaluation import ranking_metrics_at_k

    from training.fit import model_from_factors

    rng = np.random.default_rng(7)
    users, items = 300, 80
    u = rng.normal(size=(users, 8)).astype(np.float32)
    v = rng.normal(size=(items, 8)).astype(np.float32)
    train = sp.random(users, items, density=0.05, format="csr", dtype=np.float32, random_state=1)
    test = sp.random(users, items, density=0.04, format="csr", dtype=np.float32, random_state=2)
    test.data[:] = 1.0
    test = sp.csr_matrix(test - test.multiply(train > 0))
    test.eliminate_zeros()
    ours = evaluate.evaluate(u, v, train, test, np.ones(items, dtype=np.uint8), None, ks=(5, 10))
    keep = np.flatnonzero(np.diff(test.indptr) > 0)
    model = model_from_factors(u[keep], v)
    for k in (5, 10):
        ref = ranking_metrics_at_k(model, train[keep], test[keep], K=k, show_progress=False)
        assert ours[f"all.ndcg_at_{k}"] == pytest.approx(ref["ndcg"], rel=1e-9)
        assert ours[f"all.map_at_{k}"] == pytest.approx(ref["map"], rel=1e-9)
    # per member, for paired comparisons: the same members, whose mean is the metric
    per_member = evaluate.member_ndcg(u, v, train, test, k=10)
    assert per_member.shape == (keep.size,)
    assert per_member.mean() == pytest.approx(ours["all.ndcg_at_10"], rel=1e-12)


def test_reindex_rebuilds_the_indexes_of_a_copy(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from bundle_factory import make_bundle

    from recsvc.bundle import load_bundle
    from recsvc.settings import load_settings
    from training.reindex import main, reindex

    src = make_bundle(tmp_path / "src").path
    t = load_settings(overrides={"training": {"exact_index_below": 10}}).training
    info = reindex(src, tmp_path / "dst", t)
    copy = load_bundle(tmp_path / "dst")
    assert copy.manifest.bundle_id == load_bundle(src).manifest.bundle_id + "-reindexed"
    assert copy.manifest.index == info and set(copy.indexes) == {"product", "content"}
    assert main([str(src), str(tmp_path / "dst")]) == 2  # never overwrites


def test_a_decay_that_leaves_no_interaction_is_refused_by_name() -> None:
    """Regression: with every weight decayed below a float, the fit had nothing, the refit
    warm-started from zero vectors, and training shipped an "ALS" bundle serving popularity."""
    from recsvc.errors import DataContractError
    from training.factors import train_factors

    prepared = prepare.prepare(make_dataset(members=100, seed=3))
    params = AlsParams.from_settings(TrainingSettings(factors=8, iterations=3, half_life_days=1))
    later = prepared.cutoff + 400 * 86_400  # every event 300+ half-lives old
    refused = r"recency decay leaves no training interaction.*half_life_days = 1"
    with pytest.raises(DataContractError, match=refused):
        train_factors(prepared, prepared.events, later, params, num_threads=1)
    no_decay = AlsParams.from_settings(TrainingSettings(factors=8, iterations=3, half_life_days=0))
    assert train_factors(prepared, prepared.events, later, no_decay, num_threads=1).matrix.nnz


def test_a_vector_that_is_a_rounding_residue_counts_as_untrained(monkeypatch: pytest.MonkeyPatch) -> None:
    """ALS can fit a member whose every item nobody else had to ~1e-12 (an isolated block that
    the global regularization shrinks). Counted as trained, that served a "personalized" list of
    ties and put members whose scores all tie into the index's recall sample."""
    from training import factors

    prepared = prepare.prepare(make_dataset(members=200, seed=4))
    params = AlsParams.from_settings(TrainingSettings(factors=8, iterations=3, half_life_days=0))
    real_fit = factors.fit_als

    def residue_fit(*args: object, **kw: object) -> object:
        fit = real_fit(*args, **kw)  # type: ignore[arg-type]
        fit.user_factors[5] *= 1e-12  # as the isolated block's fixed point leaves it
        fit.item_factors[7] *= 1e-12
        return fit

    monkeypatch.setattr(factors, "fit_als", residue_fit)
    trained = factors.train_factors(prepared, prepared.events, prepared.cutoff, params, num_threads=1)
    assert not trained.member_factors[5].any() and not trained.item_factors[7].any()
    member_norms = np.linalg.norm(trained.member_factors, axis=1)
    trained_rows = np.diff(trained.matrix.indptr) > 0
    assert (member_norms[trained_rows] > 0).sum() == trained_rows.sum() - 1  # the others keep theirs
