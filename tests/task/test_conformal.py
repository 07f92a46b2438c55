"""Conformal prediction sets and their uncertainty (core.task.conformal).

References: MAPIE 1.6 (`SplitConformalClassifier(prefit=True)` around an identity classifier, and
its coverage / width / size-stratified metrics) for LAC and randomised APS; crepes 0.9 (hinge
scores, smoothing off) for LAC; a hand-worked example for deterministic APS and RAPS; integer
arithmetic for the threshold's rank; and seeded simulation of a calibrated model for coverage and
for the width of the recalibrated interval (Beta(k, n + 1 - k) for the calibration draw).
"""

from __future__ import annotations

import json
import math
from fractions import Fraction

import numpy as np
import pytest

from core.errors import UserError
from core.metrics import METRICS
from core.task import conformal as c
from core.task.uncertainty import resample_counts

ALL = tuple(c.METHODS)


def _calibrated(n: int, k: int, rng: np.random.Generator, offered: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """A perfectly calibrated model: the label is drawn from the model's own probabilities.

    With ``offered``, about a third of the rows offer only their first k - 1 answers (the last one has probability 0).
    """
    logits = rng.normal(0, 1.5, (n, k))
    if offered:
        logits[rng.random(n) < 1 / 3, -1] = -np.inf
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    y = np.minimum((rng.random(n)[:, None] > np.cumsum(p, axis=1)).sum(axis=1), k - 1)
    return p, y


def _noisy(p: np.ndarray, rng: np.random.Generator, scale: float = 0.8) -> np.ndarray:
    """Another model on the same examples: the logits perturbed (answers not offered stay at 0)."""
    logits = np.where(p > 0, np.log(np.where(p > 0, p, 1)) + rng.normal(0, scale, p.shape), -np.inf)
    q = np.exp(logits - logits.max(axis=1, keepdims=True))
    return q / q.sum(axis=1, keepdims=True)


def _mapie(k: int, method: str, alpha: float, random_state: int | None = None):
    from mapie.classification import SplitConformalClassifier
    from sklearn.base import BaseEstimator, ClassifierMixin

    class Identity(ClassifierMixin, BaseEstimator):
        """A prefit classifier whose probabilities are its input."""

        def fit(self, x, y=None):
            self.classes_, self.n_features_in_ = np.arange(k), k
            return self

        def predict_proba(self, x):
            return np.asarray(x)

        def predict(self, x):
            return np.asarray(x).argmax(axis=1)

    identity = Identity().fit(np.eye(k), np.arange(k))
    return SplitConformalClassifier(identity, confidence_level=1 - alpha, conformity_score=method, prefit=True,
                                    random_state=random_state)


# ---------------------------------------------------------------- against kept libraries


@pytest.mark.parametrize("alpha", [0.1, 0.2])
@pytest.mark.parametrize("k", [2, 3, 5])
def test_lac_sets_match_mapie(k: int, alpha: float) -> None:
    rng = np.random.default_rng(k)
    pv, yv = _calibrated(500, k, rng)  # 501 (1 - alpha) is not an integer: MAPIE's rank is exact here
    pt, yt = _calibrated(300, k, rng)
    mapie = _mapie(k, "lac", alpha).conformalize(pv, yv)
    _, theirs = mapie.predict_set(pt)
    qhat = c.calibrate(pv, yv, alpha, "lac")
    assert qhat == mapie._mapie_classifier.conformity_score_function_.quantiles_[0]
    assert np.array_equal(c.prediction_sets(pt, qhat, "lac"), theirs[:, :, 0])


@pytest.mark.parametrize("k", [3, 4, 5])
def test_randomised_aps_sets_match_mapie(k: int) -> None:
    """MAPIE's APS scores are cumsum - u p_y with u = RandomState(seed).uniform, one per example, so ours with
    u' = 1 - u; its "randomized" sets drop the last label when (cumsum - qhat) / p > u, the same rule.
    (MAPIE refuses APS on a binary target.)"""
    rng = np.random.default_rng(10 + k)
    pv, yv = _calibrated(500, k, rng)
    pt, yt = _calibrated(300, k, rng)
    state = 7
    mapie = _mapie(k, "aps", 0.1, random_state=state).conformalize(pv, yv)
    _, theirs = mapie.predict_set(pt, conformity_score_params={"include_last_label": "randomized"})
    u_val = 1 - np.random.RandomState(state).uniform(size=len(yv))
    u_test = 1 - np.random.RandomState(state).uniform(size=len(yt))
    qhat = c.calibrate(pv, yv, 0.1, "aps-randomised", u_val)
    assert qhat == pytest.approx(mapie._mapie_classifier.conformity_score_function_.quantiles_[0], abs=1e-12)
    assert np.array_equal(c.prediction_sets(pt, qhat, "aps-randomised", u_test), theirs[:, :, 0])


@pytest.mark.filterwarnings("ignore:Mean of empty slice", "ignore:invalid value encountered")  # MAPIE's empty sizes
def test_report_matches_mapies_metrics() -> None:
    from mapie.metrics.classification import (
        classification_coverage_score,
        classification_mean_width_score,
        classification_ssc,
    )

    rng = np.random.default_rng(3)
    pv, yv = _calibrated(400, 4, rng)
    pt, yt = _calibrated(600, 4, rng)
    report = c.conformal_report(pv, yv, pt, yt, 0.1, "lac")
    _, sets = c.calibrated_sets(pv, yv, pt, 0.1, "lac")
    assert report.coverage == pytest.approx(classification_coverage_score(yt, sets)[0], abs=1e-12)
    assert report.set_size == pytest.approx(classification_mean_width_score(sets), abs=1e-12)
    ssc = classification_ssc(yt, sets)[0]  # coverage among sets of each size 0..K (nan where none)
    for size, n, coverage in report.size_coverage:
        assert n == int((sets.sum(axis=1) == size).sum()) and coverage == pytest.approx(ssc[size], abs=1e-12)


def test_lac_sets_match_crepes_and_its_extra_rank() -> None:
    """crepes includes an answer when (#calibration scores >= its score + 1) / (n + 1) >= alpha: the same sets
    as ours when alpha (n + 1) is not an integer, one rank more when it is (n = 499, alpha = 0.1)."""
    from crepes import ConformalClassifier
    from crepes.extras import hinge

    rng = np.random.default_rng(4)
    pt, yt = _calibrated(300, 3, rng)
    for n, extra in ((500, 0), (499, 1)):
        pv, yv = _calibrated(n, 3, rng)
        alphas_cal = hinge(pv, np.arange(3), yv)
        theirs = ConformalClassifier().fit(alphas_cal).predict_set(hinge(pt), confidence=0.9, smoothing=False)
        s = np.sort(1 - pv[np.arange(n), yv])
        k = c.rank(n, 0.1)
        assert c.calibrate(pv, yv, 0.1, "lac") == s[k - 1]
        assert np.array_equal(c.prediction_sets(pt, s[k - 1 + extra], "lac"), theirs.astype(bool))
        if extra:
            assert not np.array_equal(c.prediction_sets(pt, s[k - 1], "lac"), theirs.astype(bool))


# ---------------------------------------------------------------- by hand


def test_scores_by_hand() -> None:
    p = np.array([[0.5, 0.3, 0.2], [0.4, 0.4, 0.2], [0.6, 0.4, 0.0]])
    u = np.array([0.5, 0.5, 0.25])
    inf = np.inf
    assert np.allclose(c.lac_scores(p), [[0.5, 0.7, 0.8], [0.6, 0.6, 0.8], [0.4, 0.6, inf]])
    # deterministic APS: the mass of the answers at least as likely; a tie block counts as one
    assert np.allclose(c.aps_scores(p), [[0.5, 0.8, 1.0], [0.8, 0.8, 1.0], [0.6, 1.0, inf]])
    # randomised: the mass above plus u times the tie block's mass
    assert np.allclose(c.aps_scores(p, u), [[0.25, 0.65, 0.9], [0.4, 0.4, 0.9], [0.15, 0.7, inf]])
    # RAPS: plus 0.01 per rank beyond the first (the tied pair shares rank 1; the answer below them is third)
    assert np.allclose(c.raps_scores(p, u), [[0.25, 0.66, 0.92], [0.4, 0.4, 0.92], [0.15, 0.71, inf]])
    assert np.allclose(c.raps_scores(p, u, lam=0.0), c.aps_scores(p, u))


def test_deterministic_aps_report_by_hand() -> None:
    """Probabilities in eighths and sixteenths, so every score is exact in binary."""
    val = np.array([[0.75, 0.125, 0.125], [0.5, 0.375, 0.125], [0.625, 0.375, 0.0], [0.25, 0.25, 0.5]])
    val_labels = np.array([0, 1, 1, 2])  # scores 0.75, 0.875, 1.0, 0.5
    test = np.array([[0.5, 0.375, 0.125], [0.875, 0.0625, 0.0625], [0.4375, 0.4375, 0.125], [0.9375, 0.0625, 0.0]])
    test_labels = np.array([2, 0, 1, 0])
    # alpha = 0.4: k = ceil(5 * 0.6) = 3, the third smallest of (0.5, 0.75, 0.875, 1.0)
    r = c.conformal_report(val, val_labels, test, test_labels, 0.4, "aps")
    assert r.qhat == 0.875 and r.n == 4 and r.n_cal == 4
    # sets: {0, 1} (misses 2), {0}, {0, 1} (the tied pair, both 0.875), {} (0.9375 > 0.875)
    sets = c.prediction_sets(test, r.qhat, "aps")
    assert sets.tolist() == [[True, True, False], [True, False, False], [True, True, False], [False, False, False]]
    assert (r.coverage, r.set_size, r.singleton_share, r.empty_share, r.all_label_share) == (0.5, 1.25, 0.25, 0.25, 0)
    assert r.size_coverage == ((0, 1, 0.0), (1, 1, 1.0), (2, 2, 0.5))
    assert r.class_coverage == ((0, 2, 0.5), (1, 1, 1.0), (2, 1, 0.0))
    assert r.class_coverage_gap == pytest.approx((0.1 + 0.4 + 0.6) / 3)
    json.dumps(r.as_dict())


def test_answers_not_offered_are_in_no_set_and_all_label_counts_the_offered_ones() -> None:
    rng = np.random.default_rng(5)
    pv, yv = _calibrated(300, 4, rng, offered=True)
    pt, yt = _calibrated(300, 4, rng, offered=True)
    for key in ALL:
        for alpha in (Fraction(1, 301), 0.1, 0.5):  # 1 / (n + 1): the largest calibration score
            qhat, sets = c.calibrated_sets(pv, yv, pt, alpha, key)
            assert not sets[pt == 0].any()
            r = c.conformal_report(pv, yv, pt, yt, alpha, key)
            assert r.all_label_share == np.mean(sets.sum(axis=1) == (pt > 0).sum(axis=1))
    # LAC at the largest score: every offered answer of the least confident rows, none of the others
    _, sets = c.calibrated_sets(pv, yv, pt, Fraction(1, 301), "lac")
    assert (sets.sum(axis=1) == (pt > 0).sum(axis=1)).any()


# ---------------------------------------------------------------- the threshold's rank


def test_rank_traps() -> None:
    s = np.random.default_rng(6).random(150)
    # n = 100, alpha = 0.1: k = ceil(101 * 0.9) = 91; np.quantile(..., "higher") gives the 92nd
    x = s[:100]
    assert c.rank(100, 0.1) == 91
    assert c.threshold(x, 0.1) == np.sort(x)[90]
    assert np.quantile(x, math.ceil(101 * 0.9) / 100, method="higher") == np.sort(x)[91]
    # n = 99: (n + 1)(1 - alpha) = 90 is an integer; k = 90, the "higher" quantile again one rank up
    x = s[:99]
    assert c.rank(99, 0.1) == 90 and c.threshold(x, 0.1) == np.sort(x)[89]
    assert np.quantile(x, math.ceil(100 * 0.9) / 99, method="higher") == np.sort(x)[90]
    # n = 149, alpha = 0.18: (n + 1)(1 - alpha) = 123 exactly, but the float product is 123.00000000000001
    x = s[:149]
    assert math.ceil((149 + 1) * (1 - 0.18)) == 124
    assert c.rank(149, 0.18) == c.rank(149, "0.18") == c.rank(149, Fraction(9, 50)) == 123
    assert c.threshold(x, 0.18) == np.sort(x)[122]


def test_mapie_takes_one_rank_too_many_where_the_float_ceil_misrounds() -> None:
    rng = np.random.default_rng(7)
    pv, yv = _calibrated(149, 3, rng)
    scores = np.sort(1 - pv[np.arange(149), yv])
    mapie = _mapie(3, "lac", 0.18).conformalize(pv, yv)
    mapie.predict_set(pv)  # MAPIE computes its threshold here
    assert mapie._mapie_classifier.conformity_score_function_.quantiles_[0] == scores[123]
    assert c.calibrate(pv, yv, 0.18, "lac") == scores[122]


def test_rank_is_exact_for_every_percent_alpha() -> None:
    misrounded = 0
    for n in range(1, 400):
        for a in range(1, 100):
            if (n + 1) * a < 100:  # too few examples for alpha = a / 100
                continue
            exact = -(-(n + 1) * (100 - a) // 100)  # integer ceil of (n + 1)(100 - a) / 100
            assert c.rank(n, a / 100) == exact, (n, a)
            misrounded += math.ceil((n + 1) * (1 - a / 100)) != exact
    assert misrounded > 0  # the float trap is real for some of these pairs


# ---------------------------------------------------------------- refusals


@pytest.mark.parametrize("alpha", [0, 1, -0.1, 1.5, float("nan"), float("inf")])
def test_alpha_outside_zero_one_is_refused(alpha: float) -> None:
    with pytest.raises(UserError, match="alpha"):
        c.check_alpha(alpha, 100)


def test_too_few_calibration_examples_are_refused_naming_the_smallest_alpha() -> None:
    assert c.check_alpha(0.1, 9) == Fraction(1, 10)  # k = ceil(10 * 0.9) = 9 = n: allowed
    with pytest.raises(UserError, match=r"smallest alpha 8 allow is 1/9 \(0\.1112\).*at least 9"):
        c.check_alpha(0.1, 8)
    rng = np.random.default_rng(8)
    pv, yv = _calibrated(8, 3, rng)
    pt, yt = _calibrated(20, 3, rng)
    for call in (lambda: c.conformal_report(pv, yv, pt, yt, 0.1), lambda: c.threshold(np.ones(8), 0.1),
                 lambda: c.paired_conformal(pv, pv, yv, pt, pt, yt, 0.1)):
        with pytest.raises(UserError, match="too few"):
            call()
    with pytest.raises(UserError, match=r"1/4 \(0\.25\)"):
        c.check_alpha(0.2, 3)


def test_bad_inputs_are_refused() -> None:
    rng = np.random.default_rng(9)
    pv, yv = _calibrated(50, 3, rng)
    with pytest.raises(UserError, match="sum to 1"):
        c.conformal_report(pv * 2, yv, pv, yv)
    with pytest.raises(UserError, match="non-negative.*softmax"):
        c.conformal_report(np.log(pv), yv, pv, yv)
    with pytest.raises(UserError, match="unknown conformal method 'nope'; known: lac"):
        c.conformal_report(pv, yv, pv, yv, 0.1, "nope")
    with pytest.raises(UserError, match="randomised"):
        c.prediction_sets(pv, 0.5, "raps")
    with pytest.raises(UserError, match="labels"):
        c.conformal_report(pv, yv + 3, pv, yv)
    bad = pv.copy()
    bad[0] = [1.0, 0.0, 0.0]
    with pytest.raises(UserError, match="probability 0 to their correct answer"):
        c.conformal_report(bad, np.r_[1, yv[1:]], pv, yv)
    with pytest.raises(UserError, match="different shapes"):
        c.paired_conformal(pv, pv[:40], yv, pv, pv, yv)


# ---------------------------------------------------------------- coverage of a calibrated model


@pytest.mark.parametrize("key", ["lac", "aps-randomised"])
def test_calibrated_model_coverage_and_its_interval_over_seeded_trials(key: str) -> None:
    """Split conformal promises coverage >= 1 - alpha on average over calibration and test draws, not in every
    trial: the coverage given one calibration set is Beta(k, n + 1 - k), below 1 - alpha about half the time.
    So: the mean over trials is at least 1 - alpha (within its standard error), and in at least 95% of trials
    the 95% interval, recalibrated in every resample, reaches 1 - alpha; an interval that holds the threshold
    fixed falls short of it more often (it ignores the calibration draw)."""
    trials, alpha, n_val, n_test = 200, 0.1, 100, 200
    covered, reaches, fixed_reaches = [], 0, 0
    for trial in range(trials):
        rng = np.random.default_rng(1000 + trial)
        pv, yv = _calibrated(n_val, 3, rng)
        pt, yt = _calibrated(n_test, 3, rng)
        report, intervals = c.conformal_intervals(pv, yv, pt, yt, alpha, key, n_resamples=400, seed=trial)
        covered.append(report.coverage)
        reaches += intervals["coverage"].hi >= 1 - alpha
        fixed = c.conformal_draws(pv, yv, pt, yt, np.ones((400, n_val), dtype=int),
                                  resample_counts(n_test, 400, trial), alpha, key, trial)["coverage"]
        fixed_reaches += np.quantile(fixed, 0.975) >= 1 - alpha
    covered = np.array(covered)
    assert covered.mean() >= 1 - alpha - 2 * covered.std() / math.sqrt(trials)
    assert covered.mean() <= c.rank(n_val, alpha) / (n_val + 1) + 3 * covered.std() / math.sqrt(trials)
    assert reaches >= 0.95 * trials
    assert fixed_reaches < reaches


def test_recalibrated_interval_has_the_width_of_calibration_plus_test_noise() -> None:
    """With 100 validation and 2,000 test examples the calibration draw dominates: the coverage SD over
    resamples is close to sqrt(Var Beta(k, n + 1 - k) + c(1 - c) / n_test), several times the fixed-threshold SD."""
    n_val, n_test, alpha = 100, 2000, 0.1
    k = c.rank(n_val, alpha)
    theory = math.sqrt(k * (n_val + 1 - k) / ((n_val + 1) ** 2 * (n_val + 2)) + 0.09 / n_test)
    sds = []
    for seed in range(8):
        rng = np.random.default_rng(seed)
        pv, yv = _calibrated(n_val, 3, rng)
        pt, yt = _calibrated(n_test, 3, rng)
        val_counts, test_counts = c._resamples(n_val, n_test, 1000, seed)
        draws = c.conformal_draws(pv, yv, pt, yt, val_counts, test_counts, alpha, "aps-randomised", seed)
        fixed = c.conformal_draws(pv, yv, pt, yt, np.ones_like(val_counts), test_counts, alpha, "aps-randomised",
                                  seed)
        sds.append(draws["coverage"].std())
        assert draws["coverage"].std() > 3 * fixed["coverage"].std()
    assert 0.8 * theory < np.mean(sds) < 1.5 * theory


# ---------------------------------------------------------------- resampling


@pytest.mark.parametrize("key", ALL)
def test_draws_equal_the_metrics_of_the_explicitly_repeated_samples(key: str) -> None:
    rng = np.random.default_rng(11)
    pv, yv = _calibrated(40, 3, rng, offered=True)
    pt, yt = _calibrated(60, 3, rng, offered=True)
    alpha, seed = 0.2, 3
    val_counts, test_counts = resample_counts(40, 6, 1), resample_counts(60, 6, 2)
    draws = c.conformal_draws(pv, yv, pt, yt, val_counts, test_counts, alpha, key, seed)
    u_val, u_test = c.draws_u(40, 60, seed)
    for r in range(6):
        iv, it = np.repeat(np.arange(40), val_counts[r]), np.repeat(np.arange(60), test_counts[r])
        qhat = c.calibrate(pv[iv], yv[iv], alpha, key, u_val[iv])
        sets = c.prediction_sets(pt[it], qhat, key, u_test[it])
        y, size = yt[it], sets.sum(axis=1)
        hit = sets[np.arange(len(y)), y]
        gap = np.mean([abs(hit[y == a].mean() - 0.8) for a in np.unique(y)])
        expected = {"coverage": hit.mean(), "set_size": size.mean(), "singleton_share": np.mean(size == 1),
                    "empty_share": np.mean(size == 0), "all_label_share": np.mean(size == (pt[it] > 0).sum(axis=1)),
                    "class_coverage_gap": gap}
        for name, value in expected.items():
            assert draws[name][r] == pytest.approx(value, abs=1e-12), (name, r)


@pytest.mark.parametrize("key", ALL)
def test_a_model_compared_with_itself_differs_by_exactly_zero(key: str) -> None:
    rng = np.random.default_rng(12)
    pv, yv = _calibrated(100, 4, rng)
    pt, yt = _calibrated(200, 4, rng)
    paired = c.paired_conformal(pv, pv, yv, pt, pt, yt, 0.1, key, n_resamples=300)
    assert paired.base == paired.other and paired.base_intervals == paired.other_intervals
    for d in paired.differences.values():
        assert (d.value, d.lo, d.hi, d.p_value, d.beyond_noise) == (0.0, 0.0, 0.0, 1.0, False)


@pytest.mark.parametrize("k", [2, 5])
@pytest.mark.parametrize("key", ALL)
def test_every_interval_contains_its_value_and_stays_in_range(key: str, k: int) -> None:
    for seed in range(6):
        rng = np.random.default_rng(100 * seed + k)
        n_val, n_test = int(rng.integers(20, 150)), int(rng.integers(20, 150))
        pv, yv = _calibrated(n_val, k, rng, offered=k > 2)
        pt, yt = _calibrated(n_test, k, rng, offered=k > 2)
        alpha = float(rng.choice([0.05, 0.1, 0.2, 0.3])) if n_val >= 19 else 0.3
        paired = c.paired_conformal(pv, _noisy(pv, rng), yv, pt, _noisy(pt, rng), yt, alpha, key,
                                    n_resamples=200, seed=seed)
        for intervals in (paired.base_intervals, paired.other_intervals, paired.differences):
            for name, i in intervals.items():
                assert i.lo <= i.value <= i.hi, (name, i)
        for report, intervals in ((paired.base, paired.base_intervals), (paired.other, paired.other_intervals)):
            for name in c.KEYS:
                low, high = METRICS[name].range
                assert low <= intervals[name].lo and intervals[name].hi <= min(high, k)
                assert intervals[name].value == getattr(report, name)
        json.dumps(paired.as_dict())


def test_a_much_worse_model_needs_larger_sets_beyond_noise() -> None:
    rng = np.random.default_rng(13)
    pv, yv = _calibrated(1000, 4, rng)
    pt, yt = _calibrated(1000, 4, rng)
    worse_v, worse_t = _noisy(pv, rng, 2.0), _noisy(pt, rng, 2.0)
    paired = c.paired_conformal(pv, worse_v, yv, pt, worse_t, yt, 0.1, "lac")
    d = paired.differences["set_size"]
    assert d.value > 0 and d.beyond_noise and d.p_value < 0.05
    assert METRICS["set_size"].verdict(d.value, d.beyond_noise, d.p_value).startswith("worse, beyond noise")
    assert not paired.differences["coverage"].beyond_noise  # conformal keeps coverage for any model


def test_every_key_has_a_metrics_row() -> None:
    assert set(c.KEYS) <= set(METRICS)
    assert {m.key for m in c.METHODS.values()} == set(ALL) and all(m.title for m in c.METHODS.values())
