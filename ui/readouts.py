"""The sidebar's readouts of the mask: what it saves, its forward latency, and the prefetched next masks.

Apart from `ui.sidebar` (the pickers and the mask controls) because these only report on the mask the
controls set, and the slow two of them (latency, prefetching) run after the page is drawn
(`ui.sidebar.after_page`), so that they never hold back the metrics.
"""

from __future__ import annotations

from collections.abc import Callable

import streamlit as st

from core.errors import Cancelled
from core.model.efficiency import Efficiency, Latency, compare_latency, efficiency
from core.model.loading import LoadedModel
from core.settings import latency_enabled
from core.study.prefetch import PREFETCHER, likely_next
from core.study.sweep import mask_label

from .state import Context


@st.cache_data(show_spinner=False, max_entries=256)
def _latency(model_id: str, drop: tuple[int, ...], _lm: LoadedModel) -> Latency:
    # gives way (Cancelled, nothing cached) as soon as another page starts computing
    return compare_latency(_lm, drop, tokens=128, stop=PREFETCHER.contended)


def _efficiency_readout(lm: LoadedModel, drop: tuple[int, ...]) -> tuple[Efficiency, Callable[[], None] | None]:
    """Draw the mask's efficiency; return it and the latency measurement, which runs after the page is drawn (it
    takes seconds for a new mask and must not hold back the metrics), filling the place kept for it here."""
    context = min(1000, lm.max_positions)
    e = efficiency(lm, drop, context=context)
    st.sidebar.caption(f"**Mask: {mask_label(drop) if drop else 'no layer dropped'}**")
    a, b = st.sidebar.columns(2)
    a.metric("attention layers kept", f"{e.layers_kept} / {e.layers}",
             help="layers whose attention still runs; a dropped layer keeps its MLP, so every layer still runs that")
    b.metric("params saved", f"{e.parameters_saved_fraction:.1%}", f"{e.parameters_saved / 1e6:.2f} M",
             delta_color="off", help="the dropped layers' attention weights (query, key, value, output), which a "
                                     "pruned model no longer needs to store")
    a.metric("FLOPs saved", f"{e.flops_saved_fraction:.1%}", f"at {context:,} tokens of context",
             delta_color="off", help="per token: the multiply-adds it no longer needs, the attention "
                                     "projections and its scores over the context")
    if lm.spec.encoder:
        b.metric("KV cache saved", "none", "an encoder keeps no KV cache", delta_color="off",
                 help="a generating model keeps keys and values per token of context for its attention; an "
                      "encoder reads its whole input at once and keeps none")
    else:
        b.metric("KV cache saved", f"{e.kv_bytes_saved_per_1k_tokens / 2**20:.1f} MiB",
                 f"of {e.kv_bytes_per_1k_tokens / 2**20:.1f} MiB per 1,000 tokens", delta_color="off",
                 help="memory a generating model keeps per token of context for its attention; a dropped layer "
                      "keeps none")
    if not st.sidebar.toggle("Measure latency", key="measure_latency", value=latency_enabled(),
                             help="time forward passes of 128 tokens with and without the mask, in turns so that "
                                  "both run under the same load (a warm-up pair, then 9 pairs), once the page is "
                                  "drawn"):
        return e, None
    slot = st.sidebar.empty()
    slot.caption("forward latency: measured once the page is drawn")

    def measure() -> None:
        try:
            t = _latency(lm.id, drop, lm)
        except Cancelled:
            slot.caption("forward latency: not measured while another computation runs (a page or a sweep); "
                         "measured when idle")
            return
        box = slot.container()
        help_text = (f"one forward pass of {t.tokens} tokens, the median of {t.pairs}; the full and the pruned model "
                     "are timed in turns, and the ratio is the median of the paired ratios with its "
                     f"{t.coverage:.0%} interval (order statistics): 'within noise' when it contains 1. The FLOP "
                     "ratio is what the mask would give if time followed the count of multiply-adds alone.")
        if not drop:
            box.metric("forward latency", f"{t.full_seconds * 1000:.0f} ms", help=help_text)
            return
        # time: lower is better (latency is not among core.metrics), so a ratio below 1 shows green
        box.metric("forward latency", f"{t.pruned_seconds * 1000:.0f} ms",
                   f"{t.ratio - 1:+.0%} [{t.lo - 1:+.0%}, {t.hi - 1:+.0%}] vs full: {t.verdict()}",
                   delta_color="inverse" if t.beyond_noise else "off", help=help_text)
        box.caption(f"full model {t.full_seconds * 1000:.0f} ms; by the FLOP count alone the mask would save "
                    f"{1 - t.flop_ratio:.1%}")
    return e, measure


def _prefetch(ctx: Context, slot) -> None:
    """Ask for the likely next masks to be evaluated in the background, and say how many are ready."""
    config = ctx.eval_config(temperature=bool(st.session_state.get("temperature", False)))
    masks = likely_next(ctx.order, ctx.drop, int(st.session_state.get("drop_k") or 0) or None)
    PREFETCHER.request(ctx.setup, config, masks)
    ready = PREFETCHER.ready(ctx.setup, config, masks)
    slot.caption(f"Likely next masks ready: **{ready} of {len(masks)}** (evaluated in the background while you "
                 "read, so those toggles answer at once)", help="adding each remaining layer in importance order, "
                 "and 'drop the k most redundant'; prefetching pauses whenever a page is being computed")

