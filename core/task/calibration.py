"""Calibration metrics, the reliability table and temperature scaling. Defined once, used everywhere.

All metrics take class probabilities ``probs`` [n, k] and integer ``labels`` [n]. The confidence is
the top answer's probability (renormalised over the candidate answers).

* ECE: equal-width bins over (0, 1]; ``sum_b |B|/n * |accuracy(B) - mean confidence(B)|``.
* adaptive ECE: the same with equal-mass bins (examples sorted by confidence, split evenly).
* MCE: the largest ``|accuracy(B) - confidence(B)|`` over non-empty equal-width bins.
* Brier: ``mean_i sum_k (p_ik - [y_i = k])^2`` (the multi-class form; 0 is perfect, 2 the worst).
* NLL: ``mean_i -log p_i,y_i``.
* smooth ECE (Błasiok & Nakkiran 2023): no bins; the residuals ``confidence - correct`` are smoothed
  with a reflected Gaussian kernel whose width sigma is the fixed point ``smECE_sigma = sigma``. This
  is relplot 1.0.3's ``smECE`` step for step (grid rounding, reflected convolution, 10-step bisection),
  and the tests check it against relplot itself.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax

METRIC_VERSION = "1"
DEFAULT_BINS = 15


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    return np.exp(log_softmax(np.asarray(logits, dtype=np.float64) / temperature, axis=1))


def _bin_index(conf: np.ndarray, n_bins: int) -> np.ndarray:
    # bin b holds (b/n, (b+1)/n]; a confidence of exactly 0 goes to the first bin
    return np.clip(np.ceil(conf * n_bins).astype(int) - 1, 0, n_bins - 1)


def ece(probs: np.ndarray, labels: np.ndarray, n_bins: int = DEFAULT_BINS) -> float:
    conf, correct = _conf_correct(probs, labels)
    bins = _bin_index(conf, n_bins)
    total = 0.0
    for b in range(n_bins):
        sel = bins == b
        if sel.any():
            total += sel.mean() * abs(correct[sel].mean() - conf[sel].mean())
    return float(total)


def adaptive_ece(probs: np.ndarray, labels: np.ndarray, n_bins: int = DEFAULT_BINS) -> float:
    conf, correct = _conf_correct(probs, labels)
    order = np.argsort(conf, kind="stable")
    total = 0.0
    for chunk in np.array_split(order, min(n_bins, len(order))):
        if len(chunk):
            total += len(chunk) / len(conf) * abs(correct[chunk].mean() - conf[chunk].mean())
    return float(total)


def mce(probs: np.ndarray, labels: np.ndarray, n_bins: int = DEFAULT_BINS) -> float:
    conf, correct = _conf_correct(probs, labels)
    bins = _bin_index(conf, n_bins)
    gaps = [abs(correct[bins == b].mean() - conf[bins == b].mean()) for b in range(n_bins) if (bins == b).any()]
    return float(max(gaps)) if gaps else 0.0


def brier(probs: np.ndarray, labels: np.ndarray) -> float:
    onehot = np.eye(probs.shape[1])[labels]
    return float(np.mean(np.sum((probs - onehot) ** 2, axis=1)))


def nll(probs: np.ndarray, labels: np.ndarray) -> float:
    p = probs[np.arange(len(labels)), labels]
    return float(np.mean(-np.log(np.clip(p, 1e-12, 1.0))))


def accuracy(probs: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean(probs.argmax(axis=1) == labels))


_SMOOTH_EPS = 1e-4  # relplot's density floor
_SIGMA_FLOOR = 1e-3  # relplot's smallest bandwidth


def _grid(f: np.ndarray, y: np.ndarray, points: int) -> np.ndarray:
    """``y`` spread onto ``points`` equally spaced grid points over [0, 1], linearly between neighbours."""
    values = np.zeros(points)
    bins = np.clip((f * (points - 1)).astype(int), 0, points - 2)
    frac = f * (points - 1) - bins
    np.add.at(values, bins, (1 - frac) * y)
    np.add.at(values, bins + 1, frac * y)
    return values


def _gaussian(points: int, sigma: float) -> np.ndarray:
    t = np.linspace(0, 1, points)
    return np.exp(-(t - 0.5) ** 2 / (2 * sigma**2)) / (np.sqrt(2 * np.pi) * sigma)


def _smoothed(f: np.ndarray, y: np.ndarray, t: np.ndarray, sigma: float) -> np.ndarray:
    """Kernel smoothing of ``y`` at ``f``, evaluated at ``t``: reflected at 0 and 1, through a grid."""
    points = max(2000, round(20 / sigma)) // 2 + 1
    values = _grid(f, y, points)
    ext = np.concatenate([np.flip(values)[:-1], values, np.flip(values)[1:]])
    grid = np.convolve(ext, _gaussian(points, sigma), "valid")[points // 2: points // 2 + points]
    idx = np.clip((t * (points - 1)).astype(int), 0, points - 2)
    step = 1 / (points - 1)
    rest = (t - idx * step) / step
    return grid[idx] * (1 - rest) + grid[idx + 1] * rest


def smooth_ece_at(conf: np.ndarray, correct: np.ndarray, sigma: float) -> float:
    """Smooth ECE at a fixed bandwidth ``sigma`` (relplot's ``smECE_sigma``)."""
    t = np.linspace(0, 1, max(round(10 / sigma), 200))
    residual = _smoothed(conf, conf - correct, t, sigma)
    density = _smoothed(conf, np.ones_like(conf), t, sigma) + _SMOOTH_EPS
    return float(np.sum(np.abs(residual)) / np.sum(density))


def smooth_ece_bandwidth(conf: np.ndarray, correct: np.ndarray) -> float:
    """The fixed point sigma = smooth ECE at sigma, by relplot's 10-step bisection (upper end returned)."""
    def below(alpha: float) -> bool:
        return alpha < _SIGMA_FLOOR or alpha < smooth_ece_at(conf, correct, alpha)

    if below(1.0):
        return 1.0
    upper, lower = 1.0, 0.0
    for _ in range(10):
        mid = (upper + lower) / 2
        if below(mid):
            lower = mid
        else:
            upper = mid
    return upper


def smooth_ece(probs: np.ndarray, labels: np.ndarray) -> float:
    conf, correct = _conf_correct(probs, labels)
    return smooth_ece_at(conf, correct, smooth_ece_bandwidth(conf, correct))


def _conf_correct(probs: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    probs = np.asarray(probs, dtype=np.float64)
    return probs.max(axis=1), (probs.argmax(axis=1) == np.asarray(labels)).astype(np.float64)


def reliability_table(probs: np.ndarray, labels: np.ndarray, n_bins: int = DEFAULT_BINS) -> list[dict]:
    """One row per equal-width bin: its range, count, mean confidence and accuracy (None when empty)."""
    conf, correct = _conf_correct(probs, labels)
    bins = _bin_index(conf, n_bins)
    rows = []
    for b in range(n_bins):
        sel = bins == b
        rows.append({
            "bin_lower": b / n_bins,
            "bin_upper": (b + 1) / n_bins,
            "count": int(sel.sum()),
            "mean_confidence": float(conf[sel].mean()) if sel.any() else None,
            "accuracy": float(correct[sel].mean()) if sel.any() else None,
        })
    return rows


@dataclass(frozen=True)
class CalibrationReport:
    accuracy: float
    ece: float
    adaptive_ece: float
    smooth_ece: float
    mce: float
    brier: float
    nll: float
    n_bins: int

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def report(probs: np.ndarray, labels: np.ndarray, n_bins: int = DEFAULT_BINS) -> CalibrationReport:
    if n_bins < 1:
        from ..errors import UserError

        raise UserError(f"the number of bins must be at least 1 (got {n_bins})")
    labels = np.asarray(labels, dtype=int)
    return CalibrationReport(
        accuracy=accuracy(probs, labels),
        ece=ece(probs, labels, n_bins),
        adaptive_ece=adaptive_ece(probs, labels, n_bins),
        smooth_ece=smooth_ece(probs, labels),
        mce=mce(probs, labels, n_bins),
        brier=brier(probs, labels),
        nll=nll(probs, labels),
        n_bins=n_bins,
    )


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The temperature T > 0 that minimises the NLL of ``softmax(logits / T)`` (T in [0.05, 20])."""
    labels = np.asarray(labels, dtype=int)
    logits = np.asarray(logits, dtype=np.float64)

    def loss(log_t: float) -> float:
        lp = log_softmax(logits / np.exp(log_t), axis=1)
        return float(-lp[np.arange(len(labels)), labels].mean())

    res = minimize_scalar(loss, bounds=(np.log(0.05), np.log(20.0)), method="bounded",
                          options={"xatol": 1e-5})
    return float(np.exp(res.x))
