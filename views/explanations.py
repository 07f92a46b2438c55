"""Explanations: browse examples, compare the full and the pruned model's token attributions."""

import pandas as pd
import streamlit as st

import ui
from core.explain.agreement import agreement
from core.explain.dataset import sampling
from core.metrics import METRICS
from core.study.compare import compare_explanations, compare_results
from core.study.figures import faithfulness_curves, token_heatmap

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
    if view.empty:
        st.warning(f"No example is '{show}' with this mask.")
        st.stop()
    ids = view["id"].tolist()
    if st.session_state.get("example") not in ids:
        st.session_state["example"] = ids[0]
    texts = dict(zip(browse["id"], browse["text"], strict=True))
    example_id = st.selectbox(f"Example ({len(ids)} shown)", ids, key="example",
                              format_func=lambda i: f"{i}: {texts[i][:90]}")
    ui.write_url(ctx)  # the chosen example goes into the link too
    with st.expander(f"The {len(view)} examples shown", expanded=False):
        ui.table(view.round(3), "examples", hide_index=True)
    ex = next(e for e in results.base.examples if e.id == example_id)
    row = browse[browse["id"] == example_id].iloc[0]
    st.markdown(f"> {ex.text}")
    st.caption(f"label **{row['label']}** · full model: **{row['full prediction']}** "
               f"({row['full confidence']:.2f}) · pruned: **{row['pruned prediction']}** "
               f"({row['pruned confidence']:.2f})")
    seeds = 1
    if sampling(ctx.explain.explainer):
        seeds = int(st.number_input(
            "Explainer seeds", *ui.EXPLAINER_SEEDS_RANGE, 1, key="explainer_seeds",
            help=f"{title} samples perturbations at random: run it under several seeds to see how much its "
                 "scores move by chance, and whether pruning changes the explanation by more than that"))
    with st.spinner(f"Explaining with {title} (seconds per model and seed the first time; cached after)..."):
        c = compare_explanations(ctx.setup, ctx.drop, ex, ctx.explain, "test", with_random=True, seeds=seeds)
    # without a mask both sides are the full model, shown twice as before
    a_full, a_pruned = c.base, c.second
    g = c.agreement or agreement(a_full.scores, a_pruned.scores)
    curves = {"full model": c.base_faithfulness, "pruned model": c.second_faithfulness,
              "random baseline (full model, mean of 3 draws)": c.random_faithfulness}
    rows = {f"full: {c.answer(a_full)}": (a_full.names, a_full.scores),
            f"pruned: {c.answer(a_pruned)}": (a_pruned.names, a_pruned.scores)}
    ui.chart(token_heatmap(rows), "token-heatmap", ctx)
    fmt = lambda v: "n/a" if v is None else f"{v:.2f}"  # noqa: E731
    cols = st.columns(5)
    cols[0].metric("top-20% F1", fmt(g.f1), help="overlap of the two rationales (top 20% supporting words)")
    cols[1].metric("IoU", fmt(g.iou))
    cols[2].metric("precision", fmt(g.precision), help="share of the pruned rationale in the full one")
    cols[3].metric("recall", fmt(g.recall), help="share of the full rationale in the pruned one")
    cols[4].metric("Spearman", fmt(g.spearman), help="rank correlation of all the words' scores")
    if c.flipped:
        st.warning("Pruning flipped the prediction: the two explanations support different answers.")
    if sampling(ctx.explain.explainer) and ctx.drop:
        if (verdict := c.noise_verdict()) is not None:
            (st.warning if verdict.startswith("the explanations differ") else st.info)(verdict.capitalize() + ".")
        else:
            st.caption(f"{title} samples at random: two seeds of it on the same input and model agree only at about "
                       "Spearman 0.7-0.8 (measured on this project's default model), so agreement at that level "
                       "says nothing about pruning. Set explainer seeds to 2 or more to measure it for this "
                       "example.")
    st.subheader("Faithfulness of these explanations (ERASER)")
    comp, suff = METRICS["comprehensiveness"], METRICS["sufficiency"]
    st.caption(f"Comprehensiveness: how much the answer's probability drops when the top k% words are removed "
               f"({comp.better}: the explanation found what mattered). Sufficiency: how much it drops when only "
               f"they are kept ({suff.better}: they were enough). Each on the model being explained.")
    ui.chart(faithfulness_curves(curves), "faithfulness-curves", ctx)
    words = pd.DataFrame({"word": a_full.names, "full model": a_full.scores, "pruned model": a_pruned.scores})
    if (spread := c.spread("base")) is not None:
        words["full model, SD over seeds"] = spread
        if (other := c.spread("other")) is not None:
            words["pruned model, SD over seeds"] = other
    ui.table(words, "attributions", hide_index=True)
    st.caption(f"{title}: {a_full.seconds:.1f} s (full), {a_pruned.seconds:.1f} s (pruned) when computed; "
               f"parameters {a_full.params}")
