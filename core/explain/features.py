"""The features an explanation scores: the words (or tokens) of an example's input text.

Only the input text is ever a feature, never the instruction, the demonstrations or the answer cue
of the prompt. The token ids are exactly those the scorer uses for the unperturbed example (the
text tokenised on its own, as `PromptBuilder.encode` does, and truncated the same way), so an
explanation explains the very prediction that calibration measured.

A word is a maximal run of non-space characters of the text; each token belongs to the word that
holds its first non-space character (a token made only of whitespace joins the next word).
Removing a feature deletes its tokens, or replaces each of them by one pad or unknown token.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..errors import UserError

GRANULARITIES = ("word", "token")
REMOVALS = ("delete", "pad", "unk")


@dataclass(frozen=True)
class Features:
    ids: tuple[int, ...]
    """The input text's token ids (no prompt prefix or suffix)."""
    tokens: tuple[str, ...]
    """Each token's text, as it appears in the input."""
    groups: tuple[int, ...]
    """The feature each token belongs to."""
    names: tuple[str, ...]
    """Each feature's text: a word, or a token."""
    granularity: str

    @property
    def n(self) -> int:
        return len(self.names)

    def token_mask(self, keep: Sequence[bool] | np.ndarray) -> np.ndarray:
        """Which tokens stay when only the features marked in ``keep`` stay."""
        keep = np.asarray(keep, dtype=bool)
        return keep[np.asarray(self.groups, dtype=int)]

    def ids_keeping(self, keep: Sequence[bool] | np.ndarray, replacement: int | None = None) -> list[int]:
        """The token ids with the features not in ``keep`` removed (or replaced by ``replacement``)."""
        kept = self.token_mask(keep)
        if replacement is None:
            return [t for t, k in zip(self.ids, kept, strict=True) if k]
        return [t if k else replacement for t, k in zip(self.ids, kept, strict=True)]


def text_features(tokenizer, text: str, granularity: str = "word", max_tokens: int | None = None) -> Features:
    """Tokenise ``" " + text`` as the prompt builder does and group the tokens into features."""
    if granularity not in GRANULARITIES:
        raise UserError(f"unknown granularity '{granularity}'; use one of {', '.join(GRANULARITIES)}")
    source = " " + text
    enc = tokenizer(source, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = list(enc["input_ids"]), list(enc["offset_mapping"])
    if max_tokens is not None:
        ids, offsets = ids[:max_tokens], offsets[:max_tokens]
    if not ids or not source[offsets[0][0]:offsets[-1][1]].strip():
        raise UserError("the input text has no words to explain after tokenisation")
    tokens = tuple(source[s:e] for s, e in offsets)
    if granularity == "token":
        names = tuple(t.strip() or repr(t) for t in tokens)
        return Features(tuple(ids), tokens, tuple(range(len(ids))), names, granularity)

    spans = [(m.start(), m.end()) for m in re.finditer(r"\S+", source)]
    groups: list[int | None] = []
    for s, e in offsets:
        first = next((i for i in range(s, e) if not source[i].isspace()), None)
        groups.append(None if first is None else next(w for w, (a, b) in enumerate(spans) if a <= first < b))
    # whitespace-only tokens join the next word (or the last one, at the end)
    for i in range(len(groups) - 1, -1, -1):
        if groups[i] is None:
            groups[i] = groups[i + 1] if i + 1 < len(groups) else None
    last = max(g for g in groups if g is not None)
    groups = [last if g is None else g for g in groups]
    # renumber so that features are the words actually present (truncation may cut the tail)
    used = sorted(set(groups))
    index = {w: i for i, w in enumerate(used)}
    names = tuple(source[spans[w][0]:spans[w][1]] for w in used)
    return Features(tuple(ids), tokens, tuple(index[g] for g in groups), names, granularity)


def replacement_token(tokenizer, removal: str) -> int | None:
    """The id that replaces removed tokens: None to delete them, else the pad or unknown token."""
    if removal not in REMOVALS:
        raise UserError(f"unknown removal '{removal}'; use one of {', '.join(REMOVALS)}")
    if removal == "delete":
        return None
    token_id = tokenizer.pad_token_id if removal == "pad" else tokenizer.unk_token_id
    if token_id is None:
        raise UserError(f"this model's tokenizer has no {removal} token; use removal 'delete'")
    return int(token_id)
