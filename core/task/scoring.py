"""Batched scoring: the candidate answers' logits at the answer position, for many examples at once.

* The prompt prefix runs once per (model, mask) and its KV cache is shared by every batch.
* Inputs are sorted by length and right-padded within a batch, so little compute goes to padding.
  When the caller wants results as they come (``partial``), the length-sorted batches run in a
  spread order (a quarter, three quarters, the middle, the longest, ...), so that the examples in at
  any moment span every length, not the longest first; ``partial`` is called after 1, 2, 4, 8, ...
  batches and at the end.
* Only the last real position of each row goes through the output layer, and only the rows of the
  candidate tokens: softmax over those logits equals the full softmax renormalised over them.
* Scoring a data set also keeps each example's log normaliser over the whole vocabulary, so the
  probability mass the model puts on the candidate answers before renormalising (the label mass) is
  known: a pruned model that drifts off the answer set shows it there, not in its confidence.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ..model.batching import batch_size_for, run_batched
from ..model.loading import LoadedModel
from ..model.pruning import MaskAwareCache, active_mask, dropped_attention, expand_cache, new_cache
from ..model.states import Resumer
from ..progress import Progress
from .head import AnswerInput, ClassifierInput, classifier_logits
from .prompts import PromptBuilder, candidate_mask


@dataclass
class Scores:
    logits: np.ndarray
    """[n, n_answers] candidate logits; -inf where an example does not offer that answer."""
    truncated: int
    seconds: float
    label_mass: np.ndarray | None = None
    """[n] the full-vocabulary probability of the offered answers' tokens, before renormalising over
    them (None for a classifier head, which has no vocabulary)."""
    cached: bool = False
    """Whether these came from the result cache (then ``seconds`` is 0)."""


class AnswerHead:
    """The output layer restricted to the candidate answers' rows (with bias and soft-capping if any)."""

    def __init__(self, lm: LoadedModel, candidate_ids: Sequence[int]) -> None:
        out = lm.model.get_output_embeddings()
        idx = torch.tensor(list(candidate_ids), device=out.weight.device)
        self.weight = out.weight.index_select(0, idx)
        self.bias = out.bias.index_select(0, idx) if getattr(out, "bias", None) is not None else None
        self.softcap = getattr(lm.model.config, "final_logit_softcapping", None)

    def __call__(self, hidden: torch.Tensor) -> torch.Tensor:
        return _output_logits(hidden, self.weight, self.bias, self.softcap)


def _output_logits(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                   softcap: float | None) -> torch.Tensor:
    """The output layer's logits for the rows of ``weight``: bias added and soft-capping applied, if any."""
    logits = hidden.to(weight.dtype) @ weight.T
    if bias is not None:
        logits = logits + bias
    return torch.tanh(logits / softcap) * softcap if softcap else logits


def log_normaliser(lm: LoadedModel, hidden: torch.Tensor) -> torch.Tensor:
    """logsumexp of the full output layer's logits (bias and soft-capping included), one per row."""
    out = lm.model.get_output_embeddings()
    logits = _output_logits(hidden, out.weight, getattr(out, "bias", None),
                            getattr(lm.model.config, "final_logit_softcapping", None))
    return torch.logsumexp(logits.float(), dim=-1)


def spread(n: int) -> list[int]:
    """0..n-1 so that every prefix covers the range evenly: bit-reversed positions, started at the first
    quarter (n/4, 3n/4, n/2, 0, ...) so that the first items are typical ones, scaled onto 0..n-1."""
    bits = max(n - 1, 1).bit_length()
    size = 2**bits
    reversed_ = (int(format(k, f"0{bits}b")[::-1], 2) for k in range(size))
    shifted = ((r + size // 4) % size for r in reversed_)
    # position k maps to k * n // size; keeping only the first k of each run hits every index once
    return [k * n // size for k in shifted if (k * n) % size < n]


def candidate_logits(
    lm: LoadedModel,
    builder: AnswerInput,
    inputs: Sequence[list[int]],
    batch_size: int = 16,
    use_prefix_cache: bool = True,
    progress: Progress | None = None,
    record: Iterable[int] | None = None,
) -> np.ndarray:
    """Candidate logits for token-id inputs (text + suffix ids, without the prefix), under the active mask.

    For an encoder classifier these are its head's class logits. ``record``: the layers whose entering hidden
    states are kept for later masks to start from (None: every layer; see `core.model.states`).
    """
    return _candidate_scores(lm, builder, inputs, batch_size, use_prefix_cache, progress, record=record)[0]


def _prefix_cache(lm: LoadedModel, prefix_ids: Sequence[int], limit: int) -> MaskAwareCache | None:
    """The prompt prefix's KV cache under the active mask, its pass resumed from a stored state at or below
    ``limit`` (the lowest layer any input starts at); None when no attention layer runs from its start on."""
    model, device = lm.model, next(lm.model.parameters()).device
    resumer = Resumer(lm, (), [prefix_ids], limit=limit)
    cache = new_cache(model, resumer.lowest())
    if not cache.kept:
        return None
    with resumer.running([0], len(prefix_ids)):
        model.base_model(input_ids=torch.tensor([list(prefix_ids)], device=device), past_key_values=cache,
                         use_cache=True)
    return cache


def _candidate_scores(
    lm: LoadedModel,
    builder: AnswerInput,
    inputs: Sequence[list[int]],
    batch_size: int = 16,
    use_prefix_cache: bool = True,
    progress: Progress | None = None,
    with_normaliser: bool = False,
    partial: Callable[[np.ndarray, np.ndarray], None] | None = None,
    record: Iterable[int] | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """`candidate_logits`, and with ``with_normaliser`` each input's full-vocabulary `log_normaliser`.

    ``partial`` is called after each finished chunk with the indices scored so far and their logits.
    Each input starts from the deepest stored hidden state that fits the active mask, and the states of
    the layers in ``record`` (None: all) are stored as it runs (`core.model.states`).
    """
    if isinstance(builder, ClassifierInput):
        return classifier_logits(lm, builder, inputs, batch_size, progress, record), None
    model, base = lm.model, lm.model.base_model
    device = next(model.parameters()).device
    head = AnswerHead(lm, builder.candidate_ids)
    prefix_ids = list(builder.prefix_ids)
    n_prefix = len(prefix_ids)
    pad = lm.tokenizer.pad_token_id if lm.tokenizer.pad_token_id is not None else 0
    longest = n_prefix + max((len(x) for x in inputs), default=0)
    size = batch_size_for(lm, longest, batch_size)
    order = sorted(range(len(inputs)), key=lambda i: -len(inputs[i]))
    if partial is not None:
        batches = [order[s : s + size] for s in range(0, len(order), size)]
        order = [i for b in spread(len(batches)) for i in batches[b]]
    report_at = {min(size * 2**j, len(inputs)) for j in range(64) if size * 2**(j - 1) < len(inputs)}
    result = np.zeros((len(inputs), len(builder.candidate_ids)), dtype=np.float64)
    normaliser = np.zeros(len(inputs), dtype=np.float64) if with_normaliser else None
    all_dropped = len(active_mask(model)) == lm.num_layers
    cache_ok = use_prefix_cache and lm.spec.prefix_cache and not all_dropped and n_prefix > 0
    # what each forward pass runs per input: the input behind the cached prefix, or prefix and input together
    rows = [list(x) for x in inputs] if cache_ok else [prefix_ids + list(x) for x in inputs]
    with torch.inference_mode():
        resumer = Resumer(lm, prefix_ids if cache_ok else (), rows, record)
        prefix_cache = _prefix_cache(lm, prefix_ids, resumer.lowest()) if cache_ok else None
        done = 0

        def run(group: list[int]) -> None:
            lengths = [len(rows[i]) for i in group]
            width = max(lengths)
            ids = torch.full((len(group), width), pad, dtype=torch.long, device=device)
            offset = n_prefix if cache_ok else 0  # the position of each row's first token
            mask = torch.zeros((len(group), offset + width), dtype=torch.long, device=device)
            mask[:, :offset] = 1
            for r, i in enumerate(group):
                ids[r, : lengths[r]] = torch.tensor(rows[i], device=device)
                mask[r, offset : offset + lengths[r]] = 1
            positions = torch.arange(offset, offset + width, device=device).expand(len(group), -1)
            with resumer.running(group, width):
                if prefix_cache is not None:
                    past = expand_cache(model, prefix_cache, len(group))
                    hidden = base(input_ids=ids, attention_mask=mask, position_ids=positions, past_key_values=past,
                                  use_cache=True).last_hidden_state
                else:  # no cache, or no attention layer runs where the rows start: nothing to read from one
                    hidden = base(input_ids=ids, attention_mask=mask[:, offset:], position_ids=positions,
                                  use_cache=False).last_hidden_state
            h = hidden[torch.arange(len(group), device=device), torch.tensor(lengths, device=device) - 1]
            result[group] = head(h).float().cpu().numpy()
            if normaliser is not None:
                normaliser[group] = log_normaliser(lm, h).cpu().numpy()

        def step(batch: list[int]) -> None:
            nonlocal done
            for _, group in resumer.groups(batch):
                run(group)
            before = done
            done += len(batch)
            if progress is not None:
                progress(done, len(inputs))
            if partial is not None and any(before < r <= done for r in report_at):
                scored = np.array(sorted(order[:done]), dtype=int)
                partial(scored, result[scored].copy())

        run_batched(order, size, step)
    return result, normaliser


def score_examples(
    lm: LoadedModel,
    builder: AnswerInput,
    examples: Sequence,
    drop: Sequence[int] = (),
    batch_size: int = 16,
    use_prefix_cache: bool = True,
    progress: Progress | None = None,
    partial: Callable[[np.ndarray, np.ndarray], None] | None = None,
) -> Scores:
    """Score ``examples`` with the attention of ``drop`` skipped; -inf marks answers an example lacks.

    ``partial`` gets the indices of the examples scored so far and their logits, after each chunk
    (see the module's note); an encoder's head reports only at the end.
    """
    start = time.perf_counter()
    encoded = [builder.encode(ex.text) for ex in examples]
    offered = np.array(candidate_mask([ex.n_options for ex in examples], len(builder.candidate_ids)), dtype=bool)

    def masked(idx: np.ndarray, logits: np.ndarray) -> None:
        partial(idx, np.where(offered[idx], logits, -np.inf))

    with dropped_attention(lm.model, drop):
        logits, normaliser = _candidate_scores(lm, builder, [e.ids for e in encoded], batch_size, use_prefix_cache,
                                               progress, with_normaliser=True,
                                               partial=masked if partial is not None else None)
    if partial is not None and isinstance(builder, ClassifierInput):
        masked(np.arange(len(examples)), logits)
    logits = np.where(offered, logits, -np.inf)
    mass = None
    if normaliser is not None:
        mass = np.exp(logits - normaliser[:, None]).sum(axis=1) if len(examples) else np.zeros(0)
    return Scores(logits=logits, truncated=sum(e.truncated for e in encoded),
                  seconds=time.perf_counter() - start, label_mass=mass)


def full_logits_loop(lm: LoadedModel, builder: PromptBuilder, examples: Sequence) -> np.ndarray:
    """The plain baseline: one example per forward, whole prompt, full-vocabulary logits.

    Used by the benchmark and by tests as an independent reference for `candidate_logits`.
    """
    out = []
    device = next(lm.model.parameters()).device
    with torch.inference_mode():
        for ex in examples:
            ids = torch.tensor([builder.prefix_ids + builder.encode(ex.text).ids], device=device)
            logits = lm.model(input_ids=ids).logits[0, -1]
            out.append(logits[builder.candidate_ids].float().cpu().numpy())
    return np.array(out, dtype=np.float64)
