"""Generated events: sessions in each member's local rhythm, funnels, content and repurchases.

Long on purpose: the planted structures (sessions, funnels, repurchases, content) draw from one
random stream in one order, which keeps the output deterministic per seed.

Planted structure:
- sessions fall on weekends more than weekdays (``WEEKDAY_WEIGHTS``) and follow a local daily
  rhythm (lunch and evening peaks) in the member's own time zone; stored in UTC;
- a session is a product browse (view, sometimes click, favorite, share; add_to_cart more
  often for items of the member's own taste group; purchase after add_to_cart), a content view
  (sometimes followed by a view of a product the content features), a live stream watch
  (sometimes an add_to_cart and purchase of a featured product in the ``live`` channel) or a
  store visit (purchases in ``offline_store``, no browsing);
- every online purchase follows an add_to_cart of the same item by the same member;
- items are picked from the member's primary group, secondary group or global popularity
  (``GeneratorParams.primary_focus``/``secondary_focus``), never before they are published;
- consumables are bought again about once per category cycle while the member stays active;
- nothing happens outside a member's active span, so dormant and churned members go quiet.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from pipelines.contract import EVENT_CHANNELS, EVENT_TYPES
from pipelines.generate.catalog import DAY, Catalog
from pipelines.generate.members import ACTIVE_SHARE, ACTIVE_WINDOW_HOURS, ONLINE_CHANNELS, TIMEZONES, Members
from pipelines.generate.params import GeneratorParams

WEEKDAY_WEIGHTS = np.array([0.9, 0.88, 0.9, 0.95, 1.05, 1.25, 1.15])  # Monday..Sunday
HOUR_WEIGHTS = np.array(
    [
        0.6,
        0.3,
        0.15,
        0.1,
        0.1,
        0.2,
        0.5,
        1.0,
        1.5,
        1.6,
        1.6,
        1.8,
        2.4,
        2.2,
        1.6,
        1.5,
        1.6,
        1.8,
        2.0,
        2.4,
        2.9,
        3.0,
        2.4,
        1.3,
    ]
)
CONTENT_SESSION_SHARE = 0.2
ITEMS_PER_BROWSE = 1.2  # extra items after the first (Poisson mean)
P_CLICK, P_FAVORITE, P_SHARE = 0.3, 0.04, 0.015
# add_to_cart probability by how the item's group relates to the member's taste.
P_CART_PRIMARY, P_CART_SECONDARY, P_CART_OTHER = 0.20, 0.12, 0.05
P_BUY_AFTER_CART = 0.5
P_CONTENT_TO_PRODUCT = 0.3
P_LIVE_PURCHASE = 0.2
STORE_EXTRA_ITEMS = 0.4
P_REPURCHASE = 0.5  # chance a consumable is bought again in the next cycle
# Expected events per session, from the probabilities above, used to hit events_per_member.
_PER_ITEM = 1 + P_CLICK + P_FAVORITE + P_SHARE + 0.16 * (1 + P_BUY_AFTER_CART)
EVENTS_PER_SESSION = 1.0 * (
    0.68 * (1 + ITEMS_PER_BROWSE) * _PER_ITEM
    + CONTENT_SESSION_SHARE * (1 + P_CONTENT_TO_PRODUCT * _PER_ITEM)
    + 0.05 * (1 + 2 * P_LIVE_PURCHASE)
    + 0.053 * (1 + STORE_EXTRA_ITEMS)
)

ET = {name: i for i, name in enumerate(EVENT_TYPES)}
CH = {name: i for i, name in enumerate(EVENT_CHANNELS)}
_ONLINE_CODES = np.array([CH[c] for c in ONLINE_CHANNELS])


@dataclass
class Events:
    member: np.ndarray  # int row into Members
    item: np.ndarray  # int row into Catalog
    event_type: np.ndarray  # int index into EVENT_TYPES
    ts: np.ndarray  # int64 epoch seconds
    channel: np.ndarray  # int index into EVENT_CHANNELS
    quantity: np.ndarray  # int32
    amount: np.ndarray  # float64

    def __len__(self) -> int:
        return int(self.member.shape[0])


class _Pool:
    """Weighted sampling of catalog rows by taste group in one vectorised call."""

    def __init__(self, rows: np.ndarray, catalog: Catalog, n_groups: int) -> None:
        groups = catalog.group[rows]
        order = np.argsort(groups, kind="stable")
        self.rows = rows[order]
        g = groups[order]
        w = catalog.popularity[self.rows]
        total = np.bincount(g, weights=w, minlength=n_groups)
        self.has_group = total > 0
        before = np.cumsum(total) - total
        # Group g's items occupy (g, g+1] so one searchsorted serves every group.
        self.group_cum = g + (np.cumsum(w) - before[g]) / np.where(total[g] > 0, total[g], 1)
        self.global_cum = np.cumsum(w) / max(w.sum(), 1e-12)
        self.published = catalog.published_at[self.rows]

    def __len__(self) -> int:
        return int(self.rows.shape[0])

    def _draw(self, rng: np.random.Generator, groups: np.ndarray) -> np.ndarray:
        u: np.ndarray = _rand(rng, len(groups))
        use_global = (groups < 0) | ~self.has_group[np.maximum(groups, 0)]
        pos = np.empty(groups.shape[0], dtype=np.int64)
        pos[use_global] = np.searchsorted(self.global_cum, u[use_global], side="right")
        own = ~use_global
        pos[own] = np.searchsorted(self.group_cum, groups[own] + u[own], side="right")
        return np.minimum(pos, len(self) - 1)

    def draw(
        self, rng: np.random.Generator, groups: np.ndarray, at: np.ndarray, tries: int = 4
    ) -> np.ndarray:
        """Catalog rows published by ``at``; -1 where none was found in ``tries`` draws."""
        out = np.full(groups.shape[0], -1, dtype=np.int64)
        pending = np.arange(groups.shape[0])
        for _ in range(tries):
            if pending.size == 0 or len(self) == 0:
                break
            pos = self._draw(rng, groups[pending])
            ok = self.published[pos] <= at[pending]
            out[pending[ok]] = self.rows[pos[ok]]
            pending = pending[~ok]
        return out


class _Sink:
    """Collects event arrays from every generator step."""

    def __init__(self) -> None:
        self.parts: list[tuple[np.ndarray, ...]] = []

    def add(
        self,
        member: np.ndarray,
        item: np.ndarray,
        event_type: int,
        ts: np.ndarray,
        channel: np.ndarray,
        quantity: np.ndarray | None = None,
        amount: np.ndarray | None = None,
    ) -> None:
        n = member.shape[0]
        self.parts.append(
            (
                member,
                item,
                np.full(n, event_type, dtype=np.int8),
                ts.astype(np.int64),
                channel.astype(np.int8),
                np.ones(n, dtype=np.int32) if quantity is None else quantity.astype(np.int32),
                np.zeros(n) if amount is None else amount,
            )
        )

    def build(self) -> Events:
        cols = [np.concatenate([p[i] for p in self.parts]) for i in range(7)]
        # By time, then member, then type, as one int64 key (one argsort is much faster than
        # lexsort): ts < 2^33, members < 2^23, types < 2^3.
        key = (cols[3] << 26) | (cols[0].astype(np.int64) << 3) | cols[2].astype(np.int64)
        order = np.argsort(key, kind="stable")
        cols = [c[order] for c in cols]
        key = key[order]
        # Two sessions of one member can, rarely, land on the same second with the same item;
        # the contract treats such rows as double-sent, so the generator never writes them.
        # Only rows sharing (ts, member, type) with a neighbour can be exact repeats.
        same = np.zeros(key.shape[0], dtype=bool)
        same[1:] = key[1:] == key[:-1]
        same[:-1] |= same[1:]
        dup = np.zeros(key.shape[0], dtype=bool)
        idx = np.flatnonzero(same)
        if idx.size:
            dup[idx] = pd.DataFrame({i: c[idx] for i, c in enumerate(cols)}).duplicated().to_numpy()
        return Events(*(c[~dup] for c in cols))


def _rand(rng: np.random.Generator, n: int) -> np.ndarray:
    """n uniforms in [0, 1) (typed, so numpy's stubs pick the array overload)."""
    return rng.random(int(n))


def _poisson(rng: np.random.Generator, lam: float, n: int) -> np.ndarray:
    return rng.poisson(lam, int(n))


def _taste_groups(
    rng: np.random.Generator, members: Members, m: np.ndarray, params: GeneratorParams
) -> np.ndarray:
    r = _rand(rng, m.shape[0])
    return np.where(
        r < params.primary_focus,
        members.primary[m],
        np.where(r < params.primary_focus + params.secondary_focus, members.secondary[m], -1),
    )


def _session_times(rng: np.random.Generator, members: Members, m: np.ndarray) -> np.ndarray:
    """UTC epoch seconds: a local day (weekday-weighted) in the member's span, a local hour."""
    lo = members.active_from[m] // DAY
    hi = members.active_until[m] // DAY
    day = np.empty(m.shape[0], dtype=np.int64)
    pending = np.arange(m.shape[0])
    w = WEEKDAY_WEIGHTS / WEEKDAY_WEIGHTS.max()
    while pending.size:
        d = lo[pending] + np.floor(_rand(rng, pending.size) * (hi[pending] - lo[pending] + 1)).astype(
            np.int64
        )
        ok = _rand(rng, pending.size) < w[(d + 3) % 7]  # 1970-01-01 was a Thursday
        day[pending[ok]] = d[ok]
        pending = pending[~ok]
    hour = np.asarray(rng.choice(24, size=m.shape[0], p=HOUR_WEIGHTS / HOUR_WEIGHTS.sum()))
    # The member's planted active window (members.ACTIVE_SHARE of sessions); drawn from a generator
    # of its own, seeded by the chunk, so every other draw of the data set stays as it was.
    own = np.random.default_rng([m.shape[0], int(m[:1].sum()) if m.size else 0, 23])
    inside = own.random(m.shape[0]) < ACTIVE_SHARE
    offset = own.integers(0, ACTIVE_WINDOW_HOURS, m.shape[0])
    hour = np.where(inside, (members.active_hour[m].astype(np.int64) + offset) % 24, hour)
    local = day * DAY + hour * 3600 + rng.integers(0, 3600, m.shape[0])
    utc = np.empty_like(local)
    tz = members.timezone[m]
    for k, (name, _) in enumerate(TIMEZONES):
        sel = tz == k
        if not sel.any():
            continue
        naive = pd.DatetimeIndex(pd.to_datetime(local[sel], unit="s"))
        aware = naive.tz_localize(
            name, ambiguous=np.zeros(int(sel.sum()), dtype=bool), nonexistent="shift_forward"
        )
        utc[sel] = aware.tz_convert("UTC").as_unit("s").asi8
    # The local day can start before the member registered (or the window opened): move such
    # sessions just after, so no funnel is cut in half at its start.
    start = members.active_from[m]
    early = utc < start
    utc[early] = start[early] + rng.integers(60, 7200, int(early.sum()))
    return utc


def _purchase_values(
    rng: np.random.Generator, catalog: Catalog, item: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    consumable = catalog.cycle_days[item] > 0
    qty = np.where(consumable, 1 + rng.poisson(0.5, item.shape[0]), 1 + (_rand(rng, item.shape[0]) < 0.05))
    discount = rng.choice(np.array([1.0, 0.95, 0.9, 0.8]), size=item.shape[0], p=[0.5, 0.2, 0.2, 0.1])
    return qty, np.round(catalog.price[item] * qty * discount, 2)


def _funnel(
    rng: np.random.Generator,
    sink: _Sink,
    catalog: Catalog,
    members: Members,
    m: np.ndarray,
    item: np.ndarray,
    t: np.ndarray,
    ch: np.ndarray,
) -> None:
    """view, then maybe click / favorite / share / add_to_cart, then purchase after the cart."""
    n = m.shape[0]
    sink.add(m, item, ET["view"], t, ch)
    for name, p, lo, hi in (
        ("click", P_CLICK, 3, 60),
        ("favorite", P_FAVORITE, 10, 120),
        ("share", P_SHARE, 10, 200),
    ):
        s: np.ndarray = _rand(rng, n) < p
        sink.add(m[s], item[s], ET[name], t[s] + rng.integers(lo, hi, int(s.sum())), ch[s])
    g = catalog.group[item]
    p_cart = np.where(
        g == members.primary[m],
        P_CART_PRIMARY,
        np.where(g == members.secondary[m], P_CART_SECONDARY, P_CART_OTHER),
    )
    cart = _rand(rng, n) < p_cart
    _cart_then_buy(
        rng, sink, catalog, m[cart], item[cart], t[cart] + rng.integers(20, 300, int(cart.sum())), ch[cart]
    )


def _cart_then_buy(
    rng: np.random.Generator,
    sink: _Sink,
    catalog: Catalog,
    m: np.ndarray,
    item: np.ndarray,
    t: np.ndarray,
    ch: np.ndarray,
    p_buy: float = P_BUY_AFTER_CART,
) -> None:
    sink.add(m, item, ET["add_to_cart"], t, ch)
    buy: np.ndarray = _rand(rng, m.shape[0]) < p_buy
    qty, amount = _purchase_values(rng, catalog, item[buy])
    sink.add(
        m[buy],
        item[buy],
        ET["purchase"],
        t[buy] + rng.integers(60, 1800, int(buy.sum())),
        ch[buy],
        qty,
        amount,
    )


def build_events(
    params: GeneratorParams, rng: np.random.Generator, catalog: Catalog, members: Members
) -> Events:
    g_count = params.taste_groups
    rows = np.arange(catalog.item_id.shape[0])
    products = _Pool(rows[~catalog.is_content], catalog, g_count)
    stories = _Pool(rows[catalog.is_content & (catalog.subtype != "live")], catalog, g_count)
    lives = _Pool(rows[catalog.subtype == "live"], catalog, g_count)
    sink = _Sink()

    # Sessions per member: activity x active days, scaled so the total meets events_per_member.
    active_days = np.maximum((members.active_until - members.active_from) / DAY, 0.0) + 1.0
    raw = members.activity * active_days
    sessions_total = params.events_per_member * len(members) / EVENTS_PER_SESSION
    lam = raw * (sessions_total / max(raw.sum(), 1e-12))
    n_sess = rng.poisson(lam)
    sm = np.repeat(np.arange(len(members)), n_sess)
    st = _session_times(rng, members, sm)
    # Session kind from the member's habits: store, live, content, else product browsing.
    r = _rand(rng, sm.shape[0])
    store_cut = members.store_share[sm]
    live_cut = store_cut + (members.live_share[sm] if len(lives) else 0.0)
    content_cut = live_cut + CONTENT_SESSION_SHARE
    is_store, is_live = r < store_cut, (r >= store_cut) & (r < live_cut)
    is_content = (r >= live_cut) & (r < content_cut)
    is_browse = r >= content_cut
    online_ch = _online_channels(rng, members, sm)

    # Product browsing: 1 + Poisson items per session, a minute or few apart.
    bm, bt, bch = sm[is_browse], st[is_browse], online_ch[is_browse]
    k: np.ndarray = 1 + _poisson(rng, ITEMS_PER_BROWSE, bm.shape[0])
    im, it, ich = np.repeat(bm, k), np.repeat(bt, k), np.repeat(bch, k)
    it = it + _gaps(rng, k, 30, 240)
    item = products.draw(rng, _taste_groups(rng, members, im, params), it)
    ok = item >= 0
    _funnel(rng, sink, catalog, members, im[ok], item[ok], it[ok], ich[ok])

    # Content: a story of the member's taste, sometimes followed by one of its featured products.
    cm, ct, cch = sm[is_content], st[is_content], online_ch[is_content]
    story = stories.draw(rng, _taste_groups(rng, members, cm, params), ct)
    ok = story >= 0
    cm, ct, cch, story = cm[ok], ct[ok], cch[ok], story[ok]
    sink.add(cm, story, ET["content_view"], ct, cch)
    follow: np.ndarray = _rand(rng, cm.shape[0]) < P_CONTENT_TO_PRODUCT
    fm, ft, fch = cm[follow], ct[follow] + rng.integers(30, 300, int(follow.sum())), cch[follow]
    fitem = _featured_pick(rng, catalog, story[follow])
    ok = catalog.published_at[fitem] <= ft
    _funnel(rng, sink, catalog, members, fm[ok], fitem[ok], ft[ok], fch[ok])

    # Live streams: watch, sometimes buy a featured product right there.
    lm, lt = sm[is_live], st[is_live]
    show = lives.draw(rng, _taste_groups(rng, members, lm, params), lt)
    ok = show >= 0
    lm, lt, show = lm[ok], lt[ok], show[ok]
    live_ch = np.full(lm.shape[0], CH["live"])
    sink.add(lm, show, ET["live_watch"], lt, live_ch)
    live_buy: np.ndarray = _rand(rng, lm.shape[0]) < P_LIVE_PURCHASE
    bitem = _featured_pick(rng, catalog, show[live_buy])
    bt2 = lt[live_buy] + rng.integers(60, 1800, int(live_buy.sum()))
    ok = catalog.published_at[bitem] <= bt2
    _cart_then_buy(rng, sink, catalog, lm[live_buy][ok], bitem[ok], bt2[ok], live_ch[live_buy][ok], p_buy=0.8)

    # Store visits: purchases without browsing.
    vm, vt = sm[is_store], st[is_store]
    k = 1 + _poisson(rng, STORE_EXTRA_ITEMS, vm.shape[0])
    pm, pt = np.repeat(vm, k), np.repeat(vt, k)
    pt = pt + _gaps(rng, k, 30, 300)
    pitem = products.draw(rng, _taste_groups(rng, members, pm, params), pt)
    ok = pitem >= 0
    qty, amount = _purchase_values(rng, catalog, pitem[ok])
    sink.add(
        pm[ok], pitem[ok], ET["purchase"], pt[ok], np.full(int(ok.sum()), CH["offline_store"]), qty, amount
    )

    _repurchases(rng, sink, catalog, members)
    events = _bought_once(sink.build(), catalog)
    # Funnel steps and repurchases can run past the member's span or the end; cut them there.
    end = int(params.end.timestamp())
    keep = (events.ts <= np.minimum(members.active_until[events.member] + DAY, end)) & (
        events.ts >= members.registered_at[events.member]
    )
    return Events(*(getattr(events, f)[keep] for f in Events.__dataclass_fields__))


def _bought_once(events: Events, catalog: Catalog) -> Events:
    """A durable (no repurchase cycle) is bought once per member: later purchases of the same
    item are dropped (their add_to_cart stays, as an abandoned cart)."""
    durable_buy = (events.event_type == ET["purchase"]) & (catalog.cycle_days[events.item] == 0)
    idx = np.flatnonzero(durable_buy)  # events are in time order, so the first is kept
    again = pd.DataFrame({"m": events.member[idx], "i": events.item[idx]}).duplicated().to_numpy()
    keep = np.ones(len(events), dtype=bool)
    keep[idx[again]] = False
    return Events(*(getattr(events, f)[keep] for f in Events.__dataclass_fields__))


def _online_channels(rng: np.random.Generator, members: Members, m: np.ndarray) -> np.ndarray:
    cum = np.cumsum(members.channel_pref[m], axis=1)
    u: np.ndarray = _rand(rng, m.shape[0])
    pick = (u[:, None] > cum).sum(axis=1)
    return _ONLINE_CODES[np.minimum(pick, len(ONLINE_CHANNELS) - 1)]


def _gaps(rng: np.random.Generator, k: np.ndarray, lo: int, hi: int) -> np.ndarray:
    """Seconds from session start for each of k[i] items: 0, then strictly increasing by lo..hi."""
    gaps = rng.integers(lo, hi, int(k.sum()))
    starts = np.cumsum(k) - k
    gaps[starts[k > 0]] = 0
    total = np.cumsum(gaps)
    return total - np.repeat(total[starts[k > 0]], k[k > 0])


def _featured_pick(rng: np.random.Generator, catalog: Catalog, content_rows: np.ndarray) -> np.ndarray:
    """One featured product per content row, uniformly among those it features."""
    indptr, indices = catalog.featured_csr
    lengths = indptr[content_rows + 1] - indptr[content_rows]
    which = np.floor(_rand(rng, content_rows.shape[0]) * lengths).astype(np.int64)
    return indices[indptr[content_rows] + which]


def _repurchases(rng: np.random.Generator, sink: _Sink, catalog: Catalog, members: Members) -> None:
    """Consumables come back about once per cycle while the member is active."""
    purchases = [p for p in sink.parts if p[2].size and p[2][0] == ET["purchase"]]
    if not purchases:
        return
    m = np.concatenate([p[0] for p in purchases])
    item = np.concatenate([p[1] for p in purchases])
    t = np.concatenate([p[3] for p in purchases])
    ch = np.concatenate([p[4] for p in purchases])
    cycle = catalog.cycle_days[item]
    sel = cycle > 0
    m, item, t, ch, cycle = m[sel], item[sel], t[sel], ch[sel], cycle[sel]
    while m.size:
        go = _rand(rng, m.shape[0]) < P_REPURCHASE
        t = t + (cycle * rng.uniform(0.8, 1.3, m.shape[0]) * DAY).astype(np.int64)
        go &= t <= members.active_until[m]
        m, item, t, ch, cycle = m[go], item[go], t[go], ch[go], cycle[go]
        store = ch == CH["offline_store"]
        qty, amount = _purchase_values(rng, catalog, item[store])
        sink.add(m[store], item[store], ET["purchase"], t[store], ch[store], qty, amount)
        online = ~store
        _cart_then_buy(rng, sink, catalog, m[online], item[online], t[online], ch[online], p_buy=0.9)
