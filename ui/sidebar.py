"""The shared sidebar: model and data pickers, the encoder's head, the layer panel and the efficiency readout.

`build_context` draws it and returns the selection as a `Context`; `context` is what a view calls. The
readouts of the mask (its efficiency, latency and the prefetched masks) are drawn by `ui.readouts`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from pathlib import Path

import streamlit as st
import torch

from core.cache import ResultCache
from core.errors import UserError
from core.explain.dataset import ExplainConfig
from core.explain.methods import DEFAULT_EXPLAINER, EXPLAINERS
from core.model.loading import DEFAULT_MODEL, PRESETS, LoadedModel, ModelPreset, cpu_bf16, load_model
from core.model.pruning import parse_layer_list, validate_mask
from core.settings import home, prefetch_enabled
from core.study.importance import attention_scores, calibration_texts
from core.study.strategies import QUICK, STRATEGIES, ranking
from core.study.sweep import mask_label
from core.task.data import DEFAULT_DATASET, EMBEDDED, Dataset, load_dataset
from core.task.head import train_head
from core.task.prompts import STYLES, PromptConfig
from core.task.setup import Setup

from .heal import panel as heal_panel
from .readouts import _efficiency_readout, _prefetch
from .state import DEVICES, N_RANGE, SEED_RANGE, Context, handed_over, init_from_url, url_warnings, write_url
from .widgets import guard

OWN_FILE = "own file..."
OTHER_MODEL = "hub id or local folder..."
LAST_SWEEP = "last sweep"


# ---------------------------------------------------------------- cached resources


@st.cache_resource(show_spinner="Loading the model (the first start converts it once)...")
def _model(name: str, dtype: str = "fp32", device: str = "cpu") -> LoadedModel:
    return load_model(name, dtype, device)


@st.cache_resource(show_spinner="Loading the data...")
def _dataset(name: str, text_column: str = "text", label_column: str = "label") -> Dataset:
    return load_dataset(name, text_column=text_column, label_column=label_column)


def _load_or_keep(what: str, load: Callable, args: tuple | None, default: str):
    """``load(*args)``, remembered as the last good choice; on a problem, say so and keep the last good one."""
    good = st.session_state.get(f"_good_{what}", (default,))
    if args is None:
        return load(*good)
    try:
        value = load(*args)
    except UserError as err:
        st.sidebar.error(f"{err}. Still showing {good[0]}.")
        return load(*good)
    st.session_state[f"_good_{what}"] = args
    st.session_state[f"{what}_choice"] = args[0]
    return value


# ---------------------------------------------------------------- model and data


def _preset_label(p: ModelPreset, offline: bool) -> str:
    return f"{p.name} · {p.params}" + ("" if offline else " · not installed")


def _model_picker() -> LoadedModel:
    """The packaged presets (installed or not), then anything else by hub id or folder.

    A preset that is not installed is shown with the command that installs it, as information:
    the last model that loaded stays in use meanwhile.
    """
    packaged = [p for p in PRESETS if p.embedded]
    offline = {p.name: p.available_offline() for p in PRESETS}
    by_name = {p.name: p for p in PRESETS}
    choices = [*(p.name for p in packaged), OTHER_MODEL]
    chosen = st.session_state.get("model_choice", DEFAULT_MODEL)
    if chosen not in choices:
        st.session_state["model_text"] = chosen
        chosen = OTHER_MODEL
    pick = st.sidebar.selectbox(
        "Model", choices, index=choices.index(chosen), key="model_pick",
        format_func=lambda n: _preset_label(by_name[n], offline[n]) if n in by_name else n,
        help="Models that install from package registries and run offline; or a hub id or a local folder.")
    name = pick
    if pick == OTHER_MODEL:
        name = st.sidebar.text_input("Hub id or local folder", key="model_text",
                                     placeholder="org/name or /path/to/model").strip()
    elif not offline[pick]:
        p = by_name[pick]
        good = st.session_state.get("_good_model", (DEFAULT_MODEL,))[0]
        st.sidebar.info(f"**{p.name}** ({p.params}, {p.download}; licence: {p.licence}) is not installed here. "
                        f"Install it with `{p.install}`, then reload this page. Still showing {good}.")
        name = ""
    if name in by_name:
        p = by_name[name]
        st.sidebar.caption(f"{p.kind} · {p.params} parameters · licence: {p.licence} · runs offline")
    with st.sidebar.expander("All models", expanded=False):
        for p in PRESETS:
            where = "installed, runs offline" if offline[p.name] else (
                f"install: `{p.install}`" if p.install else "needs the model hub (not in the local cache)")
            st.caption(f"**{p.name}** ({p.params}, {p.licence}): {where}")
    device, dtype = _device_picker()
    return _load_or_keep("model", _model, (name, dtype, device) if name else None, DEFAULT_MODEL)


def _device_picker() -> tuple[str, str]:
    """(device, dtype): the CPU in fp32, or in bf16 where it has bf16 instructions, or a CUDA GPU in bf16 or fp16
    where there is one; what is not available here is left out, and the help says why."""
    gpu = torch.cuda.is_available()
    bf16, why = cpu_bf16()
    available = {"cpu-fp32": True, "cpu-bf16": bf16, "cuda-bf16": gpu, "cuda-fp16": gpu}
    choices = [d for d in DEVICES if available[d]]
    asked = st.session_state.get("device", DEVICES[0])
    if asked not in choices:
        reason = "there is no CUDA GPU here: using the CPU" if asked.startswith("cuda") else f"{why}: using fp32"
        st.sidebar.warning(f"{asked} was asked for, but {reason}.")
        st.session_state["device"] = DEVICES[0]
    notes = ["fp32 is the reference: the exactness tests and the study's numbers are in fp32",
             f"CPU bf16: {why}" + ("; numbers differ from fp32 in about the third decimal" if bf16 else ""),
             "a CUDA GPU in bf16 or fp16 runs a 7B model" if gpu else "no CUDA GPU is available here"]
    choice = st.sidebar.selectbox("Device and precision", choices, key="device", disabled=len(choices) == 1,
                                  format_func=lambda c: c.replace("-", " · "), help="; ".join(notes))
    if len(choices) == 1:
        st.sidebar.caption("Device: CPU, fp32 (no CUDA GPU here, and no bf16 instructions on this CPU).")
    device, dtype = choice.split("-")
    return device, dtype


def _dataset_picker() -> Dataset:
    choices = [*EMBEDDED, OWN_FILE]
    chosen = st.session_state.get("dataset_choice", DEFAULT_DATASET)
    if chosen not in choices:
        st.session_state["data_path"] = chosen
        chosen = OWN_FILE
    pick = st.sidebar.selectbox("Dataset", choices, index=choices.index(chosen), key="dataset_pick")
    if pick != OWN_FILE:
        return _load_or_keep("dataset", _dataset, (pick,), DEFAULT_DATASET)
    upload = st.sidebar.file_uploader("CSV or JSONL with a text and a label column", type=["csv", "jsonl"],
                                      key="upload")
    path = st.sidebar.text_input("...or the path of such a file", key="data_path").strip()
    cols = st.sidebar.columns(2)
    text_col = cols[0].text_input("text column", "text", key="text_column")
    label_col = cols[1].text_input("label column", "label", key="label_column")
    if upload is not None:
        data = upload.getvalue()
        target = home() / "uploads" / f"{hashlib.sha256(data).hexdigest()[:16]}{Path(upload.name).suffix.lower()}"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        path = str(target)
    if not path:
        st.sidebar.info("Upload a file or give a path; until then the last dataset stays.")
    return _load_or_keep("dataset", _dataset, (path, text_col, label_col) if path else None, DEFAULT_DATASET)


# ---------------------------------------------------------------- the encoder's head


def _head_panel(lm: LoadedModel, ds: Dataset, prompt: PromptConfig, cache: ResultCache) -> bool:
    """For an encoder: fit (or fetch from the cache) its head, say what it is, and offer re-fitting after pruning."""
    slot = st.sidebar.empty()
    bar: list = []

    def update(done: int, total: int) -> None:  # a bar only when the head is really being fitted
        if not bar:
            bar.append(slot.progress(0.0))
        bar[0].progress(min(done / max(total, 1), 1.0), text=f"Fitting the classifier head (once): {done}/{total}")

    head = train_head(lm, ds, prompt, cache=cache, progress=update)
    slot.empty()
    st.sidebar.caption(f"Classifier head: logistic regression on the mean-pooled encoder output, trained on "
                       f"{head.train_n:,} {ds.name} train texts (C = {head.c:g} chosen on {head.val_n} "
                       f"validation texts, where it is right {head.val_accuracy:.0%} of the time).")
    return st.sidebar.toggle("Prune, then re-fit the head", key="refit_head", value=False,
                             help="off: the head fitted on the full encoder stays frozen, as in the study; on: the "
                                  "pruned model gets a head fitted on the pruned encoder (a few seconds per mask), "
                                  "showing how much of the damage a cheap re-fit repairs")


# ---------------------------------------------------------------- layers and efficiency


def _keep_key(i: int) -> str:
    return f"keep_{i}"


def apply_mask(drop: Sequence[int], n_layers: int, commit: bool = True) -> None:
    """Set the sidebar's layer toggles to mask ``drop`` (call it from a widget's ``on_click``).

    ``commit=False`` only sets the toggles: in Apply mode they are a draft until Apply is pressed.
    """
    for i in range(n_layers):
        st.session_state[_keep_key(i)] = i not in drop
    if commit:
        st.session_state["_mask"] = tuple(sorted(drop))


def _toggled(n: int) -> tuple[int, ...]:
    """The mask the layer toggles show (a draft in Apply mode)."""
    return tuple(i for i in range(n) if not st.session_state.get(_keep_key(i), True))


def _current_mask(lm: LoadedModel) -> tuple[int, ...]:
    """The mask the pages evaluate: the toggles, or in Apply mode the last applied ones.

    Read before the toggles are drawn (their values are in the session state already), so that the
    efficiency of the mask can be shown above them. A new model starts from the link's mask, or none.
    """
    n = lm.num_layers
    if st.session_state.get("_mask_model") != lm.id:
        st.session_state["_mask_model"] = lm.id
        drop: list[int] = []
        raw = st.session_state.pop("_url_drop", "")
        if raw:
            try:
                drop = list(validate_mask(parse_layer_list(raw), n))
            except UserError as err:
                st.sidebar.error(f"The link's mask was ignored: {err}")
        apply_mask(drop, n)
    if not st.session_state.get("apply_mode"):
        st.session_state["_mask"] = _toggled(n)
    return st.session_state["_mask"]


def _ranking(setup: Setup) -> tuple[list[int], list[float] | None, str]:
    """The order the picker lists layers in, each layer's score if the order has one, and its name.

    Any quick strategy, or the order of the last sweep run on the Trade-offs view (a greedy one too).
    """
    n = setup.lm.num_layers
    sweep = st.session_state.get("sweep_order")
    ours = st.session_state.get("sweep_model") == setup.lm.id  # a sweep run here on this model (not a file's)
    options = list(QUICK) + ([LAST_SWEEP] if ours and sweep and sorted(sweep) == list(range(n)) else [])
    if st.session_state.get("rank_by") not in options:
        st.session_state["rank_by"] = QUICK[0]
    name = st.sidebar.selectbox(
        "Rank layers by", options, key="rank_by",
        format_func=lambda o: f"the last sweep's order ({st.session_state.get('sweep_source', '')})"
        if o == LAST_SWEEP else o,
        help="the order a strategy drops layers in: the first in the list are its safest drops. "
             + "; ".join(f"{q}: {STRATEGIES[q]}" for q in QUICK) + ". Greedy strategies evaluate masks to "
             "choose: run one on the Trade-offs view, then rank by its order here.")
    if name == LAST_SWEEP:
        return list(sweep), None, "the last sweep"
    order, scores = ranking(setup, name)
    return order, scores, name


def _layer_panel(setup: Setup, drop: tuple[int, ...]) -> list[int]:
    """The ranked layer picker under the efficiency readout; returns the order it ranks by."""
    n = setup.lm.num_layers
    order, scores, name = _ranking(setup)
    k = int(st.sidebar.number_input("Suggested drops", min_value=0, max_value=n, value=min(4, n), step=1, key="drop_k",
                                    help="how many of the first layers in this order to suggest; they are "
                                         "marked ★ below before you drop them"))
    suggested = order[:k]
    apply_mode = bool(st.session_state.get("apply_mode"))

    def drop_k() -> None:
        apply_mask(suggested, n, commit=not st.session_state.get("apply_mode"))

    cols = st.sidebar.columns(2)
    cols[0].button(f"Drop the {k} ★", key="drop_k_button", on_click=drop_k, width="stretch",
                   help=f"switch off layers {mask_label(suggested)}")
    cols[1].button("Reset all", key="reset_button", width="stretch",
                   on_click=lambda: apply_mask([], n, commit=not st.session_state.get("apply_mode")))
    st.sidebar.toggle("Apply changes together", key="apply_mode", value=False,
                      help="off: each switch is evaluated at once; on: switch several layers, then press Apply "
                           "for one evaluation of them all")
    if apply_mode:
        draft = _toggled(n)
        off, on = sorted(set(draft) - set(drop)), sorted(set(drop) - set(draft))
        if off or on:
            words = "; ".join(w for w in (f"drop {mask_label(off)}" if off else "",
                                          f"restore {mask_label(on)}" if on else "") if w)
            st.sidebar.warning(f"Not applied yet: {words}.")
            a, b = st.sidebar.columns(2)
            a.button(f"Apply {len(off) + len(on)} change{'s' * (len(off) + len(on) > 1)}", key="apply_button",
                     type="primary", width="stretch",
                     on_click=lambda: st.session_state.update(_mask=_toggled(n)))
            b.button("Discard", key="discard_button", width="stretch", on_click=lambda: apply_mask(drop, n))
    st.sidebar.caption(f"In {name} order, the safest to drop first"
                       + (" (its score: lower is more redundant)" if scores else "")
                       + ". Switch a layer off to drop its attention; ★ marks the suggested drops.",
                       help="similarity: 1 - cos(x, x + attn(x)) over calibration texts (He et al. 2024); "
                            "block-influence: 1 - cos(layer input, layer output) (ShortGPT)")
    for i in range(n):
        st.session_state.setdefault(_keep_key(i), True)
    grid = st.sidebar.columns(2)
    for rank, i in enumerate(order):
        label = f"{i}" + (f" · {scores[i]:.3f}" if scores else "") + (" :orange[★]" if i in suggested else "")
        grid[rank % 2].toggle(label, key=_keep_key(i))
    return order


def banner(ctx: Context) -> None:
    """One line over every page: the mask and what it saves, and any switches not applied yet."""
    e = ctx.efficiency
    if not ctx.drop:
        text = (f"**Full model**: all {e.layers} attention layers. Switch layers off in the sidebar, or drop the "
                "★ suggested ones.")
    else:
        kv = ("" if ctx.lm.spec.encoder else
              f", {e.kv_bytes_saved_per_1k_tokens / e.kv_bytes_per_1k_tokens:.0%} of the KV cache")
        text = (f"**Mask: {len(ctx.drop)} of {e.layers} attention layers dropped** ({mask_label(ctx.drop)}): saves "
                f"{e.parameters_saved_fraction:.1%} of the parameters, {e.flops_saved_fraction:.1%} of the FLOPs per "
                f"token{kv}.")
    if st.session_state.get("apply_mode") and _toggled(ctx.lm.num_layers) != ctx.drop:
        text += " :orange[Layer switches not applied yet: press Apply in the sidebar.]"
    st.caption(text)


# ---------------------------------------------------------------- the whole sidebar


def sidebar() -> Context:
    """Build the shared sidebar and return the current selection."""
    init_from_url()
    st.sidebar.title("Attention pruning explorer")
    for ignored in url_warnings():
        st.sidebar.warning(f"The link's {ignored} was ignored.")
    cache = ResultCache()
    lm = _model_picker()
    ds = _dataset_picker()
    # an encoder answers through its head, so its prompt is always the default one
    refit = _head_panel(lm, ds, PromptConfig(), cache) if lm.task == "classifier" else False
    with st.sidebar.expander("Prompt, sample and explainer", expanded=False):
        style, prompt_seed = "few-shot", 0
        if lm.task != "classifier":  # an encoder answers through its head; there is no prompt
            styles = [s for s in STYLES if s != "chat" or lm.has_chat_template]
            if st.session_state.get("prompt_style", "few-shot") not in styles:
                st.warning(f"{lm.name} has no chat template: using the few-shot prompt.")
                st.session_state["prompt_style"] = "few-shot"
            style = st.selectbox("Prompt style", styles, index=1, key="prompt_style")
            prompt_seed = int(st.number_input(
                "Demonstration draw (seed)", *SEED_RANGE, 0, key="prompt_seed", disabled=style == "zero-shot",
                help="which demonstrations the few-shot prompt shows; the Calibration page measures how much "
                     "the numbers move between draws"))
        n = int(st.slider("Examples", N_RANGE[0], N_RANGE[1], 200, step=N_RANGE[2], key="n",
                          help="test examples scored for accuracy and calibration"))
        explainer = st.selectbox("Explainer", list(EXPLAINERS), index=list(EXPLAINERS).index(DEFAULT_EXPLAINER),
                                 format_func=lambda e: EXPLAINERS[e].title, key="explainer")
        removal = st.selectbox("Removing a word", ["delete", "pad", "unk"], key="removal",
                               help="for perturbation explainers and faithfulness: delete its tokens or "
                                    "replace them by the pad / unknown token")
        image_format = st.radio("Chart downloads", ["png", "svg"], horizontal=True, key="image_format",
                                help="the camera button above each chart saves this format")
    explain = ExplainConfig.make(explainer, removal=removal)
    try:
        explain.validate()
    except UserError as err:
        st.sidebar.error(f"{err}; using 'delete'.")
        explain = ExplainConfig.make(explainer)
    setup = Setup(lm, ds, PromptConfig(style=style, seed=prompt_seed), refit_head=refit, cache=cache)
    scores = attention_scores(lm, calibration_texts(ds), cache=cache)
    st.sidebar.subheader("Attention layers")
    drop = _current_mask(lm)
    saved, latency = _efficiency_readout(lm, drop)
    order = _layer_panel(setup, drop)
    healed = heal_panel(setup, drop)  # the healing to show as a third model, once its adapters are cached
    prefetch_slot = st.sidebar.empty()
    ctx = Context(setup=setup, n=n, explain=explain, drop=drop, scores=scores, order=order, efficiency=saved,
                  image_format=image_format, after_page=[latency] if latency else [], healed=healed)
    if prefetch_enabled() and not refit:
        ctx.after_page.append(lambda: _prefetch(ctx, prefetch_slot))
    st.sidebar.download_button("Download run configuration (JSON)", json.dumps(ctx.run_config(), indent=2),
                               file_name="run-config.json", mime="application/json", key="download_config")
    return ctx


def after_page(ctx: Context) -> None:
    """Run the selection's slow extras (latency, prefetching) now that the page is drawn."""
    for job in ctx.after_page:
        with guard("the sidebar"):
            job()


def build_context() -> Context:
    """Draw the shared sidebar, mirror the selection in the URL, and return it (stop on a fatal error)."""
    ctx = None
    with guard("the sidebar"):
        ctx = sidebar()
    if ctx is None:
        st.stop()
    write_url(ctx)
    return ctx


def context() -> Context:
    """The selection for this page: handed over by `app.py` (built here if a view runs on its own).

    The views live in ``views/``, not ``pages/``: Streamlit treats a ``pages/`` folder beside the
    entry script as a classic multipage app and then runs a page file without `app.py` (on a
    server's first run, and on every AppTest run), which would lose the shared sidebar.
    """
    ctx = handed_over()
    return ctx if ctx is not None else build_context()
