"""How sure each number is: intervals, paired differences, significance and the calibration noise floor.

Every interval is 95% and every resampling is seeded, so the same inputs give the same intervals.

* **One evaluation.** Accuracy gets the Wilson score interval (good coverage at any n, never
  outside [0, 1]): with p = k / n and z the normal quantile, ``(p + z^2/2n +- z sqrt(p(1-p)/n +
  z^2/4n^2)) / (1 + z^2/n)``. Every other metric gets a percentile bootstrap: the examples are
  resampled with replacement ``N_RESAMPLES`` times, the metric recomputed on each resample, and
  the 2.5% and 97.5% quantiles of those values (numpy's linear interpolation) are the interval.
  Resamples are drawn as a count matrix (how often each example is drawn) and every metric is
  computed from it with matrix products and cumulative sums, no loop over resamples. Means of
  per-example values (`mean_interval`, e.g. comprehensiveness) get the same percentile bootstrap.
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
* **Metrics on resamples** are the definitions of `core.task.calibration`, computed with the
  counts as example weights, which is the same as computing them on the explicitly repeated
  sample (the tests check this to 1e-12): weighted means for accuracy, Brier and NLL; bin sums by
  a one-hot bin matrix for ECE and MCE; for adaptive ECE the examples are sorted by confidence
  once, and a resample's equal-mass chunks (``np.array_split`` of its n units) are cut out of
  cumulative sums of counts and residuals, linearly inside one example's block of copies (the
  copies of one example may fall in two chunks). No draw can be undefined (every resample has n
  examples and a non-empty bin), so the quantiles need no NaN handling.
* **Smooth ECE on resamples** is relplot's value for each resample, to float32 rounding (about
  1e-7; the tests check it against relplot and against `calibration.smooth_ece` of the repeated
  sample), without relplot's per-resample bisection. relplot's bisection ends on the multiple
  k / 1024 just above the fixed point sigma = smECE(sigma) and returns smECE there. Here a coarse
  pass (every resample at once, on a coarse grid, at a window of fixed bandwidths around the
  sample's own) estimates each resample's fixed point; then k is searched for directly, each
  resample's smECE at its own k / 1024 computed exactly as relplot does (its 1001-point grid, its
  reflected truncated kernel, its evaluation points), with the convolution done for all resamples
  at once in the DCT-I domain, which that reflection makes diagonal. A secant through the exact
  values picks the next k; a resample is done when its k is confirmed (the step below is known to
  be below the fixed point) or predicted with a margin of a quarter step. Typically two exact
  evaluations per resample: 50-80 ms for 1,000 resamples at n from 20 to a few thousand.
* **Sample size to resolve a change** (`examples_needed`): the paired SD of a difference shrinks
  as 1 / sqrt(n), so a true change ``delta`` is detected with power ``power`` at
  ``n * ((z_(1 - a/2) + z_power) * sd / delta) ** 2`` examples.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.fft import dct, idct
from scipy.signal import fftconvolve
from scipy.sparse import csr_array
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
    probs, labels = _probs(probs), np.asarray(labels)
    if labels.shape != (len(probs),):
        raise UserError(f"there are {len(probs)} rows of probabilities but {labels.size} labels")
    if labels.dtype.kind not in "iub" and (labels.dtype.kind != "f" or not np.array_equal(labels, np.round(labels))):
        raise UserError(f"labels must be integer answer indices (got {labels.dtype} values)")
    if labels.min() < 0 or labels.max() >= probs.shape[1]:
        raise UserError(f"labels must be answer indices 0-{probs.shape[1] - 1} (got {labels.min()}-{labels.max()})")
    return probs, labels.astype(int)


def _probs(probs: np.ndarray) -> np.ndarray:
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 2 or len(probs) == 0 or probs.shape[1] == 0:
        raise UserError(f"probabilities must be a non-empty [examples, answers] array (got shape {probs.shape})")
    if not np.isfinite(probs).all():
        raise UserError("probabilities must be finite numbers (found NaN or infinity)")
    return probs


def _check_bins(n_bins: int) -> None:
    if n_bins < 1:
        raise UserError(f"the number of bins must be at least 1 (got {n_bins})")


def _check_sims(n_sims: int) -> None:
    if n_sims < 1:
        raise UserError(f"the simulation needs at least one run (got {n_sims})")


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


def smooth_ece(probs: np.ndarray, labels: np.ndarray) -> float:
    """Smooth ECE (Błasiok & Nakkiran 2023), relplot 1.0.3's ``smECE`` of (confidence, correct).

    The one implementation is `core.task.calibration.smooth_ece` (relplot step for step); this
    checks the inputs first.
    """
    probs, labels = _inputs(probs, labels)
    return cal.smooth_ece(probs, labels)


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


def _dot(matrix: np.ndarray, vector: np.ndarray) -> np.ndarray:
    """``matrix @ vector`` without BLAS.

    These products are small; OpenBLAS's worker threads, once woken, spin for a while and on a busy
    machine take the CPU from the transforms that follow (measured: twice the time on 2 shared cores).
    """
    return np.einsum("ij,j->i", matrix, vector)


def _bin_sums(values: np.ndarray, conf: np.ndarray, n_bins: int) -> np.ndarray:
    """[rows, non-empty bins]: each row of ``values`` [rows, n] summed over each equal-width bin's examples."""
    bins = cal._bin_index(conf, n_bins)
    order = np.argsort(bins, kind="stable")
    starts = np.flatnonzero(np.diff(bins[order], prepend=-1))
    return np.add.reduceat(values[:, order], starts, axis=1)


def _binned(weights: np.ndarray, residual: np.ndarray, conf: np.ndarray, n_bins: int, n: float
            ) -> tuple[np.ndarray, np.ndarray]:
    """ECE and MCE of every row of ``weights`` (residual = correct - confidence per example)."""
    gap = _bin_sums(weights * residual, conf, n_bins)
    count = _bin_sums(weights, conf, n_bins)
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


_SIGMA_STEP = 1.2  # ratio between neighbouring bandwidths of the coarse lattice
_SIGMAS = cal._SIGMA_FLOOR * _SIGMA_STEP ** np.arange(math.ceil(np.log(1000) / np.log(_SIGMA_STEP)) + 1)
"""The bandwidths of the coarse search: a fixed lattice from relplot's floor 0.001 to at least 1."""
_WINDOW = 10  # lattice bandwidths evaluated at once (a factor of 1.2 ** 9, about 5, end to end)
_DYADIC = 1024  # relplot's 10-step bisection on [0, 1] ends on a multiple of 1 / 1024


def _reflected_spectrum(points: int, sigma: float) -> np.ndarray:
    """DCT-I eigenvalues of relplot's reflected Gaussian kernel (bandwidth ``sigma``) on ``points`` grid points.

    relplot reflects the grid once at 0 and once at 1 and truncates the Gaussian at distance 1/2.
    For an odd number of points (integer kernel offsets) that is a circular convolution of the even,
    period-2 extension of the grid, which the DCT-I diagonalises exactly (it equals the explicit
    reflected convolution to 1e-13).
    """
    last = points - 1
    d = np.arange(points)
    kernel = np.where(d <= last / 2, np.exp(-((d / last) ** 2) / (2 * sigma**2)), 0.0) / (np.sqrt(2 * np.pi) * sigma)
    return dct(kernel, type=1)


def _spread(conf: np.ndarray, points: int) -> csr_array:
    """[n, points]: each confidence split linearly between its two grid neighbours (relplot's rounding)."""
    left = np.clip((conf * (points - 1)).astype(int), 0, points - 2)
    frac = conf * (points - 1) - left
    rows = np.repeat(np.arange(len(conf)), 2)
    return csr_array((np.stack([1 - frac, frac], axis=1).ravel(), (rows, np.stack([left, left + 1], 1).ravel())),
                     shape=(len(conf), points))


@functools.lru_cache(maxsize=64)
def _coarse_spectrum(points: int, j: int) -> np.ndarray:
    out = _reflected_spectrum(points, float(_SIGMAS[j]))
    out.flags.writeable = False
    return out


@functools.lru_cache(maxsize=16)
def _total(points: int) -> np.ndarray:
    """The vector ``a`` with ``idct(X, type=1).sum() == X @ a``: a smoothed grid's total from its spectrum."""
    out = idct(np.eye(points), type=1, axis=0).sum(axis=0)
    out.flags.writeable = False
    return out


def _coarse_fixed_points(conf: np.ndarray, weights: np.ndarray, weighted_residual: np.ndarray, start: int,
                         came_from: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Each row's approximate fixed point sigma = smECE(sigma), and the slope of smECE(sigma) - sigma there.

    smECE(sigma) - sigma is evaluated at the lattice bandwidths ``_SIGMAS[start:start + _WINDOW]``
    on a coarse grid (4 points per bandwidth, summed over the grid rather than relplot's evaluation
    points), and its sign change is interpolated linearly. A row without a sign change in the
    window is redone one window lower or higher (never back towards the window it came from: the
    grids differ, so a crossing at the shared bandwidth can be seen by neither); below the lattice's
    floor the floor is returned.
    """
    index = np.arange(start, start + _WINDOW)
    sigmas = _SIGMAS[index]
    points = 2 ** int(np.clip(math.ceil(math.log2(4 / sigmas[0])), 7, 12)) + 1  # P - 1 a power of two
    spread = _spread(conf, points)
    residual = dct(np.asarray(weighted_residual @ spread, dtype=np.float32), type=1, axis=1)
    density = dct(np.asarray(weights @ spread), type=1, axis=1)
    total = _total(points)
    g = np.empty((len(residual), _WINDOW))
    for col, j in enumerate(index):
        spectrum = _coarse_spectrum(points, int(j))
        num = np.abs(idct(residual * spectrum.astype(np.float32), type=1, axis=1)).sum(axis=1, dtype=np.float64)
        den = _dot(density, spectrum * total) + points * cal._SMOOTH_EPS
        g[:, col] = num / den - sigmas[col]  # positive below the fixed point
    below = g <= 0
    first = np.where(below.any(axis=1), below.argmax(axis=1), _WINDOW)
    sigma, slope = np.empty(len(g)), np.full(len(g), -1.0)
    mid = (first > 0) & (first < _WINDOW)
    j = first[mid]
    g0, g1, s0, s1 = g[mid, j - 1], g[mid, j], sigmas[j - 1], sigmas[j]
    sigma[mid] = s0 + (s1 - s0) * g0 / (g0 - g1)
    slope[mid] = (g1 - g0) / (s1 - s0)
    for side, direction, edge in ((first == 0, -1, 0), (first == _WINDOW, 1, -1)):
        if not side.any():
            continue
        nxt = int(np.clip(start + direction * (_WINDOW - 1), 0, len(_SIGMAS) - _WINDOW))
        if nxt == start or direction == -came_from:
            # the lattice's floor (a fixed point always exists below 1: smECE <= max |residual| < 1),
            # or the edge shared with the window this one came from
            sigma[side] = sigmas[edge]
        else:
            sigma[side], slope[side] = _coarse_fixed_points(conf, weights[side], weighted_residual[side], nxt,
                                                            direction)
    return sigma, slope


@functools.lru_cache(maxsize=512)
def _relplot_step(k: int) -> tuple[int, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """What relplot's ``smooth_ece(f, y, k / 1024)`` needs besides the data, for an odd grid.

    Its grid size, the kernel's spectrum on it, the evaluation points (as grid index and fraction)
    and the vector that turns a density grid into the total of its smoothed values at those points.
    """
    sigma = k / _DYADIC
    points = max(2000, round(20 / sigma)) // 2 + 1
    t = np.linspace(0, 1, max(round(10 / sigma), 200))
    idx = np.clip((t * (points - 1)).astype(int), 0, points - 2)
    rest = (t - idx / (points - 1)) * (points - 1)
    spectrum = _reflected_spectrum(points, sigma)
    at = np.bincount(idx, 1 - rest, points) + np.bincount(idx + 1, rest, points)
    c = np.full(points, 2.0)
    c[[0, -1]] = 1.0
    to_total = c * idct(spectrum * dct(at / c, type=1), type=1)  # K^T at, K = idct . diag(spectrum) . dct
    for a in (spectrum, idx, rest, to_total):
        a.flags.writeable = False
    return points, spectrum, idx, rest, to_total


class _Relplot:
    """relplot's ``smooth_ece(f, y, k / 1024)`` for rows of example weights, each row at its own ``k``.

    The same grid, kernel, reflection and evaluation points as relplot, so with unit weights this is
    relplot's value to float32 rounding (about 1e-7). Rows sharing a grid size (every bandwidth from
    0.0107 up has relplot's 1001 points) are convolved together in the DCT-I domain, each row with
    its own kernel's spectrum; the 1001-point grids' spectra are kept for the next call. The even
    grids that bandwidths below 0.01 can get (kernel offsets of half a cell) are convolved explicitly.
    """

    _KEPT = 1001

    def __init__(self, conf: np.ndarray, weights: np.ndarray, weighted_residual: np.ndarray) -> None:
        self.conf, self.weights, self.weighted_residual = conf, weights, weighted_residual
        self.kept: tuple[np.ndarray, np.ndarray] | None = None

    def _grids(self, points: int, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The rows' residual grids (as DCT-I spectra, float32, for odd grids) and density grids."""
        if points == self._KEPT and self.kept is not None:
            if len(rows) == len(self.kept[0]):  # every row, in order (the first round)
                return self.kept
            return self.kept[0][rows], self.kept[1][rows]
        every = points == self._KEPT
        spread = _spread(self.conf, points)
        chosen = slice(None) if every else rows
        residual = np.asarray(self.weighted_residual[chosen] @ spread)
        density = np.asarray(self.weights[chosen] @ spread)
        if points % 2:
            residual = dct(residual.astype(np.float32), type=1, axis=1)
        if every:
            self.kept = residual, density
            return residual[rows], density[rows]
        return residual, density

    def __call__(self, rows: np.ndarray, k: np.ndarray) -> np.ndarray:
        out = np.empty(len(rows))
        values, inverse = np.unique(k, return_inverse=True)
        steps = [_relplot_step(int(v)) for v in values]
        sizes = np.array([s[0] for s in steps])
        for points in np.unique(sizes):
            mine = np.flatnonzero(sizes == points)  # which of the distinct k use this grid
            at = np.flatnonzero(np.isin(inverse, mine))
            which = np.searchsorted(mine, inverse[at])  # each row's position in ``mine``
            residual, density = self._grids(int(points), rows[at])
            width = max(len(steps[m][2]) for m in mine)
            idx, rest = np.zeros((len(mine), width), dtype=int), np.zeros((len(mine), width))
            used = np.zeros((len(mine), width))
            for i, m in enumerate(mine):  # evaluation points, padded to the longest with weight 0
                count = len(steps[m][2])
                idx[i, :count], rest[i, :count], used[i, :count] = steps[m][2], steps[m][3], 1.0
            i0, r0, u0 = idx[which], rest[which], used[which]

            def at_t(grid: np.ndarray, i0: np.ndarray = i0, r0: np.ndarray = r0) -> np.ndarray:
                return np.take_along_axis(grid, i0, 1) * (1 - r0) + np.take_along_axis(grid, i0 + 1, 1) * r0

            if points % 2:
                spectra = np.stack([steps[m][1] for m in mine]).astype(np.float32)
                smoothed = idct(residual * spectra[which], type=1, axis=1)
                den = np.einsum("ij,ij->i", density, np.stack([steps[m][4] for m in mine])[which])
            else:
                sigma = values[mine[which]] / _DYADIC
                smoothed = np.stack([_explicit(r, int(points), s) for r, s in zip(residual, sigma, strict=True)])
                dens = np.stack([_explicit(d, int(points), s) for d, s in zip(density, sigma, strict=True)])
                den = (at_t(dens) * u0).sum(axis=1)
            num = (np.abs(at_t(smoothed)) * u0).sum(axis=1, dtype=np.float64)
            out[at] = num / (den + u0.sum(axis=1) * cal._SMOOTH_EPS)
        return out


def _explicit(values: np.ndarray, points: int, sigma: float) -> np.ndarray:
    """relplot's reflected convolution of one grid, literally (used for even grids only)."""
    ext = np.concatenate([values[:0:-1], values, values[-2::-1]])
    return fftconvolve(ext, cal._gaussian(points, sigma), mode="valid")[points // 2: points // 2 + points]


_MARGIN = 0.25  # a predicted crossing this far (in 1/1024 steps) inside the step is taken without checking
_ROUNDS = 8


def _smooth_many(conf: np.ndarray, weights: np.ndarray, weighted_residual: np.ndarray, centre: float | None = None
                 ) -> np.ndarray:
    """Smooth ECE of many weightings of one set of confidences at once (see the module notes).

    ``weights`` [R, n] are each row's example weights and ``weighted_residual`` [R, n] each row's
    weight times (confidence - correct); ``centre`` (the sample's own smooth ECE; by default the
    first row's coarse fixed point) places the first window of the coarse search.

    relplot's bisection ends on the multiple k / 1024 just above the fixed point (the smallest k at
    which its predicate "sigma < smECE(sigma)" is false) and returns smECE there. Per row, k is
    searched for directly: a first guess from the coarse fixed point, then each exact evaluation
    narrows the bracket (k known true below, k known false above) and a secant through the last two
    exact values (the coarse slope at first) predicts the crossing. A row is done when its bracket
    is one step wide, or when its step is false and the predicted crossing lies more than
    ``_MARGIN`` of a step inside it (the prediction is then from an exact value less than a step
    away). Usually two exact evaluations per row.
    """
    if centre is None:
        middle = (len(_SIGMAS) - _WINDOW) // 2
        centre = float(_coarse_fixed_points(conf, weights[:1], weighted_residual[:1], middle)[0][0])
    first = int(np.clip(np.searchsorted(_SIGMAS, centre) - _WINDOW // 2, 0, len(_SIGMAS) - _WINDOW))
    sigma, coarse_slope = _coarse_fixed_points(conf, weights, weighted_residual, first)
    exact = _Relplot(conf, weights, weighted_residual)
    rows = len(sigma)
    lo = np.ones(rows, dtype=int)  # largest k known true (sigma = 1/1024 < 0.001 always is)
    hi = np.full(rows, _DYADIC + 1)  # smallest k known false (none yet)
    value = np.full(rows, np.nan)  # smECE at hi
    last_k, last_gap = np.zeros(rows, dtype=int), np.zeros(rows)
    todo = np.arange(rows)
    k = np.clip(np.ceil(sigma * _DYADIC - 1e-9), 2, _DYADIC).astype(int)
    for _ in range(_ROUNDS):
        h = exact(todo, k)
        s = k / _DYADIC
        gap = h - s  # > 0: the predicate is true, the fixed point lies above
        true = gap > 0
        lo[todo[true]] = np.maximum(lo[todo[true]], k[true])
        lower = ~true & (k < hi[todo])
        hi[todo[lower]], value[todo[lower]] = k[lower], h[lower]
        secant = (last_k[todo] > 0) & (last_k[todo] != k)
        with np.errstate(divide="ignore", invalid="ignore"):
            slope = np.where(secant, (gap - last_gap[todo]) / ((k - last_k[todo]) / _DYADIC), coarse_slope[todo])
        # smECE(sigma) - sigma falls at least this fast (smECE itself does not rise with sigma): a safeguard
        slope = np.minimum(np.nan_to_num(slope, nan=-1.0), -0.5)
        last_k[todo], last_gap[todo] = k, gap
        crossing = (s - gap / slope) * _DYADIC  # predicted fixed point, in steps
        done = (hi[todo] - lo[todo] <= 1) | (~true & (crossing > k - 1 + _MARGIN))
        todo, crossing = todo[~done], crossing[~done]
        if not len(todo):
            break
        k = np.clip(np.ceil(crossing - 1e-9).astype(int), lo[todo] + 1, np.minimum(hi[todo] - 1, _DYADIC))
    else:  # rows still open after _ROUNDS (a predicate that is not monotone): the lowest false step seen
        open_rows = todo[np.isnan(value[todo])]
        if len(open_rows):  # none false yet: relplot's upper end, 1
            value[open_rows] = exact(open_rows, np.full(len(open_rows), _DYADIC))
    return value


def calibration_draws(probs: np.ndarray, labels: np.ndarray, counts: np.ndarray, n_bins: int = cal.DEFAULT_BINS,
                      keys: Sequence[str] = KEYS, smooth_ece: float | None = None) -> dict[str, np.ndarray]:
    """Each metric of ``keys`` on every resample (a row of ``counts``), vectorised.

    ``keys`` may name a subset of `KEYS`; ``smooth_ece`` is the sample's own smooth ECE when the
    caller has it (it only places the first window of bandwidths searched, see the module notes).
    """
    probs, labels = _inputs(probs, labels)
    _check_bins(n_bins)
    unknown = set(keys) - set(KEYS)
    if unknown:
        raise UserError(f"unknown metric(s) {sorted(unknown)}; known: {', '.join(KEYS)}")
    w = _check_counts(counts, len(labels))
    n = float(len(labels))
    conf, correct = cal._conf_correct(probs, labels)
    residual = correct - conf
    out: dict[str, np.ndarray] = {}
    if "accuracy" in keys:
        out["accuracy"] = _dot(w, correct) / n
    if "brier" in keys:
        out["brier"] = _dot(w, np.sum((probs - np.eye(probs.shape[1])[labels]) ** 2, axis=1)) / n
    if "nll" in keys:
        out["nll"] = _dot(w, -np.log(np.clip(probs[np.arange(len(labels)), labels], 1e-12, 1.0))) / n
    if "ece" in keys or "mce" in keys:
        ece, worst = _binned(w, residual, conf, n_bins, n)
        out.update({k: v for k, v in (("ece", ece), ("mce", worst)) if k in keys})
    if "adaptive_ece" in keys:
        out["adaptive_ece"] = _adaptive(w, residual, np.argsort(conf, kind="stable"), n_bins)
    if "smooth_ece" in keys:
        out["smooth_ece"] = _smooth_many(conf, w, w * -residual, smooth_ece)
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
    draws = _dot(_check_counts(counts, len(v)), v) / len(v)
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
    return _difference(float(d.mean()), _dot(_check_counts(counts, len(d)), d) / len(d))


# ---------------------------------------------------------------- calibrated-model simulation


def _simulated(probs: np.ndarray, n_sims: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Confidences, and [n_sims, n] correctness drawn as Bernoulli(confidence)."""
    conf = np.asarray(probs, dtype=np.float64).max(axis=1)
    return conf, (np.random.default_rng(seed).random((n_sims, len(conf))) < conf).astype(np.float64)


def noise_floor(probs: np.ndarray, labels: np.ndarray, n_bins: int = cal.DEFAULT_BINS, n_sims: int = 1000,
                seed: int = 0) -> dict[str, NoiseFloor]:
    """Binned, adaptive and smooth ECE of a perfectly calibrated model with these confidences at this n."""
    probs, labels = _inputs(probs, labels)
    _check_bins(n_bins)
    _check_sims(n_sims)
    conf, sims = _simulated(probs, n_sims, seed)
    residual = sims - conf  # correct - confidence, per simulation
    ones = np.ones_like(sims)
    n = float(len(conf))
    ece = np.abs(_bin_sums(residual, conf, n_bins)).sum(axis=1) / n
    order = np.argsort(conf, kind="stable")
    adaptive = _adaptive_fixed(residual, order, n_bins)
    smooth = _smooth_many(conf, ones, -residual)
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
    probs = _probs(probs)
    _check_bins(n_bins)
    _check_sims(n_sims)
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
