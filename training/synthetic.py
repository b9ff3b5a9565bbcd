"""Small structured data sets in the loader's shape, for tests and quick experiments.

Reads: nothing. Writes: a :class:`SyntheticDataset` with the attributes of
``pipelines.ingest.Dataset`` (events, catalog, members, consent, quarantine, counts). Members
belong to taste groups that prefer a few categories, so a factor model has something real to
find and the popularity baseline has a known weakness. The real generator
(``recsvc data generate``) is for realistic data; this one is for answers known in advance.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

DAY = pd.Timedelta(days=1)


@dataclass
class SyntheticDataset:
    events: pd.DataFrame
    catalog: pd.DataFrame
    members: pd.DataFrame
    consent: pd.DataFrame = field(default_factory=pd.DataFrame)
    quarantine: pd.DataFrame = field(default_factory=lambda: pd.DataFrame({"reason": []}))
    counts: dict[str, Any] = field(default_factory=dict)


def make_dataset(
    members: int = 400,
    products: int = 120,
    content: int = 30,
    groups: int = 6,
    events_per_member: int = 30,
    days: int = 90,
    seed: int = 0,
    end: str = "2026-06-30T12:00:00Z",
) -> SyntheticDataset:
    rng = np.random.default_rng(seed)
    end_ts = pd.Timestamp(end)
    product_ids = np.array([f"p{i:05d}" for i in range(products)])
    content_ids = np.array([f"c{i:05d}" for i in range(content)])
    member_ids = np.array([f"m{i:06d}" for i in range(members)])
    product_group = np.arange(products) % groups
    content_group = np.arange(content) % groups
    featured = [
        "|".join(rng.choice(product_ids[product_group == content_group[i]], size=3, replace=False))
        for i in range(content)
    ]
    catalog = pd.DataFrame(
        {
            "item_id": np.concatenate([product_ids, content_ids]),
            "kind": ["product"] * products + ["content"] * content,
            "title": [f"item {i}" for i in range(products + content)],
            "category": [f"cat{g}" for g in product_group] + [f"cat{g}" for g in content_group],
            "brand": [f"brand{i % 7}" for i in range(products + content)],
            "price": np.round(rng.uniform(5, 200, products + content), 2),
            "in_stock": rng.random(products + content) > 0.05,
            "published_at": [end_ts - 400 * DAY] * products
            + [end_ts - int(d) * DAY for d in rng.integers(0, days, content)],
            "featured_item_ids": [None] * products + featured,
        }
    )
    member_group = rng.integers(0, groups, members)
    registered = [end_ts - int(d) * DAY for d in rng.integers(0, 2 * days, members)]
    members_df = pd.DataFrame(
        {
            "member_id": member_ids,
            "registered_at": pd.to_datetime(registered, utc=True),
            "tier": rng.choice(["basic", "silver", "gold"], members),
            "timezone": "Asia/Shanghai",
        }
    )
    n = members * events_per_member
    who = rng.integers(0, members, n)
    # 85% of interactions within the member's group, the rest with globally popular items
    in_group = rng.random(n) < 0.85
    is_content = rng.random(n) < 0.25
    popular_p = rng.zipf(1.5, n) % products
    popular_c = rng.zipf(1.5, n) % content
    g = member_group[who]
    per_group_p = products // groups
    per_group_c = max(content // groups, 1)
    local_p = (rng.zipf(1.3, n) % per_group_p) * groups + g
    local_c = (rng.zipf(1.3, n) % per_group_c) * groups + g
    local_c = np.minimum(local_c, content - 1)
    p_item = np.where(in_group, local_p, popular_p)
    c_item = np.where(in_group, local_c, popular_c)
    item = np.where(
        is_content, np.char.add("c", np.char.zfill(c_item.astype(str), 5)), product_ids[p_item % products]
    )
    etype = np.where(
        is_content,
        rng.choice(["content_view", "share", "favorite"], n, p=[0.85, 0.1, 0.05]),
        rng.choice(
            ["view", "click", "add_to_cart", "purchase", "favorite"], n, p=[0.45, 0.2, 0.13, 0.17, 0.05]
        ),
    )
    seconds = rng.uniform(0, days * 86400, n)
    ts = end_ts - pd.to_timedelta(seconds, unit="s")
    price = catalog.set_index("item_id")["price"]
    amount = np.where(etype == "purchase", price.reindex(item).to_numpy(), np.nan)
    events = pd.DataFrame(
        {
            "member_id": member_ids[who],
            "item_id": item,
            "event_type": etype,
            "ts": pd.to_datetime(ts, utc=True),
            "channel": rng.choice(["mini_program", "app", "wecom", "offline_store"], n),
            "quantity": np.where(etype == "purchase", 1, 0),
            "amount": amount,
        }
    ).sort_values("ts", ignore_index=True)
    # a few members who registered but never did anything
    return SyntheticDataset(
        events=events,
        catalog=catalog,
        members=members_df,
        counts={"events_read": n, "events_ok": n},
    )
