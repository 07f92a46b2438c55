"""Scoring throughput on the default model and 200 default examples (prints figures; not a test).

1. The batched, prefix-reusing scorer (answer-position, candidate-only logits) against a plain loop
   of one example per forward over the whole prompt with full-vocabulary logits.
2. Wall time of the batched scorer with half the attention layers dropped (the most redundant by
   He et al.'s score) against none dropped.
"""

from __future__ import annotations

import os
import time

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import numpy as np
import torch

from core import calibration_texts, load_dataset, load_model
from core.model.pruning import dropped_attention
from core.study.importance import compute_scores
from core.task.prompts import PromptBuilder, PromptConfig
from core.task.scoring import full_logits_loop, score_examples


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def main() -> None:
    lm, ds = load_model(), load_dataset()
    examples, _ = ds.sample("test", 200)
    builder = PromptBuilder(lm.tokenizer, ds, PromptConfig(), lm.has_chat_template, lm.max_positions)
    print(f"torch threads: {torch.get_num_threads()}, prefix {len(builder.prefix_ids)} tokens, "
          f"{len(examples)} examples")
    score_examples(lm, builder, examples[:16])  # warm-up
    batched, t_batched = timed(lambda: score_examples(lm, builder, examples))
    loop, t_loop = timed(lambda: full_logits_loop(lm, builder, examples))
    print(f"plain loop (1 per forward, full logits): {len(examples) / t_loop:6.1f} examples/s  ({t_loop:.1f} s)")
    print(f"batched + prefix cache:                  {len(examples) / t_batched:6.1f} examples/s  "
          f"({t_batched:.1f} s)  speed-up {t_loop / t_batched:.2f}x")
    print(f"max |logit difference|: {np.abs(batched.logits - loop).max():.2e}")

    half = compute_scores(lm, calibration_texts(ds)).most_redundant(lm.num_layers // 2)
    _, t_none = timed(lambda: score_examples(lm, builder, examples))
    _, t_half = timed(lambda: score_examples(lm, builder, examples, half))
    print(f"no layer dropped: {t_none:.2f} s; {len(half)} of {lm.num_layers} attention layers dropped: "
          f"{t_half:.2f} s  ({t_none / t_half:.2f}x faster)")
    with dropped_attention(lm.model, half):
        loop_half, t_loop_half = timed(lambda: full_logits_loop(lm, builder, examples))
    print(f"plain loop with those layers dropped: {t_loop_half:.1f} s ({t_loop / t_loop_half:.2f}x faster)")


if __name__ == "__main__":
    main()
