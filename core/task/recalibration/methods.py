"""The recalibration methods, one function each, registered in `RECALIBRATORS` in menu order.

Logits may hold -inf for answers an example does not offer (multiple choice): every method works on
the offered answers only, gives the others probability 0 and renormalises over the offered ones.

* ``temperature``: `core.task.calibration.fit_temperature` (the app's own fit), ``softmax(z / T)``.
* ``vector`` / ``matrix``: Dirichlet calibration of the log-probabilities (`core.task.dirichlet`).
* ``binning``: histogram binning (Zadrozny & Elkan 2001), one-vs-rest: each answer's probability is
  cut into ``n_bins`` equal-mass bins of the validation examples and replaced by the share of them
  whose label is that answer.
* ``isotonic``: one-vs-rest isotonic regression of [label = answer] on the answer's probability
  (scikit-learn's `IsotonicRegression`, clipped outside the validation range), as scikit-learn's
  `CalibratedClassifierCV(method="isotonic")` does.
* ``ets``: ensemble temperature scaling (Zhang et al. 2020), ``w0 softmax(z / T) + w1 softmax(z) +
  w2 / K``: T by NLL (as ``temperature``), then w on the simplex by the Brier score, exactly (every
  face of the simplex is solved in closed form, the best feasible one kept).
* ``contextual``: contextual calibration (Zhao et al. 2021): ``p / p_cf`` renormalised, ``p_cf`` the
  mean answer distribution on content-free inputs (`content_free_probs`); it uses no labels.

Binning and isotonic scores can tie, and renormalising the one-vs-rest values mixes them, so both may
change the predicted answer; a row whose one-vs-rest values are all 0 becomes uniform over its
offered answers (scikit-learn's rule).

Apart from the table (`core.task.recalibration.registry`) so that each method reads as its own
function with its reference; adding one is a function here with its `_register` entry.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from scipy.special import log_softmax

from ...errors import UserError
from .. import calibration as cal
from ..dirichlet import FOLDS, LAMBDAS, Diverged, fit_dirichlet
from .registry import NotFittable, _Fit, _register, _Validation

RECALIBRATION_VERSION = 1
"""Bump when a method's algorithm changes, so stored repairs are recomputed."""
MAX_MATRIX_ANSWERS = 8
"""Matrix scaling is offered up to this many answers (K^2 + K = 72 parameters)."""
T_BOUNDS = (0.05, 20.0)
"""`core.task.calibration.fit_temperature`'s search range."""


def _renormalised(values: np.ndarray, offered: np.ndarray) -> np.ndarray:
    """Rows of non-negative values over the offered answers, scaled to sum to 1; all-zero rows become uniform."""
    values = np.where(offered, values, 0.0)
    total = values.sum(axis=1, keepdims=True)
    uniform = offered / offered.sum(axis=1, keepdims=True)
    return np.divide(values, total, out=uniform.astype(np.float64), where=total > 0)


def _two_answers(val: _Validation, what: str) -> None:
    present = np.unique(val.labels)
    if len(present) < 2:
        raise NotFittable(f"every validation label is answer {present[0]}: {what} learns per-answer corrections "
                          "and needs at least two different answers among the labels")


def _temperature(val: _Validation) -> tuple[float, list[str]]:
    z = val.logits
    rival = np.where(np.eye(val.k, dtype=bool)[val.labels], -np.inf, z).max(axis=1)
    if (z[np.arange(val.n), val.labels] > rival).all():
        raise NotFittable("every validation answer is right, so the NLL keeps falling as the temperature goes to 0 "
                          "and the fit would make every answer certain")
    t = cal.fit_temperature(z, val.labels)
    notes = []
    if t <= T_BOUNDS[0] * 1.001:
        notes.append(f"the temperature stopped at its lower bound {T_BOUNDS[0]:g}")
    if t >= T_BOUNDS[1] * 0.999:
        notes.append(f"the temperature ran to its upper bound {T_BOUNDS[1]:g}: on validation the answers are "
                     "about as good as guesses, so the repaired probabilities are nearly uniform")
    return t, notes


@_register("temperature", "temperature scaling", False, {},
           "one temperature T for every answer: softmax(logits / T), T minimising the validation NLL",
           lambda k, p: 30, "one parameter; below about 30 examples its optimum moves a lot from sample to sample")
def _fit_temperature(val: _Validation, params: Mapping[str, object]):
    t, notes = _temperature(val)
    return (lambda z: cal.softmax(z, t)), {"temperature": t}, notes


def _dirichlet(kind: str) -> _Fit:
    title = {"diagonal": "vector scaling", "matrix": "matrix scaling"}[kind]

    def run(val: _Validation, params: Mapping[str, object]):
        _two_answers(val, title)
        if kind == "matrix" and val.k > MAX_MATRIX_ANSWERS:
            raise NotFittable(f"matrix scaling fits K^2 + K = {val.k**2 + val.k} parameters for these {val.k} "
                              f"answers; it is offered for tasks of up to {MAX_MATRIX_ANSWERS} answers")
        lam = params["lam"]
        if lam == "cv" and val.n < 2 * FOLDS:
            raise NotFittable(f"choosing lam by cross-validation needs at least {2 * FOLDS} validation "
                              f"examples (got {val.n}); give lam a number")
        try:
            fit = fit_dirichlet(val.log_probs, val.labels, val.offered, kind, None if lam == "cv" else float(lam))
        except Diverged:
            raise NotFittable(f"without a penalty (lam = 0) the best fit is at infinity: the validation answers "
                              f"are separable by their log-probabilities; use lam > 0 or 'cv' ({title})") from None
        notes = []
        if fit.held_out_nll is not None and fit.lam == max(LAMBDAS):
            notes.append(f"cross-validation chose the largest penalty (lam = {fit.lam:g}): the data support little "
                         "beyond " + ("temperature scaling" if kind == "diagonal" else "per-answer scaling"))
        shown = {"weights": fit.weights.tolist(), "bias": fit.bias.tolist(), "lam": fit.lam,
                 "lam_chosen_by": "cross-validation" if fit.held_out_nll is not None else "given"}
        if fit.held_out_nll is not None:
            shown["held_out_nll"] = {f"{g:g}": v for g, v in fit.held_out_nll.items()}

        def apply(z: np.ndarray) -> np.ndarray:
            return np.exp(fit.scores(log_softmax(z, axis=1), np.isfinite(z)))

        return apply, shown, notes

    return run


_register("vector", "vector scaling (diagonal Dirichlet)", True, {"lam": "cv"},
          "a weight and a bias per answer on the log-probabilities, shrunk towards temperature scaling (L2, "
          "lam chosen by 5-fold cross-validation on the validation split)",
          lambda k, p: max(30, 20 * k), "2K parameters; about 10 examples per parameter")(_dirichlet("diagonal"))
_register("matrix", "matrix scaling (Dirichlet, ODIR)", True, {"lam": "cv"},
          "a full K x K map of the log-probabilities with a bias, off-diagonal and bias terms penalised (ODIR, "
          "lam chosen by 5-fold cross-validation); only for tasks of up to 8 answers",
          lambda k, p: 10 * (k * k + k), "K^2 + K parameters; about 10 examples per parameter")(_dirichlet("matrix"))


def _equal_mass_edges(scores: np.ndarray, n_bins: int) -> np.ndarray:
    """Inner bin edges: the first score of each of ``n_bins`` equal-mass chunks after the first, de-duplicated.

    A score equal to an edge belongs to the bin above it, so every bin holds at least its edge's examples.
    """
    s = np.sort(scores)
    cut = s[[round(b * len(s) / n_bins) for b in range(1, n_bins)]] if len(s) else s
    return np.unique(cut[cut > s[0]]) if len(s) else cut


@_register("binning", "histogram binning", True, {"n_bins": 10},
           "one-vs-rest: each answer's probability cut into equal-mass bins of the validation examples and replaced "
           "by the share of them whose label is that answer; renormalised",
           lambda k, p: 20 * int(p["n_bins"]),  # type: ignore[call-overload]
           "each bin's value is a proportion over n / bins examples; at 20 per bin its standard error can be 0.11")
def _fit_binning(val: _Validation, params: Mapping[str, object]):
    _two_answers(val, "histogram binning")
    probs = cal.softmax(val.logits)
    edges, values = [], []
    for k in range(val.k):
        rows = val.offered[:, k]
        e = _equal_mass_edges(probs[rows, k], int(params["n_bins"]))  # type: ignore[call-overload]
        hit = (val.labels[rows] == k).astype(np.float64)
        b = np.searchsorted(e, probs[rows, k], side="right")
        count = np.bincount(b, minlength=len(e) + 1)
        edges.append(e)
        values.append(np.bincount(b, weights=hit, minlength=len(e) + 1) / np.maximum(count, 1))

    def apply(z: np.ndarray) -> np.ndarray:
        p, offered = cal.softmax(z), np.isfinite(z)
        out = np.column_stack([values[k][np.searchsorted(edges[k], p[:, k], side="right")] for k in range(z.shape[1])])
        return _renormalised(out, offered)

    return apply, {"edges": [e.tolist() for e in edges], "values": [v.tolist() for v in values]}, []


@_register("isotonic", "isotonic regression", True, {},
           "one-vs-rest isotonic regression of each answer's probability (scikit-learn), renormalised",
           lambda k, p: 1000, "a free monotone step function; scikit-learn advises against it below about 1,000")
def _fit_isotonic(val: _Validation, params: Mapping[str, object]):
    from sklearn.isotonic import IsotonicRegression  # imported here: it takes about a second to import

    _two_answers(val, "isotonic regression")
    probs = cal.softmax(val.logits)
    models = []
    for k in range(val.k):
        rows = val.offered[:, k]
        hit = (val.labels[rows] == k).astype(np.float64)
        models.append(IsotonicRegression(out_of_bounds="clip").fit(probs[rows, k], hit))

    def apply(z: np.ndarray) -> np.ndarray:
        p = cal.softmax(z)
        return _renormalised(np.column_stack([m.predict(p[:, k]) for k, m in enumerate(models)]), np.isfinite(z))

    shown = {"steps": [len(m.X_thresholds_) for m in models]}
    return apply, shown, []


def simplex_least_squares(gram: np.ndarray, cross: np.ndarray) -> np.ndarray:
    """argmin over the probability simplex of ``w' G w - 2 c' w``, exactly, for a few components.

    Every face of the simplex is solved with its equality constraint (KKT, least squares when the
    face's Gram matrix is singular); the feasible solution with the lowest objective is kept.
    """
    m = len(cross)
    best, best_value = None, np.inf
    for mask in range(1, 2**m):
        face = [i for i in range(m) if mask >> i & 1]
        f = len(face)
        kkt = np.zeros((f + 1, f + 1))
        kkt[:f, :f] = 2 * gram[np.ix_(face, face)]
        kkt[:f, f] = kkt[f, :f] = 1.0
        rhs = np.append(2 * cross[face], 1.0)
        sol = np.linalg.lstsq(kkt, rhs, rcond=None)[0][:f]
        if sol.min() < -1e-12 or abs(sol.sum() - 1) > 1e-9:
            continue
        w = np.zeros(m)
        w[face] = np.clip(sol, 0, None)
        w /= w.sum()
        value = float(w @ gram @ w - 2 * cross @ w)
        if value < best_value - 1e-15:
            best, best_value = w, value
    assert best is not None  # every vertex is feasible
    return best


def _ets_components(z: np.ndarray, t: float) -> np.ndarray:
    offered = np.isfinite(z)
    return np.stack([cal.softmax(z, t), cal.softmax(z), offered / offered.sum(axis=1, keepdims=True)])


@_register("ets", "ensemble temperature scaling", False, {},
           "w0 softmax(logits / T) + w1 softmax(logits) + w2 uniform: T by NLL, then the weights on the simplex by "
           "the Brier score (Zhang et al. 2020)",
           lambda k, p: 30, "three parameters (T and two free weights); about 10 examples per parameter")
def _fit_ets(val: _Validation, params: Mapping[str, object]):
    t, notes = _temperature(val)
    parts = _ets_components(val.logits, t)  # [3, n, K]
    onehot = np.eye(val.k)[val.labels]
    gram = np.einsum("aik,bik->ab", parts, parts)
    w = simplex_least_squares(gram, np.einsum("aik,ik->a", parts, onehot))
    if w[0] + w[1] < 1e-9:
        raise NotFittable("the best mixture is all uniform (w2 = 1): on validation the model's answers are no "
                          "better than guesses, and a uniform answer has no predicted answer")

    def apply(z: np.ndarray) -> np.ndarray:
        return np.einsum("a,aik->ik", w, _ets_components(z, t))

    return apply, {"temperature": t, "weights": w.tolist()}, notes


@_register("contextual", "contextual calibration", True, {},
           "each probability divided by the model's mean answer probability on content-free inputs ('N/A', '', the "
           "mask token), renormalised (Zhao et al. 2021); no labels are used",
           lambda k, p: 0, "it fits nothing on the validation labels", uses_labels=False)
def _fit_contextual(val: _Validation, params: Mapping[str, object]):
    if val.content_free is None:
        raise NotFittable("contextual calibration needs the model's answers on content-free inputs "
                          "(content_free_probs), scored under the same prompt and mask")
    p_cf = np.asarray(val.content_free, dtype=np.float64)
    if p_cf.shape != (val.k,) or not np.isfinite(p_cf).all() or (p_cf < 0).any():
        raise UserError(f"content-free probabilities must be {val.k} non-negative numbers (got {p_cf!r})")
    if (p_cf <= 1e-300).any():
        zero = ", ".join(str(i) for i in np.flatnonzero(p_cf <= 1e-300))
        raise NotFittable(f"on content-free inputs the model gives answer(s) {zero} no probability at all, and "
                          "dividing by zero is undefined")
    log_cf = np.log(p_cf / p_cf.sum())

    def apply(z: np.ndarray) -> np.ndarray:
        return np.exp(log_softmax(log_softmax(z, axis=1) - log_cf, axis=1))

    return apply, {"content_free_probs": (p_cf / p_cf.sum()).tolist()}, []
