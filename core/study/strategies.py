"""Pruning strategies: the order in which attention layers are dropped.

* ``similarity`` (default): He et al.'s score 1 - cos(x, x + attn(x)), lowest first.
* ``block-influence``: ShortGPT's 1 - cos(layer input, layer output), lowest first.
* ``greedy-divergence`` (FinerCut-style): at each step, drop the attention layer whose removal
  changes the answer distribution least: the mean Jensen-Shannon divergence between the full
  model's and the pruned model's answer probabilities on the calibration examples.
* ``trust-greedy`` (interpretability-aware): at each step, drop the layer that least increases
  ``w_acc * (acc_full - acc) + w_ece * (ece - ece_full) + w_comp * (comp_full - comp)`` on the
  calibration examples, comp being the AOPC comprehensiveness of an explainer (occlusion by
  default, the cheapest) on the first ``faith_n`` of them. The user sets the weights.
* ``first-to-last``, ``last-to-first`` and ``random`` (seeded): the baselines.

Greedy strategies choose on the validation split (``calibration_n`` examples, 100 by default) so
that a sweep reports them on the test split. They do not chase noise: at each step the similarity
order's next layer is the default, and another layer replaces it only when its cost is lower
beyond noise: the paired 95% percentile-bootstrap interval of (its cost - the default's cost),
over the same validation examples resampled jointly (`core.task.uncertainty.bootstrap_difference`),
lies wholly below 0. (The candidate tested is the cheapest of the step, so this guards against
chasing noise without being a formal test across all candidates; nor is it the interval the
tables show for an ECE change, which no combined cost has: see `core.task.uncertainty.methods`.)
Every mask they try goes through the result cache, so an interrupted search resumes. Each step
considers the ``candidates`` most redundant remaining layers by the similarity score (all of them
by default); after ``steps`` steps, the remaining layers follow in similarity order, so every
strategy returns a permutation of all layers.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from ..errors import UserError
from ..explain.dataset import DatasetExplainer, ExplainConfig
from ..progress import StageProgress
from ..task import calibration as cal
from ..task.evaluation import score_cached
from ..task.setup import Setup
from ..task.uncertainty import bootstrap_difference, calibration_draws, resample_counts
from .importance import attention_scores, calibration_texts

STRATEGIES: dict[str, str] = {
    "similarity": "He et al.: 1 - cos(x, x + attn(x)), lowest first",
    "block-influence": "ShortGPT: 1 - cos(layer input, layer output), lowest first",
    "greedy-divergence": "greedy: least change of the answer distribution (JS divergence) on validation",
    "trust-greedy": "greedy: least loss of accuracy, calibration and comprehensiveness on validation (weighted)",
    "first-to-last": "layer 0 first",
    "last-to-first": "the last layer first",
    "random": "a seeded random order",
}
DEFAULT_STRATEGY = "similarity"
QUICK = ("similarity", "block-influence", "last-to-first", "first-to-last", "random")
"""The strategies whose order evaluates no mask (a second at most, cached): the ones a layer picker can rank by."""


@dataclass(frozen=True)
class StrategyConfig:
    name: str = DEFAULT_STRATEGY
    seed: int = 0
    calibration_n: int = 100
    """Greedy strategies: validation examples that candidate masks are judged on (accuracy SD about 0.035)."""
    steps: int | None = None
    """Greedy strategies: how many layers to choose greedily (None: all)."""
    candidates: int | None = None
    """Greedy strategies: consider only this many most redundant remaining layers per step (None: all)."""
    weights: tuple[float, float, float] = (1.0, 1.0, 1.0)
    """trust-greedy: weights of the accuracy loss, the ECE increase and the comprehensiveness loss."""
    explainer: str = "occlusion"
    faith_n: int = 16
    beyond_noise: bool = True
    """Greedy strategies: leave the similarity order only for a layer whose cost is lower beyond noise."""

    def validate(self) -> None:
        if self.name not in STRATEGIES:
            raise UserError(f"unknown strategy '{self.name}'; use one of {', '.join(STRATEGIES)}")
        if self.calibration_n < 1 or self.faith_n < 1:
            raise UserError("calibration_n and faith_n must be at least 1")
        if len(self.weights) != 3 or any(w < 0 for w in self.weights) or not any(self.weights):
            raise UserError(f"weights are three numbers >= 0, not all 0: accuracy, ECE, comprehensiveness "
                            f"(got {list(self.weights)})")
        for name in ("steps", "candidates"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise UserError(f"{name} must be at least 1 (got {value})")


def js_divergence(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Jensen-Shannon divergence (natural log) between rows of two probability matrices."""
    p, q = np.clip(p, 1e-12, 1), np.clip(q, 1e-12, 1)
    m = (p + q) / 2
    return 0.5 * (p * np.log(p / m)).sum(axis=1) + 0.5 * (q * np.log(q / m)).sum(axis=1)


class _Judge:
    """Scores candidate masks on the validation examples (through the cache)."""

    def __init__(self, setup: Setup, config: StrategyConfig) -> None:
        ds = setup.ds
        if not ds.splits.get("validation"):
            raise UserError(f"the greedy strategies need a validation split; '{ds.name}' has none")
        self.setup, self.config = setup, config
        self.builder = setup.builder()
        self.examples, _ = ds.sample("validation", config.calibration_n, seed=config.seed)
        self.labels = np.array([ex.label for ex in self.examples])
        self._probs: dict[tuple[int, ...], np.ndarray] = {}
        self._comp: dict[tuple[int, ...], np.ndarray] = {}
        self.counts = resample_counts(len(self.examples), seed=config.seed)
        self.faith_counts = resample_counts(min(config.faith_n, len(self.examples)), seed=config.seed + 1)
        self.explain = ExplainConfig.make(config.explainer)
        self.full_probs = self.probs(())
        self.full_comp = self.comprehensiveness(()) if config.name == "trust-greedy" else 0.0

    def probs(self, drop: Sequence[int]) -> np.ndarray:
        """The validation probabilities under ``drop`` (read once per mask: `cost` and `beats` both need them)."""
        key = tuple(sorted(drop))
        if key not in self._probs:
            logits = score_cached(self.setup, key, self.builder, "validation", self.examples).logits
            self._probs[key] = cal.softmax(logits)
        return self._probs[key]

    def _comprehensiveness(self, drop: Sequence[int]) -> np.ndarray:
        """Each judged example's AOPC comprehensiveness under ``drop`` (no random baseline: it is not judged).

        Kept per mask, like `probs`: `cost` and `beats` both read it.
        """
        key = tuple(sorted(drop))
        if key not in self._comp:
            # every candidate mask explains the same perturbed inputs: the full model keeps their states at every
            # layer, so a candidate starts at its lowest dropped layer (`core.model.states`)
            after = [(layer,) for layer in range(self.setup.lm.num_layers)] if not key else []
            explainer = DatasetExplainer(self.setup, key, self.explain, "validation", next_masks=after)
            examples = self.examples[: self.config.faith_n]
            attributions = [explainer.explain(ex)[0] for ex in examples]
            self._comp[key] = np.array([f.comprehensiveness for f in explainer.faithfulness(examples, attributions)])
        return self._comp[key]

    def comprehensiveness(self, drop: Sequence[int]) -> float:
        return float(np.mean(self._comprehensiveness(drop)))

    def beats(self, drop: Sequence[int], default: Sequence[int]) -> bool:
        """Whether mask ``drop`` costs less than mask ``default`` beyond noise (paired bootstrap, 95%)."""
        difference = self._cost_draws(drop) - self._cost_draws(default)
        return bootstrap_difference(self.cost(drop) - self.cost(default), difference).hi < 0

    def _cost_draws(self, drop: Sequence[int]) -> np.ndarray:
        """The mask's cost on each bootstrap resample, less the full model's (which cancels in differences)."""
        probs = self.probs(drop)
        if self.config.name == "greedy-divergence":
            return self.counts @ js_divergence(self.full_probs, probs) / len(self.labels)
        w_acc, w_ece, w_comp = self.config.weights
        draws = calibration_draws(probs, self.labels, self.counts, keys=("accuracy", "ece"))
        cost = -w_acc * draws["accuracy"] + w_ece * draws["ece"]
        if w_comp:
            comp = self._comprehensiveness(drop)
            cost -= w_comp * (self.faith_counts @ comp) / len(comp)
        return cost

    def cost(self, drop: Sequence[int]) -> float:
        """Lower is better: how much worse the mask is than the full model."""
        probs = self.probs(drop)
        if self.config.name == "greedy-divergence":
            return float(js_divergence(self.full_probs, probs).mean())
        w_acc, w_ece, w_comp = self.config.weights
        acc0, ece0 = cal.accuracy(self.full_probs, self.labels), cal.ece(self.full_probs, self.labels)
        cost = w_acc * (acc0 - cal.accuracy(probs, self.labels)) + w_ece * (cal.ece(probs, self.labels) - ece0)
        if w_comp:
            cost += w_comp * (self.full_comp - self.comprehensiveness(drop))
        return float(cost)


def candidate_masks(n_layers: int, steps: int, candidates: int | None = None) -> int:
    """How many masks `greedy_order` tries: at each of ``steps`` steps, every remaining layer (or ``candidates``)."""
    return sum(min(n_layers - s, candidates or n_layers) for s in range(min(steps, n_layers)))


def greedy_order(cost: Callable[[Sequence[int]], float], fallback: Sequence[int], steps: int,
                 candidates: int | None = None, progress: StageProgress | None = None,
                 beats: Callable[[Sequence[int], Sequence[int]], bool] | None = None) -> list[int]:
    """Greedily pick ``steps`` layers, each time the one whose addition to the mask costs least.

    Candidates are the remaining layers in ``fallback`` order (the first ``candidates`` of them);
    ties go to the earlier one. With ``beats(mask, default_mask)``, the cheapest layer replaces the
    first remaining one in ``fallback`` order only when ``beats`` says its mask is cheaper beyond
    noise. The layers not picked follow in ``fallback`` order.
    """
    chosen: list[int] = []
    total = candidate_masks(len(fallback), steps, candidates)
    done = 0
    for step in range(steps):
        remaining = [i for i in fallback if i not in chosen][: candidates or None]
        costs = []
        for layer in remaining:
            if progress:
                progress(f"choosing layer {step + 1} of {steps}: candidate mask {done + 1} of {total}", done, total)
            costs.append(cost([*chosen, layer]))
            done += 1
        if progress:
            progress(f"chose layer {step + 1} of {steps}: {done} of {total} candidate masks tried", done, total)
        best = remaining[int(np.argmin(costs))]
        if beats is not None and best != remaining[0] and not beats([*chosen, best], [*chosen, remaining[0]]):
            best = remaining[0]
        chosen.append(best)
    return chosen + [i for i in fallback if i not in chosen]


def layer_order(setup: Setup, config: StrategyConfig = StrategyConfig(),
                progress: StageProgress | None = None) -> list[int]:
    """A permutation of the attention layers, in the order ``config``'s strategy drops them."""
    config.validate()
    lm, cache = setup.lm, setup.cache
    n = lm.num_layers
    if config.name == "first-to-last":
        return list(range(n))
    if config.name == "last-to-first":
        return list(range(n - 1, -1, -1))
    if config.name == "random":
        order = list(range(n))
        random.Random(config.seed).shuffle(order)
        return order
    texts = calibration_texts(setup.ds)
    if config.name == "block-influence":
        return attention_scores(lm, texts, cache=cache, method="block").order
    similarity = attention_scores(lm, texts, cache=cache).order
    if config.name == "similarity":
        return similarity
    judge = _Judge(setup, config)
    steps = min(config.steps or n, n)
    return greedy_order(judge.cost, similarity, steps, config.candidates, progress,
                        judge.beats if config.beyond_noise else None)


def ranking(setup: Setup, name: str = DEFAULT_STRATEGY) -> tuple[list[int], list[float] | None]:
    """A quick strategy's order and, for a score-based one, each layer's score (in layer order; None otherwise).

    For a layer picker: the order is the one ``name`` drops layers in, so its first k are its k suggested drops.
    """
    if name not in QUICK:
        raise UserError(f"'{name}' evaluates masks to choose its order; rank layers by one of {', '.join(QUICK)}")
    if name in ("similarity", "block-influence"):
        scores = attention_scores(setup.lm, calibration_texts(setup.ds), cache=setup.cache,
                                  method="attention" if name == "similarity" else "block")
        return scores.order, scores.scores
    return layer_order(setup, StrategyConfig(name=name)), None
