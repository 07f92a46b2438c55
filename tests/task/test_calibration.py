"""Calibration metrics against values worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from core.task import calibration as cal

# confidences 0.92 (right), 0.83 (wrong), 0.74 (right), 0.66 (wrong)
PROBS = np.array([[0.92, 0.08], [0.83, 0.17], [0.26, 0.74], [0.34, 0.66]])
LABELS = np.array([0, 1, 1, 0])


def test_ece_by_hand() -> None:
    # 10 bins: each example alone in its bin -> mean |correct - conf|
    assert cal.ece(PROBS, LABELS, 10) == pytest.approx((0.08 + 0.83 + 0.26 + 0.66) / 4)
    # 2 bins: all in (0.5, 1]: accuracy 0.5, mean confidence 0.7875
    assert cal.ece(PROBS, LABELS, 2) == pytest.approx(0.2875)


def test_mce_and_adaptive_ece_by_hand() -> None:
    assert cal.mce(PROBS, LABELS, 10) == pytest.approx(0.83)
    # equal mass, 2 bins: {0.66 wrong, 0.74 right} gap 0.2; {0.83 wrong, 0.92 right} gap 0.375
    assert cal.adaptive_ece(PROBS, LABELS, 2) == pytest.approx(0.5 * 0.2 + 0.5 * 0.375)
    assert cal.adaptive_ece(PROBS, LABELS, 4) == pytest.approx(cal.ece(PROBS, LABELS, 10))


def test_brier_nll_accuracy_by_hand() -> None:
    expected = (2 * 0.08**2 + 2 * 0.83**2 + 2 * 0.26**2 + 2 * 0.66**2) / 4
    assert cal.brier(PROBS, LABELS) == pytest.approx(expected)
    assert cal.nll(PROBS, LABELS) == pytest.approx(
        -(math.log(0.92) + math.log(0.17) + math.log(0.74) + math.log(0.34)) / 4
    )
    assert cal.accuracy(PROBS, LABELS) == 0.5


def test_perfectly_calibrated_and_worst_cases() -> None:
    onehot = np.eye(3)[[0, 2, 1]]
    assert cal.ece(onehot, np.array([0, 2, 1])) == 0.0
    assert cal.brier(onehot, np.array([0, 2, 1])) == 0.0
    assert cal.brier(onehot, np.array([1, 0, 2])) == pytest.approx(2.0)
    assert cal.ece(onehot, np.array([1, 0, 2])) == pytest.approx(1.0)


def test_reliability_table_counts_and_means() -> None:
    rows = cal.reliability_table(PROBS, LABELS, 10)
    assert len(rows) == 10 and sum(r["count"] for r in rows) == 4
    row = rows[8]  # (0.8, 0.9]
    assert row["count"] == 1 and row["accuracy"] == 0.0 and row["mean_confidence"] == pytest.approx(0.83)
    assert rows[0]["count"] == 0 and rows[0]["accuracy"] is None


def test_report_matches_the_single_metrics_and_rejects_zero_bins() -> None:
    r = cal.report(PROBS, LABELS, 10)
    assert r.ece == cal.ece(PROBS, LABELS, 10) and r.n_bins == 10
    from core.errors import UserError

    with pytest.raises(UserError, match="bins"):
        cal.report(PROBS, LABELS, 0)


def test_temperature_scaling_recovers_a_known_temperature() -> None:
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 4, size=(20000, 3))
    true_t = 2.5
    p = cal.softmax(logits, true_t)
    labels = np.array([rng.choice(3, p=row) for row in p])
    t = cal.fit_temperature(logits, labels)
    assert t == pytest.approx(true_t, rel=0.05)
    assert cal.nll(cal.softmax(logits, t), labels) < cal.nll(cal.softmax(logits), labels)


def test_softmax_ignores_absent_answers() -> None:
    p = cal.softmax(np.array([[1.0, 2.0, -np.inf]]))
    assert p[0, 2] == 0.0 and p.sum() == pytest.approx(1.0)
    assert p[0, 1] == pytest.approx(1 / (1 + math.exp(-1)))
