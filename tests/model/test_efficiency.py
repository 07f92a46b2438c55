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
    timing = compare_latency(lm, (1, 0), tokens=16, repeats=3)
    assert timing.full_seconds > 0 and timing.pruned_seconds > 0 and timing.pairs == 3 and timing.tokens == 16
    assert calls == [(), (0, 1)] * 4  # a warm-up pair, then full and pruned alternate
    assert timing.lo <= timing.ratio <= timing.hi
    assert timing.flop_ratio == pytest.approx(eff.forward_flops(lm, (0, 1), 16) / eff.forward_flops(lm, (), 16))
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
    assert len(asked) == 4  # asked before every pass: the warm-up pair, then full and pruned in turns
    timing = compare_latency(lm, (1,), tokens=16, repeats=3, stop=lambda: False)
    assert timing.full_seconds > 0 and timing.pruned_seconds > 0


def test_the_median_ratio_gets_an_order_statistic_interval_and_a_verdict(monkeypatch) -> None:
    # 9 pairs: the interval is the 2nd to the 8th smallest ratio, covering 1 - 2 P(Bin(9, 1/2) <= 1) = 0.961
    lo, hi, coverage = eff.median_interval([0.9, 0.95, 0.7, 1.3, 0.99, 1.01, 0.8, 0.85, 1.1])
    assert (lo, hi) == (0.8, 1.1) and coverage == pytest.approx(1 - 2 * 10 / 512)
    assert eff.median_interval([3.0, 1.0, 2.0])[:2] == (1.0, 3.0)  # fewer than 6: the extremes, with their coverage
    assert eff.median_interval([3.0, 1.0, 2.0])[2] == pytest.approx(0.75)
    with pytest.raises(UserError, match="at least one value"):
        eff.median_interval([])
    lm = tiny_loaded("llama")
    times = iter([1.0, 1.0] + [1.0, 0.8] * 9)  # the warm-up pair, then the pruned pass always 0.8 of the full one
    monkeypatch.setattr(eff, "_forward_seconds", lambda *_: next(times))
    timing = compare_latency(lm, (1,), tokens=16)
    assert timing.ratio == pytest.approx(0.8) and timing.hi < 1 and timing.verdict() == "faster, beyond noise"
    times = iter([1.0, 1.0] + [1.0, 0.9, 1.0, 1.1] * 4 + [1.0, 1.0])
    assert compare_latency(lm, (1,), tokens=16).verdict() == "within noise"


def test_forward_flops_by_hand_on_a_tiny_llama() -> None:
    lm = tiny_loaded("llama")  # hidden 32, 4 heads of 8, 2 KV heads, intermediate 48, 4 layers, vocab 320
    body = sum(p.numel() for p in lm.model.base_model.parameters()) - 320 * 32
    attention = 32 * 32 + 2 * (32 * 16) + 32 * 32  # q, k, v (2 KV heads of 8), o
    scores = 4 * 4 * 8 * sum(range(1, 11))  # 10 tokens, causal: token t attends to t tokens
    assert eff.forward_flops(lm, (), 10) == 2 * body * 10 + 4 * scores
    assert eff.forward_flops(lm, (1, 3), 10) == 2 * (body - 2 * attention) * 10 + 2 * scores
