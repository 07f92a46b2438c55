"""The calibration noise floor: what a perfectly calibrated model with the same confidences would show.

Even a perfectly calibrated model shows a positive ECE on a finite sample. Holding the model's
confidences fixed, correctness is simulated as Bernoulli(confidence) many times; each simulation's
ECE (binned, adaptive and smooth) gives the distribution a perfectly calibrated model with *these*
confidences would show at *this* n. An observed ECE at or below its 95th percentile is "consistent
with perfect calibration". The same simulation gives each reliability bin its consistency band
(Bröcker & Smith 2007): the range in which a calibrated model's bin accuracy falls in 95% of samples.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .. import calibration as cal
from .common import _bin_sums, _check_bins, _check_sims, _inputs, _probs
from .intervals import LEVEL
from .smooth import _smooth_many, smooth_many_coarse

NOISE_FLOOR_KEYS = ("ece", "adaptive_ece", "smooth_ece")


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
    order = np.argsort(conf, kind="stable")
    report = cal.report(probs, labels, n_bins)
    out = {}
    for key in NOISE_FLOOR_KEYS:
        observed = float(getattr(report, key))
        d = _fixed(key, conf, residual, order, n_bins, observed)  # the same simulations as test inversion's at 0
        out[key] = NoiseFloor(key, float(d.mean()), float(np.quantile(d, LEVEL)), observed)
    return out


def _fixed(key: str, conf: np.ndarray, residual: np.ndarray, order: np.ndarray, n_bins: int,
           centre: float | None = None, exact: bool = False) -> np.ndarray:
    """Calibration error ``key`` of every row of per-example residuals (correct - confidence), the
    confidences fixed: simulated correctness, or its expectation under a calibration curve.

    ``order`` sorts the confidences (for adaptive ECE); ``centre`` is a guess of smooth ECE's
    value (it only places the first bandwidths searched). Simulations get smooth ECE's coarse fixed point
    (`core.task.uncertainty.smooth.smooth_many_coarse`); ``exact`` asks for relplot's value (a true value).
    """
    n = residual.shape[1]
    if key == "ece":
        return np.abs(_bin_sums(residual, conf, n_bins)).sum(axis=1) / n
    if key == "mce":
        count = _bin_sums(np.ones((1, n)), conf, n_bins)  # the non-empty bins only, so never 0
        return (np.abs(_bin_sums(residual, conf, n_bins)) / count).max(axis=1)
    if key == "adaptive_ece":
        return _adaptive_fixed(residual, order, n_bins)
    if key == "smooth_ece":
        return (_smooth_many if exact else smooth_many_coarse)(conf, np.ones_like(residual), -residual, centre)
    raise ValueError(f"not a calibration error: {key!r}")


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
