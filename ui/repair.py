"""The Calibration view's Repair section: recalibration methods fitted on the mask's validation examples, each
against the unrepaired pruned model and the full model, and one of them overlaid on the reliability diagram.

The validation examples are scored only once the section is switched on (its toggle, key ``repair``, is
read at the top of the page, like temperature scaling's, so that the comparison there includes them);
fitting and comparing every method then takes about a second (`core.study.repair`), so the table is
computed as soon as it is asked for and kept with the comparison.
"""

from __future__ import annotations

import streamlit as st

from core.errors import UserError
from core.study.compare import ResultComparison
from core.study.repair import IMPROVES, RESTORES, repaired_probs
from core.task.recalibration import RECALIBRATORS
from core.task.uncertainty import banded_reliability_table

from .state import VALIDATION_N, Context
from .widgets import guard, table

TOGGLE, METHODS, OVERLAY = "repair", "repair_methods", "repair_overlay"
NONE = "none"
SLOW = ("isotonic",)
"""Left out of the default choice: scikit-learn is imported the first time (about a second), and at 100
validation examples it is ten times short of the 1,000 it needs."""
DEFAULT = tuple(m for m in RECALIBRATORS if m not in SLOW)


def wanted() -> bool:
    """Whether the section is switched on (then the page's comparison scores the validation examples)."""
    return bool(st.session_state.get(TOGGLE, False))


def _title(method: str) -> str:
    return RECALIBRATORS[method].title if method in RECALIBRATORS else "no overlay"


def overlay_tables(ctx: Context, c: ResultComparison, names: tuple[str, str]) -> dict[str, list[dict]]:
    """The banded reliability table of the pruned model (the full model when nothing is dropped) after the method
    chosen for the overlay, to add to the reliability diagram; empty when none is chosen or it cannot be fitted."""
    method = st.session_state.get(OVERLAY, NONE)
    if not wanted() or method not in RECALIBRATORS or c.other.val_logits is None:
        return {}
    name = names[0] if c.same_mask else names[1]
    try:
        probs = repaired_probs(c.other, method, ctx.setup)
    except UserError as err:
        st.info(f"{RECALIBRATORS[method].title} could not be overlaid: {err}")
        return {}
    return {f"{name} after {RECALIBRATORS[method].title}": banded_reliability_table(probs, c.other.labels)}


def _headline(rows: list) -> str:
    """Which methods restore the full model's calibration, which improve, and which do neither, in one line."""
    restores = [r.title for r in rows if r.verdict == RESTORES]
    improves = [r.title for r in rows if r.verdict == IMPROVES]
    others = [r.title for r in rows if r.verdict not in (RESTORES, IMPROVES)]
    parts = []
    if restores:
        parts.append(f"**restore the full model's calibration** (within noise of it): {', '.join(restores)}")
    if improves:
        parts.append(f"**improve ECE beyond noise** without reaching the full model's: {', '.join(improves)}")
    if others:
        parts.append(f"no improvement beyond noise: {', '.join(others)}")
    return "; ".join(parts) + "."


def section(ctx: Context, c: ResultComparison, names: tuple[str, str]) -> None:
    """The Repair section: the toggle, the methods, the table with its CSV and the overlay's choice."""
    st.subheader("Repair: which recalibration restores the confidence?")
    st.caption("Temperature scaling is one number per mask. Other recalibration methods can fix miscalibration that "
               "differs by answer or by confidence level; each is fitted on the mask's validation examples (never "
               "the test ones) and compared on the same test examples with the unrepaired pruned model and with "
               "the full model, with paired 95% intervals and a verdict.")
    on = st.toggle(f"Compare repair methods (fitted on {VALIDATION_N} validation examples, per mask)", key=TOGGLE,
                   help="scores the validation examples under each mask the first time (like temperature scaling), "
                        "then fits and compares every chosen method in about a second")
    if not on:
        return
    methods = st.multiselect("Methods", list(RECALIBRATORS), default=list(DEFAULT), format_func=_title, key=METHODS,
                             help="isotonic regression is left out by default: it needs about 1,000 validation "
                                  f"examples, and this view fits on {VALIDATION_N}")
    if not methods:
        st.info("Choose at least one method to compare.")
        return
    with guard("the repair comparison"):
        if c.other.val_logits is None:
            raise UserError(f"The repair methods are fitted on validation examples, and {ctx.ds.name} has no "
                            "validation split: choose a dataset with one.")
        if c.same_mask:
            st.info("No attention layer is dropped: the methods are shown on the full model, against itself. Drop "
                    "layers in the sidebar to repair a pruned model.")
        result = c.repairs(ctx.setup, methods)
        st.markdown(f"{names[0] if c.same_mask else names[1].capitalize()}, after each method: "
                    + _headline(list(result.rows[1:])))
        st.caption(f"Each metric with its 95% interval on the {result.n_test} test examples; the change against the "
                   "unrepaired pruned model and the difference from the full model with paired intervals over the "
                   f"same examples ({result.n_resamples} bootstrap resamples, shared by every row). A method that "
                   "changes predicted answers says how many, with McNemar's counts; the notes say when the "
                   f"{result.n_validation} validation examples are fewer than a method needs.")
        table(result.table(), "repair")
        flagged = [r for r in result.rows[1:] if r.flagged]
        for r in flagged:
            m = r.mcnemar
            st.caption(f"**{r.title}** changes {r.changed} predicted answers ({m.right_to_wrong} right → wrong, "
                       f"{m.wrong_to_right} wrong → right, McNemar p = {m.p_value:.2g}).")
        fitted = [r.method for r in result.rows[1:] if r.fitted]
        if st.session_state.get(OVERLAY, NONE) not in (NONE, *fitted):
            st.session_state[OVERLAY] = NONE
        st.selectbox("Overlay a method on the reliability diagram", [NONE, *fitted], format_func=_title, key=OVERLAY,
                     help="adds the repaired model's reliability curve, with its consistency bars, to the diagram "
                          "at the top of the page")
