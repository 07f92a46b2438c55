"""Two attention masks on the same examples: the one home for "full model against pruned model".

Every front end that sets two masks side by side (the Calibration, Prediction sets, Explanations and
Learn views, ``python -m core explain``) calls this module and only arranges what it returns:

* `compare_results`: both masks evaluated on the same sample, with a metrics table (one row per
  metric of `core.metrics`) and a per-example table (predictions, confidence, flips); its
  `ResultComparison.sets` are the prediction sets and abstention of both (`core.study.sets`);
  `ResultComparison.repairs` fits the recalibration methods on the second mask's validation examples
  (`core.study.repair`);
* `compare_explanations` (with `explanations_cached`) and `explainer_table`: one example explained
  under both masks, or by every explainer, with faithfulness and agreement; they live in
  `core.study.explanation_comparison` (their notes are there) and are imported from here.

The base mask is the full model by default; any two masks can be compared.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace

import pandas as pd

from ..errors import UserError
from ..metrics import CALIBRATION, METRICS
from ..model.pruning import validate_mask
from ..progress import StageProgress
from ..task.calibration import CalibrationReport
from ..task.evaluation import EvalConfig, EvalResult, PartialResult, evaluate
from ..task.setup import Setup
from ..task.uncertainty import (
    LEVEL,
    N_RESAMPLES,
    Difference,
    Interval,
    McNemar,
    NoiseFloor,
    examples_needed,
    mcnemar,
    mean_interval,
    paired_differences,
    paired_mean_difference,
    resample_counts,
)
from .explanation_comparison import (  # noqa: F401 - the explanation comparison is imported from here
    ExplanationComparison,
    compare_explanations,
    explainer_table,
    explanations_cached,
)
from .repair import RepairComparison, repair_key, repair_results
from .sets import DEFAULT_ALPHA, DEFAULT_METHOD, SetStats, set_stats

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
    _stats: dict[tuple[int, int], PairedStats] = field(default_factory=dict, repr=False)
    _sets: dict[tuple, SetStats] = field(default_factory=dict, repr=False)
    _repairs: dict[tuple, RepairComparison] = field(default_factory=dict, repr=False)

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

    def stats(self, n_resamples: int = N_RESAMPLES, seed: int = 0) -> PairedStats:
        """Every metric's interval and the paired differences (computed once per resampling setting)."""
        key = (n_resamples, seed)
        if key not in self._stats:
            self._stats[key] = paired_stats(self.base, self.other, n_resamples, seed)
        return self._stats[key]

    def sets(self, alpha: float | str = DEFAULT_ALPHA, method: str = DEFAULT_METHOD, n_resamples: int = N_RESAMPLES,
             seed: int = 0) -> SetStats:
        """Prediction sets and abstention, paired (`core.study.sets.set_stats`; computed once per setting)."""
        key = (str(alpha), method, n_resamples, seed)
        if key not in self._sets:
            self._sets[key] = set_stats(self.base, self.other, alpha, method, n_resamples, seed)
        return self._sets[key]

    def repairs(self, setup: Setup | None = None, methods: Sequence[str] | None = None,
                params: Mapping[str, Mapping[str, object]] | None = None, full_after: bool = False,
                n_resamples: int = N_RESAMPLES, seed: int = 0) -> RepairComparison:
        """Every recalibration method of ``methods`` (all by default) fitted on ``other``'s validation logits and
        compared with it unrepaired and with ``base`` (`core.study.repair.repair_results`); computed once per
        methods, parameters and resampling. ``setup`` (the one both sides were evaluated with) gives contextual
        calibration its content-free answers."""
        key = repair_key(methods, params, full_after, n_resamples, seed)
        if key not in self._repairs:
            self._repairs[key] = repair_results(self.base, self.other, setup, methods, params, full_after=full_after,
                                                n_resamples=n_resamples, seed=seed)
        return self._repairs[key]

    def predictions(self, suffixes: tuple[str, str] = ("full", "pruned")) -> pd.DataFrame:
        """One row per example, both sides' columns suffixed (``correct_full``, ``confidence_pruned``, ...)."""
        table = self.base.predictions()[["id", "text", "label"]]
        for suffix, r in zip(suffixes, (self.base, self.other), strict=True):
            p = r.predictions().drop(columns=["id", "text", "label"])
            if r.label_mass is not None:
                p["label_mass"] = r.label_mass
            table = pd.concat([table, p.add_suffix(f"_{suffix}")], axis=1)
        table["flipped"] = table[f"prediction_{suffixes[0]}"] != table[f"prediction_{suffixes[1]}"]
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


SCALED = ("ece", "adaptive_ece", "smooth_ece", "mce", "brier", "nll")
"""The metrics that temperature scaling changes (it never changes a prediction, so not accuracy)."""


@dataclass
class PairedStats:
    """Two evaluations of the same examples: every metric with its 95% interval, and their paired differences.

    Differences are ``other - base``, bootstrapped with the examples resampled jointly (`core.task.uncertainty`).
    ``scaled_*`` are the same after each side's own temperature (empty without temperature scaling).
    """

    n: int
    n_resamples: int
    seed: int
    base: dict[str, Interval]
    other: dict[str, Interval]
    difference: dict[str, Difference]
    mcnemar: McNemar
    noise_floor: dict[str, tuple[NoiseFloor, NoiseFloor]]
    """Per binned and smooth ECE: (base, other) against a perfectly calibrated model with their confidences."""
    scaled_base: dict[str, Interval] = field(default_factory=dict)
    scaled_other: dict[str, Interval] = field(default_factory=dict)
    scaled_difference: dict[str, Difference] = field(default_factory=dict)

    def verdict(self, key: str, temperature_scaled: bool = False) -> str:
        """The difference in ``key`` in plain words, e.g. ``"worse, beyond noise (p = 0.003)"``."""
        d = (self.scaled_difference if temperature_scaled else self.difference)[key]
        return METRICS[key].verdict(d.value, d.beyond_noise, d.p_value)

    def examples_needed(self, key: str, delta: float) -> int:
        """About how many examples resolve a true change of ``delta`` in ``key`` (80% power, 5% level).

        The paired SD at this n is read off the difference's 95% interval (its width / 3.92).
        """
        d = self.difference[key]
        return examples_needed(max((d.hi - d.lo) / 3.92, 1e-12), self.n, delta)

    def table(self, names: tuple[str, str] = NAMES, temperature_scaled: bool = False) -> pd.DataFrame:
        """One row per metric: each side with its interval, the difference with its interval, p and verdict."""
        base, other, diff = ((self.scaled_base, self.scaled_other, self.scaled_difference) if temperature_scaled
                             else (self.base, self.other, self.difference))
        rows = []
        for key, d in diff.items():
            rows.append({"metric": METRICS[key].title, names[0]: base[key].value, f"{names[0]} 95% CI": _ci(base[key]),
                         names[1]: other[key].value, f"{names[1]} 95% CI": _ci(other[key]),
                         "difference": d.value, "difference 95% CI": _ci(d), "p": d.p_value,
                         "verdict": METRICS[key].verdict(d.value, d.beyond_noise)})
        return pd.DataFrame(rows).set_index("metric")

    def as_json(self, names: tuple[str, str] = ("full", "pruned")) -> dict:
        """The shape ``python -m core compare --json`` writes (intervals as ``[lo, hi]``)."""
        first, second = names

        def side(d: dict) -> dict:
            return {k: v.as_dict() for k, v in d.items()}

        out = {"n": self.n, "bootstrap": {"resamples": self.n_resamples, "seed": self.seed, "level": LEVEL},
               first: side(self.base), second: side(self.other), "difference": side(self.difference),
               "mcnemar": self.mcnemar.as_dict(),
               "noise_floor": {k: {first: a.as_dict(), second: b.as_dict()} for k, (a, b) in self.noise_floor.items()},
               "label_mass": {name: side["label_mass"].as_dict() if "label_mass" in side else None
                              for name, side in ((first, self.base), (second, self.other))}}
        if self.scaled_difference:
            out["temperature_scaled"] = {first: side(self.scaled_base), second: side(self.scaled_other),
                                         "difference": side(self.scaled_difference)}
        return out


def _ci(i: Interval | Difference) -> str:
    return f"[{i.lo:.3f}, {i.hi:.3f}]"


def paired_stats(base: EvalResult, other: EvalResult, n_resamples: int = N_RESAMPLES, seed: int = 0) -> PairedStats:
    """`PairedStats` of two evaluations of the same examples (the same ids in the same order)."""
    if [ex.id for ex in base.examples] != [ex.id for ex in other.examples]:
        raise UserError("the two evaluations cover different examples; a paired comparison needs the same ones "
                        "(same data, split, n and seed)")
    labels, n_bins = base.labels, base.metrics.n_bins
    a, b, d = paired_differences(base.probs, other.probs, labels, n_bins, n_resamples, seed)
    if base.label_mass is not None and other.label_mass is not None:
        counts = resample_counts(base.n, n_resamples, seed)
        a["label_mass"] = mean_interval(base.label_mass, counts)
        b["label_mass"] = mean_interval(other.label_mass, counts)
        d["label_mass"] = paired_mean_difference(base.label_mass, other.label_mass, counts)
    floors = [r.noise_floor(seed) for r in (base, other)]
    stats = PairedStats(n=base.n, n_resamples=n_resamples, seed=seed, base=a, other=b, difference=d,
                        mcnemar=mcnemar(base.probs.argmax(1) == labels, other.probs.argmax(1) == labels),
                        noise_floor={k: (floors[0][k], floors[1][k]) for k in floors[0]})
    sa, sb = base.temperature_scaled_probs, other.temperature_scaled_probs
    if sa is not None and sb is not None:
        a, b, d = paired_differences(sa, sb, labels, n_bins, n_resamples, seed)
        stats.scaled_base, stats.scaled_other, stats.scaled_difference = (
            {k: x[k] for k in SCALED} for x in (a, b, d))
    return stats


def compare_results(setup: Setup, drop: Sequence[int], config: EvalConfig | None = None, base: Sequence[int] = (),
                    progress: StageProgress | None = None, names: tuple[str, str] = NAMES,
                    partial: Callable[[str, PartialResult], None] | None = None) -> ResultComparison:
    """Evaluate ``config``'s sample under ``base`` and under ``drop`` (once, when they are the same mask).

    ``partial`` gets each side's name and its examples scored so far, while that side is computed.
    """
    config = config or EvalConfig()
    drop = validate_mask(drop, setup.lm.num_layers)
    base = validate_mask(base, setup.lm.num_layers)

    def stage(name: str):
        return (lambda done, total: progress(name, done, total)) if progress else None

    def part(name: str):
        return (lambda p: partial(name, p)) if partial else None

    first = evaluate(setup, replace(config, drop=base), stage(names[0]), part(names[0]))
    second = first if drop == base else evaluate(setup, replace(config, drop=drop), stage(names[1]), part(names[1]))
    return ResultComparison(first, second, names)


def parse_seeds(raw: str) -> list[int]:
    """``"0,1,2"`` -> [0, 1, 2], with a message naming what is wrong otherwise."""
    try:
        seeds = [int(x) for x in raw.split(",") if x.strip()]
    except ValueError:
        raise UserError(f"seeds are whole numbers separated by commas, e.g. 0,1,2 (got '{raw}')") from None
    if len(seeds) < 2 or len(set(seeds)) != len(seeds):
        raise UserError(f"give at least two different seeds, e.g. 0,1,2 (got '{raw}')")
    return seeds


def across_prompt_seeds(setup: Setup, drop: Sequence[int], seeds: Sequence[int], config: EvalConfig | None = None,
                        base: Sequence[int] = (), progress: StageProgress | None = None) -> pd.DataFrame:
    """One row per demonstration draw (the prompt's seed): each metric under ``drop``, and its change from ``base``.

    Only few-shot and chat prompts draw demonstrations, so a zero-shot prompt (or no shots) is refused.
    The same examples are evaluated under every draw, so the spread is the prompt's alone.
    """
    if setup.prompt.style == "zero-shot" or setup.prompt.shots == 0:
        raise UserError("prompt seeds change which demonstrations a few-shot or chat prompt shows; this prompt "
                        "has none (use the few-shot or chat style with at least one shot)")
    rows = []
    for i, seed in enumerate(seeds):
        def stage(what: str, done: float, total: int, i: int = i, seed: int = seed) -> None:
            if progress:
                progress(f"prompt seed {seed} ({i + 1} of {len(seeds)}): {what}", done, total)
        c = compare_results(replace(setup, prompt=replace(setup.prompt, seed=seed)), drop, config, base, stage)
        row: dict[str, float] = {"prompt_seed": seed, **{k: getattr(c.other.metrics, k) for k in CALIBRATION}}
        if not c.same_mask:
            row.update({f"{k}_change": getattr(c.other.metrics, k) - getattr(c.base.metrics, k) for k in CALIBRATION})
        rows.append(row)
    return pd.DataFrame(rows)


def seed_spread(table: pd.DataFrame) -> pd.DataFrame:
    """Mean, standard deviation, lowest and highest of every metric column of `across_prompt_seeds`."""
    values = table.drop(columns=["prompt_seed"])
    return pd.DataFrame({"mean": values.mean(), "sd": values.std(ddof=1), "min": values.min(),
                         "max": values.max()})
