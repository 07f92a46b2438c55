"""Intervals, paired differences, McNemar, smooth ECE and the noise floor (core.task.uncertainty).

References: calibration.py's own metrics on explicitly repeated samples, scipy's binomial test,
relplot's smECE (Błasiok & Nakkiran's implementation), and coverage measured by simulation.
"""

from __future__ import annotations

import numpy as np
import pytest
import relplot
from scipy.stats import binomtest

from core.errors import UserError
from core.task import calibration as cal
from core.task import uncertainty as u


def _model(n: int, seed: int, shape: str = "over", k: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities and labels of a simulated model: calibrated, over- or under-confident."""
    rng = np.random.default_rng(seed)
    conf = rng.uniform(1 / k, 1.0, n)
    truth = {"calibrated": conf, "over": conf**3, "under": np.sqrt(conf), "right": np.ones(n)}[shape]
    correct = rng.random(n) < truth
    top = rng.integers(0, k, n)
    probs = np.tile(((1 - conf) / (k - 1))[:, None], (1, k))
    probs[np.arange(n), top] = conf
    wrong = (top + rng.integers(1, k, n)) % k if k > 1 else top
    return probs, np.where(correct, top, wrong)


@pytest.mark.parametrize("shape", ["calibrated", "over", "under", "right"])
@pytest.mark.parametrize("n", [20, 200, 2000])
def test_smooth_ece_matches_relplot(shape: str, n: int) -> None:
    probs, labels = _model(n, seed=n, shape=shape, k=3 if n == 200 else 2)
    conf, correct = probs.max(1), (probs.argmax(1) == labels).astype(float)
    assert cal.smooth_ece(probs, labels) == pytest.approx(relplot.smECE(conf, correct), abs=1e-9)
    vectorised = u.calibration_draws(probs, labels, np.ones((1, n)), keys=("smooth_ece",))["smooth_ece"][0]
    assert vectorised == pytest.approx(cal.smooth_ece(probs, labels), abs=2e-3)


def test_draws_on_an_unweighted_sample_equal_the_definitions() -> None:
    probs, labels = _model(200, seed=1, k=3)
    draws = u.calibration_draws(probs, labels, np.ones((1, 200)))
    report = cal.report(probs, labels).as_dict()
    for key in ("accuracy", "ece", "adaptive_ece", "mce", "brier", "nll"):
        assert draws[key][0] == pytest.approx(report[key], abs=1e-12), key


def test_draws_on_a_resample_equal_the_definitions_on_the_repeated_sample() -> None:
    probs, labels = _model(150, seed=2)
    counts = u.resample_counts(150, 5, seed=3)
    draws = u.calibration_draws(probs, labels, counts, n_bins=10)
    for row in range(5):
        idx = np.repeat(np.arange(150), counts[row])
        report = cal.report(probs[idx], labels[idx], 10).as_dict()
        for key in ("accuracy", "ece", "adaptive_ece", "mce", "brier", "nll"):
            assert draws[key][row] == pytest.approx(report[key], abs=1e-12), (key, row)


def test_resamples_are_deterministic_under_their_seed() -> None:
    a, b, c = u.resample_counts(50, seed=7), u.resample_counts(50, seed=7), u.resample_counts(50, seed=8)
    assert a.shape == (1000, 50) and (a.sum(axis=1) == 50).all()
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    probs, labels = _model(80, seed=4)
    first = u.calibration_intervals(probs, labels, seed=1)
    assert first == u.calibration_intervals(probs, labels, seed=1)
    assert first["ece"] != u.calibration_intervals(probs, labels, seed=2)["ece"]


def test_accuracy_interval_covers_the_truth_95_percent_of_the_time() -> None:
    rng = np.random.default_rng(0)
    n, truth, trials = 200, 0.86, 2000
    hits = sum(lo <= truth <= hi for lo, hi in (u.wilson(int(k), n) for k in rng.binomial(n, truth, trials)))
    assert 0.93 <= hits / trials <= 0.97
    lo, hi = u.wilson(2, 8)  # the 8-example split of the issue: accuracy 0.25
    assert lo == pytest.approx(0.071, abs=0.002) and hi == pytest.approx(0.591, abs=0.002)
    assert u.wilson(0, 0) == (0.0, 1.0)


def test_a_perfectly_calibrated_model_is_called_consistent_95_percent_of_the_time() -> None:
    consistent = 0
    trials = 300
    for trial in range(trials):
        probs, labels = _model(200, seed=1000 + trial, shape="calibrated")
        consistent += u.noise_floor(probs, labels, n_sims=400, seed=trial)["ece"].consistent
    assert 0.93 <= consistent / trials <= 0.97


def test_a_miscalibrated_model_is_not_consistent_and_the_floor_shrinks_with_n() -> None:
    probs, labels = _model(400, seed=5, shape="over")
    floor = u.noise_floor(probs, labels)
    assert set(floor) == {"ece", "adaptive_ece", "smooth_ece"}
    assert not floor["ece"].consistent and floor["ece"].observed == pytest.approx(cal.ece(probs, labels))
    small = u.noise_floor(*_model(50, seed=5, shape="calibrated"))["ece"]
    large = u.noise_floor(*_model(2000, seed=5, shape="calibrated"))["ece"]
    assert large.mean < small.mean and 0 < large.mean < large.q95


@pytest.mark.parametrize(("b", "c"), [(10, 4), (12, 6), (0, 5), (3, 3), (1, 0), (25, 11)])
def test_mcnemar_is_the_exact_binomial_test(b: int, c: int) -> None:
    base = np.array([1] * b + [0] * c + [1] * 7 + [0] * 2, dtype=bool)
    other = np.array([0] * b + [1] * c + [1] * 7 + [0] * 2, dtype=bool)
    m = u.mcnemar(base, other)
    assert (m.right_to_wrong, m.wrong_to_right) == (b, c)
    assert m.p_value == pytest.approx(binomtest(min(b, c), b + c, 0.5).pvalue)
    assert u.mcnemar([True, False], [True, False]).p_value == 1.0
    assert u.mcnemar(*(np.array([1] * 10 + [0] * 4, bool), np.array([0] * 10 + [1] * 4, bool))).p_value == \
        pytest.approx(0.1796, abs=1e-4)


def test_a_model_compared_with_itself_differs_by_zero_with_a_zero_interval() -> None:
    probs, labels = _model(120, seed=6, k=3)
    base, other, diff = u.paired_differences(probs, probs.copy(), labels)
    assert base == other and set(diff) == set(u.KEYS)
    for d in diff.values():
        assert (d.value, d.lo, d.hi, d.p_value, d.beyond_noise) == (0.0, 0.0, 0.0, 1.0, False)
    counts = u.resample_counts(120)
    same = u.paired_mean_difference(probs[:, 0], probs[:, 0], counts)
    assert (same.value, same.lo, same.hi, same.p_value) == (0.0, 0.0, 0.0, 1.0)


def test_pairing_narrows_the_interval_of_a_difference() -> None:
    rng = np.random.default_rng(9)
    probs, labels = _model(300, seed=9)
    noisy = np.clip(probs + rng.normal(0, 0.03, probs.shape), 1e-3, None)
    noisy /= noisy.sum(axis=1, keepdims=True)
    _, _, paired = u.paired_differences(probs, noisy, labels)
    unpaired = (u.calibration_draws(noisy, labels, u.resample_counts(300, seed=1))["brier"]
                - u.calibration_draws(probs, labels, u.resample_counts(300, seed=2))["brier"])
    lo, hi = np.quantile(unpaired, [0.025, 0.975])
    assert paired["brier"].hi - paired["brier"].lo < (hi - lo) / 3


def test_a_clear_difference_is_beyond_noise_and_its_p_value_agrees() -> None:
    probs, labels = _model(400, seed=10, shape="calibrated")
    worse = probs.copy()
    worse[:, :] = np.where(probs == probs.max(1, keepdims=True), 0.99, 0.01)  # overconfident
    _, _, diff = u.paired_differences(probs, worse, labels)
    assert diff["ece"].beyond_noise and diff["ece"].lo > 0 and diff["ece"].p_value < 0.05
    assert not diff["accuracy"].beyond_noise and diff["accuracy"].value == 0


def test_mean_interval_and_bands() -> None:
    values = np.linspace(0, 1, 101)
    iv = u.mean_interval(values, u.resample_counts(101))
    assert iv.value == pytest.approx(0.5) and iv.lo < 0.5 < iv.hi and iv.hi - iv.lo < 0.25
    probs, labels = _model(300, seed=11)
    rows = u.banded_reliability_table(probs, labels)
    assert len(rows) == cal.DEFAULT_BINS
    for row in rows:
        if row["count"]:
            assert row["band_lower"] <= row["mean_confidence"] <= row["band_upper"]
        else:
            assert row["band_lower"] is None and row["band_upper"] is None


def test_examples_needed_by_hand() -> None:
    # (1.96 + 0.8416)^2 * (0.018 / 0.02)^2 * 200 = 1271.5 -> 1272
    assert u.examples_needed(0.018, 200, 0.02) == 1272
    assert u.examples_needed(0.001, 200, 0.5) == 1
    with pytest.raises(UserError, match="positive"):
        u.examples_needed(0.01, 200, 0)


@pytest.mark.parametrize(("call", "message"), [
    (lambda: u.calibration_intervals(np.ones((3, 2)) / 2, np.array([0, 1])), "3 rows of probabilities but 2"),
    (lambda: u.calibration_intervals(np.ones((0, 2)), np.array([])), "non-empty"),
    (lambda: u.calibration_intervals(np.ones((2, 2)) / 2, np.array([0, 2])), "answer indices 0-1"),
    (lambda: u.paired_differences(np.ones((2, 2)) / 2, np.ones((2, 3)) / 3, np.array([0, 1])), "different shapes"),
    (lambda: u.resample_counts(0), "at least one example"),
    (lambda: u.mean_interval([1.0, float("nan")], u.resample_counts(2)), "finite"),
    (lambda: u.paired_mean_difference([1.0], [1.0, 2.0], u.resample_counts(2)), "same examples"),
])
def test_bad_input_is_named(call, message: str) -> None:
    with pytest.raises(UserError, match=message):
        call()
