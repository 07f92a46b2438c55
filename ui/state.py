"""The state of a session: the current selection (`Context`) and its mirror in the URL.

A view can be shared as a link and survives a reload: the model, the data set, the mask and the
chosen example go into the URL (only where they differ from the defaults) and are read back on a
session's first run. Nothing here draws a widget.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import streamlit as st

from core.cache import ResultCache
from core.explain.dataset import ExplainConfig
from core.model.loading import DEFAULT_MODEL, LoadedModel
from core.study.importance import ImportanceScores
from core.task.data import DEFAULT_DATASET, Dataset
from core.task.evaluation import EvalConfig
from core.task.prompts import PromptConfig
from core.task.setup import Setup

URL_KEYS = ("model", "dataset", "drop", "example")
"""The query parameters a link carries, in the order they are written."""
VALIDATION_N = 100
"""Validation examples that temperature scaling is fitted on, per mask."""


@dataclass
class Context:
    """Everything a page needs about the current selection; core is called with ``ctx.setup``."""

    setup: Setup
    """The model, the data, how the model answers (prompt, re-fitted head) and the result cache."""
    n: int
    explain: ExplainConfig
    drop: tuple[int, ...]
    scores: ImportanceScores
    image_format: str = "png"
    warnings: list[str] = field(default_factory=list)
    after_page: list[Callable[[], None]] = field(default_factory=list)
    """Slow extras (latency, prefetching) that `app.py` runs once the page is drawn, in order."""

    @property
    def lm(self) -> LoadedModel:
        return self.setup.lm

    @property
    def ds(self) -> Dataset:
        return self.setup.ds

    @property
    def prompt(self) -> PromptConfig:
        return self.setup.prompt

    @property
    def cache(self) -> ResultCache | None:
        return self.setup.cache

    @property
    def answers_by(self) -> str:
        """How the model answers, in words, for captions."""
        return self.setup.answers_by

    def eval_config(self, drop: tuple[int, ...] = (), temperature: bool = True) -> EvalConfig:
        """The sample every view scores; ``temperature=False`` skips the validation examples it is fitted on."""
        return EvalConfig(n=self.n, drop=drop, val_n=VALIDATION_N if temperature else 0)

    def run_config(self) -> dict:
        """The run's configuration, for the JSON download."""
        return {"model": self.lm.name, "model_fingerprint": self.lm.fingerprint, "dataset": self.ds.name,
                "dataset_fingerprint": self.ds.fingerprint, "n": self.n, "prompt": asdict(self.prompt),
                "dropped_attention_layers": list(self.drop), "explainer": self.explain.explainer,
                "explainer_params": self.explain.resolved_params(), "granularity": self.explain.granularity,
                "removal": self.explain.removal, "k_percents": list(self.explain.k_percents),
                "importance_scores": self.scores.scores, "answers_by": self.answers_by}


def init_from_url() -> None:
    """On a session's first run, take the selection from the URL."""
    if st.session_state.get("_url_loaded"):
        return
    st.session_state["_url_loaded"] = True
    params = st.query_params
    if "model" in params:
        st.session_state["model_choice"] = params["model"]
    if "dataset" in params:
        st.session_state["dataset_choice"] = params["dataset"]
    if "drop" in params:
        st.session_state["_url_drop"] = params["drop"]
    if "example" in params:
        st.session_state["example"] = params["example"]


def write_url(ctx: Context) -> None:
    """Mirror the selection in the URL (only what differs from the defaults)."""
    wanted = {"model": ctx.lm.name, "dataset": ctx.ds.name, "drop": ",".join(map(str, ctx.drop)),
              "example": st.session_state.get("example") or ""}
    defaults = {"model": DEFAULT_MODEL, "dataset": DEFAULT_DATASET, "drop": "", "example": ""}
    for key in URL_KEYS:
        value = wanted[key]
        if value and value != defaults[key]:
            if st.query_params.get(key) != value:
                st.query_params[key] = value
        elif key in st.query_params:
            del st.query_params[key]


def hand_over(ctx: Context) -> None:
    """`app.py` passes the sidebar's selection to the page it runs next."""
    st.session_state["_ctx"] = ctx


def handed_over() -> Context | None:
    """The selection `app.py` handed over for this run (taken, so that a later run builds its own), if any."""
    return st.session_state.pop("_ctx", None)
