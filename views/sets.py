"""Prediction sets: conformal sets and abstention, full model against pruned, at the alpha and score chosen here.

Sets are calibrated on the validation examples scored under each mask (the ones temperature scaling
is fitted on), which are scored after the test examples: while a mask is scored, the abstention
numbers show live from the test examples in so far, and the sets once the validation part is in.
"""

import contextlib
import time
from collections.abc import Callable, Iterator

import streamlit as st

import ui
from core.metrics import METRICS
from core.study.compare import compare_results, mask_name
from core.study.figures import coverage_alpha_curves, risk_coverage_curves, set_size_histogram
from core.study.sets import DEFAULT_ALPHA, DEFAULT_METHOD, KEYS, set_figures
from core.task import selective
from core.task.conformal import METHODS
from core.task.evaluation import PartialResult
from ui import heal
from ui.state import ALPHA_RANGE
from ui.widgets import LIVE_RESAMPLES, live_tiles

ctx = ui.context()
RECENT = 8  # comparisons a session keeps, shared with the Calibration view (a bare string here would be drawn)
TILES = ("coverage", "set_size", "singleton_share", "aurc", "accuracy_at_80")
LIVE = ("aurc", "accuracy_at_80", "coverage_at_risk")


@contextlib.contextmanager
def live_abstention() -> Iterator[Callable[[str, PartialResult], None]]:
    """A ``partial`` callback for `compare_results`: the abstention metrics of the test examples in so far, with
    95% intervals that narrow as more arrive, in a slot cleared on leaving."""
    slot = st.empty()
    start = time.perf_counter()

    def show(name: str, p: PartialResult) -> None:
        if p.done == p.total:
            return
        _, intervals = selective.selective_intervals(p.probs, p.labels, n_resamples=LIVE_RESAMPLES)
        with slot.container(border=True):
            st.markdown(f"**{name}: {p.done} of {p.total} examples in** after {time.perf_counter() - start:.1f} s. "
                        "Abstention so far; the prediction sets need the validation examples, scored after these, "
                        "and show once they are in.")
            live_tiles(intervals, LIVE, p.done)

    try:
        yield show
    finally:
        slot.empty()


st.title("Prediction sets: does the pruned model still know when it does not know?")
st.caption(f"{ctx.lm.name} on {ctx.ds.name}: {ctx.n} test examples. A prediction set holds every answer the model "
           "cannot rule out, with a threshold calibrated on held-out validation examples (per mask) so that the set "
           "holds the correct answer for 1 - alpha of the examples. A worse model keeps that coverage and pays with "
           "larger sets. Abstention: answer only the examples the model is most confident about.")
left, right = st.columns(2)
lo, hi, step = ALPHA_RANGE
st.session_state.setdefault("alpha", DEFAULT_ALPHA)  # or the link's (`ui.state.SETTINGS`)
st.session_state.setdefault("conformal_method", DEFAULT_METHOD)
alpha = float(left.slider("alpha: the share of sets allowed to miss the correct answer", lo, hi, step=step,
                          key="alpha", format="%.2f",
                          help="0.1: sets that hold the correct answer for 90% of the examples; smaller alpha, "
                               "larger sets"))
method = right.selectbox("Conformal score", list(METHODS), key="conformal_method",
                         format_func=lambda k: METHODS[k].title,
                         help="; ".join(f"{m.title}: {m.meaning}" for m in METHODS.values()))

with ui.guard("the prediction-sets view"):
    names = ("full model", mask_name(ctx.drop))
    config = ctx.eval_config()  # with the validation examples the thresholds are calibrated on
    memo = st.session_state.setdefault("_comparisons", {})
    key = (ctx.lm.id, ctx.ds.fingerprint, repr(ctx.prompt), ctx.setup.refit_head, ctx.drop, config)
    if (c := memo.pop(key, None)) is None:
        with ui.scoring_bar(ctx.n) as progress, live_abstention() as live:
            c = compare_results(ctx.setup, ctx.drop, config, progress=progress, names=names, partial=live)
    memo[key] = c
    while len(memo) > RECENT:
        memo.pop(next(iter(memo)))
    s = c.sets(alpha, method)
    pruned = not c.same_mask
    if s.unavailable is not None:
        st.info(f"No prediction sets: {s.unavailable}.")
    keys = [k for k in TILES if k in s.base]
    for col, k in zip(st.columns(len(keys)), keys, strict=True):
        m, iv = METRICS[k], (s.other if pruned and s.other else s.base)[k]
        if not pruned or s.difference is None:
            col.metric(m.title, f"{iv.value:.3f}", help=m.meaning)
            col.caption(f"95% CI {iv.lo:.3f} to {iv.hi:.3f}")
            continue
        d = s.difference[k]
        col.metric(m.title, f"{iv.value:.3f}", f"{d.value:+.3f}", help=m.meaning,
                   delta_color=ui.delta_color(k) if d.beyond_noise else "off")
        col.caption(f"95% CI {iv.lo:.3f} to {iv.hi:.3f}; full model {s.base[k].value:.3f}; change "
                    f"[{d.lo:+.3f}, {d.hi:+.3f}]: **{m.verdict(d.value, d.beyond_noise, d.p_value)}**")
    if not pruned:
        st.info("No attention layer is dropped, so the tiles show the full model alone. Switch layers off in the "
                "sidebar to compare a pruned model's sets with the full one's.")

    hc = heal.comparison(ctx, c, config)  # the healed model, when "Show the healed model" is on in the sidebar
    if hc is not None:
        heal.sets_section(hc, alpha, method)
    figures = set_figures({names[0]: c.base} | ({names[1]: c.other} if pruned else {})
                          | ({heal.NAME: hc.healed} if hc is not None else {}), alpha, method)
    if figures.sizes:
        a, b = st.columns(2)
        with a:
            ui.chart(set_size_histogram(figures.sizes, figures.answers), "set-sizes", ctx)
            st.caption(f"How many answers each test example's set holds at alpha {alpha:g} ({s.method_title}). One "
                       "answer: the model commits; every answer: it does not know, and says so; none (LAC and the "
                       "randomised scores only): the set gives up on that example to keep coverage at 1 - alpha.")
        with b:
            ui.chart(coverage_alpha_curves(figures.coverage, alpha), "coverage-alpha", ctx)
            curve = next(iter(figures.coverage.values()))
            st.caption(f"Test coverage of each model's sets as alpha moves; dashed: 1 - alpha. Grey: where the "
                       f"coverage of {curve.n} test examples falls in 95% of draws for sets calibrated on "
                       f"{curve.n_cal} validation examples, for any model whose validation and test examples are "
                       "alike (beta-binomial). A curve outside it says the validation examples do not represent the "
                       "test ones; inside, the gap to 1 - alpha is chance.")
    ui.chart(risk_coverage_curves(figures.risk), "risk-coverage", ctx)
    st.caption("Answer only the examples the model is most confident about: the share of those answered wrongly "
               "(selective risk) as the share answered grows, in its 95% bootstrap band (tied confidences count as "
               "answered in a random order). A model whose confidence ranks its wrong answers last has a curve that "
               "starts low; AURC is the area under it.")

    st.subheader("Metrics")
    how = ("each side with its 95% interval, the difference (pruned - full) with a paired interval over the same "
           f"{s.n} examples ({s.n_resamples} bootstrap resamples), its p-value and verdict"
           if pruned else f"the full model's values with their 95% intervals ({s.n_resamples} bootstrap resamples)")
    for part in ("sets", "selective"):
        table = s.table(names, part)
        if table.empty:
            continue
        st.markdown(f"**{s.heading(part)}**")
        ui.table(table if pruned else table.iloc[:, :2], f"{part}-metrics")
    st.caption(f"Tables: {how}. The prediction-set intervals recalibrate the threshold on a resample of the "
               "validation examples in every resample, so they include the calibration's own noise. "
               + ui.direction_note(s.keys()))
    if s.sets_base is not None:
        qhat = f"{s.sets_base.qhat:.4f}" + (f" (full), {s.sets_other.qhat:.4f} (pruned)" if pruned and s.sets_other
                                           else "")
        st.caption(f"Thresholds from validation ({s.method_title} score at most qhat): {qhat}.")
    with st.expander("What each metric means"):
        st.markdown("\n".join(f"- **{METRICS[k].title}** ({METRICS[k].better} is better): {METRICS[k].meaning}"
                               for k in KEYS if k in s.base))
