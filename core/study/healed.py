"""The healed model and the three-way comparison: full, pruned, and pruned and healed, on the same examples.

A `core.study.healing.HealResult`'s adapters are merged (peft ``merge_and_unload``) into a private copy
of the model whose adapted weights have their own storage, wrapped as a `LoadedModel` named
``<model>+heal-<key>`` (`healed_model`); a small registry gives every caller the same copy. Its name and
merged weights give it its own id, so every result cache key of the core tells it apart. It is scored
under the same mask as the pruned model (`compare_healed`): "pruned and healed".

One mechanism serves every comparison: `HealComparison.pair` is any two of the three models as a
`core.study.compare.ResultComparison` (memoised), so its metrics with paired intervals and McNemar flips
(``stats``), prediction sets and abstention (``sets``) and recalibration (``repairs``) are the very ones
the full-against-pruned views draw. `healed_comparison` adds the healed model to a comparison already
drawn (the app's); `explain_healed` explains an example under the healed model and sets its explanation
against the full model's (agreement, faithfulness on its own model).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import pandas as pd

from ..errors import UserError
from ..explain.agreement import Agreement, agreement
from ..explain.dataset import ExplainConfig
from ..explain.faithfulness import Faithfulness
from ..explain.methods import Attribution
from ..metrics import METRICS
from ..model.loading import LoadedModel, wrap_model
from ..model.lora import merged_copy
from ..progress import Progress, StageProgress
from ..task.data import Example
from ..task.evaluation import EvalConfig, EvalResult, PartialResult, evaluate
from ..task.setup import Setup
from ..task.uncertainty import N_RESAMPLES
from .compare import ExplanationComparison, PairedStats, ResultComparison, compare_explanations, explanations_cached
from .healing import MAX_HEALED, HealResult
from .sets import DEFAULT_ALPHA, DEFAULT_METHOD, SetStats

# ---------------------------------------------------------------- the healed model


_HEALED: OrderedDict[tuple[str, str], LoadedModel] = OrderedDict()
_HEALED_LOCK = threading.Lock()
_BUILD_LOCKS: dict[tuple[str, str], threading.Lock] = {}


def healed_model(lm: LoadedModel, result: HealResult) -> LoadedModel:
    """``lm`` with ``result``'s adapters merged, as a model of its own (shared: every caller gets one copy).

    Score it under the same mask as the pruned model (``result.drop``): it is the pruned model, healed.
    """
    if result.model != lm.id:
        raise UserError(f"these adapters were trained on {result.model}, not on {lm.id}")
    if not result.complete:
        raise UserError(f"healing stopped at step {result.steps_done} of {result.config.steps}: run it again to "
                        "finish (it resumes from its checkpoint) before using the healed model")
    key = (lm.id, result.key)
    with _HEALED_LOCK:
        if key in _HEALED:
            _HEALED.move_to_end(key)
            return _HEALED[key]
        build_lock = _BUILD_LOCKS.setdefault(key, threading.Lock())
    with build_lock:
        with _HEALED_LOCK:
            if key in _HEALED:
                return _HEALED[key]
        merged = merged_copy(lm.model, result.drop, result.config.rank, result.config.alpha, result.state)
        healed = wrap_model(f"{lm.name}+heal-{result.short_key}", merged, lm.tokenizer,
                            source=f"{lm.source} healed ({result.key})")
        with _HEALED_LOCK:
            _HEALED[key] = healed
            while len(_HEALED) > MAX_HEALED:
                _HEALED.popitem(last=False)
        return healed


def healed_setup(setup: Setup, result: HealResult) -> Setup:
    """``setup`` with its model healed by ``result`` (same data, prompt and cache): score it under ``result.drop``."""
    return replace(setup, lm=healed_model(setup.lm, result))


def release_healed(healed: LoadedModel) -> None:
    """Forget a healed model, so that its memory is freed once no caller holds it."""
    with _HEALED_LOCK:
        for key in [k for k, v in _HEALED.items() if v is healed]:
            del _HEALED[key]


# ---------------------------------------------------------------- three-way comparison


MODELS = ("full", "pruned", "healed")
PAIRS = (("full", "pruned"), ("full", "healed"), ("pruned", "healed"))
"""(base, other) of each paired change: pruned and healed against full, and healed against pruned."""
SHOWN = ("accuracy", "ece", "smooth_ece", "brier", "nll")


@dataclass
class HealComparison:
    """The same test examples under the full model, the pruned model and the pruned, healed model."""

    full: EvalResult
    pruned: EvalResult
    healed: EvalResult
    heal: HealResult
    _pairs: dict[tuple[str, str], ResultComparison] = field(default_factory=dict, repr=False)

    @classmethod
    def extending(cls, c: ResultComparison, healed: EvalResult, heal: HealResult) -> HealComparison:
        """``c`` (full against pruned) with the healed model added; ``c`` itself serves the (full, pruned) pair, so
        what it has computed (intervals, sets, repairs) is not computed again."""
        if c.base.dropped_attention_layers:
            raise UserError("the healed model is compared with the full model and the pruned one: the comparison's "
                            "base must be the full model")
        out = cls(c.base, c.other, healed, heal)
        out._pairs[("full", "pruned")] = c
        return out

    def result(self, name: str) -> EvalResult:
        return {"full": self.full, "pruned": self.pruned, "healed": self.healed}[name]

    def pair(self, base: str, other: str) -> ResultComparison:
        """Two of the three as a `ResultComparison` (``other`` against ``base``), memoised with what it computes."""
        key = (base, other)
        if key not in self._pairs:
            self._pairs[key] = ResultComparison(self.result(base), self.result(other), key)
        return self._pairs[key]

    def stats(self, n_resamples: int = N_RESAMPLES, seed: int = 0) -> dict[tuple[str, str], PairedStats]:
        """The `PairedStats` of each pair of `PAIRS`, on the same bootstrap resamples."""
        return {(a, b): self.pair(a, b).stats(n_resamples, seed) for a, b in PAIRS}

    def sets(self, alpha: float | str = DEFAULT_ALPHA, method: str = DEFAULT_METHOD, n_resamples: int = N_RESAMPLES,
             seed: int = 0) -> dict[tuple[str, str], SetStats]:
        """Prediction sets and abstention of each pair of `PAIRS`, paired (`ResultComparison.sets`)."""
        return {(a, b): self.pair(a, b).sets(alpha, method, n_resamples, seed) for a, b in PAIRS}

    def values_table(self, stats: dict[tuple[str, str], PairedStats], metrics: Sequence[str] = SHOWN
                     ) -> pd.DataFrame:
        """One row per metric: each model's value and 95% interval."""
        full_pruned, full_healed = stats[("full", "pruned")], stats[("full", "healed")]
        sides = {"full": full_pruned.base, "pruned": full_pruned.other, "healed": full_healed.other}
        rows = []
        for key in metrics:
            row: dict[str, object] = {"metric": METRICS[key].title}
            for name, side in sides.items():
                row[name] = side[key].value
                row[f"{name} 95% CI"] = f"[{side[key].lo:.3f}, {side[key].hi:.3f}]"
            rows.append(row)
        return pd.DataFrame(rows).set_index("metric")

    def changes_table(self, stats: dict[tuple[str, str], PairedStats], metrics: Sequence[str] = SHOWN
                      ) -> pd.DataFrame:
        """One row per metric and pair: the paired change with its 95% interval, p and verdict."""
        rows = []
        for (a, b), s in stats.items():
            for key in metrics:
                d = s.difference[key]
                rows.append({"metric": METRICS[key].title, "change": f"{b} - {a}", "value": d.value,
                             "95% CI": f"[{d.lo:.3f}, {d.hi:.3f}]", "p": d.p_value,
                             "verdict": METRICS[key].verdict(d.value, d.beyond_noise)})
        return pd.DataFrame(rows).set_index(["metric", "change"])

    def as_json(self, n_resamples: int = N_RESAMPLES, seed: int = 0) -> dict:
        """The shape ``python -m core heal --json`` writes."""
        stats = self.stats(n_resamples, seed)
        full_pruned, full_healed = stats[("full", "pruned")], stats[("full", "healed")]
        sides = {"full": full_pruned.base, "pruned": full_pruned.other, "healed": full_healed.other}
        return {
            "model": self.full.model, "healed_model": self.healed.model, "dataset": self.full.dataset,
            "split": self.full.split, "n": self.full.n,
            "dropped_attention_layers": self.pruned.dropped_attention_layers,
            "bootstrap": {"resamples": n_resamples, "seed": seed},
            "heal": self.heal.as_dict(),
            **{name: {k: v.as_dict() for k, v in side.items()} for name, side in sides.items()},
            "changes": {f"{b}_vs_{a}": _change_json(s) for (a, b), s in stats.items()},
            "temperature": {name: self.result(name).temperature for name in MODELS},
            "warnings": list(dict.fromkeys(self.full.warnings + self.pruned.warnings + self.healed.warnings)),
        }

    def healed_json(self, n_resamples: int = N_RESAMPLES, seed: int = 0, alpha: float | str = DEFAULT_ALPHA,
                    method: str = DEFAULT_METHOD) -> dict:
        """The ``healed`` block ``python -m core compare --heal-steps`` adds: the healed model's metrics, its paired
        changes against the full and the pruned model (with McNemar flips, and after temperature scaling), and its
        prediction sets and abstention against each."""
        stats, sets = self.stats(n_resamples, seed), self.sets(alpha, method, n_resamples, seed)
        return {"model": self.healed.model, "heal": {k: v for k, v in self.heal.as_dict().items() if k != "losses"},
                "values": {k: v.as_dict() for k, v in stats[("full", "healed")].other.items()},
                "temperature": self.healed.temperature,
                "changes": {f"healed_vs_{a}": _change_json(stats[(a, "healed")]) for a in ("full", "pruned")},
                "sets": {f"healed_vs_{a}": sets[(a, "healed")].as_json((a, "healed")) for a in ("full", "pruned")}}


def _change_json(s: PairedStats) -> dict:
    out = {"difference": {k: v.as_dict() for k, v in s.difference.items()},
           "verdict": {k: s.verdict(k) for k in s.difference}, "mcnemar": s.mcnemar.as_dict()}
    if s.scaled_difference:
        out["temperature_scaled_difference"] = {k: v.as_dict() for k, v in s.scaled_difference.items()}
    return out


def compare_healed(setup: Setup, heal_result: HealResult, config: EvalConfig | None = None,
                   progress: StageProgress | None = None) -> HealComparison:
    """Evaluate ``config``'s sample under the full model, the pruned model (``heal_result.drop``) and the healed one.

    The healed model is scored under the same mask; the three share examples, prompt and cache.
    """
    config = config or EvalConfig()

    def stage(name: str):
        return (lambda done, total: progress(name, done, total)) if progress else None

    full = evaluate(setup, replace(config, drop=()), stage("full"))
    pruned = evaluate(setup, replace(config, drop=heal_result.drop), stage("pruned"))
    healed_setup = replace(setup, lm=healed_model(setup.lm, heal_result))
    healed = evaluate(healed_setup, replace(config, drop=heal_result.drop), stage("healed"))
    return HealComparison(full, pruned, healed, heal_result)


def evaluate_healed(setup: Setup, heal_result: HealResult, config: EvalConfig | None = None,
                    progress: Progress | None = None, partial: Callable[[PartialResult], None] | None = None
                    ) -> EvalResult:
    """``config``'s sample under the healed model, with the mask it was healed under (through the result cache)."""
    config = config or EvalConfig()
    return evaluate(healed_setup(setup, heal_result), replace(config, drop=heal_result.drop), progress, partial)


def healed_comparison(setup: Setup, c: ResultComparison, heal_result: HealResult, config: EvalConfig,
                      progress: Progress | None = None) -> HealComparison:
    """``c`` (the full model against ``heal_result``'s mask, evaluated with ``config``) with the healed model added,
    scored on the same examples."""
    if tuple(c.other.dropped_attention_layers) != heal_result.drop:
        raise UserError(f"these adapters heal the mask {list(heal_result.drop)}, not the comparison's "
                        f"{c.other.dropped_attention_layers}")
    return HealComparison.extending(c, evaluate_healed(setup, heal_result, config, progress), heal_result)


# ---------------------------------------------------------------- explanations


@dataclass
class HealedExplanation:
    """One example explained under the healed model (same explainer and mask), against the full model's."""

    healed: Attribution
    faithfulness: Faithfulness
    """ERASER faithfulness on the healed model itself, under the mask."""
    cached: bool
    runs: list[Attribution]
    """Its explanation under each seed (the first is ``healed``)."""
    against: ExplanationComparison
    """The full (and pruned) model's explanations of the same example, with the same explainer and seeds."""

    @property
    def vs_full(self) -> Agreement:
        """How much the healed model's explanation agrees with the full model's."""
        return agreement(self.against.base.scores, self.healed.scores)

    @property
    def vs_pruned(self) -> Agreement | None:
        """How much it agrees with the unhealed pruned model's (None when no layer is dropped there)."""
        return agreement(self.against.other.scores, self.healed.scores) if self.against.other is not None else None

    @property
    def flipped(self) -> bool:
        """Whether the healed model predicts another answer than the full model on this example."""
        return self.healed.predicted != self.against.base.predicted

    def noise_verdict(self) -> str | None:
        """Whether the healed and the full model's explanations differ by more than re-running the explainer does
        (every healed-against-full Spearman below every seed-to-seed one on the full model; None without seeds)."""
        ceiling = [a.spearman for a in self.against.seed_agreements if a.spearman is not None]
        cross = [g.spearman for a in self.against.base_runs for b in self.runs
                 if (g := agreement(a.scores, b.scores)).spearman is not None]
        if not ceiling or not cross:
            return None
        span = (f"seed-to-seed Spearman {min(ceiling):.2f} to {max(ceiling):.2f}, healed against full "
                f"{min(cross):.2f} to {max(cross):.2f} ({len(self.runs)} seeds)")
        if max(cross) < min(ceiling):
            return f"the healed model's explanation differs from the full model's by more than re-running does: {span}"
        return f"the difference is within what re-running the explainer produces: {span}"


def explain_healed(setup: Setup, heal_result: HealResult, example: Example, against: ExplanationComparison,
                   config: ExplainConfig | None = None, split: str = "test", seeds: int = 1) -> HealedExplanation:
    """Explain ``example`` under the healed model and ``heal_result``'s mask (its faithfulness on that model), set
    against ``against``: the full model's explanation of it (`compare_explanations` on ``setup``, same explainer)."""
    h = compare_explanations(healed_setup(setup, heal_result), heal_result.drop, example, config, split,
                             base=heal_result.drop, seeds=seeds)
    return HealedExplanation(h.base, h.base_faithfulness, h.base_cached, h.base_runs, against)


def healed_explanation_cached(setup: Setup, heal_result: HealResult, example: Example,
                              config: ExplainConfig | None = None, split: str = "test", seeds: int = 1) -> bool:
    """Whether `explain_healed` would only read the cache for the healed side."""
    return explanations_cached(healed_setup(setup, heal_result), heal_result.drop, example, config, split,
                               base=heal_result.drop, seeds=seeds)
