"""Dirichlet calibration (Kull et al. 2019): a linear map of the log-probabilities, fitted by penalised NLL.

The features are each example's log-probabilities over its offered answers, ``x = log p`` (an answer
an example does not offer enters as 0, so it adds nothing to the others' scores, and it gets no
probability). The calibrated probabilities are ``softmax(s)`` over the offered answers, with

* **diagonal** (vector scaling of the log-probabilities): ``s_k = w_k x_k + b_k``, 2K parameters.
  Penalty: ``lam * (sum_k (w_k - mean(w))^2 + sum_k b_k^2) / K``. It shrinks towards *temperature
  scaling* (every weight equal, no bias; ``softmax(x / T)`` equals ``softmax(z / T)`` of the logits),
  not towards the identity: with little data the method falls back to the repair the app already
  shows rather than to no repair, and a very large ``lam`` reproduces temperature scaling.
* **matrix** (full Dirichlet): ``s = W x + b``, K^2 + K parameters, with ODIR (off-diagonal and
  intercept regularisation, Kull et al.): ``lam * (sum_{j != k} W_jk^2 / (K (K - 1)) + sum_k b_k^2 / K)``.
  The diagonal is free, so a large ``lam`` leaves per-answer scaling of each log-probability.

The objective is the mean NLL over the validation examples plus the penalty, minimised by L-BFGS
with its exact gradient. ``lam`` is either given, or chosen by ``FOLDS``-fold cross-validation on
the validation split itself (seeded folds, the grid `LAMBDAS`, the lowest pooled held-out NLL; a tie
goes to the larger ``lam``), then the model is refitted on the whole split at that ``lam``. Nothing
outside the validation split is seen.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import minimize
from scipy.special import log_softmax

LAMBDAS = (1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0)
"""The penalty weights cross-validation chooses from (the penalty is per parameter, the NLL per example)."""
FOLDS = 5
SEPARATED = 1e-4
"""Without a penalty, a mean validation NLL below this means the optimum is at infinity (separable answers)."""


class Diverged(ValueError):
    """The fit ran off to infinity: without a penalty the validation answers are separable."""


@dataclass(frozen=True)
class DirichletFit:
    kind: str
    """'diagonal' or 'matrix'."""
    weights: np.ndarray
    """[K] for diagonal, [K, K] for matrix."""
    bias: np.ndarray
    lam: float
    held_out_nll: dict[float, float] | None
    """Cross-validation's pooled held-out NLL per ``lam`` (None when ``lam`` was given)."""

    def scores(self, log_probs: np.ndarray, offered: np.ndarray) -> np.ndarray:
        """The calibrated log-probabilities of each example's offered answers (-inf elsewhere)."""
        x = np.where(offered, log_probs, 0.0)
        s = x * self.weights + self.bias if self.kind == "diagonal" else x @ self.weights.T + self.bias
        return log_softmax(np.where(offered, s, -np.inf), axis=1)


def _unpack(theta: np.ndarray, kind: str, k: int) -> tuple[np.ndarray, np.ndarray]:
    if kind == "diagonal":
        return theta[:k], theta[k:]
    return theta[: k * k].reshape(k, k), theta[k * k:]


def objective(theta: np.ndarray, kind: str, x: np.ndarray, labels: np.ndarray, offered: np.ndarray,
              lam: float) -> tuple[float, np.ndarray]:
    """The penalised mean NLL at ``theta`` and its gradient (``x``: log-probabilities with 0 where not offered)."""
    n, k = x.shape
    w, b = _unpack(theta, kind, k)
    s = x * w + b if kind == "diagonal" else x @ w.T + b
    lp = log_softmax(np.where(offered, s, -np.inf), axis=1)
    rows = np.arange(n)
    g = np.exp(lp)  # d(mean NLL)/ds = (softmax - onehot) / n, 0 where not offered
    g[rows, labels] -= 1.0
    g /= n
    loss = float(-lp[rows, labels].mean())
    if kind == "diagonal":
        centred = w - w.mean()
        loss += lam * (np.sum(centred**2) + np.sum(b**2)) / k
        grad_w = (g * x).sum(axis=0) + 2 * lam * centred / k
    else:
        off = w - np.diag(np.diag(w))
        loss += lam * (np.sum(off**2) / (k * (k - 1)) + np.sum(b**2) / k)
        grad_w = (g.T @ x + 2 * lam * off / (k * (k - 1))).ravel()
    grad_b = g.sum(axis=0) + 2 * lam * b / k
    return loss, np.concatenate([grad_w, grad_b])


def _start(kind: str, k: int) -> np.ndarray:
    w = np.ones(k) if kind == "diagonal" else np.eye(k).ravel()
    return np.concatenate([w, np.zeros(k)])


def _solve(kind: str, x: np.ndarray, labels: np.ndarray, offered: np.ndarray, lam: float,
           theta0: np.ndarray) -> np.ndarray:
    res = minimize(objective, theta0, args=(kind, x, labels, offered, lam), jac=True, method="L-BFGS-B",
                   options={"maxiter": 500, "gtol": 1e-8, "ftol": 1e-12})
    if lam == 0 and res.fun < SEPARATED:
        raise Diverged(f"the validation NLL falls towards 0 (it reached {res.fun:.2g}) with no penalty")
    return res.x


def fit_dirichlet(log_probs: np.ndarray, labels: np.ndarray, offered: np.ndarray, kind: str,
                  lam: float | None = None, seed: int = 0) -> DirichletFit:
    """Fit the ``kind`` map on validation log-probabilities; ``lam`` None chooses it by cross-validation.

    Raises `Diverged` when the optimum is at infinity (only possible with ``lam`` = 0).
    """
    k = log_probs.shape[1]
    x = np.where(offered, log_probs, 0.0)
    held_out = None
    if lam is None:
        held_out = _cross_validate(kind, x, labels, offered, seed)
        lam = min(held_out, key=lambda g: (held_out[g], -g))
    w, b = _unpack(_solve(kind, x, labels, offered, lam, _start(kind, k)), kind, k)
    return DirichletFit(kind, w, b, float(lam), held_out)


def _cross_validate(kind: str, x: np.ndarray, labels: np.ndarray, offered: np.ndarray, seed: int
                    ) -> dict[float, float]:
    """Pooled held-out NLL of each ``lam`` of `LAMBDAS` over seeded folds (largest ``lam`` first, warm-started)."""
    n, k = x.shape
    folds = np.array_split(np.random.default_rng(seed).permutation(n), FOLDS)
    total = dict.fromkeys(LAMBDAS, 0.0)
    for held in folds:
        fit = np.ones(n, dtype=bool)
        fit[held] = False
        theta = _start(kind, k)
        for lam in sorted(LAMBDAS, reverse=True):
            theta = _solve(kind, x[fit], labels[fit], offered[fit], lam, theta)
            w, b = _unpack(theta, kind, k)
            lp = DirichletFit(kind, w, b, lam, None).scores(x[held], offered[held])
            total[lam] += float(-lp[np.arange(len(held)), labels[held]].sum())
    return {lam: v / n for lam, v in total.items()}
