"""Streamlit glue shared by `app.py` and the views; nothing here computes (results come from `core`).

* `ui.state`: the session's selection (`Context`, which holds the core `Setup`) and its mirror in the URL;
* `ui.sidebar`: the shared sidebar (model and data pickers, the encoder's head, the layer panel, the
  efficiency readout) and `context`, the selection a view draws from;
* `ui.readouts`: the sidebar's readouts of the mask (efficiency, latency after the page, prefetched masks);
* `ui.widgets`: error display, progress bars, charts, tables with downloads and metric tiles;
* `ui.repair`: the Calibration view's Repair section and its overlay on the reliability diagram.
"""

from .sidebar import after_page, apply_mask, banner, build_context, context
from .state import EXPLAINER_SEEDS_RANGE, Context, hand_over, write_url
from .widgets import (
    chart,
    delta_color,
    direction_note,
    guard,
    live_results,
    metrics_row,
    progress_bar,
    sample_size_hint,
    scoring_bar,
    stage_bar,
    table,
    verdict_line,
)

__all__ = [
    "EXPLAINER_SEEDS_RANGE",
    "Context",
    "after_page",
    "apply_mask",
    "banner",
    "build_context",
    "chart",
    "context",
    "delta_color",
    "direction_note",
    "guard",
    "hand_over",
    "live_results",
    "metrics_row",
    "progress_bar",
    "sample_size_hint",
    "scoring_bar",
    "stage_bar",
    "table",
    "verdict_line",
    "write_url",
]
