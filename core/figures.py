"""Pure functions that turn results into plotly figures (no Streamlit here)."""

from __future__ import annotations

import plotly.graph_objects as go


def reliability_diagram(tables: dict[str, list[dict]]) -> go.Figure:
    """Accuracy per confidence bin for one or more runs (name -> `calibration.reliability_table`)."""
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", name="perfect calibration",
                             line=dict(dash="dash", color="grey")))
    for name, rows in tables.items():
        used = [r for r in rows if r["count"]]
        fig.add_trace(go.Scatter(
            x=[r["mean_confidence"] for r in used], y=[r["accuracy"] for r in used],
            mode="lines+markers", name=name, text=[f"{r['count']} examples" for r in used],
            marker=dict(size=[6 + min(r["count"], 60) / 3 for r in used]),
            hovertemplate="confidence %{x:.2f}<br>accuracy %{y:.2f}<br>%{text}<extra>" + name + "</extra>",
        ))
    fig.update_layout(xaxis_title="confidence (mean in bin)", yaxis_title="accuracy in bin",
                      xaxis_range=[0, 1], yaxis_range=[0, 1.02], height=420, margin=dict(t=30, b=40),
                      legend=dict(orientation="h", y=-0.2))
    return fig
