"""Learn: a guided walk through calibration, explanations, pruning, prediction sets and abstention, on live numbers."""

import streamlit as st

import ui
from core.errors import UserError
from core.metrics import METRICS
from core.model.loading import preset
from core.study.compare import compare_explanations, compare_results, mask_name
from core.study.figures import importance_bars, reliability_diagram, token_heatmap
from core.study.sets import DEFAULT_ALPHA, DEFAULT_METHOD
from core.task import calibration as cal

ctx = ui.context()
st.title("Learn: can a pruned model still be trusted?")
st.caption(f"Every number on this page is computed live: {ctx.lm.name} on {ctx.ds.name}, {ctx.n} test examples.")

with ui.guard("the Learn page"):
    k = 4
    drop = tuple(sorted(ctx.scores.most_redundant(k)))
    with ui.scoring_bar(ctx.n) as progress:
        results = compare_results(ctx.setup, drop, ctx.eval_config(), progress=progress,
                                  names=("full model", f"{k} layers dropped"))
    full, pruned = results.base, results.other
    fm, pm = full.metrics, pruned.metrics
    if drop != tuple(sorted(ctx.drop)):
        left, right = st.columns([3, 1])
        left.info(f"This walk-through uses its own mask: the {k} most redundant attention layers "
                  f"({', '.join(map(str, drop))}). The sidebar's mask ({mask_name(ctx.drop)}) is not used here.")
        right.button("Use this mask in the sidebar", key="learn_apply", width="stretch",
                     on_click=lambda: ui.apply_mask(drop, ctx.lm.num_layers),
                     help="switches these layers off in the sidebar, for every other view")

    st.header("1. The task")
    reads = ("reads a text and answers with one word" if ctx.lm.task != "classifier" else
             "encodes a text, and a small classifier trained on top of it picks one label")
    st.markdown(
        f"The model {reads} ({', '.join(ctx.ds.label_names)}). We read the "
        "probability it gives each answer, so every prediction comes with a **confidence**. On these "
        f"{full.n} examples it is right **{fm.accuracy:.0%}** of the time.")

    st.header("2. Calibration: is it as sure as it is right?")
    rows = [r for r in full.reliability if r["count"]]
    top = max(rows, key=lambda r: r["count"])
    st.markdown(
        f"Group the answers by confidence. Of the **{top['count']}** answers given with a confidence between "
        f"{top['bin_lower']:.2f} and {top['bin_upper']:.2f} (on average {top['mean_confidence']:.2f}), "
        f"**{top['accuracy']:.0%}** were right. A well-calibrated model would be right about as often as it is "
        "sure. The **reliability diagram** plots this for every group; the diagonal is perfect calibration.")
    ui.chart(reliability_diagram({"full model": full.reliability}), "learn-reliability", ctx)
    st.markdown(
        f"**ECE** (expected calibration error) is the average gap between confidence and accuracy over the "
        f"groups, weighted by their size: here **{fm.ece:.3f}**, i.e. the model's stated confidence is off by "
        f"about {fm.ece:.0%} on average.")
    if full.temperature is not None and full.metrics_temperature_scaled is not None:
        st.markdown(
            f"A cheap repair is **temperature scaling**: divide the model's scores by one number fitted on "
            f"held-out examples (here T = {full.temperature:.2f}). Accuracy stays {fm.accuracy:.0%}; ECE goes "
            f"from {fm.ece:.3f} to **{full.metrics_temperature_scaled.ece:.3f}**.")
    gemma = preset("gemma-3-270m")
    if ctx.lm.name != "gemma-3-270m" and gemma is not None and gemma.available_offline():
        st.info("Gemma-3-270m is installed here. It is right often but far less sure than it should be: pick "
                "it in the sidebar to watch temperature scaling repair a badly calibrated model.")

    st.header("3. Explanations: which words mattered?")
    ex = min(full.examples[:40], key=lambda e: abs(len(e.text.split()) - 15))
    with st.spinner(f"Explaining one example with {ctx.explain.explainer}..."):
        c = compare_explanations(ctx.setup, drop, ex, ctx.explain, "test")
    # a model of one layer or more always has k >= 1 most redundant layers: two explanations to compare
    a_full, f_full = c.base, c.base_faithfulness
    a_pruned, f_pruned = c.second, c.second_faithfulness
    answer = c.answer(a_full)
    st.markdown(f"> {ex.text}")
    best = a_full.names[a_full.order[0]]
    st.markdown(
        f"The model answers **{answer}** ({a_full.probs[a_full.predicted]:.2f}). An explainer scores each word "
        f"by how much it supports that answer; the strongest here is **{best}**.")
    ui.chart(token_heatmap({"full model": (a_full.names, a_full.scores)}), "learn-heatmap", ctx)
    st.markdown(
        "Is the explanation **faithful** to what the model really does? Remove the top-scored words and see "
        "whether the answer's probability drops: that drop is **comprehensiveness** "
        f"(here {f_full.comprehensiveness:.3f}, averaged over removing the top 1, 5, 10, 20 and 50% of the "
        f"words; {METRICS['comprehensiveness'].better} is better). Keep only those "
        f"words: the drop is **sufficiency** (here {f_full.sufficiency:.3f}; {METRICS['sufficiency'].better} "
        "is better).")

    st.header("4. Pruning: drop attention layers")
    st.markdown(
        f"Some attention layers barely change what flows through the model. Their importance score "
        f"1 - cos(x, x + attn(x)) is close to 0. Dropping the {k} lowest (layers {', '.join(map(str, drop))}) "
        "makes the model smaller and faster.")
    ui.chart(importance_bars(ctx.scores.scores, drop), "learn-importance", ctx)
    g = c.agreement
    st.markdown(
        f"| | full model | {k} layers dropped |\n|---|---|---|\n"
        f"| accuracy | {fm.accuracy:.3f} | {pm.accuracy:.3f} |\n| ECE | {fm.ece:.3f} | {pm.ece:.3f} |\n"
        f"| Brier | {fm.brier:.3f} | {pm.brier:.3f} |\n"
        f"| comprehensiveness (this example) | {f_full.comprehensiveness:.3f} | {f_pruned.comprehensiveness:.3f} |\n"
        f"| sufficiency (this example) | {f_full.sufficiency:.3f} | {f_pruned.sufficiency:.3f} |\n")
    spearman = "n/a" if g is None or g.spearman is None else f"{g.spearman:.2f}"
    s = results.stats()
    acc, ece = s.difference["accuracy"], s.difference["ece"]
    st.markdown(
        f"Accuracy moved by {acc.value:+.3f} ({METRICS['accuracy'].verdict(acc.value, acc.beyond_noise)}), ECE by "
        f"{ece.value:+.3f} ({METRICS['ece'].verdict(ece.value, ece.beyond_noise)}); the next step says what that "
        f"means. The explanation of the example changed too: the rank correlation of the word scores between the "
        f"two models is {spearman} (two runs of a sampling explainer such as LIME on the same model agree only at "
        "about 0.7-0.8, so read it against that).")
    both = {"full model": (a_full.names, a_full.scores), f"{k} dropped": (a_pruned.names, a_pruned.scores)}
    ui.chart(token_heatmap(both), "learn-heatmap-both", ctx)

    st.header("5. Is the difference real, or noise?")
    floor = s.noise_floor["ece"][0]
    st.markdown(
        f"These numbers come from {s.n} examples. Another {s.n} would give slightly different ones, so two numbers "
        f"that differ may not really differ. Resample the same examples many times ({s.n_resamples} here), "
        "recompute both models on each resample, and look at the middle 95% of the differences: that is the "
        "**95% interval** of the change. If it contains 0, the change is **within noise**.")
    st.markdown(
        f"- Accuracy changed by {acc.value:+.3f}, interval [{acc.lo:+.3f}, {acc.hi:+.3f}]: "
        f"**{METRICS['accuracy'].verdict(acc.value, acc.beyond_noise, acc.p_value)}**. "
        f"{s.mcnemar.right_to_wrong} answers went from right to wrong and {s.mcnemar.wrong_to_right} from wrong to "
        f"right; if pruning did nothing, a split this uneven would happen with probability "
        f"p = {s.mcnemar.p_value:.2g} (McNemar's test).\n"
        f"- ECE changed by {ece.value:+.3f}, interval [{ece.lo:+.3f}, {ece.hi:+.3f}]: "
        f"**{METRICS['ece'].verdict(ece.value, ece.beyond_noise, ece.p_value)}**.\n"
        f"- Even a **perfectly calibrated** model shows some ECE on {s.n} examples, by chance alone: with the full "
        f"model's confidences, {floor.mean:.3f} on average and up to {floor.q95:.3f}. The full model's "
        f"{floor.observed:.3f} is "
        + ("therefore consistent with perfect calibration." if floor.consistent
           else "beyond that: real miscalibration."))
    st.markdown(
        f"To resolve a change of 0.02 in ECE, you would need about **{s.examples_needed('ece', 0.02):,}** examples. "
        "The Calibration page shows every metric this way, with a plain verdict next to each change.")

    st.header("6. Prediction sets and abstention: does it know when it does not know?")
    alpha = st.session_state.get("alpha", DEFAULT_ALPHA)
    try:
        sets = results.sets(alpha, st.session_state.get("conformal_method", DEFAULT_METHOD))
    except UserError as err:  # too few validation examples for alpha: the lesson still follows
        st.info(f"No prediction sets here: {err}.")
        sets = None
    if sets is not None and sets.unavailable is not None:
        st.info(f"No prediction sets here: {sets.unavailable}.")
    elif sets is not None:
        cov, size = sets.difference["coverage"], sets.difference["set_size"]
        st.markdown(
            f"Instead of one answer, a model can name every answer it cannot rule out: a **prediction set**. Its "
            f"threshold is calibrated on {sets.n_cal} held-out examples so that the set holds the right answer for "
            f"{1 - alpha:.0%} of the examples (alpha = {alpha:g}), whatever the model. Here the full model's sets "
            f"hold it for **{sets.base['coverage'].value:.0%}** of the {sets.n} examples with "
            f"**{sets.base['set_size'].value:.2f}** answers on average; with {k} layers dropped, "
            f"**{sets.other['coverage'].value:.0%}** with **{sets.other['set_size'].value:.2f}** (set size "
            f"{METRICS['set_size'].verdict(size.value, size.beyond_noise, size.p_value)}; coverage "
            f"{METRICS['coverage'].verdict(cov.value, cov.beyond_noise, cov.p_value)}). A worse model keeps the "
            "coverage and pays with larger sets.")
    if sets is not None:
        at80, aurc = sets.difference["accuracy_at_80"], sets.difference["aurc"]
        st.markdown(
            f"A model may also **abstain**: answer only the 80% of examples it is most sure of. The full model is "
            f"then right **{sets.base['accuracy_at_80'].value:.0%}** of the time (against {fm.accuracy:.0%} on all "
            f"of them), the pruned one **{sets.other['accuracy_at_80'].value:.0%}** "
            f"({METRICS['accuracy_at_80'].verdict(at80.value, at80.beyond_noise, at80.p_value)}). **AURC** "
            f"averages the error over every share answered, most confident first (lower is better): "
            f"{sets.base['aurc'].value:.3f} against {sets.other['aurc'].value:.3f}, "
            f"{METRICS['aurc'].verdict(aurc.value, aurc.beyond_noise, aurc.p_value)}. The Prediction sets page "
            "shows both for any alpha, with their intervals.")

    st.header("7. The lesson")
    st.success(
        "Accuracy alone does not tell you whether a pruned model can still be trusted. Tropeano et al. (2026) "
        "found that dropping attention layers often keeps accuracy while calibration and the faithfulness of "
        "explanations degrade and swing from one pruning level to the next. Check all three, on the Calibration, "
        "Explanations and Trade-offs pages, before you ship a pruned model; and repair confidence afterwards, "
        "for example with temperature scaling.")
    st.caption(f"ECE uses {cal.DEFAULT_BINS} equal-width bins.")
