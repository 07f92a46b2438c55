"""The metrics table: complete for every metric a sweep writes, right about directions and ranges,
and the one source of the titles and directions that figures and the report show."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pandas as pd
import pytest

from core.errors import UserError
from core.explain.faithfulness import Faithfulness
from core.metrics import CALIBRATION, FAITHFULNESS, METRICS, Metric, metric
from core.study.figures import faithfulness_curves, pareto_scatter, tradeoff_curves
from core.study.report import render
from core.study.sweep import COLUMNS, INTERVALS, SET_INTERVALS, interval_columns
from core.task import calibration as cal
from core.task import conformal, selective

NOT_METRICS = {"dropped", "layers", "temperature", "seconds", "latency_ms", "latency_full_ms", "latency_ratio",
               "latency_ratio_lo", "latency_ratio_hi", "flop_ratio", "right_to_wrong",
               "wrong_to_right", "mcnemar_p", "ece_noise_q95", "qhat",
               *[c for k in (*INTERVALS, *SET_INTERVALS) for c in interval_columns(k)]}


def test_every_metric_column_of_a_sweep_has_one_row() -> None:
    assert set(METRICS) == set(COLUMNS) - NOT_METRICS
    assert {*conformal.KEYS, *selective.KEYS} <= set(COLUMNS)  # a sweep writes every prediction-set metric
    assert set(INTERVALS) | set(SET_INTERVALS) <= set(METRICS)
    assert all(key == m.key for key, m in METRICS.items())
    report_fields = [f.name for f in dataclasses.fields(cal.CalibrationReport) if f.name != "n_bins"]
    assert list(CALIBRATION) == report_fields
    assert set(FAITHFULNESS) | {f"random_{k}" for k in FAITHFULNESS} <= set(METRICS)
    for m in METRICS.values():
        assert m.title and m.meaning and m.interval and m.range[0] < m.range[1]


def test_repair_columns_are_generated_families_of_metrics_in_the_table() -> None:
    """A sweep with repair methods adds, per method, each metric of `REPAIRED` (rows here) after it, with the
    metric's interval columns, and the notes; nothing else, and nothing that clashes with the fixed columns."""
    from core.study.sweep import REPAIR_NOTES, REPAIRED, repair_columns, repaired_column
    from core.task.recalibration import RECALIBRATORS

    assert set(REPAIRED) <= set(INTERVALS)
    for method in RECALIBRATORS:
        for column in repair_columns([method]):
            metrics = [k for k in REPAIRED if column in (repaired_column(k, method),
                                                         *interval_columns(repaired_column(k, method)))]
            notes = [x for x in REPAIR_NOTES if column == repaired_column(x, method)]
            assert len(metrics) + len(notes) == 1, column
    every = repair_columns(list(RECALIBRATORS))
    assert len(every) == len(set(every)) and not set(every) & set(COLUMNS)


def test_heal_columns_are_generated_families_of_metrics_in_the_table() -> None:
    """A sweep with healing adds, per metric of `HEALED` (rows here), the healed model's value with the metric's
    interval columns and its change from the unhealed pruned model; then the flips and notes; nothing else, and
    nothing that clashes with the fixed columns. The healed model's own row (the grid's) adds only the changes."""
    from core.study.sweep import (
        HEAL_FLIPS,
        HEAL_NOTES,
        HEALED,
        HEALED_POINT_COLUMNS,
        heal_columns,
        heal_gain_columns,
        healed_column,
    )

    assert set(HEALED) == set(INTERVALS) | set(SET_INTERVALS) and set(HEALED) <= set(METRICS)
    assert set(HEAL_FLIPS) <= NOT_METRICS
    for column in heal_columns():
        metrics = [k for k in HEALED if column in (healed_column(k), *interval_columns(healed_column(k)),
                                                   *heal_gain_columns(k))]
        notes = [x for x in (*(healed_column(f) for f in HEAL_FLIPS), *HEAL_NOTES) if column == x]
        assert len(metrics) + len(notes) == 1, column
    every = heal_columns()
    assert len(every) == len(set(every)) and not set(every) & set(COLUMNS)
    assert [*(c for k in HEALED for c in heal_gain_columns(k)), *HEAL_NOTES] == HEALED_POINT_COLUMNS


def test_directions_and_ranges() -> None:
    assert {k for k, m in METRICS.items() if not m.lower_is_better} == {
        "accuracy", "comprehensiveness", "random_comprehensiveness", "label_mass", "coverage", "singleton_share",
        "accuracy_at_50", "accuracy_at_80", "accuracy_at_90", "coverage_at_risk"}
    for k in ("set_size", "empty_share", "all_label_share", "class_coverage_gap", "aurc", "eaurc"):
        assert METRICS[k].better == "lower"
    assert METRICS["set_size"].range == (0.0, math.inf)
    for k in ("ece", "adaptive_ece", "smooth_ece", "mce", "brier", "nll", "ece_temperature_scaled", "sufficiency"):
        assert METRICS[k].better == "lower"
    for k in FAITHFULNESS:
        assert METRICS[f"random_{k}"].better == METRICS[k].better and METRICS[k].range == (-1.0, 1.0)
    assert METRICS["nll"].range == (0.0, math.inf) and METRICS["accuracy"].range == (0.0, 1.0)
    assert "Wilson" in METRICS["accuracy"].interval and "inversion" in METRICS["ece"].interval


@pytest.mark.parametrize("k", [2, 3])
def test_brier_range_is_the_multiclass_worst_and_best_case(k: int) -> None:
    wrong = np.eye(k)[[1, 0]]  # certain of the wrong answer, for labels 0 and 1
    right = np.eye(k)[[0, 1]]
    labels = np.array([0, 1])
    assert cal.brier(wrong, labels) == pytest.approx(METRICS["brier"].range[1]) == pytest.approx(2.0)
    assert cal.brier(right, labels) == pytest.approx(METRICS["brier"].range[0])
    assert "twice the binary" in METRICS["brier"].meaning


def test_calibration_metrics_stay_in_their_ranges() -> None:
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(3), size=200)
    report = cal.report(probs, rng.integers(0, 3, size=200)).as_dict()
    for k in CALIBRATION:
        low, high = METRICS[k].range
        assert low <= report[k] <= high, k


def test_verdicts_follow_the_direction_and_the_interval() -> None:
    ece, acc = METRICS["ece"], METRICS["accuracy"]
    assert ece.verdict(0.03, True, 0.004) == "worse, beyond noise (p = 0.004)"
    assert ece.verdict(-0.03, True) == "better, beyond noise"
    assert acc.verdict(-0.03, True, 0.01) == "worse, beyond noise (p = 0.01)"
    assert acc.verdict(-0.03, False, 0.41) == "within noise (p = 0.41)"


def test_helpers() -> None:
    ece, acc = METRICS["ece"], METRICS["accuracy"]
    assert ece.axis_title() == "ECE (lower is better)" and acc.axis_title() == "accuracy (higher is better)"
    assert ece.improved(-0.01) and not ece.improved(0.01) and not ece.improved(0.0)
    assert acc.improved(0.01) and not acc.improved(-0.01)
    assert ece.oriented(0.2) == -0.2 and acc.oriented(0.2) == 0.2
    assert list(ece.oriented(np.array([0.1, 0.3]))) == [-0.1, -0.3]
    assert metric("brier") is METRICS["brier"]
    with pytest.raises(UserError, match="unknown metric 'f1'.*accuracy"):
        metric("f1")
    with pytest.raises(ValueError):
        Metric("x", "x", "sideways", (0, 1), "", "")  # type: ignore[arg-type]


def _subplot_titles(fig) -> list[str]:
    return [a.text for a in fig.layout.annotations]


def test_figures_take_titles_from_the_table() -> None:
    c = Faithfulness([1, 5, 10, 20, 50], 0.9, [0.1, 0.2, 0.3, 0.4, 0.5], [0.5, 0.4, 0.3, 0.2, 0.1])
    assert _subplot_titles(faithfulness_curves({"full model": c})) == [METRICS[k].axis_title() for k in FAITHFULNESS]
    table = pd.DataFrame({"dropped": [0, 1], "accuracy": [0.8, 0.82], "ece": [0.1, 0.2],
                          "ece_temperature_scaled": [0.05, 0.06], "comprehensiveness": [0.3, 0.2],
                          "sufficiency": [0.1, 0.2]})
    fig = tradeoff_curves(table)
    keys = ["accuracy", "ece", "comprehensiveness", "sufficiency"]
    assert _subplot_titles(fig) == [METRICS[k].axis_title() for k in keys]
    assert METRICS["ece_temperature_scaled"].title in [t.name for t in fig.data]
    html = render(table, {})
    assert "Lower is better for ECE and sufficiency" in html and METRICS["brier"].meaning not in html
    assert METRICS["ece"].meaning in html


def test_pareto_front_follows_the_direction_in_the_table(monkeypatch: pytest.MonkeyPatch) -> None:
    # the most accurate mask also has the highest faithfulness value
    points = pd.DataFrame({"mask": ["none", "1", "1,2"], "dropped": [0, 1, 2], "accuracy": [0.9, 0.8, 0.7],
                           "comprehensiveness": [0.3, 0.2, 0.1], "sufficiency": [0.3, 0.2, 0.1]})
    # higher is better: the first mask beats the others on both
    assert list(pareto_scatter(points, "comprehensiveness").data[1].x) == [0.9]
    # lower is better: each trades accuracy for faithfulness, so all are on the front
    fig = pareto_scatter(points, "sufficiency")
    assert list(fig.data[1].x) == [0.7, 0.8, 0.9]
    assert fig.layout.yaxis.title.text == METRICS["sufficiency"].axis_title()
    assert fig.layout.xaxis.title.text == METRICS["accuracy"].axis_title()
    # the direction is read from the table, not from the metric's name
    monkeypatch.setitem(METRICS, "sufficiency", dataclasses.replace(METRICS["sufficiency"], better="higher"))
    assert list(pareto_scatter(points, "sufficiency").data[1].x) == [0.9]
