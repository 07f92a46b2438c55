"""Batched, prefix-cached scoring against the plain one-at-a-time full-logits loop."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers.tiny_models import tiny_loaded

from core.errors import UserError
from core.model.pruning import dropped_attention
from core.task.data import dataset_from_rows
from core.task.prompts import PromptBuilder, PromptConfig
from core.task.scoring import full_logits_loop, score_examples

ROWS = [{"text": t, "label": lab} for t, lab in [
    ("the film is good", "positive"), ("a bad and boring movie", "negative"), ("I loved it", "positive"),
    ("terrible plot, awful dialogue and a great deal of noise", "negative"), ("wonderful", "positive"),
    ("bad", "negative"), ("moving and funny, the acting is great", "positive"), ("boring", "negative"),
    ("Ce film était génial 😀", "positive"), ("ok", "negative"),
]]


def _setup(family: str, style: str = "few-shot"):
    lm = tiny_loaded(family)
    ds = dataset_from_rows(ROWS * 3, "tiny")
    builder = PromptBuilder(lm.tokenizer, ds, PromptConfig(style=style), lm.has_chat_template, lm.max_positions)
    return lm, ds, builder


@pytest.mark.parametrize("family", ["llama", "gemma3", "gpt2", "opt", "gpt_neox", "qwen3"])
@pytest.mark.parametrize("drop", [(), (0,), (0, 2)])
def test_batched_prefix_cached_scores_equal_the_plain_loop(family: str, drop: tuple[int, ...]) -> None:
    lm, ds, builder = _setup(family)
    examples = [e for s in ds.splits.values() for e in s][:12]
    scores = score_examples(lm, builder, examples, drop, batch_size=5)
    no_cache = score_examples(lm, builder, examples, drop, batch_size=3, use_prefix_cache=False)
    with dropped_attention(lm.model, drop):
        reference = full_logits_loop(lm, builder, examples)
    assert scores.logits.shape == (12, 2)
    np.testing.assert_allclose(scores.logits, reference, atol=1e-4)
    np.testing.assert_allclose(no_cache.logits, reference, atol=1e-4)


def test_progress_is_reported_and_ends_at_the_total() -> None:
    lm, ds, builder = _setup("llama", "zero-shot")
    seen: list[tuple[int, int]] = []
    score_examples(lm, builder, ds.splits["train"][:7], batch_size=3, progress=lambda d, t: seen.append((d, t)))
    assert seen[-1] == (7, 7) and [d for d, _ in seen] == sorted(d for d, _ in seen)


def test_long_inputs_are_truncated_and_counted() -> None:
    lm = tiny_loaded("llama")
    ds = dataset_from_rows(ROWS * 3, "tiny")
    builder = PromptBuilder(lm.tokenizer, ds, PromptConfig(style="zero-shot", max_input_tokens=4),
                            lm.has_chat_template, lm.max_positions)
    examples = ds.splits["train"][:6]
    scores = score_examples(lm, builder, examples)
    expected = sum(len(lm.tokenizer(" " + e.text, add_special_tokens=False)["input_ids"]) > 4 for e in examples)
    assert scores.truncated == expected > 0 and np.isfinite(scores.logits).all()


def test_label_words_sharing_a_first_token_are_rejected() -> None:
    lm = tiny_loaded("llama")
    ds = dataset_from_rows([{"text": "x", "label": "goodish"}, {"text": "y", "label": "goody"}] * 5, "clash")
    with pytest.raises(UserError, match="start with the same token"):
        PromptBuilder(lm.tokenizer, ds, PromptConfig(), lm.has_chat_template, lm.max_positions)


def test_chat_style_needs_a_chat_template() -> None:
    lm = tiny_loaded("llama")
    ds = dataset_from_rows(ROWS, "tiny")
    with pytest.raises(UserError, match="no chat template"):
        PromptBuilder(lm.tokenizer, ds, PromptConfig(style="chat"), lm.has_chat_template, lm.max_positions)


@pytest.mark.parametrize("family", ["llama", "gemma3", "gpt2"])
@pytest.mark.parametrize("drop", [(), (0, 1)])
def test_label_mass_is_the_full_softmax_on_the_answer_tokens(family: str, drop: tuple[int, ...]) -> None:
    lm, ds, builder = _setup(family)
    examples = ds.splits["train"][:6]
    scores = score_examples(lm, builder, examples, drop, batch_size=4)
    expected = []
    with dropped_attention(lm.model, drop), torch.inference_mode():
        for ex in examples:
            ids = torch.tensor([builder.prefix_ids + builder.encode(ex.text).ids])
            probs = torch.softmax(lm.model(input_ids=ids).logits[0, -1].double(), dim=-1)
            expected.append(float(probs[builder.candidate_ids].sum()))
    assert scores.label_mass is not None and scores.label_mass.shape == (6,)
    np.testing.assert_allclose(scores.label_mass, expected, rtol=1e-4, atol=1e-7)
    assert ((scores.label_mass > 0) & (scores.label_mass <= 1)).all()


@pytest.mark.parametrize("content", [b"\xff\xfe not utf-8", b"[1, 2, 3]", b"{}", b'{"logits": [[0.5]], "truncated": 0}',
                                     b'{"logits": [], "truncated": 0, "label_mass": null}'])
def test_a_damaged_scores_entry_is_recomputed_and_overwritten(tmp_path, content: bytes) -> None:
    from core.cache import ResultCache
    from core.task.evaluation import EvalConfig, evaluate
    from core.task.setup import Setup

    lm, ds, _ = _setup("llama")
    cache = ResultCache(tmp_path)
    config = EvalConfig(n=6, split="train", val_n=0)
    first = evaluate(Setup(lm, ds, cache=cache), config)
    entries = list(tmp_path.glob("scores-*.json"))
    assert len(entries) == 1
    entries[0].write_bytes(content)
    again = evaluate(Setup(lm, ds, cache=cache), config)
    assert not again.cached
    np.testing.assert_allclose(again.logits, first.logits)
    np.testing.assert_allclose(again.label_mass, first.label_mass)
    assert evaluate(Setup(lm, ds, cache=cache), config).cached
