"""Who a new product's starting vector reaches: for a sample of (category, brand) groups of a
trained bundle, spread over group sizes (trained products) and interactions, each candidate rule
gives a hypothetical new product of the group a vector, and exact scoring (member factors · item
factors, products only) says for how many members it would enter the top 10 / top 20:

- buyers: members with an interaction (any event, the bundle's history) with a product of the
  category; the share of them with the new product in their top 20 (and top 10);
- non-buyers: the other members with a vector; the share with it in their top 20.

The competitors are the bundle's products with a vector and in stock, less the items the member
has interacted with (as the served list leaves out seen and purchased items). The served list's
diversity (MMR) and per-category cap are not applied: this is the score ranking they start from.
Shares are averaged over the groups of a bucket. docs/operations.md, "New items", uses it.

    python -m bench.experiments.new_product_reach BUNDLE [--members 20000] [--per-bucket 8]
        [--seed 0] [--json]
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from recsvc.bundle import KIND_PRODUCT

SIZES = ((1, 4), (5, 19), (20, 1 << 30))  # trained products of the group
TOP = 5


@dataclass
class Bundle:
    f: np.ndarray  # item factors, float64
    norms: np.ndarray
    cat: np.ndarray
    brand: np.ndarray
    trained: np.ndarray  # products with a vector
    m: np.ndarray  # sampled members' factors
    thr10: np.ndarray  # each sampled member's 10th / 20th best competitor score
    thr20: np.ndarray
    buys: np.ndarray  # [sampled members × categories] bool
    seen: sp.csr_matrix  # [sampled members × items]: 1 where the member interacted with the item
    solve_m: np.ndarray  # all members' factors (for the members' solve)
    buys_all: np.ndarray  # [members × categories] bool
    regularization: float


def _top(b: Bundle, rows: np.ndarray, top: int = TOP) -> tuple[np.ndarray, float]:
    """The unit mean direction of the ``top`` longest vectors of ``rows`` and their mean length."""
    best = rows[np.argsort(-b.norms[rows], kind="stable")[:top]]
    mean = b.f[best].mean(axis=0)
    return mean / max(float(np.linalg.norm(mean)), 1e-12), float(b.norms[best].mean())


def _unit(v: np.ndarray) -> np.ndarray:
    return v / max(float(np.linalg.norm(v)), 1e-12)


def candidates(
    b: Bundle, served: Callable[[int, int], np.ndarray | None]
) -> dict[str, Callable[..., np.ndarray]]:
    """Each rule: (category, brand) -> the new product's vector."""

    def rows_of(c: int, br: int | None) -> np.ndarray:
        keep = b.trained & (b.cat == c)
        if br is not None:
            keep &= b.brand == br
        return np.flatnonzero(keep)

    def old(c: int, br: int) -> np.ndarray:
        d, n = _top(b, rows_of(c, br))
        return d * n

    def category(c: int, br: int) -> np.ndarray:
        d, n = _top(b, rows_of(c, None))
        return d * n

    def category20(c: int, br: int) -> np.ndarray:
        d, n = _top(b, rows_of(c, None), 20)
        return d * n

    def cat_if_small(c: int, br: int) -> np.ndarray:
        g = rows_of(c, br)
        return old(c, br) if g.size >= TOP else category(c, br)

    def cat_if_weak(c: int, br: int) -> np.ndarray:
        (_, ng), (_, nc) = _top(b, rows_of(c, br)), _top(b, rows_of(c, None))
        return old(c, br) if rows_of(c, br).size >= TOP and ng >= nc else category(c, br)

    def mix(c: int, br: int) -> np.ndarray:
        (dg, ng), (dc, nc) = _top(b, rows_of(c, br)), _top(b, rows_of(c, None))
        return _unit(dg + dc) * max(ng, nc)

    def mix_by_length(c: int, br: int) -> np.ndarray:
        # the brand's direction weighs as much as its best sellers' length against the category's
        (dg, ng), (dc, nc) = _top(b, rows_of(c, br)), _top(b, rows_of(c, None))
        w = min(ng / nc, 1.0)
        return _unit(w * dg + dc) * nc

    def brand_dir_cat_len(c: int, br: int) -> np.ndarray:
        (dg, _), (_, nc) = _top(b, rows_of(c, br)), _top(b, rows_of(c, None))
        return dg * nc

    def best_seller(c: int, br: int) -> np.ndarray:
        g = rows_of(c, br)
        return b.f[g[np.argmax(b.norms[g])]].copy()

    def best_seller_cat_len(c: int, br: int) -> np.ndarray:
        g = rows_of(c, br)
        _, nc = _top(b, rows_of(c, None))
        return _unit(b.f[g[np.argmax(b.norms[g])]]) * nc

    def cat_norm_weighted(c: int, br: int) -> np.ndarray:
        # every trained product of the category, each weighing as its length (interactions)
        rows = rows_of(c, None)
        _, nc = _top(b, rows)
        return _unit((b.f[rows] * b.norms[rows, None]).sum(axis=0)) * nc

    def mix_norm_weighted_by_length(c: int, br: int) -> np.ndarray:
        # the category's norm-weighted direction plus the brand's best sellers' direction, the
        # latter weighing as the brand's best sellers' length against the category's
        rows = rows_of(c, None)
        (dg, ng), (_, nc) = _top(b, rows_of(c, br)), _top(b, rows)
        dc = _unit((b.f[rows] * b.norms[rows, None]).sum(axis=0))
        return _unit(min(ng / nc, 1.0) * dg + dc) * nc

    def cat_norm2_weighted(c: int, br: int) -> np.ndarray:
        rows = rows_of(c, None)
        _, nc = _top(b, rows)
        return _unit((b.f[rows] * b.norms[rows, None] ** 2).sum(axis=0)) * nc

    def cat_norm_weighted_brand(times: float) -> Callable[[int, int], np.ndarray]:
        # the category's norm-weighted direction, the brand's own products counting ``times``
        def rule(c: int, br: int) -> np.ndarray:
            rows = rows_of(c, None)
            _, nc = _top(b, rows)
            w = b.norms[rows] * np.where(b.brand[rows] == br, times, 1.0)
            return _unit((b.f[rows] * w[:, None]).sum(axis=0)) * nc

        return rule

    def cat_norm_weighted_top20_len(c: int, br: int) -> np.ndarray:
        rows = rows_of(c, None)
        _, n20 = _top(b, rows, 20)
        return _unit((b.f[rows] * b.norms[rows, None]).sum(axis=0)) * n20

    def members_solve(c: int, br: int) -> np.ndarray:
        # reference, not item-side: the least-squares item vector for "every buyer of the
        # category interacted with it", at the category's best sellers' length
        m = b.solve_m
        p = b.buys_all[:, c].astype(np.float64)
        a = m.T @ m + b.regularization * np.eye(m.shape[1])
        _, nc = _top(b, rows_of(c, None))
        return _unit(np.linalg.solve(a, m.T @ p)) * nc

    def served_rule(c: int, br: int) -> np.ndarray:
        v = served(c, br)
        return np.zeros(b.f.shape[1]) if v is None else np.asarray(v, dtype=np.float64)

    return {
        "old: brand top5": old,
        "served (GroupMeans)": served_rule,
        "category top5": category,
        "category top20": category20,
        "category if brand <5": cat_if_small,
        "category if brand <5 or weak": cat_if_weak,
        "mix brand+category": mix,
        "mix by length": mix_by_length,
        "brand dir, category len": brand_dir_cat_len,
        "best seller": best_seller,
        "best seller, category len": best_seller_cat_len,
        "category norm-weighted": cat_norm_weighted,
        "category norm²-weighted": cat_norm2_weighted,
        "mix norm-weighted by length": mix_norm_weighted_by_length,
        "cat norm-weighted, brand x2": cat_norm_weighted_brand(2.0),
        "cat norm-weighted, brand x4": cat_norm_weighted_brand(4.0),
        "cat norm-weighted, top20 len": cat_norm_weighted_top20_len,
        "members' solve (ref)": members_solve,
    }


def load(
    path: Path, n_members: int, seed: int
) -> tuple[Bundle, Callable[[int, int], np.ndarray | None], dict]:
    from recsvc.catalog.view import GroupMeans
    from recsvc.engine.served_model import ServedModel

    model = ServedModel.load(path, version="b", source_uri=str(path))
    f = np.asarray(model.item_factors, dtype=np.float64)
    norms = np.linalg.norm(f, axis=1)
    kind = np.asarray(model.item_kind)
    cat = np.asarray(model.item_category, dtype=np.int64)
    brand = np.asarray(model.item_brand, dtype=np.int64)
    product = kind == KIND_PRODUCT
    trained = product & (norms > 0)
    competitors = np.flatnonzero(trained & np.asarray(model.item_in_stock, dtype=bool))
    mf = np.asarray(model.member_factors, dtype=np.float64)
    indptr, indices = np.asarray(model.history_indptr), np.asarray(model.history_indices)
    n_cat = int(cat.max()) + 1
    # members × categories: any interaction with a product of the category
    owner = np.repeat(np.arange(mf.shape[0]), np.diff(indptr))
    hit = product[indices]
    buys_all = np.zeros((mf.shape[0], n_cat), dtype=bool)
    buys_all[owner[hit], cat[indices[hit]]] = True
    with_vector = np.flatnonzero(np.abs(mf).sum(axis=1) > 0)
    rng = np.random.default_rng(seed)
    sample = np.sort(rng.choice(with_vector, size=min(n_members, with_vector.size), replace=False))
    thr10 = np.empty(sample.size)
    thr20 = np.empty(sample.size)
    col = np.full(f.shape[0], -1, dtype=np.int64)
    col[competitors] = np.arange(competitors.size)
    fc = f[competitors].T
    for lo in range(0, sample.size, 2000):
        rows = sample[lo : lo + 2000]
        s = mf[rows] @ fc
        for i, r in enumerate(rows.tolist()):
            seen = col[indices[indptr[r] : indptr[r + 1]]]
            s[i, seen[seen >= 0]] = -np.inf
        part = -np.partition(-s, (9, 19), axis=1)
        thr10[lo : lo + rows.size], thr20[lo : lo + rows.size] = part[:, 9], part[:, 19]
    means = GroupMeans.of_model(model)

    def served(c: int, br: int) -> np.ndarray | None:
        return means.vector(KIND_PRODUCT, c, br)

    data = np.ones(indices.shape[0], dtype=np.float32)
    seen = sp.csr_matrix((data, indices, indptr), shape=(mf.shape[0], f.shape[0]))[sample]
    b = Bundle(
        f, norms, cat, brand, trained, mf[sample], thr10, thr20, buys_all[sample], seen, mf, buys_all,
        float(model.regularization),
    )  # fmt: skip
    # per (category, brand) group: trained products, interactions with its products
    inter = np.bincount(indices, minlength=f.shape[0])
    info = {"categories": list(model.categories), "interactions": inter}
    return b, served, info


def _at_others(
    v: np.ndarray, s: np.ndarray, thr: np.ndarray, other: np.ndarray, share: float
) -> tuple[np.ndarray, np.ndarray]:
    """``v`` rescaled so that ``share`` of the non-buyers (their thresholds ``thr``) rank it in
    their top 20: the scale is the non-buyers' threshold / score ratio at that quantile."""
    so = s[other]
    ratio = np.where(so > 0, thr / np.where(so > 0, so, 1.0), np.inf)
    k = int(np.floor(share * ratio.shape[0]))
    scale = float(np.partition(ratio, k)[k]) if k < ratio.shape[0] else float(ratio.max())
    scale = scale if np.isfinite(scale) else float(ratio[np.isfinite(ratio)].max(initial=1.0))
    return v * scale, s * scale


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--members", type=int, default=20_000, help="members sampled (with a vector)")
    parser.add_argument("--per-bucket", type=int, default=8, help="groups sampled per bucket")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="one JSON line per group and rule")
    parser.add_argument(
        "--at-others",
        type=float,
        default=None,
        help="rescale each vector so that this share of non-buyers has it in their top 20: compares "
        "directions alone",
    )
    parser.add_argument("--rules", default="", help="rule names to keep, separated by ; (default all)")
    args = parser.parse_args()
    b, served, info = load(args.bundle, args.members, args.seed)
    rules = candidates(b, served)
    if args.rules:
        keep = {r.strip() for r in args.rules.split(";")}
        rules = {k: v for k, v in rules.items() if k in keep}
    pairs = np.unique(np.stack([b.cat[b.trained], b.brand[b.trained]], axis=1), axis=0)
    size = np.array([int((b.trained & (b.cat == c) & (b.brand == br)).sum()) for c, br in pairs])
    inter = np.array(
        [int(info["interactions"][b.trained & (b.cat == c) & (b.brand == br)].sum()) for c, br in pairs]
    )
    median = float(np.median(inter))
    rng = np.random.default_rng(args.seed)
    picked: list[tuple[str, int]] = []
    for lo, hi in SIZES:
        for few in (True, False):
            label = f"{lo}-{hi} trained, " if hi < 1 << 29 else f"{lo}+ trained, "
            label += f"{'few' if few else 'many'} interactions"
            idx = np.flatnonzero((size >= lo) & (size <= hi) & ((inter < median) == few))
            if idx.size:
                chosen = rng.choice(idx, size=min(args.per_bucket, idx.size), replace=False)
                picked += [(label, int(i)) for i in sorted(chosen.tolist())]
    results: dict[tuple[str, str], list[tuple[float, float, float, float]]] = {}
    for label, i in picked:
        c, br = int(pairs[i][0]), int(pairs[i][1])
        buyer = b.buys[:, c]
        in_group = ((b.cat == c) & (b.brand == br)).astype(np.float32)
        brand_buyer = np.asarray(b.seen @ in_group).ravel() > 0
        for name, rule in rules.items():
            v = rule(c, br)
            s = b.m @ v
            if args.at_others is not None:
                v, s = _at_others(v, s, b.thr20[~buyer], ~buyer, args.at_others)
            in20, in10 = s > b.thr20, s > b.thr10
            row = (
                float(in20[buyer].mean()) if buyer.any() else 0.0,
                float(in10[buyer].mean()) if buyer.any() else 0.0,
                float(in20[~buyer].mean()) if (~buyer).any() else 0.0,
                float(in20[brand_buyer].mean()) if brand_buyer.any() else 0.0,
            )
            for key in ((label, name), ("all groups", name)):
                results.setdefault(key, []).append(row)
            if args.json:
                print(json.dumps({
                    "bucket": label, "category": info["categories"][c], "brand": br, "trained": int(size[i]),
                    "interactions": int(inter[i]), "buyers": int(buyer.sum()), "rule": name,
                    "norm": round(float(np.linalg.norm(v)), 4), "buyers_top20": round(row[0], 4),
                    "buyers_top10": round(row[1], 4), "non_buyers_top20": round(row[2], 4),
                    "brand_buyers": int(brand_buyer.sum()), "brand_buyers_top20": round(row[3], 4),
                }))  # fmt: skip
    if args.json:
        return
    print(f"bundle {args.bundle}: {b.m.shape[0]:,} members sampled, {len(pairs)} groups "
          f"(median {median:.0f} interactions), {len(picked)} sampled; share of members with the new "
          f"product in their top k, mean over the bucket's groups")  # fmt: skip
    buckets = list(dict.fromkeys(label for label, _ in results))
    for bucket in [*(x for x in buckets if x != "all groups"), "all groups"]:
        n = len(results[(bucket, next(iter(rules)))])
        print(f"\n{bucket} ({n} groups)")
        print(f"  {'rule':<30} {'buyers@20':>10} {'buyers@10':>10} {'others@20':>10} {'brand@20':>9}")
        for name in rules:
            m = np.array(results[(bucket, name)]).mean(axis=0)
            print(f"  {name:<30} {m[0]:>10.3f} {m[1]:>10.3f} {m[2]:>10.3f} {m[3]:>9.3f}")


if __name__ == "__main__":
    main()
