"""ERASER comprehensiveness and sufficiency against values worked out by hand on a bag-of-words target."""

from __future__ import annotations

import math

import numpy as np
import pytest
from helpers.toy_target import BagOfWordsTarget

from core.explain.faithfulness import K_PERCENTS, faithfulness, faithfulness_many, rationale_sizes, top_features
from core.explain.features import text_features


def sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


# z1 - z0 = -1 + the words' weights: "excellent" decides the answer
WEIGHTS = {"the": [0, 0.1], "plot": [0, -0.2], "was": [0, 0.05], "excellent": [0, 3.0]}


def toy() -> BagOfWordsTarget:
    return BagOfWordsTarget(WEIGHTS, bias=[0, -1], unk=[0, 0.5])


@pytest.mark.parametrize(("n", "sizes"), [
    (1, [1, 1, 1, 1, 1]), (4, [1, 1, 1, 1, 2]), (20, [1, 1, 2, 4, 10]), (23, [1, 2, 3, 5, 12]),
    (200, [2, 10, 20, 40, 100]),
])
def test_rationale_sizes_are_ceil_of_k_percent_and_at_least_one(n: int, sizes: list[int]) -> None:
    assert rationale_sizes(n) == sizes


def test_top_features_break_ties_by_position() -> None:
    assert top_features([0.5, 0.9, 0.5, 0.1], 2).tolist() == [True, True, False, False]
    assert top_features([0.5, 0.9, 0.5, 0.1], 3).tolist() == [True, True, True, False]


def test_comprehensiveness_and_sufficiency_equal_hand_values() -> None:
    target = toy()
    f = text_features(target.tokenizer, "the plot was excellent")
    scores = [0.2, -0.1, 0.05, 0.9]  # order: excellent, the, was, plot
    full = sigmoid(-1 + 0.1 - 0.2 + 0.05 + 3.0)
    result = faithfulness(target, f, scores, predicted=1)
    # k = 1, 5, 10, 20% -> the top word; 50% -> the top two
    comp1, suff1 = full - sigmoid(-1 + 0.1 - 0.2 + 0.05), full - sigmoid(-1 + 3.0)
    comp50, suff50 = full - sigmoid(-1 - 0.2 + 0.05), full - sigmoid(-1 + 3.0 + 0.1)
    assert result.p_full == pytest.approx(full)
    np.testing.assert_allclose(result.comprehensiveness_at_k, [comp1] * 4 + [comp50], atol=1e-12)
    np.testing.assert_allclose(result.sufficiency_at_k, [suff1] * 4 + [suff50], atol=1e-12)
    assert result.comprehensiveness == pytest.approx((4 * comp1 + comp50) / 5)
    assert result.sufficiency == pytest.approx((4 * suff1 + suff50) / 5)
    assert result.sufficiency < 0  # the decisive word alone is more convincing than the whole sentence


def test_replacing_removed_words_uses_the_replacement_tokens_weight() -> None:
    target = toy()
    f = text_features(target.tokenizer, "the plot was excellent")
    result = faithfulness(target, f, [0, 0, 0, 1], predicted=1, replacement=1, k_percents=[25])
    full = sigmoid(1.95)
    assert result.comprehensiveness_at_k[0] == pytest.approx(full - sigmoid(-1.05 + 0.5))
    assert result.sufficiency_at_k[0] == pytest.approx(full - sigmoid(-1 + 3.0 + 3 * 0.5))


def test_many_items_are_scored_in_one_call_and_match_one_at_a_time() -> None:
    target = toy()
    texts = ["the plot was excellent", "excellent", "plot was the plot"]
    items = [(text_features(target.tokenizer, t), list(np.linspace(1, 0, len(t.split()))), 1, 0) for t in texts]
    target.calls = 0
    together = faithfulness_many(target, items)
    assert target.calls == 1
    for (f, s, p, _), r in zip(items, together, strict=True):
        single = faithfulness(target, f, s, p)
        assert r.comprehensiveness_at_k == pytest.approx(single.comprehensiveness_at_k)
        assert r.k_percents == list(K_PERCENTS)
