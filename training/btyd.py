"""Buy-till-you-die models: BG/NBD (purchase count and probability of being alive) and
Gamma-Gamma (value per purchase), fitted by maximum likelihood with scipy.

Why not a library: ``pymc-marketing`` (maintained; its ``BetaGeoModel`` fits by MAP) pulls in
pymc, pytensor (which compiles C at run time) and arviz, and its resolver upgrades numba and
llvmlite, on which serving's compiled kernels depend; ``lifetimes`` has been unmaintained since
2020. Both models have closed-form likelihoods of four and three parameters, so a vectorised
log-likelihood and L-BFGS fit a million members in seconds (docs/profiles.md).

Formulas:
- BG/NBD: Fader, Hardie and Lee (2005), "Counting your customers the easy way: an alternative
  to the Pareto/NBD model", Marketing Science 24(2), equations (6), (10) and (13); the
  log-likelihood in the numerically stable form of their note "Implementing the BG/NBD model
  for customer base analysis in Excel" (2005).
- Gamma-Gamma: Fader and Hardie (2013), "The Gamma-Gamma model of monetary value",
  equations (1) and (5).

A member's summary is the usual one: ``x`` repeat purchase occasions (purchase days after the
first), ``t_x`` days from the first to the last purchase day, ``T`` days from the first
purchase to the reference time, and ``m`` the mean spend of the repeat occasions. Members who
never bought are outside the model (their "birth" is the first purchase).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import optimize, special

DAY_S = 86_400


@dataclass(frozen=True)
class RfmSummary:
    """Per-member BTYD summary, aligned arrays (days, float64)."""

    x: np.ndarray  # repeat purchase days
    t_x: np.ndarray  # first to last purchase day
    T: np.ndarray  # first purchase day to the reference time
    monetary: np.ndarray  # mean spend per repeat purchase day (0 when x == 0)
    buyer: np.ndarray  # bool: bought at least once (the model's population)


def summarise(
    member: np.ndarray, ts: np.ndarray, amount: np.ndarray, n_members: int, as_of: int
) -> RfmSummary:
    """Purchases (member row, epoch seconds, amount) up to ``as_of`` -> per-member summary.

    Purchases on the same day are one occasion (their amounts summed), as in the papers."""
    keep = ts <= as_of
    member, day, amount = member[keep], ts[keep] // DAY_S, amount[keep].astype(np.float64)
    x = np.zeros(n_members)
    t_x = np.zeros(n_members)
    big_t = np.zeros(n_members)
    monetary = np.zeros(n_members)
    buyer = np.zeros(n_members, dtype=bool)
    if member.size == 0:
        return RfmSummary(x, t_x, big_t, monetary, buyer)
    key = member.astype(np.int64) * (1 << 32) + day.astype(np.int64)
    order = np.argsort(key, kind="stable")
    key = key[order]
    first_of_occ = np.r_[True, key[1:] != key[:-1]]
    occ_key = key[first_of_occ]
    occ_member = (occ_key >> 32).astype(np.int64)
    occ_day = (occ_key & 0xFFFFFFFF).astype(np.int64)
    occ_amount = np.add.reduceat(amount[order], np.flatnonzero(first_of_occ))
    counts = np.bincount(occ_member, minlength=n_members)
    first_day = np.full(n_members, np.iinfo(np.int64).max)
    np.minimum.at(first_day, occ_member, occ_day)
    last_day = np.full(n_members, -1, dtype=np.int64)
    np.maximum.at(last_day, occ_member, occ_day)
    buyer = counts > 0
    total = np.bincount(occ_member, weights=occ_amount, minlength=n_members)
    first_amount = np.zeros(n_members)
    is_first = occ_day == first_day[occ_member]
    first_amount[occ_member[is_first]] = occ_amount[is_first]
    x = np.maximum(counts - 1, 0).astype(np.float64)
    as_of_day = as_of / DAY_S
    t_x = np.where(buyer, last_day - first_day, 0).astype(np.float64)
    # T counts from the first purchase day's start, so a purchase today has T > 0.
    big_t = np.where(buyer, np.maximum(as_of_day - first_day, t_x), 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        monetary = np.where(x > 0, (total - first_amount) / np.maximum(x, 1), 0.0)
    return RfmSummary(x, t_x, big_t, np.maximum(monetary, 0.0), buyer)


# --------------------------------------------------------------------------- BG/NBD
@dataclass(frozen=True)
class BgNbd:
    """Fitted BG/NBD parameters (time unit: days)."""

    r: float
    alpha: float
    a: float
    b: float

    def as_dict(self) -> dict[str, float]:
        return {"r": self.r, "alpha": self.alpha, "a": self.a, "b": self.b}

    def _odds_dead(self, x: np.ndarray, t_x: np.ndarray, big_t: np.ndarray) -> np.ndarray:
        """a/(b+x-1) * ((alpha+T)/(alpha+t_x))^(r+x) for x > 0, else 0 (eq. 13's denominator)."""
        r, alpha, a, b = self.r, self.alpha, self.a, self.b
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            log_odds = (
                np.log(a)
                - np.log(np.maximum(b + x - 1, 1e-12))
                + (r + x) * (np.log(alpha + big_t) - np.log(alpha + t_x))
            )
            odds = np.exp(np.minimum(log_odds, 700.0))
        return np.where(x > 0, odds, 0.0)

    def p_alive(self, x: np.ndarray, t_x: np.ndarray, big_t: np.ndarray) -> np.ndarray:
        """P(still active | x, t_x, T), eq. (13)."""
        return 1.0 / (1.0 + self._odds_dead(x, t_x, big_t))

    def expected_purchases(self, t: float, x: np.ndarray, t_x: np.ndarray, big_t: np.ndarray) -> np.ndarray:
        """E[purchases in (T, T+t] | x, t_x, T], eq. (10)."""
        r, alpha, a, b = self.r, self.alpha, self.a, self.b
        if abs(a - 1.0) < 1e-9:  # eq. (10) has a removable singularity at a == 1
            a = 1.0 + 1e-6
        z = t / (alpha + big_t + t)
        hyp = special.hyp2f1(r + x, b + x, a + b + x - 1, z)
        with np.errstate(over="ignore", invalid="ignore"):
            head = (a + b + x - 1) / (a - 1)
            tail = 1.0 - np.exp((r + x) * (np.log(alpha + big_t) - np.log(alpha + big_t + t))) * hyp
        out = head * tail / (1.0 + self._odds_dead(x, t_x, big_t))
        return np.clip(np.nan_to_num(out, nan=0.0, posinf=0.0), 0.0, None)


def bgnbd_log_likelihood(
    params: np.ndarray, x: np.ndarray, t_x: np.ndarray, big_t: np.ndarray, weights: np.ndarray | None = None
) -> float:
    r, alpha, a, b = params
    a1 = special.gammaln(r + x) - special.gammaln(r) + r * np.log(alpha)
    a2 = special.gammaln(a + b) + special.gammaln(b + x) - special.gammaln(b) - special.gammaln(a + b + x)
    a3 = -(r + x) * np.log(alpha + big_t)
    with np.errstate(divide="ignore", invalid="ignore"):
        a4 = np.where(
            x > 0,
            np.log(a) - np.log(np.maximum(b + x - 1, 1e-12)) - (r + x) * np.log(alpha + t_x),
            -np.inf,
        )
    ll = a1 + a2 + np.logaddexp(a3, a4)
    return float(np.sum(ll if weights is None else ll * weights))


def fit_bgnbd(x: np.ndarray, t_x: np.ndarray, big_t: np.ndarray, penalty: float = 0.0) -> BgNbd:
    """Maximum likelihood (log-parameters, L-BFGS-B). Identical (x, t_x, T) rows are collapsed
    into weights first. ``penalty`` (L2 on the log-parameters) keeps a tiny sample finite."""
    rows = np.column_stack([x, t_x, big_t])
    uniq, counts = np.unique(rows, axis=0, return_counts=True)
    ux, ut, uT = uniq[:, 0], uniq[:, 1], uniq[:, 2]
    w = counts.astype(np.float64)
    n = w.sum()

    def loss(log_p: np.ndarray) -> float:
        p = np.exp(log_p)
        value = -bgnbd_log_likelihood(p, ux, ut, uT, w) / n + penalty * float(log_p @ log_p)
        return value if np.isfinite(value) else 1e12

    start = np.log([1.0, max(float(np.mean(big_t)), 1.0), 1.0, 1.0])
    best = optimize.minimize(loss, start, method="L-BFGS-B", bounds=[(-12.0, 12.0)] * 4)
    r, alpha, a, b = np.exp(best.x)
    return BgNbd(float(r), float(alpha), float(a), float(b))


# --------------------------------------------------------------------------- Gamma-Gamma
@dataclass(frozen=True)
class GammaGamma:
    """Fitted Gamma-Gamma parameters of spend per purchase occasion."""

    p: float
    q: float
    v: float

    def as_dict(self) -> dict[str, float]:
        return {"p": self.p, "q": self.q, "v": self.v}

    @property
    def population_mean(self) -> float:
        return self.p * self.v / (self.q - 1) if self.q > 1 else float("nan")

    def expected_value(self, x: np.ndarray, monetary: np.ndarray) -> np.ndarray:
        """E[spend per purchase | x, m_x], eq. (5): a weighted mean of the population mean and the
        member's own mean, the member's weight growing with x. x == 0 -> the population mean."""
        p, q, v = self.p, self.q, self.v
        q = max(q, 1.0 + 1e-6)
        weight = p * x / (p * x + q - 1)
        return (1 - weight) * (v * p / (q - 1)) + weight * monetary


def gamma_gamma_log_likelihood(
    params: np.ndarray, x: np.ndarray, monetary: np.ndarray, weights: np.ndarray | None = None
) -> float:
    p, q, v = params
    ll = (
        special.gammaln(p * x + q)
        - special.gammaln(p * x)
        - special.gammaln(q)
        + q * np.log(v)
        + (p * x - 1) * np.log(monetary)
        + p * x * np.log(x)
        - (p * x + q) * np.log(x * monetary + v)
    )
    return float(np.sum(ll if weights is None else ll * weights))


def fit_gamma_gamma(x: np.ndarray, monetary: np.ndarray, penalty: float = 0.0) -> GammaGamma | None:
    """Fit on members with repeat purchases and positive spend; None when there are too few."""
    keep = (x > 0) & (monetary > 0)
    if int(keep.sum()) < 10:
        return None
    xs, ms = x[keep], monetary[keep]
    n = float(xs.size)

    def loss(log_p: np.ndarray) -> float:
        value = -gamma_gamma_log_likelihood(np.exp(log_p), xs, ms) / n + penalty * float(log_p @ log_p)
        return value if np.isfinite(value) else 1e12

    start = np.log([2.0, 3.0, max(float(np.mean(ms)), 1.0)])
    best = optimize.minimize(loss, start, method="L-BFGS-B", bounds=[(-12.0, 14.0)] * 3)
    p, q, v = np.exp(best.x)
    return GammaGamma(float(p), float(q), float(v))


# --------------------------------------------------------------------------- simulation
def simulate_bgnbd(model: BgNbd, n: int, big_t: float, seed: int = 0) -> tuple[np.ndarray, ...]:
    """Members drawn from the BG/NBD's own story, all born at 0 and observed until ``big_t``:
    returns (x, t_x, T) as the model defines them (for parameter-recovery tests)."""
    rng = np.random.default_rng(seed)
    lam = rng.gamma(model.r, 1.0 / model.alpha, n)
    p = rng.beta(model.a, model.b, n)
    x = np.zeros(n)
    t_x = np.zeros(n)
    t = np.zeros(n)
    alive = np.ones(n, dtype=bool)
    while alive.any():
        idx = np.flatnonzero(alive)
        t[idx] += rng.exponential(1.0 / lam[idx])
        past = t[idx] > big_t
        alive[idx[past]] = False
        bought = idx[~past]
        x[bought] += 1
        t_x[bought] = t[bought]
        # after each purchase the member drops out with probability p
        dies = rng.random(bought.size) < p[bought]
        alive[bought[dies]] = False
    return x, t_x, np.full(n, big_t)
