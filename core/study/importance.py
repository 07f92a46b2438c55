"""Attention-layer importance: He et al.'s attention-drop score.

For attention sublayer i, with X the residual stream entering it and Y the stream after its
attention branch (``X + attn(ln(X))``, or the block output for post-LN models):

    S_i = 1 - cos(X, Y)

per token, in fp32, averaged over every real (non-padding) token of the calibration texts. A low
score means the attention barely changes the hidden state: the most redundant layers have the
lowest scores and are dropped first.

ShortGPT's block influence (Men et al. 2024) is the same measure taken over a whole decoder layer,
``1 - cos(layer input, layer output)``; `compute_scores(method="block")` measures it, and the
pruning strategies use it to order attention layers.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..cache import ResultCache, cache_key
from ..model.loading import LoadedModel
from ..progress import Progress

DEFAULT_CALIBRATION_SIZE = 256
METHODS = {"attention": "he2024-attn-cos", "block": "shortgpt-block-influence"}


@dataclass(frozen=True)
class ImportanceScores:
    scores: list[float]
    """One score per layer, in layer order."""
    n_texts: int
    n_tokens: int
    seconds: float
    cached: bool = False

    @property
    def order(self) -> list[int]:
        """Layer indices, most redundant (lowest score) first."""
        return sorted(range(len(self.scores)), key=lambda i: (self.scores[i], i))

    def most_redundant(self, k: int) -> list[int]:
        """The ``k`` most redundant layers, in the order they would be dropped."""
        from ..errors import UserError

        if not 0 <= k <= len(self.scores):
            raise UserError(f"k must be between 0 and {len(self.scores)} (got {k})")
        return self.order[:k]


def _unwrap(out: object) -> torch.Tensor:
    return out[0] if isinstance(out, tuple) else out  # type: ignore[return-value]


def compute_scores(
    lm: LoadedModel, texts: Sequence[str], batch_size: int = 16, max_tokens: int = 128,
    progress: Progress | None = None, method: str = "attention",
) -> ImportanceScores:
    """Measure every layer's score on ``texts`` (no mask active): its attention branch's, or its whole block's."""
    start = time.perf_counter()
    spec, model = lm.spec, lm.model
    layers = spec.layer_list(model)
    n = len(layers)
    sums = torch.zeros(n, dtype=torch.float64)
    state: dict[str, torch.Tensor] = {}
    inputs: dict[int, torch.Tensor] = {}

    def make_pre(i: int):
        def pre(_m, args, kwargs):
            inputs[i] = (args[0] if args else kwargs["hidden_states"]).float()
        return pre

    def make_post(i: int):
        def post(_m, _args, out):
            x = inputs.pop(i)
            branch = _unwrap(out).float()
            y = branch if (spec.attn_block_out or method == "block") else x + branch
            cos = F.cosine_similarity(x, y, dim=-1)  # [B, T]
            sums[i] += ((1.0 - cos) * state["mask"]).sum().double().cpu()
        return post

    hooks = []
    for i, layer in enumerate(layers):
        hooks.append(layer.register_forward_pre_hook(make_pre(i), with_kwargs=True))
        out_mod = layer if method == "block" else spec.block_output_module(layer) or spec.branch_output_module(layer)
        hooks.append(out_mod.register_forward_hook(make_post(i)))
    tok = lm.tokenizer
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    device = next(model.parameters()).device
    total_tokens = 0
    try:
        with torch.inference_mode():
            for s in range(0, len(texts), batch_size):
                batch = [tok(t, add_special_tokens=True)["input_ids"][:max_tokens] for t in texts[s : s + batch_size]]
                width = max(len(b) for b in batch)
                ids = torch.full((len(batch), width), pad, dtype=torch.long, device=device)
                mask = torch.zeros((len(batch), width), dtype=torch.long, device=device)
                for r, b in enumerate(batch):
                    ids[r, : len(b)] = torch.tensor(b, device=device)
                    mask[r, : len(b)] = 1
                state["mask"] = mask.float()
                model.base_model(input_ids=ids, attention_mask=mask, use_cache=False)
                total_tokens += int(mask.sum())
                if progress is not None:
                    progress(min(s + batch_size, len(texts)), len(texts))
    finally:
        for h in hooks:
            h.remove()
    scores = (sums / max(total_tokens, 1)).tolist()
    return ImportanceScores(scores=scores, n_texts=len(texts), n_tokens=total_tokens,
                            seconds=time.perf_counter() - start)


def calibration_texts(dataset, n: int = DEFAULT_CALIBRATION_SIZE, seed: int = 0) -> list[str]:
    """The default calibration set: ``n`` sentences of the dataset's train split."""
    examples, _ = dataset.sample("train", n, seed=seed)
    return [ex.text for ex in examples]


def attention_scores(
    lm: LoadedModel, texts: Sequence[str], *, cache: ResultCache | None = None, batch_size: int = 16,
    progress: Progress | None = None, method: str = "attention",
) -> ImportanceScores:
    """`compute_scores`, through the result cache."""
    key = cache_key("importance", model=lm.id, texts=list(texts), method=METHODS[method])
    def parse(d: dict) -> ImportanceScores:
        scores = [float(x) for x in d["scores"]]
        if len(scores) != lm.num_layers:
            raise ValueError(f"{len(scores)} scores for {lm.num_layers} layers")
        return ImportanceScores(scores, int(d["n_texts"]), int(d["n_tokens"]), float(d["seconds"]), cached=True)

    if cache is not None and (hit := cache.load(key, parse)) is not None:
        return hit
    result = compute_scores(lm, texts, batch_size=batch_size, progress=progress, method=method)
    if cache is not None:
        cache.put(key, {"scores": result.scores, "n_texts": result.n_texts, "n_tokens": result.n_tokens,
                        "seconds": result.seconds})
    return result
