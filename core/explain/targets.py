"""What an explainer explains: a function from an input's token ids to the answer probabilities.

The probabilities are the candidate answers' next-token probabilities renormalised over the answers
the example offers: the same quantity calibration measures. A target fixes the model, the prompt
and the attention mask, so the explanation and its faithfulness are always measured on the same
(full or pruned) model.

Explainers talk to the `Target` protocol only; `LMTarget` is the causal LM behind a prompt,
`ClassifierTarget` an encoder behind its trained head (the class probabilities), and the tests
build a hand-made bag-of-words target whose decisive word is known. `make_target` picks one.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Protocol

import numpy as np
import torch

from ..model.loading import LoadedModel
from ..model.pruning import dropped_attention, expand_cache, new_cache, validate_mask
from ..task.head import AnswerInput, ClassifierInput
from ..task.scoring import AnswerHead, candidate_logits


class Target(Protocol):
    n_answers: int
    special_ids: dict[str, int | None]
    """The 'pad' and 'unk' token ids (None where the tokenizer has none)."""

    def probs(self, inputs: Sequence[Sequence[int]], n_options: int | Sequence[int] = 0) -> np.ndarray:
        """[len(inputs), n_answers] answer probabilities for text-token id lists (no prompt parts).

        ``n_options`` (one for all rows, or one per row) limits the answers to the first n; 0: all.
        """

    def embed(self, ids: Sequence[int]) -> torch.Tensor:
        """[1, len(ids), d] input embeddings of text tokens."""

    def probs_from_embeddings(self, embeds: torch.Tensor, n_options: int = 0) -> torch.Tensor:
        """[B, n_answers] answer probabilities for [B, T, d] text embeddings; differentiable."""


def renormalise(logits: np.ndarray, n_options: int | Sequence[int] = 0) -> np.ndarray:
    """Softmax over the answers each row offers (the first ``n_options``; 0 means all)."""
    logits = np.array(logits, dtype=np.float64)
    counts = np.broadcast_to(np.asarray(n_options, dtype=int), logits.shape[:1])
    for row, n in enumerate(counts):
        if n:
            logits[row, n:] = -np.inf
    z = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def renormalise_torch(logits: torch.Tensor, n_options: int = 0) -> torch.Tensor:
    """`renormalise` for one answer count, differentiable."""
    if n_options:
        logits = logits.masked_fill(torch.arange(logits.shape[-1], device=logits.device) >= n_options, -torch.inf)
    return torch.softmax(logits.float(), dim=-1)


class LMTarget:
    """A causal LM behind one prompt, with the attention of ``drop`` skipped on every call.

    Its inputs start from stored hidden states where the mask allows (`core.model.states`); ``record``
    names the layers whose states it keeps for the masks explained next (none by default: an
    explanation scores hundreds of perturbed inputs, too many to keep at every layer).
    """

    def __init__(self, lm: LoadedModel, builder: AnswerInput, drop: Sequence[int] = (),
                 batch_size: int = 32, record: Iterable[int] = ()) -> None:
        self.lm, self.builder = lm, builder
        self.drop = validate_mask(drop, lm.num_layers)
        self.record = frozenset(record)
        self.n_answers = len(builder.candidate_ids)
        self.batch_size = batch_size
        self.special_ids = {"pad": lm.tokenizer.pad_token_id, "unk": lm.tokenizer.unk_token_id}
        self._prefix_cache = None

    def probs(self, inputs: Sequence[Sequence[int]], n_options: int | Sequence[int] = 0) -> np.ndarray:
        # identical perturbations are common (short inputs, Kernel SHAP's sampling): score each once
        unique = list(dict.fromkeys(tuple(x) for x in inputs))
        suffix = self.builder.suffix_ids
        with dropped_attention(self.lm.model, self.drop):
            logits = candidate_logits(self.lm, self.builder, [list(u) + suffix for u in unique], self.batch_size,
                                      record=self.record)
        row = {u: i for i, u in enumerate(unique)}
        return renormalise(logits[[row[tuple(x)] for x in inputs]], n_options)

    def embed(self, ids: Sequence[int]) -> torch.Tensor:
        emb = self.lm.model.get_input_embeddings()
        device = emb.weight.device
        with torch.no_grad():
            return emb(torch.tensor([list(ids)], device=device)).detach()

    def _prefix(self):
        """The prompt prefix's KV cache under this mask, made once (without autograd, outside inference mode)."""
        if self._prefix_cache is None:
            device = self.lm.model.get_input_embeddings().weight.device
            with torch.no_grad(), dropped_attention(self.lm.model, self.drop):
                cache = new_cache(self.lm.model)
                self.lm.model.base_model(input_ids=torch.tensor([self.builder.prefix_ids], device=device),
                                         past_key_values=cache, use_cache=True)
            self._prefix_cache = cache
        return self._prefix_cache

    def probs_from_embeddings(self, embeds: torch.Tensor, n_options: int = 0) -> torch.Tensor:
        model, base = self.lm.model, self.lm.model.base_model
        batch = embeds.shape[0]
        device = embeds.device
        suffix = self.embed(self.builder.suffix_ids).to(embeds.dtype).expand(batch, -1, -1)
        rows = torch.cat([embeds, suffix], dim=1)
        n_prefix = len(self.builder.prefix_ids)
        use_cache = self.lm.spec.prefix_cache and len(self.drop) < self.lm.num_layers and n_prefix > 0
        with dropped_attention(model, self.drop):
            if use_cache:
                positions = torch.arange(n_prefix, n_prefix + rows.shape[1], device=device).expand(batch, -1)
                mask = torch.ones((batch, n_prefix + rows.shape[1]), dtype=torch.long, device=device)
                hidden = base(inputs_embeds=rows, attention_mask=mask, position_ids=positions,
                              past_key_values=expand_cache(model, self._prefix(), batch),
                              use_cache=True).last_hidden_state
            else:
                prefix = self.embed(self.builder.prefix_ids).to(embeds.dtype).expand(batch, -1, -1)
                full = torch.cat([prefix, rows], dim=1)
                positions = torch.arange(full.shape[1], device=device).expand(batch, -1)
                hidden = base(inputs_embeds=full, position_ids=positions, use_cache=False).last_hidden_state
        logits = AnswerHead(self.lm, self.builder.candidate_ids)(hidden[:, -1])
        return renormalise_torch(logits, n_options)


class ClassifierTarget(LMTarget):
    """An encoder behind its trained head: the class probabilities of ``[CLS] text [SEP]``, mean-pooled.

    `probs` is `LMTarget.probs` (the scorer dispatches on the builder); only the differentiable path
    differs: an encoder has no prefix cache and reads its answer from the pooled states.
    """

    builder: ClassifierInput

    def probs_from_embeddings(self, embeds: torch.Tensor, n_options: int = 0) -> torch.Tensor:
        batch = embeds.shape[0]
        cls = self.embed(self.builder.prefix_ids).to(embeds.dtype).expand(batch, -1, -1)
        sep = self.embed(self.builder.suffix_ids).to(embeds.dtype).expand(batch, -1, -1)
        rows = torch.cat([cls, embeds, sep], dim=1)
        mask = torch.ones(rows.shape[:2], dtype=torch.long, device=rows.device)
        with dropped_attention(self.lm.model, self.drop):
            hidden = self.lm.model(inputs_embeds=rows, attention_mask=mask).last_hidden_state
        return renormalise_torch(self.builder.head.logits_torch(hidden.float().mean(dim=1)), n_options)


def make_target(lm: LoadedModel, builder: AnswerInput, drop: Sequence[int] = (), record: Iterable[int] = ()
                ) -> LMTarget:
    """The target that explains ``lm``'s answers through ``builder``, with the attention of ``drop`` skipped
    (``record``: see `LMTarget`)."""
    kind = ClassifierTarget if isinstance(builder, ClassifierInput) else LMTarget
    return kind(lm, builder, drop, record=record)
