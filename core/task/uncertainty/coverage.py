"""The coverage study: how often each interval method contains the true value, on simulations where it is known.

It chose the method of every interval this package reports (``docs/uncertainty.md`` has the
table; ``benchmarks/coverage_study.py`` prints it).

* **Populations.** A binary classifier whose top-answer confidence is ``0.5 + 0.5 * B`` with ``B ~
  Beta(a, b)``, right with probability ``curve(confidence) = clip(0.5 + slope * (confidence - 0.5),
  0, 1)``: slope 1 is calibrated, below 1 over-confident (accuracy under confidence), above 1
  under-confident. A pair of models on the same examples shares each example's quantile ``t`` of
  the confidence distribution and its uniform ``u`` (right when ``u < curve``), so their
  correctness is strongly paired, as a pruned model's is with the full one's.
* **Truth.** The population calibration errors by numerical integration over 2^20 equally spaced
  quantiles of the confidence distribution (the midpoint rule; doubling the nodes moves no value
  by 1e-5): ECE and MCE over the 15 equal-width bins of `core.task.calibration`, adaptive ECE over
  15 equal-mass bins (quantile bins of the confidence distribution), and smooth ECE as relplot
  computes it (its grid, kernel, and fixed-point bandwidth) with every node weighted equally and
  its expected residual ``curve - confidence`` in place of a label's (relplot's density floor is
  negligible at that weight). Brier and NLL are expectations under the curve.
* **Methods** (every one computed from the same 1,000 resamples, or simulations, per trial):
  ``percentile`` (the 2.5% and 97.5% quantiles of the bootstrap values), ``basic`` (those
  reflected about the estimate, relplot's choice), ``bca`` (bias-corrected and accelerated; the
  acceleration from a jackknife over at most 200 groups of examples), ``debiased`` (Kumar et al.
  2019's debiased estimate with the percentile interval of its bootstrap values, for ECE and
  adaptive ECE; for MCE and smooth ECE, which have no such estimator, the bootstrap bias-corrected
  estimate ``2 * value - mean`` with a normal interval), and ``inversion``
  (`core.task.uncertainty.inversion`). Every interval is clipped to the metric's range and, as
  shown, raised or lowered to contain the estimate; ``raw_brackets`` is how often it did so
  already. A paired difference gets the same methods on the per-resample differences (``inversion``:
  Berger & Boos's union).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass

import numpy as np
from scipy.special import ndtr, ndtri
from scipy.stats import beta as beta_distribution

from .. import calibration as cal
from . import inversion as inv
from .common import _bin_sums
from .intervals import JACKKNIFE_GROUPS, LEVEL, bca
from .resampling import _chunk_sums, calibration_draws, resample_counts
from .smooth import _smooth_many

METHODS = ("percentile", "basic", "bca", "debiased", "inversion")
KEYS = ("ece", "adaptive_ece", "mce", "smooth_ece", "brier", "nll")
"""The metrics studied (accuracy's Wilson interval is checked in the tests)."""
_NODES = 2**20


@dataclass(frozen=True)
class Population:
    """A binary classifier: confidence 0.5 + 0.5 * Beta(a, b), right with probability ``curve``."""

    name: str
    a: float
    b: float
    slope: float

    def confidence(self, t: np.ndarray) -> np.ndarray:
        return 0.5 + 0.5 * beta_distribution.ppf(t, self.a, self.b)

    def curve(self, conf: np.ndarray) -> np.ndarray:
        return np.clip(0.5 + self.slope * (conf - 0.5), 0.0, 1.0)

    def sample(self, t: np.ndarray, u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Probabilities [n, 2] and labels of the examples at quantiles ``t`` with uniforms ``u``."""
        conf = self.confidence(t)
        return np.stack([conf, 1 - conf], axis=1), np.where(u < self.curve(conf), 0, 1)


SHAPES = {
    "calibrated": Population("calibrated", 2.0, 1.5, 1.0),
    "over-confident": Population("over-confident", 2.0, 1.5, 0.85),
    "under-confident": Population("under-confident", 2.0, 1.5, 1.15),
}
PAIRS = {
    "calibrated, sharper calibrated": (SHAPES["calibrated"], Population("sharper calibrated", 3.0, 1.5, 1.0)),
    "calibrated, over-confident": (SHAPES["calibrated"], SHAPES["over-confident"]),
}
"""Two models on the same examples: base, then other (the difference is other - base)."""


@functools.lru_cache(maxsize=16)
def true_values(population: Population, n_bins: int = cal.DEFAULT_BINS) -> dict[str, float]:
    """The population's calibration errors, Brier score and NLL, by integration (see the module notes)."""
    conf = population.confidence((np.arange(_NODES) + 0.5) / _NODES)
    right = population.curve(conf)
    residual = right - conf
    bins = cal._bin_index(conf, n_bins)
    gap, mass = np.bincount(bins, residual, n_bins) / _NODES, np.bincount(bins, minlength=n_bins) / _NODES
    chunks = np.array_split(np.arange(_NODES), n_bins)  # conf rises with the node: equal-mass bins
    weight = np.full((1, _NODES), 1e9 / _NODES)
    return {
        "ece": float(np.abs(gap).sum()),
        "adaptive_ece": float(sum(abs(residual[c].sum()) for c in chunks) / _NODES),
        "mce": float((np.abs(gap[mass > 0]) / mass[mass > 0]).max()),
        "smooth_ece": float(_smooth_many(conf, weight, weight * -residual)[0]),
        "brier": float(np.mean(2 * (right * (1 - conf) ** 2 + (1 - right) * conf**2))),
        "nll": float(np.mean(-(right * np.log(conf) + (1 - right) * np.log(1 - conf)))),
    }


# ---------------------------------------------------------------- the bootstrap methods


def _expected_abs(mean: np.ndarray, sd: np.ndarray) -> np.ndarray:
    """E|X| for X ~ N(mean, sd^2) (|mean| where sd is 0)."""
    s = np.where(sd > 0, sd, 1.0)
    folded = s * math.sqrt(2 / math.pi) * np.exp(-(mean**2) / (2 * s**2)) + mean * (1 - 2 * ndtr(-mean / s))
    return np.where(sd > 0, folded, np.abs(mean))


def kumar_debiased(probs: np.ndarray, labels: np.ndarray, weights: np.ndarray, n_bins: int = cal.DEFAULT_BINS
                   ) -> dict[str, np.ndarray]:
    """Kumar et al.'s (2019) debiased ECE and adaptive ECE of every row of example ``weights``.

    Per bin, the label mean is taken as Normal(accuracy, accuracy (1 - accuracy) / count) and the
    estimate's expected value under it, ``sum_b share_b E|label mean - confidence_b|`` (in closed
    form here, where their code draws it), is the bias removed: ``2 * ECE - that``.
    """
    conf, correct = cal._conf_correct(probs, labels)
    total = weights[0].sum()
    count = _bin_sums(weights, conf, n_bins)
    hits = _bin_sums(weights * correct, conf, n_bins)
    gap = _bin_sums(weights * (correct - conf), conf, n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        acc = np.where(count > 0, hits / np.where(count > 0, count, 1), 0.0)
        mean = np.where(count > 0, gap / np.where(count > 0, count, 1), 0.0)
        sd = np.where(count > 0, np.sqrt(acc * (1 - acc) / np.where(count > 0, count, 1)), 0.0)
    ece = np.abs(gap).sum(axis=1) / total
    out = {"ece": 2 * ece - (count * _expected_abs(mean, sd)).sum(axis=1) / total}
    order = np.argsort(conf, kind="stable")
    gaps, rights = _chunk_sums(weights, [correct - conf, correct], order, n_bins)
    units = int(round(total))
    sizes = np.full(min(n_bins, units), units // min(n_bins, units))
    sizes[: units % len(sizes)] += 1
    acc, mean = rights / sizes, gaps / sizes
    sd = np.sqrt(np.clip(acc * (1 - acc), 0, None) / sizes)
    out["adaptive_ece"] = 2 * np.abs(gaps).sum(axis=1) / units - (sizes * _expected_abs(mean, sd)).sum(axis=1) / units
    return out


def _jackknife_weights(n: int) -> np.ndarray:
    """[groups, n]: each row leaves one group out (`core.task.uncertainty.intervals.jackknife_means`'s
    groups), rescaled to n units."""
    groups = min(n, JACKKNIFE_GROUPS)
    member = np.arange(n) % groups
    keep = (member[None, :] != np.arange(groups)[:, None]).astype(np.float64)
    return keep * (n / keep.sum(axis=1, keepdims=True))


def bootstrap_intervals(value: float, draws: np.ndarray, jackknife: np.ndarray, debiased: np.ndarray | None,
                        level: float = LEVEL) -> dict[str, tuple[float, float]]:
    """The four bootstrap candidates, unclipped and not raised to the value (see the module notes).

    ``debiased``: the bootstrap values of Kumar et al.'s debiased estimate, where the metric has one.
    """
    a = (1 - level) / 2
    lo, hi = np.quantile(draws, [a, 1 - a])
    out = {"percentile": (float(lo), float(hi)), "basic": (float(2 * value - hi), float(2 * value - lo))}
    out["bca"] = bca(value, draws, jackknife, level)
    z = ndtri(np.array([a, 1 - a]))
    if debiased is not None:
        dlo, dhi = np.quantile(debiased, [a, 1 - a])
        out["debiased"] = (float(dlo), float(dhi))
    else:
        centre, sd = 2 * value - draws.mean(), draws.std(ddof=1)
        out["debiased"] = (float(centre + z[0] * sd), float(centre + z[1] * sd))
    return out


# ---------------------------------------------------------------- trials


@dataclass
class Cell:
    """One method's record on one metric, sample size and population (or pair) over ``trials`` trials."""

    method: str
    metric: str
    n: int
    shape: str
    paired: bool
    truth: float
    trials: int = 0
    covered: int = 0
    raw_brackets: int = 0
    width: float = 0.0

    @property
    def coverage(self) -> float:
        return self.covered / self.trials

    @property
    def se(self) -> float:
        """The Monte-Carlo standard error of the coverage."""
        return math.sqrt(self.coverage * (1 - self.coverage) / self.trials)

    def as_dict(self) -> dict:
        return {**asdict(self), "coverage": self.coverage, "se": self.se,
                "raw_brackets": self.raw_brackets / self.trials, "width": self.width / self.trials}


def _side(probs: np.ndarray, labels: np.ndarray, counts: np.ndarray, jackknife: np.ndarray, uniforms: np.ndarray,
          n_bins: int, keys: Sequence[str]) -> tuple[dict, dict, dict, dict, dict]:
    values = cal.report(probs, labels, n_bins).as_dict()
    draws = calibration_draws(probs, labels, counts, n_bins, keys=keys, smooth_ece=values["smooth_ece"])
    jack = calibration_draws(probs, labels, jackknife, n_bins, keys=keys, smooth_ece=values["smooth_ece"])
    kumar = kumar_debiased(probs, labels, counts.astype(np.float64), n_bins)
    paths = {k: inv._Path(k, probs, labels, n_bins, uniforms, values[k]) for k in inv.CALIBRATION_ERRORS if k in keys}
    return values, draws, jack, kumar, paths


def trial(populations: Sequence[Population], n: int, index: int, seed: int = 0, n_resamples: int = 1000,
          n_bins: int = cal.DEFAULT_BINS, keys: Sequence[str] = KEYS
          ) -> dict[tuple[str, str], tuple[float, float, float]]:
    """One trial: (method, metric) -> (estimate, lo, hi) of one population, or of the difference of a pair
    (second - first), the interval clipped to the metric's range but not raised to the estimate."""
    rng = np.random.default_rng([seed, n, index])
    t, u = rng.random(n), rng.random(n)
    counts = resample_counts(n, n_resamples, seed=int(rng.integers(2**31)))
    uniforms = inv.uniforms(n, n_resamples, seed=int(rng.integers(2**31)))
    jackknife = _jackknife_weights(n)
    sides = [_side(*p.sample(t, u), counts, jackknife, uniforms, n_bins, keys) for p in populations]
    out = {}
    for key in keys:
        if len(sides) == 1:
            values, draws, jack, kumar, paths = sides[0]
            value = values[key]
            cands = bootstrap_intervals(value, draws[key], jack[key], kumar.get(key))
            if key in paths:
                cands["inversion"] = inv.inverted(paths[key])
            floor = 0.0
        else:
            (va, da, ja, ka, pa), (vb, db, jb, kb, pb) = sides
            value = vb[key] - va[key]
            cands = bootstrap_intervals(value, db[key] - da[key], jb[key] - ja[key],
                                        kb[key] - ka[key] if key in ka else None)
            if key in pa:
                coupled = inv.couple(pa[key], pb[key], np.random.default_rng([seed, n, index, 1]))
                cands["inversion"] = inv._Paired(pa[key], pb[key], coupled).union(1 - LEVEL)
            floor = -math.inf
        for method, (lo, hi) in cands.items():
            out[method, key] = (value, max(lo, floor), hi)
    return out


def study(cells: Iterable[tuple[str, Sequence[Population], int]], trials: int, seed: int = 0,
          n_resamples: int = 1000, keys: Sequence[str] = KEYS, first: int = 0) -> list[Cell]:
    """Coverage of every method on every (name, populations, n) of ``cells`` over ``trials`` trials each
    (trials ``first`` to ``first + trials - 1``: each trial is seeded by its index, so parts add up)."""
    out: list[Cell] = []
    for name, populations, n in cells:
        truths = [true_values(p) for p in populations]
        truth = {k: truths[-1][k] - (truths[0][k] if len(truths) == 2 else 0.0) for k in keys}
        records: dict[tuple[str, str], Cell] = {}
        for index in range(first, first + trials):
            for (method, key), (value, lo, hi) in trial(populations, n, index, seed, n_resamples, keys=keys).items():
                cell = records.setdefault((method, key), Cell(method, key, n, name, len(populations) == 2,
                                                              truth[key]))
                shown_lo, shown_hi = min(lo, value), max(hi, value)
                cell.trials += 1
                cell.covered += bool(shown_lo <= truth[key] <= shown_hi)
                cell.raw_brackets += bool(lo <= value <= hi)
                cell.width += shown_hi - shown_lo
        out.extend(records.values())
    return out
