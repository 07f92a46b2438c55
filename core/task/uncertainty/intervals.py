"""Values with intervals, paired differences and the closed forms (Wilson, McNemar, sample size).

* **Accuracy** gets the Wilson score interval (good coverage at any n, never outside [0, 1]): with
  p = k / n and z the normal quantile, ``(p + z^2/2n +- z sqrt(p(1-p)/n + z^2/4n^2)) / (1 + z^2/n)``.
* **Percentile intervals** of resampled draws (`core.task.uncertainty.resampling`) are the 2.5% and
  97.5% quantiles of the draws (numpy's linear interpolation).
* **A paired difference** (other - base) of draws taken on the same resamples: its interval is the
  middle 95% of the per-resample differences, its p-value the two-sided bootstrap p,
  ``2 * min(P*(d <= 0), P*(d >= 0))`` (with +1 smoothing), so "p < 0.05" and "the interval excludes
  0" agree. A change is **beyond noise** when its interval excludes 0.
* **Accuracy flips** also get the exact McNemar test: of the examples on which the two sides
  disagree in correctness, ``b`` went right -> wrong and ``c`` wrong -> right; under "no change" b
  is Binomial(b + c, 1/2), and the two-sided p is ``min(1, 2 * P(X <= min(b, c)))``.
* **Sample size to resolve a change** (`examples_needed`): the paired SD of a difference shrinks
  as 1 / sqrt(n), so a true change ``delta`` is detected with power ``power`` at
  ``n * ((z_(1 - a/2) + z_power) * sd / delta) ** 2`` examples.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.special import ndtr, ndtri
from scipy.stats import binom, norm

from ...errors import UserError

LEVEL = 0.95


def _plain_floats(result: object) -> None:
    """Store every field as a Python float: numpy scalars would leak numpy booleans (``beyond_noise``)
    into JSON, which cannot write them."""
    for name, value in vars(result).items():
        object.__setattr__(result, name, float(value))


@dataclass(frozen=True)
class Interval:
    """A value with its 95% interval."""

    value: float
    lo: float
    hi: float

    def __post_init__(self) -> None:
        _plain_floats(self)

    def as_dict(self) -> dict:
        return {"value": self.value, "ci": [self.lo, self.hi]}


@dataclass(frozen=True)
class Difference:
    """A paired difference (other - base) with its 95% interval and two-sided p-value."""

    value: float
    lo: float
    hi: float
    p_value: float

    def __post_init__(self) -> None:
        _plain_floats(self)

    @property
    def beyond_noise(self) -> bool:
        """Whether the interval excludes 0."""
        return self.lo > 0 or self.hi < 0

    def as_dict(self) -> dict:
        return {"value": self.value, "ci": [self.lo, self.hi], "p_value": self.p_value,
                "beyond_noise": self.beyond_noise}


@dataclass(frozen=True)
class McNemar:
    right_to_wrong: int
    wrong_to_right: int
    p_value: float

    def as_dict(self) -> dict:
        return {"right_to_wrong": self.right_to_wrong, "wrong_to_right": self.wrong_to_right,
                "p_value": self.p_value}


def wilson(k: int, n: int, level: float = LEVEL) -> tuple[float, float]:
    """The Wilson score interval of a proportion k / n ((0, 1) when n is 0)."""
    if n <= 0:
        return 0.0, 1.0
    if not 0 <= k <= n:
        raise UserError(f"a count of {k} out of {n} is not a proportion")
    z = norm.ppf(1 - (1 - level) / 2)
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    # at k = 0 (k = n) the lower (upper) end is exactly 0 (1); say so rather than leave rounding
    lo = 0.0 if k == 0 else max(0.0, centre - half)
    hi = 1.0 if k == n else min(1.0, centre + half)
    return float(lo), float(hi)


def mcnemar(correct_base: Sequence[bool], correct_other: Sequence[bool]) -> McNemar:
    """The exact two-sided McNemar test of two sides' correctness on the same examples."""
    a, b = np.asarray(correct_base, dtype=bool), np.asarray(correct_other, dtype=bool)
    if a.shape != b.shape:
        raise UserError(f"McNemar's test needs the same examples on both sides ({a.size} vs {b.size})")
    right_to_wrong, wrong_to_right = int((a & ~b).sum()), int((~a & b).sum())
    total = right_to_wrong + wrong_to_right
    p = 1.0 if total == 0 else min(1.0, 2 * float(binom.cdf(min(right_to_wrong, wrong_to_right), total, 0.5)))
    return McNemar(right_to_wrong, wrong_to_right, p)


def examples_needed(sd: float, n: int, delta: float, power: float = 0.8, level: float = LEVEL) -> int:
    """The sample size at which a true change of ``delta`` is detected with ``power``, given the paired SD
    ``sd`` of the difference observed at ``n`` examples (the SD shrinks as 1 / sqrt(n))."""
    if delta <= 0:
        raise UserError(f"the change to resolve must be positive (got {delta})")
    z = norm.ppf(1 - (1 - level) / 2) + norm.ppf(power)
    return max(1, math.ceil(n * (z * sd / delta) ** 2))


def _percentile(draws: np.ndarray, level: float = LEVEL) -> tuple[float, float]:
    lo, hi = np.quantile(draws, [(1 - level) / 2, 1 - (1 - level) / 2])
    return float(lo), float(hi)


JACKKNIFE_GROUPS = 200
"""BCa's acceleration comes from a jackknife over at most this many groups of examples."""


def jackknife_means(values: np.ndarray) -> np.ndarray:
    """The mean of per-example ``values`` with each group of examples left out in turn (example i is in
    group i mod the number of groups, at most `JACKKNIFE_GROUPS`; one example: its own mean)."""
    n = len(values)
    if n == 1:
        return np.asarray(values, dtype=np.float64).copy()
    groups = min(n, JACKKNIFE_GROUPS)
    member = np.arange(n) % groups
    return (values.sum() - np.bincount(member, values, groups)) / (n - np.bincount(member, minlength=groups))


def bca(value: float, draws: np.ndarray, jackknife: np.ndarray, level: float = LEVEL) -> tuple[float, float]:
    """The bias-corrected and accelerated bootstrap interval (Efron 1987) of ``value``, not yet widened to it.

    ``z0`` is the normal quantile of the share of ``draws`` below the value (ties count half; clipped
    to half a draw from 0 and 1, where it would be infinite), the acceleration ``a = sum d^3 / (6 (sum
    d^2)^1.5)`` with ``d`` the ``jackknife`` values' deviations from their mean, and the interval the
    draws' quantiles at ``Phi(z0 + (z0 + z) / (1 - a (z0 + z)))`` for ``z`` the two normal quantiles.
    """
    b = len(draws)
    share = (np.sum(draws < value) + 0.5 * np.sum(draws == value)) / b
    z0 = ndtri(np.clip(share, 0.5 / b, 1 - 0.5 / b))
    dev = jackknife.mean() - jackknife
    spread = 6 * np.sum(dev**2) ** 1.5
    accel = np.sum(dev**3) / spread if spread > 0 else 0.0
    z = ndtri(np.array([(1 - level) / 2, 1 - (1 - level) / 2]))
    lo, hi = np.quantile(draws, ndtr(z0 + (z0 + z) / (1 - accel * (z0 + z))))
    return float(lo), float(hi)


def bca_interval(value: float, draws: np.ndarray, jackknife: np.ndarray) -> Interval:
    """`bca`, widened to contain the value."""
    lo, hi = bca(value, draws, jackknife)
    return Interval(float(value), min(lo, value), max(hi, value))


def bca_difference(value: float, draws: np.ndarray, jackknife: np.ndarray) -> Difference:
    """A paired difference with its `bca` interval (widened to contain it) and the p-value that agrees with it:
    the smallest alpha (to 1e-4, at least 2 / (draws + 1)) at which the widened 1 - alpha interval excludes 0."""
    def excludes(alpha: float) -> bool:
        lo, hi = bca(value, draws, jackknife, 1 - alpha)
        return min(lo, value) > 0 or max(hi, value) < 0

    a, b = 2 / (len(draws) + 1), 1.0 - 1e-9
    if not excludes(b):
        p = 1.0
    elif excludes(a):
        p = a
    else:
        while b - a > 1e-4:
            mid = (a + b) / 2
            a, b = (a, mid) if excludes(mid) else (mid, b)
        p = b
    lo, hi = bca(value, draws, jackknife)
    return Difference(float(value), min(lo, value), max(hi, value), float(p))


def bootstrap_difference(value: float, draws: np.ndarray) -> Difference:
    """A paired difference ``value`` (other - base) with the percentile interval and bootstrap p-value of its
    per-resample ``draws`` (each the difference on one resample applied to both sides)."""
    lo, hi = _percentile(draws)
    b = len(draws)
    p = min(1.0, 2 * min((np.sum(draws <= 0) + 1) / (b + 1), (np.sum(draws >= 0) + 1) / (b + 1)))
    return Difference(float(value), lo, hi, float(p))
