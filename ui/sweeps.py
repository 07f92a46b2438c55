"""Sweeps in the app: the estimate before one, its status while it runs in the background, and setting the
sidebar's mask from a result.

A sweep is a `core.study.jobs.SweepJob` kept in the session: it goes on when a widget is touched or
the page is left, a Stop ends it at the next batch, and running it again resumes from the cache.
"""

from __future__ import annotations

import time

import streamlit as st

from core.errors import UserError
from core.model.pruning import parse_layer_list, validate_mask
from core.study.jobs import SweepJob
from core.study.strategies import QUICK, StrategyConfig, layer_order
from core.study.sweep import PointConfig, estimate_sweep

from .sidebar import apply_mask
from .state import Context

JOB = "sweep_job"
POLL = 1.0
"""Seconds between two redraws of a running sweep's status."""


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.0f} min"


def estimate(ctx: Context, strategy: StrategyConfig, max_drop: int, config: PointConfig,
             latency: bool = True, order: list[int] | None = None) -> str:
    """What the sweep would cost, in one sentence: masks, how many are cached, and the time for the rest.

    ``order``: the layers' order when it is given rather than the strategy's.
    """
    where = "the sidebar's" if order is not None else strategy.name
    if order is None and strategy.name in QUICK:
        order = layer_order(ctx.setup, strategy)
    e = estimate_sweep(ctx.setup, order, max_drop, config)
    steps = max_drop + 1
    what = (f"{steps} masks (0 to {max_drop} layers dropped"
            + (f", in {where} order)" if order is not None else
               f"; {strategy.name} first searches the order, evaluating candidate masks on "
               f"{strategy.calibration_n} validation examples)"))
    cached = f": **{sum(e.cached)} cached, {e.to_compute} to compute**" if order is not None else ""
    if order is not None and not e.to_compute:
        return f"{what}{cached}, so it takes seconds."
    cost = (f", about **{_duration(e.seconds)}**" + (" plus the search" if order is None else "") + f" ({e.basis})"
            if e.seconds is not None else f"; {e.basis}")
    return f"{what}{cached}{cost}" + (", plus a latency measurement per mask (about a second when idle)."
                                       if latency else ".")


def job() -> SweepJob | None:
    return st.session_state.get(JOB)


def running() -> bool:
    """Whether this session's sweep is still running."""
    return (j := job()) is not None and j.running


def start(ctx: Context, strategy: StrategyConfig, max_drop: int, config: PointConfig, source: str,
          latency: bool = True, order: list[int] | None = None) -> None:
    """Start a sweep in the background (one per session: a running one is stopped first).

    ``order``: drop the layers in this order rather than the strategy's.
    """
    if (old := job()) is not None and old.running:
        old.stop()
    st.session_state[JOB] = SweepJob(ctx.setup, strategy, max_drop, config, latency=latency, order=order).start()
    st.session_state["_sweep_job_source"] = f"{source}, {ctx.lm.name} on {ctx.ds.name}, n = {ctx.n}"
    st.session_state["_sweep_job_settings"] = {
        **ctx.run_config(), "n": config.eval.n, "validation_n": config.eval.val_n,
        "faithfulness_n": config.faith_n if config.explain else 0, "strategy": strategy.name,
        "alpha": config.alpha, "conformal_method": config.method}
    st.session_state["_sweep_job_taken"] = False


def status() -> None:
    """The current sweep's status lines (redrawn every second while it runs, with Stop); once it ends, its
    table becomes the one the page draws."""
    j = job()
    if j is None:
        return
    if not j.running:
        if _take(j):
            st.rerun()  # once, so that the sidebar (drawn before this) can rank layers by the new sweep's order
        _summary(j)
        return

    @st.fragment(run_every=POLL)
    def watch() -> None:
        if not j.running:
            st.rerun()  # the whole page, to draw the results
        done = j.done
        with st.container(border=True):
            left, right = st.columns([4, 1])
            source = st.session_state.get("_sweep_job_source", j.strategy.name)
            left.markdown(f"**Sweep running ({source}): {done} of {len(j.lines)} masks done** after "
                          f"{_duration(time.time() - j.started)}. It goes on if you change a setting or leave this "
                          "page; every finished mask is cached.")
            right.button("Stop", key="sweep_stop", on_click=j.stop, width="stretch",
                         help="ends it at the next batch; run it again to resume, the masks done are cached")
            st.caption(j.stage)
            st.dataframe(j.status(), hide_index=True, width="stretch")

    watch()


def _summary(j: SweepJob) -> None:
    done = j.done
    if j.error:
        st.error(f"The sweep failed after {done} of {len(j.lines)} masks: {j.error}. The masks done are cached.")
    elif j.stopped and done < len(j.lines):
        st.warning(f"The sweep was stopped after {done} of {len(j.lines)} masks. Run it again to resume: the "
                   f"{done} done are cached.")
    with st.expander(f"Status of the last sweep ({done} of {len(j.lines)} masks)", expanded=False):
        st.dataframe(j.status(), hide_index=True, width="stretch")


def _take(j: SweepJob) -> bool:
    """Make a finished job's rows the page's sweep table (once; a stopped one only if there is no table yet), with
    the settings it ran with; whether it did now."""
    if st.session_state.get("_sweep_job_taken") or not j.rows:
        return False
    st.session_state["_sweep_job_taken"] = True
    if len(j.rows) < len(j.lines) and st.session_state.get("sweep_table") is not None:
        return False  # the masks it did are cached; the complete table shown before stays
    st.session_state.update(sweep_table=j.table(), sweep_order=list(j.order or []), sweep_model=j.setup.lm.id,
                            sweep_source=st.session_state.get("_sweep_job_source", j.strategy.name),
                            sweep_settings=st.session_state.get("_sweep_job_settings", {}))
    return True


def use_mask_button(ctx: Context, label: str | None, key: str) -> None:
    """A button that sets the sidebar's mask to ``label`` (a mask label such as "3,7,12" or "none")."""
    if not label:
        return
    try:
        drop = list(validate_mask([] if label == "none" else parse_layer_list(label), ctx.lm.num_layers))
    except UserError as err:
        st.caption(f"Mask {label} does not fit {ctx.lm.name}: {err}.")
        return
    if tuple(sorted(drop)) == tuple(sorted(ctx.drop)):
        st.caption(f"Mask {label} is the sidebar's mask.")
        return
    st.button(f"Set the sidebar's mask to {label}", key=key, type="primary",
              on_click=lambda: apply_mask(drop, ctx.lm.num_layers),
              help="switches exactly these attention layers off, for every view")
