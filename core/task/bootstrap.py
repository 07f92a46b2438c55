"""From resample draws to intervals and paired differences that always contain their own estimate.

Shared by the prediction-set (`core.task.conformal`) and selective-prediction
(`core.task.selective`) metrics; the resampling itself is `core.task.uncertainty.resample_counts`.

* **Interval.** The percentile bootstrap: the 2.5% and 97.5% quantiles of the draws (numpy's
  linear interpolation), as for every other metric. A percentile interval of a biased or
  discontinuous statistic can exclude the estimate itself (a sample's largest coverage under a
  target error, say, or an empty-set share that resampled thresholds only ever raise); the interval
  reported is then stretched to reach the estimate (``[min(lo, value), max(hi, value)]``), so it
  always contains its value.
* **Difference** (other - base, draws on shared resamples). The same interval, stretched the same
  way. Its two-sided p-value is the smallest level at which that interval excludes 0: with ``c``
  the number of draws on the far side of 0 from the estimate (``d <= 0`` for a positive estimate,
  ``d >= 0`` for a negative one), ``p = min(1, 2 (c + 1) / (B + 1))``, and 1 for an estimate of
  exactly 0. When the estimate and most draws agree in sign this is the project's bootstrap p,
  ``2 min(P*(d <= 0), P*(d >= 0))`` with +1 smoothing; when they disagree the stretched interval
  holds 0 and the p-value says so too. A side compared with itself: 0, [0, 0], p = 1.
* **Exact decimals.** A level the user types (alpha = 0.18, a 5% target error, 80% coverage) is
  read as the decimal written, not as its binary float: ``Fraction(repr(x))`` gives 9/50 for 0.18,
  so ranks such as ceil((n + 1)(1 - alpha)) come out exact.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Generic, TypeVar

import numpy as np

from ..errors import UserError
from .uncertainty import LEVEL, Difference, Interval
from .uncertainty.intervals import _percentile


def interval(value: float, draws: np.ndarray, level: float = LEVEL) -> Interval:
    """``value`` with the percentile interval of ``draws``, stretched to contain ``value``."""
    lo, hi = _percentile(np.asarray(draws, dtype=np.float64), level)
    value = float(value)
    return Interval(value, min(lo, value), max(hi, value))


def difference(value: float, draws: np.ndarray, level: float = LEVEL) -> Difference:
    """A paired difference with its stretched percentile interval and the p-value that agrees with it."""
    draws = np.asarray(draws, dtype=np.float64)
    value = float(value)
    lo, hi = _percentile(draws, level)
    if value == 0:
        p = 1.0
    else:
        far = np.sum(draws <= 0) if value > 0 else np.sum(draws >= 0)
        p = min(1.0, 2 * (float(far) + 1) / (len(draws) + 1))
    return Difference(value, min(lo, value), max(hi, value), p)


R = TypeVar("R")


@dataclass(frozen=True)
class PairedReports(Generic[R]):
    """Two models' reports on the same examples (prediction sets, or abstention): each side's intervals, and
    the paired differences (other - base) on shared resamples."""

    base: R
    other: R
    base_intervals: dict[str, Interval]
    other_intervals: dict[str, Interval]
    differences: dict[str, Difference]

    def as_dict(self) -> dict:
        return {"base": self.base.as_dict(), "other": self.other.as_dict(),
                "base_intervals": {k: v.as_dict() for k, v in self.base_intervals.items()},
                "other_intervals": {k: v.as_dict() for k, v in self.other_intervals.items()},
                "differences": {k: v.as_dict() for k, v in self.differences.items()}}


def paired_reports(base: R, other: R, base_draws: Mapping[str, Any], other_draws: Mapping[str, Any],
                   keys: Sequence[str]) -> PairedReports[R]:
    """Each side's `interval` and the paired `difference` of every metric of ``keys`` (a report's attribute),
    from per-resample draws on the same resamples."""
    return PairedReports(
        base, other, {k: interval(getattr(base, k), base_draws[k]) for k in keys},
        {k: interval(getattr(other, k), other_draws[k]) for k in keys},
        {k: difference(getattr(other, k) - getattr(base, k), other_draws[k] - base_draws[k]) for k in keys})


def exact_fraction(x: float | str | Fraction, name: str) -> Fraction:
    """``x`` as the exact rational of the decimal written (0.18 -> 9/50), or a `UserError`."""
    if isinstance(x, bool):
        raise UserError(f"{name} must be a number (got {x!r})")
    if isinstance(x, Fraction):
        return x
    if isinstance(x, str):
        try:
            return Fraction(x.strip())
        except (ValueError, ZeroDivisionError):
            raise UserError(f"{name} must be a number such as 0.1 (got {x!r})") from None
    try:
        f = float(x)
    except (TypeError, ValueError):
        raise UserError(f"{name} must be a number (got {x!r})") from None
    if not math.isfinite(f):
        raise UserError(f"{name} must be a finite number (got {f})")
    return Fraction(repr(f))


def ceil_fraction(x: Fraction) -> int:
    """The smallest integer >= ``x``, exactly."""
    return -((-x.numerator) // x.denominator)
