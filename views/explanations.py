"""Explanations: browse examples (or type a text), compare the full and the pruned model's token attributions.

Explaining takes seconds to minutes per model on a CPU, so an explanation is drawn only when it is
in the result cache, when "Explain automatically" is on, or once the user asked for it (remembered in
the session, so a rerun does not forget); every explainer can be compared on the example on request.
"""

from dataclasses import replace

import pandas as pd
import streamlit as st

import ui
from core.errors import UserError
from core.explain.agreement import agreement
from core.explain.dataset import RANDOM_DRAWS, sampling, typed_example
from core.metrics import METRICS
from core.study.compare import compare_explanations, compare_results, explainer_table, explanations_cached
from core.study.figures import faithfulness_curves, token_heatmap
from core.study.sets import DEFAULT_ALPHA, DEFAULT_METHOD, set_labels, set_text
from core.task.conformal import METHODS
from core.task.evaluation import is_cached
from ui import heal

# session keys (a bare string here would be drawn): explanations asked for, explainer comparisons computed,
# and what an explainer took here
REQUESTS, TABLES, TIMINGS = "_explain_requests", "_explainer_tables", "_explain_seconds"

ctx = ui.context()
st.title("Explanations: which words does the model rely on, before and after pruning?")
title = ctx.explain.explainer
st.caption(f"Attributions by {title} over the words of the input (never the prompt's instructions or "
           "demonstrations), for the predicted answer. Red supports it, blue opposes it.")

with ui.guard("the explanations view"):
    with ui.scoring_bar(ctx.n) as progress:
        results = compare_results(ctx.setup, ctx.drop, ctx.eval_config(temperature=False), progress=progress,
                                  names=("full", "pruned"))
    browse = results.per_example()
    c1, c2 = st.columns([3, 2])
    show = c1.radio("Show", ["all", "prediction flipped by pruning", "wrong after pruning", "right after pruning"],
                    horizontal=True, key="example_filter")
    largest = c2.toggle("Largest change in confidence first", key="sort_change", value=bool(ctx.drop))
    view = {"all": browse, "prediction flipped by pruning": browse[browse["flipped"]],
            "wrong after pruning": browse[~browse["pruned correct"]],
            "right after pruning": browse[browse["pruned correct"]]}[show]
    if largest:
        view = view.reindex(view["confidence change"].abs().sort_values(ascending=False).index)
    if not ctx.drop:
        st.info("No attention layer is dropped: both rows show the full model. Switch layers off in the sidebar.")
    ids = view["id"].tolist()
    example_id = None
    if ids:
        if st.session_state.get("example") not in ids:
            st.session_state["example"] = ids[0]
        texts = dict(zip(browse["id"], browse["text"], strict=True))
        example_id = st.selectbox(f"Example ({len(ids)} shown)", ids, key="example",
                                  format_func=lambda i: f"{i}: {texts[i][:90]}")
    else:
        st.warning(f"No example is '{show}' with this mask.")
    choice = ctx.ds.task == "multiple-choice"
    if choice:
        st.info(f"'{ctx.ds.name}' is a multiple-choice data set: a text of your own has no options to choose "
                "from, so only its own examples can be explained.")
    typed = st.text_area("...or type your own text", key="typed_text", disabled=choice, height=80,
                         placeholder="A sentence of your own, answered with the same prompt and answers",
                         help="explained instead of the chosen example, by both models; it has no label, and it "
                              "is not put into the page's link").strip()
    typed = "" if choice else typed
    ui.write_url(ctx)  # the chosen example goes into the link too
    if ids:
        with st.expander(f"The {len(view)} examples shown", expanded=False):
            ui.table(view.round(3), "examples", hide_index=True)
    if not typed and example_id is None:
        st.stop()
    ex = typed_example(ctx.setup, typed) if typed else next(e for e in results.base.examples if e.id == example_id)
    st.markdown(f"> {ex.text}")
    answers_slot = st.empty()  # a typed text's predictions are known once it is explained
    if typed:
        answers_slot.caption("no label: your own text (clear the box to go back to the chosen example) · the "
                             "models' answers show once it is explained")
    else:
        row = browse[browse["id"] == example_id].iloc[0]
        answers_slot.caption(f"label **{row['label']}** · full model: **{row['full prediction']}** "
                             f"({row['full confidence']:.2f}) · pruned: **{row['pruned prediction']}** "
                             f"({row['pruned confidence']:.2f})")
        # each model's prediction set, calibrated on the validation examples (scored once per mask, on request)
        alpha = st.session_state.get("alpha", DEFAULT_ALPHA)
        method = st.session_state.get("conformal_method", DEFAULT_METHOD)
        sets_config = ctx.eval_config()
        if all(is_cached(ctx.setup, replace(sets_config, drop=d)) for d in {(), ctx.drop}) or st.button(
                "Show the prediction sets", key="explain_sets",
                help="scores the 100 validation examples per model that the sets are calibrated on (once; cached)"):
            calibrated = compare_results(ctx.setup, ctx.drop, sets_config)
            i = [e.id for e in calibrated.base.examples].index(example_id)
            try:
                full_set, pruned_set = (set_labels(r, alpha, method)[i] for r in (calibrated.base, calibrated.other))
                st.caption(f"prediction sets (alpha {alpha:g}, {METHODS[method].title}; the Prediction sets view "
                           f"sets both): full model **{set_text(full_set)}** · pruned **{set_text(pruned_set)}**")
            except UserError as err:  # no validation split, or too few examples for alpha: the rest still shows
                st.caption(f"no prediction sets: {err}")
    seeds = 1
    if sampling(ctx.explain.explainer):
        seeds = int(st.number_input(
            "Explainer seeds", *ui.EXPLAINER_SEEDS_RANGE, 1, key="explainer_seeds",
            help=f"{title} samples perturbations at random: run it under several seeds to see how much its "
                 "scores move by chance, and whether pruning changes the explanation by more than that"))

    # what defines the explanation (and the explainer comparison) besides the example and the mask
    selection = (ctx.lm.id, ctx.ds.fingerprint, repr(ctx.prompt), ctx.setup.refit_head)
    request = (*selection, ex.id, ctx.drop, ctx.explain, seeds)
    cached = (explanations_cached(ctx.setup, ctx.drop, ex, ctx.explain, "test", with_random=True, seeds=seeds)
              and heal.explanation_cached(ctx, ex, seeds))  # the healed model's too, when it is shown
    heal.missing_note(ctx)
    asked = st.session_state.setdefault(REQUESTS, set())
    c1, c2, c3 = st.columns([2, 2, 3])
    auto = c1.toggle("Explain automatically", key="explain_auto", value=False,
                     help="explain every example as soon as it is shown; off: cached explanations show at once, "
                          "the others when you press Explain")
    if c2.button("Explain this example", key="explain_run", type="primary", disabled=cached or auto,
                 help="explain it with both models; the result is cached, so it shows at once next time"):
        asked.add(request)
    if cached or auto or request in asked:
        with st.spinner(f"Explaining with {title} (seconds per model and seed the first time; cached after)..."):
            c = compare_explanations(ctx.setup, ctx.drop, ex, ctx.explain, "test", with_random=True, seeds=seeds)
            healed = heal.explain(ctx, ex, c, seeds)  # None unless the healed model is shown
        # without a mask both sides are the full model, shown twice as before
        a_full, a_pruned = c.base, c.second
        st.session_state.setdefault(TIMINGS, {})[(ctx.lm.id, title)] = ((a_full.seconds + a_pruned.seconds) / 2,
                                                                          ex.id)
        if typed:
            answers_slot.caption(
                f"no label: your own text (clear the box to go back to the chosen example) · full model: "
                f"**{c.answer(a_full)}** ({a_full.probs[a_full.predicted]:.2f}) · pruned: **{c.answer(a_pruned)}** "
                f"({a_pruned.probs[a_pruned.predicted]:.2f})")
        g = c.agreement or agreement(a_full.scores, a_pruned.scores)
        curves = {"full model": c.base_faithfulness, "pruned model": c.second_faithfulness,
                  f"random baseline (full model, mean of {RANDOM_DRAWS} draws)": c.random_faithfulness}
        rows = {f"full: {c.answer(a_full)}": (a_full.names, a_full.scores),
                f"pruned: {c.answer(a_pruned)}": (a_pruned.names, a_pruned.scores)}
        if healed is not None:
            rows |= heal.heatmap_rows(healed)
            curves[f"{heal.NAME} model"] = healed.faithfulness
        ui.chart(token_heatmap(rows), "token-heatmap", ctx)
        fmt = lambda v: "n/a" if v is None else f"{v:.2f}"  # noqa: E731
        cols = st.columns(5)
        cols[0].metric("top-20% F1", fmt(g.f1), help="overlap of the two rationales (top 20% supporting words)")
        cols[1].metric("IoU", fmt(g.iou), help="intersection over union: the words in both rationales over the words "
                                                "in either")
        cols[2].metric("precision", fmt(g.precision), help="share of the pruned rationale in the full one")
        cols[3].metric("recall", fmt(g.recall), help="share of the full rationale in the pruned one")
        cols[4].metric("Spearman", fmt(g.spearman), help="rank correlation of all the words' scores")
        st.caption(f"Agreement of the two explanations of this one example (n = 1, {len(a_full.names)} words).")
        if c.flipped:
            st.warning("Pruning flipped the prediction: the two explanations support different answers.")
        if sampling(ctx.explain.explainer) and ctx.drop:
            if (verdict := c.noise_verdict()) is not None:
                (st.warning if verdict.startswith("the explanations differ") else st.info)(verdict.capitalize() + ".")
            else:
                st.caption(f"{title} samples at random: two seeds of it on the same input and model agree only at "
                           "about Spearman 0.7-0.8 (measured on this project's default model), so agreement at that "
                           "level says nothing about pruning. Set explainer seeds to 2 or more to measure it for "
                           "this example.")
        st.subheader("Faithfulness of these explanations (ERASER)")
        comp, suff = METRICS["comprehensiveness"], METRICS["sufficiency"]
        st.caption(f"Comprehensiveness: how much the answer's probability drops when the top k% words are removed "
                   f"({comp.better}: the explanation found what mattered). Sufficiency: how much it drops when only "
                   f"they are kept ({suff.better}: they were enough). Each on the model being explained, for this "
                   "one example (n = 1).")
        ui.chart(faithfulness_curves(curves), "faithfulness-curves", ctx)
        words = pd.DataFrame({"word": a_full.names, "full model": a_full.scores, "pruned model": a_pruned.scores})
        if (spread := c.spread("base")) is not None:
            words["full model, SD over seeds"] = spread
            if (other := c.spread("other")) is not None:
                words["pruned model, SD over seeds"] = other
        if healed is not None:
            words["healed model"] = healed.healed.scores
            heal.explanation_section(ctx, healed)
        ui.table(words, "attributions", hide_index=True)
        st.caption(f"{title}: {a_full.seconds:.1f} s (full), {a_pruned.seconds:.1f} s (pruned) when computed; "
                   f"parameters {a_full.params}")
    else:
        timing = st.session_state.get(TIMINGS, {}).get((ctx.lm.id, title))
        took = (f" {title} took about {timing[0]:.0f} s per model{' and seed' if seeds > 1 else ''} on the last "
                f"example explained here ({timing[1]}); longer texts take longer." if timing else "")
        st.info(f"Press **Explain this example** to explain it with {title}, for the full and the pruned model "
                f"(computed once, then cached), or switch on **Explain automatically**.{took}")

    st.subheader("Every explainer on this example")
    removal = ctx.explain.removal
    table_key = (*selection, ex.id, ctx.drop, removal)
    tables = st.session_state.setdefault(TABLES, {})
    if c3.button("Compare all explainers on this example", key="explain_compare",
                 help="every explainer (with its default parameters) on this example, for both models: "
                      "faithfulness, agreement and time; LIME and Kernel SHAP take the longest"):
        with ui.progress_bar("Explaining this example with every explainer") as bar:
            tables[table_key] = explainer_table(ctx.setup, ctx.drop, ex, removal, bar)
    if table_key in tables:
        ui.table(tables[table_key].round(3), "explainers", hide_index=True)
        st.caption(
            f"One example ({ex.id}, n = 1), each explainer with its default parameters, words removed by "
            f"'{removal}'. Comprehensiveness and sufficiency are the mean over k = "
            f"{', '.join(f'{k:g}' for k in ctx.explain.k_percents)}% on the model explained; a change is pruned - "
            "full on this single example, so no interval is possible: read it against the random reference row "
            "and across examples, never as a finding on its own. Spearman: rank agreement of the full and the "
            "pruned model's explanation (for LIME and Kernel SHAP it includes their seed noise: two seeds on the same "
            "model agree only at about 0.7-0.8). Seconds: the time an explanation took when it was computed (a cached "
            "one shows that time, not the time to read it)."
            + ("" if ctx.drop else " No layer is dropped: both sides are the full model."))
    else:
        st.caption("Press **Compare all explainers on this example** (above) to explain it with every explainer "
                   "for both models and set their faithfulness, agreement and time side by side.")
