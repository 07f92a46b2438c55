"""Dropping attention layers for one call, without changing the shared model for anyone else.

`install` wraps each decoder layer's ``forward`` once with a dispatcher. The dispatcher reads the
mask of the *current context* (a `contextvars.ContextVar`, so each thread and each asyncio task has
its own): for a kept layer it calls the original forward unchanged; for a dropped layer it runs only
the MLP branch given by the architecture table, so the attention (and its norms) is never computed.
With no mask active the model behaves exactly as the unpruned model.

A model built by copying an installed one (`private_copy`) gets dispatchers of its own: a plain
``copy.deepcopy`` would keep dispatchers that look up the *original* model's mask and call the
original layers' forwards, so the copy would silently compute with the original's weights.

A dropped layer writes nothing to the KV cache. transformers reads the cache length and the mask
sizes from one layer (the first), which is empty when that layer is dropped, and then silently
builds a wrong causal mask. `MaskAwareCache` answers those questions from the first *kept* layer of
the same kind (full or sliding window).

The same dispatcher can also *resume* a forward pass (`resumed`, used by `core.model.states`): the
layers below a start layer return their input untouched (they are not run), the start layer gets a
stored residual stream in place of its input, and the states entering chosen layers are handed to a
sink as the pass goes. The embeddings, the causal mask and the position embeddings are still made by
the model's own forward, so every family works the same way; only the layers' work is skipped.
"""

from __future__ import annotations

import contextvars
import copy
from collections.abc import Callable, Container, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from types import MethodType

import torch
from torch import nn
from transformers import DynamicCache

from ..errors import UserError
from .architectures import ArchSpec, spec_for_model

# model id -> frozenset of dropped layer indices, for the current context only
_ACTIVE: contextvars.ContextVar[dict[int, frozenset[int]] | None] = contextvars.ContextVar(
    "dropped_attention", default=None
)
_INSTALLED = "_attn_drop_installed"


@dataclass(frozen=True)
class RunPlan:
    """How one forward pass of a model runs its layers (see the module notes): from ``start`` on, with
    ``inject`` as the residual stream entering layer ``start``, and the states entering the layers of
    ``record`` handed to ``sink(layer, hidden)``."""

    start: int = 0
    inject: torch.Tensor | None = None
    record: frozenset[int] = frozenset()
    sink: Callable[[int, torch.Tensor], None] | None = None


# model id -> the plan of the forward pass running in the current context
_PLAN: contextvars.ContextVar[dict[int, RunPlan] | None] = contextvars.ContextVar("run_plan", default=None)


def num_layers(model: nn.Module) -> int:
    return len(spec_for_model(model).layer_list(model))


def validate_mask(layers: Iterable[int], n_layers: int) -> tuple[int, ...]:
    """Check a list of attention-layer indices and return it sorted.

    Raises `UserError` for a non-integer, negative, out-of-range or duplicated index.
    """
    out: list[int] = []
    for raw in layers:
        if isinstance(raw, bool) or not isinstance(raw, int):
            try:
                idx = int(str(raw).strip())
            except ValueError:
                raise UserError(
                    f"attention layer '{raw}' is not an integer; use indices 0..{n_layers - 1}"
                ) from None
        else:
            idx = raw
        if idx < 0:
            raise UserError(f"attention layer {idx} is negative; use indices 0..{n_layers - 1}")
        if idx >= n_layers:
            raise UserError(
                f"attention layer {idx} is out of range: this model has {n_layers} layers (0..{n_layers - 1})"
            )
        if idx in out:
            raise UserError(f"attention layer {idx} is listed twice")
        out.append(idx)
    return tuple(sorted(out))


def parse_layer_list(text: str | None) -> list[str]:
    """Split a comma-separated CLI value like ``"25,26,29"``; empty means no layer."""
    if text is None or not text.strip():
        return []
    return [part for part in (p.strip() for p in text.split(",")) if part != ""]


def install(model: nn.Module) -> ArchSpec:
    """Wrap every decoder layer of ``model`` with the mask dispatcher (idempotent)."""
    spec = spec_for_model(model)
    if getattr(model, _INSTALLED, False):
        return spec
    key = id(model)
    for idx, layer in enumerate(spec.layer_list(model)):
        original = layer.forward

        def forward(self: nn.Module, *args: object, _idx: int = idx, _orig=original, **kwargs: object):
            hidden = args[0] if args else kwargs["hidden_states"]
            plan = (_PLAN.get() or {}).get(key)
            if plan is not None:
                if _idx < plan.start:
                    return hidden  # below the start: this layer's output is already in the injected state
                if _idx == plan.start and plan.inject is not None:
                    hidden = plan.inject.to(device=hidden.device, dtype=hidden.dtype)  # type: ignore[union-attr]
                    if args:
                        args = (hidden, *args[1:])
                    else:
                        kwargs = {**kwargs, "hidden_states": hidden}
                if plan.sink is not None and _idx in plan.record:
                    plan.sink(_idx, hidden)  # type: ignore[arg-type]
            dropped = (_ACTIVE.get() or {}).get(key)
            if dropped is None or _idx not in dropped:
                return _orig(*args, **kwargs)
            return spec.mlp_only(self, hidden)  # type: ignore[arg-type]

        forward._mask_dispatcher = True  # type: ignore[attr-defined]
        layer.forward = MethodType(forward, layer)
    setattr(model, _INSTALLED, True)
    return spec


def private_copy(model: nn.Module, copied: Container[str] = ()) -> nn.Module:
    """A copy of ``model`` with its own mask dispatcher, that shares no parameter object with it.

    Parameters named in ``copied`` get their own storage (code that writes them, e.g. merging LoRA
    weights, leaves ``model`` untouched); every other parameter is a new ``Parameter`` over the same
    storage, so the copy costs no weight memory, and setting ``requires_grad`` on it changes nothing
    of ``model``. Writing into a shared parameter's data would write into ``model``: name it in
    ``copied``. Tied weights stay tied. The copy is returned with its dispatcher installed.
    """
    named = list(model.named_parameters(remove_duplicate=False))
    own = {id(param) for name, param in named if name in copied}  # a tied weight named once is copied
    memo: dict[int, object] = {}
    for _, param in named:
        if id(param) not in own and id(param) not in memo:
            memo[id(param)] = nn.Parameter(param.data, requires_grad=param.requires_grad)
    clone = copy.deepcopy(model, memo)
    for layer in spec_for_model(clone).layer_list(clone):
        if getattr(layer.__dict__.get("forward"), "_mask_dispatcher", False):
            del layer.forward  # back to the class's forward, bound to the copied layer
    if _INSTALLED in clone.__dict__:
        delattr(clone, _INSTALLED)
    install(clone)
    return clone


def active_mask(model: nn.Module) -> frozenset[int]:
    """The attention layers dropped for ``model`` in the current context."""
    return (_ACTIVE.get() or {}).get(id(model), frozenset())


@contextmanager
def dropped_attention(model: nn.Module, layers: Iterable[int]) -> Iterator[tuple[int, ...]]:
    """Drop the attention of ``layers`` for calls made inside the block, in this context only.

    The mask is undone on exit, also when the block raises. Other threads using the same model at
    the same time see their own mask (or none).
    """
    install(model)
    mask = validate_mask(layers, num_layers(model))
    current = dict(_ACTIVE.get() or {})
    current[id(model)] = frozenset(mask)
    token = _ACTIVE.set(current)
    try:
        yield mask
    finally:
        _ACTIVE.reset(token)


@contextmanager
def resumed(model: nn.Module, plan: RunPlan) -> Iterator[None]:
    """Run the forward passes of ``model`` made inside the block by ``plan``, in this context only."""
    install(model)
    current = dict(_PLAN.get() or {})
    current[id(model)] = plan
    token = _PLAN.set(current)
    try:
        yield
    finally:
        _PLAN.reset(token)


class MaskAwareCache(DynamicCache):
    """A `DynamicCache` that answers length questions from the first kept layer of the same kind."""

    def __init__(self, model: nn.Module, kept: Sequence[int]) -> None:
        # With the config, one typed layer (full or sliding window) is built per decoder layer.
        super().__init__(config=model.config)
        self.kept = sorted(kept)
        self._sliding = list(self.is_sliding)

    def _remap(self, layer_idx: int) -> int:
        if not self.kept or layer_idx in self.kept:
            return layer_idx
        kind = self._sliding[layer_idx]
        same = [i for i in self.kept if self._sliding[i] == kind]
        return same[0] if same else self.kept[0]

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return super().get_seq_length(self._remap(layer_idx))

    def get_mask_sizes(self, query_length: int, layer_idx: int) -> tuple[int, int]:  # type: ignore[override]
        return super().get_mask_sizes(query_length, self._remap(layer_idx))

    def get_query_offset(self, layer_idx: int = 0) -> int:
        return super().get_query_offset(self._remap(layer_idx))


def new_cache(model: nn.Module, start: int = 0) -> MaskAwareCache:
    """An empty cache for ``model`` under the mask active in this context.

    ``start``: the forward passes that fill and read it run from that layer on (`resumed`), so the
    layers below it are not run and hold nothing, like dropped ones.
    """
    dropped = active_mask(model)
    kept = [i for i in range(start, num_layers(model)) if i not in dropped]
    return MaskAwareCache(model, kept)


def expand_cache(model: nn.Module, prefix: MaskAwareCache, batch: int) -> MaskAwareCache:
    """A fresh cache holding ``prefix``'s keys and values repeated over ``batch`` rows (and its kept layers).

    The prefix tensors are shared (``expand``), never written: each batch appends to new tensors.
    """
    cache = MaskAwareCache(model, prefix.kept)
    for dst, src in zip(cache.layers, prefix.layers, strict=True):
        if getattr(src, "is_initialized", False) and src.keys is not None and src.keys.numel() > 0:
            keys = src.keys.expand(batch, *src.keys.shape[1:])
            values = src.values.expand(batch, *src.values.shape[1:])
            dst.update(keys, values)
    return cache


def attention_param_count(model: nn.Module, layers: Iterable[int]) -> int:
    """Parameters in the attention branches (attention module and its own norms) of ``layers``."""
    spec = spec_for_model(model)
    layer_list = spec.layer_list(model)
    total = 0
    for idx in layers:
        layer = layer_list[idx]
        mods = [spec.attention_module(layer)]
        if spec.attn_post_norm:
            mods.append(spec.branch_output_module(layer))
        total += sum(p.numel() for m in mods for p in m.parameters())
    return total
