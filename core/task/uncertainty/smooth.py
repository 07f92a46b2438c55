"""Smooth ECE on many resamples at once: relplot's value for each, without its per-resample bisection.

The value is relplot's for each resample, to float32 rounding (about 1e-7; the tests check it
against relplot and against `core.task.calibration.smooth_ece` of the repeated sample).
relplot's bisection ends on the multiple k / 1024 just above the fixed point sigma = smECE(sigma)
and returns smECE there. Here a coarse pass (every resample at once, on a coarse grid; each resample
looks for the pair of neighbouring bandwidths of a fixed lattice between which smECE(sigma) - sigma
changes sign, starting where a few resamples' fixed points are and moving along the secant)
estimates each resample's fixed point; then k is
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


@functools.lru_cache(maxsize=256)
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


_POINTS_PER_SIGMA = 3  # coarse grid points per bandwidth, at the smallest bandwidth of a search (129 to 4,097)
_BELOW = 3  # lattice steps below the starting pair whose bandwidth sets the first grid (a factor of 1.7)
_COARSE_POINTS = 2 ** np.clip(np.ceil(np.log2(_POINTS_PER_SIGMA / _SIGMAS)), 7, 12).astype(int) + 1
"""The coarse grid's size at each lattice bandwidth: about `_POINTS_PER_SIGMA` points per bandwidth, P - 1 a
power of two."""


class _CoarseGrids:
    """smECE(sigma) - sigma of rows of example weights on the coarse grids, each row at its own lattice bandwidth.

    A grid's residual and density spectra are made once for every row, the first time a bandwidth needs
    that grid; equal weights on every row (simulations of correctness) keep one density row.
    """

    def __init__(self, conf: np.ndarray, weights: np.ndarray, weighted_residual: np.ndarray) -> None:
        self.conf, self.weighted_residual = conf, weighted_residual
        self.weights = weights[:1] if len(weights) == 1 or (weights == weights[:1]).all() else weights
        self._spectra: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def _grid(self, points: int) -> tuple[np.ndarray, np.ndarray]:
        if points not in self._spectra:
            spread = _spread(self.conf, points)
            self._spectra[points] = (dct(np.asarray(self.weighted_residual @ spread, dtype=np.float32), type=1, axis=1),
                                     dct(np.asarray(self.weights @ spread), type=1, axis=1))
        return self._spectra[points]

    def gap(self, rows: np.ndarray, j: np.ndarray, points: int) -> np.ndarray:
        """smECE - sigma of ``rows`` at the lattice bandwidths ``_SIGMAS[j]`` on the ``points`` grid (positive
        below the fixed point)."""
        residual, density = self._grid(points)
        values, inverse = np.unique(j, return_inverse=True)
        spectra = np.stack([_coarse_spectrum(points, int(v)) for v in values])
        num = np.abs(idct(residual[rows] * spectra.astype(np.float32)[inverse], type=1, axis=1)).sum(
            axis=1, dtype=np.float64)
        to_total = spectra * _total(points)
        den = (_dot(to_total, density[0])[inverse] if len(density) == 1
               else np.einsum("ij,ij->i", density[rows], to_total[inverse]))
        return num / (den + points * cal._SMOOTH_EPS) - _SIGMAS[j]


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


_JUMP = 8  # the most lattice steps a row moves in one round
_PILOT = 16  # rows whose fixed points place the first pair of a larger search


def _coarse(conf: np.ndarray, weights: np.ndarray, weighted_residual: np.ndarray, centre: float | None
            ) -> tuple[np.ndarray, np.ndarray]:
    """Each row's approximate fixed point sigma = smECE(sigma), and the slope of smECE(sigma) - sigma there.

    Each row looks for the pair of neighbouring lattice bandwidths ``_SIGMAS[j], _SIGMAS[j + 1]`` between
    which smECE(sigma) - sigma changes sign, both evaluated on one coarse grid (about `_POINTS_PER_SIGMA`
    points per bandwidth, summed over the grid rather than relplot's evaluation points), and interpolates
    the crossing linearly. Every row starts at the pair around the median fixed point of `_PILOT` rows spread
    over the rows (found the same way from ``centre``, the sample's own smooth ECE, 0.05 by default; with
    few rows, from ``centre`` itself): a start that depends on the rows alone, not on what was computed
    before, so a value never depends on the order of the calls. A pair without the sign change sends its
    row along the secant through it (at most `_JUMP` steps, never outside the steps already known to lie
    below or above the fixed point), usually to the right pair in one move. A row whose known steps meet
    without a sign change on one grid (the grids of neighbouring pairs can differ) takes the step where they
    meet; below the lattice's floor, the floor (a fixed point always exists below 1: smECE <= max |residual| < 1).
    """
    rows, top = len(weighted_residual), len(_SIGMAS) - 2  # top: the highest pair's lower step
    if rows > 4 * _PILOT:
        some = np.linspace(0, rows - 1, _PILOT).astype(int)
        centre = float(np.median(_coarse(conf, weights[some] if len(weights) > 1 else weights,
                                         weighted_residual[some], centre)[0]))
    grids = _CoarseGrids(conf, weights, weighted_residual)
    start = int(np.clip(np.searchsorted(_SIGMAS, 0.05 if centre is None else centre) - 1, 0, top))
    j = np.full(rows, start)
    above = np.full(rows, -1)  # the highest step known to lie below the fixed point (gap > 0)
    below = np.full(rows, top + 2)  # the lowest step known to lie at or above it (gap <= 0)
    sigma, slope = np.empty(rows), np.full(rows, -1.0)
    todo = np.arange(rows)
    last = np.full((rows, 4), -9.0)  # each row's last pair: its lower step, grid size, and the two gaps
    while len(todo):
        jj = j[todo]
        points = _COARSE_POINTS[np.minimum(jj, start - _BELOW).clip(0)]
        same = last[todo, 1] == points  # a move of one step on the same grid knows one end already
        g0 = np.where(same & (last[todo, 0] == jj - 1), last[todo, 3], np.nan)
        g1 = np.where(same & (last[todo, 0] == jj + 1), last[todo, 2], np.nan)
        for p in np.unique(points):
            for g, step in ((g0, 0), (g1, 1)):
                at = (points == p) & np.isnan(g)
                if at.any():
                    g[at] = grids.gap(todo[at], jj[at] + step, int(p))
        last[todo] = np.stack([jj, points, g0, g1], axis=1)
        s0, s1 = _SIGMAS[jj], _SIGMAS[jj + 1]
        down, up = g0 <= 0, (g0 > 0) & (g1 > 0)
        found = ~down & ~up
        with np.errstate(divide="ignore", invalid="ignore"):
            crossing = s0 + (s1 - s0) * g0 / (g0 - g1)  # the pair's secant: the fixed point, or where to go
            guess = np.floor(np.log(crossing / _SIGMAS[0]) / np.log(_SIGMA_STEP))
        sigma[todo[found]] = crossing[found]
        slope[todo[found]] = ((g1 - g0) / (s1 - s0))[found]
        above[todo[up]] = jj[up] + 1
        below[todo[down]] = np.minimum(below[todo[down]], jj[down])
        guess = np.where(np.isfinite(guess), guess, np.where(up, jj + _JUMP, jj - _JUMP))
        lowest = np.maximum(above[todo], np.where(up, jj + 1, jj - _JUMP)).clip(0)
        highest = np.minimum(np.minimum(below[todo] - 1, top), np.where(up, jj + _JUMP, jj - 1))
        nxt = np.clip(guess, lowest, highest).astype(int)
        stuck = (up | down) & (lowest > highest)
        # stuck going up: the top of the lattice, or the step where known ones meet; going down: its floor, or that
        sigma[todo[stuck]] = np.where(up[stuck], _SIGMAS[np.minimum(jj + 1, top + 1)][stuck], s0[stuck])
        moving = (up | down) & ~stuck
        j[todo[moving]] = nxt[moving]
        todo = todo[moving]
    return sigma, slope


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
    weight times (confidence - correct); ``centre`` (the sample's own smooth ECE; 0.05 by default)
    places the first bandwidths of the coarse search (`_coarse`).

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
