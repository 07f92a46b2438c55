"""Figures are built from result data: their traces carry the numbers they were given."""

from __future__ import annotations

import numpy as np
import pandas as pd

from core.explain.faithfulness import Faithfulness
from core.study.figures import (
    confidence_histogram,
    faithfulness_curves,
    importance_bars,
    pareto_front,
    pareto_scatter,
    reliability_diagram,
    token_heatmap,
    tradeoff_curves,
)
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
