"""The healed model in the app: "Heal this mask" in the sidebar, and the third model on the views.

Healing (a LoRA fine-tune under the mask, `core.study.healing`) takes minutes on a CPU, so it runs as a
`core.study.heal_job.HealJob` kept in the session: it goes on when a widget is touched or the page is
left, Stop ends it after the current step (the checkpoint is kept and Start resumes), and its status is
redrawn once a second. Once the adapters for the mask and settings are cached, "Show the healed model"
makes the Calibration, Prediction sets and Explanations views draw it as a third model, with paired
intervals against the full and the pruned model (`core.study.healed`).

The share link carries ``heal=<objective>`` while it is shown (and ``heal_steps`` when not the default,
`ui.state.SETTINGS`). A link whose adapters are not cached here says so and offers the button: a page
load never trains.
"""

from __future__ import annotations

import streamlit as st

from core.errors import UserError
from core.explain.agreement import Agreement
from core.explain.dataset import sampling
from core.metrics import METRICS
from core.study.compare import ExplanationComparison, PairedStats, ResultComparison
from core.study.heal_job import HealJob, cached_heal, estimate_heal
from core.study.healed import (
    HealComparison,
    HealedExplanation,
    explain_healed,
    healed_comparison,
    healed_explanation_cached,
    healed_setup,
)
from core.study.healing import OBJECTIVES, HealConfig, HealResult, default_steps, heal_key
from core.study.repair import repair_results
from core.task.data import Example
from core.task.evaluation import EvalConfig
from core.task.setup import Setup

from .state import HEAL_STEPS_RANGE, NOT_HEALED, Context
from .widgets import delta_color, guard, progress_bar, table

JOB = "heal_job"
URL, OBJECTIVE, STEPS, SHOW = "heal", "heal_objective", "heal_steps", "show_healed"
NAME = "pruned and healed"
"""How the healed model is named in legends and tables."""
POLL = 1.0
"""Seconds between two redraws of a running healing's status."""
RECENT = 4
"""Three-way comparisons a session keeps."""


# ---------------------------------------------------------------- the sidebar's panel


def _wanted() -> str:
    """The objective of the healed model to show ("none": not shown); what the link's ``heal`` says."""
    return st.session_state.get(URL, NOT_HEALED)


def _sync_show() -> None:
    st.session_state[URL] = st.session_state.get(OBJECTIVE, "lm") if st.session_state.get(SHOW) else NOT_HEALED


def _start(setup: Setup, drop: tuple[int, ...], config: HealConfig) -> None:
    """Start healing in the background; the healed model is then shown as soon as its adapters are cached."""
    try:
        st.session_state[JOB] = HealJob(setup, drop, config).start()
    except UserError as err:
        st.session_state["_heal_error"] = str(err)
        return
    st.session_state[URL] = config.objective


def _watch(job: HealJob) -> None:
    """The running job's progress and Stop, redrawn every second; the whole page reruns once it ends."""

    @st.fragment(run_every=POLL)
    def watch() -> None:
        if not job.running:
            st.rerun()  # the whole page: the toggle appears, or the outcome is said
        total = job.config.steps
        st.progress(min(job.step / total, 1.0), text=f"Healing {len(job.drop)} dropped layers: {job.status()}")
        st.button("Stop", key="heal_stop", on_click=job.stop, width="stretch",
                  help="stops after the current step and keeps a checkpoint; Start resumes from it")

    watch()


def _outcome(job: HealJob) -> None:
    if job.error:
        st.error(f"Healing failed: {job.error}")
    elif not job.complete:
        st.warning(f"Healing {job.status()}.")


def panel(setup: Setup, drop: tuple[int, ...]) -> HealResult | None:
    """The sidebar's "Heal this mask": objective, steps, the estimate, Start / Stop and the status; once the
    adapters of this mask and these settings are cached, "Show the healed model". Returns the healing to show."""
    wanted = _wanted()
    job: HealJob | None = st.session_state.get(JOB)
    if setup.lm.task == "classifier":
        st.sidebar.caption("Healing (a LoRA fine-tune of the pruned model) is for causal LMs: an encoder answers "
                           "through its head, which 'Prune, then re-fit the head' re-fits instead.")
        return None
    running = job is not None and job.running
    with st.sidebar, st.expander("Heal this mask", expanded=wanted != NOT_HEALED or running):
        if not drop:
            st.caption("Drop attention layers first: healing trains LoRA adapters on the pruned model, with the "
                       "mask on, and then shows it as a third model beside the full and the pruned one.")
            return None
        if wanted != NOT_HEALED and not st.session_state.get("_heal_url_taken"):
            st.session_state[OBJECTIVE] = wanted  # the link's objective, once
        st.session_state["_heal_url_taken"] = True
        st.session_state.setdefault(STEPS, default_steps(setup.lm.device))
        objective = st.selectbox("Objective", list(OBJECTIVES), key=OBJECTIVE,
                                 help="; ".join(f"{k}: {v}" for k, v in OBJECTIVES.items()))
        steps = int(st.number_input("Steps", *HEAL_STEPS_RANGE, key=STEPS,
                                    help="optimisation steps of 8 rows each (the CPU default: 50, a few minutes on 2 "
                                         "cores); the adapters are cached per mask and settings"))
        if wanted != NOT_HEALED:
            st.session_state[URL] = objective  # the link follows the objective shown
        config = HealConfig(objective=objective, steps=steps)
        with guard("healing"):
            config.validate()
            if config.note:
                st.caption(f"Note: {config.note}.")
            if running:
                _watch(job)
            elif job is not None and job.for_request(setup, drop, config):
                _outcome(job)
            if (err := st.session_state.pop("_heal_error", None)) is not None:
                st.error(err)
            estimate = estimate_heal(setup, drop, config)
            if estimate.to_train == 0:
                st.session_state[SHOW] = wanted != NOT_HEALED
                show = st.toggle("Show the healed model", key=SHOW, on_change=_sync_show,
                                 help="the Calibration, Prediction sets and Explanations views add the pruned model "
                                      "healed with these adapters as a third model, with paired intervals against "
                                      "the full and the pruned model")
                st.caption(f"The adapters for this mask ({steps} {objective} steps) are cached.")
                return _result(setup, drop, config) if show else None
            if wanted != NOT_HEALED and not running:
                st.info(f"The healed model ({objective}, {steps} steps) is asked for (by the link, or before the "
                        "settings changed), but its adapters are not cached here: press Start healing to train "
                        "them (nothing trains by itself).")
            st.caption(f"Heal the pruned model: {estimate.text()}.")
            label = "Resume healing" if estimate.cached else "Start healing"
            st.button(label, key="heal_start", type="primary", disabled=running, width="stretch",
                      on_click=_start, args=(setup, drop, config),
                      help="trains in the background: it goes on if you change a setting or leave the page; one "
                           "healing at a time")
    return None


def _result(setup: Setup, drop: tuple[int, ...], config: HealConfig) -> HealResult | None:
    """The cached adapters (read once per session and request)."""
    key = heal_key(setup, drop, config)
    memo = st.session_state.get("_heal_result")
    if memo is None or memo[0] != key:
        result = cached_heal(setup, drop, config)
        if result is None:
            return None
        st.session_state["_heal_result"] = memo = (key, result)
    return memo[1]


def missing_note(ctx: Context) -> None:
    """On a view: the link asks for the healed model, but it is not shown (not cached, or no mask)."""
    if ctx.healed is None and _wanted() != NOT_HEALED and ctx.drop and ctx.lm.task != "classifier":
        st.info("The healed model shows here once its adapters are cached: open **Heal this mask** in the sidebar.")


# ---------------------------------------------------------------- the three-way comparison


def comparison(ctx: Context, c: ResultComparison, config: EvalConfig) -> HealComparison | None:
    """The page's comparison ``c`` with the healed model added (None unless it is shown), scored with a bar the
    first time and kept in the session."""
    missing_note(ctx)
    if ctx.healed is None or c.same_mask:
        return None
    memo = st.session_state.setdefault("_heal_comparisons", {})
    key = (ctx.lm.id, ctx.ds.fingerprint, repr(ctx.prompt), ctx.drop, config, ctx.healed.key)
    if (hc := memo.pop(key, None)) is None:
        with progress_bar(f"Scoring {ctx.n} examples ({NAME})") as bar:
            hc = healed_comparison(ctx.setup, c, ctx.healed, config, progress=bar)
    memo[key] = hc
    while len(memo) > RECENT:
        memo.pop(next(iter(memo)))
    return hc


def _change(s: PairedStats, key: str, scaled: bool = False) -> str:
    d = (s.scaled_difference if scaled else s.difference)[key]
    return f"{d.value:+.3f} [{d.lo:+.3f}, {d.hi:+.3f}], {s.verdict(key, scaled)}"


def calibration_section(ctx: Context, hc: HealComparison, scaled: bool, repairs: bool,
                        methods: list[str] | None = None) -> None:
    """The Calibration view's healed block: tiles with both paired changes, every model's metrics, the changes with
    verdicts and flips, after temperature scaling too, and (with the Repair section on) the repair methods on it."""
    stats = hc.stats()
    st.subheader(f"Pruned and healed: does healing restore the confidence? ({hc.heal.config.objective}, "
                 f"{hc.heal.config.steps} steps)")
    cfg = hc.heal.config
    st.caption(f"The pruned model with LoRA adapters trained under the same mask ({cfg.objective} objective: "
               f"{OBJECTIVES[cfg.objective]}), scored on the same {hc.full.n} test examples. Each change is paired "
               f"over them ({stats[('full', 'healed')].n_resamples} bootstrap resamples shared by the three models).")
    if cfg.note:
        st.caption(f"Note: {cfg.note}.")
    full_healed, pruned_healed = stats[("full", "healed")], stats[("pruned", "healed")]
    keys = [k for k in ("accuracy", "ece", "smooth_ece", "brier") if k in full_healed.other]
    for col, key in zip(st.columns(len(keys)), keys, strict=True):
        m, iv, d = METRICS[key], full_healed.other[key], full_healed.difference[key]
        col.metric(f"{m.title}, healed", f"{iv.value:.3f}", f"{d.value:+.3f} vs full",
                   delta_color=delta_color(key) if d.beyond_noise else "off", help=m.meaning)
        col.caption(f"95% CI {iv.lo:.3f} to {iv.hi:.3f}; vs full: **{_change(full_healed, key)}**; vs pruned: "
                    f"**{_change(pruned_healed, key)}**")
    table(hc.values_table(stats), "healed-metrics")
    table(hc.changes_table({k: v for k, v in stats.items() if k[1] == "healed"}), "healed-changes")
    flips = [f"{b} against {a}: {s.mcnemar.right_to_wrong} right → wrong, {s.mcnemar.wrong_to_right} wrong → right "
             f"(McNemar p = {s.mcnemar.p_value:.2g})" for (a, b), s in stats.items() if b == "healed"]
    st.caption("Flips, " + "; ".join(flips) + ".")
    if scaled and full_healed.scaled_difference:
        st.caption("After temperature scaling (each model with its own temperature: full "
                   f"{hc.full.temperature:.2f}, pruned {hc.pruned.temperature:.2f}, healed "
                   f"{hc.healed.temperature:.2f}): ECE healed - full {_change(full_healed, 'ece', True)}; healed - "
                   f"pruned {_change(pruned_healed, 'ece', True)}.")
    if repairs and hc.healed.val_logits is not None:
        with guard("the healed model's repair"):
            result = repair_results(hc.full, hc.healed, healed_setup(ctx.setup, hc.heal), methods)
            st.markdown("**The repair methods on the healed model** (fitted on its validation examples, under the "
                        "mask; changes against it unrepaired and the difference from the full model):")
            table(result.table(), "healed-repair")


def reliability_name(hc: HealComparison) -> str:
    return f"{NAME} ({hc.heal.config.objective}, {hc.heal.config.steps} steps)"


def sets_section(hc: HealComparison, alpha: float, method: str) -> None:
    """The Prediction sets view's healed block: tiles with the changes against the full and the pruned model, and
    the tables of both pairs."""
    sets = hc.sets(alpha, method)
    vs_full, vs_pruned = sets[("full", "healed")], sets[("pruned", "healed")]
    st.subheader("Pruned and healed")
    st.caption(f"The pruned model healed with LoRA under the same mask ({hc.heal.config.objective}, "
               f"{hc.heal.config.steps} steps): its sets (calibrated on its own validation examples) and abstention "
               f"on the same {vs_full.n} test examples, each change paired.")
    keys = [k for k in ("coverage", "set_size", "singleton_share", "aurc", "accuracy_at_80")
            if vs_full.other and k in vs_full.other]
    for col, k in zip(st.columns(len(keys)), keys, strict=True):
        m, iv, d = METRICS[k], vs_full.other[k], vs_full.difference[k]
        g = vs_pruned.difference[k]
        col.metric(f"{m.title}, healed", f"{iv.value:.3f}", f"{d.value:+.3f} vs full", help=m.meaning,
                   delta_color=delta_color(k) if d.beyond_noise else "off")
        col.caption(f"95% CI {iv.lo:.3f} to {iv.hi:.3f}; vs full [{d.lo:+.3f}, {d.hi:+.3f}]: "
                    f"**{m.verdict(d.value, d.beyond_noise, d.p_value)}**; vs pruned {g.value:+.3f} "
                    f"[{g.lo:+.3f}, {g.hi:+.3f}]: **{m.verdict(g.value, g.beyond_noise, g.p_value)}**")
    for (a, b), s in (("full", "healed"), vs_full), (("pruned", "healed"), vs_pruned):
        for part in ("sets", "selective"):
            t = s.table((a, b), part)
            if not t.empty:
                st.markdown(f"**{s.heading(part)}: healed against {a}**")
                table(t, f"healed-{part}-vs-{a}")


# ---------------------------------------------------------------- explanations


def explanation_cached(ctx: Context, ex: Example, seeds: int) -> bool:
    """Whether the healed model's explanation of ``ex`` is cached (True when it is not shown)."""
    if ctx.healed is None:
        return True
    return healed_explanation_cached(ctx.setup, ctx.healed, ex, ctx.explain, "test", seeds)


def explain(ctx: Context, ex: Example, against: ExplanationComparison, seeds: int) -> HealedExplanation | None:
    """The healed model's explanation of ``ex`` against the full model's (None when it is not shown)."""
    if ctx.healed is None:
        return None
    return explain_healed(ctx.setup, ctx.healed, ex, against, ctx.explain, "test", seeds)


def _fmt(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.2f}"


def explanation_section(ctx: Context, h: HealedExplanation) -> None:
    """The Explanations view's healed block: its answer, its agreement with the full (and the pruned) model's
    explanation, its faithfulness on its own model, and whether it differs beyond the explainer's seed noise."""
    st.subheader("Pruned and healed: does healing bring the full model's explanation back?")
    a = h.healed
    st.caption(f"Explained by {h.healed.explainer} like the others, under the same mask. The healed model answers "
               f"**{h.against.answer(a)}** ({a.probs[a.predicted]:.2f}); the full model "
               f"**{h.against.answer(h.against.base)}**. "
               + ("Healing leaves the full model's answer on this example." if not h.flipped else
                  "It predicts another answer than the full model here: the explanations support different answers."))
    rows: list[tuple[str, Agreement | None]] = [("with the full model's", h.vs_full), ("with the pruned model's",
                                                                                       h.vs_pruned)]
    for label, g in rows:
        if g is None:
            continue
        cols = st.columns(3)
        cols[0].metric(f"top-20% F1 {label}", _fmt(g.f1),
                       help="overlap of the two rationales (top 20% supporting words)")
        cols[1].metric(f"IoU {label}", _fmt(g.iou), help="the words in both rationales over the words in either")
        cols[2].metric(f"Spearman {label}", _fmt(g.spearman), help="rank correlation of all the words' scores")
    f = h.faithfulness
    comp, suff = METRICS["comprehensiveness"], METRICS["sufficiency"]
    full_f = h.against.base_faithfulness
    st.caption(f"Faithfulness on the healed model itself (n = 1, this example): comprehensiveness "
               f"{f.comprehensiveness:.3f} (full model {full_f.comprehensiveness:.3f}; {comp.better} is better), "
               f"sufficiency {f.sufficiency:.3f} (full {full_f.sufficiency:.3f}; {suff.better} is better). One "
               "example has no interval: read it across examples, or in a sweep with healing.")
    if sampling(h.healed.explainer):
        verdict = h.noise_verdict()
        if verdict is not None:
            (st.warning if verdict.startswith("the healed") else st.info)(verdict.capitalize() + ".")
        else:
            st.caption(f"{h.healed.explainer} samples at random: set explainer seeds to 2 or more to tell a change "
                       "in the explanation from the explainer's own noise.")


def heatmap_rows(h: HealedExplanation) -> dict[str, tuple[list[str], object]]:
    """The healed model's row of the token heatmap (on the same colour scale as the others)."""
    return {f"healed: {h.against.answer(h.healed)}": (h.healed.names, h.healed.scores)}

