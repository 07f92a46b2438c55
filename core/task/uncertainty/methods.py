"""Which interval each metric gets, and the two entry points that give every interval the app, CLI and sweeps show.

Chosen by coverage (``docs/uncertainty.md``: simulations where the true value is known, n = 50,
200 and 1,000, calibrated, over- and under-confident models, and pairs of models on the same
examples):

* **accuracy**: the Wilson score interval (`core.task.uncertainty.intervals`); its paired
  difference the percentile bootstrap (and McNemar's test beside it).
* **Brier score, NLL**: the BCa bootstrap (`core.task.uncertainty.intervals.bca`), for one evaluation
  and for a paired difference. They are means of per-example values, nearly unbiased, and every
  bootstrap covers them within a point or two of 95% at n = 200 and 1,000; BCa was closest at n = 50
  (one evaluation) and for a change at n = 200, where the percentile interval fell to about 90%.
* **ECE, adaptive ECE, MCE, smooth ECE**: test inversion of a simulation of correctness along the
  sample's own miscalibration (`core.task.uncertainty.inversion`), raised to contain the estimate;
  a paired difference gets Berger & Boos's union over the base side's unknown calibration error.
  The bootstrap methods (percentile, basic, BCa, debiased) miss the truth far more often than 5%
  there: these metrics are biased upwards by an amount that depends on the true value.

Every interval contains the value it is shown with (the tests check it over random inputs). The
reported values stay the plug-in metrics of `core.task.calibration`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ...errors import UserError
from .. import calibration as cal
from .common import _check_bins, _inputs
from .intervals import (
    Difference,
    Interval,
    bca_difference,
    bca_interval,
    bootstrap_difference,
    jackknife_means,
    wilson,
)
from .inversion import CALIBRATION_ERRORS, _Paired, _Path, couple, path, side_interval
from .resampling import KEYS, N_RESAMPLES, calibration_draws, per_example, resample_counts

BOOTSTRAPPED = ("accuracy", "brier", "nll")
"""The metrics whose intervals of differences are bootstrapped (accuracy: percentile; the others: `BCA`)."""
BCA = ("brier", "nll")
"""The metrics whose intervals, and those of their differences, are BCa bootstraps."""


@dataclass(frozen=True)
class Side:
    """One evaluation's metrics (a subset ``keys`` of `KEYS`) with what their intervals and paired differences
    are built from: bootstrap draws, jackknife means, calibration-error paths, and the intervals themselves."""

    probs: np.ndarray
    values: dict[str, float]
    draws: dict[str, np.ndarray]
    jackknife: dict[str, np.ndarray]
    paths: dict[str, _Path]
    intervals: dict[str, Interval]


def side(probs: np.ndarray, labels: np.ndarray, counts: np.ndarray, n_bins: int = cal.DEFAULT_BINS,
         n_sims: int = N_RESAMPLES, seed: int = 0, keys: Sequence[str] = KEYS) -> Side:
    """One evaluation's `Side` on the resamples ``counts`` and ``n_sims`` seeded simulations of correctness.

    Every side compared with another must share ``counts``, ``n_sims`` and ``seed``."""
    unknown = set(keys) - set(KEYS)
    if unknown:
        raise UserError(f"unknown metric(s) {sorted(unknown)}; known: {', '.join(KEYS)}")
    everything = cal.report(probs, labels, n_bins).as_dict()
    values = {k: float(everything[k]) for k in keys}
    draws = calibration_draws(probs, labels, counts, n_bins, keys=[k for k in BOOTSTRAPPED if k in keys])
    jackknife = {k: jackknife_means(v) for k, v in per_example(probs, labels, [k for k in BCA if k in keys]).items()}
    paths = {k: path(k, probs, labels, n_bins, n_sims, seed, values[k]) for k in CALIBRATION_ERRORS if k in keys}
    right = int((probs.argmax(axis=1) == labels).sum())
    out = {}
    for key in keys:
        if key == "accuracy":
            out[key] = Interval(values[key], *wilson(right, len(labels)))
        elif key in paths:
            out[key] = Interval(values[key], *side_interval(paths[key]))
        else:
            out[key] = bca_interval(values[key], draws[key], jackknife[key])
    return Side(probs, values, draws, jackknife, paths, out)


def differences(base: Side, other: Side, seed: int = 0) -> dict[str, Difference]:
    """The paired difference (other - base) of every metric the two sides share, on the same examples (the
    method of each metric as in the module notes); exactly 0, [0, 0], p = 1 when the probabilities are equal."""
    keys = [k for k in base.values if k in other.values]
    if np.array_equal(base.probs, other.probs):
        return {k: Difference(0.0, 0.0, 0.0, 1.0) for k in keys}
    rng = np.random.default_rng([seed, 1])
    out = {}
    for key in keys:
        value = other.values[key] - base.values[key]
        if key in BCA:
            out[key] = bca_difference(value, other.draws[key] - base.draws[key],
                                      other.jackknife[key] - base.jackknife[key])
        elif key in BOOTSTRAPPED:
            out[key] = bootstrap_difference(value, other.draws[key] - base.draws[key])
        else:
            out[key] = _Paired(base.paths[key], other.paths[key],
                               couple(base.paths[key], other.paths[key], rng)).difference()
    return out


def calibration_intervals(probs: np.ndarray, labels: np.ndarray, n_bins: int = cal.DEFAULT_BINS,
                          n_resamples: int = N_RESAMPLES, seed: int = 0) -> dict[str, Interval]:
    """Every metric of one evaluation with its 95% interval (see the module notes for which method each gets).

    ``n_resamples`` is the number of bootstrap resamples and of simulations of correctness; both
    are seeded by ``seed`` (the simulations are the noise floor's, `core.task.uncertainty.noise`).
    """
    probs, labels = _inputs(probs, labels)
    _check_bins(n_bins)
    return side(probs, labels, resample_counts(len(labels), n_resamples, seed), n_bins, n_resamples, seed).intervals


def paired_differences(probs_base: np.ndarray, probs_other: np.ndarray, labels: np.ndarray,
                       n_bins: int = cal.DEFAULT_BINS, n_resamples: int = N_RESAMPLES, seed: int = 0
                       ) -> tuple[dict[str, Interval], dict[str, Interval], dict[str, Difference]]:
    """Each side's intervals (as `calibration_intervals` gives them) and the paired difference (other -
    base) of every metric, on the same examples. A model compared with itself differs by 0, [0, 0], p = 1."""
    probs_base, labels = _inputs(probs_base, labels)
    probs_other, _ = _inputs(probs_other, labels)
    if probs_base.shape != probs_other.shape:
        raise UserError(f"the two sides have different shapes ({probs_base.shape} vs {probs_other.shape})")
    _check_bins(n_bins)
    counts = resample_counts(len(labels), n_resamples, seed)
    a, b = (side(p, labels, counts, n_bins, n_resamples, seed) for p in (probs_base, probs_other))
    return a.intervals, b.intervals, differences(a, b, seed)
