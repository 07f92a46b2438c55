"""Top-k rationale overlap and rank correlation between two explanations, against hand values."""

from __future__ import annotations

import pytest
from scipy.stats import spearmanr

from core.errors import UserError
from core.explain.agreement import agreement, rationale


def test_overlap_metrics_equal_hand_values() -> None:
    a = [3.0, 2.0, 1.0, -1.0, 0.5]
    b = [0.1, 5.0, 4.0, 1.0, -2.0]
    g = agreement(a, b, k_percent=40)  # rationales of ceil(2.0) = 2 words: {0, 1} and {1, 2}
    assert (g.size_a, g.size_b, g.overlap) == (2, 2, 1)
    assert g.precision == g.recall == g.f1 == pytest.approx(0.5)
    assert g.iou == pytest.approx(1 / 3)
    # no ties: rho = 1 - 6 sum(d^2) / (n (n^2 - 1)); ranks a: 5,4,3,1,2  b: 2,5,4,3,1
    d2 = sum((x - y) ** 2 for x, y in zip([5, 4, 3, 1, 2], [2, 5, 4, 3, 1], strict=True))
    assert g.spearman == pytest.approx(1 - 6 * d2 / (5 * 24))


def test_only_supporting_words_make_a_rationale_so_precision_and_recall_differ() -> None:
    a = [3.0, 2.0, 1.0, 0.5]
    b = [1.0, -2.0, -3.0, -4.0]
    g = agreement(a, b, k_percent=50)  # A = {0, 1}; B = {0} (word 1 opposes B's prediction)
    assert (g.precision, g.recall) == (1.0, 0.5)
    assert g.f1 == pytest.approx(2 / 3) and g.iou == pytest.approx(0.5)
    assert rationale(b, 50).tolist() == [True, False, False, False]


def test_undefined_values_are_none_not_nan() -> None:
    g = agreement([1.0, 2.0, 3.0], [-1.0, -1.0, -1.0], k_percent=50)
    assert g.precision is None and g.f1 is None and g.recall == 0.0 and g.spearman is None
    same = agreement([1.0, 2.0, 3.0], [1.0, 2.0, 3.0])
    assert same.f1 == 1.0 and same.spearman == pytest.approx(1.0)
    assert same.spearman == pytest.approx(spearmanr([1, 2, 3], [1, 2, 3]).statistic)


def test_explanations_of_different_inputs_are_rejected() -> None:
    with pytest.raises(UserError, match="different features"):
        agreement([1.0, 2.0], [1.0, 2.0, 3.0])
    with pytest.raises(UserError, match=r"percentage in \(0, 100\]"):
        agreement([1.0], [1.0], k_percent=0)
