"""Contextual calibration's inputs: the model's mean answer distribution on content-free texts.

Apart from the methods because this is the one part of recalibration that runs the model (through the
same prompt, or encoder head, and mask as the examples); every method itself works on logits alone.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .. import calibration as cal
from ..data import Example
from ..scoring import score_examples
from ..setup import Setup

CONTENT_FREE = ("N/A", "")
"""Zhao et al.'s content-free inputs; the tokenizer's mask token is added when it has one."""


def content_free_texts(tokenizer) -> tuple[str, ...]:
    """Zhao et al.'s content-free inputs for this tokenizer: 'N/A', '' and its mask token when it has one."""
    mask = getattr(tokenizer, "mask_token", None)
    return (*CONTENT_FREE, mask) if mask else CONTENT_FREE


def content_free_probs(setup: Setup, drop: Sequence[int] = ()) -> np.ndarray:
    """[K] the model's mean answer distribution on content-free inputs, under mask ``drop``.

    Each content-free text is put through the same prompt (or encoder head) as the examples, its
    probabilities renormalised over every answer, and the distributions averaged. Multiple-choice
    content-free inputs offer every option letter.
    """
    texts = content_free_texts(setup.lm.tokenizer)
    examples = [Example(f"content-free-{i}", text, 0) for i, text in enumerate(texts)]
    scores = score_examples(setup.lm, setup.builder(drop), examples, drop)
    return cal.softmax(scores.logits).mean(axis=0)
