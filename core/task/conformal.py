"""Conformal prediction sets from answer probabilities: does the pruned model still know when it does not know?

A prediction set holds every answer whose *score* (how unusual that answer would be for this
example) is at most a threshold ``qhat``. Split conformal calibration picks ``qhat`` on the
validation examples so that the sets hold the correct answer for at least 1 - alpha of new
examples, whatever the model: the guarantee is marginal (on average over examples and over the
calibration draw), and a worse model pays with larger sets, not with lost coverage. So the
comparison of a full and a pruned model is in the set sizes at (nearly) equal coverage.

* **Scores** (`METHODS`), all of probabilities renormalised over the offered answers:
  LAC ``1 - p_y`` (Sadinle et al. 2019); APS the probability of every answer at least as likely as
  y (Romano et al. 2020), deterministic, or randomised: the mass strictly above y plus ``u`` times
  the mass tied with y, ``u`` one uniform draw per example (a tie block is ranked as one, so
  answers of equal probability are treated alike and the label order never matters; without ties
  this is Romano's ``sum_{j above y} p_j + u p_y``); RAPS (Angelopoulos et al. 2021) randomised APS
  plus ``lambda * max(0, rank(y) - k_reg)``, with fixed lambda = 0.01 and k_reg = 1 (tuning them
  would need a third split). An answer that is not offered (probability exactly 0, when a row has
  fewer options) scores +inf: it is in no set.
* **Threshold.** ``qhat`` is the k-th smallest calibration score, ``k = ceil((n + 1)(1 - alpha))``,
  with k computed in exact rational arithmetic from the decimal alpha as written
  (`core.task.bootstrap.exact_fraction`). ``np.quantile(s, k / n, method="higher")`` returns the
  (k+1)-th score whenever k < n, and a float ``ceil((n + 1) * (1 - alpha))`` misrounds some pairs
  (n = 149, alpha = 0.18: 124 instead of 123). k > n would mean the all-label set for everyone; it
  happens when n < 1/alpha - 1 and is refused (`check_alpha`), naming the smallest alpha n allows,
  1/(n + 1).
* **What is reported** (`SetReport`), on the test split with the threshold from validation:
  coverage, mean set size, the share of singleton, empty and all-label (every offered answer)
  sets, coverage within each set size (size-stratified, Angelopoulos & Bates 2021), coverage
  within each correct answer and the class-conditional coverage gap, the mean over answers of
  ``|coverage(answer) - (1 - alpha)|`` (Ding et al. 2023).
* **Uncertainty.** Coverage given one calibration set is Beta(k, n + 1 - k), so an interval that
  holds ``qhat`` fixed is too narrow. Each bootstrap resample therefore redraws the validation
  split too and recalibrates on it: the validation scores are sorted once, and a resample's k-th
  smallest is read from cumulative counts (the first sorted position whose cumulative count reaches
  k; a resample has n units, so k is the same for all). The resampled thresholds take few distinct
  values, so each test example's contribution (covered, size, singleton, ...) is computed once per
  distinct threshold and summed with the test resample counts. The randomised methods' draws ``u``
  belong to their example and travel with it into every resample; both sides of a comparison share
  them and both resamplings. Intervals and paired differences follow `core.task.bootstrap`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from fractions import Fraction

import numpy as np

from ..errors import UserError
from .bootstrap import PairedReports, ceil_fraction, exact_fraction, interval, paired_reports
from .uncertainty import N_RESAMPLES, Interval, resample_counts

DEFAULT_ALPHA = 0.1
RAPS_LAMBDA = 0.01
RAPS_K_REG = 1
KEYS = ("coverage", "set_size", "singleton_share", "empty_share", "all_label_share", "class_coverage_gap")
"""The metrics with intervals and paired differences (the `core.metrics.METRICS` keys)."""
_TOLERANCE = 1e-6  # how far a row of probabilities may sum from 1


# ---------------------------------------------------------------- scores


def _above_and_tied(probs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """[n, K] each: the mass of answers more likely than each answer, the mass tied with it, its rank (1 = top)."""
    other, this = probs[:, None, :], probs[:, :, None]
    above, tied = other > this, other == this
    return (np.einsum("nkj,nj->nk", above.astype(np.float64), probs),
            np.einsum("nkj,nj->nk", tied.astype(np.float64), probs), 1 + above.sum(axis=2))


def _unoffered(probs: np.ndarray, scores: np.ndarray) -> np.ndarray:
    return np.where(probs > 0, scores, np.inf)


def lac_scores(probs: np.ndarray, u: np.ndarray | None = None) -> np.ndarray:
    """LAC: ``1 - p`` for every answer (+inf where not offered); ``u`` is unused."""
    return _unoffered(probs, 1.0 - probs)


def aps_scores(probs: np.ndarray, u: np.ndarray | None = None) -> np.ndarray:
    """APS: the mass above each answer plus its tie block's mass, times ``u`` [n] when given (randomised)."""
    above, tied, _ = _above_and_tied(probs)
    return _unoffered(probs, above + (tied if u is None else u[:, None] * tied))


def raps_scores(probs: np.ndarray, u: np.ndarray, lam: float = RAPS_LAMBDA, k_reg: int = RAPS_K_REG) -> np.ndarray:
    """RAPS: randomised APS plus ``lam * max(0, rank - k_reg)``."""
    above, tied, rank = _above_and_tied(probs)
    return _unoffered(probs, above + u[:, None] * tied + lam * np.maximum(0, rank - k_reg))


@dataclass(frozen=True)
class Method:
    """A conformal score: its key, display title, whether it needs one uniform draw per example, and its meaning."""

    key: str
    title: str
    randomised: bool
    meaning: str
    score: Callable[[np.ndarray, np.ndarray | None], np.ndarray] = field(repr=False)


METHODS: dict[str, Method] = {m.key: m for m in (
    Method("lac", "LAC", False, "score 1 - p(answer): the smallest sets on average; coverage may be uneven "
           "between easy and hard examples", lac_scores),
    Method("aps", "APS", False, "score = probability of the answers at least as likely as this one: larger "
           "sets for uncertain examples, never randomised", aps_scores),
    Method("aps-randomised", "APS (randomised)", True, "APS with the answer's own probability counted a "
           "uniform random fraction: coverage close to exactly 1 - alpha, sets depend on the seed", aps_scores),
    Method("raps", "RAPS", True, f"randomised APS plus {RAPS_LAMBDA} per rank beyond the top {RAPS_K_REG}: "
           "discourages long tails of unlikely answers", raps_scores),
)}


def conformal_method(key: str) -> Method:
    """The conformal method named ``key``, or a `UserError` that lists the known ones."""
    try:
        return METHODS[key]
    except KeyError:
        known = ", ".join(f"{m.key} ({m.title})" for m in METHODS.values())
        raise UserError(f"unknown conformal method {key!r}; known: {known}") from None


# ---------------------------------------------------------------- inputs


def _probs(probs: np.ndarray, what: str) -> np.ndarray:
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 2 or len(probs) == 0 or probs.shape[1] == 0:
        raise UserError(f"the {what} probabilities must be a non-empty [examples, answers] array "
                        f"(got shape {probs.shape})")
    if not np.isfinite(probs).all() or (probs < 0).any():
        raise UserError(f"the {what} probabilities must be finite and non-negative; pass softmax(logits), not logits")
    sums = probs.sum(axis=1)
    bad = np.flatnonzero(np.abs(sums - 1) > _TOLERANCE)
    if len(bad):
        raise UserError(f"each row of the {what} probabilities must sum to 1 (row {bad[0]} sums to "
                        f"{sums[bad[0]]:.6g}); pass softmax(logits), not logits")
    return probs


def _labels(labels: np.ndarray, probs: np.ndarray, what: str) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.shape != (len(probs),):
        raise UserError(f"there are {len(probs)} rows of {what} probabilities but {labels.size} labels")
    if labels.dtype.kind not in "iu" or labels.min() < 0 or labels.max() >= probs.shape[1]:
        raise UserError(f"the {what} labels must be integer answer indices 0-{probs.shape[1] - 1}")
    zero = np.flatnonzero(probs[np.arange(len(labels)), labels] == 0)
    if len(zero):
        raise UserError(f"{len(zero)} {what} example(s) give probability 0 to their correct answer (e.g. row "
                        f"{zero[0]}): an answer that is not offered cannot be correct")
    return labels.astype(np.int64)


def _uniforms(u: np.ndarray | None, n: int, m: Method) -> np.ndarray | None:
    if not m.randomised:
        return None
    if u is None:
        raise UserError(f"{m.title} is randomised: pass u, one uniform draw in [0, 1) per example")
    u = np.asarray(u, dtype=np.float64)
    if u.shape != (n,) or (u < 0).any() or (u > 1).any():
        raise UserError(f"u must hold one number in [0, 1] per example ({n}; got shape {u.shape})")
    return u


def _stream(seed: int, purpose: int) -> np.random.SeedSequence:
    return np.random.SeedSequence([seed, purpose])


def draws_u(n_val: int, n_test: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The randomised methods' uniform draws for ``seed``: one per validation example, one per test example."""
    rng = np.random.default_rng(_stream(seed, 1))
    return rng.random(n_val), rng.random(n_test)


# ---------------------------------------------------------------- threshold


def rank(n: int, alpha: float | str | Fraction) -> int:
    """``k = ceil((n + 1)(1 - alpha))``, exact (alpha read as the decimal written)."""
    return ceil_fraction((n + 1) * (1 - exact_fraction(alpha, "alpha")))


def _up(x: Fraction) -> str:
    """``x`` as a decimal rounded up (about 4 significant digits), so that the number shown is allowed."""
    places = max(4, 3 - math.floor(math.log10(x)))
    return str(float(Fraction(ceil_fraction(x * 10**places), 10**places)))


def check_alpha(alpha: float | str | Fraction, n_cal: int) -> Fraction:
    """alpha as an exact fraction, or a `UserError`: outside (0, 1), or too few calibration examples for it.

    ``n_cal`` examples allow alpha >= 1/(n_cal + 1): below that, k = ceil((n + 1)(1 - alpha)) > n
    and the only valid set would hold every answer.
    """
    a = exact_fraction(alpha, "the miscoverage alpha")
    if not 0 < a < 1:
        raise UserError(f"the miscoverage alpha must be strictly between 0 and 1 (got {alpha}): it is the share "
                        f"of examples whose set may miss the correct answer, e.g. 0.1 for 90% coverage")
    if n_cal < 1:
        raise UserError("conformal calibration needs at least one validation example (got 0)")
    if ceil_fraction((n_cal + 1) * (1 - a)) > n_cal:
        smallest = Fraction(1, n_cal + 1)
        raise UserError(f"{n_cal} calibration example(s) are too few for alpha = {alpha}: n examples allow alpha "
                        f">= 1/(n + 1), so the smallest alpha {n_cal} allow is 1/{n_cal + 1} ({_up(smallest)}); "
                        f"alpha = {alpha} needs at least {ceil_fraction(1 / a - 1)} validation examples")
    return a


def threshold(scores: np.ndarray, alpha: float | str | Fraction) -> float:
    """``qhat``: the ``ceil((n + 1)(1 - alpha))``-th smallest of the calibration ``scores``."""
    s = np.asarray(scores, dtype=np.float64).ravel()
    a = check_alpha(alpha, len(s))
    k = ceil_fraction((len(s) + 1) * (1 - a))
    return float(np.partition(s, k - 1)[k - 1])


def scores(probs: np.ndarray, method: str = "lac", u: np.ndarray | None = None) -> np.ndarray:
    """[n, K]: every answer's score under the method (+inf where not offered)."""
    probs, m = _probs(probs, "given"), conformal_method(method)
    return m.score(probs, _uniforms(u, len(probs), m))


def calibrate(val_probs: np.ndarray, val_labels: np.ndarray, alpha: float | str | Fraction = DEFAULT_ALPHA,
              method: str = "lac", u: np.ndarray | None = None) -> float:
    """``qhat`` from the validation examples' scores of their correct answers."""
    val_probs = _probs(val_probs, "validation")
    val_labels = _labels(val_labels, val_probs, "validation")
    s = scores(val_probs, method, u)
    return threshold(s[np.arange(len(val_labels)), val_labels], alpha)


def prediction_sets(probs: np.ndarray, qhat: float, method: str = "lac", u: np.ndarray | None = None
                    ) -> np.ndarray:
    """[n, K] bool: the answers whose score is at most ``qhat``."""
    return scores(probs, method, u) <= qhat


def calibrated_sets(val_probs: np.ndarray, val_labels: np.ndarray, test_probs: np.ndarray,
                    alpha: float | str | Fraction = DEFAULT_ALPHA, method: str = "lac", seed: int = 0
                    ) -> tuple[float, np.ndarray]:
    """``qhat`` from validation and each test example's set, with the same draws as `conformal_report`."""
    u_val, u_test = draws_u(len(val_probs), len(test_probs), seed)
    qhat = calibrate(val_probs, val_labels, alpha, method, u_val)
    return qhat, prediction_sets(test_probs, qhat, method, u_test)


# ---------------------------------------------------------------- report


@dataclass(frozen=True)
class SetReport:
    """Split-conformal sets on the test split, calibrated on validation."""

    method: str
    alpha: float
    n: int
    """Test examples."""
    n_cal: int
    qhat: float
    coverage: float
    set_size: float
    singleton_share: float
    empty_share: float
    all_label_share: float
    class_coverage_gap: float
    size_coverage: tuple[tuple[int, int, float], ...]
    """(set size, test examples with a set of that size, their coverage), for each size that occurs."""
    class_coverage: tuple[tuple[int, int, float], ...]
    """(correct answer, test examples with that answer, their coverage), for each answer that occurs."""

    def as_dict(self) -> dict:
        out = asdict(self)
        out["size_coverage"] = [{"size": s, "n": c, "coverage": v} for s, c, v in self.size_coverage]
        out["class_coverage"] = [{"label": s, "n": c, "coverage": v} for s, c, v in self.class_coverage]
        return out


@dataclass(frozen=True)
class _Side:
    """One model's scores: validation scores of the correct answers, sorted; test scores of every answer."""

    val_sorted: np.ndarray
    val_order: np.ndarray
    test_scores: np.ndarray
    test_true: np.ndarray
    offered: np.ndarray

    def stats(self, qhat: float, onehot: np.ndarray) -> np.ndarray:
        """[n_test, 5 + K]: covered, set size, singleton, empty, all-label, covered per correct answer."""
        sets = self.test_scores <= qhat
        size = sets.sum(axis=1)
        covered = self.test_true <= qhat
        columns = [covered, size, size == 1, size == 0, size == self.offered]
        return np.column_stack([*(c.astype(np.float64) for c in columns), covered[:, None] * onehot])


def _side(val_probs: np.ndarray, val_labels: np.ndarray, test_probs: np.ndarray, test_labels: np.ndarray,
          m: Method, u_val: np.ndarray, u_test: np.ndarray) -> _Side:
    val_probs, test_probs = _probs(val_probs, "validation"), _probs(test_probs, "test")
    if val_probs.shape[1] != test_probs.shape[1]:
        raise UserError(f"validation and test have different numbers of answers "
                        f"({val_probs.shape[1]} vs {test_probs.shape[1]})")
    val_labels = _labels(val_labels, val_probs, "validation")
    test_labels = _labels(test_labels, test_probs, "test")
    sv = m.score(val_probs, u_val if m.randomised else None)[np.arange(len(val_labels)), val_labels]
    st = m.score(test_probs, u_test if m.randomised else None)
    order = np.argsort(sv, kind="stable")
    return _Side(sv[order], order, st, st[np.arange(len(test_labels)), test_labels], (test_probs > 0).sum(axis=1))


def _metrics(sums: np.ndarray, class_counts: np.ndarray, n: int, target: float) -> dict[str, np.ndarray]:
    """Every `KEYS` metric of each row of summed per-example stats ([R, 5 + K]) and class counts ([R, K])."""
    present = class_counts > 0
    per_class = np.abs(sums[:, 5:] / np.where(present, class_counts, 1) - target)
    gap = np.where(present, per_class, 0).sum(axis=1) / present.sum(axis=1)
    return {"coverage": sums[:, 0] / n, "set_size": sums[:, 1] / n, "singleton_share": sums[:, 2] / n,
            "empty_share": sums[:, 3] / n, "all_label_share": sums[:, 4] / n, "class_coverage_gap": gap}


def _report(side: _Side, labels: np.ndarray, k: int, a: Fraction, key: str, alpha: float) -> SetReport:
    K = side.test_scores.shape[1]
    onehot = np.eye(K)[labels]
    qhat = float(side.val_sorted[k - 1])
    stats = side.stats(qhat, onehot)
    values = {name: float(v[0]) for name, v in
              _metrics(stats.sum(axis=0)[None], onehot.sum(axis=0)[None], len(labels), float(1 - a)).items()}
    size, covered = stats[:, 1].astype(int), stats[:, 0]
    by_size = tuple((int(s), int((size == s).sum()), float(covered[size == s].mean())) for s in np.unique(size))
    by_class = tuple((int(c), int((labels == c).sum()), float(covered[labels == c].mean())) for c in np.unique(labels))
    return SetReport(method=key, alpha=alpha, n=len(labels), n_cal=len(side.val_sorted), qhat=qhat,
                     size_coverage=by_size, class_coverage=by_class, **values)


def _draws(side: _Side, labels: np.ndarray, k: int, target: float, val_counts: np.ndarray,
           test_counts: np.ndarray) -> dict[str, np.ndarray]:
    """Every `KEYS` metric on every resample, the threshold recalibrated on each validation resample."""
    cum = np.cumsum(val_counts[:, side.val_order], axis=1)
    qhats = side.val_sorted[(cum < k).sum(axis=1)]  # each resample's k-th smallest score
    onehot = np.eye(side.test_scores.shape[1])[labels]
    weights = test_counts.astype(np.float64)
    sums = np.empty((len(weights), 5 + onehot.shape[1]))
    distinct, which = np.unique(qhats, return_inverse=True)
    for i, q in enumerate(distinct):
        rows = which == i
        sums[rows] = np.einsum("rn,nm->rm", weights[rows], side.stats(float(q), onehot))
    return _metrics(sums, np.einsum("rn,nk->rk", weights, onehot), len(labels), target)


def _prepared(val_probs: np.ndarray, val_labels: np.ndarray, test_probs: np.ndarray, test_labels: np.ndarray,
              alpha: float | str | Fraction, method: str, seed: int
              ) -> tuple[_Side, np.ndarray, Method, Fraction, int]:
    m = conformal_method(method)
    a = check_alpha(alpha, len(np.asarray(val_labels)))
    u_val, u_test = draws_u(len(np.asarray(val_labels)), len(np.asarray(test_labels)), seed)
    side = _side(val_probs, val_labels, test_probs, test_labels, m, u_val, u_test)
    return side, np.asarray(test_labels, dtype=np.int64), m, a, ceil_fraction((len(side.val_sorted) + 1) * (1 - a))


def _resamples(n_val: int, n_test: int, n_resamples: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Validation and test resample counts; the test ones are those of every other metric for ``seed``."""
    val_seed = int(_stream(seed, 2).generate_state(1)[0])
    return resample_counts(n_val, n_resamples, val_seed), resample_counts(n_test, n_resamples, seed)


def conformal_report(val_probs: np.ndarray, val_labels: np.ndarray, test_probs: np.ndarray,
                     test_labels: np.ndarray, alpha: float | str | Fraction = DEFAULT_ALPHA, method: str = "lac",
                     seed: int = 0) -> SetReport:
    """Calibrate on validation, evaluate the sets on test (``seed`` draws the randomised methods' u)."""
    side, labels, m, a, k = _prepared(val_probs, val_labels, test_probs, test_labels, alpha, method, seed)
    return _report(side, labels, k, a, m.key, float(alpha))


def conformal_draws(val_probs: np.ndarray, val_labels: np.ndarray, test_probs: np.ndarray, test_labels: np.ndarray,
                    val_counts: np.ndarray, test_counts: np.ndarray, alpha: float | str | Fraction = DEFAULT_ALPHA,
                    method: str = "lac", seed: int = 0) -> dict[str, np.ndarray]:
    """Every `KEYS` metric on each pair of rows of ``val_counts`` [R, n_val] and ``test_counts`` [R, n_test]."""
    side, labels, _, a, k = _prepared(val_probs, val_labels, test_probs, test_labels, alpha, method, seed)
    val_counts, test_counts = np.asarray(val_counts), np.asarray(test_counts)
    if val_counts.shape[1:] != (len(side.val_sorted),) or test_counts.shape[1:] != (len(labels),) \
            or len(val_counts) != len(test_counts):
        raise UserError(f"the resample counts must be [R, {len(side.val_sorted)}] and [R, {len(labels)}] "
                        f"(got {val_counts.shape} and {test_counts.shape})")
    return _draws(side, labels, k, float(1 - a), val_counts, test_counts)


def conformal_intervals(val_probs: np.ndarray, val_labels: np.ndarray, test_probs: np.ndarray,
                        test_labels: np.ndarray, alpha: float | str | Fraction = DEFAULT_ALPHA, method: str = "lac",
                        n_resamples: int = N_RESAMPLES, seed: int = 0) -> tuple[SetReport, dict[str, Interval]]:
    """The report and each `KEYS` metric's 95% interval, recalibrating in every resample."""
    side, labels, m, a, k = _prepared(val_probs, val_labels, test_probs, test_labels, alpha, method, seed)
    report = _report(side, labels, k, a, m.key, float(alpha))
    val_counts, test_counts = _resamples(len(side.val_sorted), len(labels), n_resamples, seed)
    draws = _draws(side, labels, k, float(1 - a), val_counts, test_counts)
    return report, {key: interval(getattr(report, key), draws[key]) for key in KEYS}


PairedSets = PairedReports
"""Full against pruned prediction sets: `PairedReports` of two `SetReport`."""


def paired_conformal(val_base: np.ndarray, val_other: np.ndarray, val_labels: np.ndarray, test_base: np.ndarray,
                     test_other: np.ndarray, test_labels: np.ndarray, alpha: float | str | Fraction = DEFAULT_ALPHA,
                     method: str = "lac", n_resamples: int = N_RESAMPLES, seed: int = 0) -> PairedSets:
    """Full against pruned: each side calibrated on its own validation scores, both on the same resamples."""
    if np.shape(val_base) != np.shape(val_other) or np.shape(test_base) != np.shape(test_other):
        raise UserError(f"the two sides have different shapes (validation {np.shape(val_base)} vs "
                        f"{np.shape(val_other)}, test {np.shape(test_base)} vs {np.shape(test_other)})")
    base = _prepared(val_base, val_labels, test_base, test_labels, alpha, method, seed)
    other = _prepared(val_other, val_labels, test_other, test_labels, alpha, method, seed)
    side, labels, m, a, k = base
    val_counts, test_counts = _resamples(len(side.val_sorted), len(labels), n_resamples, seed)
    reports, draws = [], []
    for s in (base[0], other[0]):
        reports.append(_report(s, labels, k, a, m.key, float(alpha)))
        draws.append(_draws(s, labels, k, float(1 - a), val_counts, test_counts))
    (ra, rb), (da, db) = reports, draws
    return paired_reports(ra, rb, da, db, KEYS)
