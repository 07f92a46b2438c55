"""Figures are built from result data: their traces carry the numbers they were given."""

from __future__ import annotations

import numpy as np
import pandas as pd

from core.explain.faithfulness import Faithfulness
from core.study.figures import (
    confidence_histogram,
    coverage_alpha_curves,
    faithfulness_curves,
    importance_bars,
    pareto_front,
    pareto_scatter,
    reliability_diagram,
    risk_coverage_curves,
    set_curves,
    set_size_histogram,
    token_heatmap,
    tradeoff_curves,
)
from core.study.sets import CoverageCurve, RiskBand
from core.task import calibration as cal


def test_reliability_diagram_shows_accuracy_and_counts_per_bin() -> None:
    probs = np.array([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.4, 0.6]])
    table = cal.reliability_table(probs, np.array([0, 1, 1, 1]), n_bins=5)
    fig = reliability_diagram({"full": table})
    line, bars = fig.data[1], fig.data[2]
    used = [r for r in table if r["count"]]
    assert list(line.y) == [r["accuracy"] for r in used]
    assert list(bars.y) == [r["count"] for r in table] and sum(bars.y) == 4


def test_heatmap_shares_one_symmetric_scale_and_wraps_long_inputs() -> None:
    names = [f"w{i}" for i in range(15)]
    fig = token_heatmap({"full": (names, np.linspace(-1, 2, 15)), "pruned": (names, np.zeros(15))}, words_per_line=10)
    hm = fig.data[0]
    assert hm.zmin == -2 and hm.zmax == 2 and hm.zmid == 0
    assert len(hm.z) == 4 and list(hm.text[1][:5]) == ["w10", "w11", "w12", "w13", "w14"]


def test_pareto_front_keeps_only_undominated_points() -> None:
    assert pareto_front([0.9, 0.8, 0.85, 0.7], [0.1, 0.3, 0.2, 0.25]) == [1, 2, 0]
    table = pd.DataFrame({"mask": ["none", "1", "1,2"], "dropped": [0, 1, 2], "accuracy": [0.9, 0.88, 0.8],
                          "comprehensiveness": [0.2, 0.25, 0.1]})
    fig = pareto_scatter(table, current="1")
    assert [t.name for t in fig.data] == ["masks evaluated", "Pareto front", "current mask"]
    assert list(fig.data[1].x) == [0.88, 0.9]


def test_curves_carry_their_values() -> None:
    c = Faithfulness([1, 5, 10, 20, 50], 0.9, [0.1, 0.2, 0.3, 0.4, 0.5], [0.5, 0.4, 0.3, 0.2, 0.1])
    fig = faithfulness_curves({"full model": c, "random baseline": c})
    assert list(fig.data[0].y) == c.comprehensiveness_at_k and fig.data[2].line.dash == "dash"
    table = pd.DataFrame({"dropped": [0, 1], "accuracy": [0.8, 0.82], "ece": [0.1, 0.2],
                          "comprehensiveness": [None, None], "sufficiency": [None, None]})
    assert [t.name for t in tradeoff_curves(table).data] == ["accuracy", "ECE"]
    assert list(importance_bars([0.3, 0.1], [1]).data[0].marker.color)[1] != list(
        importance_bars([0.3, 0.1], [1]).data[0].marker.color)[0]
    assert len(confidence_histogram({"a": np.array([0.6, 0.9])}).data) == 1


def test_intervals_become_bands_and_error_bars() -> None:
    probs = np.array([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.4, 0.6]])
    from core.task.uncertainty import banded_reliability_table

    fig = reliability_diagram({"full": banded_reliability_table(probs, np.array([0, 1, 1, 1]), n_bins=5)})
    band = next(t for t in fig.data if "calibrated model" in t.name)
    assert band.error_y.array is not None and all(v >= 0 for v in band.error_y.array)
    table = pd.DataFrame({"dropped": [0, 1], "accuracy": [0.8, 0.82], "accuracy_lo": [0.7, 0.72],
                          "accuracy_hi": [0.88, 0.9], "ece": [0.1, 0.2]})
    traces = tradeoff_curves(table).data
    shaded = [t for t in traces if t.fill == "toself"]
    assert len(shaded) == 1 and list(shaded[0].y) == [0.88, 0.9, 0.72, 0.7]
    points = pd.DataFrame({"mask": ["none", "1"], "dropped": [0, 1], "accuracy": [0.9, 0.8], "accuracy_lo": [0.85, 0.7],
                           "accuracy_hi": [0.95, 0.86], "comprehensiveness": [0.2, 0.1]})
    scatter = pareto_scatter(points).data[0]
    assert list(scatter.error_x.array) == [0.05, 0.06] or np.allclose(scatter.error_x.array, [0.05, 0.06])
    assert scatter.error_y is None or scatter.error_y.array is None


def test_prediction_set_figures_carry_their_values() -> None:
    sizes = set_size_histogram({"full": np.array([1, 1, 2, 0]), "pruned": np.array([2, 2, 2, 1])}, answers=2)
    assert [list(t.y) for t in sizes.data] == [[0.25, 0.5, 0.25], [0, 0.25, 0.75]]
    assert sizes.data[1].name == "pruned (mean 1.75)" and list(sizes.data[0].x) == [0, 1, 2]
    curve = CoverageCurve((0.1, 0.2), (0.91, 0.83), (1.4, 1.1), (0.82, 0.72), (0.96, 0.88), 200, 100, "lac")
    cov = coverage_alpha_curves({"full": curve}, alpha=0.1)
    band, line, full = cov.data
    assert list(band.y) == [0.96, 0.88, 0.72, 0.82] and band.fill == "toself" and "100 calibration" in band.name
    assert list(line.y) == [0.9, 0.8] and list(full.y) == [0.91, 0.83] and list(full.customdata) == [1.4, 1.1]
    risk = risk_coverage_curves({"full": RiskBand((0.5, 1.0), (0.05, 0.12), (0.01, 0.08), (0.1, 0.17), 200, 1000)})
    assert list(risk.data[0].y) == [0.1, 0.17, 0.08, 0.01] and list(risk.data[1].y) == [0.05, 0.12]
    table = pd.DataFrame({"dropped": [0, 1], "coverage": [0.9, 0.92], "coverage_lo": [0.85, 0.86],
                          "coverage_hi": [0.95, 0.96], "set_size": [1.1, 1.4], "aurc": [None, None]})
    fig = set_curves(table, alpha=0.1)
    assert [t.name for t in fig.data if t.fill != "toself"] == ["set coverage", "mean set size"]
    assert [a.text for a in fig.layout.annotations][:2] == ["set coverage (higher is better)",
                                                           "mean set size (lower is better)"]
    assert fig.layout.shapes[0].y0 == 0.9 and "1 - alpha = 0.9" in [a.text for a in fig.layout.annotations]
