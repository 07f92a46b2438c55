"""Intervals, paired differences, McNemar, smooth ECE and the noise floor (core.task.uncertainty).

References: calibration.py's own metrics on explicitly repeated samples, scipy's binomial test,
relplot's smECE (Błasiok & Nakkiran's implementation, imported inside the tests that use it), and
coverage measured by simulation.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
from scipy.stats import binomtest

from core.errors import UserError
from core.task import calibration as cal
from core.task import uncertainty as u

BOOTSTRAPPED = ("accuracy", "ece", "adaptive_ece", "mce", "brier", "nll")


def _model(n: int, seed: int, shape: str = "over", k: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities and labels of a simulated model: calibrated, over- or under-confident, or always right.

    Confidences are continuous draws, so no two examples tie.
    """
    rng = np.random.default_rng(seed)
    conf = rng.uniform(1 / k, 1.0, n)
    truth = {"calibrated": conf, "over": conf**3, "under": np.sqrt(conf), "right": np.ones(n)}[shape]
    correct = rng.random(n) < truth
    top = rng.integers(0, k, n)
    probs = np.tile(((1 - conf) / (k - 1))[:, None], (1, k))
    probs[np.arange(n), top] = conf
    wrong = (top + rng.integers(1, k, n)) % k
    return probs, np.where(correct, top, wrong)


def _repeated(probs: np.ndarray, labels: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    idx = np.repeat(np.arange(len(labels)), counts)
    return probs[idx], labels[idx]


# ---------------------------------------------------------------- smooth ECE against relplot


@pytest.mark.parametrize("k", [2, 3])
@pytest.mark.parametrize("shape", ["calibrated", "over", "under", "right"])
@pytest.mark.parametrize("n", [20, 200, 2000])
def test_smooth_ece_matches_relplot(n: int, shape: str, k: int) -> None:
    import relplot

    probs, labels = _model(n, seed=n + k, shape=shape, k=k)
    conf, correct = probs.max(1), (probs.argmax(1) == labels).astype(float)
    exact = u.smooth_ece(probs, labels)
    assert exact == pytest.approx(relplot.smECE(conf, correct), abs=1e-8)
    # the vectorised bootstrap version on the unweighted sample (float32 transforms: ~1e-7)
    vectorised = u.calibration_draws(probs, labels, np.ones((1, n)), keys=("smooth_ece",))["smooth_ece"][0]
    assert vectorised == pytest.approx(exact, abs=1e-6)


@pytest.mark.parametrize(("n", "shape", "k"), [(20, "over", 2), (200, "calibrated", 3), (500, "under", 2)])
def test_smooth_ece_draws_are_relplot_on_each_repeated_resample(n: int, shape: str, k: int) -> None:
    import relplot

    probs, labels = _model(n, seed=7, shape=shape, k=k)
    counts = u.resample_counts(n, 6, seed=1)
    draws = u.calibration_draws(probs, labels, counts, keys=("smooth_ece",))["smooth_ece"]
    for row, draw in zip(counts, draws, strict=True):
        p, y = _repeated(probs, labels, row)
        assert draw == pytest.approx(relplot.smECE(p.max(1), (p.argmax(1) == y).astype(float)), abs=1e-6)


# ---------------------------------------------------------------- the other metrics, vectorised


@pytest.mark.parametrize(("n", "k", "n_bins"), [(200, 3, 15), (37, 2, 7), (5, 2, 15)])
def test_draws_on_an_unweighted_sample_equal_the_definitions(n: int, k: int, n_bins: int) -> None:
    probs, labels = _model(n, seed=1, k=k)
    draws = u.calibration_draws(probs, labels, np.ones((1, n)), n_bins)
    report = cal.report(probs, labels, n_bins).as_dict()
    assert set(draws) == set(u.KEYS)
    for key in BOOTSTRAPPED:
        assert draws[key][0] == pytest.approx(report[key], abs=1e-12), key


@pytest.mark.parametrize(("n", "n_bins"), [(150, 10), (61, 15), (9, 4)])
def test_draws_on_a_resample_equal_the_definitions_on_the_repeated_sample(n: int, n_bins: int) -> None:
    probs, labels = _model(n, seed=2, k=3)  # no confidence ties, so the repeated sample sorts the same
    counts = u.resample_counts(n, 8, seed=3)
    draws = u.calibration_draws(probs, labels, counts, n_bins=n_bins)
    for row in range(len(counts)):
        report = cal.report(*_repeated(probs, labels, counts[row]), n_bins).as_dict()
        for key in BOOTSTRAPPED:
            assert draws[key][row] == pytest.approx(report[key], abs=1e-12), (key, row)


def test_resamples_are_deterministic_under_their_seed() -> None:
    a, b, c = u.resample_counts(50, seed=7), u.resample_counts(50, seed=7), u.resample_counts(50, seed=8)
    assert a.shape == (u.N_RESAMPLES, 50) and (a.sum(axis=1) == 50).all() and (a >= 0).all()
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert u.resample_counts(50, 10, seed=7).shape == (10, 50)
    probs, labels = _model(80, seed=4)
    first = u.calibration_intervals(probs, labels, seed=1)
    assert first == u.calibration_intervals(probs, labels, seed=1)
    assert first["ece"] != u.calibration_intervals(probs, labels, seed=2)["ece"]
    other = np.roll(probs, 1, axis=1)
    assert u.paired_differences(probs, other, labels, seed=3) == u.paired_differences(probs, other, labels, seed=3)


def test_intervals_bracket_the_value_and_accuracy_is_wilson() -> None:
    probs, labels = _model(300, seed=12, k=3)
    intervals = u.calibration_intervals(probs, labels)
    report = cal.report(probs, labels).as_dict()
    assert set(intervals) == set(u.KEYS)
    for key, iv in intervals.items():
        assert iv.value == report[key] and iv.lo <= iv.hi, key
        assert iv.as_dict() == {"value": iv.value, "ci": [iv.lo, iv.hi]}
    correct = int((probs.argmax(1) == labels).sum())
    assert (intervals["accuracy"].lo, intervals["accuracy"].hi) == u.wilson(correct, 300)


# ---------------------------------------------------------------- closed forms


def test_accuracy_interval_covers_the_truth_95_percent_of_the_time() -> None:
    rng = np.random.default_rng(0)
    n, truth, trials = 200, 0.86, 2000
    hits = sum(lo <= truth <= hi for lo, hi in (u.wilson(int(k), n) for k in rng.binomial(n, truth, trials)))
    assert 0.93 <= hits / trials <= 0.97
    lo, hi = u.wilson(2, 8)  # 8 examples, accuracy 0.25
    assert lo == pytest.approx(0.071, abs=0.002) and hi == pytest.approx(0.591, abs=0.002)
    assert u.wilson(0, 0) == (0.0, 1.0)
    assert u.wilson(0, 10)[0] == 0.0 and u.wilson(10, 10)[1] == 1.0


@pytest.mark.parametrize(("b", "c"), [(10, 4), (12, 6), (0, 5), (3, 3), (1, 0), (25, 11), (0, 0)])
def test_mcnemar_is_the_exact_binomial_test(b: int, c: int) -> None:
    base = np.array([1] * b + [0] * c + [1] * 7 + [0] * 2, dtype=bool)
    other = np.array([0] * b + [1] * c + [1] * 7 + [0] * 2, dtype=bool)
    m = u.mcnemar(base, other)
    assert (m.right_to_wrong, m.wrong_to_right) == (b, c)
    expected = 1.0 if b + c == 0 else binomtest(min(b, c), b + c, 0.5).pvalue
    assert m.p_value == pytest.approx(expected, abs=1e-12)
    assert m.as_dict() == {"right_to_wrong": b, "wrong_to_right": c, "p_value": m.p_value}


def test_mcnemar_by_hand() -> None:
    ten_four = u.mcnemar([True] * 10 + [False] * 4, [False] * 10 + [True] * 4)
    assert ten_four.p_value == pytest.approx(0.1796, abs=1e-4)
    assert u.mcnemar([True, False], [True, False]).p_value == 1.0


def test_examples_needed_by_hand() -> None:
    # (1.95996 + 0.84162)^2 * (0.018 / 0.02)^2 * 200 = 1271.5 -> 1272
    assert u.examples_needed(0.018, 200, 0.02) == 1272
    assert u.examples_needed(0.001, 200, 0.5) == 1
    with pytest.raises(UserError, match="positive"):
        u.examples_needed(0.01, 200, 0)


# ---------------------------------------------------------------- paired differences


def test_a_model_compared_with_itself_differs_by_zero_with_a_zero_interval() -> None:
    probs, labels = _model(120, seed=6, k=3)
    base, other, diff = u.paired_differences(probs, probs.copy(), labels)
    assert base == other and set(diff) == set(u.KEYS)
    for d in diff.values():
        assert (d.value, d.lo, d.hi, d.p_value, d.beyond_noise) == (0.0, 0.0, 0.0, 1.0, False)
        assert d.as_dict() == {"value": 0.0, "ci": [0.0, 0.0], "p_value": 1.0, "beyond_noise": False}
    counts = u.resample_counts(120)
    same = u.paired_mean_difference(probs[:, 0], probs[:, 0], counts)
    assert (same.value, same.lo, same.hi, same.p_value, same.beyond_noise) == (0.0, 0.0, 0.0, 1.0, False)


def test_the_difference_is_taken_on_shared_resamples() -> None:
    probs, labels = _model(90, seed=13)
    other = np.clip(probs ** 1.5, 1e-6, None)
    other /= other.sum(axis=1, keepdims=True)
    _, _, diff = u.paired_differences(probs, other, labels, n_resamples=300, seed=4)
    counts = u.resample_counts(90, 300, seed=4)
    draws = {k: u.calibration_draws(other, labels, counts)[k] - u.calibration_draws(probs, labels, counts)[k]
             for k in ("accuracy", "brier")}
    d = draws["accuracy"]  # accuracy's change: the percentile bootstrap
    lo, hi = np.quantile(d, [0.025, 0.975])
    p = min(1.0, 2 * min((np.sum(d <= 0) + 1) / 301, (np.sum(d >= 0) + 1) / 301))
    assert (diff["accuracy"].lo, diff["accuracy"].hi, diff["accuracy"].p_value) == pytest.approx((lo, hi, p))
    # Brier's: BCa on the same resamples, its acceleration from leaving out one example at a time (n < 200)
    onehot = np.eye(probs.shape[1])[labels]
    per = ((other - onehot) ** 2).sum(1) - ((probs - onehot) ** 2).sum(1)
    jackknife = (per.sum() - per) / 89
    value = cal.brier(other, labels) - cal.brier(probs, labels)
    expected = u.intervals.bca_difference(value, draws["brier"], jackknife)
    assert (diff["brier"].lo, diff["brier"].hi, diff["brier"].p_value) == pytest.approx(
        (expected.lo, expected.hi, expected.p_value), abs=1e-12)
    assert diff["brier"].value == pytest.approx(value)


def test_pairing_narrows_the_interval_of_a_difference() -> None:
    rng = np.random.default_rng(9)
    n = 300
    probs, labels = _model(n, seed=9)
    flip = rng.random(n) < 0.05  # a highly correlated second model: 5% of its answers changed
    other = np.where(flip[:, None], probs[:, ::-1], probs)
    _, _, paired = u.paired_differences(probs, other, labels)
    for key in ("accuracy", "brier"):
        unpaired = (u.calibration_draws(other, labels, u.resample_counts(n, seed=1), keys=(key,))[key]
                    - u.calibration_draws(probs, labels, u.resample_counts(n, seed=2), keys=(key,))[key])
        lo, hi = np.quantile(unpaired, [0.025, 0.975])
        assert paired[key].hi - paired[key].lo < (hi - lo) / 2, key


def test_a_clear_difference_is_beyond_noise_and_its_p_value_agrees() -> None:
    probs, labels = _model(400, seed=10, shape="calibrated")
    worse = np.where(probs == probs.max(1, keepdims=True), 0.99, 0.01)  # the same answers, overconfident
    _, _, diff = u.paired_differences(probs, worse, labels)
    assert diff["ece"].beyond_noise and diff["ece"].lo > 0 and diff["ece"].p_value < 0.05
    assert not diff["accuracy"].beyond_noise and diff["accuracy"].value == 0


def test_mean_interval() -> None:
    values = np.linspace(0, 1, 101)
    counts = u.resample_counts(101)
    iv = u.mean_interval(values, counts)
    assert iv.value == pytest.approx(0.5) and iv.lo < 0.5 < iv.hi and iv.hi - iv.lo < 0.25
    assert (iv.lo, iv.hi) == pytest.approx(tuple(np.quantile(counts @ values / 101, [0.025, 0.975])))
    shifted = u.paired_mean_difference(values, values + 0.1, counts)
    assert shifted.value == pytest.approx(0.1) and shifted.beyond_noise and shifted.p_value < 0.01


# ---------------------------------------------------------------- noise floor and consistency bands


def test_a_perfectly_calibrated_model_is_called_consistent_95_percent_of_the_time() -> None:
    trials = 300
    consistent = sum(
        u.noise_floor(*_model(200, seed=1000 + trial, shape="calibrated"), n_sims=200, seed=trial)["ece"].consistent
        for trial in range(trials))
    assert 0.93 <= consistent / trials <= 0.97


def test_a_miscalibrated_model_is_not_consistent_and_the_floor_shrinks_with_n() -> None:
    probs, labels = _model(400, seed=5, shape="over")
    floor = u.noise_floor(probs, labels)
    assert set(floor) == {"ece", "adaptive_ece", "smooth_ece"}
    for key, f in floor.items():
        assert not f.consistent and f.observed == pytest.approx(getattr(cal.report(probs, labels), key)), key
        assert 0 < f.mean < f.q95
        assert f.as_dict() == {"metric": key, "mean": f.mean, "q95": f.q95, "observed": f.observed,
                               "consistent": False}
    small = u.noise_floor(*_model(50, seed=5, shape="calibrated"))["ece"]
    large = u.noise_floor(*_model(2000, seed=5, shape="calibrated"))["ece"]
    assert large.mean < small.mean and 0 < large.mean < large.q95


def test_reliability_bands_contain_the_expected_accuracy_and_skip_empty_bins() -> None:
    rng = np.random.default_rng(11)
    conf = np.concatenate([rng.uniform(0.5, 0.7, 150), rng.uniform(0.9, 1.0, 150)])
    probs = np.stack([conf, 1 - conf], axis=1)
    bands = u.reliability_bands(probs, n_bins=10)
    table = cal.reliability_table(probs, np.zeros(300, dtype=int), n_bins=10)
    assert len(bands) == 10
    for band, row in zip(bands, table, strict=True):
        if row["count"] == 0:
            assert band is None
        else:
            assert band[0] <= row["mean_confidence"] <= band[1] and 0 <= band[0] < band[1] <= 1
    assert bands[7] is None and bands[5] is not None  # (0.7, 0.8] is empty
    assert u.reliability_bands(probs, n_bins=10) == bands  # seeded
    rows = u.banded_reliability_table(probs, np.zeros(300, dtype=int), n_bins=10)
    assert [(r["band_lower"], r["band_upper"]) for r in rows] == [b or (None, None) for b in bands]


# ---------------------------------------------------------------- bad input


def _two(n: int = 2, k: int = 2) -> np.ndarray:
    return np.full((n, k), 1 / k)


@pytest.mark.parametrize(("call", "message"), [
    (lambda: u.calibration_intervals(_two(3), np.array([0, 1])), "3 rows of probabilities but 2 labels"),
    (lambda: u.calibration_intervals(np.ones((0, 2)), np.array([])), "non-empty"),
    (lambda: u.calibration_intervals(_two(), np.array([0, 2])), "answer indices 0-1"),
    (lambda: u.calibration_intervals(_two(), np.array([0, -1])), "answer indices 0-1"),
    (lambda: u.calibration_intervals(_two(), np.array([0.0, 0.5])), "integer answer indices"),
    (lambda: u.calibration_intervals(np.array([[0.5, np.nan], [0.5, 0.5]]), np.array([0, 1])), "finite"),
    (lambda: u.calibration_intervals(_two(), np.array([0, 1]), n_bins=0), "at least 1"),
    (lambda: u.smooth_ece(_two(3), np.array([0, 1])), "3 rows"),
    (lambda: u.paired_differences(_two(), _two(2, 3), np.array([0, 1])), "different shapes"),
    (lambda: u.paired_differences(_two(), _two(3), np.array([0, 1])), "3 rows"),
    (lambda: u.calibration_draws(_two(), np.array([0, 1]), np.ones((4, 3))), "cover 3 examples, not 2"),
    (lambda: u.calibration_draws(_two(), np.array([0, 1]), np.ones((4, 2)), keys=("ecce",)), "unknown metric"),
    (lambda: u.resample_counts(0), "at least one example"),
    (lambda: u.resample_counts(5, 0), "one resample"),
    (lambda: u.mean_interval([1.0, float("nan")], u.resample_counts(2)), "finite"),
    (lambda: u.mean_interval([], u.resample_counts(1)), "non-empty"),
    (lambda: u.paired_mean_difference([1.0], [1.0, 2.0], u.resample_counts(2)), "same examples"),
    (lambda: u.mcnemar([True, False], [True]), "same examples"),
    (lambda: u.noise_floor(_two(), np.array([0, 1]), n_sims=0), "at least one run"),
    (lambda: u.reliability_bands(np.ones((0, 2))), "non-empty"),
])
def test_bad_input_is_named(call: Callable[[], object], message: str) -> None:
    with pytest.raises(UserError, match=message):
        call()
