"""Parameters, FLOPs and KV-cache memory saved by a mask, against hand counts on tiny models."""

from __future__ import annotations

import pytest
from helpers.tiny_models import tiny_loaded

from core.errors import UserError
from core.model import efficiency as eff
from core.model.efficiency import compare_latency, efficiency

# tiny llama: hidden 32, 4 heads of 8, 2 kv heads; q 32x32, k 32x16, v 32x16, o 32x32, no biases
ATTN_PARAMS = 32 * 32 + 32 * 16 + 32 * 16 + 32 * 32


def test_llama_counts_equal_hand_values() -> None:
    lm = tiny_loaded("llama")
    none, two = efficiency(lm, ()), efficiency(lm, (0, 2), context=100)
    assert none.parameters_saved == 0 and none.layers_kept == 4
    assert two.parameters_saved == 2 * ATTN_PARAMS and two.layers_kept == 2
    kv_per_layer = 2 * 2 * 8 * 4 * 1000  # keys and values, kv heads, head dim, fp32 bytes, tokens
    assert two.kv_bytes_per_1k_tokens == 4 * kv_per_layer and two.kv_bytes_saved_per_1k_tokens == 2 * kv_per_layer
    assert two.flops_saved == 2 * (2 * ATTN_PARAMS) + 2 * (4 * 4 * 8 * 100)
    body = sum(p.numel() for p in lm.model.parameters()) - lm.model.get_input_embeddings().weight.numel()
    head = lm.model.get_output_embeddings().weight.numel()
    tied = lm.model.config.tie_word_embeddings
    assert two.flops_per_token == 2 * (body + (head if tied else 0)) + 4 * (4 * 4 * 8 * 100)
    assert 0 < two.flops_saved_fraction < two.parameters_saved_fraction * 10


def test_sliding_window_layers_hold_at_most_their_window() -> None:
    lm = tiny_loaded("gemma3")  # sliding window 4 on layers 0 and 2
    e = efficiency(lm, (0,))
    per_token = 2 * 2 * 8 * 4
    assert e.kv_bytes_saved_per_1k_tokens == per_token * 4
    assert e.kv_bytes_per_1k_tokens == per_token * (4 + 1000 + 4 + 1000)


def test_masks_are_checked() -> None:
    lm = tiny_loaded("llama")
    with pytest.raises(UserError, match="out of range"):
        efficiency(lm, (9,))


def test_full_and_pruned_latency_are_timed_in_turns(monkeypatch) -> None:
    lm = tiny_loaded("llama")
    calls = []
    real = eff._forward_seconds

    def recorded(lm_, ids, drop):
        calls.append(drop)
        return real(lm_, ids, drop)

    monkeypatch.setattr(eff, "_forward_seconds", recorded)
    full, pruned = compare_latency(lm, (1, 0), tokens=16, repeats=3)
    assert full > 0 and pruned > 0
    assert calls == [(), (), (0, 1), (), (0, 1), (), (0, 1)]  # a warm-up, then full and pruned alternate
    with pytest.raises(UserError, match="out of range"):
        compare_latency(lm, (9,))


def test_a_latency_measurement_gives_way_when_asked() -> None:
    from helpers.tiny_models import tiny_loaded

    from core.errors import Cancelled

    lm = tiny_loaded("llama")
    asked = []

    def stop_after_three() -> bool:
        asked.append(1)
        return len(asked) > 3

    with pytest.raises(Cancelled, match="another computation started"):
        compare_latency(lm, (1,), tokens=16, repeats=3, stop=stop_after_three)
    assert len(asked) == 4  # asked before every pass: the warm-up, then full and pruned in turns
    full, pruned = compare_latency(lm, (1,), tokens=16, repeats=3, stop=lambda: False)
    assert full > 0 and pruned > 0
