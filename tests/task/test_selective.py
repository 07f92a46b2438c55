"""Selective prediction: the risk-coverage curve, AURC, E-AURC and abstention metrics (core.task.selective).

References: a hand-worked example (tied confidences included); MAPIE 1.6's ``auarc`` (mean accuracy
over the top-k prefixes, so AURC = 1 - auarc for untied confidences), averaged over every order of
the tied examples where there are ties; plain loops over the sorted examples (torch-uncertainty's
``RiskAtxCov`` index and ``CovAtxRisk`` rule); metrics of explicitly repeated samples for the
vectorised bootstrap.
"""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest

from core.errors import UserError
from core.metrics import METRICS
from core.task import selective as s
from core.task.uncertainty import resample_counts


def _binary(conf: list[float], right: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """Rows [c, 1 - c] (c >= 0.5, so answer 0 is predicted) labelled 0 when right, 1 when wrong."""
    c = np.asarray(conf, dtype=np.float64)
    return np.column_stack([c, 1 - c]), np.where(np.asarray(right) == 1, 0, 1)


def _model(n: int, k: int, rng: np.random.Generator, decimals: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """A model whose confidence is informative; with ``decimals``, probabilities rounded so that many tie."""
    labels = rng.integers(0, k, n)
    logits = rng.normal(0, 1, (n, k))
    logits[np.arange(n), labels] += rng.normal(1.5, 1.5, n)
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    if decimals is not None:
        p = np.round(p, decimals)
    return p, labels


def _plain(conf: np.ndarray, wrong: np.ndarray) -> np.ndarray:
    """Selective risk at k = 1..n after a stable sort, highest confidence first (no tie handling)."""
    order = np.argsort(-conf, kind="stable")
    return np.cumsum(wrong[order]) / np.arange(1, len(conf) + 1)


# ---------------------------------------------------------------- by hand


def test_metrics_by_hand_with_a_tie() -> None:
    """Confidences 0.9 (right), 0.8 (right), 0.8 (wrong), 0.7 (right), 0.6 (wrong), 0.5 (wrong).

    Risk at k = 1..6, the tied pair's k = 2 being its expectation (half an error in two):
    0, 1/4, 1/3, 1/4, 2/5, 1/2. AURC = (0 + 1/4 + 1/3 + 1/4 + 2/5 + 1/2) / 6 = 13/45. The oracle (three right
    first): 0, 0, 0, 1/4, 2/5, 1/2, AURC* = 23/120, so E-AURC = 13/45 - 23/120 = 7/72. Accuracy at 50% (k = 3)
    2/3, at 80% (k = ceil(4.8) = 5) 3/5, at 90% (k = 6) 1/2. Largest coverage with risk <= 1/4: k = 4.
    """
    probs, labels = _binary([0.8, 0.5, 0.9, 0.7, 0.8, 0.6], [0, 0, 1, 1, 1, 0])
    r = s.selective_report(probs, labels, target=0.25)
    assert r.aurc == pytest.approx(13 / 45, abs=1e-15)
    assert r.eaurc == pytest.approx(7 / 72, abs=1e-15)
    assert (r.accuracy_at_50, r.accuracy_at_80) == pytest.approx((2 / 3, 3 / 5), abs=1e-15)
    assert r.accuracy_at_90 == 0.5 and r.error == 0.5 and r.n == 6
    assert r.coverage_at_risk == pytest.approx(4 / 6)  # risk exactly 1/4 meets a 25% target
    assert s.selective_report(probs, labels, target=0.2).coverage_at_risk == pytest.approx(1 / 6)
    curve = s.risk_coverage(probs, labels)
    assert curve.confidence == (0.9, 0.8, 0.7, 0.6, 0.5)
    assert curve.coverage == pytest.approx((1 / 6, 3 / 6, 4 / 6, 5 / 6, 1.0))
    assert curve.risk == pytest.approx((0.0, 1 / 3, 1 / 4, 2 / 5, 1 / 2))
    json.dumps(r.as_dict()), json.dumps(curve.as_dict())


def test_coverage_at_risk_can_stop_inside_a_block_of_ties() -> None:
    # 0.9 right, then 0.8 right and 0.8 wrong: risks 0, 1/4 (expected), 1/3
    probs, labels = _binary([0.9, 0.8, 0.8], [1, 1, 0])
    assert s.selective_report(probs, labels, target=0.25).coverage_at_risk == pytest.approx(2 / 3)
    assert s.selective_report(probs, labels, target=0.24).coverage_at_risk == pytest.approx(1 / 3)
    # a block of 4 with 3 errors after 8 right: risk 8 + j: (3j/4) / (8 + j) <= 0.1 up to j = 1 (0.083), not 2 (0.15)
    probs, labels = _binary([0.9] * 8 + [0.6] * 4, [1] * 8 + [1, 0, 0, 0])
    assert s.selective_report(probs, labels, target=0.1).coverage_at_risk == pytest.approx(9 / 12)


def test_extremes() -> None:
    probs, labels = _binary([0.9, 0.8, 0.7, 0.6], [1, 1, 1, 1])
    r = s.selective_report(probs, labels, target=0.0)
    assert (r.aurc, r.eaurc, r.coverage_at_risk, r.accuracy_at_50) == (0.0, 0.0, 1.0, 1.0)
    r = s.selective_report(*_binary([0.9, 0.8, 0.7, 0.6], [0, 0, 0, 0]))
    assert (r.aurc, r.coverage_at_risk, r.accuracy_at_90) == (1.0, 0.0, 0.0) and r.eaurc == pytest.approx(0.0)
    perfect = s.selective_report(*_binary([0.9, 0.8, 0.7, 0.6, 0.55], [1, 1, 1, 0, 0]))
    assert perfect.eaurc == pytest.approx(0.0, abs=1e-15) and perfect.aurc > 0


# ---------------------------------------------------------------- against MAPIE and plain loops


@pytest.mark.parametrize("k", [2, 4])
def test_aurc_is_one_minus_mapies_auarc_without_ties(k: int) -> None:
    from mapie.metrics.uncertainty import auarc

    rng = np.random.default_rng(k)
    probs, labels = _model(500, k, rng)
    conf, right = probs.max(axis=1), (probs.argmax(axis=1) == labels).astype(float)
    assert len(np.unique(conf)) == len(conf)
    assert s.selective_report(probs, labels).aurc == pytest.approx(1 - auarc(right, conf), abs=1e-12)


def test_with_ties_every_metric_is_its_mean_over_the_orders_of_the_tied_examples() -> None:
    from mapie.metrics.uncertainty import auarc

    conf = np.array([0.9, 0.9, 0.9, 0.7, 0.7, 0.6, 0.9])
    right = np.array([0, 1, 1, 0, 1, 0, 0])
    probs, labels = _binary(list(conf), list(right))
    r = s.selective_report(probs, labels)
    aurc, acc = [], {c: [] for c in s.COVERAGES}
    for perm in itertools.permutations(range(len(conf))):
        p = list(perm)
        aurc.append(1 - auarc(right[p], conf[p]))
        risk = _plain(conf[p], 1 - right[p])
        for c in s.COVERAGES:
            acc[c].append(1 - risk[math.ceil(c * len(conf) / 100) - 1])
    assert r.aurc == pytest.approx(np.mean(aurc), abs=1e-12)
    for c in s.COVERAGES:
        assert getattr(r, f"accuracy_at_{c}") == pytest.approx(np.mean(acc[c]), abs=1e-12)


@pytest.mark.parametrize("target", [0.0, 0.05, 0.1, 0.3])
def test_accuracy_at_coverage_and_coverage_at_risk_match_plain_loops_without_ties(target: float) -> None:
    rng = np.random.default_rng(int(target * 100))
    for n in (7, 50, 400):
        probs, labels = _model(n, 3, rng)
        conf, wrong = probs.max(axis=1), (probs.argmax(axis=1) != labels).astype(float)
        risk = _plain(conf, wrong)
        r = s.selective_report(probs, labels, target)
        for c in s.COVERAGES:  # torch-uncertainty's RiskAtxCov: the risk at index ceil(n c) - 1
            assert getattr(r, f"accuracy_at_{c}") == pytest.approx(1 - risk[math.ceil(n * c / 100) - 1], abs=1e-12)
        ok = np.flatnonzero(risk <= target + 1e-12)  # CovAtxRisk: the largest admissible coverage
        assert r.coverage_at_risk == pytest.approx((ok.max() + 1) / n if len(ok) else 0.0)


def test_the_result_does_not_depend_on_input_order() -> None:
    rng = np.random.default_rng(20)
    probs, labels = _model(300, 4, rng, decimals=1)  # heavy ties
    assert len(np.unique(probs.max(axis=1))) < 12
    r = s.selective_report(probs, labels)
    curve = s.risk_coverage(probs, labels)
    for seed in range(5):
        perm = np.random.default_rng(seed).permutation(300)
        assert s.selective_report(probs[perm], labels[perm]) == r
        assert s.risk_coverage(probs[perm], labels[perm]) == curve


# ---------------------------------------------------------------- resampling


@pytest.mark.parametrize("decimals", [None, 1])
def test_draws_equal_the_metrics_of_the_explicitly_repeated_samples(decimals: int | None) -> None:
    rng = np.random.default_rng(21)
    probs, labels = _model(80, 3, rng, decimals)
    counts = resample_counts(80, 8, 5)
    draws = s.selective_draws(probs, labels, counts, target=0.1)
    for r in range(8):
        idx = np.repeat(np.arange(80), counts[r])
        expected = s.selective_report(probs[idx], labels[idx], target=0.1).as_dict()
        for key in s.KEYS:
            assert draws[key][r] == pytest.approx(expected[key], abs=1e-12), (key, r)


def test_a_model_compared_with_itself_differs_by_exactly_zero() -> None:
    rng = np.random.default_rng(22)
    probs, labels = _model(200, 4, rng, decimals=2)
    paired = s.paired_selective(probs, probs, labels, n_resamples=300)
    assert paired.base == paired.other and paired.base_intervals == paired.other_intervals
    for d in paired.differences.values():
        assert (d.value, d.lo, d.hi, d.p_value, d.beyond_noise) == (0.0, 0.0, 0.0, 1.0, False)


@pytest.mark.parametrize("decimals", [None, 1, 2])
def test_every_interval_contains_its_value_and_stays_in_range(decimals: int | None) -> None:
    for seed in range(8):
        rng = np.random.default_rng(seed)
        n = int(rng.integers(10, 300))
        probs, labels = _model(n, int(rng.integers(2, 6)), rng, decimals)
        other = _model(n, probs.shape[1], rng, decimals)[0]
        paired = s.paired_selective(probs, other, labels, target=float(rng.choice([0.0, 0.05, 0.2])),
                                    n_resamples=200, seed=seed)
        for intervals in (paired.base_intervals, paired.other_intervals, paired.differences):
            for key, i in intervals.items():
                assert i.lo <= i.value <= i.hi, (key, i)
        for report, intervals in ((paired.base, paired.base_intervals), (paired.other, paired.other_intervals)):
            for key in s.KEYS:
                low, high = METRICS[key].range
                assert low - 1e-12 <= intervals[key].lo and intervals[key].hi <= high + 1e-12
                assert intervals[key].value == getattr(report, key)
        json.dumps(paired.as_dict())


def test_a_model_whose_confidence_is_noise_is_worse_beyond_noise() -> None:
    rng = np.random.default_rng(23)
    probs, labels = _model(1000, 2, rng)
    shuffled = probs.copy()
    top = probs.argmax(axis=1)
    # the same answers with confidences shuffled across examples: accuracy kept, the ranking lost
    conf = rng.permutation(probs.max(axis=1))
    shuffled[np.arange(1000), top], shuffled[np.arange(1000), 1 - top] = conf, 1 - conf
    paired = s.paired_selective(probs, shuffled, labels)
    assert paired.base.error == paired.other.error
    for key in ("aurc", "eaurc"):
        d = paired.differences[key]
        assert METRICS[key].verdict(d.value, d.beyond_noise, d.p_value).startswith("worse, beyond noise")


def test_bad_inputs_are_refused() -> None:
    probs, labels = _binary([0.9, 0.8], [1, 0])
    for target in (-0.1, 1.0, float("nan"), "x"):
        with pytest.raises(UserError, match="target"):
            s.selective_report(probs, labels, target)
    with pytest.raises(UserError, match="labels"):
        s.selective_report(probs, np.array([0, 2]))
    with pytest.raises(UserError, match="different shapes"):
        s.paired_selective(probs, probs[:1], labels)
    with pytest.raises(UserError, match="same number"):
        s.selective_draws(probs, labels, np.array([[1, 1], [2, 1]]))


def test_every_key_has_a_metrics_row() -> None:
    assert set(s.KEYS) <= set(METRICS)
