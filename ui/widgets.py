"""Drawing helpers shared by the sidebar and the views: errors, progress bars, charts, tables, metric tiles.

Nothing here computes; a metric's direction and meaning come from `core.metrics.METRICS`.
"""

from __future__ import annotations

import contextlib
import logging
import time
import zlib
from collections.abc import Callable, Iterable, Iterator

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from core.errors import UserError
from core.metrics import METRICS
from core.progress import Progress, StageProgress
from core.study.compare import ResultComparison
from core.study.figures import reliability_diagram
from core.task.evaluation import PartialResult
from core.task.uncertainty import banded_reliability_table, calibration_intervals

from .state import N_RANGE, Context

log = logging.getLogger("prune_explorer")

TILES = ("accuracy", "ece", "smooth_ece", "brier", "label_mass")
"""The metric tiles over the views (keys of `METRICS`); a tile whose metric a model lacks is left out."""
MAX_N = N_RANGE[1]
"""The largest sample the sidebar's slider offers."""


# ---------------------------------------------------------------- errors


@contextlib.contextmanager
def guard(what: str = "this view") -> Iterator[None]:
    """Show a problem as a message; a UserError says what to change, anything else is logged."""
    try:
        yield
    except UserError as err:
        st.error(str(err))
    except Exception as err:  # noqa: BLE001 - the page must never show a traceback
        log.exception("unexpected error in %s", what)
        st.error(f"Something went wrong in {what}: {type(err).__name__}: {err}. Results already computed are "
                 "kept; change the selection or reload the page.")


# ---------------------------------------------------------------- progress


@contextlib.contextmanager
def progress_bar(text: str) -> Iterator[Progress]:
    """A (done, total) callback drawing an ``st.progress`` bar labelled ``text``; the bar goes on leaving.

    Streamlit stops a run when the user changes a widget at the next element update, so a long
    computation reporting progress is abandoned as soon as its result is no longer wanted.
    """
    bar = st.progress(0.0, text=text)

    def update(done: int, total: int) -> None:
        bar.progress(min(done / max(total, 1), 1.0), text=f"{text}: {done}/{total}")

    try:
        yield update
    finally:
        bar.empty()


@contextlib.contextmanager
def stage_bar(describe: Callable[[str, float, int], str], start: str = "starting") -> Iterator[StageProgress]:
    """A (what, done, total) callback drawing one ``st.progress`` bar for work in stages, labelled by ``describe``."""
    bar = st.progress(0.0, text=start)
    last = [0.0]

    def update(what: str, done: float, total: int) -> None:
        # each update is a message the browser redraws the page for: at most a few a second, so that it does
        # not take the cores the computation needs
        if time.perf_counter() - last[0] < BAR_INTERVAL and done < total:
            return
        last[0] = time.perf_counter()
        bar.progress(min(done / max(total, 1), 1.0), text=describe(what, done, total))

    try:
        yield update
    finally:
        bar.empty()


def scoring_bar(n: int) -> contextlib.AbstractContextManager[StageProgress]:
    """The bar shown while `core.study.compare.compare_results` scores ``n`` examples under each mask."""
    return stage_bar(lambda what, done, total: f"Scoring {n} examples ({what}): {done:.0f}/{total}",
                     start=f"Scoring {n} examples")


BAR_INTERVAL = 0.5
"""Seconds between two redraws of a progress bar."""
LIVE_TILES = ("accuracy", "ece", "brier")
LIVE_RESAMPLES = 200
"""Bootstrap resamples for the intervals shown while a sample is coming in (the final ones use 1,000)."""


def live_tiles(intervals: dict, keys: tuple[str, ...], done: int) -> None:
    """One "so far" tile per metric of ``keys`` with its interval on the ``done`` examples scored yet."""
    for col, key in zip(st.columns(len(keys)), keys, strict=True):
        iv = intervals[key]
        col.metric(f"{METRICS[key].title} so far", f"{iv.value:.3f}", help=METRICS[key].meaning)
        col.caption(f"95% CI {iv.lo:.3f} to {iv.hi:.3f} on {done}")


@contextlib.contextmanager
def live_results() -> Iterator[Callable[[str, PartialResult], None]]:
    """A ``partial`` callback for `compare_results`: while a side is scored, its first numbers, their 95%
    intervals (narrowing as examples arrive) and its reliability diagram, in a slot cleared on leaving."""
    slot = st.empty()
    start = time.perf_counter()

    def show(name: str, p: PartialResult) -> None:
        if p.done == p.total:
            return  # the whole result is drawn next
        intervals = calibration_intervals(p.probs, p.labels, n_resamples=LIVE_RESAMPLES)
        with slot.container(border=True):
            st.markdown(f"**{name}: {p.done} of {p.total} examples in** after {time.perf_counter() - start:.1f} s. "
                        "First numbers on a part of the sample spread over every input length; the intervals narrow "
                        "as the rest arrives.")
            live_tiles(intervals, LIVE_TILES, p.done)
            st.plotly_chart(reliability_diagram({f"{name}, {p.done} of {p.total}":
                                                 banded_reliability_table(p.probs, p.labels)}),
                            key=f"live-{name}-{p.done}", width="stretch", config={"displaylogo": False})

    try:
        yield show
    finally:
        slot.empty()


# ---------------------------------------------------------------- charts and tables


def chart(fig: go.Figure, name: str, ctx: Context, key: str | None = None, selectable: bool = False) -> list[dict]:
    """A plotly chart whose camera button downloads ``name`` in the chosen format (PNG or SVG).

    ``selectable``: clicking a point reruns the page; the selected points are returned (else nothing).
    """
    config = {"displaylogo": False, "toImageButtonOptions": {"format": ctx.image_format, "filename": name,
                                                             "scale": 2 if ctx.image_format == "png" else 1}}
    event = st.plotly_chart(fig, config=config, key=key or f"chart-{name}", width="stretch",
                            **({"on_select": "rerun", "selection_mode": "points"} if selectable else {}))
    return list(event.selection.points) if selectable and event else []


def table(df: pd.DataFrame, name: str, key: str | None = None, selectable: bool = False,
          **kwargs: object) -> list[int]:
    """A table with a CSV download button under it.

    ``selectable``: a row can be clicked (it reruns the page); the selected rows' positions are returned.
    """
    # the key carries a fingerprint of the data: a row picked in one table must not select a row of another
    fingerprint = zlib.crc32(pd.util.hash_pandas_object(df, index=False).to_numpy().tobytes()) if selectable else 0
    event = st.dataframe(df, width="stretch", **kwargs, **(
        {"on_select": "rerun", "selection_mode": "single-row", "key": f"rows-{name}-{fingerprint:x}"}
        if selectable else {}))
    rows = [r for r in event.selection.rows if r < len(df)] if selectable and event else []
    st.download_button(f"Download {name}.csv", df.to_csv(index=kwargs.get("hide_index") is not True),
                       file_name=f"{name}.csv", mime="text/csv", key=key or f"csv-{name}")
    return rows


# ---------------------------------------------------------------- metrics


def delta_color(key: str) -> str:
    """``st.metric``'s delta colour for metric ``key``: a rise is green where higher is better, red where lower is."""
    return "inverse" if METRICS[key].lower_is_better else "normal"


def direction_note(keys: Iterable[str]) -> str:
    """Which way is better for the metrics ``keys``, in one sentence.

    The calibration metrics give "Lower is better for every metric but accuracy."
    """
    keys = list(keys)
    lower = [METRICS[k].title for k in keys if METRICS[k].lower_is_better]
    higher = [METRICS[k].title for k in keys if not METRICS[k].lower_is_better]
    if not higher or not lower:
        return f"{'Lower' if lower else 'Higher'} is better for every metric."
    most, few = ("Lower", higher) if len(lower) >= len(higher) else ("Higher", lower)
    return f"{most} is better for every metric but {_join(few)}."


def _join(words: list[str]) -> str:
    return words[0] if len(words) == 1 else f"{', '.join(words[:-1])} and {words[-1]}"


def metrics_row(c: ResultComparison, n_layers: int, n_dropped: int) -> None:
    """The shown model's headline metrics, each with its 95% interval; with a mask, the change from the full
    model with its paired interval and verdict. A change within noise gets no colour."""
    pruned = not c.same_mask
    stats = c.stats() if pruned else None
    intervals = stats.other if stats else c.base.intervals()
    keys = [k for k in TILES if k in intervals]
    cols = st.columns(len(keys) + 1)
    for col, key in zip(cols, keys, strict=False):
        m, iv = METRICS[key], intervals[key]
        if stats is None:
            col.metric(m.title, f"{iv.value:.3f}", help=m.meaning)
            col.caption(f"95% CI {iv.lo:.3f} to {iv.hi:.3f}")
            continue
        d = stats.difference[key]
        col.metric(m.title, f"{iv.value:.3f}", f"{d.value:+.3f}", help=m.meaning,
                   delta_color=delta_color(key) if d.beyond_noise else "off")
        col.caption(f"95% CI {iv.lo:.3f} to {iv.hi:.3f}; change [{d.lo:+.3f}, {d.hi:+.3f}]: "
                    f"**{m.verdict(d.value, d.beyond_noise, d.p_value)}**")
    cols[-1].metric("attention layers kept", f"{n_layers - n_dropped} / {n_layers}",
                    help="layers whose attention still runs; a dropped layer keeps its MLP, so every layer still "
                         "runs that")


def verdict_line(c: ResultComparison, names: tuple[str, str]) -> str:
    """One plain sentence on the pruned model against the full one (or on the full model alone), with noise."""
    full = c.base.metrics
    conf_full = float(c.base.probs.max(axis=1).mean())
    gap = lambda acc, conf: ("overconfident" if conf > acc else "underconfident", abs(conf - acc))  # noqa: E731
    word, by = gap(full.accuracy, conf_full)
    if c.same_mask:
        floor = c.base.noise_floor()["ece"]
        calibrated = ("consistent with perfect calibration at this n" if floor.consistent else
                      f"beyond what chance gives a calibrated model (up to {floor.q95:.3f} at this n)")
        return (f"The full model is right {full.accuracy:.0%} of the time and {conf_full:.0%} sure on average: "
                f"{word} by {by * 100:.0f} points; its ECE {full.ece:.3f} is {calibrated}.")
    s, other = c.stats(), c.other.metrics
    conf = float(c.other.probs.max(axis=1).mean())
    word2, by2 = gap(other.accuracy, conf)
    ece = s.difference["ece"]
    m = s.mcnemar
    return (f"{names[1].capitalize()}: right {other.accuracy:.0%} of the time, {conf:.0%} sure on average: {word2} "
            f"by {by2 * 100:.0f} points; the {names[0]} is {word} by {by * 100:.0f}. Accuracy "
            f"{METRICS['accuracy'].verdict(s.difference['accuracy'].value, s.difference['accuracy'].beyond_noise)} "
            f"({m.right_to_wrong} answers went right → wrong, {m.wrong_to_right} wrong → right, McNemar "
            f"p = {m.p_value:.2g}); ECE {METRICS['ece'].verdict(ece.value, ece.beyond_noise, ece.p_value)}.")


def sample_size_hint(c: ResultComparison, n_available: int, key: str = "ece", delta: float = 0.02) -> None:
    """How many examples would resolve a ``delta`` change in ``key``, with a button that sets the sample size."""
    if c.same_mask:
        return
    needed = c.stats().examples_needed(key, delta)
    title = METRICS[key].title
    if needed <= c.base.n:
        st.caption(f"At n = {c.base.n}, a change of {delta} in {title} would be resolved (80% power).")
        return
    limit = min(MAX_N, n_available)
    target = min(-(-needed // 20) * 20, limit - limit % 20)
    left, right = st.columns([3, 1])
    left.caption(f"To resolve a {delta} change in {title} (80% power), evaluate about **{needed:,}** examples; "
                 f"this is {c.base.n}."
                 + (f" The app goes up to {limit}: use `python -m core compare --n {needed}` for more."
                    if needed > limit else ""))
    if target > c.base.n:
        right.button(f"Use n = {target}", key=f"raise-n-{key}", on_click=lambda: st.session_state.update(n=target),
                     help="sets the sample size in the sidebar and re-evaluates")
