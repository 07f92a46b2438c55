"""Every explainer on a hand-built bag-of-words target whose decisive word is known, and their parameters."""

from __future__ import annotations

import numpy as np
import pytest
from helpers.toy_target import BagOfWordsTarget

from core.errors import UserError
from core.explain.features import text_features
from core.explain.methods import EXPLAINERS, explain, resolve_params

WEIGHTS = {"the": [0, 0.1], "plot": [0, -0.2], "was": [0, 0.05], "excellent": [0, 3.0], "awful": [2.5, 0],
           "a": [0, 0.02], "film": [0, -0.05], "with": [0.03, 0], "dull": [0.3, 0], "moments": [0, 0.1]}
NON_RANDOM = [name for name in EXPLAINERS if name != "random"]


def toy() -> BagOfWordsTarget:
    return BagOfWordsTarget(WEIGHTS, bias=[0, -0.5])


@pytest.mark.parametrize("explainer", NON_RANDOM)
@pytest.mark.parametrize(("text", "decisive", "answer"), [
    ("the plot was excellent", "excellent", 1),
    ("excellent film with dull moments", "excellent", 1),
    ("a film with the awful plot", "awful", 0),
])
def test_every_explainer_ranks_the_decisive_word_first(explainer: str, text: str, decisive: str, answer: int) -> None:
    target = toy()
    f = text_features(target.tokenizer, text)
    a = explain(target, f, explainer)
    assert a.predicted == answer
    assert a.names[a.order[0]] == decisive, dict(zip(a.names, a.scores.round(4), strict=True))
    assert a.scores.shape == (f.n,) and np.isfinite(a.scores).all()


def test_random_is_seeded_per_input_and_differs_between_seeds() -> None:
    target = toy()
    f = text_features(target.tokenizer, "excellent film with dull moments")
    one, two = explain(target, f, "random"), explain(target, f, "random")
    other = explain(target, f, "random", {"seed": 1})
    assert np.array_equal(one.scores, two.scores) and not np.array_equal(one.scores, other.scores)


@pytest.mark.parametrize("explainer", ["lime", "kernel-shap"])
def test_sampling_explainers_are_deterministic_for_a_seed(explainer: str) -> None:
    target = toy()
    f = text_features(target.tokenizer, "excellent film with dull moments and the plot")
    a, b = explain(target, f, explainer), explain(target, f, explainer)
    np.testing.assert_array_equal(a.scores, b.scores)


def test_kernel_shap_values_add_up_to_the_change_from_the_empty_input() -> None:
    target = toy()
    f = text_features(target.tokenizer, "excellent film with dull moments")
    a = explain(target, f, "kernel-shap", {"n_samples": 400})
    p_full, p_empty = target.probs([list(f.ids), []])[:, a.predicted]
    assert a.scores.sum() == pytest.approx(p_full - p_empty, abs=1e-3)


def test_occlusion_is_the_drop_when_each_word_is_removed() -> None:
    target = toy()
    f = text_features(target.tokenizer, "the plot was excellent")
    a = explain(target, f, "occlusion")
    full = target.probs([list(f.ids)])[0, 1]
    expected = [full - target.probs([f.ids_keeping(np.arange(4) != i)])[0, 1] for i in range(4)]
    np.testing.assert_allclose(a.scores, expected, atol=1e-6)


def test_integrated_gradients_is_complete_on_a_smooth_target() -> None:
    target = toy()
    f = text_features(target.tokenizer, "excellent film with dull moments")
    a = explain(target, f, "integrated-gradients", {"n_steps": 64})
    p_full, p_empty = target.probs([list(f.ids), []])[:, a.predicted]  # zero baseline = empty bag
    assert a.scores.sum() == pytest.approx(p_full - p_empty, abs=1e-3)


def test_a_single_word_gets_its_whole_effect() -> None:
    target = toy()
    f = text_features(target.tokenizer, "excellent")
    for name in ("lime", "kernel-shap", "occlusion"):
        a = explain(target, f, name)
        p_full, p_empty = target.probs([list(f.ids), []])[:, 1]
        assert a.scores[0] == pytest.approx(p_full - p_empty, abs=1e-6)


def test_perturbations_go_to_the_target_in_one_call() -> None:
    target = toy()
    f = text_features(target.tokenizer, "excellent film with dull moments")
    target.calls = 0
    explain(target, f, "lime")
    assert target.calls == 2  # the unperturbed input, then every sample at once


def test_parameters_are_checked_with_clear_messages() -> None:
    assert resolve_params("lime", {"n_samples": "300"})["n_samples"] == 300
    with pytest.raises(UserError, match="unknown explainer 'shapley'; use one of lime, kernel-shap"):
        resolve_params("shapley")
    with pytest.raises(UserError, match="has no parameter 'steps'; its parameters: n_steps, baseline"):
        resolve_params("integrated-gradients", {"steps": 3})
    with pytest.raises(UserError, match="must be a int"):
        resolve_params("lime", {"n_samples": "many"})
    with pytest.raises(UserError, match="at least 10"):
        resolve_params("kernel-shap", {"n_samples": 5})
    with pytest.raises(UserError, match="one of zero, pad, unk"):
        resolve_params("integrated-gradients", {"baseline": "mean"})
    with pytest.raises(UserError, match="has no parameter 'seed'; its parameters: none"):
        resolve_params("occlusion", {"seed": 1})
