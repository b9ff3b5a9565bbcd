"""Intervals and tests for the reports (docs/experiments.md, "Intervals"), on scipy.stats.

- a proportion: Wilson score interval (``scipy.stats.binomtest(...).proportion_ci``), which stays
  inside [0, 1] and is honest for small counts, unlike the normal approximation;
- a difference of two proportions: Newcombe's hybrid score interval (method 10 of Newcombe 1998),
  built from the two Wilson intervals; its p-value from the pooled two-proportion z-test;
- a mean (revenue per member, zeros included) and a difference of two means: Student / Welch t
  intervals (``scipy.stats.ttest_1samp`` / ``ttest_ind(equal_var=False)``);
- sample-ratio mismatch: Pearson's chi-square of members per variant against the configured
  shares (``scipy.stats.chisquare``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats

Z95 = 1.959963984540054


@dataclass(frozen=True)
class Estimate:
    value: float
    low: float
    high: float

    def as_dict(self) -> dict[str, float]:
        return {"value": self.value, "low": self.low, "high": self.high}

    @property
    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0


NAN = Estimate(math.nan, math.nan, math.nan)


def proportion(k: int, n: int) -> Estimate:
    if n <= 0:
        return NAN
    ci = stats.binomtest(int(k), int(n)).proportion_ci(confidence_level=0.95, method="wilson")
    return Estimate(k / n, float(ci.low), float(ci.high))


def proportion_difference(k1: int, n1: int, k0: int, n0: int) -> tuple[Estimate, float]:
    """p1 - p0 with Newcombe's interval, and the two-sided p-value of the pooled z-test."""
    if n1 <= 0 or n0 <= 0:
        return NAN, math.nan
    a, b = proportion(k1, n1), proportion(k0, n0)
    d = a.value - b.value
    low = d - math.sqrt((a.value - a.low) ** 2 + (b.high - b.value) ** 2)
    high = d + math.sqrt((a.high - a.value) ** 2 + (b.value - b.low) ** 2)
    pooled = (k1 + k0) / (n1 + n0)
    se = math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n0))
    p = 1.0 if se == 0 else float(2 * stats.norm.sf(abs(d) / se))
    return Estimate(d, low, high), p


def mean(values: np.ndarray) -> Estimate:
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        return NAN
    m = float(values.mean())
    if values.size < 2 or float(values.std()) == 0.0:
        # one member, or every member alike (no buyer: all 0): the t interval is undefined or
        # a zero-width one that looks certain; shown as "-"
        return Estimate(m, math.nan, math.nan)
    ci = stats.ttest_1samp(values, 0.0).confidence_interval(0.95)
    return Estimate(m, float(ci.low), float(ci.high))


def mean_difference(treated: np.ndarray, control: np.ndarray) -> tuple[Estimate, float]:
    t, c = np.asarray(treated, dtype=np.float64), np.asarray(control, dtype=np.float64)
    if t.size < 2 or c.size < 2:
        return NAN, math.nan
    d = float(t.mean() - c.mean())
    if float(t.std()) == 0.0 and float(c.std()) == 0.0:
        return Estimate(d, math.nan, math.nan), math.nan  # no spread to judge a difference by
    res = stats.ttest_ind(t, c, equal_var=False)
    ci = res.confidence_interval(0.95)
    return Estimate(d, float(ci.low), float(ci.high)), float(res.pvalue)


def sample_ratio(observed: dict[str, int], shares: dict[str, float]) -> float:
    """p-value of the chi-square test that members split as configured (nan with < 2 groups).
    A configured variant absent from ``observed`` counts as 0 members: a variant that crashed
    and served no one is the mismatch this test is for."""
    names = [n for n in shares if shares[n] > 0]
    total = sum(observed.get(n, 0) for n in names)
    if len(names) < 2 or total == 0:
        return math.nan
    weight = sum(shares[n] for n in names)
    expected = [total * shares[n] / weight for n in names]
    return float(stats.chisquare([observed.get(n, 0) for n in names], expected).pvalue)
