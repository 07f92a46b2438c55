"""Intervals for the true calibration error: a simulation of correctness, inverted along the sample's miscalibration.

Why not the bootstrap. Binned calibration errors are biased upwards (Roelofs et al. 2022), the
more so the better calibrated the model and the smaller n, and a resample of the examples (with
repeats) is biased upwards again, so a percentile bootstrap interval can sit wholly above its own
estimate, and it covers the true calibration error far less often than 95% (the coverage study in
``docs/uncertainty.md``: 0% for a calibrated model). Reflecting it (the basic bootstrap), BCa and
Kumar et al.'s (2019) debiased ECE repair part of that, not enough: the bias depends on the true
value, which resampling the sample cannot see. So the four calibration errors (ECE, adaptive
ECE, MCE, smooth ECE) get their interval by test inversion instead:

* **Hypotheses.** The confidences are held fixed, as for the noise floor. A hypothesis is a
  calibration curve: how likely each example is right. The sample's own miscalibration as each
  metric sees it, ``d_i`` (the mean of correct - confidence over example i's equal-width bin for
  ECE and MCE, over its equal-mass chunk for adaptive ECE, and the kernel-smoothed residual at
  the sample's own bandwidth for smooth ECE), is scaled by ``lam >= 0``:
  ``g_lam(i) = clip(confidence_i + lam * d_i, 0, 1)``. ``lam = 0`` is perfect calibration, ``lam
  = 1`` the curve the sample shows. A hypothesis's true value ``e(lam)`` is the metric computed
  from the expected correctness ``g_lam`` (for ECE, ``lam`` times the estimate up to the clipping).
  When the sample shows no miscalibration at all (every ``d_i`` is 0) the path runs from the
  confidences towards chance instead (``d_i = 1/k - confidence_i``).
* **Inversion.** Under each ``lam`` correctness is simulated ``n_sims`` times as Bernoulli(``g_lam``)
  from the same uniforms (the noise floor's, so ``lam = 0`` reproduces it), and the metric is
  computed on every simulation at once (smooth ECE's by the coarse pass of its fixed-point search,
  `core.task.uncertainty.smooth.smooth_many_coarse`, within 0.0025 of relplot's value). ``lam`` is
  accepted when the observed value lies between the 2.5% and 97.5% quantiles of its simulations;
  the interval is ``[e(lam_lo), e(lam_hi)]`` over the accepted ``lam``: the lower end is 0 when the
  observed value is within the noise floor's 97.5% quantile. The quantiles are computed on the grid
  ``_GRID`` of ``lam`` (extended while the 2.5% quantile stays below the observed value) and
  interpolated monotonically (PCHIP); ``e(lam)`` is computed at the grid's points and interpolated
  linearly between them.
* **Bracketing.** The interval is for the true calibration error; the estimate shown beside it is
  biased upwards and may lie above it. The upper end is then raised to the estimate (which only
  adds coverage), so every interval contains the value it is shown with.
* **Paired differences** (other - base, on the same examples) need the bias of both sides, which
  depends on both unknown true values. Berger & Boos's (1994) construction handles that: take the
  base's ``1 - GAMMA`` interval of ``lam`` (its nuisance set) and, for ``lam_base`` at its ends and
  middle, invert the paired difference over the other side's ``lam`` at level ``1 - (alpha -
  GAMMA)``; the interval is the union, raised or lowered to the observed difference like a side's.
  The pair's correctness is simulated jointly: the other side reuses the base's uniforms with
  probability ``rho`` and draws its own otherwise, ``rho`` chosen so that the expected number of
  examples on which the two sides disagree matches the observed one. The p-value is the smallest
  ``alpha`` at which that interval excludes 0 (so it agrees with the interval, and is at least
  ``GAMMA``).
"""

from __future__ import annotations

import functools
import hashlib
import threading
from collections import OrderedDict
from collections.abc import Callable

import numpy as np

from .. import calibration as cal
from .intervals import LEVEL, Difference
from .noise import _fixed

CALIBRATION_ERRORS = ("ece", "adaptive_ece", "mce", "smooth_ece")
"""The metrics whose intervals come from this module."""
GAMMA = 0.01
"""The share of the 5% a paired difference spends on the base side's unknown calibration error."""
_GRID = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0)
_EXTEND = (4.0, 6.0, 8.0)  # further lam, while the 2.5% quantile is still below the observed value
_NODES = np.array(_GRID + _EXTEND)
_FINE = 64  # points per grid step at which the interpolated quantile curve is read


def _direction(key: str, conf: np.ndarray, correct: np.ndarray, order: np.ndarray, n_bins: int, k: int
               ) -> np.ndarray:
    """Each example's miscalibration as ``key`` sees it (the mean residual correct - confidence nearby)."""
    residual = correct - conf
    if key in ("ece", "mce"):
        bins = cal._bin_index(conf, n_bins)
        mean = np.bincount(bins, residual, n_bins) / np.maximum(np.bincount(bins, minlength=n_bins), 1)
        d = mean[bins]
    elif key == "adaptive_ece":
        d = np.empty_like(residual)
        for chunk in np.array_split(order, min(n_bins, len(order))):
            d[chunk] = residual[chunk].mean()
    else:
        sigma = cal.smooth_ece_bandwidth(conf, correct)
        d = cal._smoothed(conf, residual, conf, sigma) / cal._smoothed(conf, np.ones_like(conf), conf, sigma)
    return d if np.any(np.abs(d) > 1e-12) else 1.0 / k - conf


class _Path:
    """One sample's calibration error ``key`` under the hypotheses ``g_lam`` (see the module notes).

    ``value`` is the estimate shown (`core.task.calibration`'s). The metric's values on the
    simulations from ``uniforms`` (the noise floor's) are kept per ``lam``, so each is computed once;
    `path` keeps recent paths, so an evaluation compared with several others is simulated once.
    """

    def __init__(self, key: str, probs: np.ndarray, labels: np.ndarray, n_bins: int, uniforms: np.ndarray,
                 value: float) -> None:
        conf, correct = cal._conf_correct(probs, labels)
        self.key, self.conf, self.correct, self.n_bins, self.value = key, conf, correct, n_bins, value
        self.order = np.argsort(conf, kind="stable")
        self.direction = _direction(key, conf, correct, self.order, n_bins, probs.shape[1])
        self.uniforms = uniforms
        self._values: dict[float, np.ndarray] = {}
        self._sorted: dict[float, np.ndarray] = {}
        self._truths: dict[float, float] = {}
        self._grid: _Grid | None = None

    def curve(self, lam: float) -> np.ndarray:
        return np.clip(self.conf + lam * self.direction, 0.0, 1.0)

    def truth(self, lam: float) -> float:
        """The calibration error of hypothesis ``lam`` itself: computed from the expected correctness at the
        grid's ``lam`` and interpolated linearly between them (exact wherever nothing clips, since the binned
        errors are then linear in ``lam``; smooth ECE nearly is)."""
        j = min(int(np.searchsorted(_NODES, lam, side="right")), len(_NODES) - 1)
        a, b = _NODES[max(j - 1, 0)], _NODES[j]
        if lam >= b or a == b:
            return self._truth_at(b)
        return self._truth_at(a) + (self._truth_at(b) - self._truth_at(a)) * (lam - a) / (b - a)

    def _truth_at(self, lam: float) -> float:
        if lam not in self._truths:
            expected = (self.curve(lam) - self.conf)[None]
            self._truths[lam] = float(_fixed(self.key, self.conf, expected, self.order, self.n_bins, self.value,
                                                 exact=True)[0])
        return self._truths[lam]

    def simulate(self, lam: float, uniforms: np.ndarray) -> np.ndarray:
        """The metric on every simulation of correctness ``uniforms < g_lam``, one per row."""
        residual = (uniforms < self.curve(lam)).astype(np.float64) - self.conf
        return _fixed(self.key, self.conf, residual, self.order, self.n_bins, self.value)

    def values(self, lam: float) -> np.ndarray:
        """`simulate` on the path's own uniforms, kept."""
        if lam not in self._values:
            self._values[lam] = self.simulate(lam, self.uniforms)
        return self._values[lam]

    def draws(self, lam: float) -> np.ndarray:
        """`values`, sorted."""
        if lam not in self._sorted:
            self._sorted[lam] = np.sort(self.values(lam))
        return self._sorted[lam]

    def grid(self, statistic: Callable[[float], np.ndarray], target: float) -> _Grid:
        """The grid of ``lam`` for ``statistic`` (sorted simulated values) against ``target`` (see `_Grid`)."""
        return _Grid(self, statistic, target)

    def own_grid(self) -> _Grid:
        """The grid of the path's own simulations against its estimate (kept: every use shares its nodes)."""
        if self._grid is None:
            self._grid = self.grid(self.draws, self.value)
        return self._grid


class _Grid:
    """``_GRID``, extended while the 2.5% quantile of ``statistic(lam)`` (sorted) is below ``target`` and the
    hypotheses still change (a curve clipped everywhere at 0 or 1 changes no more).

    Built node by node as the crossings ask for them: a crossing reads the nodes up to the first at or above its
    target and one more (PCHIP's slope there), so the hypotheses beyond are never simulated; the nodes, the
    extension and every crossing are the same as if the whole grid had been built first.
    """

    def __init__(self, path: _Path, statistic: Callable[[float], np.ndarray], target: float) -> None:
        self.path, self.statistic, self.target = path, statistic, target
        self.lams, self.closed = list(_GRID), False

    def node(self, i: int) -> float | None:
        """The ``i``-th ``lam`` of the grid, or None past its end."""
        while i >= len(self.lams) and not self.closed:
            k, last = len(self.lams) - len(_GRID), self.lams[-1]
            if (k >= len(_EXTEND) or _quantile(self.statistic(last), (1 - LEVEL) / 2) >= self.target
                    or np.array_equal(self.path.curve(_EXTEND[k]), self.path.curve(last))):
                self.closed = True
            else:
                self.lams.append(_EXTEND[k])
        return self.lams[i] if i < len(self.lams) else None


def _quantile(sorted_values: np.ndarray, p: float) -> float:
    """numpy's linear-interpolation quantile, of already sorted values."""
    pos = p * (len(sorted_values) - 1)
    i = min(int(pos), max(len(sorted_values) - 2, 0))
    if len(sorted_values) == 1:
        return float(sorted_values[0])
    return float(sorted_values[i] + (sorted_values[i + 1] - sorted_values[i]) * (pos - i))


def _pchip_edge(h0: float, h1: float, m0: float, m1: float) -> float:
    """PCHIP's one-sided three-point slope at an end of the nodes, kept to the data's shape (Moler's pchiptx)."""
    d = ((2 * h0 + h1) * m0 - h0 * m1) / (h0 + h1)
    if np.sign(d) != np.sign(m0):
        return 0.0
    if np.sign(m0) != np.sign(m1) and abs(d) > 3 * abs(m0):
        return 3 * m0
    return d


def _pchip_segment(x: np.ndarray, y: np.ndarray, j: int, at: np.ndarray) -> np.ndarray:
    """scipy's ``PchipInterpolator(x, y)(at)`` for points ``at`` between ``x[j - 1]`` and ``x[j]``, without
    building the whole spline (it was a tenth of a repair comparison's time): the slopes at the segment's two
    nodes as scipy finds them, then the cubic Hermite between them."""
    h, m = np.diff(x), np.diff(y) / np.diff(x)
    if len(x) == 2:
        d0 = d1 = m[0]
    else:
        def slope(i: int) -> float:
            if i == 0:
                return _pchip_edge(h[0], h[1], m[0], m[1])
            if i == len(x) - 1:
                return _pchip_edge(h[-1], h[-2], m[-1], m[-2])
            if np.sign(m[i]) != np.sign(m[i - 1]) or m[i] == 0 or m[i - 1] == 0:
                return 0.0
            w1, w2 = 2 * h[i] + h[i - 1], h[i] + 2 * h[i - 1]
            return (w1 + w2) / (w1 / m[i - 1] + w2 / m[i])

        d0, d1 = slope(j - 1), slope(j)
    width = h[j - 1]
    t = (at - x[j - 1]) / width
    return ((2 * t**3 - 3 * t**2 + 1) * y[j - 1] + (t**3 - 2 * t**2 + t) * width * d0
            + (-2 * t**3 + 3 * t**2) * y[j] + (t**3 - t**2) * width * d1)


def _crossing(grid: _Grid, quantile: Callable[[float], float], target: float) -> float:
    """The smallest ``lam`` at which the quantile curve ``quantile(lam)`` reaches ``target``: its running maximum
    over the grid interpolated by PCHIP; the first ``lam`` when it starts there, the last when it never does."""
    lams: list[float] = []
    q: list[float] = []
    while (lam := grid.node(len(lams))) is not None:
        lams.append(lam)
        q.append(max(quantile(lam), q[-1]) if q else quantile(lam))
        if q[-1] >= target:
            break
    if q[0] >= target:
        return lams[0]
    if q[-1] < target:
        return lams[-1]
    j = len(lams) - 1  # the first grid point at or above target
    if (after := grid.node(j + 1)) is not None:  # PCHIP's slope at j needs the next point
        lams.append(after)
        q.append(max(quantile(after), q[-1]))
    fine = np.linspace(lams[j - 1], lams[j], _FINE + 1)
    curve = np.maximum.accumulate(_pchip_segment(np.asarray(lams), np.asarray(q), j, fine))
    m = max(int(np.argmax(curve >= target)), 1)
    a, b = curve[m - 1], curve[m]
    return float(fine[m - 1] + (fine[m] - fine[m - 1]) * ((target - a) / (b - a) if b > a else 1.0))


def _range(statistic: Callable[[float], np.ndarray], target: float, grid: _Grid, p: float
           ) -> tuple[float, float]:
    """The ``lam`` accepted at the central ``1 - 2p`` of ``statistic(lam)`` (sorted): from where its
    upper quantile reaches ``target`` to where its lower quantile does."""
    return (_crossing(grid, lambda lam: _quantile(statistic(lam), 1 - p), target),
            _crossing(grid, lambda lam: _quantile(statistic(lam), p), target))


def inverted(path: _Path, level: float = LEVEL) -> tuple[float, float]:
    """The accepted true values of one side's calibration error, as inverted (not yet raised to the estimate)."""
    lam_lo, lam_hi = _range(path.draws, path.value, path.own_grid(), (1 - level) / 2)
    return path.truth(lam_lo), path.truth(lam_hi)


def side_interval(path: _Path, level: float = LEVEL) -> tuple[float, float]:
    """The interval of one side's true calibration error, raised to contain the estimate."""
    lo, hi = inverted(path, level)
    return min(lo, path.value), max(hi, path.value)


def couple(base: _Path, other: _Path, rng: np.random.Generator) -> np.ndarray:
    """Uniforms for ``other`` coupled to ``base``'s (see the module notes)."""
    ga, gb = base.curve(1.0), other.curve(1.0)
    comonotone = float(np.abs(ga - gb).sum())  # expected disagreements when both use the same uniforms
    independent = float((ga + gb - 2 * ga * gb).sum())
    observed = float((base.correct != other.correct).sum())
    rho = 1.0 if independent <= comonotone else float(np.clip((independent - observed) /
                                                                (independent - comonotone), 0.0, 1.0))
    keep, fresh = rng.random((2, *base.uniforms.shape))  # drawn either way: the next coupling's stay the same
    if rho >= 1.0:  # every uniform kept: the base's own, so the other side's kept simulations serve
        return base.uniforms
    return np.where(keep < rho, base.uniforms, fresh)


class _Paired:
    """Berger & Boos's interval of ``other - base`` at any level, from simulations kept across levels."""

    def __init__(self, base: _Path, other: _Path, uniforms: np.ndarray) -> None:
        """``uniforms``: the other side's, coupled to the base's by `couple`."""
        self.base, self.other, self.uniforms = base, other, uniforms
        # the other side's own uniforms (``couple`` keeps every one when the two sides never disagree more
        # than they must): its simulations are then the ones `_Path.values` keeps
        self.own = uniforms is other.uniforms or np.array_equal(uniforms, other.uniforms)
        self.value = other.value - base.value
        ends = _range(base.draws, base.value, base.own_grid(), GAMMA / 2)
        self.lam_base = sorted({ends[0], (ends[0] + ends[1]) / 2, ends[1]})
        self.truths = [base.truth(lam) for lam in self.lam_base]
        self._kept: dict[tuple[int, float], np.ndarray] = {}
        self._other: dict[float, np.ndarray] = {}
        self.grids = [other.grid(lambda lam, i=i: self.statistic(i, lam), self.value)
                      for i in range(len(self.lam_base))]

    def statistic(self, i: int, lam: float) -> np.ndarray:
        """The simulated differences (sorted) with the base at ``lam_base[i]`` and the other side at ``lam``."""
        if (i, lam) not in self._kept:
            if lam not in self._other:
                self._other[lam] = self.other.values(lam) if self.own else self.other.simulate(lam, self.uniforms)
            self._kept[i, lam] = np.sort(self._other[lam] - self.base.values(self.lam_base[i]))
        return self._kept[i, lam]

    def union(self, alpha: float) -> tuple[float, float]:
        """The union over the base's nuisance set of the accepted differences (not yet raised to the estimate)."""
        p = (alpha - GAMMA) / 2
        lo, hi = np.inf, -np.inf
        for i, (grid, base_truth) in enumerate(zip(self.grids, self.truths, strict=True)):
            lam_lo, lam_hi = _range(lambda lam, i=i: self.statistic(i, lam), self.value, grid, p)
            lo = min(lo, self.other.truth(lam_lo) - base_truth)
            hi = max(hi, self.other.truth(lam_hi) - base_truth)
        return lo, hi

    def interval(self, alpha: float) -> tuple[float, float]:
        """`union`, raised or lowered to contain the observed difference."""
        lo, hi = self.union(alpha)
        return max(-1.0, min(lo, self.value)), min(1.0, max(hi, self.value))

    def difference(self, level: float = LEVEL) -> Difference:
        lo, hi = self.interval(1 - level)
        return Difference(self.value, lo, hi, self.p_value())

    def p_value(self) -> float:
        """The smallest alpha (to 1e-4) at which the interval excludes 0; 1 when none does."""
        def excludes(alpha: float) -> bool:
            lo, hi = self.interval(alpha)
            return lo > 0 or hi < 0

        a, b = GAMMA + 1e-9, 1.0 - 1e-9
        if not excludes(b):
            return 1.0
        if excludes(a):
            return GAMMA
        while b - a > 1e-4:
            mid = (a + b) / 2
            a, b = (a, mid) if excludes(mid) else (mid, b)
        return float(b)


@functools.lru_cache(maxsize=2)
def uniforms(n: int, n_sims: int, seed: int) -> np.ndarray:
    """The noise floor's uniforms (`core.task.uncertainty.noise`): correctness is ``uniform < curve``."""
    out = np.random.default_rng(seed).random((n_sims, n))
    out.flags.writeable = False
    return out


_KEEP = 16  # paths kept: the four calibration errors of two evaluations and of their temperature-scaled forms
_kept: OrderedDict[tuple, _Path] = OrderedDict()
_keeping = threading.Lock()


def path(key: str, probs: np.ndarray, labels: np.ndarray, n_bins: int, n_sims: int, seed: int, value: float
         ) -> _Path:
    """The `_Path` of one evaluation's calibration error ``key`` on the seeded uniforms, kept for reuse (a
    sweep compares every mask with the same full model; its tiles and its comparison share one too)."""
    digest = hashlib.sha1(np.ascontiguousarray(probs).tobytes() + np.ascontiguousarray(labels).tobytes()).digest()
    name = (key, digest, probs.shape, n_bins, n_sims, seed, value)
    with _keeping:
        if name in _kept:
            _kept.move_to_end(name)
            return _kept[name]
    made = _Path(key, probs, labels, n_bins, uniforms(len(labels), n_sims, seed), value)
    with _keeping:
        _kept[name] = made
        while len(_kept) > _KEEP:
            _kept.popitem(last=False)
    return made
