"""Every recalibration method against a kept library, an independent optimiser or a case worked by hand."""

from __future__ import annotations

import numpy as np
import pytest
from helpers.tiny_models import tiny_loaded
from scipy.optimize import check_grad, minimize
from scipy.special import log_softmax, softmax
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.calibration import CalibratedClassifierCV
from sklearn.frozen import FrozenEstimator
from sklearn.linear_model import LogisticRegression

from core.errors import UserError
from core.model.pruning import dropped_attention
from core.task import calibration as cal
from core.task.data import Example, dataset_from_rows
from core.task.dirichlet import FOLDS, LAMBDAS, fit_dirichlet, objective
from core.task.prompts import PromptBuilder, PromptConfig
from core.task.recalibration import (
    RECALIBRATORS,
    NotFittable,
    content_free_probs,
    content_free_texts,
    resolve_params,
    simplex_least_squares,
)
from core.task.scoring import full_logits_loop
from core.task.setup import Setup


class Identity(ClassifierMixin, BaseEstimator):
    """A 'classifier' whose probabilities are its input: how scikit-learn calibrates given probabilities."""

    def fit(self, x, y):
        self.classes_ = np.unique(y)
        return self

    def predict_proba(self, x):
        return np.asarray(x)

    def predict(self, x):
        return self.classes_[np.asarray(x).argmax(axis=1)]


def sklearn_calibrated(method: str, val_probs, val_labels, test_probs) -> np.ndarray:
    model = CalibratedClassifierCV(FrozenEstimator(Identity().fit(val_probs, val_labels)), method=method)
    return model.fit(val_probs, val_labels).predict_proba(test_probs)


def miscalibrated(n: int, k: int, seed: int, scale: float = 3.0, bias: float = 0.8) -> tuple[np.ndarray, np.ndarray]:
    """Overconfident logits with a bias towards answer 0 (not separable: labels are drawn from a softer model)."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 1.2, (n, k))
    truth = softmax(z, axis=1)
    labels = np.array([rng.choice(k, p=p) for p in truth])
    z = scale * z
    z[:, 0] += bias
    return z, labels


def fit(name: str, logits, labels, content_free=None, **params):
    return RECALIBRATORS[name].fit(logits, labels, content_free, **params)


# ---------------------------------------------------------------- temperature, against the app and scikit-learn


@pytest.mark.parametrize("k", [2, 3])
def test_temperature_is_the_apps_fit_and_scikit_learns(k: int) -> None:
    zv, yv = miscalibrated(300, k, 1)
    zt, _ = miscalibrated(100, k, 2)
    fitted = fit("temperature", zv, yv)
    t = cal.fit_temperature(zv, yv)
    assert fitted.params == {"temperature": t} and 1.5 < t < 5
    np.testing.assert_array_equal(fitted.probs(zt), cal.softmax(zt, t))
    reference = sklearn_calibrated("temperature", cal.softmax(zv), yv, cal.softmax(zt))
    np.testing.assert_allclose(fitted.probs(zt), reference, atol=1e-4)


def test_temperature_at_its_lower_bound_is_not_fittable_and_at_its_upper_bound_says_so() -> None:
    z = np.array([[3.0, -3.0], [-2.0, 2.0], [4.0, 0.0], [0.0, 5.0]])
    for name in ("temperature", "ets"):
        with pytest.raises(NotFittable, match="every validation answer is right"):
            fit(name, z, np.array([0, 1, 0, 1]))  # NLL falls as T -> 0
    assert fit("temperature", z, np.array([0, 1, 0, 0])).params["temperature"] > 1  # one wrong: a finite optimum
    guesses = np.random.default_rng(0).normal(0, 1, (400, 2))
    labels = np.random.default_rng(1).integers(0, 2, 400)
    fitted = fit("temperature", guesses, labels)
    assert fitted.params["temperature"] == pytest.approx(20, rel=1e-3) and "upper bound" in fitted.notes[0]


# ---------------------------------------------------------------- isotonic, against scikit-learn


@pytest.mark.parametrize("k", [2, 3])
def test_isotonic_is_scikit_learns_calibrated_classifier(k: int) -> None:
    zv, yv = miscalibrated(400, k, 3)
    zt, _ = miscalibrated(150, k, 4)
    if k == 3:  # a row every one-vs-rest map sends to 0: both give the uniform distribution
        pv = cal.softmax(zv)
        keep = pv.max(axis=1) >= 0.4  # then no answer below 0.4 is ever the label
        zv, yv = zv[keep], pv[keep].argmax(axis=1)
        zt[0] = 0.0
    ours = fit("isotonic", zv, yv).probs(zt)
    reference = sklearn_calibrated("isotonic", cal.softmax(zv), yv, cal.softmax(zt))
    np.testing.assert_allclose(ours, reference, atol=1e-12)
    if k == 3:
        np.testing.assert_allclose(ours[0], [1 / 3] * 3)


# ---------------------------------------------------------------- vector and matrix scaling


def test_two_answer_vector_scaling_without_penalty_is_logistic_regression_on_the_log_probabilities() -> None:
    # s_k = w_k log p_k + b_k with two answers: logit P(1) = w1 x1 - w0 x0 + (b1 - b0), a logistic regression
    zv, yv = miscalibrated(300, 2, 5)
    zt, _ = miscalibrated(100, 2, 6)
    fitted = fit("vector", zv, yv, lam=0)
    reference = LogisticRegression(C=np.inf, tol=1e-10, max_iter=10_000).fit(log_softmax(zv, axis=1), yv)
    np.testing.assert_allclose(fitted.probs(zt), reference.predict_proba(log_softmax(zt, axis=1)), atol=1e-5)


def test_matrix_scaling_without_penalty_is_multinomial_logistic_regression() -> None:
    zv, yv = miscalibrated(500, 3, 7)
    zt, _ = miscalibrated(100, 3, 8)
    fitted = fit("matrix", zv, yv, lam=0)
    reference = LogisticRegression(C=np.inf, tol=1e-10, max_iter=10_000).fit(log_softmax(zv, axis=1), yv)
    np.testing.assert_allclose(fitted.probs(zt), reference.predict_proba(log_softmax(zt, axis=1)), atol=1e-5)


def written_out(theta: np.ndarray, kind: str, x: np.ndarray, y: np.ndarray, lam: float) -> float:
    """The penalised NLL spelled out example by example (no shared code with `core.task.dirichlet`)."""
    k = x.shape[1]
    if kind == "diagonal":
        w, b = theta[:k], theta[k:]
        penalty = (sum((wi - np.mean(w)) ** 2 for wi in w) + sum(bi**2 for bi in b)) / k
    else:
        w, b = theta[: k * k].reshape(k, k), theta[k * k:]
        penalty = sum(w[i, j] ** 2 for i in range(k) for j in range(k) if i != j) / (k * (k - 1)) + np.sum(b**2) / k
    total = 0.0
    for xi, yi in zip(x, y, strict=True):
        s = [(w[j] * xi[j] if kind == "diagonal" else np.dot(w[j], xi)) + b[j] for j in range(k)]
        total += np.log(np.sum(np.exp(s))) - s[yi]
    return total / len(y) + lam * penalty


@pytest.mark.parametrize("kind", ["diagonal", "matrix"])
def test_penalised_fit_is_the_optimum_of_the_written_out_objective(kind: str) -> None:
    zv, yv = miscalibrated(120, 3, 9)
    x = log_softmax(zv, axis=1)
    ours = fit_dirichlet(x, yv, np.ones_like(x, dtype=bool), kind, lam=0.1)
    size = 6 if kind == "diagonal" else 12
    start = np.concatenate([np.ones(3) if kind == "diagonal" else np.eye(3).ravel(), np.zeros(3)])
    reference = minimize(written_out, start, args=(kind, x, yv, 0.1), method="BFGS", options={"gtol": 1e-9})
    theta = np.concatenate([ours.weights.ravel(), ours.bias])
    assert len(theta) == size
    assert written_out(theta, kind, x, yv, 0.1) <= reference.fun + 1e-8
    np.testing.assert_allclose(theta, reference.x, atol=2e-3)


@pytest.mark.parametrize("kind", ["diagonal", "matrix"])
def test_objective_gradient_matches_finite_differences(kind: str) -> None:
    zv, yv = miscalibrated(60, 3, 10)
    zv[:10, 2] = -np.inf
    yv[:10] = np.where(yv[:10] == 2, 1, yv[:10])
    offered = np.isfinite(zv)
    x = np.where(offered, log_softmax(zv, axis=1), 0.0)
    theta = np.random.default_rng(0).normal(0, 0.5, 6 if kind == "diagonal" else 12)
    err = check_grad(lambda t: objective(t, kind, x, yv, offered, 0.3)[0],
                     lambda t: objective(t, kind, x, yv, offered, 0.3)[1], theta)
    assert err < 1e-5


def test_a_huge_penalty_turns_vector_scaling_into_temperature_scaling() -> None:
    zv, yv = miscalibrated(300, 3, 11)
    zt, _ = miscalibrated(100, 3, 12)
    vector = fit("vector", zv, yv, lam=1e6)
    np.testing.assert_allclose(vector.probs(zt), fit("temperature", zv, yv).probs(zt), atol=2e-4)


def test_cross_validation_picks_the_lowest_held_out_nll_of_the_documented_folds() -> None:
    zv, yv = miscalibrated(200, 3, 13)
    fitted = fit("vector", zv, yv)
    held_out = {float(g): v for g, v in fitted.params["held_out_nll"].items()}
    assert set(held_out) == set(LAMBDAS) and fitted.params["lam_chosen_by"] == "cross-validation"
    assert fitted.params["lam"] == min(held_out, key=held_out.get)
    # one lam's pooled held-out NLL, redone from the documented rule: seeded permutation, FOLDS chunks
    lam, x, total = 0.01, log_softmax(zv, axis=1), 0.0
    for held in np.array_split(np.random.default_rng(0).permutation(200), FOLDS):
        keep = np.setdiff1d(np.arange(200), held)
        part = fit_dirichlet(x[keep], yv[keep], np.ones((len(keep), 3), dtype=bool), "diagonal", lam)
        total -= part.scores(x[held], np.ones((len(held), 3), dtype=bool))[np.arange(len(held)), yv[held]].sum()
    assert held_out[lam] == pytest.approx(total / 200, rel=1e-4)
    given = fit("vector", zv, yv, lam=fitted.params["lam"])
    np.testing.assert_allclose(given.params["weights"], fitted.params["weights"], atol=1e-6)


def test_class_dependent_bias_is_repaired_by_vector_scaling_not_by_temperature() -> None:
    zv, yv = miscalibrated(1000, 3, 14, scale=1.0, bias=2.0)
    zt, yt = miscalibrated(2000, 3, 15, scale=1.0, bias=2.0)
    vector = fit("vector", zv, yv)
    assert vector.params["lam"] <= 0.01
    assert cal.nll(vector.probs(zt), yt) < cal.nll(fit("temperature", zv, yv).probs(zt), yt) - 0.05


def test_separable_answers_without_penalty_and_too_many_answers_for_matrix_scaling_are_not_fittable() -> None:
    z = np.array([[2.0, 0.0], [1.5, 0.0], [0.0, 1.0], [0.0, 3.0]] * 5)
    with pytest.raises(NotFittable, match="separable"):
        fit("vector", z, np.array([0, 0, 1, 1] * 5), lam=0)
    zv, yv = miscalibrated(200, 9, 16)
    with pytest.raises(NotFittable, match="up to 8 answers"):
        fit("matrix", zv, yv)
    with pytest.raises(NotFittable, match="at least 10 validation examples"):
        fit("vector", zv[:8], yv[:8])


# ---------------------------------------------------------------- histogram binning by hand


def test_histogram_binning_on_six_points_by_hand() -> None:
    p1 = np.array([0.1, 0.2, 0.3, 0.6, 0.7, 0.9])
    val = np.log(np.column_stack([1 - p1, p1]))
    fitted = fit("binning", val, np.array([0, 1, 0, 1, 1, 1]), n_bins=3)
    # answer 1: chunks {0.1, 0.2} {0.3, 0.6} {0.7, 0.9} hold 1/2, 1/2, 2/2 examples labelled 1
    # answer 0: p0 sorted 0.1 0.3 | 0.4 0.7 | 0.8 0.9, labelled 0 by 0/2, 1/2, 1/2
    np.testing.assert_allclose(fitted.params["edges"][1], [0.3, 0.7])
    np.testing.assert_allclose(fitted.params["values"][1], [0.5, 0.5, 1.0])
    np.testing.assert_allclose(fitted.params["edges"][0], [0.4, 0.8])
    np.testing.assert_allclose(fitted.params["values"][0], [0.0, 0.5, 0.5])
    test = np.vstack([np.log([[0.35, 0.65], [0.75, 0.25], [0.05, 0.95]]), val[2]])  # the last sits on an edge
    # 0.65 -> (0, 0.5); 0.25 -> (0.5, 0.5); 0.95 -> (0, 1); p1 = 0.3 goes up: (0.5 at p0 = 0.7, 0.5)
    np.testing.assert_allclose(fitted.probs(test), [[0, 1], [0.5, 0.5], [0, 1], [0.5, 0.5]], atol=1e-12)


# ---------------------------------------------------------------- ensemble temperature scaling


def test_simplex_least_squares_is_the_constrained_optimum() -> None:
    rng = np.random.default_rng(17)
    for _ in range(20):
        a = rng.normal(size=(30, 3))
        target = rng.normal(size=30)
        gram, cross = a.T @ a, a.T @ target
        ours = simplex_least_squares(gram, cross)
        ref = minimize(lambda w, a=a, target=target: np.sum((a @ w - target) ** 2), np.full(3, 1 / 3), method="SLSQP",
                       bounds=[(0, 1)] * 3, constraints={"type": "eq", "fun": lambda w: w.sum() - 1},
                       options={"ftol": 1e-14, "maxiter": 500})
        assert ours.min() >= 0 and ours.sum() == pytest.approx(1)
        assert np.sum((a @ ours - target) ** 2) <= ref.fun + 1e-9


def test_ensemble_temperature_scaling_is_its_mixture_and_keeps_every_answer() -> None:
    zv, yv = miscalibrated(300, 3, 18)
    zt, _ = miscalibrated(100, 3, 19)
    fitted = fit("ets", zv, yv)
    t, w = fitted.params["temperature"], np.array(fitted.params["weights"])
    assert t == cal.fit_temperature(zv, yv) and w.sum() == pytest.approx(1) and w.min() >= 0
    expected = w[0] * cal.softmax(zt, t) + w[1] * cal.softmax(zt) + w[2] / 3
    np.testing.assert_allclose(fitted.probs(zt), expected, atol=1e-14)
    assert (fitted.probs(zt).argmax(axis=1) == zt.argmax(axis=1)).all()
    brier = lambda v: cal.brier(v[0] * cal.softmax(zv, t) + v[1] * cal.softmax(zv) + v[2] / 3, yv)  # noqa: E731
    for other in ([1, 0, 0], [0, 1, 0], [0.5, 0.5, 0], [0.8, 0.1, 0.1]):
        assert brier(w) <= brier(np.array(other)) + 1e-12


# ---------------------------------------------------------------- contextual calibration


def test_contextual_calibration_divides_by_the_content_free_answers_by_hand() -> None:
    fitted = fit("contextual", np.zeros((0, 3)), np.zeros(0, dtype=int), np.array([0.6, 0.2, 0.2]))
    test = np.log(np.array([[0.6, 0.4, 0.0], [0.5, 0.25, 0.25]]) + 1e-300)
    test[0, 2] = -np.inf  # the first example offers two answers
    # [0.6, 0.4] / [0.6, 0.2] = [1, 2] -> [1/3, 2/3]; [0.5, .25, .25] / [.6, .2, .2] = [5/6, 5/4, 5/4] -> /(10/3)
    np.testing.assert_allclose(fitted.probs(test), [[1 / 3, 2 / 3, 0], [0.25, 0.375, 0.375]], atol=1e-12)
    assert fitted.probs(test).argmax(axis=1).tolist() == [1, 1]  # both predictions moved off answer 0
    with pytest.raises(NotFittable, match="content-free"):
        fit("contextual", test, np.array([0, 1]))
    with pytest.raises(NotFittable, match="no probability"):
        fit("contextual", test, np.array([0, 1]), np.array([0.5, 0.5, 0.0]))


def test_content_free_texts_add_the_mask_token_when_there_is_one() -> None:
    class Tok:
        mask_token = "[MASK]"

    assert content_free_texts(Tok()) == ("N/A", "", "[MASK]")
    assert content_free_texts(object()) == ("N/A", "")


ROWS = [{"text": t, "label": lab} for t, lab in [
    ("the film is good", "positive"), ("a bad and boring movie", "negative"), ("I loved it", "positive"),
    ("terrible plot", "negative"), ("wonderful", "positive"), ("bad", "negative")]]


@pytest.mark.parametrize("drop", [(), (0, 2)])
def test_content_free_probs_average_the_plain_loops_answers_through_the_same_prompt(drop: tuple[int, ...]) -> None:
    lm = tiny_loaded("llama")
    ds = dataset_from_rows(ROWS * 4, "tiny")
    setup = Setup(lm, ds)
    builder = PromptBuilder(lm.tokenizer, ds, PromptConfig(), lm.has_chat_template, lm.max_positions)
    with dropped_attention(lm.model, drop):
        logits = full_logits_loop(lm, builder, [Example(str(i), t, 0) for i, t in enumerate(("N/A", ""))])
    got = content_free_probs(setup, drop)
    np.testing.assert_allclose(got, softmax(logits, axis=1).mean(axis=0), atol=1e-5)
    assert got.shape == (2,) and got.sum() == pytest.approx(1)
    other = content_free_probs(setup, (1,) if drop else (0, 2))
    assert not np.allclose(got, other)  # the mask matters: it is scored under the mask asked for


# ---------------------------------------------------------------- every method: offered answers, flags, errors


@pytest.mark.parametrize("name", list(RECALIBRATORS))
def test_every_method_gives_unoffered_answers_nothing_and_never_nan(name: str) -> None:
    zv, yv = miscalibrated(400, 4, 20)
    zt, _ = miscalibrated(200, 4, 21)
    for z, y in ((zv, yv), (zt, None)):
        z[::3, 3] = -np.inf
        z[::5, 2:] = -np.inf
        if y is not None:
            y[::3] = np.where(y[::3] == 3, 0, y[::3])
            y[::5] = np.where(y[::5] >= 2, 1, y[::5])
    fitted = fit(name, zv, yv, np.array([0.4, 0.3, 0.2, 0.1]))
    p = fitted.probs(zt)
    assert np.isfinite(p).all() and (p >= 0).all()
    np.testing.assert_allclose(p.sum(axis=1), 1, atol=1e-12)
    assert (p[~np.isfinite(zt)] == 0).all()
    if not RECALIBRATORS[name].changes_prediction:
        assert (p.argmax(axis=1) == zt.argmax(axis=1)).all()


@pytest.mark.parametrize("name", ["vector", "matrix", "binning", "isotonic"])
def test_per_answer_methods_need_two_answers_among_the_labels(name: str) -> None:
    zv, _ = miscalibrated(100, 2, 22)
    with pytest.raises(NotFittable, match="at least two different answers"):
        fit(name, zv, np.zeros(100, dtype=int))


def test_size_notes_and_minimums() -> None:
    assert RECALIBRATORS["isotonic"].size_note(100, 2) == (
        "fitted on only 100 validation examples; this method needs about 1,000 (a free monotone step function; "
        "scikit-learn advises against it below about 1,000)")
    assert RECALIBRATORS["temperature"].size_note(100, 2) is None
    assert RECALIBRATORS["matrix"].min_validation(4) == 200
    assert RECALIBRATORS["binning"].min_validation(2, {"n_bins": 5}) == 100
    assert RECALIBRATORS["contextual"].min_validation(5) == 0


def test_parameters_are_checked_and_converted() -> None:
    assert resolve_params("vector", {"lam": "0.5"}) == {"lam": 0.5}
    assert resolve_params("binning", {"n_bins": "7"}) == {"n_bins": 7}
    for name, bad in (("vector", {"lam": -1}), ("vector", {"lam": "x"}), ("binning", {"n_bins": 1}),
                      ("binning", {"n_bins": "2.5"}), ("temperature", {"lam": 1})):
        with pytest.raises(UserError):
            resolve_params(name, bad)
    with pytest.raises(UserError, match="unknown recalibration method"):
        resolve_params("platt")
    with pytest.raises(UserError, match="offers"):
        fit("temperature", np.array([[0.0, -np.inf], [1.0, 0.0]]), np.array([1, 0]))
    with pytest.raises(UserError, match="finite"):
        fit("temperature", np.array([[np.nan, 0.0]]), np.array([0]))
    with pytest.raises(UserError, match="with 2 answers"):
        fit("temperature", *miscalibrated(50, 2, 23)).probs(np.zeros((2, 3)))
