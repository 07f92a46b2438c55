"""Batches that fit: a batch size chosen from free GPU memory, halved on out-of-memory instead of crashing.

On the CPU the caller's batch size is used as given (16 by default; larger batches gain little
there). On a CUDA device the size is estimated from the free memory and the model's shape, and when
a batch still runs out of memory it is retried at half the size, down to one example.
"""

from __future__ import annotations

import gc
import logging
from collections.abc import Callable, Sequence

import torch

from ..errors import UserError
from .loading import LoadedModel

log = logging.getLogger(__name__)


def release_memory() -> None:
    """Give back what an out-of-memory step left allocated, before it is retried in smaller batches."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
MAX_BATCH = 256
MEMORY_SHARE = 0.6
"""The share of the free GPU memory a batch's activations and KV cache may take."""


def bytes_per_example(lm: LoadedModel, tokens: int) -> int:
    """An estimate of one example's peak memory in a forward pass of ``tokens`` tokens.

    The KV cache of every layer (kept for prefix reuse), and the widest activations of one layer at a
    time (hidden states, the MLP's intermediate and a margin); SDPA attention needs no tokens² matrix.
    """
    config = lm.model.config
    hidden = int(getattr(config, "hidden_size", 0) or getattr(config, "n_embd", 0) or 1024)
    inner = int(getattr(config, "intermediate_size", 0) or getattr(config, "ffn_dim", 0) or 4 * hidden)
    heads = int(getattr(config, "num_attention_heads", 0) or getattr(config, "n_head", 0) or 1)
    kv_heads = int(getattr(config, "num_key_value_heads", 0) or heads)
    head_dim = int(getattr(config, "head_dim", 0) or hidden // heads)
    width = torch.finfo(next(lm.model.parameters()).dtype).bits // 8
    kv = 2 * lm.num_layers * kv_heads * head_dim
    return tokens * width * (kv + 6 * hidden + 3 * inner)


def batch_size_for(lm: LoadedModel, tokens: int, requested: int) -> int:
    """``requested`` on the CPU; on a GPU, the largest power of two whose batch fits in the free memory."""
    device = next(lm.model.parameters()).device
    if device.type != "cuda":
        return requested
    free, _ = torch.cuda.mem_get_info(device)
    fit = int(free * MEMORY_SHARE) // max(bytes_per_example(lm, max(tokens, 1)), 1)
    size = 1
    while size * 2 <= min(fit, MAX_BATCH):
        size *= 2
    return size


def run_batched(order: Sequence[int], size: int, step: Callable[[list[int]], None]) -> int:
    """Call ``step`` on consecutive batches of ``order``; a batch that runs out of memory is retried at half
    the size. Returns the size the last batch ran at."""
    start = 0
    while start < len(order):
        rows = list(order[start : start + size])
        try:
            step(rows)
        except torch.OutOfMemoryError:
            if size == 1:
                raise UserError("out of GPU memory with one example per batch: use bf16, a shorter "
                                "--max-input-tokens, or a GPU with more memory") from None
            size = max(1, size // 2)
            release_memory()
            log.warning("out of memory: retrying with batches of %d", size)
            continue
        start += len(rows)
    return size
