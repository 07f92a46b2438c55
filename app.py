"""Streamlit entry: navigation and the shared sidebar (model, data, layer mask); the pages draw the views."""

from __future__ import annotations

import os

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import streamlit as st  # noqa: E402

import ui  # noqa: E402
from core.study.prefetch import PREFETCHER  # noqa: E402

st.set_page_config(page_title="Attention pruning explorer", page_icon=":scissors:", layout="wide")

PAGES = [
    st.Page("views/start.py", title="Start here", icon=":material/flag:", default=True),
    st.Page("views/learn.py", title="Learn", icon=":material/school:"),
    st.Page("views/calibration.py", title="Calibration", icon=":material/tune:"),
    st.Page("views/sets.py", title="Prediction sets", icon=":material/checklist:"),
    st.Page("views/explanations.py", title="Explanations", icon=":material/highlight:"),
    st.Page("views/tradeoffs.py", title="Trade-offs", icon=":material/show_chart:"),
]
page = st.navigation(PAGES)

# prefetching of likely next masks pauses while any session's page (and its latency) is computed
with PREFETCHER.foreground():
    ctx = ui.build_context()
    ui.hand_over(ctx)
    ui.banner(ctx)
    # the Prediction sets view's alpha and method are read by other views too: kept while it is not shown
    for key in ("alpha", "conformal_method"):
        if key in st.session_state:
            st.session_state[key] = st.session_state[key]
    page.run()
    ui.after_page(ctx)
