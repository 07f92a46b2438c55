"""Drawing helpers shared by the sidebar and the views: errors, progress bars, charts, tables, metric tiles.

Nothing here computes; a metric's direction and meaning come from `core.metrics.METRICS`.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterable, Iterator

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from core.errors import UserError
from core.metrics import METRICS
from core.progress import Progress, StageProgress
from core.task.calibration import CalibrationReport

from .state import Context

log = logging.getLogger("prune_explorer")

TILES = (("accuracy", "accuracy"), ("ECE", "ece"), ("Brier", "brier"))
"""The metric tiles over the views: (label, key in `METRICS`)."""


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

    def update(what: str, done: float, total: int) -> None:
        bar.progress(min(done / max(total, 1), 1.0), text=describe(what, done, total))

    try:
        yield update
    finally:
        bar.empty()


def scoring_bar(n: int) -> contextlib.AbstractContextManager[StageProgress]:
    """The bar shown while `core.study.compare.compare_results` scores ``n`` examples under each mask."""
    return stage_bar(lambda what, done, total: f"Scoring {n} examples ({what}): {done:.0f}/{total}",
                     start=f"Scoring {n} examples")


# ---------------------------------------------------------------- charts and tables


def chart(fig: go.Figure, name: str, ctx: Context, key: str | None = None) -> None:
    """A plotly chart whose camera button downloads ``name`` in the chosen format (PNG or SVG)."""
    config = {"displaylogo": False, "toImageButtonOptions": {"format": ctx.image_format, "filename": name,
                                                             "scale": 2 if ctx.image_format == "png" else 1}}
    st.plotly_chart(fig, config=config, key=key or f"chart-{name}", width="stretch")


def table(df: pd.DataFrame, name: str, key: str | None = None, **kwargs: object) -> None:
    """A table with a CSV download button under it."""
    st.dataframe(df, width="stretch", **kwargs)
    st.download_button(f"Download {name}.csv", df.to_csv(index=kwargs.get("hide_index") is not True),
                       file_name=f"{name}.csv", mime="text/csv", key=key or f"csv-{name}")


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


def metrics_row(full: CalibrationReport, pruned: CalibrationReport | None, n_layers: int, n_dropped: int) -> None:
    """Accuracy, ECE and Brier of the shown model (the pruned one, if any) with its change from the full model."""
    shown = pruned or full
    cols = st.columns(len(TILES) + 1)
    for col, (label, key) in zip(cols, TILES, strict=False):
        value, before = getattr(shown, key), getattr(full, key)
        col.metric(label, f"{value:.3f}", f"{value - before:+.3f}" if pruned else None, delta_color=delta_color(key),
                   help=METRICS[key].meaning)
    cols[-1].metric("attention layers kept", f"{n_layers - n_dropped} / {n_layers}")
