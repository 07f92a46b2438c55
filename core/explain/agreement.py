"""Agreement between two explanations of one input (full vs pruned model, or two explainers).

* Rationale overlap: each explanation's rationale is its top-k% features (as in faithfulness) among
  those with a positive score, i.e. that support its prediction. With A the reference (the full
  model, or the first explainer) and B the other: precision = |A & B| / |B|, recall = |A & B| / |A|,
  F1 their harmonic mean, IoU = |A & B| / |A | B|. Undefined (None) where a denominator is 0.
* Spearman's rank correlation of all the features' scores; None when either is constant.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
from scipy.stats import spearmanr

from ..errors import UserError
from .faithfulness import rationale_sizes, top_features

DEFAULT_K_PERCENT = 20.0


@dataclass
class Agreement:
    k_percent: float
    size_a: int
    size_b: int
    overlap: int
    precision: float | None
    recall: float | None
    f1: float | None
    iou: float | None
    spearman: float | None

    def as_dict(self) -> dict:
        return asdict(self)


def rationale(scores: Sequence[float], k_percent: float = DEFAULT_K_PERCENT) -> np.ndarray:
    """The top-k% features that have a positive score, as a boolean mask."""
    scores = np.asarray(scores, dtype=np.float64)
    top = top_features(scores, rationale_sizes(len(scores), [k_percent])[0])
    return top & (scores > 0)


def _ratio(a: int, b: int) -> float | None:
    return a / b if b else None


def agreement(scores_a: Sequence[float], scores_b: Sequence[float], k_percent: float = DEFAULT_K_PERCENT) -> Agreement:
    a, b = np.asarray(scores_a, dtype=np.float64), np.asarray(scores_b, dtype=np.float64)
    if a.shape != b.shape:
        raise UserError(f"the two explanations cover different features ({len(a)} vs {len(b)}); "
                        "compare explanations of the same input at the same granularity")
    if not 0 < k_percent <= 100:
        raise UserError(f"k must be a percentage in (0, 100] (got {k_percent})")
    ra, rb = rationale(a, k_percent), rationale(b, k_percent)
    overlap = int((ra & rb).sum())
    precision, recall = _ratio(overlap, int(rb.sum())), _ratio(overlap, int(ra.sum()))
    f1 = None
    if precision is not None and recall is not None:
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    rho = None
    if len(a) > 1 and np.ptp(a) > 0 and np.ptp(b) > 0:
        rho = float(spearmanr(a, b).statistic)
    return Agreement(k_percent=k_percent, size_a=int(ra.sum()), size_b=int(rb.sum()), overlap=overlap,
                     precision=precision, recall=recall, f1=f1, iou=_ratio(overlap, int((ra | rb).sum())),
                     spearman=rho)
