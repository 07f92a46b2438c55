"""Calibration: reliability diagrams, confidence histograms and metrics, full model against pruned."""

import streamlit as st

import ui
from core.study.figures import confidence_histogram, reliability_diagram
from core.task import calibration as cal
from core.task.evaluation import metrics_table

ctx = ui.context()
st.title("Calibration: is the model as sure as it is right?")
st.caption(f"{ctx.lm.name} on {ctx.ds.name}: {ctx.n} test examples, answers by {ctx.answers_by}. "
           "The confidence is the predicted answer's probability"
           + (", renormalised over the candidate answers." if ctx.lm.task != "classifier" else " under the head."))

with ui.guard("the calibration view"):
    # the validation examples that temperature scaling needs are scored only once it is switched on
    scaled = bool(st.session_state.get("temperature", False))
    full = ui.evaluate_with_progress(ctx, (), "full model", scaled)
    pruned = ui.evaluate_with_progress(ctx, ctx.drop, f"{len(ctx.drop)} layers dropped", scaled) if ctx.drop else None
    pruned_name = f"{len(ctx.drop)} attention layers dropped"
    ui.metrics_row(full.metrics, pruned.metrics if pruned else None, ctx.lm.num_layers, len(ctx.drop))
    scaled = st.toggle("Temperature scaling (fitted on 100 validation examples, per mask)", key="temperature",
                       help="divides the logits by one number T chosen to minimise validation NLL; "
                            "accuracy is unchanged, confidence is repaired")
    runs = {"full model": full} | ({pruned_name: pruned} if pruned else {})
    tables = {name: r.reliability for name, r in runs.items()}
    confidences = {name: r.probs.max(axis=1) for name, r in runs.items()}
    if scaled:
        for name, r in runs.items():
            probs = r.temperature_scaled_probs
            if probs is None:
                st.info(f"No validation split to fit a temperature for the {name}.")
                continue
            tables[f"{name}, T = {r.temperature:.2f}"] = cal.reliability_table(probs, r.labels)
            confidences[f"{name}, T = {r.temperature:.2f}"] = probs.max(axis=1)
    left, right = st.columns([3, 2])
    with left:
        ui.chart(reliability_diagram(tables), "reliability-diagram", ctx)
    with right:
        ui.chart(confidence_histogram(confidences), "confidence-histogram", ctx)
    table = metrics_table(full.metrics, pruned.metrics if pruned else None, ("full model", pruned_name))
    if scaled:
        for name, r in runs.items():
            if r.metrics_temperature_scaled is not None:
                table[f"{name} after T"] = metrics_table(r.metrics_temperature_scaled).iloc[:, 0]
    st.subheader("Metrics")
    st.caption("ECE: the gap between confidence and accuracy, averaged over 15 equal-width confidence bins, "
               "weighted by the examples in each. Adaptive ECE uses equal-count bins; MCE is the worst bin. "
               "Lower is better for every metric but accuracy.")
    ui.table(table.round(4), "calibration-metrics")
    for w in (pruned or full).warnings:
        st.warning(w)
