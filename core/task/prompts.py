"""Prompt templates, prompt styles and the one tokenisation every path uses.

A prompt is ``prefix + text + suffix``. The prefix holds the instruction and the demonstrations (and
the chat template's header, in chat style); it is the same for every example, so the scorer runs
it once and reuses its KV cache. The answer is read from the next-token probabilities after the
suffix, over the first token of each label word (or option letter).

Tokenisation trap: a BPE tokenizer merges across the prefix/text boundary differently when the
whole prompt is tokenised at once. So the prefix, the text and the suffix are tokenised separately
and their ids concatenated, and these very ids are used on every path (cached prefix, no cache,
perturbed inputs), which keeps cached and uncached answers identical.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from ..errors import UserError

STYLES = ("zero-shot", "few-shot", "chat")
_SENTINEL = "\u2063TEXT\u2063"
DEMO_MAX_WORDS = 20


@dataclass(frozen=True)
class Template:
    instruction: str
    input_prefix: str
    answer_prefix: str
    label_words: tuple[str, ...] | None = None
    """Words naming the labels; None for multiple choice, whose answers are option letters."""


@dataclass(frozen=True)
class PromptConfig:
    style: str = "few-shot"
    shots: int | None = None
    """Demonstrations for few-shot / chat; default one per label (two for binary tasks)."""
    seed: int = 0
    max_input_tokens: int = 256

    def validate(self) -> None:
        if self.style not in STYLES:
            raise UserError(f"unknown prompt style '{self.style}'; use one of {', '.join(STYLES)}")
        if self.shots is not None and self.shots < 0:
            raise UserError(f"shots must be 0 or more (got {self.shots})")
        if self.max_input_tokens < 1:
            raise UserError(f"max_input_tokens must be at least 1 (got {self.max_input_tokens})")


@dataclass
class EncodedInput:
    ids: list[int]
    """Text ids followed by the suffix ids (the prefix is not included)."""
    text_len: int
    truncated: bool


class PromptBuilder:
    """Turns examples into token ids for one model, one dataset and one prompt configuration."""

    def __init__(self, tokenizer, dataset, config: PromptConfig, has_chat_template: bool, max_positions: int):
        config.validate()
        if config.style == "chat" and not has_chat_template:
            raise UserError("this model has no chat template; use the zero-shot or few-shot prompt style")
        self.tokenizer = tokenizer
        self.dataset = dataset
        self.config = config
        self.template: Template = dataset.template
        self.answer_words = self.template.label_words or tuple(dataset.label_names)
        self.demos = self._demos()
        prefix_text, suffix_text = self._render()
        self.prefix_text, self.suffix_text = prefix_text, suffix_text
        chat = config.style == "chat"
        self.prefix_ids: list[int] = tokenizer(prefix_text, add_special_tokens=not chat)["input_ids"]
        self.suffix_ids: list[int] = tokenizer(suffix_text, add_special_tokens=False)["input_ids"]
        self.candidate_ids = self._candidates(lead="" if chat else " ")
        room = max_positions - len(self.prefix_ids) - len(self.suffix_ids)
        if room < 1:
            raise UserError(
                f"the prompt prefix ({len(self.prefix_ids)} tokens) leaves no room for the input in this "
                f"model's context of {max_positions} tokens; use fewer shots"
            )
        self.max_text_tokens = min(config.max_input_tokens, room)

    def _demos(self) -> list:
        if self.config.style == "zero-shot":
            return []
        k = self.config.shots if self.config.shots is not None else len(self.dataset.label_names)
        if k == 0:
            return []
        train = list(self.dataset.splits.get("train", []))
        # short demonstrations keep the shared prefix cheap and read as clean examples
        pool = [ex for ex in train if len(ex.text.split()) <= DEMO_MAX_WORDS] or train
        if not pool:
            raise UserError(f"dataset '{self.dataset.name}' has no train split to draw demonstrations from")
        rng = random.Random(self.config.seed)
        rng.shuffle(pool)
        # Round-robin over labels, from the last label to the first. Small models copy the label of
        # the last demonstration (recency bias); measured on the default model and data, n=200, four
        # demo seeds: [negative, positive] order predicts "positive" for 89-93% of reviews
        # (accuracy 0.51-0.55), [positive, negative] order reaches 0.72-0.87.
        return round_robin_by_label(pool, k, last_label_first=True)

    def _render(self) -> tuple[str, str]:
        t = self.template
        head = t.input_prefix.rstrip()
        demos = "".join(
            f"{head} {ex.text}\n{t.answer_prefix} {self.answer_words[ex.label]}\n\n" for ex in self.demos
        )
        body = f"{t.instruction}\n\n{demos}{head}{_SENTINEL}\n{t.answer_prefix}"
        if self.config.style != "chat":
            prefix, suffix = body.split(_SENTINEL)
            return prefix, suffix
        rendered = self.tokenizer.apply_chat_template(
            [{"role": "user", "content": body}], tokenize=False, add_generation_prompt=True
        )
        prefix, suffix = rendered.split(_SENTINEL)
        return prefix, suffix

    def _candidates(self, lead: str) -> list[int]:
        ids = []
        for word in self.answer_words:
            toks = self.tokenizer(lead + word, add_special_tokens=False)["input_ids"]
            if not toks:
                raise UserError(f"label word '{word}' is empty after tokenisation")
            ids.append(toks[0])
        if len(set(ids)) != len(ids):
            clash = [w for w, i in zip(self.answer_words, ids, strict=True) if ids.count(i) > 1]
            raise UserError(
                "label words " + ", ".join(repr(w) for w in clash) + " start with the same token, so the "
                "model's answer cannot tell them apart; rename the labels"
            )
        return ids

    def encode(self, text: str) -> EncodedInput:
        ids = self.tokenizer(" " + text, add_special_tokens=False)["input_ids"]
        truncated = len(ids) > self.max_text_tokens
        ids = ids[: self.max_text_tokens]
        return EncodedInput(ids=ids + self.suffix_ids, text_len=len(ids), truncated=truncated)

    def describe(self) -> dict[str, object]:
        """What defines this prompt, for cache keys and for the run's configuration export."""
        return {
            "style": self.config.style,
            "shots": len(self.demos),
            "demo_ids": [ex.id for ex in self.demos],
            "seed": self.config.seed,
            "max_input_tokens": self.config.max_input_tokens,
            "prefix": self.prefix_text,
            "suffix": self.suffix_text,
            "answers": list(self.answer_words),
        }


def round_robin_by_label(examples: Sequence, k: int, last_label_first: bool = False) -> list:
    """Up to ``k`` of ``examples``, taking one per label in turn (in the order they come per label)."""
    by_label: dict[int, list] = {}
    for ex in examples:
        by_label.setdefault(ex.label, []).append(ex)
    order = sorted(by_label, reverse=last_label_first)
    chosen, i = [], 0
    while len(chosen) < min(k, len(examples)):
        for label in order:
            if i < len(by_label[label]) and len(chosen) < k:
                chosen.append(by_label[label][i])
        i += 1
    return chosen


def candidate_mask(n_options: Sequence[int], n_labels: int) -> list[list[bool]]:
    """Which answers each example offers (multiple-choice rows may offer fewer than all letters)."""
    return [[(k < n) if n else True for k in range(n_labels)] for n in n_options]
