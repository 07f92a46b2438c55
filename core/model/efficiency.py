"""What a mask saves: attention layers, parameters, FLOPs, KV-cache memory, and measured latency.

Counted for one new token decoded at a context of ``context`` tokens:

* parameters: those of the dropped attention branches (the attention module and, for sandwich-norm
  families, its post-attention norm); they are never run, so a pruned checkpoint could omit them.
* FLOPs: 2 per weight of every matrix a token goes through (the embedding lookup is free), plus, per
  kept attention layer, 4 x heads x head_dim x the tokens it attends to (the scores and the weighted
  sum). A sliding-window layer attends to at most its window.
* KV cache: 2 (keys and values) x kv_heads x head_dim x bytes per value, per token each kept layer
  holds (a sliding-window layer holds at most its window). A dropped layer needs no KV cache.

Latency is measured, not modelled: forward passes over a fixed input, the full and the pruned model in
turns, and the median of their paired ratios with a distribution-free 95% interval and a verdict (beyond
timing noise or not), shown beside the ratio the FLOP count alone would give (`compare_latency`).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import torch
from scipy.stats import binom

from ..errors import Cancelled, UserError
from .loading import LoadedModel
from .pruning import attention_param_count, dropped_attention, validate_mask


@dataclass
class Efficiency:
    layers: int
    layers_kept: int
    parameters: int
    parameters_saved: int
    flops_per_token: float
    flops_saved: float
    kv_bytes_per_1k_tokens: float
    kv_bytes_saved_per_1k_tokens: float
    context: int

    @property
    def parameters_saved_fraction(self) -> float:
        return self.parameters_saved / self.parameters

    @property
    def flops_saved_fraction(self) -> float:
        return self.flops_saved / self.flops_per_token

    def as_dict(self) -> dict:
        return {**asdict(self), "parameters_saved_fraction": self.parameters_saved_fraction,
                "flops_saved_fraction": self.flops_saved_fraction}


def _attention_shape(config) -> tuple[int, int, int]:
    heads = int(config.num_attention_heads)
    head_dim = int(getattr(config, "head_dim", None) or config.hidden_size // heads)
    kv_heads = int(getattr(config, "num_key_value_heads", None) or heads)
    return heads, kv_heads, head_dim


def _tokens_attended(config, layer: int, context: int) -> int:
    types = getattr(config, "layer_types", None)
    window = getattr(config, "sliding_window", None)
    if types and window and types[layer] == "sliding_attention":
        return min(context, int(window))
    return context


def efficiency(lm: LoadedModel, drop: Sequence[int], context: int = 1000) -> Efficiency:
    """Counts for ``drop`` against the full model (see the module docstring for the formulas)."""
    drop = validate_mask(drop, lm.num_layers)
    model, config = lm.model, lm.model.config
    heads, kv_heads, head_dim = _attention_shape(config)
    total = sum(p.numel() for p in model.parameters())
    embedding = model.get_input_embeddings().weight.numel()
    out = model.get_output_embeddings()
    # every weight matrix a token passes through: the body, and the output layer (shared or not);
    # an encoder has no output layer (its classifier head is a few thousand weights, left out)
    tied = out is not None and out.weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()
    matmul_params = total - embedding + (out.weight.numel() if tied else 0)
    attended = [_tokens_attended(config, i, context) for i in range(lm.num_layers)]
    scores = [4 * heads * head_dim * t for t in attended]
    flops = 2.0 * matmul_params + sum(scores)
    saved_params = attention_param_count(model, drop)
    bytes_per = next(model.parameters()).element_size()
    # an encoder reads its whole input at once and keeps no KV cache
    kv_1k = [0 if lm.spec.encoder else 2 * kv_heads * head_dim * bytes_per * _tokens_attended(config, i, 1000)
             for i in range(lm.num_layers)]
    return Efficiency(
        layers=lm.num_layers, layers_kept=lm.num_layers - len(drop), parameters=total,
        parameters_saved=saved_params, flops_per_token=flops,
        flops_saved=2.0 * saved_params + sum(scores[i] for i in drop),
        kv_bytes_per_1k_tokens=float(sum(kv_1k)), kv_bytes_saved_per_1k_tokens=float(sum(kv_1k[i] for i in drop)),
        context=context,
    )


def _fixed_ids(lm: LoadedModel, tokens: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    vocab = lm.model.get_input_embeddings().weight.shape[0]
    n = min(tokens, lm.max_positions)
    return torch.randint(0, vocab, (1, n), generator=generator).to(next(lm.model.parameters()).device)


def _forward_seconds(lm: LoadedModel, ids: torch.Tensor, drop: tuple[int, ...]) -> float:
    with torch.inference_mode(), dropped_attention(lm.model, drop):
        start = time.perf_counter()
        lm.model.base_model(input_ids=ids)
        return time.perf_counter() - start


def forward_flops(lm: LoadedModel, drop: Sequence[int], tokens: int) -> float:
    """Multiply-adds x 2 of one forward pass of the model's body over ``tokens`` tokens (what the latency times).

    Every weight of the body but the embedding, twice per token, less the dropped attention branches; plus,
    per kept attention layer, 4 x heads x head_dim per token and attended token (a causal model attends to
    the tokens so far, within a sliding window if it has one; an encoder to all of them).
    """
    drop = validate_mask(drop, lm.num_layers)
    config, body = lm.model.config, lm.model.base_model
    heads, _, head_dim = _attention_shape(config)
    weights = sum(p.numel() for p in body.parameters()) - lm.model.get_input_embeddings().weight.numel()
    weights -= attention_param_count(lm.model, drop)
    total = 2.0 * weights * tokens
    for layer in range(lm.num_layers):
        if layer in drop:
            continue
        attended = (tokens * tokens if lm.spec.encoder else
                    sum(_tokens_attended(config, layer, t) for t in range(1, tokens + 1)))
        total += 4.0 * heads * head_dim * attended
    return total


def median_interval(values: Sequence[float], level: float = 0.95) -> tuple[float, float, float]:
    """A distribution-free interval of the median: the k-th smallest and k-th largest of ``values``, k the largest
    with P(Binomial(n, 1/2) < k) <= (1 - level) / 2, and its exact coverage (at least ``level`` from 6 values on;
    below that, the smallest and largest values and their lower coverage)."""
    x = sorted(values)
    n = len(x)
    if n < 1:
        raise UserError("an interval of the median needs at least one value")
    k = 1
    while k < n // 2 + 1 and binom.cdf(k, n, 0.5) <= (1 - level) / 2:  # P(X <= k) = P(X < k + 1)
        k += 1
    return x[k - 1], x[n - k], float(1 - 2 * binom.cdf(k - 1, n, 0.5))


@dataclass(frozen=True)
class Latency:
    """The full and the pruned model's forward latency, timed in turns, and their ratio with its interval."""

    tokens: int
    pairs: int
    full_seconds: float
    """The median of the full model's timed passes."""
    pruned_seconds: float
    ratio: float
    """The median over pairs of pruned / full seconds (each pair timed back to back, under the same load)."""
    lo: float
    hi: float
    coverage: float
    """The exact coverage of [lo, hi] for the median ratio (order statistics; about 0.96 for 9 pairs)."""
    flop_ratio: float
    """Pruned over full FLOPs of the same pass: the ratio if time followed the FLOP count alone."""

    @property
    def beyond_noise(self) -> bool:
        """Whether the interval of the ratio excludes 1 (the mask changes the latency beyond timing noise)."""
        return self.hi < 1 or self.lo > 1

    def verdict(self) -> str:
        if not self.beyond_noise:
            return "within noise"
        return f"{'faster' if self.hi < 1 else 'slower'}, beyond noise"

    def as_dict(self) -> dict:
        return {**asdict(self), "beyond_noise": self.beyond_noise, "verdict": self.verdict()}


def compare_latency(lm: LoadedModel, drop: Sequence[int], tokens: int = 128, repeats: int = 9,
                    stop: Callable[[], bool] | None = None) -> Latency:
    """Forward latency of the full model and with ``drop`` applied, timed in turns, with the ratio's interval.

    A warm-up pair is run and discarded, then ``repeats`` pairs (full, then pruned) back to back: alternating
    puts both under the same load, so their ratio holds on a busy machine, where two separate measurements
    taken minutes apart can differ by a factor of three. ``stop`` is asked before each pass; when it says so,
    `Cancelled` is raised (a measurement under another computation's load would be wrong anyway, and it must
    not slow that computation down).
    """
    drop = validate_mask(drop, lm.num_layers)
    if repeats < 1:
        raise UserError(f"latency needs at least one timed pair (got {repeats})")
    ids = _fixed_ids(lm, tokens)

    def timed(mask: Sequence[int]) -> float:
        if stop is not None and stop():
            raise Cancelled("latency measurement stopped: another computation started")
        return _forward_seconds(lm, ids, mask)

    timed(())  # warm-up, discarded
    timed(drop)
    full, pruned = [], []
    for _ in range(repeats):
        full.append(timed(()))
        pruned.append(timed(drop))
    ratios = [p / f for p, f in zip(pruned, full, strict=True)]
    lo, hi, coverage = median_interval(ratios)
    n = ids.shape[1]
    return Latency(tokens=n, pairs=repeats, full_seconds=statistics.median(full),
                   pruned_seconds=statistics.median(pruned), ratio=statistics.median(ratios), lo=lo, hi=hi,
                   coverage=coverage, flop_ratio=forward_flops(lm, drop, n) / forward_flops(lm, (), n))
