"""The generated catalog: taste groups, brands, products with long-tail popularity, and content
that features products.

Planted structure (recorded per item in the truth table):
- every product and content item belongs to one taste group; a group prefers three categories
  and owns its own brands, so "what a member likes" shows in category, brand and item;
- popularity is log-normal (a long tail: the top 10% of products draw about half the traffic);
- some categories are consumables with a repurchase cycle (tea, coffee, pet food, ...);
- content (articles, videos, live streams) features 1-4 products of its own group, and a tenth
  of it is published in the last week, so some has no interactions yet (cold start).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipelines.generate.params import GeneratorParams

DAY = 86_400


@dataclass(frozen=True)
class Category:
    name: str
    base_price: float
    cycle_days: int  # repurchase cycle for consumables; 0 = durable
    nouns: tuple[str, ...]
    sizes: tuple[str, ...] = ("",)


CATEGORIES = (
    Category(
        "tea",
        59,
        30,
        ("Oolong Tea", "Green Tea", "Jasmine Tea", "Pu-erh Cake", "Black Tea"),
        ("100g", "250g", "500g", "Gift Box"),
    ),
    Category(
        "coffee",
        79,
        30,
        ("Coffee Beans", "Drip Coffee", "Cold Brew", "Espresso Capsules"),
        ("250g", "500g", "1kg", "Box of 10"),
    ),
    Category(
        "snacks",
        25,
        14,
        ("Nut Mix", "Rice Crackers", "Dried Mango", "Seaweed Chips"),
        ("150g", "300g", "Family Pack"),
    ),
    Category(
        "skincare",
        189,
        45,
        ("Serum", "Face Cream", "Toner", "Sunscreen", "Cleanser"),
        ("30ml", "50ml", "100ml"),
    ),
    Category(
        "makeup", 129, 0, ("Lipstick", "Cushion Foundation", "Eyeliner", "Blush Palette"), ("", "Mini", "Duo")
    ),
    Category(
        "haircare", 69, 40, ("Shampoo", "Conditioner", "Hair Oil", "Scalp Tonic"), ("200ml", "400ml", "750ml")
    ),
    Category(
        "baby_care", 99, 21, ("Diapers", "Baby Wipes", "Baby Lotion", "Formula"), ("S", "M", "L", "Pack of 3")
    ),
    Category(
        "pet_food", 139, 30, ("Cat Food", "Dog Food", "Pet Treats", "Cat Litter"), ("1.5kg", "3kg", "7kg")
    ),
    Category(
        "supplements",
        159,
        30,
        ("Vitamin C", "Fish Oil", "Probiotics", "Collagen"),
        ("60 caps", "90 caps", "120 caps"),
    ),
    Category(
        "home_fragrance",
        99,
        0,
        ("Candle", "Reed Diffuser", "Incense", "Room Spray"),
        ("", "200g", "Set of 3"),
    ),
    Category("kitchen", 159, 0, ("Chef Knife", "Rice Cooker", "Tea Set", "Cast Iron Pan"), ("",)),
    Category(
        "apparel", 229, 0, ("Linen Shirt", "Knit Cardigan", "Cotton Tee", "Silk Scarf"), ("S", "M", "L", "XL")
    ),
    Category(
        "sportswear", 299, 0, ("Yoga Pants", "Running Jacket", "Sports Bra", "Track Suit"), ("S", "M", "L")
    ),
    Category("shoes", 399, 0, ("Sneakers", "Loafers", "Trail Runners", "Sandals"), ("", "")),
    Category("bags", 499, 0, ("Tote Bag", "Backpack", "Crossbody Bag", "Wallet"), ("", "Mini")),
    Category("gadgets", 129, 0, ("Power Bank", "Earbuds", "Phone Case", "Smart Band"), ("", "Pro")),
)
ADJECTIVES = ("Classic", "Daily", "Premium", "Light", "Gentle", "Organic", "Urban", "Mini", "Pro", "Pure")
BRAND_HEADS = ("Jade", "Lumi", "Mori", "Hana", "Kai", "Yun", "Sol", "Nori", "Aster", "Qing", "Vela", "Tao")
BRAND_TAILS = ("Leaf", "Lab", "Field", "House", "Bloom", "Stone", "Mist", "Craft", "Peak", "Wave", "Root")
CONTENT_TYPES = ("article", "video", "live")
CONTENT_TYPE_SHARES = (0.6, 0.3, 0.1)
CONTENT_PREFIX = {"article": "Guide", "video": "Video", "live": "Live"}
CONTENT_TOPICS = (
    "how to choose",
    "new arrivals",
    "tasting notes",
    "member picks",
    "a week with",
    "care tips",
)


@dataclass
class Catalog:
    """Column arrays, product rows first then content rows (row = position in the file)."""

    item_id: np.ndarray  # str
    is_content: np.ndarray  # bool
    title: list[str]
    category: np.ndarray  # int, index into CATEGORIES
    brand: np.ndarray  # int, index into brand_names, -1 = none
    brand_names: list[str]
    price: np.ndarray  # float64
    in_stock: np.ndarray  # bool
    published_at: np.ndarray  # int64 epoch seconds
    featured: list[tuple[int, ...]]  # product rows featured by each row (empty for products)
    group: np.ndarray  # int taste group
    popularity: np.ndarray  # float64 relative weight
    subtype: np.ndarray  # str: "product", "article", "video", "live"
    group_categories: np.ndarray  # [groups, 3] category indices, preferred first
    group_sizes: np.ndarray  # [groups] share of items (and of members) in each group

    @property
    def featured_csr(self) -> tuple[np.ndarray, np.ndarray]:
        """(indptr, indices): the product rows featured by row r are indices[indptr[r]:indptr[r+1]]."""
        lengths = np.array([len(f) for f in self.featured], dtype=np.int64)
        indptr = np.concatenate([[0], np.cumsum(lengths)])
        indices = np.array([p for f in self.featured for p in f], dtype=np.int64)
        return indptr, indices

    @property
    def cycle_days(self) -> np.ndarray:
        cycles = np.array([c.cycle_days for c in CATEGORIES])
        return np.where(self.is_content, 0, cycles[self.category])


def _ids(prefix: str, n: int) -> np.ndarray:
    width = max(5, len(str(n)))
    return np.array([f"{prefix}{i:0{width}d}" for i in range(1, n + 1)])


def _brand_names(n: int) -> list[str]:
    names = [f"{h} {t}" for h in BRAND_HEADS for t in BRAND_TAILS]
    out = names[:n]
    k = 2
    while len(out) < n:  # more brands than word pairs (huge catalogs): number the rest
        out.extend(f"{name} {k}" for name in names[: n - len(out)])
        k += 1
    return out


def _pick_words(rng: np.random.Generator, category: np.ndarray, words: list[tuple[str, ...]]) -> list[str]:
    """One word per row, uniformly from its category's list."""
    counts = np.array([len(w) for w in words])
    flat = [w for ws in words for w in ws]
    first = np.cumsum(counts) - counts
    picks = first[category] + (rng.random(category.shape[0]) * counts[category]).astype(np.int64)
    return [flat[i] for i in picks]


def build_catalog(params: GeneratorParams, rng: np.random.Generator) -> Catalog:
    g_count = params.taste_groups
    n_prod, n_cont = params.n_products, params.n_content
    end = int(params.end.timestamp())
    start = end - params.history_days * DAY

    # Each group prefers three categories; the first one most.
    group_categories = np.array([rng.choice(len(CATEGORIES), size=3, replace=False) for _ in range(g_count)])
    group_cat_weights = np.array([0.6, 0.25, 0.15])
    group_sizes = rng.dirichlet(np.full(g_count, 4.0))

    n_brands = int(np.clip(n_prod // 40, 2 * g_count, 2000))
    brand_group = np.concatenate([np.arange(g_count), rng.integers(0, g_count, n_brands - g_count)])
    brand_premium = rng.lognormal(0.0, 0.35, n_brands)
    brand_names = _brand_names(n_brands)

    p_group = rng.choice(g_count, size=n_prod, p=group_sizes)
    which = rng.choice(3, size=n_prod, p=group_cat_weights)
    p_cat = group_categories[p_group, which]
    # A product's brand is one of its group's brands.
    by_group = np.argsort(brand_group, kind="stable")
    per_group = np.bincount(brand_group, minlength=g_count)
    first = np.cumsum(per_group) - per_group
    p_brand = by_group[first[p_group] + (rng.random(n_prod) * per_group[p_group]).astype(np.int64)]
    base = np.array([c.base_price for c in CATEGORIES])[p_cat]
    p_price = np.round(base * brand_premium[p_brand] * rng.lognormal(0.0, 0.4, n_prod), 0) - 0.1
    p_price = np.maximum(p_price, 0.9)
    p_pop = rng.lognormal(0.0, 1.6, n_prod)
    # 85% launched before the history window, the rest during it (new products).
    launched_before = rng.random(n_prod) < 0.85
    p_pub = np.where(
        launched_before,
        start - rng.integers(0, 3 * 365 * DAY, n_prod),
        start + rng.integers(0, params.history_days * DAY - 14 * DAY, n_prod),
    )
    nouns = _pick_words(rng, p_cat, [c.nouns for c in CATEGORIES])
    adjs = rng.choice(ADJECTIVES, n_prod)
    sizes = _pick_words(rng, p_cat, [c.sizes for c in CATEGORIES])
    p_titles = [
        f"{brand_names[b]} {a} {n} {s}".strip()
        for b, a, n, s in zip(p_brand, adjs, nouns, sizes, strict=True)
    ]
    in_stock = rng.random(n_prod) < 0.92

    # Content: a group, a type, 1-4 featured products of that group (by popularity).
    c_group = rng.choice(g_count, size=n_cont, p=group_sizes)
    c_type = rng.choice(len(CONTENT_TYPES), size=n_cont, p=CONTENT_TYPE_SHARES)
    prods_by_group = [np.flatnonzero(p_group == g) for g in range(g_count)]
    featured: list[tuple[int, ...]] = []
    c_cat = np.empty(n_cont, dtype=np.int64)
    c_brand = np.full(n_cont, -1, dtype=np.int64)
    c_titles = []
    for j in range(n_cont):
        pool = prods_by_group[c_group[j]]
        if pool.size == 0:
            pool = np.arange(n_prod)
        k = min(int(rng.integers(1, 5)), pool.size)
        w = p_pop[pool] / p_pop[pool].sum()
        picks = tuple(int(x) for x in rng.choice(pool, size=k, replace=False, p=w))
        featured.append(picks)
        c_cat[j] = p_cat[picks[0]]
        if rng.random() < 0.5:  # brand content; the rest is editorial with no brand
            c_brand[j] = p_brand[picks[0]]
        kind = CONTENT_TYPES[c_type[j]]
        topic = CONTENT_TOPICS[int(rng.integers(len(CONTENT_TOPICS)))]
        subject = brand_names[c_brand[j]] if c_brand[j] >= 0 else CATEGORIES[c_cat[j]].name.replace("_", " ")
        c_titles.append(f"{CONTENT_PREFIX[kind]}: {subject} {topic}")
    c_pop = rng.lognormal(0.0, 1.2, n_cont)
    # Content is published through the window; the last 10% in the final week (fresh, cold).
    fresh = rng.random(n_cont) < 0.10
    c_pub = np.where(
        fresh,
        end - rng.integers(0, 7 * DAY, n_cont),
        start + rng.integers(0, params.history_days * DAY - 7 * DAY, n_cont),
    )
    subtype = np.concatenate([np.full(n_prod, "product"), np.array(CONTENT_TYPES)[c_type]]).astype(str)
    return Catalog(
        item_id=np.concatenate([_ids("P", n_prod), _ids("C", n_cont)]),
        is_content=np.concatenate([np.zeros(n_prod, bool), np.ones(n_cont, bool)]),
        title=p_titles + c_titles,
        category=np.concatenate([p_cat, c_cat]),
        brand=np.concatenate([p_brand, c_brand]),
        brand_names=brand_names,
        price=np.concatenate([p_price, np.zeros(n_cont)]),
        in_stock=np.concatenate([in_stock, np.ones(n_cont, bool)]),
        published_at=np.concatenate([p_pub, c_pub]).astype(np.int64),
        featured=[() for _ in range(n_prod)] + featured,
        group=np.concatenate([p_group, c_group]),
        popularity=np.concatenate([p_pop, c_pop]),
        subtype=subtype,
        group_categories=group_categories,
        group_sizes=group_sizes,
    )
