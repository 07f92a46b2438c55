"""Trade-offs: metrics against the number of attention layers dropped, and accuracy against faithfulness."""

import streamlit as st

import ui
from core.figures import pareto_scatter, tradeoff_curves
from core.sweep import PointConfig, evaluate_point, mask_label, points, sweep

ctx = ui.context()
st.title("Trade-offs: what does each dropped layer cost?")
st.caption("Layers are dropped in order of their importance score (most redundant first). Accuracy and "
           f"calibration use {ctx.n} test examples; faithfulness ({ctx.explain.explainer}, with the random "
           "baseline dashed) the first examples of them, as set below.")

with ui.guard("the trade-offs view"):
    c = st.columns([2, 2, 2, 2])
    max_drop = int(c[0].number_input("Layers to drop, at most", 1, ctx.lm.num_layers, min(8, ctx.lm.num_layers),
                                     key="sweep_max"))
    with_faith = c[1].toggle("With faithfulness", value=True, key="sweep_faith")
    faith_n = int(c[2].number_input("Examples explained per mask", 2, ctx.n, min(10, ctx.n), key="faith_n",
                                    disabled=not with_faith))
    config = PointConfig(eval=ctx.eval_config(()), explain=ctx.explain if with_faith else None, faith_n=faith_n)
    order = ctx.scores.order
    current = mask_label(ctx.drop)
    if c[3].button("Run sweep", type="primary", key="run_sweep", width="stretch"):
        bar = st.progress(0.0, text="starting")
        result = sweep(ctx.lm, ctx.ds, order, max_drop, config, ctx.cache,
                       progress=lambda what, d, t: bar.progress(min(d / max(t, 1), 1.0), text=what))
        bar.empty()
        st.session_state["sweep_table"] = result
    if st.button(f"Evaluate the current mask ({current})", key="eval_current"):
        update, clear = ui.progress_bar("current mask")
        evaluate_point(ctx.lm, ctx.ds, ctx.drop, config, ctx.cache, lambda what, d, t: update(d, t))
        clear()

    table = st.session_state.get("sweep_table")
    if table is not None:
        prefix = [len(ctx.drop)] if sorted(order[: len(ctx.drop)]) == sorted(ctx.drop) else []
        ui.chart(tradeoff_curves(table, current=prefix[0] if prefix else None), "tradeoff-curves", ctx)
        ui.table(table.round(4), "sweep", hide_index=True)
    else:
        st.info("Run a sweep to draw the curves. Every mask it evaluates is cached: a second run, or the same "
                "masks in another view, costs nothing.")

    st.subheader("Accuracy against faithfulness, every mask evaluated so far")
    measure = st.radio("Faithfulness", ["comprehensiveness", "sufficiency"], horizontal=True, key="pareto_measure")
    seen = points(ctx.lm, ctx.ds, config, ctx.cache)
    seen = seen[seen[measure].notna()].rename(columns={"layers": "mask"})
    ui.chart(pareto_scatter(seen, measure, current=current), "accuracy-vs-faithfulness", ctx)
    if not seen.empty:
        ui.table(seen.round(4), "masks-evaluated", hide_index=True)
    if current not in set(seen["mask"]):
        st.caption("The current mask is not among them yet: evaluate it with the button above.")
