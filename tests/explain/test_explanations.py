"""Explaining a causal LM behind a prompt: the target, the cache, and faithfulness over examples."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers.tiny_models import tiny_loaded

from core.cache import ResultCache
from core.errors import UserError
from core.explain.dataset import DatasetExplainer, ExplainConfig, dataset_faithfulness, pick_example
from core.explain.features import text_features
from core.explain.methods import explain
from core.explain.targets import LMTarget
from core.task.data import Example, dataset_from_rows
from core.task.prompts import PromptBuilder, PromptConfig
from core.task.scoring import score_examples
from core.task.setup import Setup

ROWS = [{"text": t, "label": lab} for t, lab in [
    ("the film is good", "positive"), ("a bad and boring movie", "negative"), ("I loved it", "positive"),
    ("terrible plot, awful dialogue", "negative"), ("wonderful acting", "positive"), ("bad", "negative"),
]]


def _setup(family: str = "llama"):
    lm = tiny_loaded(family)
    ds = dataset_from_rows(ROWS * 4, "tiny")
    builder = PromptBuilder(lm.tokenizer, ds, PromptConfig(), lm.has_chat_template, lm.max_positions)
    return lm, ds, builder


@pytest.mark.parametrize("family", ["llama", "gemma3", "gpt2", "opt"])
@pytest.mark.parametrize("drop", [(), (0,), (1, 3)])
def test_target_probabilities_agree_with_scoring_and_with_the_embedding_path(family: str, drop) -> None:
    lm, ds, builder = _setup(family)
    examples = ds.splits["train"][:4]
    target = LMTarget(lm, builder, drop, batch_size=3)
    ids = [builder.encode(ex.text).ids[: builder.encode(ex.text).text_len] for ex in examples]
    logits = score_examples(lm, builder, examples, drop).logits
    expected = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(target.probs(ids), expected, atol=1e-5)
    for row, x in enumerate(ids):
        via_embeddings = target.probs_from_embeddings(target.embed(x)).detach().numpy()[0]
        np.testing.assert_allclose(via_embeddings, expected[row], atol=1e-5)


def test_integrated_gradients_through_a_pruned_lm_is_complete() -> None:
    lm, ds, builder = _setup("llama")
    target = LMTarget(lm, builder, (2,))
    f = text_features(lm.tokenizer, "terrible plot, awful dialogue", max_tokens=builder.max_text_tokens)
    a = explain(target, f, "integrated-gradients", {"n_steps": 64})
    emb = target.embed(f.ids)
    with torch.no_grad():
        gap = (target.probs_from_embeddings(emb) - target.probs_from_embeddings(torch.zeros_like(emb)))[0, a.predicted]
    assert a.scores.sum() == pytest.approx(float(gap), abs=2e-3)


def test_explanations_are_cached_by_explainer_parameters_and_mask(tmp_path) -> None:
    lm, ds, builder = _setup()
    cache = ResultCache(tmp_path)
    ex = ds.splits["test"][0]
    setup = Setup(lm, ds, cache=cache)
    first, hit = DatasetExplainer(setup, (), ExplainConfig.make("lime")).explain(ex)
    again, hit2 = DatasetExplainer(setup, (), ExplainConfig.make("lime")).explain(ex)
    assert (hit, hit2) == (False, True)
    np.testing.assert_array_equal(first.scores, again.scores)
    _, other_params = DatasetExplainer(setup, (), ExplainConfig.make("lime", {"seed": 3})).explain(ex)
    _, other_mask = DatasetExplainer(setup, (1,), ExplainConfig.make("lime")).explain(ex)
    assert not other_params and not other_mask


def test_dataset_faithfulness_reports_aopc_per_k_and_the_random_baseline(tmp_path) -> None:
    lm, ds, builder = _setup()
    cache = ResultCache(tmp_path)
    examples = ds.splits["train"][:5]
    explainer = DatasetExplainer(Setup(lm, ds, cache=cache), (0,), ExplainConfig.make("occlusion"), "train")
    seen = []
    result = dataset_faithfulness(explainer, examples, progress=lambda d, t: seen.append((d, t)), chunk=2)
    assert seen[-1] == (5, 5) and len(result.curves) == len(result.random_curves) == 5
    s = result.summary()
    assert s["explainer"] == "occlusion" and s["faithfulness_n"] == 5 and s["removal"] == "delete"
    assert list(s["comprehensiveness_at_k"]) == ["1", "5", "10", "20", "50"]
    assert s["comprehensiveness"] == pytest.approx(np.mean([c.comprehensiveness for c in result.curves]))
    assert s["random_baseline_sufficiency"] == pytest.approx(np.mean([c.sufficiency for c in result.random_curves]))
    again = dataset_faithfulness(explainer, examples)
    assert again.cached and again.summary()["comprehensiveness"] == s["comprehensiveness"]


def test_bad_examples_get_clear_messages() -> None:
    lm, ds, builder = _setup()
    n = len(ds.splits["test"])
    with pytest.raises(UserError, match=f"example {n} is out of range: the test split of 'tiny' has {n} examples"):
        pick_example(ds, "test", n)
    explainer = DatasetExplainer(Setup(lm, ds))
    with pytest.raises(UserError, match="example 'blank': the input text has no words to explain"):
        explainer.explain(Example(id="blank", text=" \n ", label=0))
    with pytest.raises(UserError, match="unknown explainer 'gradcam'"):
        DatasetExplainer(Setup(lm, ds), (), ExplainConfig.make("gradcam"))
    with pytest.raises(UserError, match="no unk token"):
        DatasetExplainer(Setup(lm, ds), (), ExplainConfig.make("lime", removal="unk"))


@pytest.mark.parametrize("content", [b"\xff not utf-8", b"[1]", b"{}", b'{"explainer": "occlusion"}',
                                     b'{"explainer": "occlusion", "params": {}, "features": ["a"], "scores": [],'
                                     b' "predicted": 0, "probs": [1], "seconds": 0, "granularity": "word"}'])
def test_damaged_explanation_and_faithfulness_entries_are_recomputed(tmp_path, content: bytes) -> None:
    lm, ds, _ = _setup()
    setup = Setup(lm, ds, PromptConfig(style="zero-shot"), cache=ResultCache(tmp_path))
    explainer = DatasetExplainer(setup, (1,), ExplainConfig.make("occlusion"))
    examples = ds.splits["test"][:2]
    first = dataset_faithfulness(explainer, examples).summary()
    for path in tmp_path.glob("*.json"):
        if path.name.startswith(("explanation-", "faithfulness-")):
            path.write_bytes(content)
    again = dataset_faithfulness(explainer, examples).summary()
    assert not again["faithfulness_cached"]
    assert again["comprehensiveness"] == pytest.approx(first["comprehensiveness"])
    assert dataset_faithfulness(explainer, examples).summary()["faithfulness_cached"]
