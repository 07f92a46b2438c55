"""Calibration metrics, the reliability table and temperature scaling. Defined once, used everywhere.

All metrics take class probabilities ``probs`` [n, k] and integer ``labels`` [n]. The confidence is
the top answer's probability (renormalised over the candidate answers).

* ECE: equal-width bins over (0, 1]; ``sum_b |B|/n * |accuracy(B) - mean confidence(B)|``.
* adaptive ECE: the same with equal-mass bins (examples sorted by confidence, split evenly).
* MCE: the largest ``|accuracy(B) - confidence(B)|`` over non-empty equal-width bins.
* Brier: ``mean_i sum_k (p_ik - [y_i = k])^2`` (the multi-class form; 0 is perfect, 2 the worst).
* NLL: ``mean_i -log p_i,y_i``.
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
