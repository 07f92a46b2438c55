"""The calibration errors' intervals (core.task.uncertainty.inversion, .methods) and the coverage study's parts.

References: calibration.py's own metrics on each simulated label set, the noise floor, hand-derived
values of the hypotheses, Kumar et al.'s debiased ECE as their code computes it (by drawing label
means), relplot's smECE and scipy's integrals. The slow coverage test is test_uncertainty_coverage.py.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy.integrate import quad
from scipy.stats import beta, norm

from core.task import calibration as cal
from core.task import uncertainty as u
from core.task.uncertainty import coverage
from core.task.uncertainty import inversion as inv


def _binary(n: int, seed: int, slope: float = 0.7) -> tuple[np.ndarray, np.ndarray]:
    """A binary model with confidences in (0.5, 1), right with probability 0.5 + slope * (confidence - 0.5)."""
    rng = np.random.default_rng(seed)
    conf = rng.uniform(0.5, 1.0, n)
    right = rng.random(n) < 0.5 + slope * (conf - 0.5)
    return np.stack([conf, 1 - conf], axis=1), np.where(right, 0, 1)


def _labels_from_correct(probs: np.ndarray, correct: np.ndarray) -> np.ndarray:
    top = probs.argmax(axis=1)
    return np.where(correct, top, (top + 1) % probs.shape[1])


def _path(key: str, probs: np.ndarray, labels: np.ndarray, sims: int = 300, seed: int = 0) -> inv._Path:
    value = getattr(cal.report(probs, labels), key)
    return inv._Path(key, probs, labels, cal.DEFAULT_BINS, inv.uniforms(len(labels), sims, seed), value)


# ---------------------------------------------------------------- every interval contains its value


def _random_case(rng: np.random.Generator, case: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Base probabilities, a "pruned" side's and labels: random n (from 2) and k, peaked or flat, one-hot
    rows, and all-right or all-wrong label sets among them."""
    n = 2 if case < 4 else int(rng.choice([2, 3, 4, 7, 15, 40, 120]))  # cases 0-3: n = 2, random, right, wrong
    k = int(rng.choice([2, 3, 5]))
    base = rng.dirichlet(np.full(k, float(rng.choice([0.2, 1.0, 5.0]))), n)
    if case % 7 == 3:  # cases 3, 10, 17
        base = np.eye(k)[rng.integers(0, k, n)]  # one-hot: confidence exactly 1
    labels = rng.integers(0, k, n)
    if case % 5 == 1:
        labels = base.argmax(axis=1)  # all right
    elif case % 5 == 2:
        labels = (base.argmax(axis=1) + 1) % k  # all wrong
    # the other side: some examples' probabilities sharpened, flattened or replaced, as a mask would
    logits = np.log(np.clip(base, 1e-9, None)) * rng.uniform(0.3, 3.0)
    logits += rng.normal(0, rng.choice([0.0, 0.5, 2.0]), logits.shape) * (rng.random((n, 1)) < 0.5)
    other = cal.softmax(logits)
    return base, other, labels


def test_every_interval_contains_its_value_over_random_inputs() -> None:
    rng = np.random.default_rng(28)
    for case in range(24):
        base, other, labels = _random_case(rng, case)
        intervals = u.calibration_intervals(base, labels, n_resamples=50, seed=case)
        a, b, diff = u.paired_differences(base, other, labels, n_resamples=50, seed=case)
        assert a == intervals, case  # a side of a comparison is the same as the evaluation alone
        for side in (a, b):
            for key, iv in side.items():
                assert np.isfinite([iv.lo, iv.hi]).all() and iv.lo <= iv.value <= iv.hi, (case, key, iv)
                if key in u.CALIBRATION_ERRORS:
                    assert iv.lo >= 0.0 and iv.hi <= 1.0, (case, key, iv)
        for key, d in diff.items():
            assert d.lo <= d.value <= d.hi and 0 < d.p_value <= 1, (case, key, d)
            assert d.value == pytest.approx(b[key].value - a[key].value, abs=1e-12), (case, key)


# ---------------------------------------------------------------- the simulations and hypotheses


@pytest.mark.parametrize("key", ["ece", "adaptive_ece", "mce", "smooth_ece"])
def test_simulated_values_are_the_metric_of_each_simulated_label_set(key: str) -> None:
    probs, labels = _binary(40, seed=1)
    path = _path(key, probs, labels, sims=25)
    for lam in (0.0, 1.0, 2.5):
        correct = path.uniforms < path.curve(lam)
        expected = [getattr(cal.report(probs, _labels_from_correct(probs, c)), key) for c in correct]
        # smooth ECE's simulations take the coarse fixed point: within 0.0025 of relplot's value (its own 1/1024 step)
        assert path.values(lam) == pytest.approx(expected, abs=2.5e-3 if key == "smooth_ece" else 1e-12), lam


def test_the_simulations_at_zero_are_the_noise_floor_and_set_the_lower_end() -> None:
    for seed, slope in ((2, 1.0), (3, 1.0), (4, 0.5), (5, 0.2)):
        probs, labels = _binary(150, seed=seed, slope=slope)
        floor = u.noise_floor(probs, labels, n_sims=400, seed=seed)
        intervals = u.calibration_intervals(probs, labels, n_resamples=400, seed=seed)
        for key in u.NOISE_FLOOR_KEYS:
            path = _path(key, probs, labels, sims=400, seed=seed)
            assert floor[key].q95 == pytest.approx(np.quantile(path.values(0.0), 0.95), abs=1e-12)
            within = path.value <= np.quantile(path.values(0.0), 0.975)
            assert (intervals[key].lo == 0.0) == within, (seed, key)
            assert not floor[key].consistent or intervals[key].lo == 0.0  # consistent: the interval reaches 0


def test_a_hypothesis_is_the_estimate_scaled() -> None:
    # confidences in (0.6, 0.8), accuracy 0.1 lower: up to lam = 1.5 no hypothesis leaves [0, 1]
    rng = np.random.default_rng(6)
    conf = rng.uniform(0.6, 0.8, 300)
    probs = np.stack([conf, 1 - conf], axis=1)
    labels = np.where(rng.random(300) < conf - 0.1, 0, 1)
    for key in ("ece", "adaptive_ece", "mce"):
        path = _path(key, probs, labels)
        unclipped = path.conf + 1.5 * path.direction
        assert (unclipped > 0).all() and (unclipped < 1).all()
        for lam in (0.0, 0.5, 1.0, 1.5):
            assert path.truth(lam) == pytest.approx(lam * path.value, abs=1e-12), (key, lam)
    smooth = _path("smooth_ece", probs, labels)
    assert smooth.truth(0.0) == 0.0 and smooth.truth(0.5) < smooth.truth(1.0) < smooth.truth(1.5)


def test_no_miscalibration_at_all_runs_towards_chance() -> None:
    probs = np.array([[0.6, 0.4], [0.6, 0.4], [0.6, 0.4], [0.6, 0.4], [0.6, 0.4]] * 2)
    labels = np.array([0, 0, 0, 1, 1] * 2)  # accuracy 0.6 at confidence 0.6: every estimate is 0
    path = _path("ece", probs, labels)
    assert path.value == pytest.approx(0.0, abs=1e-12) and path.direction == pytest.approx(np.full(10, 0.5 - 0.6))
    lo, hi = inv.side_interval(path)
    assert lo == 0.0 < hi  # ten examples cannot show the true ECE is 0


def test_an_evident_change_is_beyond_noise_and_its_p_value_agrees_with_its_interval() -> None:
    rng = np.random.default_rng(7)
    for case in range(8):
        n = int(rng.choice([30, 100, 300]))
        base, labels = _binary(n, seed=100 + case, slope=1.0)
        conf = np.clip(base[:, 0] + rng.choice([0.0, 0.05, 0.2]) * (base[:, 0] > 0.6), 0.5, 0.999)
        other = np.stack([conf, 1 - conf], axis=1)
        _, _, diff = u.paired_differences(base, other, labels, n_resamples=200, seed=case)
        for key in u.CALIBRATION_ERRORS:
            d = diff[key]
            assert d.p_value >= inv.GAMMA and (d.p_value < 0.05) == d.beyond_noise, (case, key, d)
    base, labels = _binary(400, seed=8, slope=1.0)
    worse = np.where(base == base.max(1, keepdims=True), 0.99, 0.01)  # the same answers, over-confident
    _, _, diff = u.paired_differences(base, worse, labels)
    assert diff["ece"].beyond_noise and diff["ece"].lo > 0 and diff["ece"].p_value < 0.05


# ---------------------------------------------------------------- the coverage study's parts


def test_true_values_by_integration() -> None:
    over, calibrated = coverage.SHAPES["over-confident"], coverage.SHAPES["calibrated"]
    assert all(v == 0 for k, v in coverage.true_values(calibrated).items() if k in u.CALIBRATION_ERRORS)
    truth = coverage.true_values(over)
    # the gap 0.15 (conf - 0.5) never changes sign: every binning gives E|gap| = 0.15 * 0.5 * E[Beta(2, 1.5)]
    assert truth["ece"] == pytest.approx(0.15 * 0.5 * 2 / 3.5, abs=1e-6)
    assert truth["adaptive_ece"] == pytest.approx(0.15 * 0.5 * 2 / 3.5, abs=1e-6)
    edge = (14 / 15 - 0.5) / 0.5  # the last bin, (14/15, 1], holds the largest gap
    gap = quad(lambda x: 0.15 * 0.5 * x * beta.pdf(x, 2, 1.5), edge, 1)[0] / beta.sf(edge, 2, 1.5)
    assert truth["mce"] == pytest.approx(gap, abs=1e-6)
    brier = quad(lambda x: (lambda c, g: 2 * (g * (1 - c) ** 2 + (1 - g) * c**2))(
        0.5 + 0.5 * x, 0.5 + 0.85 * 0.5 * x) * beta.pdf(x, 2, 1.5), 0, 1)[0]
    assert truth["brier"] == pytest.approx(brier, abs=1e-6)


def test_true_smooth_ece_is_relplots_on_the_expected_residuals() -> None:
    import relplot

    over = coverage.SHAPES["over-confident"]
    nodes = 2**14
    conf = over.confidence((np.arange(nodes) + 0.5) / nodes)
    assert coverage.true_values(over)["smooth_ece"] == pytest.approx(relplot.smECE(conf, over.curve(conf)),
                                                                      abs=1e-5)


def test_kumar_debiased_ece_matches_their_sampling_code() -> None:
    probs, labels = _binary(300, seed=9, slope=0.8)
    conf, correct = cal._conf_correct(probs, labels)
    bins = cal._bin_index(conf, cal.DEFAULT_BINS)
    # Kumar et al.'s normal_debiased_ce, as in their library: label means drawn from Normal(acc, acc(1-acc)/n_b)
    rng = np.random.default_rng(0)
    occupied = [b for b in range(cal.DEFAULT_BINS) if (bins == b).any()]
    acc = np.array([correct[bins == b].mean() for b in occupied])
    mean_conf = np.array([conf[bins == b].mean() for b in occupied])
    size = np.array([(bins == b).sum() for b in occupied])
    drawn = rng.normal(acc, np.sqrt(acc * (1 - acc) / size), (200_000, len(occupied)))
    theirs = 2 * cal.ece(probs, labels) - np.mean(np.abs(drawn - mean_conf) @ (size / size.sum()))
    ours = coverage.kumar_debiased(probs, labels, np.ones((1, 300)))["ece"][0]
    assert ours == pytest.approx(theirs, abs=2e-4)


def test_bca_agrees_with_scipys() -> None:
    from scipy.stats import bootstrap

    x = np.random.default_rng(10).gamma(0.6, 1.0, 120)  # skewed, as per-example Brier and NLL values are
    counts = u.resample_counts(120, 40_000, seed=3)
    ours = u.intervals.bca(x.mean(), counts @ x / 120, (x.sum() - x) / 119)
    theirs = bootstrap((x,), np.mean, method="BCa", n_resamples=40_000, random_state=4).confidence_interval
    assert ours == pytest.approx((theirs.low, theirs.high), abs=0.01)
    assert ours[0] > np.quantile(counts @ x / 120, 0.025)  # skewed right: BCa sits above the percentile interval


def test_the_bootstrap_candidates_by_hand() -> None:
    draws = np.linspace(0.0, 1.0, 1001)
    symmetric = np.linspace(-1.0, 1.0, 21)  # jackknife values with no skew: acceleration 0
    out = coverage.bootstrap_intervals(0.5, draws, symmetric, None)
    assert out["percentile"] == pytest.approx((0.025, 0.975))
    assert out["basic"] == pytest.approx((2 * 0.5 - 0.975, 2 * 0.5 - 0.025))
    assert out["bca"] == pytest.approx(out["percentile"], abs=2e-3)  # z0 = 0 and a = 0: percentile
    centre, sd = 2 * 0.5 - draws.mean(), draws.std(ddof=1)
    assert out["debiased"] == pytest.approx((centre - 1.959964 * sd, centre + 1.959964 * sd))
    shifted = coverage.bootstrap_intervals(0.4, draws, symmetric, None)["bca"]
    z0 = norm.ppf(400.5 / 1001)  # 400 draws below the value, one at it
    levels = norm.cdf([2 * z0 - 1.959964, 2 * z0 + 1.959964])  # z0 + (z0 + z) / (1 - 0)
    assert shifted == pytest.approx(tuple(np.quantile(draws, levels)), abs=1e-6)


def test_the_quantile_curves_interpolation_is_scipys_pchip() -> None:
    from scipy.interpolate import PchipInterpolator

    rng = np.random.default_rng(29)
    for case in range(400):
        n = int(rng.integers(2, 10))
        x = np.sort(rng.choice(np.arange(20) * 0.5, n, replace=False)).astype(float)
        y = rng.normal(0, 1, n) * (rng.random(n) < 0.7)  # flat stretches and sign changes, as running maxima have
        y = np.maximum.accumulate(y) if case % 2 else np.round(y, 0 if case % 3 == 0 else 3)
        j = int(rng.integers(1, n))
        at = np.linspace(x[j - 1], x[j], 65)
        assert inv._pchip_segment(x, y, j, at) == pytest.approx(PchipInterpolator(x, y)(at), abs=1e-12), case


def test_a_pair_that_never_disagrees_reuses_the_other_sides_simulations_and_gets_the_same_interval() -> None:
    probs, labels = _binary(120, seed=7)
    sharper = probs**2 / (probs**2).sum(axis=1, keepdims=True)  # the same answers, more confident
    base, other = (_path("smooth_ece", p, labels, sims=200) for p in (probs, sharper))
    coupled = inv.couple(base, other, np.random.default_rng(0))
    assert coupled is base.uniforms  # no disagreement to make: every uniform kept
    reused = inv._Paired(base, other, coupled)
    assert reused.own
    fresh = inv._Paired(base, other, coupled)
    fresh.own = False  # simulate on the coupled uniforms, as when the sides disagree
    fresh._kept.clear()
    fresh._other.clear()
    assert reused.difference() == fresh.difference()


def test_the_grid_built_node_by_node_gives_the_crossings_of_the_whole_grid() -> None:
    from scipy.interpolate import PchipInterpolator

    def whole(grid: inv._Grid, quantile, target: float) -> float:  # the crossing as it was: every node first
        i = 0
        while grid.node(i) is not None:
            i += 1
        lams = grid.lams
        q = np.maximum.accumulate([quantile(lam) for lam in lams])
        if q[0] >= target:
            return lams[0]
        if q[-1] < target:
            return lams[-1]
        j = int(np.argmax(q >= target))
        fine = np.linspace(lams[j - 1], lams[j], inv._FINE + 1)
        curve = np.maximum.accumulate(PchipInterpolator(lams, q)(fine))
        m = max(int(np.argmax(curve >= target)), 1)
        a, b = curve[m - 1], curve[m]
        return float(fine[m - 1] + (fine[m] - fine[m - 1]) * ((target - a) / (b - a) if b > a else 1.0))

    for seed, slope in ((1, 0.7), (2, 1.0), (3, 0.2), (4, 1.6)):
        probs, labels = _binary(80, seed=seed, slope=slope)
        for key in ("ece", "smooth_ece"):
            path = _path(key, probs, labels, sims=200, seed=seed)
            for p in (0.025, 0.005, 0.2):
                for q in (p, 1 - p):
                    def quantile(lam: float, q: float = q, path: inv._Path = path) -> float:
                        return inv._quantile(path.draws(lam), q)

                    lazy = inv._crossing(path.grid(path.draws, path.value), quantile, path.value)
                    assert lazy == pytest.approx(whole(path.grid(path.draws, path.value), quantile, path.value),
                                                 abs=1e-12), (seed, key, q)
