"""Selective prediction: how well the model's confidence tells its right answers from its wrong ones.

A model that may abstain answers only the examples it is most sure of. Sorting the examples by
confidence (the top answer's probability), highest first, and answering the top k of n gives
coverage k / n and selective risk = the share of those k that are wrong; the risk-coverage curve
traces it for k = 1..n. A pruned model can keep its accuracy yet lose this ranking.

* **Ties.** LLM probabilities saturate, so many examples share a confidence, and a plain sort
  would make the curve depend on the order the examples came in. Examples of equal confidence
  form one block; answering part of a block means answering a uniformly random part of it, so the
  risk at k inside a block is its expectation, ``(E0 + j e / m) / (K0 + j)`` for the j-th unit of a
  block of m units with e errors after K0 units with E0 errors. Every metric below is that
  expectation, computed exactly (no sampling): the same for every input order, and for untied
  confidences the plain sorted value. The curve `risk_coverage` returns has one point per block.
* **AURC** is the mean of the selective risk over the n coverage levels k / n, k = 1..n (Geifman &
  El-Yaniv; ``1 - mapie.metrics.uncertainty.auarc`` for untied confidences). Per block the sum has
  a closed form with harmonic numbers H: ``e + (E0 - e K0 / m) (H(K0 + m) - H(K0))``.
  torch-uncertainty's ``AURC`` instead integrates the same points with the trapezoid rule and
  divides by 1 - 1/n: ``(sum_k r_k - (r_1 + r_n) / 2) / (n - 1)``; fd-shifts reports AURC x 1000.
* **E-AURC** = AURC - the AURC of an oracle that answers every right example before any wrong one,
  with the same normalisation: ``(E - (n - E)(H(n) - H(n - E))) / n`` for E errors. It is 0 for a
  perfect ranking and removes the part of AURC that is only the error rate (Geifman et al. 2019,
  whose ``r + (1 - r) ln(1 - r)`` is this oracle's large-n limit).
* **Accuracy at c coverage**: 1 - the risk at ``k = ceil(c n)`` (torch-uncertainty's
  ``RiskAtxCov`` index), for c = 50, 80 and 90%.
* **Coverage at a target risk**: the largest k / n whose risk is at most the target (default 5%),
  the risk curve not being monotone; 0 when even the most confident example's risk exceeds it
  (torch-uncertainty's ``CovAtxRisk`` returns NaN there). Compared in integers with the target read
  as the decimal written, so a risk of exactly 10 / 200 meets a 5% target.
* **Uncertainty.** A bootstrap resample is a count per example; its copies tie with each other,
  so the block sums above, taken with the counts as weights, are that resample's exact values.
  Every resample is done at once ([resamples, blocks] arrays, no loop). Intervals and paired
  differences (other - base, shared resamples) follow `core.task.bootstrap`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from fractions import Fraction

import numpy as np

from ..errors import UserError
from .bootstrap import PairedReports, ceil_fraction, exact_fraction, interval, paired_reports
from .uncertainty import N_RESAMPLES, Interval, resample_counts

DEFAULT_TARGET = 0.05
COVERAGES = (50, 80, 90)
"""The coverage levels (in %) of the ``accuracy_at_<c>`` metrics."""
KEYS = ("aurc", "eaurc", "accuracy_at_50", "accuracy_at_80", "accuracy_at_90", "coverage_at_risk")
"""The metrics with intervals and paired differences (the `core.metrics.METRICS` keys)."""
_DENOMINATOR = 10**6  # the target risk is read to 6 decimal places, which keeps the integer comparisons in int64


def _inputs(probs: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The confidence and wrongness (1 wrong, 0 right) of each example's top answer."""
    probs, labels = np.asarray(probs, dtype=np.float64), np.asarray(labels)
    if probs.ndim != 2 or len(probs) == 0 or probs.shape[1] == 0:
        raise UserError(f"probabilities must be a non-empty [examples, answers] array (got shape {probs.shape})")
    if not np.isfinite(probs).all():
        raise UserError("probabilities must be finite numbers (found NaN or infinity)")
    if labels.shape != (len(probs),):
        raise UserError(f"there are {len(probs)} rows of probabilities but {labels.size} labels")
    if labels.dtype.kind not in "iu" or labels.min() < 0 or labels.max() >= probs.shape[1]:
        raise UserError(f"labels must be integer answer indices 0-{probs.shape[1] - 1}")
    return probs.max(axis=1), (probs.argmax(axis=1) != labels).astype(np.int64)


def _target(target: float | str | Fraction) -> Fraction:
    t = exact_fraction(target, "the target error").limit_denominator(_DENOMINATOR)
    if not 0 <= t < 1:
        raise UserError(f"the target error must be at least 0 and below 1 (got {target}), e.g. 0.05 for 5%")
    return t


@dataclass(frozen=True)
class _Blocks:
    """The examples sorted by confidence, highest first, cut into blocks of equal confidence."""

    order: np.ndarray
    starts: np.ndarray
    confidence: np.ndarray
    """Each block's confidence."""
    wrong: np.ndarray
    """Per example, in input order."""

    @classmethod
    def of(cls, conf: np.ndarray, wrong: np.ndarray) -> _Blocks:
        order = np.argsort(-conf, kind="stable")
        c = conf[order]
        starts = np.flatnonzero(np.concatenate([[True], c[1:] != c[:-1]]))
        return cls(order, starts, c[starts], wrong)

    def sums(self, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """[R, blocks] units and errors of each block in each row of ``counts`` [R, n] (int64)."""
        w = counts[:, self.order]
        m = np.add.reduceat(w, self.starts, axis=1).astype(np.int64)
        return m, np.add.reduceat(w * self.wrong[self.order].astype(w.dtype), self.starts, axis=1).astype(np.int64)


def _harmonic(n: int) -> np.ndarray:
    return np.concatenate([[0.0], np.cumsum(1.0 / np.arange(1, n + 1))])


def _metrics(m: np.ndarray, e: np.ndarray, n: int, target: Fraction) -> dict[str, np.ndarray]:
    """Every `KEYS` metric of each row of block units ``m`` and errors ``e`` ([R, blocks], int64; n units a row)."""
    k_end, e_end = np.cumsum(m, axis=1), np.cumsum(e, axis=1)
    k0, e0 = k_end - m, e_end - e
    h = _harmonic(n)
    # an empty block (m = 0) has e = 0 and H(K0 + 0) - H(K0) = 0: its term is 0 with m read as 1
    block = e + (e0 - e * k0 / np.maximum(m, 1)) * (h[k_end] - h[k0])
    aurc = block.sum(axis=1) / n
    errors = e_end[:, -1]
    oracle = (errors - (n - errors) * (h[n] - h[n - errors])) / n
    out = {"aurc": aurc, "eaurc": aurc - oracle}
    rows = np.arange(len(m))
    for c in COVERAGES:
        k = ceil_fraction(Fraction(c, 100) * n)
        g = (k_end < k).sum(axis=1)  # the block that holds unit k (the first one to reach it is never empty)
        mg, eg, kg, eg0 = m[rows, g], e[rows, g], k0[rows, g], e0[rows, g]
        out[f"accuracy_at_{c}"] = 1 - (eg0 + (k - kg) * eg / mg) / k
    out["coverage_at_risk"] = _coverage_at_risk(m, e, k0, e0, target) / n
    return {key: out[key] for key in KEYS}


def _coverage_at_risk(m: np.ndarray, e: np.ndarray, k0: np.ndarray, e0: np.ndarray, t: Fraction) -> np.ndarray:
    """Per row, the largest k whose expected risk is at most t = p / q (0 if none), in integers.

    Inside a block the risk at unit K0 + j is ``(E0 + j e / m) / (K0 + j)``, at most t exactly when
    ``j (q e - p m) <= m (p K0 - q E0)``: true at the block's end, or (when the block's own error
    rate e / m exceeds t, so the risk rises through it) up to ``j = floor(m (p K0 - q E0) / (q e - p m))``.
    Only blocks of two units or more can stop inside.
    """
    p, q = t.numerator, t.denominator
    k_end = k0 + m
    end_ok = (m > 0) & (q * (e0 + e) <= p * k_end)
    best = np.where(end_ok, k_end, 0).max(axis=1)
    r, g = np.nonzero((m > 1) & ~end_ok & (q * e > p * m))
    mg, kg = m[r, g], k0[r, g]
    j = np.minimum(mg * (p * kg - q * e0[r, g]) // (q * e[r, g] - p * mg), mg)
    np.maximum.at(best, r[j >= 1], (kg + j)[j >= 1])
    return best.astype(np.float64)


@dataclass(frozen=True)
class RiskCoverage:
    """The risk-coverage curve, one point per block of equal confidence (highest first)."""

    confidence: tuple[float, ...]
    """Answer the examples at least this confident..."""
    coverage: tuple[float, ...]
    """...which are this share of all examples..."""
    risk: tuple[float, ...]
    """...and of which this share is wrong."""

    def as_dict(self) -> dict:
        return asdict(self)


def risk_coverage(probs: np.ndarray, labels: np.ndarray) -> RiskCoverage:
    """The risk-coverage curve with tied confidences merged (the same for every input order)."""
    conf, wrong = _inputs(probs, labels)
    blocks = _Blocks.of(conf, wrong)
    m, e = blocks.sums(np.ones((1, len(conf)), dtype=np.int64))
    k, errors = np.cumsum(m[0]), np.cumsum(e[0])
    return RiskCoverage(tuple(float(c) for c in blocks.confidence), tuple(float(x) for x in k / len(conf)),
                        tuple(float(x) for x in errors / k))


@dataclass(frozen=True)
class SelectiveReport:
    """Selective-prediction metrics of one evaluation (see the module notes)."""

    n: int
    target: float
    error: float
    """The error rate with no abstention (the risk at full coverage)."""
    aurc: float
    eaurc: float
    accuracy_at_50: float
    accuracy_at_80: float
    accuracy_at_90: float
    coverage_at_risk: float

    def as_dict(self) -> dict:
        return asdict(self)


def _report(blocks: _Blocks, n: int, t: Fraction, target: float) -> SelectiveReport:
    m, e = blocks.sums(np.ones((1, n), dtype=np.int64))
    values = {k: float(v[0]) for k, v in _metrics(m, e, n, t).items()}
    return SelectiveReport(n=n, target=target, error=float(blocks.wrong.mean()), **values)


def selective_report(probs: np.ndarray, labels: np.ndarray, target: float | str | Fraction = DEFAULT_TARGET
                     ) -> SelectiveReport:
    """AURC, E-AURC, accuracy at 50/80/90% coverage and the largest coverage with error at most ``target``."""
    t = _target(target)
    conf, wrong = _inputs(probs, labels)
    return _report(_Blocks.of(conf, wrong), len(conf), t, float(target))


def selective_draws(probs: np.ndarray, labels: np.ndarray, counts: np.ndarray,
                    target: float | str | Fraction = DEFAULT_TARGET) -> dict[str, np.ndarray]:
    """Every `KEYS` metric on every resample (a row of ``counts`` [R, n]), vectorised."""
    t = _target(target)
    conf, wrong = _inputs(probs, labels)
    counts = np.asarray(counts)
    if counts.ndim != 2 or counts.shape[1] != len(conf):
        raise UserError(f"the resample counts must be [R, {len(conf)}] (got {counts.shape})")
    totals = counts.sum(axis=1)
    if (totals != totals[0]).any():
        raise UserError("every resample must have the same number of examples")
    return _metrics(*_Blocks.of(conf, wrong).sums(counts), int(totals[0]), t)


def selective_intervals(probs: np.ndarray, labels: np.ndarray, target: float | str | Fraction = DEFAULT_TARGET,
                        n_resamples: int = N_RESAMPLES, seed: int = 0) -> tuple[SelectiveReport, dict[str, Interval]]:
    """The report and each `KEYS` metric's 95% percentile-bootstrap interval."""
    report = selective_report(probs, labels, target)
    draws = selective_draws(probs, labels, resample_counts(report.n, n_resamples, seed), target)
    return report, {k: interval(getattr(report, k), draws[k]) for k in KEYS}


PairedSelective = PairedReports
"""Full against pruned abstention: `PairedReports` of two `SelectiveReport`."""


def paired_selective(probs_base: np.ndarray, probs_other: np.ndarray, labels: np.ndarray,
                     target: float | str | Fraction = DEFAULT_TARGET, n_resamples: int = N_RESAMPLES, seed: int = 0
                     ) -> PairedSelective:
    """Full against pruned on shared resamples of the test examples."""
    if np.shape(probs_base) != np.shape(probs_other):
        raise UserError(f"the two sides have different shapes ({np.shape(probs_base)} vs {np.shape(probs_other)})")
    base, other = selective_report(probs_base, labels, target), selective_report(probs_other, labels, target)
    counts = resample_counts(base.n, n_resamples, seed)
    da, db = selective_draws(probs_base, labels, counts, target), selective_draws(probs_other, labels, counts, target)
    return paired_reports(base, other, da, db, KEYS)


def risk_draws(probs: np.ndarray, labels: np.ndarray, counts: np.ndarray, ks: np.ndarray) -> np.ndarray:
    """[R, len(ks)]: the selective risk of answering the ``k`` most confident units, for each ``k`` in ``ks``
    (1 to n), in each resample (a row of ``counts`` [R, n]); inside a tie block, its exact expectation.

    With ``counts`` all ones this is the risk-coverage curve at coverage ``k / n``; with bootstrap
    counts it gives the curve's band, coverage level by coverage level.
    """
    conf, wrong = _inputs(probs, labels)
    counts, ks = np.asarray(counts), np.asarray(ks, dtype=np.int64)
    n = int(counts.sum(axis=1)[0]) if counts.ndim == 2 and len(counts) else 0
    if counts.ndim != 2 or counts.shape[1] != len(conf) or (counts.sum(axis=1) != n).any():
        raise UserError(f"the resample counts must be [R, {len(conf)}] with the same total in every row "
                        f"(got {counts.shape})")
    if ks.ndim != 1 or len(ks) == 0 or ks.min() < 1 or ks.max() > n:
        raise UserError(f"the numbers of answered examples must be 1 to {n}")
    m, e = _Blocks.of(conf, wrong).sums(counts)
    k_end, e_end = np.cumsum(m, axis=1), np.cumsum(e, axis=1)
    g = np.stack([np.searchsorted(row, ks, side="left") for row in k_end])  # the block that holds unit k
    rows = np.arange(len(m))[:, None]
    mg, eg = m[rows, g], e[rows, g]
    k0, e0 = k_end[rows, g] - mg, e_end[rows, g] - eg
    return (e0 + (ks[None, :] - k0) * eg / mg) / ks[None, :]
