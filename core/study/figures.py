"""Pure functions that turn results into plotly figures (no Streamlit here).

Colours are fixed per role so that every view reads the same way: the full model is blue, the
pruned model orange, the random baseline grey. Attribution heatmaps use one diverging scale centred
on zero, shared by every row of a figure.

Metric titles and directions ("ECE (lower is better)") come from `core.metrics.METRICS`, never from here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from ..explain.faithfulness import Faithfulness
from ..metrics import FAITHFULNESS, METRICS, metric
from .sets import CoverageCurve, RiskBand

FULL, PRUNED, RANDOM, EXTRA = "#3b5bdb", "#f08c00", "#868e96", "#2b8a3e"
PALETTE = [FULL, PRUNED, EXTRA, "#ae3ec9", "#e03131"]
LAYOUT = dict(margin=dict(t=40, b=40, l=50, r=20), legend=dict(orientation="h", y=-0.18), template="plotly_white")


def _colour(i: int) -> str:
    return PALETTE[i % len(PALETTE)]


def _rgba(colour: str, alpha: float) -> str:
    r, g, b = (int(colour[i:i + 2], 16) for i in (1, 3, 5))
    return f"rgba({r},{g},{b},{alpha})"


def reliability_diagram(tables: Mapping[str, Sequence[dict]]) -> go.Figure:
    """Accuracy per confidence bin for one or more runs, with each bin's example count as bars below.

    Rows that carry ``band_lower`` / ``band_upper`` (Bröcker & Smith consistency bands) get a bar on the
    diagonal at the bin's mean confidence: where a perfectly calibrated model's accuracy would fall in
    95% of samples of that bin's size. A point outside its bar is miscalibrated beyond noise.
    """
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, row_heights=[0.72, 0.28], vertical_spacing=0.06)
    fig.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", name="perfect calibration",
                             line=dict(dash="dash", color="grey")), row=1, col=1)
    for i, (name, rows) in enumerate(tables.items()):
        used = [r for r in rows if r["count"]]
        colour = _colour(i)
        banded = [r for r in used if r.get("band_lower") is not None]
        if banded:
            mc = np.array([r["mean_confidence"] for r in banded])
            fig.add_trace(go.Scatter(
                x=mc, y=mc, mode="markers", marker=dict(size=2, color=_rgba(colour, 0.5)),
                name=f"{name}: 95% range of a calibrated model", legendgroup=name,
                error_y=dict(type="data", symmetric=False,
                             array=np.array([r["band_upper"] for r in banded]) - mc,
                             arrayminus=mc - np.array([r["band_lower"] for r in banded]),
                             color=_rgba(colour, 0.45), thickness=6, width=0),
                hovertemplate="a calibrated model: %{y:.2f} (95% range shown)<extra>" + name + "</extra>",
            ), row=1, col=1)
        fig.add_trace(go.Scatter(
            x=[r["mean_confidence"] for r in used], y=[r["accuracy"] for r in used], mode="lines+markers",
            name=name, line=dict(color=colour), text=[f"{r['count']} examples" for r in used],
            hovertemplate="confidence %{x:.2f}<br>accuracy %{y:.2f}<br>%{text}<extra>" + name + "</extra>",
        ), row=1, col=1)
        fig.add_trace(go.Bar(
            x=[(r["bin_lower"] + r["bin_upper"]) / 2 for r in rows], y=[r["count"] for r in rows],
            width=[(r["bin_upper"] - r["bin_lower"]) * 0.45 for r in rows], name=f"{name}: examples per bin",
            marker_color=colour, opacity=0.6, showlegend=False, text=[r["count"] or "" for r in rows],
            textposition="outside", hovertemplate="bin %{x:.2f}: %{y} examples<extra>" + name + "</extra>",
        ), row=2, col=1)
    fig.update_layout(**LAYOUT, height=500, barmode="group", title="Reliability diagram")
    fig.update_xaxes(range=[0, 1], row=1, col=1)
    fig.update_xaxes(title_text="confidence (mean in bin)", range=[0, 1], row=2, col=1)
    fig.update_yaxes(title_text="accuracy in bin", range=[0, 1.02], row=1, col=1)
    fig.update_yaxes(title_text="examples", row=2, col=1)
    return fig


def confidence_histogram(confidences: Mapping[str, np.ndarray], bins: int = 15) -> go.Figure:
    """How confident each run is: histograms of the top answer's probability, overlaid."""
    fig = go.Figure()
    for i, (name, conf) in enumerate(confidences.items()):
        fig.add_trace(go.Histogram(x=np.asarray(conf), name=name, xbins=dict(start=0, end=1.0001, size=1 / bins),
                                   marker_color=_colour(i), opacity=0.6))
    fig.update_layout(**LAYOUT, barmode="overlay", height=320, title="Confidence of the answers",
                      xaxis_title="confidence", yaxis_title="examples", xaxis_range=[0, 1])
    return fig


def _wrap(names: Sequence[str], width: int) -> list[list[int]]:
    return [list(range(i, min(i + width, len(names)))) for i in range(0, len(names), width)]


def token_heatmap(rows: Mapping[str, tuple[Sequence[str], Sequence[float]]], words_per_line: int = 12) -> go.Figure:
    """Attributions of one input by several runs, one block of lines per run, on one colour scale.

    ``rows`` maps a run's name to (features, scores). Red supports the run's predicted answer, blue
    opposes it; the scale is symmetric around zero and shared, so colours compare across runs.
    """
    limit = max((float(np.max(np.abs(s))) for _, s in rows.values() if len(s)), default=1.0) or 1.0
    z, text, labels = [], [], []
    for run, (names, scores) in rows.items():
        for line, idx in enumerate(_wrap(names, words_per_line)):
            pad = words_per_line - len(idx)
            z.append([float(scores[i]) for i in idx] + [None] * pad)
            text.append([names[i] for i in idx] + [""] * pad)
            labels.append(f"{run}" if line == 0 else f"{run} ({line + 1})")
    fig = go.Figure(go.Heatmap(
        z=z, text=text, texttemplate="%{text}", y=labels, colorscale="RdBu", reversescale=True, zmid=0,
        zmin=-limit, zmax=limit, xgap=2, ygap=4, hovertemplate="%{text}: %{z:.4f}<extra>%{y}</extra>",
        colorbar=dict(title="support", thickness=12),
    ))
    fig.update_layout(**{**LAYOUT, "margin": dict(t=30, b=10, l=10, r=10)}, height=80 + 46 * len(z),
                      yaxis=dict(autorange="reversed", automargin=True), xaxis=dict(visible=False))
    return fig


def faithfulness_curves(curves: Mapping[str, Faithfulness]) -> go.Figure:
    """Comprehensiveness and sufficiency against k for several runs (random baselines dashed)."""
    fig = make_subplots(rows=1, cols=2, subplot_titles=[METRICS[m].axis_title() for m in FAITHFULNESS])
    for i, (name, c) in enumerate(curves.items()):
        colour = RANDOM if "random" in name else _colour(i)
        dash = "dash" if "random" in name else "solid"
        for col, values in ((1, c.comprehensiveness_at_k), (2, c.sufficiency_at_k)):
            fig.add_trace(go.Scatter(x=c.k_percents, y=values, mode="lines+markers", name=name, legendgroup=name,
                                     showlegend=col == 1, line=dict(color=colour, dash=dash)), row=1, col=col)
    fig.update_xaxes(title_text="k: % of words removed / kept", type="log")
    fig.update_layout(**LAYOUT, height=340)
    return fig


TRADEOFF_METRICS = ("accuracy", "ece", *FAITHFULNESS)
"""The metrics `tradeoff_curves` draws, one subplot each, in this order (keys of `METRICS`)."""


def interval_band(table: pd.DataFrame, x: str, key: str, colour: str) -> go.Scatter | None:
    """A shaded 95% interval from the sweep columns ``<key>_lo`` / ``<key>_hi`` (None when the table has none)."""
    lo, hi = f"{key}_lo", f"{key}_hi"
    if lo not in table or hi not in table:
        return None
    rows = table[[x, lo, hi]].dropna().sort_values(x)
    if rows.empty:
        return None
    return go.Scatter(x=[*rows[x], *rows[x][::-1]], y=[*rows[hi], *rows[lo][::-1]], fill="toself", mode="lines",
                      line=dict(width=0), fillcolor=_rgba(colour, 0.18), hoverinfo="skip",
                      name=f"{METRICS[key].title if key in METRICS else key}: 95% interval", showlegend=False)


def tradeoff_curves(table: pd.DataFrame, x: str = "dropped", current: int | None = None) -> go.Figure:
    """Accuracy, ECE, comprehensiveness and sufficiency against the number of attention layers dropped.

    Where the table has the interval columns of a sweep (``<metric>_lo`` / ``_hi``), each curve is drawn
    in its shaded 95% interval.
    """
    metrics = [m for m in TRADEOFF_METRICS if m in table and table[m].notna().any()]
    fig = make_subplots(rows=1, cols=max(len(metrics), 1), subplot_titles=[METRICS[m].axis_title() for m in metrics])
    for col, m in enumerate(metrics, start=1):
        band = interval_band(table, x, m, _colour(col - 1))
        if band is not None:
            fig.add_trace(band, row=1, col=col)
        fig.add_trace(go.Scatter(x=table[x], y=table[m], mode="lines+markers", name=METRICS[m].title,
                                 line=dict(color=_colour(col - 1)), showlegend=False), row=1, col=col)
        random_col = f"random_{m}"
        if random_col in table and table[random_col].notna().any():
            fig.add_trace(go.Scatter(x=table[x], y=table[random_col], mode="lines", name="random baseline",
                                     line=dict(color=RANDOM, dash="dash"), showlegend=col == 3), row=1, col=col)
        if "ece_temperature_scaled" in table and m == "ece" and table["ece_temperature_scaled"].notna().any():
            fig.add_trace(go.Scatter(x=table[x], y=table["ece_temperature_scaled"], mode="lines+markers",
                                     name=METRICS["ece_temperature_scaled"].title,
                                     line=dict(color=EXTRA, dash="dot")),
                          row=1, col=col)
        if current is not None:
            fig.add_vline(x=current, line=dict(color="black", dash="dot", width=1), row=1, col=col)
    fig.update_xaxes(title_text="attention layers dropped")
    fig.update_layout(**LAYOUT, height=340)
    return fig


SET_TRADEOFF_METRICS = ("coverage", "set_size", "aurc")
"""The prediction-set and abstention metrics `set_curves` draws against the layers dropped."""


def set_curves(table: pd.DataFrame, alpha: float | None = None, x: str = "dropped") -> go.Figure:
    """Set coverage, mean set size and AURC against the number of attention layers dropped, each in its 95%
    band; with ``alpha``, the coverage panel draws the 1 - alpha the sets are calibrated for. A threshold that
    jumps from one mask to the next shows as a step in the set size."""
    metrics = [m for m in SET_TRADEOFF_METRICS if m in table and table[m].notna().any()]
    fig = make_subplots(rows=1, cols=max(len(metrics), 1), subplot_titles=[METRICS[m].axis_title() for m in metrics])
    for col, m in enumerate(metrics, start=1):
        band = interval_band(table, x, m, _colour(col - 1))
        if band is not None:
            fig.add_trace(band, row=1, col=col)
        fig.add_trace(go.Scatter(x=table[x], y=table[m], mode="lines+markers", name=METRICS[m].title,
                                 line=dict(color=_colour(col - 1)), showlegend=False), row=1, col=col)
        if m == "coverage" and alpha is not None:
            fig.add_hline(y=1 - alpha, line=dict(color="black", dash="dot", width=1), row=1, col=col,
                          annotation_text=f"1 - alpha = {1 - alpha:g}", annotation_position="bottom right")
    fig.update_xaxes(title_text="attention layers dropped")
    fig.update_layout(**LAYOUT, height=340, title="Prediction sets and abstention")
    return fig


def set_size_histogram(sizes: Mapping[str, np.ndarray], answers: int) -> go.Figure:
    """The share of test examples whose prediction set holds 0, 1, ..., ``answers`` answers, per run, side by side."""
    fig = go.Figure()
    x = list(range(answers + 1))
    for i, (name, s) in enumerate(sizes.items()):
        s = np.asarray(s)
        share = [float((s == k).mean()) for k in x]
        fig.add_trace(go.Bar(x=x, y=share, name=f"{name} (mean {s.mean():.2f})", marker_color=_colour(i),
                             text=[f"{v:.0%}" if v else "" for v in share], textposition="outside",
                             hovertemplate="%{x} answers: %{y:.1%} of the examples<extra>" + name + "</extra>"))
    fig.update_layout(**LAYOUT, barmode="group", height=340, title="Prediction set sizes",
                      xaxis=dict(title="answers in the set", tickmode="array", tickvals=x),
                      yaxis=dict(title="share of test examples", tickformat=".0%", range=[0, 1.1]))
    return fig


def coverage_alpha_curves(curves: Mapping[str, CoverageCurve], alpha: float | None = None) -> go.Figure:
    """Test coverage against alpha per run, with the 1 - alpha line and the band where an exchangeable model's
    coverage of these test examples falls in 95% of draws (the first run's: it depends only on the counts)."""
    fig = go.Figure()
    first = next(iter(curves.values()), None)
    if first is not None:
        a = list(first.alphas)
        fig.add_trace(go.Scatter(x=[*a, *a[::-1]], y=[*first.band_hi, *first.band_lo[::-1]], fill="toself",
                                 mode="lines", line=dict(width=0), fillcolor=_rgba(RANDOM, 0.25), hoverinfo="skip",
                                 name=f"95% band: {first.n_cal} calibration, {first.n} test examples"))
        fig.add_trace(go.Scatter(x=a, y=[1 - v for v in a], mode="lines", name="1 - alpha",
                                 line=dict(color="black", dash="dash")))
    for i, (name, c) in enumerate(curves.items()):
        fig.add_trace(go.Scatter(x=list(c.alphas), y=list(c.coverage), mode="lines+markers", name=name,
                                 line=dict(color=_colour(i)), customdata=list(c.set_size),
                                 hovertemplate="alpha %{x:.2f}: coverage %{y:.3f}, mean set size %{customdata:.2f}"
                                               "<extra>" + name + "</extra>"))
    if alpha is not None:
        fig.add_vline(x=alpha, line=dict(color="grey", dash="dot", width=1))
    fig.update_layout(**LAYOUT, height=360, title="Coverage against alpha", xaxis_title="alpha (miscoverage)",
                      yaxis_title=METRICS["coverage"].axis_title())
    return fig


def risk_coverage_curves(bands: Mapping[str, RiskBand]) -> go.Figure:
    """Selective risk against coverage per run (most confident answered first), each in its 95% bootstrap band."""
    fig = go.Figure()
    for i, (name, b) in enumerate(bands.items()):
        c = list(b.coverage)
        fig.add_trace(go.Scatter(x=[*c, *c[::-1]], y=[*b.hi, *b.lo[::-1]], fill="toself", mode="lines",
                                 line=dict(width=0), fillcolor=_rgba(_colour(i), 0.18), hoverinfo="skip",
                                 name=f"{name}: 95% band", showlegend=False))
        fig.add_trace(go.Scatter(x=c, y=list(b.risk), mode="lines", name=name, line=dict(color=_colour(i)),
                                 hovertemplate="answering %{x:.0%}: %{y:.1%} wrong<extra>" + name + "</extra>"))
    fig.update_layout(**LAYOUT, height=360, title="Risk against coverage",
                      xaxis=dict(title="coverage: share of examples answered, most confident first", tickformat=".0%",
                                 range=[0, 1]),
                      yaxis=dict(title="selective risk: share of those answered wrongly (lower is better)",
                                 tickformat=".0%", rangemode="tozero"))
    return fig


def study_curves(table: pd.DataFrame, metrics: Sequence[str] = TRADEOFF_METRICS) -> go.Figure:
    """A study grid's curves: one row of panels per metric, one column per dataset, one line (with its
    shaded 95% interval) per model, strategy, explainer (and healed or not), against the number of layers dropped."""
    metrics = [m for m in metrics if m in table and table[m].notna().any()]
    datasets = list(dict.fromkeys(table["dataset"]))
    fig = make_subplots(rows=max(len(metrics), 1), cols=max(len(datasets), 1), shared_xaxes=True,
                        column_titles=datasets, row_titles=[METRICS[m].title for m in metrics],
                        vertical_spacing=0.06, horizontal_spacing=0.05)
    parts = [c for c in ("model", "strategy", "explainer", "healed")  # healed: a grid with healing's own rows
             if c in table and table[c].astype(str).nunique() > 1] or ["model"]
    lines = list(dict.fromkeys(tuple(str(r[c]) for c in parts) for _, r in table.iterrows()))
    for i, line in enumerate(lines):
        name = " / ".join(v for v in line if v)
        chosen = table[(table[parts].astype(str) == list(line)).all(axis=1)]
        for col, dataset in enumerate(datasets, start=1):
            rows = chosen[chosen["dataset"] == dataset].sort_values("dropped")
            for r, m in enumerate(metrics, start=1):
                if rows[m].isna().all():
                    continue
                band = interval_band(rows, "dropped", m, _colour(i))
                if band is not None:
                    fig.add_trace(band, row=r, col=col)
                fig.add_trace(go.Scatter(x=rows["dropped"], y=rows[m], mode="lines+markers", name=name,
                                         legendgroup=name, line=dict(color=_colour(i)),
                                         showlegend=r == 1 and col == 1), row=r, col=col)
    fig.update_xaxes(title_text="attention layers dropped", row=max(len(metrics), 1))
    fig.update_layout(**{**LAYOUT, "legend": dict(orientation="h", y=-0.08)}, height=260 * max(len(metrics), 1) + 80)
    return fig


def pareto_front(x: Sequence[float], y: Sequence[float]) -> list[int]:
    """Indices of the points no other point beats on both x and y (higher is better), by x.

    For a metric where lower is better, pass its `Metric.oriented` values.
    """
    pts = list(zip(x, y, strict=True))
    front = [i for i, (a, b) in enumerate(pts)
             if not any((c >= a and d >= b) and (c > a or d > b) for c, d in pts)]
    return sorted(front, key=lambda i: pts[i][0])


def pareto_scatter(points: pd.DataFrame, faithfulness: str = "comprehensiveness",
                   current: str | None = None) -> go.Figure:
    """Accuracy against faithfulness for every evaluated mask, the Pareto front drawn, the current mask marked.

    ``points`` has columns ``mask`` (a label), ``dropped``, ``accuracy`` and the faithfulness column
    (a key of `METRICS`). The front follows each metric's direction in `METRICS`: where lower is
    better (sufficiency), it is taken on the negation.
    """
    fig = go.Figure()
    if points.empty:
        fig.update_layout(**LAYOUT, height=380, title="No mask with faithfulness yet")
        return fig
    acc, faith = METRICS["accuracy"], metric(faithfulness)
    y = points[faithfulness].to_numpy(dtype=float)
    front = pareto_front(acc.oriented(points["accuracy"].to_numpy(dtype=float)).tolist(), faith.oriented(y).tolist())
    fig.add_trace(go.Scatter(
        x=points["accuracy"], y=y, mode="markers", name="masks evaluated",
        error_x=_error_bars(points, "accuracy"), error_y=_error_bars(points, faithfulness),
        marker=dict(size=9, color=points["dropped"], colorscale="Viridis", showscale=True,
                    colorbar=dict(title="dropped", thickness=12)),
        text=points["mask"], customdata=points["mask"],
        hovertemplate=f"%{{text}}<br>{acc.title} %{{x:.3f}}<br>{faith.title} %{{y:.3f}}<extra></extra>",
    ))
    fig.add_trace(go.Scatter(x=points["accuracy"].iloc[front], y=y[front], mode="lines", name="Pareto front",
                             line=dict(color="black", dash="dash")))
    if current is not None and (points["mask"] == current).any():
        row = points[points["mask"] == current].iloc[0]
        fig.add_trace(go.Scatter(x=[row["accuracy"]], y=[row[faithfulness]], mode="markers", name="current mask",
                                 marker=dict(size=18, symbol="star", color=PRUNED, line=dict(color="black", width=1))))
    fig.update_layout(**LAYOUT, height=420, xaxis_title=acc.axis_title(), yaxis_title=faith.axis_title())
    return fig


def _error_bars(points: pd.DataFrame, key: str) -> dict | None:
    """Plotly error bars from the 95% interval columns ``<key>_lo`` / ``<key>_hi`` (None without them)."""
    lo, hi = f"{key}_lo", f"{key}_hi"
    if lo not in points or hi not in points or points[lo].isna().all():
        return None
    value = points[key].astype(float)
    return dict(type="data", symmetric=False, array=(points[hi].astype(float) - value).fillna(0).clip(lower=0),
                arrayminus=(value - points[lo].astype(float)).fillna(0).clip(lower=0), color="#adb5bd", thickness=1)


def importance_bars(scores: Sequence[float], dropped: Sequence[int] = ()) -> go.Figure:
    """Each attention layer's importance score; dropped layers in orange."""
    dropped_set = set(dropped)
    fig = go.Figure(go.Bar(
        x=list(range(len(scores))), y=list(scores), marker_color=[PRUNED if i in dropped_set else FULL
                                                                  for i in range(len(scores))],
        hovertemplate="layer %{x}: %{y:.4f}<extra></extra>",
    ))
    fig.update_layout(**LAYOUT, height=260, xaxis_title="attention layer", yaxis_title="1 - cos(x, x + attn(x))",
                      title="Importance of each attention layer (low = redundant)")
    return fig


METHOD_COLOURS = [*PALETTE, "#1098ad", "#5c940d", "#d6336c"]
"""One colour per recalibration method (there are seven), in menu order."""


def repair_curves(table: pd.DataFrame, x: str = "dropped", title: str = "ECE after repair against layers dropped"
                  ) -> go.Figure:
    """ECE against the number of attention layers dropped, unrepaired and after each repair method of a sweep table
    (its ``ece_repaired_<method>`` columns), each line in its shaded 95% interval; the ECE a perfectly calibrated
    model reaches in 95% of samples of this size dotted, when the table has it."""
    from ..task.recalibration import RECALIBRATORS
    from .sweep import repaired_column, repaired_methods

    ece = METRICS["ece"]
    fig = go.Figure()
    menu = list(RECALIBRATORS)
    lines = [("ece", f"{ece.title}, unrepaired", RANDOM)] + [
        (repaired_column("ece", m), f"{ece.title} after {RECALIBRATORS[m].title}",
         METHOD_COLOURS[menu.index(m) % len(METHOD_COLOURS)]) for m in repaired_methods(table)]
    rows = table.sort_values(x)
    for i, (column, name, colour) in enumerate(lines):
        if column not in rows or rows[column].isna().all():
            continue
        band = interval_band(rows, x, column, colour)
        if band is not None:
            fig.add_trace(band.update(name=f"{name}: 95% interval", legendgroup=name))
        fig.add_trace(go.Scatter(x=rows[x], y=rows[column], mode="lines+markers", name=name, legendgroup=name,
                                 line=dict(color=colour, dash="dash" if i == 0 else "solid")))
    if "ece_noise_q95" in rows and rows["ece_noise_q95"].notna().any():
        fig.add_trace(go.Scatter(x=rows[x], y=rows["ece_noise_q95"], mode="lines", line=dict(color="grey", dash="dot"),
                                 name="ECE a perfectly calibrated model reaches in 95% of samples"))
    fig.update_layout(**LAYOUT, height=380, title=title, xaxis_title="attention layers dropped",
                      yaxis_title=ece.axis_title())
    return fig
