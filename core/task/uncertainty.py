"""How sure each number is: intervals, paired differences, significance and the calibration noise floor.

Every interval is 95% and every resampling is seeded, so the same inputs give the same intervals.

* **One evaluation.** Accuracy gets the Wilson score interval (exact enough at any n, never outside
  [0, 1]). Every other metric gets a percentile bootstrap: the examples are resampled with
  replacement ``N_RESAMPLES`` times, the metric recomputed on each resample, and the middle 95% of
  those values is the interval. Resamples are drawn as a count matrix (how often each example is
  drawn) and every metric is computed from it with matrix products, so 1,000 resamples cost
  milliseconds.
* **Two evaluations of the same examples** (full and pruned, or any two masks). The *same*
  resamples are applied to both sides, and the interval of the difference (other - base) is the
  middle 95% of the per-resample differences: a paired bootstrap, much narrower than comparing two
  separate intervals because both sides share each example's difficulty. Its p-value is the
  two-sided bootstrap p, ``2 * min(P*(d <= 0), P*(d >= 0))`` (with +1 smoothing), so "p < 0.05"
  and "the interval excludes 0" agree. A change is **beyond noise** when its interval excludes 0.
  A model compared with itself gets difference 0, interval [0, 0], p = 1.
* **Accuracy flips** also get the exact McNemar test: of the examples on which the two sides
  disagree in correctness, ``b`` went right -> wrong and ``c`` wrong -> right; under "no change" b
  is Binomial(b + c, 1/2), and the two-sided p is ``min(1, 2 * P(X <= min(b, c)))``.
* **The calibration noise floor.** Even a perfectly calibrated model shows a positive ECE on a
  finite sample. Holding the model's confidences fixed, correctness is simulated as
  Bernoulli(confidence) many times; each simulation's ECE (binned, adaptive and smooth) gives the
  distribution a perfectly calibrated model with *these* confidences would show at *this* n. An
  observed ECE at or below its 95th percentile is "consistent with perfect calibration". The same
  simulation gives each reliability bin its consistency band (Bröcker & Smith 2007): the range in
  which a calibrated model's bin accuracy falls in 95% of samples.
* **Smooth ECE on resamples** uses the same kernel and fixed-point rule as
  `core.task.calibration.smooth_ece`, vectorised: a coarser grid (at least 128 points, about 2.5
  per bandwidth), a fixed set of bandwidths around the sample's own, and the fixed point
  interpolated between them. On the sample itself it agrees with the exact value within about
  0.002, far below the bootstrap spread; the reported value is always the exact one.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.stats import binom, norm

from ..errors import UserError
from . import calibration as cal

N_RESAMPLES = 1000
LEVEL = 0.95
KEYS = ("accuracy", "ece", "adaptive_ece", "smooth_ece", "mce", "brier", "nll")
"""The metrics `calibration_draws` computes on every resample."""
NOISE_FLOOR_KEYS = ("ece", "adaptive_ece", "smooth_ece")


@dataclass(frozen=True)
class Interval:
    """A value with its 95% interval."""

    value: float
    lo: float
    hi: float

    def as_dict(self) -> dict:
        return {"value": self.value, "ci": [self.lo, self.hi]}


@dataclass(frozen=True)
class Difference:
    """A paired difference (other - base) with its 95% interval and two-sided p-value."""

    value: float
    lo: float
    hi: float
    p_value: float

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


@dataclass(frozen=True)
class NoiseFloor:
    """What a perfectly calibrated model with the same confidences would show at the same n."""

    metric: str
    mean: float
    q95: float
    observed: float

    @property
    def consistent(self) -> bool:
        """Whether the observed value is within what chance gives a perfectly calibrated model (95%)."""
        return self.observed <= self.q95

    def as_dict(self) -> dict:
        return {"metric": self.metric, "mean": self.mean, "q95": self.q95, "observed": self.observed,
                "consistent": self.consistent}


# ---------------------------------------------------------------- inputs


def _inputs(probs: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    probs, labels = np.asarray(probs, dtype=np.float64), np.asarray(labels)
    if probs.ndim != 2 or len(probs) == 0:
        raise UserError(f"probabilities must be a non-empty [examples, answers] array (got shape {probs.shape})")
    if labels.shape != (len(probs),):
        raise UserError(f"there are {len(probs)} rows of probabilities but {labels.size} labels")
    if labels.size and (labels.min() < 0 or labels.max() >= probs.shape[1]):
        raise UserError(f"labels must be answer indices 0-{probs.shape[1] - 1} (got {labels.min()}-{labels.max()})")
    return probs, labels.astype(int)


def _check_counts(counts: np.ndarray, n: int) -> np.ndarray:
    counts = np.asarray(counts)
    if counts.ndim != 2 or counts.shape[1] != n:
        raise UserError(f"the resample counts cover {counts.shape[-1]} examples, not {n}")
    return counts.astype(np.float64)


# ---------------------------------------------------------------- closed forms


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
    return float(max(0.0, centre - half)), float(min(1.0, centre + half))


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


# ---------------------------------------------------------------- resampling


def resample_counts(n: int, n_resamples: int = N_RESAMPLES, seed: int = 0) -> np.ndarray:
    """[n_resamples, n]: how many times each example is drawn in each bootstrap resample of size n."""
    if n < 1 or n_resamples < 1:
        raise UserError(f"resampling needs at least one example and one resample (got n={n}, "
                        f"resamples={n_resamples})")
    drawn = np.random.default_rng(seed).integers(0, n, size=(n_resamples, n))
    flat = (drawn + n * np.arange(n_resamples)[:, None]).ravel()
    return np.bincount(flat, minlength=n_resamples * n).reshape(n_resamples, n).astype(np.int32)


def _percentile(draws: np.ndarray, level: float = LEVEL) -> tuple[float, float]:
    lo, hi = np.quantile(draws, [(1 - level) / 2, 1 - (1 - level) / 2])
    return float(lo), float(hi)


def _difference(value: float, draws: np.ndarray) -> Difference:
    lo, hi = _percentile(draws)
    b = len(draws)
    p = min(1.0, 2 * min((np.sum(draws <= 0) + 1) / (b + 1), (np.sum(draws >= 0) + 1) / (b + 1)))
    return Difference(float(value), lo, hi, float(p))


def _onehot_bins(conf: np.ndarray, n_bins: int) -> np.ndarray:
    return np.eye(n_bins)[cal._bin_index(conf, n_bins)]


def _binned(weights: np.ndarray, residual: np.ndarray, onehot: np.ndarray, n: float
            ) -> tuple[np.ndarray, np.ndarray]:
    """ECE and MCE of every row of ``weights`` (residual = correct - confidence per example)."""
    gap = (weights * residual) @ onehot
    count = weights @ onehot
    ece = np.abs(gap).sum(axis=1) / n
    with np.errstate(invalid="ignore", divide="ignore"):
        per_bin = np.where(count > 0, np.abs(gap) / np.where(count > 0, count, 1), -np.inf)
    return ece, per_bin.max(axis=1)


def _adaptive(weights: np.ndarray, residual: np.ndarray, order: np.ndarray, n_bins: int) -> np.ndarray:
    """Adaptive ECE of every row of ``weights``: equal-mass chunks of each resample's sorted units.

    Copies of one example may straddle a chunk boundary, so the residual sum up to unit position p
    is read off cumulative sums, linearly inside an example's block of copies.
    """
    w, v = weights[:, order], residual[order]
    total = int(round(w[0].sum()))
    k = min(n_bins, total)
    sizes = np.full(k, total // k)
    sizes[: total % k] += 1
    bounds = np.concatenate([[0], np.cumsum(sizes)])
    cw, cr = np.cumsum(w, axis=1), np.cumsum(w * v, axis=1)
    rows, n = w.shape
    offset = (total + 1) * np.arange(rows)[:, None]
    idx = np.searchsorted((cw + offset).ravel(), (bounds[None, :] + offset).ravel(), side="left")
    idx = (idx.reshape(rows, -1) - n * np.arange(rows)[:, None]).clip(0, n - 1)
    at = np.take_along_axis(cr, idx, 1) - (np.take_along_axis(cw, idx, 1) - bounds[None, :]) * v[idx]
    return np.abs(np.diff(at, axis=1)).sum(axis=1) / total


_SIGMA_STEP = 1.2  # ratio between neighbouring bandwidths of the lattice
_SIGMAS = 1e-3 * _SIGMA_STEP ** np.arange(int(np.log(1000) / np.log(_SIGMA_STEP)) + 2)
"""Every bandwidth the vectorised smooth ECE may use: a fixed lattice, so kernels are built once."""


@functools.lru_cache(maxsize=256)
def _kernel(points: int, j: int) -> np.ndarray:
    """[points, points] reflected Gaussian kernel of bandwidth ``_SIGMAS[j]`` on a grid over [0, 1]."""
    sigma = _SIGMAS[j]
    target, source = np.arange(points)[:, None], np.arange(points)[None, :]
    half, last = (points - 1) / 2, points - 1
    # a source's images as relplot's reflected convolution sees them: itself, mirrored at 0, mirrored at 1
    images = ((target - source, True), (target + source, source > 0), (2 * last - target - source, source < last))
    kernel = sum(np.where((np.abs(d) <= half) & ok, np.exp(-(d / last) ** 2 / (2 * sigma**2)), 0.0)
                 for d, ok in images) / (np.sqrt(2 * np.pi) * sigma)
    kernel.flags.writeable = False
    return kernel


def _smooth_many(conf: np.ndarray, weights: np.ndarray, weighted_residual: np.ndarray, centre: float
                 ) -> np.ndarray:
    """Smooth ECE of many weightings of one set of confidences at once (see the module notes).

    ``weights`` [R, n] are each row's example weights and ``weighted_residual`` [R, n] each row's
    weight times (confidence - correct). The bandwidths are 16 neighbours on a fixed geometric
    lattice (ratio 1.2) around ``centre`` (about a quarter to four times it); each row's fixed point
    sigma = smECE(sigma) is interpolated between them.
    """
    middle = int(np.clip(np.searchsorted(_SIGMAS, centre), 8, len(_SIGMAS) - 8))
    index = range(middle - 8, middle + 8)
    sigmas = _SIGMAS[middle - 8: middle + 8]
    points = int(np.clip(math.ceil(2.5 / sigmas[0]) + 1, 128, 512))
    left = np.clip((conf * (points - 1)).astype(int), 0, points - 2)
    frac = conf * (points - 1) - left
    spread = np.zeros((len(conf), points))
    spread[np.arange(len(conf)), left] = 1 - frac
    spread[np.arange(len(conf)), left + 1] += frac
    residual, density = weighted_residual @ spread, weights @ spread
    gaps = []
    for j, sigma in zip(index, sigmas, strict=True):
        kernel = _kernel(points, j)
        num = np.abs(residual @ kernel.T).sum(axis=1)
        den = (density @ kernel.T).sum(axis=1) + points * 1e-4
        gaps.append(num / den - sigma)
    g = np.stack(gaps, axis=1)  # decreasing in sigma
    below = g <= 0
    first = np.where(below.any(axis=1), below.argmax(axis=1), len(sigmas))
    out = np.empty(len(g))
    low, high = first == 0, first == len(sigmas)
    out[low], out[high] = sigmas[0], sigmas[-1]
    mid = ~(low | high)
    j = first[mid]
    g0, g1 = g[mid, j - 1], g[mid, j]
    s0, s1 = sigmas[j - 1], sigmas[j]
    out[mid] = s0 + (s1 - s0) * g0 / (g0 - g1)
    return out


def calibration_draws(probs: np.ndarray, labels: np.ndarray, counts: np.ndarray, n_bins: int = cal.DEFAULT_BINS,
                      keys: Sequence[str] = KEYS, smooth_ece: float | None = None) -> dict[str, np.ndarray]:
    """Each metric of ``keys`` on every resample (a row of ``counts``), vectorised.

    ``smooth_ece`` is the sample's own smooth ECE when the caller has it (it centres the bandwidths).
    """
    probs, labels = _inputs(probs, labels)
    w = _check_counts(counts, len(labels))
    n = float(len(labels))
    conf, correct = cal._conf_correct(probs, labels)
    residual = correct - conf
    out: dict[str, np.ndarray] = {}
    if "accuracy" in keys:
        out["accuracy"] = w @ correct / n
    if "brier" in keys:
        out["brier"] = w @ np.sum((probs - np.eye(probs.shape[1])[labels]) ** 2, axis=1) / n
    if "nll" in keys:
        out["nll"] = w @ -np.log(np.clip(probs[np.arange(len(labels)), labels], 1e-12, 1.0)) / n
    if "ece" in keys or "mce" in keys:
        ece, worst = _binned(w, residual, _onehot_bins(conf, n_bins), n)
        out.update({k: v for k, v in (("ece", ece), ("mce", worst)) if k in keys})
    if "adaptive_ece" in keys:
        out["adaptive_ece"] = _adaptive(w, residual, np.argsort(conf, kind="stable"), n_bins)
    if "smooth_ece" in keys:
        centre = cal.smooth_ece(probs, labels) if smooth_ece is None else smooth_ece
        out["smooth_ece"] = _smooth_many(conf, w, w * -residual, centre)
    return {k: out[k] for k in keys}


def calibration_intervals(probs: np.ndarray, labels: np.ndarray, n_bins: int = cal.DEFAULT_BINS,
                          n_resamples: int = N_RESAMPLES, seed: int = 0) -> dict[str, Interval]:
    """Every metric of one evaluation with its 95% interval (accuracy: Wilson; the rest: percentile bootstrap)."""
    probs, labels = _inputs(probs, labels)
    values = cal.report(probs, labels, n_bins).as_dict()
    draws = calibration_draws(probs, labels, resample_counts(len(labels), n_resamples, seed), n_bins,
                              smooth_ece=values["smooth_ece"])
    out = {k: Interval(float(values[k]), *_percentile(d)) for k, d in draws.items()}
    k = int((probs.argmax(axis=1) == labels).sum())
    out["accuracy"] = Interval(float(values["accuracy"]), *wilson(k, len(labels)))
    return out


def paired_differences(probs_base: np.ndarray, probs_other: np.ndarray, labels: np.ndarray,
                       n_bins: int = cal.DEFAULT_BINS, n_resamples: int = N_RESAMPLES, seed: int = 0
                       ) -> tuple[dict[str, Interval], dict[str, Interval], dict[str, Difference]]:
    """Each side's intervals and the paired difference (other - base) of every metric, on shared resamples."""
    probs_base, labels = _inputs(probs_base, labels)
    probs_other, _ = _inputs(probs_other, labels)
    if probs_base.shape != probs_other.shape:
        raise UserError(f"the two sides have different shapes ({probs_base.shape} vs {probs_other.shape})")
    counts = resample_counts(len(labels), n_resamples, seed)
    sides = []
    for probs in (probs_base, probs_other):
        values = cal.report(probs, labels, n_bins).as_dict()
        draws = calibration_draws(probs, labels, counts, n_bins, smooth_ece=values["smooth_ece"])
        intervals = {k: Interval(float(values[k]), *_percentile(d)) for k, d in draws.items()}
        k = int((probs.argmax(axis=1) == labels).sum())
        intervals["accuracy"] = Interval(float(values["accuracy"]), *wilson(k, len(labels)))
        sides.append((values, draws, intervals))
    (va, da, ia), (vb, db, ib) = sides
    same = np.array_equal(probs_base, probs_other)
    diff = {k: _difference(0.0 if same else vb[k] - va[k], np.zeros(n_resamples) if same else db[k] - da[k])
            for k in KEYS}
    return ia, ib, diff


def mean_interval(values: Sequence[float], counts: np.ndarray) -> Interval:
    """The mean of per-example values with its percentile-bootstrap 95% interval."""
    v = np.asarray(values, dtype=np.float64)
    if v.ndim != 1 or not len(v) or not np.isfinite(v).all():
        raise UserError("per-example values must be a non-empty list of finite numbers")
    draws = _check_counts(counts, len(v)) @ v / len(v)
    return Interval(float(v.mean()), *_percentile(draws))


def paired_mean_difference(base_values: Sequence[float], other_values: Sequence[float], counts: np.ndarray
                           ) -> Difference:
    """The mean of per-example differences (other - base) with its paired bootstrap interval and p-value."""
    a, b = np.asarray(base_values, dtype=np.float64), np.asarray(other_values, dtype=np.float64)
    if a.shape != b.shape:
        raise UserError(f"a paired difference needs the same examples on both sides ({a.size} vs {b.size})")
    if not len(a) or not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise UserError("per-example values must be a non-empty list of finite numbers")
    d = b - a
    return _difference(float(d.mean()), _check_counts(counts, len(d)) @ d / len(d))


# ---------------------------------------------------------------- calibrated-model simulation


def _simulated(probs: np.ndarray, n_sims: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Confidences, and [n_sims, n] correctness drawn as Bernoulli(confidence)."""
    conf = np.asarray(probs, dtype=np.float64).max(axis=1)
    return conf, (np.random.default_rng(seed).random((n_sims, len(conf))) < conf).astype(np.float64)


def noise_floor(probs: np.ndarray, labels: np.ndarray, n_bins: int = cal.DEFAULT_BINS, n_sims: int = 1000,
                seed: int = 0) -> dict[str, NoiseFloor]:
    """Binned, adaptive and smooth ECE of a perfectly calibrated model with these confidences at this n."""
    probs, labels = _inputs(probs, labels)
    conf, sims = _simulated(probs, n_sims, seed)
    residual = sims - conf  # correct - confidence, per simulation
    ones = np.ones_like(sims)
    n = float(len(conf))
    ece = np.abs(residual @ _onehot_bins(conf, n_bins)).sum(axis=1) / n
    order = np.argsort(conf, kind="stable")
    adaptive = _adaptive_fixed(residual, order, n_bins)
    centre = cal.smooth_ece_at(conf, sims[0], cal.smooth_ece_bandwidth(conf, sims[0]))
    smooth = _smooth_many(conf, ones, -residual, centre)
    report = cal.report(probs, labels, n_bins)
    return {key: NoiseFloor(key, float(d.mean()), float(np.quantile(d, LEVEL)), float(getattr(report, key)))
            for key, d in (("ece", ece), ("adaptive_ece", adaptive), ("smooth_ece", smooth))}


def _adaptive_fixed(residual: np.ndarray, order: np.ndarray, n_bins: int) -> np.ndarray:
    """Adaptive ECE of every row of per-example residuals, the examples fixed (no resampling)."""
    chunks = np.array_split(order, min(n_bins, len(order)))
    return sum(np.abs(residual[:, c].sum(axis=1)) for c in chunks if len(c)) / residual.shape[1]


def reliability_bands(probs: np.ndarray, n_bins: int = cal.DEFAULT_BINS, n_sims: int = 1000, seed: int = 0,
                      level: float = LEVEL) -> list[tuple[float, float] | None]:
    """Per equal-width bin, the range of accuracy a perfectly calibrated model shows in ``level`` of samples.

    Bröcker & Smith's consistency bands: correctness simulated as Bernoulli(confidence) with the
    bin's own confidences; None for an empty bin.
    """
    probs = np.asarray(probs, dtype=np.float64)
    conf, sims = _simulated(probs, n_sims, seed)
    bins = cal._bin_index(conf, n_bins)
    out: list[tuple[float, float] | None] = []
    for b in range(n_bins):
        sel = bins == b
        if not sel.any():
            out.append(None)
            continue
        lo, hi = np.quantile(sims[:, sel].mean(axis=1), [(1 - level) / 2, 1 - (1 - level) / 2])
        out.append((float(lo), float(hi)))
    return out


def banded_reliability_table(probs: np.ndarray, labels: np.ndarray, n_bins: int = cal.DEFAULT_BINS,
                             seed: int = 0) -> list[dict]:
    """`core.task.calibration.reliability_table` with each bin's consistency band (``band_lower`` / ``band_upper``)."""
    rows = cal.reliability_table(probs, labels, n_bins)
    for row, band in zip(rows, reliability_bands(probs, n_bins, seed=seed), strict=True):
        row["band_lower"], row["band_upper"] = band if band is not None else (None, None)
    return rows
