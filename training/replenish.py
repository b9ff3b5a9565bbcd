"""Replenishment: learn how often items are bought again, and measure what reminding does.

Reads: purchase events (a split's training events, or every event up to the cutoff), item
categories, the replenishment settings.
Writes: a :class:`Learned` (per item the repeat-purchase interval in days, 0 = not repurchased;
a table per category), the matrix of each member's last purchase time per item (the bundle's
``purchased_last_ts``), and holdout metrics with and without replenishment.

Intervals are the gaps between a member's consecutive purchases of the same item, on different
days (same-day rows are one shopping trip). A category is repurchased when it has at least
``replenish_min_repeats`` such gaps and at least ``replenish_min_share`` of its (member, item)
purchase pairs were bought again; its interval is the median gap. A product with at least
``replenish_min_item_repeats`` gaps of its own uses its own median. Durables (never bought
again) get 0 and never come back. The due rule is ``recsvc.engine.replenish.due_mask``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from recsvc.bundle import KIND_PRODUCT
from recsvc.engine.replenish import DAY_S, due_mask, splice
from recsvc.settings import ServingSettings, TrainingSettings
from training.fit import model_from_factors
from training.prepare import PURCHASE_CODE, EventArrays, Prepared


@dataclass
class Learned:
    item_interval_days: np.ndarray  # float32 [items]; 0 = not repurchased
    categories: list[dict[str, Any]] = field(default_factory=list)
    items_with_own_interval: int = 0

    @property
    def repurchased(self) -> dict[str, float]:
        """Repurchased category -> median interval in days (the manifest records it)."""
        return {c["category"]: c["interval_days"] for c in self.categories if c["repurchased"]}


def _purchases(events: EventArrays) -> pd.DataFrame:
    bought = events.etype == PURCHASE_CODE
    df = pd.DataFrame(
        {"m": events.member[bought], "i": events.item[bought], "day": events.ts[bought] // int(DAY_S)}
    )
    return df.drop_duplicates().sort_values(["m", "i", "day"], kind="stable")


def learn(
    events: EventArrays, item_category: np.ndarray, category_names: list[str], t: TrainingSettings
) -> Learned:
    n_items = item_category.shape[0]
    df = _purchases(events)
    same = (df["m"].to_numpy()[1:] == df["m"].to_numpy()[:-1]) & (
        df["i"].to_numpy()[1:] == df["i"].to_numpy()[:-1]
    )
    gaps = pd.DataFrame(
        {"i": df["i"].to_numpy()[1:][same], "days": np.diff(df["day"].to_numpy())[same].astype(np.float64)}
    )
    gaps["cat"] = item_category[gaps["i"].to_numpy()]
    pairs = df.drop_duplicates(["m", "i"])
    pair_cat = item_category[pairs["i"].to_numpy()]
    pairs_per_cat = np.bincount(pair_cat, minlength=len(category_names))
    again = pd.DataFrame({"m": df["m"].to_numpy()[1:][same], "i": df["i"].to_numpy()[1:][same]})
    again = again.drop_duplicates()
    again_per_cat = np.bincount(item_category[again["i"].to_numpy()], minlength=len(category_names))
    cat_median = gaps.groupby("cat")["days"].median()
    cat_count = gaps.groupby("cat")["days"].size()
    interval = np.zeros(n_items, dtype=np.float32)
    table = []
    cat_interval = np.zeros(len(category_names), dtype=np.float32)
    for code, name in enumerate(category_names):
        n_gaps = int(cat_count.get(code, 0))
        share = float(again_per_cat[code] / pairs_per_cat[code]) if pairs_per_cat[code] else 0.0
        yes = n_gaps >= t.replenish_min_repeats and share >= t.replenish_min_share
        days = float(cat_median.get(code, 0.0))
        if yes:
            cat_interval[code] = days
        table.append(
            {
                "category": name,
                "repeat_gaps": n_gaps,
                "repeat_share": round(share, 4),
                "interval_days": round(days, 1),
                "repurchased": bool(yes),
            }
        )
    interval[:] = cat_interval[item_category]
    per_item = gaps.groupby("i")["days"].agg(["median", "size"])
    own = per_item[per_item["size"] >= t.replenish_min_item_repeats]
    rows = own.index.to_numpy()
    ok = cat_interval[item_category[rows]] > 0  # an item of a durable category never comes back
    interval[rows[ok]] = own["median"].to_numpy()[ok]
    return Learned(interval, table, int(ok.sum()))


def last_purchase(events: EventArrays, shape: tuple[int, int]) -> sp.csr_matrix:
    """[members x items] float64 CSR: epoch seconds of the member's last purchase of the item.
    Its pattern is exactly ``training.confidence.purchased_matrix``'s (same events)."""
    bought = events.etype == PURCHASE_CODE
    df = pd.DataFrame({"m": events.member[bought], "i": events.item[bought], "ts": events.ts[bought]})
    last = df.groupby(["m", "i"], sort=True)["ts"].max()
    m = sp.csr_matrix(
        (
            last.to_numpy().astype(np.float64),
            (last.index.get_level_values(0).to_numpy(), last.index.get_level_values(1).to_numpy()),
        ),
        shape=shape,
    )
    m.sort_indices()
    return m


def evaluate(
    prepared: Prepared,
    train_events: EventArrays,
    start: int,
    end: int,
    member_factors: np.ndarray,
    item_factors: np.ndarray,
    seen: sp.csr_matrix,
    test: sp.csr_matrix,
    learned: Learned,
    serving: ServingSettings,
    *,
    max_members: int,
    seed: int,
) -> dict[str, float]:
    """Holdout metrics of product lists of ``serving.default_k`` without and with replenishment
    (the due items at the holdout start spliced in as serving does):
    ``replenish.{off,on}.repeat_recall_at_k`` = share of the holdout's repeat purchases of
    items in repurchased categories that the list held, over members who made one;
    ``replenish.{off,on}.ndcg_at_10`` = NDCG@10 on the usual holdout's products (new items
    only: what replenishment must not crowd out)."""
    shape = (len(prepared.members), len(prepared.items))
    k = serving.default_k
    is_product = prepared.item_kind == KIND_PRODUCT
    products = np.flatnonzero(is_product)
    last = last_purchase(train_events, shape)
    # the holdout's repeat purchases: items bought before the start, bought again in the window
    window = EventArrays(
        *(
            a[(prepared.events.ts >= start) & (prepared.events.ts <= end)]
            for a in (
                prepared.events.member,
                prepared.events.item,
                prepared.events.etype,
                prepared.events.ts,
                prepared.events.channel,
                prepared.events.amount,
            )
        )
    )
    again = last_purchase(window, shape)
    again.data[:] = 1.0
    before = last.copy()
    before.data[:] = 1.0
    repeat = again.multiply(before).tocsr()
    repeat = repeat.multiply(sp.csr_matrix(learned.item_interval_days[None, :] > 0)).tocsr()
    repeat.eliminate_zeros()
    test_members = np.flatnonzero(np.diff(test.indptr) > 0)
    repeat_members = np.flatnonzero(np.diff(repeat.indptr) > 0)
    users = np.union1d(test_members, repeat_members)
    users = users[np.abs(member_factors[users]).sum(axis=1) > 0]
    if users.size > max_members:
        users = np.sort(np.random.default_rng(seed).choice(users, size=max_members, replace=False))
    out: dict[str, list[float]] = {f"{mode}.{m}": [] for mode in ("off", "on") for m in ("recall", "ndcg")}
    if products.size == 0 or users.size == 0:  # a content-only catalog, or no member with a vector
        users = users[:0]
    else:
        model = model_from_factors(member_factors[users], item_factors[products])
        seen_p = sp.csr_matrix(seen[users][:, products])
        ids, scores = model.recommend(np.arange(users.size), seen_p, N=k, filter_already_liked_items=True)
        ids = np.asarray(ids).reshape(users.size, -1)
        scores = np.asarray(scores).reshape(users.size, -1)
    discount = 1.0 / np.log2(np.arange(2, 12))
    for j, u in enumerate(users.tolist()):
        lo, hi = last.indptr[u], last.indptr[u + 1]
        bought_rows, bought_ts = last.indices[lo:hi], last.data[lo:hi]
        due = due_mask(
            learned.item_interval_days[bought_rows],
            (start - bought_ts) / DAY_S,
            serving.replenish_early,
            serving.replenish_late,
        )
        due_rows = bought_rows[due]
        due_rows = due_rows[np.argsort(-(item_factors[due_rows] @ member_factors[u]), kind="stable")]
        due_rows = due_rows[: serving.replenish_max_items]
        base_rows = products[ids[j][ids[j] >= 0]]
        base_scores = scores[j][: base_rows.shape[0]]
        relevant = test.indices[test.indptr[u] : test.indptr[u + 1]]
        relevant = set(relevant[is_product[relevant]].tolist())
        repeats = set(repeat.indices[repeat.indptr[u] : repeat.indptr[u + 1]].tolist())
        for mode in ("off", "on"):
            rows = base_rows
            if mode == "on" and due_rows.shape[0]:
                rows, _, _ = splice(
                    base_rows, base_scores, due_rows, np.zeros(due_rows.shape[0]), k, serving.replenish_after
                )
            listed = rows.tolist()
            if repeats:
                out[f"{mode}.recall"].append(len(repeats.intersection(listed)) / len(repeats))
            if relevant:
                hits = np.array([r in relevant for r in listed[:10]], dtype=float)
                ideal = discount[: min(len(relevant), 10)].sum()
                out[f"{mode}.ndcg"].append(float((hits * discount[: hits.shape[0]]).sum() / ideal))
    metrics = {
        f"replenish.{mode}.repeat_recall_at_{k}": float(np.mean(out[f"{mode}.recall"]))
        if out[f"{mode}.recall"]
        else 0.0
        for mode in ("off", "on")
    }
    metrics |= {
        f"replenish.{mode}.ndcg_at_10": float(np.mean(out[f"{mode}.ndcg"])) if out[f"{mode}.ndcg"] else 0.0
        for mode in ("off", "on")
    }
    metrics["replenish.repeat_members"] = float(len(out["on.recall"]))
    return metrics
