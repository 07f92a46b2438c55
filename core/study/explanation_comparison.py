"""One example explained under two masks: the explanation side of "full model against pruned model".

`core.study.compare` is the one home for setting two masks side by side; it imports these from here, so
front ends import them from there. They are apart from the result comparison because they answer
another question (does the explanation of one answer change, and is that beyond re-running the
explainer?) with other machinery (explainers and ERASER faithfulness, not the evaluation's metrics):

* `compare_explanations`: one example explained under both masks with the same explainer, each
  explanation's ERASER faithfulness on its own model, the agreement between the two and, on
  request, the seeded random explainer's faithfulness on the base model as a floor;
  `explanations_cached` says whether it would only read the cache;
* `explainer_table`: one example explained by every explainer under the full model and a mask,
  their faithfulness, agreement and cost side by side, with the random explainer as reference.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from ..errors import UserError
from ..explain.agreement import Agreement, agreement
from ..explain.dataset import RANDOM, RANDOM_DRAWS, DatasetExplainer, ExplainConfig, sampling
from ..explain.faithfulness import Faithfulness
from ..explain.methods import EXPLAINERS, Attribution
from ..model.pruning import validate_mask
from ..progress import Progress
from ..task.data import Example
from ..task.setup import Setup


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


def _run_seeds(config: ExplainConfig, seeds: int) -> list[int | None]:
    """The seeds each mask is explained under: the configured one and the next ones, or one run without a seed."""
    if seeds < 1:
        raise UserError(f"the number of explainer seeds must be at least 1 (got {seeds})")
    first = int(config.resolved_params().get("seed", 0))  # type: ignore[call-overload]
    return [first + i for i in range(seeds)] if sampling(config.explainer) else [None]


def compare_explanations(setup: Setup, drop: Sequence[int], example: Example, config: ExplainConfig | None = None,
                         split: str = "test", base: Sequence[int] = (), with_random: bool = False, seeds: int = 1
                         ) -> ExplanationComparison:
    """Explain ``example`` under ``base`` and under ``drop``, with each explanation's faithfulness on its model.

    ``seeds`` > 1 explains each mask with that many seeds (the configured one, then the next ones) when
    the explainer samples; a deterministic explainer runs once whatever ``seeds`` says.
    """
    config = config or ExplainConfig()
    run_seeds = _run_seeds(config, seeds)
    drop = validate_mask(drop, setup.lm.num_layers)
    base = validate_mask(base, setup.lm.num_layers)

    def runs(explainer: DatasetExplainer) -> tuple[list[Attribution], bool]:
        done = [explainer.explain(example, seed=s) for s in run_seeds]
        return [a for a, _ in done], all(hit for _, hit in done)

    # the second mask's perturbed inputs are the base's: keep the states where it starts, as the base runs
    first = DatasetExplainer(setup, base, config, split, next_masks=[drop] if drop != base else [])
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


def explanations_cached(setup: Setup, drop: Sequence[int], example: Example, config: ExplainConfig | None = None,
                        split: str = "test", base: Sequence[int] = (), with_random: bool = False, seeds: int = 1
                        ) -> bool:
    """Whether `compare_explanations` with the same arguments would only read the cache (nothing to compute).

    It reads cache entries and explains nothing, so a front end can draw what is cached at once and
    leave the rest (seconds to minutes per explanation on a CPU) to an explicit request.
    """
    config = config or ExplainConfig()
    run_seeds = _run_seeds(config, seeds)
    drop = validate_mask(drop, setup.lm.num_layers)
    base = validate_mask(base, setup.lm.num_layers)
    first = DatasetExplainer(setup, base, config, split)
    sides = [first] if drop == base else [first, DatasetExplainer(setup, drop, config, split)]
    # faithfulness is scored for each mask's first run only
    if not all(side.is_cached(example, seed=s, faithfulness=i == 0) for side in sides
               for i, s in enumerate(run_seeds)):
        return False
    return not with_random or all(first.is_cached(example, RANDOM, s, faithfulness=True) for s in range(RANDOM_DRAWS))


def explainer_table(setup: Setup, drop: Sequence[int], example: Example, removal: str = "delete",
                    progress: Progress | None = None, split: str = "test") -> pd.DataFrame:
    """Every explainer but the random one on ``example``, for the full model and under ``drop``: one row each.

    Columns: each side's AOPC comprehensiveness and sufficiency (on the model explained) and their change
    (pruned - full), the two explanations' Spearman agreement, the seconds each explanation took when it
    was computed (a cached one keeps that time) and whether everything came from the cache. A last row
    is the reference: the random explainer's faithfulness on each side (mean of `RANDOM_DRAWS` draws).
    Explainers with a seed run under their default one. ``progress`` gets (explainers done, total).
    """
    drop = validate_mask(drop, setup.lm.num_layers)
    names = [name for name in EXPLAINERS if name != RANDOM]
    total = len(names) + 1
    rows = []

    def faithfulness_columns(a: Faithfulness, b: Faithfulness) -> dict[str, float]:
        return {"comprehensiveness, full": a.comprehensiveness, "comprehensiveness, pruned": b.comprehensiveness,
                "comprehensiveness change": b.comprehensiveness - a.comprehensiveness,
                "sufficiency, full": a.sufficiency, "sufficiency, pruned": b.sufficiency,
                "sufficiency change": b.sufficiency - a.sufficiency}

    for done, name in enumerate(names):
        c = compare_explanations(setup, drop, example, ExplainConfig.make(name, removal=removal), split)
        g = c.agreement
        rows.append({"explainer": EXPLAINERS[name].title,
                     **faithfulness_columns(c.base_faithfulness, c.second_faithfulness),
                     "Spearman, full vs pruned": g.spearman if g is not None else None,
                     "seconds, full": c.base.seconds, "seconds, pruned": c.second.seconds,
                     "from cache": c.base_cached and (c.other is None or c.other_cached)})
        if progress is not None:
            progress(done + 1, total)
    random_config = ExplainConfig.make(RANDOM, removal=removal)
    masks = [(), drop] if drop else [()]
    baselines = [DatasetExplainer(setup, mask, random_config, split).random_baseline([example]) for mask in masks]
    (a,), hit_a = baselines[0]
    (b,), hit_b = baselines[-1]
    rows.append({"explainer": f"{EXPLAINERS[RANDOM].title} (reference, mean of {RANDOM_DRAWS} draws)",
                 **faithfulness_columns(a, b), "Spearman, full vs pruned": None,
                 "seconds, full": None, "seconds, pruned": None, "from cache": hit_a and hit_b})
    if progress is not None:
        progress(total, total)
    return pd.DataFrame(rows)
