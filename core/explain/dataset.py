"""Explanations and their faithfulness for examples of a data set, through the result cache.

An explanation is cached under the model, the data, the example, the prompt, the attention mask,
the explainer with all its parameters, the granularity and the removal; its ERASER curves under
all of that plus the k values. Faithfulness over a data set also scores the seeded random
explainer on the same examples, so that every figure can be read against "no better than chance".

A text typed by the user is explained the same way, as an `Example` made by `typed_example`.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from ..cache import cache_key
from ..errors import UserError
from ..model.states import record_for
from ..progress import Progress
from ..task.data import Dataset, Example
from ..task.setup import Setup
from .faithfulness import K_PERCENTS, METRIC_VERSION, Faithfulness, faithfulness_many
from .features import GRANULARITIES, Features, replacement_token, text_features
from .methods import DEFAULT_EXPLAINER, EXPLAINER_VERSION, Attribution, explain, resolve_params
from .targets import make_target

RANDOM = "random"
RANDOM_DRAWS = 3
"""Seeds of the random explainer whose faithfulness is averaged into the baseline: one draw is noisy."""


def sampling(explainer: str) -> bool:
    """Whether an explainer draws random samples (so several seeds give several explanations): LIME, Kernel SHAP."""
    return explainer != RANDOM and "seed" in resolve_params(explainer)


@dataclass(frozen=True)
class ExplainConfig:
    explainer: str = DEFAULT_EXPLAINER
    params: tuple[tuple[str, object], ...] = ()
    """Overrides of the explainer's default parameters."""
    granularity: str = "word"
    removal: str = "delete"
    k_percents: tuple[float, ...] = K_PERCENTS

    @classmethod
    def make(cls, explainer: str = DEFAULT_EXPLAINER, params: Mapping[str, object] | None = None,
             **kw: object) -> ExplainConfig:
        return cls(explainer, tuple(sorted((params or {}).items())), **kw)  # type: ignore[arg-type]

    def resolved_params(self) -> dict[str, object]:
        return resolve_params(self.explainer, dict(self.params))

    def validate(self) -> None:
        self.resolved_params()
        if self.granularity not in GRANULARITIES:
            raise UserError(f"unknown granularity '{self.granularity}'; use one of {', '.join(GRANULARITIES)}")
        if not self.k_percents or any(not 0 < k <= 100 for k in self.k_percents):
            raise UserError(f"k values must be percentages in (0, 100] (got {list(self.k_percents)})")


def pick_example(dataset: Dataset, split: str, index: int) -> Example:
    """The ``index``-th example of a split, with a message naming the valid range if there is none."""
    examples = dataset.splits.get(split) or []
    if not 0 <= index < len(examples):
        raise UserError(f"example {index} is out of range: the {split} split of '{dataset.name}' has "
                        f"{len(examples)} examples (0-{len(examples) - 1})" if examples else
                        f"the {split} split of '{dataset.name}' is empty")
    return examples[index]


TYPED_PREFIX = "typed-"
NO_LABEL = -1
"""The label of a typed text: it has none (explanations and faithfulness use the predicted answer only)."""


def typed_example(setup: Setup, text: str) -> Example:
    """A text typed by the user as an `Example` of ``setup``'s data set, to explain like one of its own.

    Its id is ``typed-`` and a hash of the text, so the result cache keeps it apart from every data
    set example and finds it again when the same text is typed. A text longer than the model's input
    window is refused rather than silently cut (a data set's examples are truncated, as scoring does).
    """
    if setup.ds.task == "multiple-choice":
        raise UserError(f"'{setup.ds.name}' is a multiple-choice data set: a typed text has no options to answer "
                        "with; pick one of its examples instead")
    text = text.strip()
    builder = setup.builder()
    try:
        n_tokens = len(text_features(setup.lm.tokenizer, text).ids)
    except UserError as err:  # an empty text: "the input text has no words to explain", as for an example
        raise UserError(f"your own text: {err}") from None
    if n_tokens > builder.max_text_tokens:
        raise UserError(f"the text is {n_tokens} tokens long; at most {builder.max_text_tokens} fit in the input "
                        f"of {setup.lm.name} with this prompt: shorten it")
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]
    return Example(id=f"{TYPED_PREFIX}{digest}", text=text, label=NO_LABEL)


class DatasetExplainer:
    """Explains examples of a setup's data set under one mask and explainer configuration, through the cache.

    ``next_masks``: the masks the caller will explain the same examples under next. Their perturbed inputs are
    the same (sampling is seeded by the input), so the hidden states where each first differs from ``drop`` are
    kept as these are explained, and those explanations start there (`core.model.states`).
    """

    def __init__(self, setup: Setup, drop: Sequence[int] = (), config: ExplainConfig = ExplainConfig(),
                 split: str = "test", next_masks: Sequence[Sequence[int]] = ()) -> None:
        config.validate()
        self.lm, self.dataset, self.split = setup.lm, setup.ds, split
        self.builder = setup.builder(drop)
        self.config, self.cache = config, setup.cache
        self.target = make_target(setup.lm, self.builder, drop, record_for(drop, next_masks))
        self.drop = self.target.drop
        self.replacement = replacement_token(setup.lm.tokenizer, config.removal)

    def features(self, example: Example) -> Features:
        try:
            return text_features(self.lm.tokenizer, example.text, self.config.granularity,
                                 self.builder.max_text_tokens)
        except UserError as err:
            raise UserError(f"example '{example.id}': {err}") from None

    def _key(self, kind: str, example: Example, explainer: str, params: dict, **extra: object) -> str:
        return cache_key(kind, model=self.lm.id, data=self.dataset.fingerprint, split=self.split,
                         example=example.id, prompt=self.builder.describe(), drop=sorted(self.drop),
                         explainer=explainer, params=params, granularity=self.config.granularity,
                         removal=self.config.removal, version=EXPLAINER_VERSION, **extra)

    def _faithfulness_key(self, example: Example, explainer: str, params: dict) -> str:
        return self._key("faithfulness", example, explainer, params, k=list(self.config.k_percents),
                         metric=METRIC_VERSION)

    def _params(self, explainer: str, seed: int | None) -> dict[str, object]:
        """The parameters ``explainer`` runs with here: the configured ones, ``seed`` replacing its seed."""
        params = self.config.resolved_params() if explainer == self.config.explainer else resolve_params(explainer)
        if seed is not None and "seed" in params:
            params = {**params, "seed": seed}
        return params

    def is_cached(self, example: Example, explainer: str | None = None, seed: int | None = None,
                  faithfulness: bool = False) -> bool:
        """Whether `explain` with these arguments would read the cache (nothing to compute); reads no model.

        With ``faithfulness``, the explanation's ERASER curves (`faithfulness`) must be cached too.
        A damaged entry counts as absent, as it does for `explain`.
        """
        if self.cache is None:
            return False
        name = explainer or self.config.explainer
        params = self._params(name, seed)
        if self.cache.load(self._key("explanation", example, name, params), Attribution.from_dict) is None:
            return False
        return not faithfulness or self.cache.load(self._faithfulness_key(example, name, params),
                                                   Faithfulness.from_dict) is not None

    def explain(self, example: Example, explainer: str | None = None, seed: int | None = None
                ) -> tuple[Attribution, bool]:
        """The example's attribution (``explainer`` defaults to the configured one) and whether it was cached.

        ``seed`` replaces the explainer's seed parameter (for explainers that have one).
        """
        name = explainer or self.config.explainer
        params = self._params(name, seed)
        key = self._key("explanation", example, name, params)
        if self.cache is not None and (hit := self.cache.load(key, Attribution.from_dict)) is not None:
            return hit, True
        attribution = explain(self.target, self.features(example), name, params, self.replacement,
                              example.n_options)
        if self.cache is not None:
            self.cache.put(key, attribution.as_dict())
        return attribution, False

    def random_baseline(self, examples: Sequence[Example], draws: int = RANDOM_DRAWS
                        ) -> tuple[list[Faithfulness], bool]:
        """Each example's faithfulness under the random explainer, averaged over seeds 0 .. draws-1; all cached?"""
        runs = [[self.explain(ex, RANDOM, seed) for ex in examples] for seed in range(draws)]
        curves = [self.faithfulness(examples, [a for a, _ in run]) for run in runs]
        return ([Faithfulness.mean(per_example) for per_example in zip(*curves, strict=True)],
                all(hit for run in runs for _, hit in run))

    def faithfulness(self, examples: Sequence[Example], attributions: Sequence[Attribution]) -> list[Faithfulness]:
        """ERASER curves of each attribution, on this explainer's model; cached per example."""
        out: list[Faithfulness | None] = []
        todo: list[int] = []
        keys = []
        for i, (ex, a) in enumerate(zip(examples, attributions, strict=True)):
            key = self._faithfulness_key(ex, a.explainer, a.params)
            keys.append(key)
            hit = self.cache.load(key, Faithfulness.from_dict) if self.cache is not None else None
            out.append(hit)
            if hit is None:
                todo.append(i)
        if todo:
            items = [(self.features(examples[i]), attributions[i].scores, attributions[i].predicted,
                      examples[i].n_options) for i in todo]
            for i, f in zip(todo, faithfulness_many(self.target, items, self.replacement, self.config.k_percents),
                            strict=True):
                out[i] = f
                if self.cache is not None:
                    self.cache.put(keys[i], f.as_dict())
        return [f for f in out if f is not None]


@dataclass
class FaithfulnessResult:
    """Faithfulness of one explainer over examples, with the random baseline on the same examples."""

    explainer: str
    params: dict[str, object]
    granularity: str
    removal: str
    k_percents: list[float]
    example_ids: list[str]
    attributions: list[Attribution]
    curves: list[Faithfulness]
    random_curves: list[Faithfulness]
    seconds: float
    cached: bool
    explain_seconds: list[float] = field(default_factory=list)

    @staticmethod
    def _mean(curves: Sequence[Faithfulness], attr: str) -> list[float]:
        return np.mean([getattr(c, attr) for c in curves], axis=0).tolist() if curves else []

    def summary(self) -> dict:
        """The fields `evaluate --faithfulness --json` adds: AOPC means, per-k means, the random baseline."""
        comp_k, suff_k = self._mean(self.curves, "comprehensiveness_at_k"), self._mean(self.curves, "sufficiency_at_k")
        rcomp_k = self._mean(self.random_curves, "comprehensiveness_at_k")
        rsuff_k = self._mean(self.random_curves, "sufficiency_at_k")
        ks = [str(k) for k in self.k_percents]
        return {
            "explainer": self.explainer,
            "explainer_params": self.params,
            "granularity": self.granularity,
            "removal": self.removal,
            "faithfulness_n": len(self.curves),
            "k_percents": self.k_percents,
            "comprehensiveness": float(np.mean(comp_k)) if comp_k else None,
            "sufficiency": float(np.mean(suff_k)) if suff_k else None,
            "comprehensiveness_at_k": dict(zip(ks, comp_k, strict=True)),
            "sufficiency_at_k": dict(zip(ks, suff_k, strict=True)),
            "random_baseline_comprehensiveness": float(np.mean(rcomp_k)) if rcomp_k else None,
            "random_baseline_sufficiency": float(np.mean(rsuff_k)) if rsuff_k else None,
            "random_baseline_comprehensiveness_at_k": dict(zip(ks, rcomp_k, strict=True)),
            "random_baseline_sufficiency_at_k": dict(zip(ks, rsuff_k, strict=True)),
            "seconds_per_explanation": float(np.mean(self.explain_seconds)) if self.explain_seconds else None,
            "faithfulness_seconds": self.seconds,
            "faithfulness_cached": self.cached,
        }

    def add_to(self, predictions: pd.DataFrame) -> pd.DataFrame:
        """``predictions`` (one row per example, by ``id``) with the explained examples' AOPC scores."""
        rows = {r["id"]: r for r in self.per_example()}
        out = predictions.copy()
        for col in ("comprehensiveness", "sufficiency", "random_comprehensiveness", "random_sufficiency"):
            out[col] = [rows[i][col] if i in rows else None for i in out["id"]]
        return out

    def per_example(self) -> list[dict]:
        """One row per example: its AOPC comprehensiveness and sufficiency, and the random baseline's."""
        return [{"id": i, "comprehensiveness": c.comprehensiveness, "sufficiency": c.sufficiency,
                 "random_comprehensiveness": r.comprehensiveness, "random_sufficiency": r.sufficiency}
                for i, c, r in zip(self.example_ids, self.curves, self.random_curves, strict=True)]


def dataset_faithfulness(explainer: DatasetExplainer, examples: Sequence[Example], progress: Progress | None = None,
                         chunk: int = 8) -> FaithfulnessResult:
    """Explain every example (configured explainer and random), then score both explanations' ERASER curves.

    The random baseline is the mean of `RANDOM_DRAWS` seeded random explanations of each example.

    Work goes in chunks of ``chunk`` examples so progress moves steadily and an interruption keeps
    every finished chunk in the cache.
    """
    start = time.perf_counter()
    cfg = explainer.config
    attributions: list[Attribution] = []
    curves: list[Faithfulness] = []
    random_curves: list[Faithfulness] = []
    seconds: list[float] = []
    all_cached = True
    for lo in range(0, len(examples), chunk):
        part = examples[lo:lo + chunk]
        for ex in part:
            a, hit = explainer.explain(ex)
            attributions.append(a)
            all_cached = all_cached and hit
            if not hit:
                seconds.append(a.seconds)
        curves.extend(explainer.faithfulness(part, attributions[lo:]))
        baseline, rhit = explainer.random_baseline(part)
        random_curves.extend(baseline)
        all_cached = all_cached and rhit
        if progress is not None:
            progress(min(lo + chunk, len(examples)), len(examples))
    return FaithfulnessResult(
        explainer=cfg.explainer, params=cfg.resolved_params(), granularity=cfg.granularity, removal=cfg.removal,
        k_percents=list(cfg.k_percents), example_ids=[ex.id for ex in examples], attributions=attributions,
        curves=curves, random_curves=random_curves, seconds=time.perf_counter() - start, cached=all_cached,
        explain_seconds=seconds or [a.seconds for a in attributions],
    )
