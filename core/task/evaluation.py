"""One evaluation: a model, a dataset split, a prompt and an attention mask -> metrics and predictions.

The expensive part, the candidate logits of each example, is what the cache stores (kind
``scores``); metrics are recomputed from cached logits in milliseconds, so changing the number of
bins never rescores anything. The temperature is fitted on the validation split's logits, scored
under the same mask.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from ..cache import cache_key
from ..model.pruning import validate_mask
from ..progress import Progress
from . import calibration as cal
from .data import Example
from .head import AnswerInput
from .scoring import Scores, score_examples
from .setup import Setup
from .uncertainty import (
    N_RESAMPLES,
    Interval,
    NoiseFloor,
    banded_reliability_table,
    calibration_intervals,
    mean_interval,
    noise_floor,
    resample_counts,
    wilson,
)

SMALL_SAMPLE = 30
"""Below this many examples an evaluation warns how wide its accuracy interval is."""


@dataclass(frozen=True)
class EvalConfig:
    n: int | None = 200
    split: str = "test"
    drop: tuple[int, ...] = ()
    seed: int = 0
    balanced: bool = False
    n_bins: int = cal.DEFAULT_BINS
    val_n: int = 100
    """Validation examples for temperature scaling; 0 turns it off."""
    batch_size: int = 16


@dataclass(frozen=True)
class PartialResult:
    """The test examples scored so far under one mask: a part of the sample spread over the input lengths,
    growing batch by batch (see `core.task.scoring`)."""

    done: int
    total: int
    probs: np.ndarray
    labels: np.ndarray


@dataclass
class EvalResult:
    model: str
    dataset: str
    split: str
    n: int
    dropped_attention_layers: list[int]
    all_attention_dropped: bool
    label_names: list[str]
    metrics: cal.CalibrationReport
    reliability: list[dict]
    temperature: float | None
    metrics_temperature_scaled: cal.CalibrationReport | None
    examples: list[Example]
    logits: np.ndarray
    label_mass: np.ndarray | None
    """Per example, the probability on the answer words before renormalising over them (None for a head)."""
    val_logits: np.ndarray | None
    """The validation examples' candidate logits under the same mask (None without validation examples): what
    the temperature, the conformal threshold and the recalibration methods are fitted on, never the test ones."""
    val_labels: np.ndarray | None
    seconds: float
    cached: bool
    warnings: list[str]
    prompt: dict
    _memo: dict = field(default_factory=dict, repr=False, compare=False)
    """`intervals` and `noise_floor` by their arguments: every panel of a page reads them, computed once."""

    @property
    def probs(self) -> np.ndarray:
        return cal.softmax(self.logits)

    @property
    def val_probs(self) -> np.ndarray | None:
        """The validation examples' probabilities under the same mask (None without validation examples)."""
        return cal.softmax(self.val_logits) if self.val_logits is not None else None

    @property
    def temperature_scaled_probs(self) -> np.ndarray | None:
        """The probabilities after temperature scaling (None when no temperature was fitted)."""
        return cal.softmax(self.logits, self.temperature) if self.temperature is not None else None

    @property
    def labels(self) -> np.ndarray:
        return np.array([ex.label for ex in self.examples], dtype=int)

    def predictions(self) -> pd.DataFrame:
        """One row per example: id, text, label, prediction, confidence, correct, p_<answer>..."""
        probs = self.probs
        pred = probs.argmax(axis=1)
        df = pd.DataFrame({
            "id": [ex.id for ex in self.examples],
            "text": [ex.text for ex in self.examples],
            "label": [self.label_names[ex.label] for ex in self.examples],
            "prediction": [self.label_names[i] for i in pred],
            "confidence": probs.max(axis=1),
            "correct": pred == self.labels,
        })
        for k, name in enumerate(self.label_names):
            df[f"p_{name}"] = probs[:, k]
        return df

    def intervals(self, n_resamples: int = N_RESAMPLES, seed: int = 0) -> dict[str, Interval]:
        """Every metric with its 95% interval (`core.task.uncertainty`), the label mass's included when known."""
        if (key := ("intervals", n_resamples, seed)) in self._memo:
            return self._memo[key]
        out = calibration_intervals(self.probs, self.labels, self.metrics.n_bins, n_resamples, seed)
        if self.label_mass is not None:
            out["label_mass"] = mean_interval(self.label_mass, resample_counts(self.n, n_resamples, seed))
        self._memo[key] = out
        return out

    def noise_floor(self, seed: int = 0) -> dict[str, NoiseFloor]:
        """What a perfectly calibrated model with these confidences would show at this n (binned and smooth ECE)."""
        if (key := ("noise_floor", seed)) not in self._memo:
            self._memo[key] = noise_floor(self.probs, self.labels, self.metrics.n_bins, seed=seed)
        return self._memo[key]

    def summary(self) -> dict:
        """The JSON the CLI writes: metrics at the top level, then their intervals, then the details."""
        out = {
            "model": self.model,
            "dataset": self.dataset,
            "split": self.split,
            "n": self.n,
            "dropped_attention_layers": self.dropped_attention_layers,
            "all_attention_dropped": self.all_attention_dropped,
            **{k: v for k, v in self.metrics.as_dict().items()},
            "label_mass": float(self.label_mass.mean()) if self.label_mass is not None and self.n else None,
            "intervals": {k: v.as_dict() for k, v in self.intervals().items()},
            "noise_floor": {k: v.as_dict() for k, v in self.noise_floor().items()},
            "temperature": self.temperature,
            "temperature_scaled": self.metrics_temperature_scaled.as_dict()
            if self.metrics_temperature_scaled else None,
            "reliability": self.reliability,
            "seconds": self.seconds,
            "cached": self.cached,
            "warnings": self.warnings,
            "prompt": self.prompt,
        }
        return out


def _scores_key(setup: Setup, drop: Sequence[int], builder: AnswerInput, split: str,
                examples: Sequence[Example]) -> str:
    return cache_key("scores", model=setup.lm.id, data=setup.ds.fingerprint, split=split,
                     ids=[ex.id for ex in examples], prompt=builder.describe(), drop=sorted(drop))


def is_cached(setup: Setup, config: EvalConfig) -> bool:
    """Whether `evaluate` would find every score it needs for ``config`` in the cache (nothing to compute)."""
    if setup.cache is None:
        return False
    drop = validate_mask(config.drop, setup.lm.num_layers)
    builder = setup.builder(drop)
    sets = [(config.split, setup.ds.sample(config.split, config.n, seed=config.seed, balanced=config.balanced)[0])]
    if config.val_n > 0 and config.split != "validation" and setup.ds.splits.get("validation"):
        sets.append(("validation", setup.ds.sample("validation", config.val_n, seed=config.seed)[0]))
    return all(setup.cache.get(_scores_key(setup, drop, builder, split, examples)) is not None
               for split, examples in sets)


def score_cached(
    setup: Setup,
    drop: Sequence[int],
    builder: AnswerInput,
    split: str,
    examples: Sequence[Example],
    batch_size: int = 16,
    progress: Progress | None = None,
    partial: Callable[[np.ndarray, np.ndarray], None] | None = None,
) -> Scores:
    """Candidate logits (and label mass) for ``examples`` under mask ``drop``: from the cache, or scored and stored.

    Two threads asking for the same scores at once compute them once (`ResultCache.single_flight`).
    ``partial`` sees the scores as they come when they are computed (see `score_examples`).

    ``builder`` is ``setup.builder(drop)``, passed in because callers scoring many example sets
    under one mask build it once.
    """
    cache = setup.cache
    key = _scores_key(setup, drop, builder, split, examples)
    n = len(examples)

    def well_formed(hit: dict) -> bool:
        mass = hit["label_mass"]
        return (np.array(hit["logits"], dtype=np.float64).shape[:1] == (n,) and isinstance(hit["truncated"], int)
                and (mass is None or np.array(mass, dtype=np.float64).shape == (n,)))

    def cached() -> Scores | None:
        if cache is None or (hit := cache.get(key, ("logits", "truncated", "label_mass"), well_formed)) is None:
            return None
        logits = np.array(hit["logits"], dtype=np.float64).reshape(n, -1)
        mass = None if hit["label_mass"] is None else np.array(hit["label_mass"], dtype=np.float64)
        return Scores(logits, hit["truncated"], 0.0, mass, cached=True)

    if (found := cached()) is not None:
        return found
    with cache.single_flight(key) if cache is not None else contextlib.nullcontext():
        if (found := cached()) is not None:  # another session computed it meanwhile
            return found
        scores = score_examples(setup.lm, builder, examples, drop, batch_size=batch_size, progress=progress,
                                partial=partial)
        if cache is not None:
            cache.put(key, {"logits": scores.logits.tolist(), "truncated": scores.truncated,
                            "seconds": scores.seconds,
                            "label_mass": None if scores.label_mass is None else scores.label_mass.tolist()})
    return scores


def evaluate(setup: Setup, config: EvalConfig = EvalConfig(), progress: Progress | None = None,
             partial: Callable[[PartialResult], None] | None = None) -> EvalResult:
    """Accuracy, calibration and predictions of ``setup`` on ``config``'s sample under ``config.drop``.

    ``partial`` gets the test examples' probabilities as chunks of them are scored (when they are not
    cached), so that a caller can show first numbers before the whole sample is in.
    """
    start = time.perf_counter()
    lm, dataset = setup.lm, setup.ds
    drop = validate_mask(config.drop, lm.num_layers)
    builder = setup.builder(drop)
    examples, warnings = dataset.sample(config.split, config.n, seed=config.seed, balanced=config.balanced)
    warnings = [*dataset.warnings, *warnings]
    if len(drop) == lm.num_layers:
        warnings.append(f"every attention layer ({lm.num_layers}) is dropped: the model sees no context")

    val_examples: list[Example] = []
    if config.val_n > 0 and config.split != "validation" and dataset.splits.get("validation"):
        val_examples, _ = dataset.sample("validation", config.val_n, seed=config.seed)
    total = len(examples) + len(val_examples)

    def test_progress(done: int, _n: int) -> None:
        if progress:
            progress(done, total)

    def val_progress(done: int, _n: int) -> None:
        if progress:
            progress(len(examples) + done, total)

    labels = np.array([ex.label for ex in examples], dtype=int)

    def test_partial(idx: np.ndarray, logits: np.ndarray) -> None:
        partial(PartialResult(len(idx), len(examples), cal.softmax(logits), labels[idx]))

    scores = score_cached(setup, drop, builder, config.split, examples, config.batch_size, test_progress,
                          test_partial if partial is not None else None)
    logits, hit = scores.logits, scores.cached
    if scores.truncated:
        warnings.append(
            f"{scores.truncated} input(s) longer than {builder.max_text_tokens} tokens were truncated to fit"
        )
    probs = cal.softmax(logits)
    temperature, scaled, val_logits, val_labels = None, None, None, None
    if val_examples:
        val = score_cached(setup, drop, builder, "validation", val_examples, config.batch_size, val_progress)
        hit = hit and val.cached
        val_logits, val_labels = val.logits, np.array([ex.label for ex in val_examples], dtype=int)
        temperature = cal.fit_temperature(val_logits, val_labels)
        scaled = cal.report(cal.softmax(logits, temperature), labels, config.n_bins)
    if progress:
        progress(total, total)
    if 0 < len(examples) < SMALL_SAMPLE:
        lo, hi = wilson(int((probs.argmax(axis=1) == labels).sum()), len(examples))
        warnings.append(f"only {len(examples)} examples: accuracy's 95% interval runs from {lo:.2f} to {hi:.2f} "
                        f"({hi - lo:.2f} wide); differences smaller than that are noise")
    return EvalResult(
        model=lm.name,
        dataset=dataset.name,
        split=config.split,
        n=len(examples),
        dropped_attention_layers=list(drop),
        all_attention_dropped=len(drop) == lm.num_layers,
        label_names=list(dataset.label_names),
        metrics=cal.report(probs, labels, config.n_bins),
        reliability=banded_reliability_table(probs, labels, config.n_bins),
        temperature=temperature,
        metrics_temperature_scaled=scaled,
        examples=list(examples),
        logits=logits,
        label_mass=scores.label_mass,
        val_logits=val_logits,
        val_labels=val_labels,
        seconds=time.perf_counter() - start,
        cached=hit,
        warnings=warnings,
        prompt=builder.describe(),
    )
