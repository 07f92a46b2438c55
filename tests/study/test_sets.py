"""Prediction sets and abstention of evaluations (core.study.sets): the same numbers as core.task.conformal and
core.task.selective on the evaluations' arrays, zero against itself, refusals, and the figures' data checked
against independent computations (a simulation, the plain sorted risk)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from helpers.tiny_models import tiny_loaded

from core.errors import UserError
from core.study import sets
from core.study.compare import ResultComparison, compare_results
from core.task import calibration as cal
from core.task import conformal, selective
from core.task.data import Example, dataset_from_rows
from core.task.evaluation import EvalConfig, EvalResult
from core.task.prompts import PromptConfig
from core.task.setup import Setup


def _result(logits: np.ndarray, labels: np.ndarray, val_logits: np.ndarray | None, val_labels: np.ndarray | None,
            split: str = "test") -> EvalResult:
    probs = cal.softmax(logits)
    return EvalResult(
        model="m", dataset="d", split=split, n=len(labels), dropped_attention_layers=[], all_attention_dropped=False,
        label_names=[f"answer {k}" for k in range(logits.shape[1])], metrics=cal.report(probs, labels),
        reliability=[], temperature=None, metrics_temperature_scaled=None,
        examples=[Example(str(i), f"text {i}", int(y)) for i, y in enumerate(labels)], logits=logits,
        label_mass=None, val_logits=val_logits, val_labels=val_labels, seconds=0.0, cached=True, warnings=[],
        prompt={})


def _pair(n: int = 120, n_val: int = 60, k: int = 3, seed: int = 0) -> tuple[EvalResult, EvalResult]:
    """Two models of the same examples: ``other`` is ``base`` with noise added (worse, not hopeless)."""
    rng = np.random.default_rng(seed)
    y, yv = rng.integers(0, k, n), rng.integers(0, k, n_val)
    z = rng.normal(size=(n, k)) + 2.0 * np.eye(k)[y]
    zv = rng.normal(size=(n_val, k)) + 2.0 * np.eye(k)[yv]
    noisy = lambda a: a + rng.normal(scale=1.5, size=a.shape)  # noqa: E731
    return _result(z, y, zv, yv), _result(noisy(z), y, noisy(zv), yv)


@pytest.mark.parametrize("method", list(conformal.METHODS))
def test_paired_stats_are_those_of_conformal_and_selective_on_the_evaluations_arrays(method: str) -> None:
    base, other = _pair()
    s = sets.set_stats(base, other, alpha=0.2, method=method, n_resamples=1000, seed=3)
    pc = conformal.paired_conformal(base.val_probs, other.val_probs, base.val_labels, base.probs, other.probs,
                                    base.labels, 0.2, method, 1000, 3)
    ps = selective.paired_selective(base.probs, other.probs, base.labels, n_resamples=1000, seed=3)
    assert s.keys() == list(sets.KEYS) and s.n_cal == 60 and s.unavailable is None
    for key in conformal.KEYS:
        assert s.base[key] == pc.base_intervals[key] and s.other[key] == pc.other_intervals[key]
        assert s.difference[key] == pc.differences[key]
    for key in selective.KEYS:
        assert s.base[key] == ps.base_intervals[key] and s.difference[key] == ps.differences[key]
    assert s.sets_base == pc.base and s.sets_other.qhat == pc.other.qhat
    # one evaluation: the one-sided functions, the same resamples
    one = sets.set_stats(base, alpha=0.2, method=method, n_resamples=1000, seed=3)
    report, intervals = conformal.conformal_intervals(base.val_probs, base.val_labels, base.probs, base.labels, 0.2,
                                                      method, 1000, 3)
    assert not one.paired and one.difference is None and one.sets_base == report
    assert {k: one.base[k] for k in conformal.KEYS} == intervals
    assert one.base["aurc"] == selective.selective_intervals(base.probs, base.labels, n_resamples=1000, seed=3)[1][
        "aurc"]


def test_the_worse_model_needs_larger_sets_and_the_table_and_json_say_so() -> None:
    base, other = _pair(n=300, n_val=150)
    s = sets.set_stats(base, other, alpha=0.1)
    assert s.other["set_size"].value > s.base["set_size"].value and s.difference["set_size"].beyond_noise
    assert s.verdict("set_size").startswith("worse, beyond noise") and s.verdict("aurc").startswith("worse")
    table = s.table(("full", "pruned"), part="sets")
    assert list(table.index) == [sets.METRICS[k].title for k in conformal.KEYS]
    assert table.loc["mean set size", "verdict"] == "worse, beyond noise"
    assert list(s.table(part="selective").index)[0] == "AURC"
    out = s.as_json()
    assert out["prediction_sets"]["alpha"] == 0.1 and out["prediction_sets"]["calibration_n"] == 150
    assert out["prediction_sets"]["pruned"]["set_size"]["value"] == pytest.approx(s.other["set_size"].value)
    assert out["prediction_sets"]["difference"]["coverage"]["beyond_noise"] in (True, False)
    assert out["selective"]["difference"]["accuracy_at_80"]["p_value"] == s.difference["accuracy_at_80"].p_value
    assert "prediction_sets_unavailable" not in out
    assert "alpha 0.1, LAC, calibrated on 150 validation examples" in s.heading("sets")


def test_an_evaluation_against_itself_differs_by_exactly_zero() -> None:
    base, _ = _pair()
    s = sets.set_stats(base, base, alpha=0.1, method="raps")
    for key in sets.KEYS:
        d = s.difference[key]
        assert (d.value, d.lo, d.hi, d.p_value) == (0.0, 0.0, 0.0, 1.0), key
        assert s.verdict(key) == "within noise (p = 1)"


def test_without_validation_there_are_no_sets_but_abstention_still_works() -> None:
    base, other = _pair()
    bare = [_result(r.logits, r.labels, None, None) for r in (base, other)]
    s = sets.set_stats(*bare)
    assert s.unavailable and "validation" in s.unavailable and "--val-n 100" in s.unavailable
    assert s.keys("sets") == [] and s.keys("selective") == list(selective.KEYS) and s.n_cal == 0
    out = s.as_json()
    assert out["prediction_sets"] is None and out["prediction_sets_unavailable"] == s.unavailable
    assert out["selective"]["full"]["aurc"]["value"] == pytest.approx(s.base["aurc"].value)
    with pytest.raises(UserError, match="needs none"):
        sets.set_sizes(bare[0])
    on_validation = _result(base.logits, base.labels, None, None, split="validation")
    assert "validation split itself" in sets.unavailable(on_validation)
    with pytest.raises(UserError, match="different validation examples"):
        sets.set_stats(base, bare[1])


def test_refusals_name_what_is_allowed() -> None:
    base, other = _pair(n_val=8)
    with pytest.raises(UserError, match="8 calibration example.* too few for alpha = 0.1.*at least 9"):
        sets.set_stats(base, other, alpha=0.1)
    bare = _result(base.logits, base.labels, None, None)
    for alpha in (0, 1.5, -0.1):  # refused even where no set is computed
        with pytest.raises(UserError, match="strictly between 0 and 1"):
            sets.set_stats(bare, alpha=alpha)
    with pytest.raises(UserError, match="unknown conformal method 'lacs'.*aps-randomised"):
        sets.set_stats(bare, method="lacs")
    with pytest.raises(UserError, match="too few"):
        sets.check_settings(0.01, "lac", n_cal=50)
    sets.check_settings(0.01, "lac", n_cal=99)
    shuffled = _result(other.logits, other.labels, other.val_logits, other.val_labels)
    shuffled.examples = shuffled.examples[::-1]
    with pytest.raises(UserError, match="different examples"):
        sets.set_stats(base, shuffled)


def test_set_labels_sizes_and_text_follow_the_calibrated_sets() -> None:
    base, _ = _pair()
    qhat, masks = conformal.calibrated_sets(base.val_probs, base.val_labels, base.probs, 0.2, "aps", 0)
    labels = sets.set_labels(base, 0.2, "aps")
    assert [len(s) for s in labels] == list(masks.sum(axis=1)) == list(sets.set_sizes(base, 0.2, "aps"))
    for row, names, p in zip(masks, labels, base.probs, strict=True):
        assert set(names) == {base.label_names[j] for j in np.flatnonzero(row)}
        assert [p[base.label_names.index(x)] for x in names] == sorted(p[row], reverse=True)
    assert sets.set_text(("positive", "negative")) == "{positive, negative}" and sets.set_text(()) == "{}"


def test_the_coverage_band_holds_the_simulated_coverage_of_exchangeable_scores() -> None:
    """Independent check: draw calibration and test scores from one continuous distribution, calibrate, count the
    test examples covered; over many draws the quantiles match the beta-binomial band."""
    rng = np.random.default_rng(0)
    n_cal, n, trials = 40, 60, 20000
    for alpha in (0.1, 0.25):
        k = conformal.rank(n_cal, alpha)
        cal_scores = np.sort(rng.random((trials, n_cal)), axis=1)
        qhat = cal_scores[:, k - 1]
        covered = (rng.random((trials, n)) <= qhat[:, None]).mean(axis=1)
        lo, hi = sets.coverage_band(n_cal, n, [alpha])
        q_lo, q_hi = np.quantile(covered, [0.025, 0.975])
        assert abs(lo[0] - q_lo) <= 1 / n + 1e-12 and abs(hi[0] - q_hi) <= 1 / n + 1e-12
        inside = ((covered >= lo[0]) & (covered <= hi[0])).mean()
        assert 0.95 <= inside <= 0.985  # a discrete band holds at least 95%
        assert covered.mean() == pytest.approx(k / (n_cal + 1), abs=0.003)  # E[Beta(k, n + 1 - k)]
    with pytest.raises(UserError, match="at least 1/"):
        sets.coverage_band(8, 50, [0.05])


def test_the_coverage_curve_is_the_conformal_report_at_each_allowed_alpha() -> None:
    base, _ = _pair(n_val=30)
    curve = sets.coverage_curve(base, "lac")
    # 30 validation examples allow alpha >= 1/31: 0.02 is left out, 0.04 is in
    assert curve.alphas[0] == 0.04 and curve.alphas[-1] == 0.5 and curve.n_cal == 30 and curve.n == base.n
    for a, cov, size in zip(curve.alphas, curve.coverage, curve.set_size, strict=True):
        r = conformal.conformal_report(base.val_probs, base.val_labels, base.probs, base.labels, a, "lac")
        assert (cov, size) == (r.coverage, r.set_size)
    assert all(lo <= 1 - a <= hi for a, lo, hi in zip(curve.alphas, curve.band_lo, curve.band_hi, strict=True))


def test_the_risk_band_is_the_sorted_risk_with_a_band_around_it() -> None:
    base, _ = _pair(n=100)
    band = sets.risk_band(base, points=20, n_resamples=500)
    conf = base.probs.max(axis=1)  # continuous: no ties, so the plain sorted risk is exact
    wrong = (base.probs.argmax(axis=1) != base.labels)[np.argsort(-conf)]
    expected = [wrong[: round(c * 100)].mean() for c in band.coverage]
    np.testing.assert_allclose(band.risk, expected, atol=1e-12)
    assert band.coverage[-1] == 1.0 and len(band.coverage) == 20
    assert all(lo <= r <= hi for r, lo, hi in zip(band.risk, band.lo, band.hi, strict=True))
    r = band.risk[-1]  # at full coverage the risk is the error rate, whose bootstrap band is about +-1.96 SE
    assert band.hi[-1] - band.lo[-1] == pytest.approx(2 * 1.96 * math.sqrt(r * (1 - r) / 100), rel=0.25)
    # the risk at 80% coverage is 1 - accuracy at 80%
    at80 = band.risk[band.coverage.index(0.8)]
    assert at80 == pytest.approx(1 - selective.selective_report(base.probs, base.labels).accuracy_at_80)


def test_risk_draws_merge_ties_and_refuse_bad_counts() -> None:
    probs = np.array([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.6, 0.4]])
    labels = np.array([0, 1, 0, 0])  # the tied top pair: one right, one wrong
    risk = selective.risk_draws(probs, labels, np.ones((1, 4), dtype=np.int64), np.array([1, 2, 3, 4]))[0]
    np.testing.assert_allclose(risk, [0.5, 0.5, 1 / 3, 0.25])  # k = 1 inside the tie: the expected 1/2
    twice = selective.risk_draws(probs, labels, np.array([[2, 0, 1, 1]]), np.array([1, 2, 4]))[0]
    np.testing.assert_allclose(twice, [0.0, 0.0, 0.0])
    with pytest.raises(UserError, match="1 to 4"):
        selective.risk_draws(probs, labels, np.ones((1, 4), dtype=np.int64), np.array([0]))
    with pytest.raises(UserError, match="same total"):
        selective.risk_draws(probs, labels, np.array([[1, 1, 1, 1], [2, 1, 1, 1]]), np.array([1]))


ROWS = [{"text": t, "label": lab} for t, lab in [
    ("the film is good", "positive"), ("a bad and boring movie", "negative"), ("I loved it", "positive"),
    ("terrible plot, awful dialogue", "negative"), ("wonderful acting", "positive"), ("bad", "negative"),
]] * 5


def test_a_comparison_gives_its_sets_once_per_setting_on_a_tiny_model(tmp_path) -> None:
    setup = Setup(tiny_loaded("llama"), dataset_from_rows(ROWS, "tiny"), PromptConfig(style="zero-shot"))
    c = compare_results(setup, (1, 2), EvalConfig(n=6, val_n=6))
    assert isinstance(c, ResultComparison) and len(c.base.val_labels) == 6
    s = c.sets(alpha=0.2, method="aps")
    assert c.sets(alpha=0.2, method="aps") is s and c.sets(alpha=0.25, method="aps") is not s
    assert s.n_cal == 6 and s.n == 6
    assert s.base == sets.set_stats(c.base, c.other, 0.2, "aps").base
    assert math.isfinite(s.difference["set_size"].value)
    bare = compare_results(setup, (1, 2), EvalConfig(n=6, val_n=0)).sets()
    assert bare.unavailable and bare.keys() == list(selective.KEYS)
