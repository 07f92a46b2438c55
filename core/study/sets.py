"""Prediction sets and abstention of evaluations: one model, or full against pruned on the same examples, as data.

`core.task.conformal` and `core.task.selective` work on probability arrays; this module is where
an `EvalResult` (a mask's evaluation) meets them, so that the CLI, the app, sweeps and the report
all read the same numbers:

* **Calibrated per mask, on validation.** Each side's conformal threshold is fitted on the
  validation examples scored under its own mask (`EvalResult.val_probs`, the examples the
  temperature is fitted on), never on the test examples it is judged on; both sides share the
  same validation examples and both resamplings (`conformal.paired_conformal`). Without a
  validation part (``val_n`` 0, the validation split itself evaluated, or a data set without one)
  there are no prediction sets, and `SetStats.unavailable` says what to do; selective prediction
  needs no validation and is always there.
* **Refusals.** alpha outside (0, 1), too few validation examples for alpha
  (`conformal.check_alpha`) and an unknown method are `UserError`s; `check_settings` refuses them
  before anything is scored.
* **Figures' data.** Each example's set (`set_labels`, `set_sizes`), test coverage over a grid of
  alphas with the band an exchangeable model's coverage falls in (`coverage_curve`), and the
  risk-coverage curve with its bootstrap band (`risk_band`).

The band of `coverage_curve`: with n calibration examples and a continuous score, the coverage of
the calibrated sets is Beta(k, n + 1 - k), k = ceil((n + 1)(1 - alpha)) (Vovk 2012; Angelopoulos
& Bates 2021), and the number of m test examples covered is then beta-binomial(m, k, n + 1 - k).
The band is that distribution's 2.5% and 97.5% quantiles divided by m: where the plotted test
coverage falls in 95% of calibration and test draws. The Beta quantiles alone would describe an
infinite test set and be too narrow for the observed coverage of m examples.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy import stats as sps

from ..errors import UserError
from ..metrics import METRICS
from ..task import conformal, selective
from ..task.bootstrap import exact_fraction
from ..task.evaluation import EvalResult
from ..task.uncertainty import LEVEL, N_RESAMPLES, Difference, Interval, resample_counts

DEFAULT_ALPHA = conformal.DEFAULT_ALPHA
DEFAULT_METHOD = "lac"
SET_KEYS = conformal.KEYS
SELECTIVE_KEYS = selective.KEYS
KEYS = (*SET_KEYS, *SELECTIVE_KEYS)
"""Every prediction-set and selective-prediction metric (keys of `core.metrics.METRICS`)."""
ALPHAS = tuple(round(0.02 * i, 2) for i in range(1, 26))
"""The alphas `coverage_curve` draws by default: 0.02 to 0.5 in steps of 0.02."""


def check_settings(alpha: float | str, method: str, n_cal: int | None = None) -> None:
    """Refuse an unknown method, an alpha outside (0, 1) and, given ``n_cal``, too few calibration examples
    for alpha (`conformal.check_alpha`): before anything is scored."""
    conformal.conformal_method(method)
    if not 0 < exact_fraction(alpha, "the miscoverage alpha") < 1:
        conformal.check_alpha(alpha, 1)  # raises, saying what alpha is
    if n_cal:
        conformal.check_alpha(alpha, n_cal)


def unavailable(result: EvalResult) -> str | None:
    """Why ``result`` has no prediction sets, in words that say what to do (None when it has them)."""
    if result.val_probs is not None and len(result.val_probs):
        return None
    if result.split == "validation":
        return ("the evaluated sample is the validation split itself, and prediction sets are calibrated on "
                "validation examples and judged on others: evaluate the test split")
    return ("prediction sets are calibrated on validation examples scored under the same mask, and this evaluation "
            "has none: evaluate with validation examples (val_n 100, `--val-n 100` on the command line) on a data "
            "set that has a validation split; abstention (selective prediction) needs none")


def _require(result: EvalResult) -> tuple[np.ndarray, np.ndarray]:
    if (why := unavailable(result)) is not None:
        raise UserError(why)
    return result.val_probs, result.val_labels  # type: ignore[return-value]


@dataclass(frozen=True)
class SetStats:
    """Prediction sets and abstention of one evaluation, or of two on the same examples (``other`` set).

    ``base`` / ``other`` hold each metric with its 95% interval, ``difference`` the paired change
    (other - base) with its interval and p-value; the prediction-set keys are there only when
    ``unavailable`` is None. Intervals follow `core.task.conformal` (the threshold recalibrated in
    every resample) and `core.task.selective`.
    """

    alpha: float
    method: str
    target: float
    """The error the coverage-at-risk metric stays under."""
    n: int
    n_cal: int
    """Validation examples each threshold is calibrated on (0: no prediction sets)."""
    n_resamples: int
    seed: int
    base: dict[str, Interval]
    selective_base: selective.SelectiveReport
    sets_base: conformal.SetReport | None = None
    other: dict[str, Interval] | None = None
    difference: dict[str, Difference] | None = None
    selective_other: selective.SelectiveReport | None = None
    sets_other: conformal.SetReport | None = None
    unavailable: str | None = None
    """Why there are no prediction sets (None when there are)."""

    @property
    def paired(self) -> bool:
        return self.other is not None

    @property
    def method_title(self) -> str:
        return conformal.METHODS[self.method].title

    def keys(self, part: str = "all") -> list[str]:
        """The metrics present: ``"sets"``, ``"selective"`` or ``"all"`` of them, in `KEYS` order."""
        wanted = {"sets": SET_KEYS, "selective": SELECTIVE_KEYS, "all": KEYS}[part]
        return [k for k in wanted if k in self.base]

    def verdict(self, key: str) -> str:
        """The change in ``key`` in plain words, e.g. ``"worse, beyond noise (p = 0.003)"``."""
        if self.difference is None:
            raise UserError("one evaluation has no change to judge: compare two masks")
        d = self.difference[key]
        return METRICS[key].verdict(d.value, d.beyond_noise, d.p_value)

    def heading(self, part: str) -> str:
        """The title of a block of the table: what the sets are calibrated on, or what abstention means."""
        if part == "sets":
            return (f"Prediction sets (alpha {self.alpha:g}, {self.method_title}, calibrated on {self.n_cal} "
                    "validation examples)")
        return (f"Abstention (answering only the most confident examples; coverage at risk: at most "
                f"{self.target:.0%} wrong)")

    def table(self, names: tuple[str, str] = ("full model", "pruned"), part: str = "all") -> pd.DataFrame:
        """One row per metric: each side with its interval and, for two evaluations, the change with its paired
        interval, p-value and verdict (one evaluation: its values and intervals, in the first name's columns)."""
        rows = []
        for key in self.keys(part):
            b = self.base[key]
            row = {"metric": METRICS[key].title, names[0]: b.value, f"{names[0]} 95% CI": _ci(b)}
            if self.other is not None and self.difference is not None:
                o, d = self.other[key], self.difference[key]
                row |= {names[1]: o.value, f"{names[1]} 95% CI": _ci(o), "difference": d.value,
                        "difference 95% CI": _ci(d), "p": d.p_value,
                        "verdict": METRICS[key].verdict(d.value, d.beyond_noise)}
            rows.append(row)
        return pd.DataFrame(rows).set_index("metric") if rows else pd.DataFrame()

    def as_json(self, names: tuple[str, str] = ("full", "pruned")) -> dict:
        """``prediction_sets`` (None without a validation part, with ``prediction_sets_unavailable`` saying why)
        and ``selective``: for one evaluation each metric's ``intervals``; for two, each side and the difference,
        as ``python -m core compare --json`` writes them."""
        first, second = names

        def side(d: dict, keys: Sequence[str]) -> dict:
            return {k: d[k].as_dict() for k in keys}

        bootstrap = {"resamples": self.n_resamples, "seed": self.seed, "level": LEVEL}
        out: dict = {"prediction_sets": None, "selective": None}
        for part, keys in (("sets", self.keys("sets")), ("selective", self.keys("selective"))):
            if not keys:
                continue
            if part == "sets":
                assert self.sets_base is not None
                block: dict = {"alpha": self.alpha, "method": self.method, "calibration_n": self.n_cal}
            else:
                block = {"target": self.target}
            if self.other is None or self.difference is None:
                block["intervals"] = side(self.base, keys)
                if part == "sets":
                    block |= {"qhat": self.sets_base.qhat, "size_coverage": self.sets_base.as_dict()["size_coverage"],
                              "class_coverage": self.sets_base.as_dict()["class_coverage"]}
                else:
                    block["error"] = self.selective_base.error
            else:
                block |= {first: side(self.base, keys), second: side(self.other, keys),
                          "difference": side(self.difference, keys)}
                if part == "sets":
                    assert self.sets_other is not None
                    block |= {"qhat": {first: self.sets_base.qhat, second: self.sets_other.qhat},
                              "size_coverage": {first: self.sets_base.as_dict()["size_coverage"],
                                                second: self.sets_other.as_dict()["size_coverage"]}}
                else:
                    assert self.selective_other is not None
                    block["error"] = {first: self.selective_base.error, second: self.selective_other.error}
            block["bootstrap"] = bootstrap
            out["prediction_sets" if part == "sets" else "selective"] = block
        if self.unavailable is not None:
            out["prediction_sets_unavailable"] = self.unavailable
        return out


def _ci(i: Interval | Difference) -> str:
    return f"[{i.lo:.3f}, {i.hi:.3f}]"


def _same_examples(base: EvalResult, other: EvalResult) -> None:
    if [ex.id for ex in base.examples] != [ex.id for ex in other.examples]:
        raise UserError("the two evaluations cover different examples; a paired comparison needs the same ones "
                        "(same data, split, n and seed)")
    if (base.val_labels is None) != (other.val_labels is None) or (
            base.val_labels is not None and not np.array_equal(base.val_labels, other.val_labels)):
        raise UserError("the two evaluations were calibrated on different validation examples; evaluate both "
                        "with the same val_n and seed")


def set_stats(base: EvalResult, other: EvalResult | None = None, alpha: float | str = DEFAULT_ALPHA,
              method: str = DEFAULT_METHOD, n_resamples: int = N_RESAMPLES, seed: int = 0,
              target: float = selective.DEFAULT_TARGET) -> SetStats:
    """`SetStats` of ``base`` alone, or of ``base`` against ``other`` (the same examples, paired resamples).

    A bad alpha or method is refused even when there are no prediction sets to compute.
    """
    check_settings(alpha, method)
    if other is not None:
        _same_examples(base, other)
    labels = base.labels
    why = unavailable(base)
    common = dict(alpha=float(alpha), method=method, target=float(target), n=base.n, n_resamples=n_resamples,
                  seed=seed, unavailable=why)
    if other is None:
        sel, sel_iv = selective.selective_intervals(base.probs, labels, target, n_resamples, seed)
        if why is not None:
            return SetStats(n_cal=0, base=sel_iv, selective_base=sel, **common)
        vp, vl = _require(base)
        sets, sets_iv = conformal.conformal_intervals(vp, vl, base.probs, labels, alpha, method, n_resamples, seed)
        return SetStats(n_cal=len(vl), base=sets_iv | sel_iv, selective_base=sel, sets_base=sets, **common)
    ps = selective.paired_selective(base.probs, other.probs, labels, target, n_resamples, seed)
    a, b, d = dict(ps.base_intervals), dict(ps.other_intervals), dict(ps.differences)
    sets_a = sets_b = None
    n_cal = 0
    if why is None:
        vl = base.val_labels
        pc = conformal.paired_conformal(base.val_probs, other.val_probs, vl, base.probs, other.probs, labels,
                                        alpha, method, n_resamples, seed)
        a, b, d = pc.base_intervals | a, pc.other_intervals | b, pc.differences | d
        sets_a, sets_b, n_cal = pc.base, pc.other, len(vl)
    return SetStats(n_cal=n_cal, base=a, selective_base=ps.base, sets_base=sets_a, other=b, difference=d,
                    selective_other=ps.other, sets_other=sets_b, **common)


# ---------------------------------------------------------------- per example, for tables and figures


def set_masks(result: EvalResult, alpha: float | str = DEFAULT_ALPHA, method: str = DEFAULT_METHOD,
              seed: int = 0) -> np.ndarray:
    """[n, K] bool: each test example's prediction set (calibrated on ``result``'s validation examples)."""
    vp, vl = _require(result)
    return conformal.calibrated_sets(vp, vl, result.probs, alpha, method, seed)[1]


def set_sizes(result: EvalResult, alpha: float | str = DEFAULT_ALPHA, method: str = DEFAULT_METHOD,
              seed: int = 0) -> np.ndarray:
    """[n] int: how many answers each test example's set holds."""
    return set_masks(result, alpha, method, seed).sum(axis=1)


def set_labels(result: EvalResult, alpha: float | str = DEFAULT_ALPHA, method: str = DEFAULT_METHOD,
               seed: int = 0) -> list[tuple[str, ...]]:
    """Each test example's set as answer names, most probable first."""
    sets, probs = set_masks(result, alpha, method, seed), result.probs
    return [tuple(result.label_names[j] for j in np.argsort(-p, kind="stable") if s[j])
            for s, p in zip(sets, probs, strict=True)]


def set_text(labels: Sequence[str]) -> str:
    """A set as it is shown: ``{positive}``, ``{positive, negative}``, ``{}`` (empty)."""
    return "{" + ", ".join(labels) + "}"


@dataclass(frozen=True)
class CoverageCurve:
    """Test coverage of one evaluation's sets over a grid of alphas, with the band of an exchangeable model."""

    alphas: tuple[float, ...]
    coverage: tuple[float, ...]
    set_size: tuple[float, ...]
    band_lo: tuple[float, ...]
    """Where the test coverage of n examples falls in 95% of calibration and test draws (beta-binomial)."""
    band_hi: tuple[float, ...]
    n: int
    n_cal: int
    method: str


def coverage_band(n_cal: int, n: int, alphas: Sequence[float], level: float = LEVEL) -> tuple[np.ndarray, np.ndarray]:
    """The ``level`` band of the test coverage of ``n`` examples with sets calibrated on ``n_cal``, per alpha:
    quantiles of beta-binomial(n, k, n_cal + 1 - k) / n, k = ceil((n_cal + 1)(1 - alpha)) (see the module notes)."""
    ks = np.array([conformal.rank(n_cal, a) for a in alphas])
    if (ks > n_cal).any() or (ks < 1).any():
        raise UserError(f"every alpha must be at least 1/(n + 1) = 1/{n_cal + 1} for {n_cal} calibration examples")
    dist = sps.betabinom(n, ks, n_cal + 1 - ks)
    tail = (1 - level) / 2
    return dist.ppf(tail) / n, dist.ppf(1 - tail) / n


def coverage_curve(result: EvalResult, method: str = DEFAULT_METHOD, alphas: Sequence[float] = ALPHAS,
                   seed: int = 0) -> CoverageCurve:
    """Coverage and mean set size at each alpha of ``alphas`` that the validation examples allow."""
    vp, vl = _require(result)
    kept = [a for a in alphas if conformal.rank(len(vl), a) <= len(vl) and 0 < a < 1]
    if not kept:
        raise UserError(f"{len(vl)} validation examples allow none of the alphas asked for (the smallest allowed "
                        f"is 1/{len(vl) + 1})")
    reports = [conformal.conformal_report(vp, vl, result.probs, result.labels, a, method, seed) for a in kept]
    lo, hi = coverage_band(len(vl), result.n, kept)
    return CoverageCurve(tuple(kept), tuple(r.coverage for r in reports), tuple(r.set_size for r in reports),
                         tuple(float(x) for x in lo), tuple(float(x) for x in hi), result.n, len(vl), method)


@dataclass(frozen=True)
class RiskBand:
    """The risk-coverage curve at a grid of coverages, with its 95% percentile-bootstrap band."""

    coverage: tuple[float, ...]
    risk: tuple[float, ...]
    lo: tuple[float, ...]
    hi: tuple[float, ...]
    n: int
    n_resamples: int


def risk_band(result: EvalResult, points: int = 50, n_resamples: int = N_RESAMPLES, seed: int = 0) -> RiskBand:
    """Selective risk against coverage, at up to ``points`` coverages k/n, each with its band over resamples
    of the test examples (the resamples of every other interval for ``seed``)."""
    n = result.n
    ks = np.unique(np.ceil(np.linspace(1 / points, 1, points) * n).astype(np.int64).clip(1, n))
    probs, labels = result.probs, result.labels
    risk = selective.risk_draws(probs, labels, np.ones((1, n), dtype=np.int64), ks)[0]
    draws = selective.risk_draws(probs, labels, resample_counts(n, n_resamples, seed), ks)
    tail = (1 - LEVEL) / 2
    lo, hi = np.quantile(draws, [tail, 1 - tail], axis=0)
    return RiskBand(tuple(float(x) for x in ks / n), tuple(float(x) for x in risk), tuple(float(x) for x in lo),
                    tuple(float(x) for x in hi), n, n_resamples)


@dataclass
class SetFigures:
    """What the prediction-set figures of two evaluations are drawn from (see `set_figures`)."""

    sizes: dict[str, np.ndarray] = field(default_factory=dict)
    coverage: dict[str, CoverageCurve] = field(default_factory=dict)
    risk: dict[str, RiskBand] = field(default_factory=dict)
    answers: int = 0
    """The number of answers offered (the largest possible set)."""


def set_figures(results: dict[str, EvalResult], alpha: float | str = DEFAULT_ALPHA, method: str = DEFAULT_METHOD,
                seed: int = 0) -> SetFigures:
    """Per named evaluation: its set sizes at ``alpha``, its coverage curve over `ALPHAS` (these two only with a
    validation part) and its risk-coverage band."""
    out = SetFigures()
    for name, r in results.items():
        out.answers = max(out.answers, r.probs.shape[1])
        out.risk[name] = risk_band(r, seed=seed)
        if unavailable(r) is None:
            out.sizes[name] = set_sizes(r, alpha, method, seed)
            out.coverage[name] = coverage_curve(r, method, seed=seed)
    return out
