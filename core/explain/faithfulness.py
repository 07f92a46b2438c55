"""ERASER faithfulness (DeYoung et al. 2020) of an explanation, on the model that it explains.

For an input x, its predicted answer y and the explanation's top-k% features r_k:

* comprehensiveness_k = p(y | x) - p(y | x without r_k)   higher is better: the rationale mattered
* sufficiency_k       = p(y | x) - p(y | r_k only)        lower is better: the rationale was enough

k runs over ``K_PERCENTS``; r_k holds ceil(k% of the features), at least one and at most all. The
AOPC form is the mean over k. The values are not clipped: a negative comprehensiveness means that
removing the "important" words made the model more sure. Ties in scores keep the earlier word first.

Every perturbed input of every example goes to the target in one call, so a whole data set is
scored in batches.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .features import Features
from .targets import Target

K_PERCENTS: tuple[int, ...] = (1, 5, 10, 20, 50)
METRIC_VERSION = 1


def rationale_sizes(n_features: int, k_percents: Sequence[float] = K_PERCENTS) -> list[int]:
    """How many top features make the rationale at each k%: ceil(k% of n), between 1 and n."""
    return [min(n_features, max(1, math.ceil(n_features * k / 100 - 1e-9))) for k in k_percents]


def top_features(scores: Sequence[float], size: int) -> np.ndarray:
    """A boolean mask of the ``size`` highest-scoring features (ties: the earlier one first)."""
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    mask = np.zeros(len(scores), dtype=bool)
    mask[order[:size]] = True
    return mask


@dataclass
class Faithfulness:
    """One explanation's ERASER curves."""

    k_percents: list[float]
    p_full: float
    comprehensiveness_at_k: list[float]
    sufficiency_at_k: list[float]

    @property
    def comprehensiveness(self) -> float:
        """AOPC: the mean of comprehensiveness over k."""
        return float(np.mean(self.comprehensiveness_at_k))

    @property
    def sufficiency(self) -> float:
        return float(np.mean(self.sufficiency_at_k))

    def as_dict(self) -> dict:
        return {"k_percents": self.k_percents, "p_full": self.p_full,
                "comprehensiveness": self.comprehensiveness, "sufficiency": self.sufficiency,
                "comprehensiveness_at_k": self.comprehensiveness_at_k, "sufficiency_at_k": self.sufficiency_at_k}

    @classmethod
    def mean(cls, curves: Sequence[Faithfulness]) -> Faithfulness:
        """The pointwise mean of several explanations' curves of one input (e.g. several random draws)."""
        return cls(list(curves[0].k_percents), curves[0].p_full,
                   np.mean([c.comprehensiveness_at_k for c in curves], axis=0).tolist(),
                   np.mean([c.sufficiency_at_k for c in curves], axis=0).tolist())

    @classmethod
    def from_dict(cls, d: dict) -> Faithfulness:
        return cls(list(d["k_percents"]), float(d["p_full"]), list(d["comprehensiveness_at_k"]),
                   list(d["sufficiency_at_k"]))


def erasure_inputs(features: Features, scores: Sequence[float], replacement: int | None,
                   k_percents: Sequence[float] = K_PERCENTS) -> tuple[list[list[int]], list[list[int]]]:
    """The inputs without each rationale, and with only each rationale, one per k."""
    without, only = [], []
    for size in rationale_sizes(features.n, k_percents):
        top = top_features(scores, size)
        without.append(features.ids_keeping(~top, replacement))
        only.append(features.ids_keeping(top, replacement))
    return without, only


def faithfulness_many(
    target: Target,
    items: Sequence[tuple[Features, Sequence[float], int, int]],
    replacement: int | None = None,
    k_percents: Sequence[float] = K_PERCENTS,
) -> list[Faithfulness]:
    """ERASER curves, scored in one batched call, for many items.

    An item is (features, scores, predicted answer, number of answers offered; 0 for all).
    """
    rows: list[list[int]] = []
    options: list[int] = []
    step, nk = 1 + 2 * len(k_percents), len(k_percents)
    for features, scores, _, n_options in items:
        without, only = erasure_inputs(features, scores, replacement, k_percents)
        rows.extend([list(features.ids), *without, *only])
        options.extend([n_options] * step)
    probs = target.probs(rows, options) if rows else np.zeros((0, target.n_answers))
    out = []
    for i, (_, _, predicted, _) in enumerate(items):
        p = probs[i * step:(i + 1) * step, predicted]
        p_full = float(p[0])
        out.append(Faithfulness(
            k_percents=list(k_percents), p_full=p_full,
            comprehensiveness_at_k=[p_full - float(v) for v in p[1:1 + nk]],
            sufficiency_at_k=[p_full - float(v) for v in p[1 + nk:]],
        ))
    return out


def faithfulness(target: Target, features: Features, scores: Sequence[float], predicted: int,
                 replacement: int | None = None, k_percents: Sequence[float] = K_PERCENTS,
                 n_options: int = 0) -> Faithfulness:
    return faithfulness_many(target, [(features, scores, predicted, n_options)], replacement, k_percents)[0]
