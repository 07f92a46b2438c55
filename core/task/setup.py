"""`Setup`: what every computation on one model and data set shares, built once and passed first.

A setup is the model, the data, how the model answers (the prompt for a causal LM; for an encoder,
whether its head is re-fitted on each pruned encoder) and the result cache. Core functions take
it as their first argument and the attention mask as their second, so the mask is named once and
the cache is never a positional afterthought. The app's context and the CLI build it the same way.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from ..cache import ResultCache
from ..model.loading import LoadedModel
from ..progress import Progress
from .data import Dataset
from .head import AnswerInput, builder_for
from .prompts import PromptConfig


@dataclass(frozen=True)
class Setup:
    lm: LoadedModel
    ds: Dataset
    prompt: PromptConfig = field(default_factory=PromptConfig)
    refit_head: bool = False
    """Encoder classifiers: the pruned model answers through a head fitted on the pruned encoder."""
    cache: ResultCache | None = None
    """None: compute everything afresh and store nothing."""

    def builder(self, drop: Sequence[int] = (), progress: Progress | None = None) -> AnswerInput:
        """What turns texts into answers under mask ``drop``: the prompt, or the encoder's head."""
        return builder_for(self.lm, self.ds, self.prompt, drop, self.refit_head, cache=self.cache, progress=progress)

    @property
    def answers_by(self) -> str:
        """How the model answers, in words, for captions and reports."""
        if self.lm.task != "classifier":
            return f"{self.prompt.style} prompt"
        return "a logistic-regression head on the encoder" + (
            " (re-fitted on each pruned encoder)" if self.refit_head else " (fitted on the full encoder, frozen)")
