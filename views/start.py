"""Start: what the app shows, and a three-step tour on the live default: drop the suggested layers, look at
the examples whose prediction flipped, run a small sweep."""

import streamlit as st

import ui
from core.metrics import METRICS
from core.study.compare import compare_results, mask_name
from core.study.figures import tradeoff_curves
from core.study.strategies import StrategyConfig
from core.study.sweep import PointConfig, mask_label, readable
from ui import sweeps

ctx = ui.context()
SMALL_SWEEP = min(6, ctx.lm.num_layers)  # layers the tour's sweep drops, at most
SOURCE = "the small sweep of the Start view"
k = int(st.session_state.get("drop_k", 4))
suggested = ctx.order[:k]

st.title("Can a pruned language model still be trusted?")
st.markdown(
    f"Dropping attention layers makes a model smaller and faster. This app shows what it costs, live, on "
    f"**{ctx.lm.name}** answering **{ctx.ds.name}**: how often the model is right (**accuracy**), whether it is as "
    "sure as it is right (**calibration**), and whether its explanations still point at the words it really "
    "uses (**faithfulness**). Every number comes with its 95% interval, and every change with a verdict: "
    "beyond noise or not.")
st.page_link("views/learn.py", label="New to calibration? The Learn view explains every term on live numbers "
             "(5 minutes).", icon=":material/school:")

with ui.guard("the start view"):
    st.header("1. Drop the suggested layers")
    st.markdown(
        f"The layers whose attention barely changes the text's representation are the safest to drop. The sidebar "
        f"lists the layers in that order and marks the **{k} suggested** with ★: layers "
        f"**{mask_label(suggested)}**.")
    if not suggested:
        st.info("The sidebar suggests no layer (Suggested drops is 0): set it to 4, say, to follow this step.")
    elif tuple(sorted(ctx.drop)) != tuple(sorted(suggested)):
        st.button(f"Drop the {k} suggested layers", key="tour_drop", type="primary",
                  on_click=lambda: ui.apply_mask(suggested, ctx.lm.num_layers),
                  help="switches them off in the sidebar; every view then compares this pruned model with the full one")
    names = ("full model", mask_name(ctx.drop))
    c = None
    if ctx.drop:
        with ui.scoring_bar(ctx.n) as progress, ui.live_results() as live:
            c = compare_results(ctx.setup, ctx.drop, ctx.eval_config(temperature=False), progress=progress,
                                names=names, partial=live)
        st.markdown(ui.verdict_line(c, names))
        ui.metrics_row(c, ctx.lm.num_layers, len(ctx.drop))
        st.caption("Each tile: the pruned model's value, its 95% interval, and its change from the full model with "
                   "the paired interval over the same examples. Hover a tile's question mark for what it measures.")
    else:
        st.info("No layer is dropped yet: press the button above (or switch layers off in the sidebar).")

    st.header("2. Look at the examples whose prediction flipped")
    if c is None:
        st.info("Do step 1 first: with no layer dropped, no prediction can change.")
    else:
        browse = c.per_example()
        flipped = browse[browse["flipped"]]
        m, acc = c.stats().mcnemar, c.stats().difference["accuracy"]
        st.markdown(
            f"Accuracy can stay put while answers change underneath: **{len(flipped)} of {c.base.n}** predictions "
            f"flipped ({m.right_to_wrong} right → wrong, {m.wrong_to_right} wrong → right; McNemar p = "
            f"{m.p_value:.2g}: accuracy {METRICS['accuracy'].verdict(acc.value, acc.beyond_noise)}). The answers "
            "that did not flip may be given with a different confidence.")
        if flipped.empty:
            st.caption("No prediction flipped with this mask: drop more layers in the sidebar to see some.")
        else:
            shown = flipped.drop(columns=["flipped", "confidence change", f"{names[1]} correct"])
            st.dataframe(shown.round(2), hide_index=True, width="stretch")
            if st.button("Explain them on the Explanations view", key="tour_explain"):
                st.session_state["example_filter"] = "prediction flipped by pruning"
                st.switch_page("views/explanations.py")

    st.header("3. Run a small sweep")
    config = PointConfig(eval=ctx.eval_config(temperature=False))
    strategy = StrategyConfig(steps=SMALL_SWEEP)
    st.markdown(
        f"Drop 0, 1, ..., {SMALL_SWEEP} layers in the sidebar's suggested order and watch accuracy and calibration "
        "together (faithfulness is on the Trade-offs view). "
        + sweeps.estimate(ctx, strategy, SMALL_SWEEP, config, latency=False, order=ctx.order))
    running = sweeps.running()
    if st.button("Run the small sweep", key="tour_sweep", disabled=running,
                 help="runs in the background; every mask is cached, so it is free the second time"):
        sweeps.start(ctx, strategy, SMALL_SWEEP, config, SOURCE, latency=False, order=ctx.order)
        st.rerun()
    sweeps.status()
    table = st.session_state.get("sweep_table")
    if table is None:
        st.info("Press the button to run it; the curves and the lesson appear here.")
    else:
        st.caption(f"Sweep: {st.session_state.get('sweep_source', '')}. Shaded: 95% intervals.")
        ui.chart(tradeoff_curves(table), "start-tradeoffs", ctx)
        st.dataframe(readable(table, ("accuracy", "ece")), hide_index=True, width="stretch")
        steps = table[table["dropped"] > 0]
        moved = {key: steps[(steps[f"{key}_change_lo"] > 0) | (steps[f"{key}_change_hi"] < 0)]["dropped"].tolist()
                 for key in ("accuracy", "ece")  # only where the table has the paired intervals to say it
                 if f"{key}_change_lo" in steps and steps[f"{key}_change_lo"].notna().all()}
        if not steps.empty and moved:
            said = [f"{METRICS[key].title} changed beyond noise with "
                    + (", ".join(map(str, d)) + " layers dropped" if d else "no number of layers dropped")
                    for key, d in moved.items()]
            st.markdown("In this sweep (each change paired against the full model over the same examples): "
                        + "; ".join(said) + ".")

    st.header("The lesson")
    st.success(
        "Accuracy alone does not tell you whether a pruned model can still be trusted. Tropeano et al. (2026) found "
        "that dropping attention layers often keeps accuracy while calibration and the faithfulness of explanations "
        "degrade and swing from one pruning level to the next. Check all three before you ship a pruned model: "
        "Calibration, Explanations and Trade-offs each show one, with its uncertainty.")
