"""Generated members: latent tastes, lifecycle plans, time zones, channel habits and consent.

Planted structure (recorded per member in the truth table):
- a primary and a secondary taste group (picks follow them; see GeneratorParams focus shares);
- a lifecycle plan: ``new`` (registered in the last 30 days; some with no events at all),
  ``active``, ``dormant`` (activity stops 120-240 days before the end), ``churned`` (stops more
  than 240 days before the end);
- a log-normal activity level, so a few members are very active and many are light;
- a home time zone (mostly China, some overseas members); events follow local daily rhythms;
- planted active hours: a local window where most of the member's sessions start;
- channel habits (mini-program first) and a consent mix per outreach channel, with
  members who never answered (unknown = no consent).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipelines.contract import CONSENT_CHANNELS
from pipelines.generate.catalog import DAY
from pipelines.generate.params import GeneratorParams

TIMEZONES = (
    ("Asia/Shanghai", 0.82),
    ("Asia/Hong_Kong", 0.04),
    ("Asia/Taipei", 0.03),
    ("Asia/Singapore", 0.03),
    ("Asia/Tokyo", 0.02),
    ("Australia/Sydney", 0.02),
    ("Europe/London", 0.015),
    ("America/Los_Angeles", 0.015),
    ("America/New_York", 0.01),
)
LIFECYCLE_PLANS = ("active", "new", "dormant", "churned")
ONLINE_CHANNELS = ("mini_program", "app", "wecom", "official_account")
ONLINE_CHANNEL_ALPHA = (3.0, 1.2, 1.0, 1.0)
# Probability of granting marketing consent per outreach channel, before member-level mood.
CONSENT_BASE = {
    "app_push": 0.35,
    "mini_program_subscribe": 0.5,
    "wecom": 0.6,
    "official_account": 0.7,
    "sms": 0.3,
}
CONSENT_UNKNOWN = 0.12  # never asked / never answered
# Planted active hours: each member has a local window of ACTIVE_WINDOW_HOURS starting at one of
# these hours (outside the shipped policy's quiet hours, with lunch and evening peaks), and
# ACTIVE_SHARE of their sessions start inside it (the rest follow the population's rhythm).
ACTIVE_WINDOW_HOURS = 2
ACTIVE_SHARE = 0.6
ACTIVE_START_WEIGHTS = {
    9: 1.0,
    10: 1.0,
    11: 1.6,
    12: 1.8,
    13: 1.0,
    14: 0.7,
    15: 0.7,
    16: 0.8,
    17: 1.2,
    18: 1.8,
    19: 1.6,
}


@dataclass
class Members:
    member_id: np.ndarray  # str
    primary: np.ndarray  # int taste group
    secondary: np.ndarray
    plan: np.ndarray  # int index into LIFECYCLE_PLANS
    registered_at: np.ndarray  # int64 epoch seconds
    active_from: np.ndarray  # int64 epoch seconds
    active_until: np.ndarray  # int64 epoch seconds
    activity: np.ndarray  # float relative session rate; 0 = never active
    timezone: np.ndarray  # int index into TIMEZONES
    channel_pref: np.ndarray  # [members, len(ONLINE_CHANNELS)] probabilities
    store_share: np.ndarray  # share of sessions in a store
    live_share: np.ndarray  # share of sessions in live streams
    consent: dict[str, np.ndarray]  # channel -> int8: 1 granted, 0 refused, -1 unknown
    active_hour: np.ndarray  # int8 local hour the member's planted active window starts

    def __len__(self) -> int:
        return int(self.member_id.shape[0])

    def rows(self, start: int, stop: int) -> Members:
        """Members start..stop-1 (a chunk to generate events for)."""
        sl = slice(start, stop)
        return Members(
            member_id=self.member_id[sl],
            primary=self.primary[sl],
            secondary=self.secondary[sl],
            plan=self.plan[sl],
            registered_at=self.registered_at[sl],
            active_from=self.active_from[sl],
            active_until=self.active_until[sl],
            activity=self.activity[sl],
            timezone=self.timezone[sl],
            channel_pref=self.channel_pref[sl],
            store_share=self.store_share[sl],
            live_share=self.live_share[sl],
            consent={k: v[sl] for k, v in self.consent.items()},
            active_hour=self.active_hour[sl],
        )


def build_members(params: GeneratorParams, rng: np.random.Generator, group_sizes: np.ndarray) -> Members:
    n = params.members
    end = int(params.end.timestamp())
    window_start = end - params.history_days * DAY
    width = max(6, len(str(n)))
    member_id = np.array([f"M{i:0{width}d}" for i in range(1, n + 1)])

    primary = rng.choice(len(group_sizes), size=n, p=group_sizes)
    # A different group as secondary taste.
    secondary = (primary + rng.integers(1, len(group_sizes), n)) % len(group_sizes)

    shares = np.array(
        [
            1 - params.new_share - params.dormant_share - params.churned_share,
            params.new_share,
            params.dormant_share,
            params.churned_share,
        ]
    )
    plan = rng.choice(len(LIFECYCLE_PLANS), size=n, p=shares)
    is_new, is_dormant, is_churned = plan == 1, plan == 2, plan == 3

    # Membership grows over time: older registrations are rarer (exponential in age).
    age_days = np.minimum(rng.exponential(365.0, n) + 30, 4 * 365)
    age_days = np.where(is_new, rng.uniform(0, 30, n), age_days)
    active_until = np.full(n, end, dtype=np.int64)
    active_until = np.where(is_dormant, end - rng.integers(120, 240, n) * DAY, active_until)
    history_len = params.history_days
    churn_lo, churn_hi = (
        min(240, history_len - 10),
        max(min(330, history_len - 5), min(240, history_len - 10) + 1),
    )
    active_until = np.where(is_churned, end - rng.integers(churn_lo, churn_hi, n) * DAY, active_until)
    # Dormant and churned members were around for a while before they went quiet.
    min_age = (end - active_until) / DAY + rng.uniform(20, 200, n)
    age_days = np.where(is_dormant | is_churned, np.maximum(age_days, min_age), age_days)
    registered_at = (end - age_days * DAY).astype(np.int64)
    active_from = np.maximum(registered_at, window_start)
    active_until = np.maximum(active_until, active_from)

    activity = rng.lognormal(0.0, 1.0, n)
    never = np.where(is_new, rng.random(n) < params.new_without_history, rng.random(n) < 0.02)
    activity[never] = 0.0

    tz_p = np.array([p for _, p in TIMEZONES])
    timezone = rng.choice(len(TIMEZONES), size=n, p=tz_p / tz_p.sum())
    channel_pref = rng.dirichlet(np.array(ONLINE_CHANNEL_ALPHA), size=n)
    store_share = rng.beta(1.0, 18.0, n)
    live_share = rng.beta(0.6, 12.0, n)

    # Some members say yes to everything, some to nothing: one shared mood plus per-channel noise.
    mood = rng.normal(0.0, 1.0, n)
    consent: dict[str, np.ndarray] = {}
    for ch in CONSENT_CHANNELS:
        p = CONSENT_BASE[ch]
        z = mood + rng.normal(0.0, 1.0, n)
        threshold = np.quantile(z, 1 - p) if n > 1 else 0.0
        granted = z > threshold
        if ch == "app_push":  # only app users can have push consent
            granted &= channel_pref[:, ONLINE_CHANNELS.index("app")] > 0.1
        value = granted.astype(np.int8)
        value[rng.random(n) < CONSENT_UNKNOWN] = -1
        consent[ch] = value
    return Members(
        member_id=member_id,
        primary=primary,
        secondary=secondary,
        plan=plan,
        registered_at=registered_at,
        active_from=active_from,
        active_until=active_until,
        activity=activity,
        timezone=timezone,
        channel_pref=channel_pref,
        store_share=store_share,
        live_share=live_share,
        consent=consent,
        active_hour=_active_hours(params, n),
    )


def _active_hours(params: GeneratorParams, n: int) -> np.ndarray:
    # A generator of its own, so planting active hours leaves every other draw as it was.
    rng = np.random.default_rng([params.seed, 23])
    hours = np.array(list(ACTIVE_START_WEIGHTS), dtype=np.int8)
    weights = np.array(list(ACTIVE_START_WEIGHTS.values()))
    return rng.choice(hours, size=n, p=weights / weights.sum())
