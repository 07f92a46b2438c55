"""Batch sizes from memory, halving on out-of-memory, device 'auto', and bf16 scoring paths that agree."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers.tiny_models import tiny_loaded, tiny_model, tiny_tokenizer

from core.errors import UserError
from core.model.batching import batch_size_for, bytes_per_example, run_batched
from core.model.pruning import dropped_attention
from core.task.data import dataset_from_rows
from core.task.prompts import PromptBuilder, PromptConfig
from core.task.scoring import full_logits_loop, score_examples

ROWS = [{"text": t, "label": lab} for t, lab in [
    ("the film is good", "positive"), ("a bad and boring movie", "negative"), ("I loved it", "positive"),
    ("terrible plot, awful dialogue and a great deal of noise", "negative"), ("wonderful", "positive"),
    ("bad", "negative"),
]] * 3


def _scoring(lm):
    ds = dataset_from_rows(ROWS, "tiny")
    builder = PromptBuilder(lm.tokenizer, ds, PromptConfig(style="few-shot"), lm.has_chat_template, lm.max_positions)
    return builder, [e for s in ds.splits.values() for e in s][:12]


def test_a_batch_out_of_memory_is_retried_at_half_the_size(monkeypatch) -> None:
    lm = tiny_loaded("llama")
    builder, examples = _scoring(lm)
    expected = score_examples(lm, builder, examples, (1,), batch_size=8)
    base = lm.model.base_model
    real, sizes = base.forward, []

    def small_batches_only(*args, **kwargs):
        rows = kwargs["input_ids"].shape[0]
        sizes.append(rows)
        if rows > 2:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return real(*args, **kwargs)

    monkeypatch.setattr(base, "forward", small_batches_only)
    scores = score_examples(lm, builder, examples, (1,), batch_size=8)
    np.testing.assert_allclose(scores.logits, expected.logits, atol=1e-5)
    assert sizes[:3] == [1, 8, 4] and set(sizes[3:]) == {2}  # the prefix, then 8 and 4 failed, then pairs
    assert sum(sizes[3:]) == len(examples)


def test_out_of_memory_at_one_example_is_a_clear_error() -> None:
    def never_fits(rows: list[int]) -> None:
        raise torch.OutOfMemoryError("simulated")

    with pytest.raises(UserError, match="out of GPU memory with one example per batch: use bf16"):
        run_batched(list(range(5)), 4, never_fits)
    seen: list[list[int]] = []
    assert run_batched(list(range(5)), 2, seen.append) == 2 and seen == [[0, 1], [2, 3], [4]]


def test_the_batch_size_is_the_callers_on_the_cpu_and_memory_grows_with_tokens() -> None:
    lm = tiny_loaded("llama")
    assert batch_size_for(lm, 500, 16) == 16
    # tiny llama: 4 layers, 2 KV heads of 8 dims, hidden 32, intermediate 48, fp32
    assert bytes_per_example(lm, 10) == 10 * 4 * (2 * 4 * 2 * 8 + 6 * 32 + 3 * 48)
    assert bytes_per_example(lm, 20) == 2 * bytes_per_example(lm, 10)


def test_device_auto_places_the_model_and_scores_like_the_cpu(tmp_path) -> None:
    from core.model.loading import load_model

    tiny_model("gpt2").save_pretrained(tmp_path)
    tiny_tokenizer().save_pretrained(tmp_path)
    cpu, auto = load_model(str(tmp_path), device="cpu"), load_model(str(tmp_path), device="auto")
    assert auto is not cpu and auto.fingerprint == cpu.fingerprint
    builder, examples = _scoring(cpu)
    np.testing.assert_allclose(score_examples(auto, builder, examples, (0,)).logits,
                               score_examples(cpu, builder, examples, (0,)).logits, atol=1e-5)
    with pytest.raises(UserError, match="unknown device 'tpu'; use cpu, cuda, cuda:N or auto"):
        load_model(str(tmp_path), device="tpu")


@pytest.mark.parametrize("family", ["llama", "gpt2"])
@pytest.mark.parametrize("drop", [(), (0,), (0, 2)])
def test_bf16_pruned_prefix_cached_and_plain_answers_agree(family: str, drop: tuple[int, ...]) -> None:
    lm = tiny_loaded(family)
    lm.model.to(torch.bfloat16)
    builder, examples = _scoring(lm)
    cached = score_examples(lm, builder, examples, drop, batch_size=5).logits
    plain = score_examples(lm, builder, examples, drop, batch_size=3, use_prefix_cache=False).logits
    with dropped_attention(lm.model, drop):
        reference = full_logits_loop(lm, builder, examples)
    scale = np.abs(reference).max()
    # bf16 keeps 8 bits of mantissa: agreement to a few units of its last place, relative to the logits
    np.testing.assert_allclose(cached, reference, atol=0.03 * scale)
    np.testing.assert_allclose(plain, reference, atol=0.03 * scale)
    assert (cached.argmax(1) == reference.argmax(1)).mean() >= 0.9
