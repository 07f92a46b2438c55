"""The healed model and the three-way comparison: full, pruned, and pruned and healed, on the same examples.

A `core.study.healing.HealResult`'s adapters are merged (peft ``merge_and_unload``) into a private copy
of the model whose adapted weights have their own storage, wrapped as a `LoadedModel` named
``<model>+heal-<key>`` (`healed_model`); a small registry gives every caller the same copy. Its name and
merged weights give it its own id, so every result cache key of the core tells it apart. It is scored
under the same mask as the pruned model (`compare_healed`): "pruned and healed".
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, replace

import pandas as pd

from ..errors import UserError
from ..metrics import METRICS
from ..model.loading import LoadedModel, wrap_model
from ..model.lora import merged_copy
from ..progress import StageProgress
from ..task.evaluation import EvalConfig, EvalResult, evaluate
from ..task.setup import Setup
from ..task.uncertainty import N_RESAMPLES
from .compare import PairedStats, ResultComparison
from .healing import MAX_HEALED, HealResult

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

    def result(self, name: str) -> EvalResult:
        return {"full": self.full, "pruned": self.pruned, "healed": self.healed}[name]

    def pair(self, base: str, other: str) -> ResultComparison:
        """Two of the three as a `ResultComparison` (``other`` against ``base``)."""
        return ResultComparison(self.result(base), self.result(other), (base, other))

    def stats(self, n_resamples: int = N_RESAMPLES, seed: int = 0) -> dict[tuple[str, str], PairedStats]:
        """The `PairedStats` of each pair of `PAIRS`, on the same bootstrap resamples."""
        return {(a, b): self.pair(a, b).stats(n_resamples, seed) for a, b in PAIRS}

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
            "changes": {f"{b}_vs_{a}": {"difference": {k: v.as_dict() for k, v in s.difference.items()},
                                        "verdict": {k: s.verdict(k) for k in s.difference},
                                        "mcnemar": s.mcnemar.as_dict()}
                        for (a, b), s in stats.items()},
            "temperature": {name: self.result(name).temperature for name in MODELS},
            "warnings": list(dict.fromkeys(self.full.warnings + self.pruned.warnings + self.healed.warnings)),
        }


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
