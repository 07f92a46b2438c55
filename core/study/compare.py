"""Two attention masks on the same examples: the one home for "full model against pruned model".

Every front end that sets two masks side by side (the Calibration, Explanations and Learn views,
``python -m core explain``) calls this module and only arranges what it returns:

* `compare_results`: both masks evaluated on the same sample, with a metrics table (one row per
  metric of `core.metrics`) and a per-example table (predictions, confidence, flips);
* `compare_explanations`: one example explained under both masks with the same explainer, each
  explanation's ERASER faithfulness on its own model, the agreement between the two and, on
  request, the seeded random explainer's faithfulness on the base model as a floor.

The base mask is the full model by default; any two masks can be compared.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import pandas as pd

from ..errors import UserError
from ..explain.agreement import Agreement, agreement
from ..explain.dataset import RANDOM, DatasetExplainer, ExplainConfig, sampling
from ..explain.faithfulness import Faithfulness
from ..explain.methods import Attribution
from ..metrics import CALIBRATION, METRICS
from ..model.pruning import validate_mask
from ..progress import StageProgress
from ..task.calibration import CalibrationReport
from ..task.data import Example
from ..task.evaluation import EvalConfig, EvalResult, evaluate
from ..task.setup import Setup

NAMES = ("full model", "pruned")


def mask_name(drop: Sequence[int]) -> str:
    """How a mask is named in tables and legends."""
    if not drop:
        return "full model"
    return f"{len(drop)} attention layer{'s' if len(drop) != 1 else ''} dropped"


def metrics_table(base: CalibrationReport, other: CalibrationReport | None = None,
                  names: tuple[str, str] = NAMES) -> pd.DataFrame:
    """One row per calibration metric (titled from `core.metrics`): each side and the difference (other - base)."""
    table = pd.DataFrame({names[0]: base.as_dict()}).loc[list(CALIBRATION)]
    if other is not None:
        table[names[1]] = pd.Series(other.as_dict())
        table["difference"] = table[names[1]] - table[names[0]]
    table.index = [METRICS[m].title for m in table.index]
    return table


@dataclass
class ResultComparison:
    """Two evaluations of the same examples: ``base`` (the full model, by default) and ``other``."""

    base: EvalResult
    other: EvalResult
    names: tuple[str, str] = NAMES

    @property
    def same_mask(self) -> bool:
        return self.base.dropped_attention_layers == self.other.dropped_attention_layers

    def metrics_table(self, temperature_scaled: bool = False) -> pd.DataFrame:
        """`metrics_table` of the two sides; with ``temperature_scaled``, also each side after its temperature."""
        table = metrics_table(self.base.metrics, None if self.same_mask else self.other.metrics, self.names)
        if temperature_scaled:
            for name, r in zip(self.names, (self.base, self.other), strict=True):
                if r.metrics_temperature_scaled is not None and (name == self.names[0] or not self.same_mask):
                    table[f"{name} after T"] = metrics_table(r.metrics_temperature_scaled).iloc[:, 0]
        return table

    def per_example(self) -> pd.DataFrame:
        """One row per example: label, each side's prediction and confidence, flips and the confidence change."""
        b, o = self.base.predictions(), self.other.predictions()
        first, second = self.names
        table = pd.DataFrame({
            "id": b["id"], "text": b["text"], "label": b["label"],
            f"{first} prediction": b["prediction"], f"{first} confidence": b["confidence"],
            f"{second} prediction": o["prediction"], f"{second} confidence": o["confidence"],
        })
        table["flipped"] = b["prediction"] != o["prediction"]
        table["confidence change"] = o["confidence"] - b["confidence"]
        table[f"{second} correct"] = o["correct"]
        return table


def compare_results(setup: Setup, drop: Sequence[int], config: EvalConfig | None = None, base: Sequence[int] = (),
                    progress: StageProgress | None = None, names: tuple[str, str] = NAMES) -> ResultComparison:
    """Evaluate ``config``'s sample under ``base`` and under ``drop`` (once, when they are the same mask)."""
    config = config or EvalConfig()
    drop = validate_mask(drop, setup.lm.num_layers)
    base = validate_mask(base, setup.lm.num_layers)

    def stage(name: str):
        return (lambda done, total: progress(name, done, total)) if progress else None

    first = evaluate(setup, replace(config, drop=base), stage(names[0]))
    second = first if drop == base else evaluate(setup, replace(config, drop=drop), stage(names[1]))
    return ResultComparison(first, second, names)


@dataclass
class ExplanationComparison:
    """One example explained under two masks with the same explainer.

    With several seeds (sampling explainers only: LIME, Kernel SHAP), each mask is explained once per
    seed: each word's score then has a spread, and the agreement between the masks can be read
    against the agreement between two seeds on the base model (the noise ceiling).
    """

    example: Example
    answers: tuple[str, ...]
    """The answer words (or the head's classes), indexed by an attribution's ``predicted``."""
    base: Attribution
    base_faithfulness: Faithfulness
    base_cached: bool
    other: Attribution | None = None
    """None when both masks are the same."""
    other_faithfulness: Faithfulness | None = None
    other_cached: bool = False
    random: Attribution | None = None
    """The seeded random explainer on the base model (its first draw), when asked for."""
    random_faithfulness: Faithfulness | None = None
    """The random explainer's curves averaged over `RANDOM_DRAWS` draws: the floor faithfulness is read against."""
    base_runs: list[Attribution] = field(default_factory=list)
    """The base mask's explanation under each seed (the first is ``base``); one run without seeds."""
    other_runs: list[Attribution] = field(default_factory=list)

    @property
    def second(self) -> Attribution:
        """The second mask's explanation: ``other``, or the base's own when both masks are the same."""
        return self.other if self.other is not None else self.base

    @property
    def second_faithfulness(self) -> Faithfulness:
        return self.other_faithfulness if self.other_faithfulness is not None else self.base_faithfulness

    @property
    def agreement(self) -> Agreement | None:
        """How much the two explanations agree (None when there is only one)."""
        return agreement(self.base.scores, self.other.scores) if self.other is not None else None

    @property
    def seeds(self) -> int:
        return len(self.base_runs)

    @property
    def seed_agreements(self) -> list[Agreement]:
        """The base mask's explanations under two different seeds, every pair: the noise ceiling."""
        runs = self.base_runs
        return [agreement(a.scores, b.scores) for i, a in enumerate(runs) for b in runs[i + 1:]]

    @property
    def cross_agreements(self) -> list[Agreement]:
        """Every base-seed explanation against every other-seed explanation (empty when the masks coincide)."""
        return [agreement(a.scores, b.scores) for a in self.base_runs for b in self.other_runs]

    def spread(self, which: str = "base") -> np.ndarray | None:
        """Each feature's standard deviation over seeds (None with fewer than two seeds)."""
        runs = self.base_runs if which == "base" else self.other_runs
        return np.std([r.scores for r in runs], axis=0, ddof=1) if len(runs) > 1 else None

    def noise_verdict(self) -> str | None:
        """Whether the masks' explanations differ by more than re-running the explainer does, in words.

        The rule: beyond seed noise when every cross-mask Spearman correlation is below every
        seed-to-seed one on the base model (``None`` without two seeds and two masks).
        """
        ceiling = [a.spearman for a in self.seed_agreements if a.spearman is not None]
        cross = [a.spearman for a in self.cross_agreements if a.spearman is not None]
        if not ceiling or not cross:
            return None
        span = f"seed-to-seed Spearman {min(ceiling):.2f} to {max(ceiling):.2f}, across masks {min(cross):.2f} " \
               f"to {max(cross):.2f} ({self.seeds} seeds)"
        if max(cross) < min(ceiling):
            return f"the explanations differ by more than re-running the explainer does: {span}"
        return f"the difference is within what re-running the explainer produces: {span}"

    @property
    def flipped(self) -> bool:
        return self.other is not None and self.other.predicted != self.base.predicted

    def answer(self, attribution: Attribution) -> str:
        return self.answers[attribution.predicted]


def compare_explanations(setup: Setup, drop: Sequence[int], example: Example, config: ExplainConfig | None = None,
                         split: str = "test", base: Sequence[int] = (), with_random: bool = False, seeds: int = 1
                         ) -> ExplanationComparison:
    """Explain ``example`` under ``base`` and under ``drop``, with each explanation's faithfulness on its model.

    ``seeds`` > 1 explains each mask with that many seeds (the configured one, then the next ones) when
    the explainer samples; a deterministic explainer runs once whatever ``seeds`` says.
    """
    config = config or ExplainConfig()
    if seeds < 1:
        raise UserError(f"the number of explainer seeds must be at least 1 (got {seeds})")
    drop = validate_mask(drop, setup.lm.num_layers)
    base = validate_mask(base, setup.lm.num_layers)
    first_seed = int(config.resolved_params().get("seed", 0))  # type: ignore[call-overload]
    run_seeds = [first_seed + i for i in range(seeds)] if sampling(config.explainer) else [None]

    def runs(explainer: DatasetExplainer) -> tuple[list[Attribution], bool]:
        done = [explainer.explain(example, seed=s) for s in run_seeds]
        return [a for a, _ in done], all(hit for _, hit in done)

    first = DatasetExplainer(setup, base, config, split)
    base_runs, hit = runs(first)
    out = ExplanationComparison(example=example, answers=tuple(first.builder.answer_words), base=base_runs[0],
                                base_faithfulness=first.faithfulness([example], base_runs[:1])[0], base_cached=hit,
                                base_runs=base_runs)
    if drop != base:
        second = DatasetExplainer(setup, drop, config, split)
        out.other_runs, out.other_cached = runs(second)
        out.other = out.other_runs[0]
        out.other_faithfulness = second.faithfulness([example], [out.other])[0]
    if with_random:
        out.random, _ = first.explain(example, RANDOM)
        out.random_faithfulness = first.random_baseline([example])[0][0]
    return out
