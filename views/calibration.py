"""Calibration: reliability diagrams, confidence histograms and metrics, full model against pruned."""

import streamlit as st

import ui
from core.metrics import CALIBRATION, METRICS
from core.study.compare import across_prompt_seeds, compare_results, mask_name, seed_spread
from core.study.figures import confidence_histogram, reliability_diagram
from core.task import calibration as cal
from core.task.uncertainty import banded_reliability_table
from ui import heal, repair

ctx = ui.context()
RECENT = 8  # comparisons a session keeps (most recently shown last); a bare string here would be drawn


def _prompt_variance() -> None:
    """The spread of every metric over a few demonstration draws, on a button (it re-scores everything)."""
    if ctx.prompt.style == "zero-shot" or ctx.lm.task == "classifier":
        return
    with st.expander("How much does the choice of demonstrations move these numbers?"):
        st.caption("The few-shot prompt shows a few demonstrations drawn at random. Each draw is a different "
                   "prompt: evaluate the same examples under several draws to see the spread the prompt alone "
                   "causes, next to the sampling intervals above.")
        draws = int(st.number_input("Demonstration draws", 2, 5, 3, key="prompt_draws"))
        if st.button(f"Evaluate under {draws} draws", key="run_prompt_seeds"):
            seeds = [ctx.prompt.seed + i for i in range(draws)]
            with ui.stage_bar(lambda what, done, total: f"{what}: {done:.0f}/{total}") as show:
                table = across_prompt_seeds(ctx.setup, ctx.drop, seeds, ctx.eval_config(temperature=False),
                                            progress=show)
            ui.table(table.round(4), "prompt-seeds", hide_index=True)
            ui.table(seed_spread(table).round(4), "prompt-seed-spread")

st.title("Calibration: is the model as sure as it is right?")
st.caption(f"{ctx.lm.name} on {ctx.ds.name}: {ctx.n} test examples, answers by {ctx.answers_by}. "
           "The confidence is the predicted answer's probability"
           + (", renormalised over the candidate answers." if ctx.lm.task != "classifier" else " under the head."))

with ui.guard("the calibration view"):
    # the validation examples that temperature scaling needs are scored only once it is switched on
    scaled = bool(st.session_state.get("temperature", False))
    names = ("full model", mask_name(ctx.drop))
    config = ctx.eval_config(temperature=scaled or repair.wanted())  # the repairs are fitted on validation too
    # a session's recent comparisons are kept with their intervals, so that toggling back and forth
    # redraws them without recomputing 1,000 bootstrap resamples per side each time
    memo = st.session_state.setdefault("_comparisons", {})
    key = (ctx.lm.id, ctx.ds.fingerprint, repr(ctx.prompt), ctx.setup.refit_head, ctx.drop, config)
    if (c := memo.pop(key, None)) is None:
        with ui.scoring_bar(ctx.n) as progress, ui.live_results() as live:
            c = compare_results(ctx.setup, ctx.drop, config, progress=progress, names=names, partial=live)
    memo[key] = c
    while len(memo) > RECENT:
        memo.pop(next(iter(memo)))
    full, pruned = c.base, (None if c.same_mask else c.other)
    st.markdown(ui.verdict_line(c, names))
    ui.metrics_row(c, ctx.lm.num_layers, len(ctx.drop))
    if pruned is None:
        st.info("No attention layer is dropped, so there is one curve. Switch layers off in the sidebar (or drop "
                "the k most redundant) to compare a pruned model with the full one.")
    ui.sample_size_hint(c, len(ctx.ds.splits.get("test") or []))
    scaled = st.toggle("Temperature scaling (fitted on 100 validation examples, per mask)", key="temperature",
                       help="divides the logits by one number T chosen to minimise validation NLL; "
                            "accuracy is unchanged, confidence is repaired")
    runs = {names[0]: full} | ({names[1]: pruned} if pruned else {})
    hc = heal.comparison(ctx, c, config)  # the healed model, when "Show the healed model" is on in the sidebar
    if hc is not None:
        runs[heal.NAME] = hc.healed
    tables = {name: r.reliability for name, r in runs.items()}
    confidences = {name: r.probs.max(axis=1) for name, r in runs.items()}
    if scaled:
        for name, r in runs.items():
            probs = r.temperature_scaled_probs
            if probs is None:
                st.info(f"No validation split to fit a temperature for the {name}.")
                continue
            tables[f"{name}, T = {r.temperature:.2f}"] = banded_reliability_table(probs, r.labels)
            confidences[f"{name}, T = {r.temperature:.2f}"] = probs.max(axis=1)
    tables |= repair.overlay_tables(ctx, c, names)
    left, right = st.columns([3, 2])
    with left:
        ui.chart(reliability_diagram(tables), "reliability-diagram", ctx)
        st.caption("Bars on the diagonal: where a perfectly calibrated model's accuracy would fall in 95% of "
                   "samples of each bin's size (Bröcker & Smith consistency bands). A point outside its bar is "
                   "miscalibrated beyond noise; inside, the gap may be chance.")
    with right:
        ui.chart(confidence_histogram(confidences), "confidence-histogram", ctx)
        st.caption("How sure the model is, over the examples: a pruned model that shifts this to the right is "
                   "more confident; whether it is also more often right is the diagram's question.")
    st.subheader("Metrics")
    st.caption(f"ECE: the gap between confidence and accuracy, averaged over {cal.DEFAULT_BINS} equal-width "
               "confidence bins, weighted by the examples in each. Adaptive ECE uses equal-count bins; MCE is the "
               "worst bin. "
               + ui.direction_note(CALIBRATION))
    with st.expander("What each metric means"):
        st.markdown("\n".join(f"- **{METRICS[k].title}** ({METRICS[k].better} is better, from "
                               f"{METRICS[k].range[0]:g} to {METRICS[k].range[1]:g}): {METRICS[k].meaning}"
                               for k in CALIBRATION))
    if pruned is None:
        intervals = full.intervals()
        table = c.metrics_table().assign(**{"95% CI": [
            f"[{intervals[k].lo:.3f}, {intervals[k].hi:.3f}]" if k in intervals else "" for k in CALIBRATION]})
        ui.table(table.round(4), "calibration-metrics")
    else:
        stats = c.stats()
        st.caption("Each side with its 95% interval; the difference (pruned - full) with a paired 95% interval "
                   f"over the same {stats.n} examples ({stats.n_resamples} bootstrap resamples; for the calibration "
                   f"errors as many simulations of correctness) and its p-value. "
                   "Beyond noise means the interval excludes 0.")
        ui.table(stats.table(names), "calibration-metrics")
        if scaled and stats.scaled_difference:
            st.caption("After temperature scaling (each mask with its own temperature):")
            ui.table(stats.table(names, temperature_scaled=True), "calibration-metrics-temperature-scaled",
                     key="csv-scaled")
    for name, r in runs.items():
        floor = r.noise_floor()["ece"]
        st.caption(f"{name}: ECE {floor.observed:.3f}; a perfectly calibrated model with the same confidences shows "
                   f"{floor.mean:.3f} on average and up to {floor.q95:.3f} in 95% of samples of {r.n}: "
                   + ("**consistent with perfect calibration**." if floor.consistent else
                      "**miscalibrated beyond noise**."))
    if hc is not None:
        heal.calibration_section(ctx, hc, scaled, repair.wanted(),
                                 st.session_state.get(repair.METHODS, list(repair.DEFAULT)))
    _prompt_variance()
    repair.section(ctx, c, names)
    for w in (pruned or full).warnings:
        st.warning(w)
