"""The metrics table: one row per metric, read by every figure, table, difference and report.

Each `Metric` says how the metric is shown (``title``), which way is better (``better``), the values
it can take (``range``), what it means in one plain line (``meaning``) and how its uncertainty is
estimated (``interval``). Front ends never spell out "lower is better" themselves: they ask the
table (`Metric.axis_title`, `Metric.lower_is_better`, `Metric.improved`, `Metric.oriented`).

The keys are the column names a sweep writes (`core.study.sweep.COLUMNS`) and the fields of
`core.task.calibration.CalibrationReport`. The definitions live in `core.task.calibration`,
`core.task.conformal` (prediction sets), `core.task.selective` (abstention) and
`core.explain.faithfulness`; the meanings here describe them and must follow them.

This is a root module: it imports nothing from the rest of ``core`` but `core.errors`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, TypeVar

from .errors import UserError

T = TypeVar("T")

WILSON = "Wilson score; paired difference: bootstrap over examples and exact McNemar"
BOOTSTRAP = "percentile bootstrap over examples; paired for differences"
BCA = ("BCa (bias-corrected and accelerated) bootstrap over examples; paired for differences (chosen by coverage: "
       "docs/uncertainty.md)")
INVERSION = ("for the true calibration error, by test inversion of correctness simulated along the sample's own "
             "miscalibration (0 when consistent with perfect calibration), widened to contain the estimate, which "
             "is biased upwards; paired difference: Berger & Boos's union over the base side's calibration error "
             "(chosen by coverage: docs/uncertainty.md)")


@dataclass(frozen=True)
class Metric:
    """One metric: its display title, which way is better, its range and what it means."""

    key: str
    """The column name, as a sweep or `CalibrationReport` writes it (e.g. ``"ece"``)."""
    title: str
    """How it is shown in figures and tables (e.g. ``"ECE"``)."""
    better: Literal["higher", "lower"]
    range: tuple[float, float]
    """The lowest and highest value it can take (``math.inf`` when unbounded)."""
    meaning: str
    """One plain-language line for a newcomer."""
    interval: str
    """How its confidence interval (and that of a difference between two masks) is computed."""

    def __post_init__(self) -> None:
        if self.better not in ("higher", "lower"):
            raise ValueError(f"metric {self.key!r}: better must be 'higher' or 'lower' (got {self.better!r})")

    @property
    def lower_is_better(self) -> bool:
        return self.better == "lower"

    def axis_title(self) -> str:
        """The title with its direction, for an axis or a subplot: ``"ECE (lower is better)"``."""
        return f"{self.title} ({self.better} is better)"

    def oriented(self, value: T) -> T:
        """``value`` turned so that higher is always better: itself, or its negation when lower is better.

        Works on numbers and on numpy arrays or pandas series; use it to rank, or to take a Pareto front.
        """
        return -value if self.lower_is_better else value  # type: ignore[operator]

    def improved(self, difference: float) -> bool:
        """Whether a change of ``difference`` (new - old) is an improvement; no change is not one."""
        return self.oriented(difference) > 0

    def verdict(self, difference: float, beyond_noise: bool, p_value: float | None = None) -> str:
        """A paired difference (new - old) in plain words: ``"worse, beyond noise (p = 0.003)"`` or
        ``"within noise (p = 0.41)"``; beyond noise means its 95% interval excludes 0."""
        p = f" (p = {p_value:.2g})" if p_value is not None else ""
        if not beyond_noise:
            return f"within noise{p}"
        return f"{'better' if self.improved(difference) else 'worse'}, beyond noise{p}"


SETS_BOOTSTRAP = ("percentile bootstrap over test examples, the conformal threshold recalibrated on a bootstrap "
                  "resample of the validation split in each resample; paired for differences; stretched to contain "
                  "the estimate")
SELECTIVE_BOOTSTRAP = ("percentile bootstrap over examples (tied confidences merged); paired for differences; "
                       "stretched to contain the estimate")

METRICS: dict[str, Metric] = {m.key: m for m in (
    Metric("accuracy", "accuracy", "higher", (0.0, 1.0),
           "The share of examples whose most probable answer is the correct one.", WILSON),
    Metric("ece", "ECE", "lower", (0.0, 1.0),
           "Expected calibration error: the gap between confidence and accuracy in 15 equal-width confidence "
           "bins (by default), averaged with each bin weighted by its share of examples; 0 means the model is "
           "exactly as sure as it is right.", INVERSION),
    Metric("adaptive_ece", "adaptive ECE", "lower", (0.0, 1.0),
           "ECE with equal-mass bins (each holds the same number of examples, 15 bins by default), so no bin "
           "is nearly empty when the answers bunch up at high confidence.", INVERSION),
    Metric("mce", "MCE", "lower", (0.0, 1.0),
           "Maximum calibration error: the largest gap between confidence and accuracy in any non-empty "
           "equal-width bin (the worst bin, however few examples it holds).", INVERSION),
    Metric("smooth_ece", "smooth ECE", "lower", (0.0, 1.0),
           "Smooth ECE (Błasiok & Nakkiran 2023): the calibration gap measured without bins, by kernel smoothing "
           "with a bandwidth chosen from the data; it does not jump when one example crosses a bin edge.",
           INVERSION),
    Metric("brier", "Brier score", "lower", (0.0, 2.0),
           "The mean over examples of the sum over answers of (probability - 1 if correct else 0)^2: 0 is "
           "certain and right, 2 certain and wrong. This multi-class form is twice the binary Brier score "
           "most papers report for two classes.", BCA),
    Metric("nll", "NLL", "lower", (0.0, math.inf),
           "Negative log-likelihood: the mean of -log(probability given to the correct answer); 0 is certain "
           "and right, and it grows without bound when a confident answer is wrong.", BCA),
    Metric("label_mass", "probability on the answers", "higher", (0.0, 1.0),
           "How much probability the model puts on the candidate answer words before they are renormalised "
           "against each other (averaged over examples): a model drifting off the answer set shows it here, "
           "not in its confidence.", BOOTSTRAP),
    Metric("ece_temperature_scaled", "ECE after temperature scaling", "lower", (0.0, 1.0),
           "ECE once the logits are divided by one temperature, fitted on validation examples for each mask "
           "to minimise NLL: the miscalibration that a single rescaling of confidence cannot repair.",
           INVERSION),
    Metric("comprehensiveness", "comprehensiveness", "higher", (-1.0, 1.0),
           "ERASER comprehensiveness (AOPC): how much the predicted answer's probability drops when the "
           "explanation's top k% of words are removed, averaged over k = 1, 5, 10, 20, 50% (by default); "
           "high means the highlighted words mattered.", BOOTSTRAP),
    Metric("sufficiency", "sufficiency", "lower", (-1.0, 1.0),
           "ERASER sufficiency (AOPC): how much the predicted answer's probability drops when only the "
           "explanation's top k% of words are kept, averaged over k = 1, 5, 10, 20, 50% (by default); "
           "low means the highlighted words alone were enough.", BOOTSTRAP),
    Metric("random_comprehensiveness", "random-baseline comprehensiveness", "higher", (-1.0, 1.0),
           "Comprehensiveness of a seeded random explanation of the same examples: the floor that a real "
           "explainer should rise above.", BOOTSTRAP),
    Metric("random_sufficiency", "random-baseline sufficiency", "lower", (-1.0, 1.0),
           "Sufficiency of a seeded random explanation of the same examples: the ceiling that a real "
           "explainer should stay below.", BOOTSTRAP),
    Metric("coverage", "set coverage", "higher", (0.0, 1.0),
           "The share of test examples whose conformal prediction set holds the correct answer, the threshold "
           "calibrated on validation for a miscoverage alpha (0.1 by default). Split conformal keeps it near "
           "1 - alpha for any model, so a worse model shows larger sets rather than lower coverage.", SETS_BOOTSTRAP),
    Metric("set_size", "mean set size", "lower", (0.0, math.inf),
           "The mean number of answers in a conformal prediction set (at most the number offered): how many "
           "answers the model must keep to hold the correct one 1 - alpha of the time.", SETS_BOOTSTRAP),
    Metric("singleton_share", "singleton sets", "higher", (0.0, 1.0),
           "The share of conformal prediction sets that hold exactly one answer: examples on which the model "
           "commits to one answer with the coverage guarantee.", SETS_BOOTSTRAP),
    Metric("empty_share", "empty sets", "lower", (0.0, 1.0),
           "The share of conformal prediction sets with no answer at all; LAC and the randomised methods make "
           "them to keep coverage down to 1 - alpha, and each says nothing about the example.", SETS_BOOTSTRAP),
    Metric("all_label_share", "all-answer sets", "lower", (0.0, 1.0),
           "The share of conformal prediction sets that hold every offered answer: the model does not know, "
           "and says so.", SETS_BOOTSTRAP),
    Metric("class_coverage_gap", "class-conditional coverage gap", "lower", (0.0, 1.0),
           "The mean, over the correct answers, of how far the set coverage among the examples with that answer "
           "lies from 1 - alpha (Ding et al. 2023): 0 when the sets are equally reliable whatever the answer.",
           SETS_BOOTSTRAP),
    Metric("aurc", "AURC", "lower", (0.0, 1.0),
           "Area under the risk-coverage curve: answering only the k examples it is most confident about, the "
           "share of those that are wrong, averaged over k = 1..n; low when the wrong answers have the lowest "
           "confidence (and when there are few of them).", SELECTIVE_BOOTSTRAP),
    Metric("eaurc", "E-AURC", "lower", (0.0, 1.0),
           "Excess AURC: AURC minus that of an oracle that answers every right example before any wrong one; "
           "0 is a perfect ranking of right above wrong, whatever the accuracy.", SELECTIVE_BOOTSTRAP),
    Metric("accuracy_at_50", "accuracy at 50% coverage", "higher", (0.0, 1.0),
           "The accuracy on the half of the examples the model is most confident about, abstaining on the rest.",
           SELECTIVE_BOOTSTRAP),
    Metric("accuracy_at_80", "accuracy at 80% coverage", "higher", (0.0, 1.0),
           "The accuracy on the 80% of examples the model is most confident about, abstaining on the rest.",
           SELECTIVE_BOOTSTRAP),
    Metric("accuracy_at_90", "accuracy at 90% coverage", "higher", (0.0, 1.0),
           "The accuracy on the 90% of examples the model is most confident about, abstaining on the rest.",
           SELECTIVE_BOOTSTRAP),
    Metric("coverage_at_risk", "coverage at the target error", "higher", (0.0, 1.0),
           "The largest share of examples the model can answer, most confident first, with at most the target "
           "share of them wrong (5% by default); 0 when even its most confident answer misses the target.",
           SELECTIVE_BOOTSTRAP),
)}

CALIBRATION: tuple[str, ...] = ("accuracy", "ece", "adaptive_ece", "smooth_ece", "mce", "brier", "nll")
"""The metrics of one evaluation, in the order of `core.task.calibration.CalibrationReport`."""
FAITHFULNESS: tuple[str, ...] = ("comprehensiveness", "sufficiency")
"""The ERASER faithfulness metrics of an explanation (their random baselines are ``random_<key>``)."""


def metric(key: str) -> Metric:
    """The metric named ``key``, or a `UserError` that lists the known ones."""
    try:
        return METRICS[key]
    except KeyError:
        raise UserError(f"unknown metric {key!r}; known metrics: {', '.join(METRICS)}") from None
