"""Trade-offs: metrics against the number of attention layers dropped, and accuracy against faithfulness."""

import pandas as pd
import streamlit as st

import ui
from core.errors import UserError
from core.metrics import FAITHFULNESS
from core.study.figures import SET_TRADEOFF_METRICS, pareto_scatter, set_curves, tradeoff_curves
from core.study.report import check_sweep_table, render
from core.study.sets import DEFAULT_ALPHA, DEFAULT_METHOD
from core.study.strategies import DEFAULT_STRATEGY, STRATEGIES, StrategyConfig
from core.study.sweep import PointConfig, evaluate_point, mask_label, points, readable, sweep_order
from ui import sweeps

ctx = ui.context()
st.title("Trade-offs: what does each dropped layer cost?")
st.caption(f"Layers are dropped in a strategy's order. Accuracy and calibration use {ctx.n} test examples; "
           f"faithfulness ({ctx.explain.explainer}, with the random baseline dashed) the first examples of them, "
           "as set below. Greedy strategies choose on validation examples.")

with ui.guard("the trade-offs view"):
    c = st.columns([2, 2, 2, 2])
    max_drop = int(c[0].number_input("Layers to drop, at most", 1, ctx.lm.num_layers, min(8, ctx.lm.num_layers),
                                     key="sweep_max"))
    with_faith = c[1].toggle("With faithfulness", value=True, key="sweep_faith")
    faith_n = int(c[2].number_input("Examples explained per mask", 2, ctx.n, min(10, ctx.n), key="faith_n",
                                    disabled=not with_faith))
    config = PointConfig(eval=ctx.eval_config(), explain=ctx.explain if with_faith else None, faith_n=faith_n,
                         alpha=st.session_state.get("alpha", DEFAULT_ALPHA),  # the Prediction sets view's
                         method=st.session_state.get("conformal_method", DEFAULT_METHOD))
    s1, s2 = st.columns([2, 3])
    name = s1.selectbox("Strategy", list(STRATEGIES), index=list(STRATEGIES).index(DEFAULT_STRATEGY),
                        key="strategy", help="\n".join(f"{k}: {v}" for k, v in STRATEGIES.items()))
    s2.caption(STRATEGIES[name])
    weights = (1.0, 1.0, 1.0)
    if name == "trust-greedy":
        w = st.columns(3)
        weights = (w[0].number_input("weight: accuracy loss", 0.0, 10.0, 1.0, key="w_acc"),
                   w[1].number_input("weight: ECE increase", 0.0, 10.0, 1.0, key="w_ece"),
                   w[2].number_input("weight: comprehensiveness loss", 0.0, 10.0, 1.0, key="w_comp"))
    strategy = StrategyConfig(name=name, steps=max_drop, weights=weights)
    current = mask_label(ctx.drop)
    running = sweeps.running()
    st.markdown(f"This sweep: {sweeps.estimate(ctx, strategy, max_drop, config)}")
    b1, b2 = st.columns([1, 2])
    if b1.button("Run sweep", type="primary", key="run_sweep", width="stretch", disabled=running,
                 help="runs in the background: you can change settings or leave this page meanwhile"):
        sweeps.start(ctx, strategy, max_drop, config, f"{name}, run here")
        st.rerun()
    if b2.button(f"Evaluate the current mask ({current})", key="eval_current"):
        with ui.progress_bar("current mask") as update:
            evaluate_point(ctx.setup, ctx.drop, config, lambda what, done, total: update(done, total))
    sweeps.status()

    with st.expander("Open a sweep table written by `python -m core sweep`"):
        uploaded = st.file_uploader("sweep CSV", type=["csv"], key="sweep_upload")
        if uploaded is not None and st.session_state.get("sweep_file") != uploaded.file_id:
            st.session_state["sweep_file"] = uploaded.file_id
            try:
                loaded = check_sweep_table(pd.read_csv(uploaded), f"'{uploaded.name}'")
            except UserError as err:
                st.error(f"{err}. The curves below are unchanged.")
            except (ValueError, UnicodeDecodeError) as err:  # pandas' parser errors are ValueErrors
                st.error(f"'{uploaded.name}' could not be read as CSV ({err}). The curves below are unchanged.")
            else:
                st.session_state.update(sweep_table=loaded, sweep_order=sweep_order(loaded),
                                        sweep_source=uploaded.name, sweep_model=None, sweep_settings=None)
        st.caption("Its curves and table are drawn below, with the current mask marked if it is one of its "
                   "steps, until the next sweep is run here.")

    table = st.session_state.get("sweep_table")
    order = st.session_state.get("sweep_order", ctx.scores.order)
    if table is not None:
        st.caption(f"Sweep: {st.session_state.get('sweep_source', '')}")
        prefix = [len(ctx.drop)] if sorted(order[: len(ctx.drop)]) == sorted(ctx.drop) else []
        ui.chart(tradeoff_curves(table, current=prefix[0] if prefix else None), "tradeoff-curves", ctx)
        st.caption("Shaded: 95% intervals over the test examples. Each change from the full model is paired over "
                   "the same examples and is beyond noise only when its interval excludes 0.")
        if any(k in table and table[k].notna().any() for k in SET_TRADEOFF_METRICS):
            alpha = (st.session_state.get("sweep_settings") or {}).get("alpha", config.alpha)
            ui.chart(set_curves(table, alpha), "set-curves", ctx)
            st.caption(f"Prediction sets (alpha {alpha:g}, each mask calibrated on its own validation examples) and "
                       "abstention: a threshold that jumps between two masks shows as a step in the set size.")
        st.caption("Click a row to set the sidebar's mask to it.")
        rows = ui.table(readable(table), "sweep", hide_index=True, selectable=True)
        sweeps.use_mask_button(ctx, table["layers"].iloc[rows[0]] if rows else None, "use_sweep_row")
        with st.expander("Every column of the sweep"):
            ui.table(table.round(4), "sweep-all-columns", hide_index=True)
        # a sweep run here reports the settings it ran with (they may have changed since); a file, the current ones
        settings = {"sweep": st.session_state.get("sweep_source", ""), "order": list(order),
                    **(st.session_state.get("sweep_settings") or ctx.run_config())}
        st.download_button("Download report (HTML)", render(table, settings), file_name="sweep-report.html",
                           mime="text/html", key="download_report",
                           help="the command line's report: the curves, the table, the metrics and these settings, "
                                "in one file that opens with no network")
    else:
        st.info("Run a sweep to draw the curves: the estimate above says how long it takes. Every mask it "
                "evaluates is cached: a second run, or the same masks in another view, costs nothing.")

    st.subheader("Accuracy against faithfulness, every mask evaluated so far")
    measure = st.radio("Faithfulness", list(FAITHFULNESS), horizontal=True, key="pareto_measure")
    seen = points(ctx.setup, config)
    seen = seen[seen[measure].notna()].rename(columns={"layers": "mask"})
    picked = ui.chart(pareto_scatter(seen, measure, current=current), "accuracy-vs-faithfulness", ctx,
                      selectable=True)
    labels = [p["customdata"] for p in picked if isinstance(p.get("customdata"), str)]
    sweeps.use_mask_button(ctx, labels[0] if labels else None, "use_pareto_point")
    if not seen.empty:
        st.caption("Click a point (or a row below) to set the sidebar's mask to it. Bars: 95% intervals.")
        rows = ui.table(seen.round(4), "masks-evaluated", hide_index=True, selectable=True)
        sweeps.use_mask_button(ctx, seen["mask"].iloc[rows[0]] if rows else None, "use_seen_row")
    else:
        st.info("No mask has faithfulness yet: run a sweep with faithfulness, or evaluate the current mask.")
    if current not in set(seen["mask"]):
        st.caption("The current mask is not among them yet: evaluate it with the button above.")
