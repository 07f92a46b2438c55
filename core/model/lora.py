"""LoRA adapters (peft) on the linear maps that run under an attention mask, and merging them into a copy.

Which maps: under a mask a kept layer runs its whole forward, and a dropped layer runs only its MLP
branch (the architecture table's ``ffn`` and ``ffn_post_norm``, see `core.model.pruning`). So the
adapters go on every linear map (``nn.Linear``, or transformers' ``Conv1D`` in GPT-2) of each kept
layer, and on those of the MLP branch of each dropped layer: a dropped layer's attention never runs,
so an adapter there would be neither trained nor used. The names come from walking the submodules
the architecture table points to, never from a list of projection names, so every family of the
table is covered alike. Nothing outside the decoder layers (embeddings, output layer) is adapted, as
in the healing recipes of the literature (SLEB, LLM-Pruner: the layers' projections only).

The adapters are passed to peft as full module names (``LoraConfig(target_modules=[...])``), which
peft matches exactly.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict
from torch import nn
from transformers.pytorch_utils import Conv1D

from .architectures import spec_for_model
from .pruning import private_copy, validate_mask

LINEAR_TYPES = (nn.Linear, Conv1D)


def adapter_targets(model: nn.Module, drop: Sequence[int]) -> list[str]:
    """Full names of the linear maps of ``model``'s layers that run with the attention of ``drop`` skipped."""
    spec = spec_for_model(model)
    layers = spec.layer_list(model)
    dropped = set(validate_mask(drop, len(layers)))
    out: list[str] = []
    for idx, layer in enumerate(layers):
        if idx in dropped:
            branch = [name for name in (*spec.ffn, spec.ffn_post_norm) if name]
            roots = [(name, layer.get_submodule(name)) for name in branch]
        else:
            roots = [("", layer)]
        for root, module in roots:
            for sub, m in module.named_modules():
                if isinstance(m, LINEAR_TYPES):
                    out.append(".".join(part for part in (spec.layers, str(idx), root, sub) if part))
    return list(dict.fromkeys(out))


def add_adapters(model: nn.Module, drop: Sequence[int], rank: int, alpha: float, seed: int) -> PeftModel:
    """Put LoRA adapters of ``rank`` on `adapter_targets` of ``model`` (in place; pass a private copy).

    The A matrices are drawn from the CPU generator seeded with ``seed`` (the caller's random state is
    left as it was); the B matrices start at zero, so the adapted model starts as ``model``. peft
    freezes every other parameter of ``model``.
    """
    targets = adapter_targets(model, drop)
    conv = any(isinstance(model.get_submodule(name), Conv1D) for name in targets)
    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=0.0, bias="none", target_modules=targets,
                        fan_in_fan_out=conv)
    with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
        # peft 0.21 asks transformers 5 a deprecated question (is_gradient_checkpointing): nothing to act on
        warnings.filterwarnings("ignore", "`is_gradient_checkpointing` is deprecated", FutureWarning)
        torch.manual_seed(seed)
        return get_peft_model(model, config)


def adapter_state(peft_model: PeftModel) -> dict[str, torch.Tensor]:
    """The adapter weights (peft's names), detached copies on the CPU."""
    return {k: v.detach().to("cpu").clone().contiguous() for k, v in get_peft_model_state_dict(peft_model).items()}


def load_adapter_state(peft_model: PeftModel, state: dict[str, torch.Tensor]) -> None:
    """Load ``state`` into ``peft_model``'s adapters; a `ValueError` unless names and shapes match exactly."""
    own = get_peft_model_state_dict(peft_model)
    if set(own) != set(state):
        missing, extra = sorted(set(own) - set(state)), sorted(set(state) - set(own))
        raise ValueError(f"adapter names differ: missing {missing[:3]}, unexpected {extra[:3]}")
    wrong = [k for k, v in own.items() if tuple(v.shape) != tuple(state[k].shape)]
    if wrong:
        raise ValueError(f"adapter shapes differ: {wrong[:3]}")
    set_peft_model_state_dict(peft_model, state)


def merged_copy(model: nn.Module, drop: Sequence[int], rank: int, alpha: float,
                state: dict[str, torch.Tensor]) -> nn.Module:
    """A private copy of ``model`` with the adapters ``state`` merged into its weights (``model`` is untouched).

    The adapted weights get their own storage; every other weight is shared with ``model``.
    """
    copied = {f"{name}.weight" for name in adapter_targets(model, drop)}
    clone = private_copy(model, copied)
    peft_model = add_adapters(clone, drop, rank, alpha, seed=0)
    load_adapter_state(peft_model, state)
    merged = peft_model.merge_and_unload()
    for p in merged.parameters():
        p.requires_grad_(False)
    return merged
