"""Streamlit entry: pick a model and data, switch attention layers off, see accuracy and calibration."""

from __future__ import annotations

import os

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import pandas as pd  # noqa: E402
import streamlit as st  # noqa: E402

from core.cache import ResultCache  # noqa: E402
from core.data import DEFAULT_DATASET, EMBEDDED, load_dataset  # noqa: E402
from core.errors import UserError  # noqa: E402
from core.evaluation import EvalConfig, evaluate  # noqa: E402
from core.figures import reliability_diagram  # noqa: E402
from core.importance import attention_scores, calibration_texts  # noqa: E402
from core.models import DEFAULT_MODEL, PRESETS, load_model  # noqa: E402

st.set_page_config(page_title="Attention pruning explorer", layout="wide")


@st.cache_resource(show_spinner="Loading the model (the first start converts it once)...")
def _model(name: str):
    return load_model(name)


def _run(lm, ds, n: int, drop: tuple[int, ...]):
    bar = st.progress(0.0, text="scoring examples")
    result = evaluate(lm, ds, EvalConfig(n=n, drop=drop), ResultCache(),
                      progress=lambda d, t: bar.progress(d / max(t, 1), text=f"scoring {d}/{t} examples"))
    bar.empty()
    return result


st.sidebar.title("Attention pruning explorer")
offline = [p.name for p in PRESETS if p.available_offline()]
model_name = st.sidebar.selectbox("Model", offline or [DEFAULT_MODEL], key="model")
dataset_name = st.sidebar.selectbox("Dataset", list(EMBEDDED), index=list(EMBEDDED).index(DEFAULT_DATASET),
                                    key="dataset")
n = st.sidebar.slider("Examples", 20, 400, 200, step=20, key="n")

try:
    lm = _model(model_name)
    ds = load_dataset(dataset_name)
    scores = attention_scores(lm, calibration_texts(ds), ResultCache())
except UserError as err:
    st.error(str(err))
    st.stop()

st.sidebar.subheader("Attention layers to drop")
st.sidebar.caption("Importance = 1 - cos(x, x + attn(x)); the lowest are the most redundant.")
k = st.sidebar.number_input("Drop the k most redundant", 0, lm.num_layers, 0, key="k")
default = scores.most_redundant(int(k))
labels = {i: f"layer {i} (score {scores.scores[i]:.4f})" for i in range(lm.num_layers)}
drop = st.sidebar.multiselect("Dropped layers", list(range(lm.num_layers)), default=default,
                              format_func=labels.__getitem__, key=f"drop-{k}")

st.title("What does dropping attention do to accuracy and calibration?")
try:
    full = _run(lm, ds, n, ())
    pruned = _run(lm, ds, n, tuple(sorted(drop))) if drop else None
except UserError as err:
    st.error(str(err))
    st.stop()

cols = st.columns(4)
shown = pruned or full
cols[0].metric("accuracy", f"{shown.metrics.accuracy:.3f}",
               f"{shown.metrics.accuracy - full.metrics.accuracy:+.3f}" if pruned else None)
cols[1].metric("ECE", f"{shown.metrics.ece:.3f}",
               f"{shown.metrics.ece - full.metrics.ece:+.3f}" if pruned else None, delta_color="inverse")
cols[2].metric("Brier", f"{shown.metrics.brier:.3f}",
               f"{shown.metrics.brier - full.metrics.brier:+.3f}" if pruned else None, delta_color="inverse")
cols[3].metric("attention layers kept", f"{lm.num_layers - len(drop)} / {lm.num_layers}")

runs = {"full model": full.reliability}
if pruned:
    runs[f"{len(drop)} attention layers dropped"] = pruned.reliability
st.plotly_chart(reliability_diagram(runs), width="stretch")
table = pd.DataFrame({"full model": full.metrics.as_dict()})
if pruned:
    table["pruned"] = pruned.metrics.as_dict()
    table["difference"] = table["pruned"] - table["full model"]
st.dataframe(table.drop(index="n_bins"), width="stretch")
for w in shown.warnings:
    st.warning(w)
