"""Calibration: reliability diagrams, confidence histograms and metrics, full model against pruned."""

import streamlit as st

import ui
from core.metrics import CALIBRATION
from core.study.compare import compare_results, mask_name
from core.study.figures import confidence_histogram, reliability_diagram
from core.task import calibration as cal

ctx = ui.context()
st.title("Calibration: is the model as sure as it is right?")
st.caption(f"{ctx.lm.name} on {ctx.ds.name}: {ctx.n} test examples, answers by {ctx.answers_by}. "
           "The confidence is the predicted answer's probability"
           + (", renormalised over the candidate answers." if ctx.lm.task != "classifier" else " under the head."))

with ui.guard("the calibration view"):
    # the validation examples that temperature scaling needs are scored only once it is switched on
    scaled = bool(st.session_state.get("temperature", False))
    names = ("full model", mask_name(ctx.drop))
    with ui.scoring_bar(ctx.n) as progress:
        c = compare_results(ctx.setup, ctx.drop, ctx.eval_config(temperature=scaled), progress=progress, names=names)
    full, pruned = c.base, (None if c.same_mask else c.other)
    ui.metrics_row(full.metrics, pruned.metrics if pruned else None, ctx.lm.num_layers, len(ctx.drop))
    scaled = st.toggle("Temperature scaling (fitted on 100 validation examples, per mask)", key="temperature",
                       help="divides the logits by one number T chosen to minimise validation NLL; "
                            "accuracy is unchanged, confidence is repaired")
    runs = {names[0]: full} | ({names[1]: pruned} if pruned else {})
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
    st.subheader("Metrics")
    st.caption(f"ECE: the gap between confidence and accuracy, averaged over {cal.DEFAULT_BINS} equal-width "
               "confidence bins, weighted by the examples in each. Adaptive ECE uses equal-count bins; MCE is the "
               "worst bin. "
               + ui.direction_note(CALIBRATION))
    ui.table(c.metrics_table(temperature_scaled=scaled).round(4), "calibration-metrics")
    for w in (pruned or full).warnings:
        st.warning(w)
