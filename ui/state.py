"""The state of a session: the current selection (`Context`) and its mirror in the URL.

A view can be shared as a link and survives a reload: the model, the data set, the mask, the chosen
example and every setting that changes a number (`SETTINGS`: sample size, prompt style and
demonstration draw, explainer and its seeds, removal, temperature scaling, the prediction sets' alpha
and method, the healed model shown and its steps) go into the URL, only where they differ from the
defaults, and are read back on a session's first run. A value in a link that is not allowed is
ignored with a message saying what is. Nothing here draws a widget.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import streamlit as st

from core.cache import ResultCache
from core.explain.dataset import ExplainConfig
from core.explain.features import REMOVALS
from core.explain.methods import DEFAULT_EXPLAINER, EXPLAINERS
from core.model.efficiency import Efficiency
from core.model.loading import DEFAULT_MODEL, LoadedModel
from core.study.healing import CPU_STEPS, OBJECTIVES, HealResult
from core.study.importance import ImportanceScores
from core.study.sets import DEFAULT_ALPHA, DEFAULT_METHOD
from core.task.conformal import METHODS
from core.task.data import DEFAULT_DATASET, Dataset
from core.task.evaluation import EvalConfig
from core.task.prompts import STYLES, PromptConfig
from core.task.setup import Setup

URL_KEYS = ("model", "dataset", "drop", "example")
"""The query parameters of the selection itself, in the order they are written (then `SETTINGS`)."""


@dataclass(frozen=True)
class UrlSetting:
    """A widget's value carried by a link: query parameter, widget key, default and what is allowed."""

    param: str
    key: str
    default: object
    parse: Callable[[str], object]
    """The value from the link's text; raises ValueError when it is not allowed."""
    allowed: str

    def text(self, value: object) -> str:
        if isinstance(value, bool):
            return "1" if value else "0"
        return f"{value:g}" if isinstance(value, float) else str(value)


def _integer(param: str, key: str, default: int, lo: int, hi: int, step: int = 1) -> UrlSetting:
    """A whole number from ``lo`` to ``hi`` in steps of ``step``: the bounds its widget is drawn with, too."""
    def parse(raw: str) -> int:
        value = int(raw)
        if not lo <= value <= hi or (value - lo) % step:
            raise ValueError(raw)
        return value
    allowed = f"a whole number from {lo} to {hi}" if step == 1 else f"a multiple of {step} from {lo} to {hi}"
    return UrlSetting(param, key, default, parse, allowed)


def _decimal(param: str, key: str, default: float, lo: float, hi: float, step: float) -> UrlSetting:
    """A number from ``lo`` to ``hi`` in steps of ``step`` (read to the nearest step, as its slider gives it)."""
    def parse(raw: str) -> float:
        value = float(raw)
        steps = (value - lo) / step
        if not lo <= value <= hi or abs(steps - round(steps)) > 1e-6:
            raise ValueError(raw)
        return round(lo + round(steps) * step, 10)
    return UrlSetting(param, key, default, parse, f"a number from {lo:g} to {hi:g} in steps of {step:g}")


def _one_of(param: str, key: str, default: str, choices: tuple[str, ...]) -> UrlSetting:
    def parse(raw: str) -> str:
        if raw not in choices:
            raise ValueError(raw)
        return raw
    return UrlSetting(param, key, default, parse, ", ".join(choices))


def _flag(raw: str) -> bool:
    if raw not in {"0", "1"}:
        raise ValueError(raw)
    return raw == "1"


DEVICES = ("cpu-fp32", "cpu-bf16", "cuda-bf16", "cuda-fp16")
"""Where and in which precision the model runs (CPU bf16 where the CPU has bf16 instructions, the CUDA ones
where a GPU is present)."""
N_RANGE = (20, 400, 20)
"""The sample sizes the sidebar offers: smallest, largest, step."""
SEED_RANGE = (0, 999)
"""The demonstration draws the sidebar offers."""
EXPLAINER_SEEDS_RANGE = (1, 5)
"""How many seeds a sampling explainer can be run under on the Explanations view."""
ALPHA_RANGE = (0.01, 0.5, 0.01)
"""The prediction sets' miscoverage alpha the Prediction sets view offers: smallest, largest, step."""
HEAL_STEPS_RANGE = (1, 1000)
"""The healing steps the sidebar's "Heal this mask" offers."""
NOT_HEALED = "none"
"""The ``heal`` setting when the healed model is not shown (else its objective)."""

SETTINGS = (
    _one_of("device", "device", DEVICES[0], DEVICES),
    _integer("n", "n", 200, *N_RANGE),
    _one_of("prompt", "prompt_style", "few-shot", STYLES),
    _integer("seed", "prompt_seed", 0, *SEED_RANGE),
    _one_of("explainer", "explainer", DEFAULT_EXPLAINER, tuple(EXPLAINERS)),
    _one_of("removal", "removal", "delete", REMOVALS),
    _integer("explainer_seeds", "explainer_seeds", 1, *EXPLAINER_SEEDS_RANGE),
    UrlSetting("temperature", "temperature", False, _flag, "0 or 1"),
    _decimal("alpha", "alpha", DEFAULT_ALPHA, *ALPHA_RANGE),
    _one_of("method", "conformal_method", DEFAULT_METHOD, tuple(METHODS)),
    # the healed model shown beside the pruned one (`ui.heal`): its objective, and its steps where not the default
    _one_of("heal", "heal", NOT_HEALED, (NOT_HEALED, *OBJECTIVES)),
    _integer("heal_steps", "heal_steps", CPU_STEPS, *HEAL_STEPS_RANGE),
)
"""Every setting besides the selection that changes a number on a page; a shared link carries them all."""
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
    """The similarity scores (the study's importance measure), whatever the picker ranks by."""
    order: list[int] = field(default_factory=list)
    """The order the layer picker ranks layers in (its first k are the suggested drops)."""
    efficiency: Efficiency | None = None
    """What the mask saves (parameters, FLOPs, KV cache), as the sidebar shows it."""
    image_format: str = "png"
    warnings: list[str] = field(default_factory=list)
    after_page: list[Callable[[], None]] = field(default_factory=list)
    """Slow extras (latency, prefetching) that `app.py` runs once the page is drawn, in order."""
    healed: HealResult | None = None
    """The mask's healing to show as a third model (`ui.heal`): set only when asked for and its adapters are cached."""

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
    ignored = []
    for setting in SETTINGS:
        if setting.param in params:
            raw = params[setting.param]
            try:
                st.session_state[setting.key] = setting.parse(raw)
            except ValueError:
                ignored.append(f"{setting.param}={raw} (use {setting.allowed})")
    st.session_state["_url_ignored"] = ignored


def url_warnings() -> list[str]:
    """What the link asked for that is not allowed (said once, on the first run)."""
    return st.session_state.pop("_url_ignored", [])


def write_url(ctx: Context) -> None:
    """Mirror the selection and the settings in the URL (only what differs from the defaults)."""
    wanted = {"model": ctx.lm.name, "dataset": ctx.ds.name, "drop": ",".join(map(str, ctx.drop)),
              "example": st.session_state.get("example") or ""}
    defaults = {"model": DEFAULT_MODEL, "dataset": DEFAULT_DATASET, "drop": "", "example": ""}
    for setting in SETTINGS:
        value = st.session_state.get(setting.key, setting.default)
        wanted[setting.param] = setting.text(value)
        defaults[setting.param] = setting.text(setting.default)
    for key in (*URL_KEYS, *(s.param for s in SETTINGS)):
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
