"""Smooth ECE on many resamples at once: relplot's value for each, without its per-resample bisection.

The value is relplot's for each resample, to float32 rounding (about 1e-7; the tests check it
against relplot and against `core.task.calibration.smooth_ece` of the repeated sample).
relplot's bisection ends on the multiple k / 1024 just above the fixed point sigma = smECE(sigma)
and returns smECE there. Here a coarse pass (every resample at once, on a coarse grid, at a window
of fixed bandwidths around the sample's own) estimates each resample's fixed point; then k is
searched for directly, each resample's smECE at its own k / 1024 computed exactly as relplot does
(its 1001-point grid, its reflected truncated kernel, its evaluation points), with the convolution
done for all resamples at once in the DCT-I domain, which that reflection makes diagonal. A secant
through the exact values picks the next k; a resample is done when its k is confirmed (the step
below is known to be below the fixed point) or predicted with a margin of a quarter step.
Typically two exact evaluations per resample: 50-80 ms for 1,000 resamples at n from 20 to a few
thousand.
"""

from __future__ import annotations

import functools
import math

import numpy as np
from scipy.fft import dct, idct
from scipy.signal import fftconvolve
from scipy.sparse import csr_array

from .. import calibration as cal
from .common import _dot, _inputs


def smooth_ece(probs: np.ndarray, labels: np.ndarray) -> float:
    """Smooth ECE (Błasiok & Nakkiran 2023), relplot 1.0.3's ``smECE`` of (confidence, correct).

    The one implementation is `core.task.calibration.smooth_ece` (relplot step for step); this
    checks the inputs first.
    """
    probs, labels = _inputs(probs, labels)
    return cal.smooth_ece(probs, labels)


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
    """The vector ``a`` with ``idct(X, type=1).sum() == X @ a``: a smoothed grid's total from its spectrum.

    ``a`` is the transpose of the inverse DCT-I applied to ones; the DCT-I matrix is ``C diag(c)`` with ``C``
    symmetric and ``c`` 1 at the ends and 2 inside, so ``a = c * idct(1 / c)`` (equal to summing the
    transform of the identity to 1e-16, without its points x points matrix: 134 MB and 0.7 s at 4,097)."""
    c = np.full(points, 2.0)
    c[[0, -1]] = 1.0
    out = c * idct(1 / c, type=1)
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


def _coarse(conf: np.ndarray, weights: np.ndarray, weighted_residual: np.ndarray, centre: float | None
            ) -> tuple[np.ndarray, np.ndarray]:
    """`_coarse_fixed_points` from the window around ``centre`` (by default the first row's coarse fixed point)."""
    if centre is None:
        middle = (len(_SIGMAS) - _WINDOW) // 2
        centre = float(_coarse_fixed_points(conf, weights[:1], weighted_residual[:1], middle)[0][0])
    first = int(np.clip(np.searchsorted(_SIGMAS, centre) - _WINDOW // 2, 0, len(_SIGMAS) - _WINDOW))
    return _coarse_fixed_points(conf, weights, weighted_residual, first)


def smooth_many_coarse(conf: np.ndarray, weights: np.ndarray, weighted_residual: np.ndarray,
                       centre: float | None = None) -> np.ndarray:
    """`_smooth_many`'s coarse pass alone: each row's fixed point sigma = smECE(sigma) on the coarse grid.

    Within about 0.002 of relplot's value (whose own bisection rounds to 1/1024), and a quarter of the cost:
    what simulations of a distribution need (the noise floor, test inversion), where relplot's rounding
    is noise well below the distribution's spread (its 2.5% and 97.5% quantiles move by at most 0.0005 at n
    = 50 to 1,000)."""
    return _coarse(conf, weights, weighted_residual, centre)[0]


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
    sigma, coarse_slope = _coarse(conf, weights, weighted_residual, centre)
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
