"""The bootstrap: every metric on many resamples at once, and the intervals of means built on them.

* **Resamples** are drawn as a count matrix (how often each example is drawn in each of
  ``N_RESAMPLES`` resamples with replacement), and every metric is computed from it with matrix
  products and cumulative sums, no loop over resamples.
* **Percentile intervals.** A metric recomputed on every resample gives the interval of its 2.5%
  and 97.5% quantiles: Brier score, NLL and means of per-example values (`mean_interval`, e.g.
  comprehensiveness, the label mass). Unbiased means are what this suits; the calibration errors
  are not (`core.task.uncertainty.inversion`), and `core.task.uncertainty.methods` says which
  metric gets what.
* **Two evaluations of the same examples** (full and pruned, or any two masks). The *same*
  resamples are applied to both sides, and the interval of the difference (other - base) is the
  middle 95% of the per-resample differences: a paired bootstrap, much narrower than comparing two
  separate intervals because both sides share each example's difficulty.
* **Metrics on resamples** are the definitions of `core.task.calibration`, computed with the
  counts as example weights, which is the same as computing them on the explicitly repeated
  sample (the tests check this to 1e-12): weighted means for accuracy, Brier and NLL; bin sums by
  a one-hot bin matrix for ECE and MCE; for adaptive ECE the examples are sorted by confidence
  once, and a resample's equal-mass chunks (``np.array_split`` of its n units) are cut out of
  cumulative sums of counts and residuals, linearly inside one example's block of copies (the
  copies of one example may fall in two chunks); smooth ECE by `core.task.uncertainty.smooth`. No
  draw can be undefined (every resample has n examples and a non-empty bin), so the quantiles need
  no NaN handling.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ...errors import UserError
from .. import calibration as cal
from .common import _bin_sums, _check_bins, _check_counts, _dot, _inputs
from .intervals import Difference, Interval, _percentile, bootstrap_difference
from .smooth import _smooth_many

N_RESAMPLES = 1000
KEYS = ("accuracy", "ece", "adaptive_ece", "smooth_ece", "mce", "brier", "nll")
"""The metrics `calibration_draws` computes on every resample."""


def resample_counts(n: int, n_resamples: int = N_RESAMPLES, seed: int = 0) -> np.ndarray:
    """[n_resamples, n]: how many times each example is drawn in each bootstrap resample of size n."""
    if n < 1 or n_resamples < 1:
        raise UserError(f"resampling needs at least one example and one resample (got n={n}, "
                        f"resamples={n_resamples})")
    drawn = np.random.default_rng(seed).integers(0, n, size=(n_resamples, n))
    flat = (drawn + n * np.arange(n_resamples)[:, None]).ravel()
    return np.bincount(flat, minlength=n_resamples * n).reshape(n_resamples, n).astype(np.int32)


def _binned(weights: np.ndarray, residual: np.ndarray, conf: np.ndarray, n_bins: int, n: float
            ) -> tuple[np.ndarray, np.ndarray]:
    """ECE and MCE of every row of ``weights`` (residual = correct - confidence per example)."""
    gap = _bin_sums(weights * residual, conf, n_bins)
    count = _bin_sums(weights, conf, n_bins)
    ece = np.abs(gap).sum(axis=1) / n
    with np.errstate(invalid="ignore", divide="ignore"):
        per_bin = np.where(count > 0, np.abs(gap) / np.where(count > 0, count, 1), -np.inf)
    return ece, per_bin.max(axis=1)


def per_example(probs: np.ndarray, labels: np.ndarray, keys: Sequence[str] = ("brier", "nll")
                ) -> dict[str, np.ndarray]:
    """Each example's Brier score and NLL (the metrics are their means; `core.task.calibration`)."""
    out = {}
    if "brier" in keys:
        out["brier"] = np.sum((probs - np.eye(probs.shape[1])[labels]) ** 2, axis=1)
    if "nll" in keys:
        out["nll"] = -np.log(np.clip(probs[np.arange(len(labels)), labels], 1e-12, 1.0))
    return out


def _chunk_sums(weights: np.ndarray, values: Sequence[np.ndarray], order: np.ndarray, n_bins: int
                ) -> list[np.ndarray]:
    """Each per-example vector of ``values`` summed over every row's equal-mass chunks ([rows, chunks] each).

    A row's n units (its examples, each as often as its weight) are sorted by confidence (``order``)
    and cut as ``np.array_split`` cuts n units. Copies of one example may straddle a chunk boundary,
    so the sum up to unit position p is read off cumulative sums, linearly inside an example's block
    of copies.
    """
    w = weights[:, order]
    total = int(round(w[0].sum()))
    k = min(n_bins, total)
    sizes = np.full(k, total // k)
    sizes[: total % k] += 1
    bounds = np.concatenate([[0], np.cumsum(sizes)])
    cw = np.cumsum(w, axis=1)
    rows, n = w.shape
    offset = (total + 1) * np.arange(rows)[:, None]
    idx = np.searchsorted((cw + offset).ravel(), (bounds[None, :] + offset).ravel(), side="left")
    idx = (idx.reshape(rows, -1) - n * np.arange(rows)[:, None]).clip(0, n - 1)
    past = np.take_along_axis(cw, idx, 1) - bounds[None, :]  # units of the example at idx beyond the boundary
    out = []
    for v in values:
        v = v[order]
        at = np.take_along_axis(np.cumsum(w * v, axis=1), idx, 1) - past * v[idx]
        out.append(np.diff(at, axis=1))
    return out


def _adaptive(weights: np.ndarray, residual: np.ndarray, order: np.ndarray, n_bins: int) -> np.ndarray:
    """Adaptive ECE of every row of ``weights``: equal-mass chunks of each resample's sorted units."""
    (gaps,) = _chunk_sums(weights, [residual], order, n_bins)
    return np.abs(gaps).sum(axis=1) / int(round(weights[0].sum()))


def calibration_draws(probs: np.ndarray, labels: np.ndarray, counts: np.ndarray, n_bins: int = cal.DEFAULT_BINS,
                      keys: Sequence[str] = KEYS, smooth_ece: float | None = None) -> dict[str, np.ndarray]:
    """Each metric of ``keys`` on every resample (a row of ``counts``), vectorised.

    ``keys`` may name a subset of `KEYS`; ``smooth_ece`` is the sample's own smooth ECE when the
    caller has it (it only places the first bandwidths searched, see `core.task.uncertainty.smooth`).
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
    for key, values in per_example(probs, labels, [k for k in ("brier", "nll") if k in keys]).items():
        out[key] = _dot(w, values) / n
    if "ece" in keys or "mce" in keys:
        ece, worst = _binned(w, residual, conf, n_bins, n)
        out.update({k: v for k, v in (("ece", ece), ("mce", worst)) if k in keys})
    if "adaptive_ece" in keys:
        out["adaptive_ece"] = _adaptive(w, residual, np.argsort(conf, kind="stable"), n_bins)
    if "smooth_ece" in keys:
        out["smooth_ece"] = _smooth_many(conf, w, w * -residual, smooth_ece)
    return {k: out[k] for k in keys}


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
    return bootstrap_difference(float(d.mean()), _dot(_check_counts(counts, len(d)), d) / len(d))
