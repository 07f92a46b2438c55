"""The two further packaged models on real weights: all-MiniLM-L6-v2 as a classifier (installed by the
default setup) and Gemma-3-270m (opt-in: these tests run only where it was installed with `make gemma`)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from core.cache import ResultCache
from core.cli import main
from core.model.loading import load_model, preset
from core.study.importance import attention_scores, calibration_texts
from core.task.data import load_dataset
from core.task.evaluation import EvalConfig, evaluate
from core.task.prompts import PromptBuilder, PromptConfig
from core.task.scoring import score_examples
from core.task.setup import Setup

pytestmark = pytest.mark.slow
GEMMA = preset("gemma-3-270m")
needs_gemma = pytest.mark.skipif(
    GEMMA is None or not GEMMA.available_offline(),
    reason="Gemma-3-270m is opt-in (Gemma terms); install it with `make gemma` to run this test",
)


@pytest.fixture(scope="module")
def minilm(minilm_head):
    """MiniLM and the default data; the module's cache starts with its head fitted on the full encoder."""
    return load_model("all-minilm-l6-v2"), load_dataset()


def test_minilm_is_a_classifier_that_keeps_most_accuracy_with_two_layers_dropped(minilm) -> None:
    lm, ds = minilm
    assert lm.task == "classifier" and lm.num_layers == 6 and lm.spec.family == "bert"
    cache = ResultCache()  # the module's: the CLI test below reads the heads fitted here
    full = evaluate(Setup(lm, ds, cache=cache), EvalConfig(n=200))
    assert full.metrics.accuracy > 0.72, full.metrics.accuracy
    assert full.prompt["style"] == "classifier-head" and full.prompt["head_fitted_on"] == []
    drop = tuple(attention_scores(lm, calibration_texts(ds), cache=cache).most_redundant(2))
    frozen = evaluate(Setup(lm, ds, cache=cache), EvalConfig(n=200, drop=drop))
    refit = evaluate(Setup(lm, ds, refit_head=True, cache=cache), EvalConfig(n=200, drop=drop))
    assert frozen.prompt["head"] == full.prompt["head"]
    assert refit.prompt["head_fitted_on"] == list(drop) and refit.prompt["head"] != full.prompt["head"]
    assert frozen.metrics.accuracy > 0.6 and refit.metrics.accuracy > 0.6
    assert not np.allclose(frozen.logits, full.logits)


def test_minilm_through_the_cli_explain_and_evaluate(minilm, capsys) -> None:
    code = main(["explain", "--model", "all-minilm-l6-v2", "--example", "2", "--explainer", "occlusion",
                 "--drop-attn", "1,2", "--json", "-"])
    out = json.loads(capsys.readouterr().out)
    assert code == 0 and out["explanation"]["predicted"] in ("negative", "positive")
    assert len(out["explanation"]["features"]) == len(out["text"].split())
    assert "agreement_with_full_model" in out
    code = main(["evaluate", "--model", "all-minilm-l6-v2", "--n", "40", "--drop-k", "2", "--refit-head",
                 "--json", "-"])
    out = json.loads(capsys.readouterr().out)
    assert code == 0 and out["prompt"]["head_fitted_on"] == out["dropped_attention_layers"]
    code = main(["evaluate", "--n", "10", "--refit-head"])
    assert code == 2 and "applies only to encoder classifiers" in capsys.readouterr().err


@needs_gemma
@pytest.mark.parametrize("drop", [(0,), (0, 5), (0, 1, 2, 3, 4), (17, 14), (5, 11, 17)])
def test_gemma_prefix_cache_with_dropped_layers_matches_no_cache(module_results, drop) -> None:
    """Gemma3 mixes sliding-window layers (most) with global ones (5, 11, 17): the cache trap must not bite."""
    lm, ds = load_model("gemma-3-270m"), load_dataset()
    builder = PromptBuilder(lm.tokenizer, ds, PromptConfig(), lm.has_chat_template, lm.max_positions)
    examples, _ = ds.sample("test", 24, seed=3)
    cached = score_examples(lm, builder, examples, drop, batch_size=8, use_prefix_cache=True).logits
    plain = score_examples(lm, builder, examples, drop, batch_size=8, use_prefix_cache=False).logits
    np.testing.assert_allclose(cached, plain, atol=2e-3)
    p_cached = np.exp(cached) / np.exp(cached).sum(1, keepdims=True)
    p_plain = np.exp(plain) / np.exp(plain).sum(1, keepdims=True)
    np.testing.assert_allclose(p_cached, p_plain, atol=1e-4)
