"""A hand-built bag-of-words target whose decisive word is known, for testing explainers and metrics.

Each word of a fixed vocabulary has a weight vector over the answers; the answer logits are a bias
plus the sum of the input words' vectors. With two answers, p(answer 1) = sigmoid(z1 - z0), so
every probability in a test can be written out by hand.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

PAD, UNK = "[PAD]", "[UNK]"


def word_tokenizer(words: Sequence[str]) -> PreTrainedTokenizerFast:
    """One token per whitespace-separated word (no hub, no files)."""
    vocab = {PAD: 0, UNK: 1, **{w: i + 2 for i, w in enumerate(words)}}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token=PAD, unk_token=UNK)


class BagOfWordsTarget:
    def __init__(self, weights: dict[str, Sequence[float]], bias: Sequence[float], unk: Sequence[float] | None = None):
        self.words = list(weights)
        self.tokenizer = word_tokenizer(self.words)
        self.n_answers = len(bias)
        table = np.zeros((len(self.words) + 2, self.n_answers))
        if unk is not None:
            table[1] = unk
        for w, vec in weights.items():
            table[self.tokenizer.convert_tokens_to_ids(w)] = vec
        self.table = torch.tensor(table, dtype=torch.float64)
        self.bias = torch.tensor(list(bias), dtype=torch.float64)
        self.special_ids = {"pad": 0, "unk": 1}
        self.calls = 0

    def logits(self, ids: Sequence[int]) -> np.ndarray:
        return (self.bias + self.table[list(ids)].sum(0)).numpy() if ids else self.bias.numpy()

    def probs(self, inputs, n_options=0) -> np.ndarray:
        self.calls += 1
        z = np.array([self.logits(x) for x in inputs])
        e = np.exp(z - z.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)

    def embed(self, ids) -> torch.Tensor:
        return self.table[list(ids)].float()[None]

    def probs_from_embeddings(self, embeds: torch.Tensor, n_options: int = 0) -> torch.Tensor:
        return torch.softmax(self.bias.float() + embeds.sum(dim=1), dim=-1)
