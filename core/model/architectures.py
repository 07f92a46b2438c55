"""The architecture table: the only place that knows the module names of each model family.

Every other module asks this table where the decoder layers are, which submodule is a layer's
attention, and what a layer computes once its attention branch is skipped.

What "dropping the attention of layer i" means (He et al. 2024):

* pre-LN decoders (Llama, Mistral, Qwen2, Qwen3, Gemma, Phi3, GPT-2, GPT-NeoX, pre-LN OPT):
  ``h = h + attn(ln(h))`` becomes ``h = h``; the MLP branch ``h = h + mlp(ln2(h))`` stays.
* sandwich-norm decoders (Gemma2, Gemma3): the attention branch includes its post-attention norm,
  ``h = h + post_norm(attn(ln(h)))`` becomes ``h = h``; the MLP branch with its two norms stays.
* GPT-NeoX with parallel residual computes ``h + attn(ln1(h)) + mlp(ln2(h))``; without attention
  that is ``h + mlp(ln2(h))``, the same formula as the sequential case.
* post-LN OPT (``do_layer_norm_before=False``, opt-350m): the attention block is
  ``LN(h + attn(h))``; skipping it passes ``h`` through unchanged, the LayerNorm included.
* post-LN BERT encoders (all-MiniLM-L6-v2): ``BertAttention`` is the whole block
  ``LN(h + dense(self_attn(h)))``; skipping it passes ``h`` through unchanged, its LayerNorm
  included, and the layer computes only its feed-forward block ``LN(h + dense(act(W h)))``
  (``BertOutput(BertIntermediate(h), h)``). There is no KV cache in an encoder.

Attribute names may be dotted (``output.LayerNorm``) to reach into a submodule.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import nn

from ..errors import UserError


@dataclass(frozen=True)
class ArchSpec:
    """Where a family keeps its modules, and what a layer computes without its attention."""

    family: str
    model_types: tuple[str, ...]
    layers: str
    """Dotted path from the loaded model (causal LM, or bare encoder) to the ``ModuleList`` of layers."""
    attention: str
    """Attribute of a layer holding its self-attention module."""
    ffn: tuple[str, ...]
    """Layer attributes applied in order to form the MLP branch that stays when attention is dropped."""
    attn_post_norm: str | None = None
    """A norm applied to the attention output before the residual add (Gemma2/3): part of the branch."""
    ffn_post_norm: str | None = None
    """Post-LN only: the norm applied after the MLP residual add."""
    attn_block_out: str | None = None
    """Post-LN only: the module whose output is the residual stream after the attention block."""
    prefix_cache: bool = True
    """Whether a shared prompt prefix can be reused through the KV cache."""
    encoder: bool = False
    """A bidirectional encoder with no LM head: it answers through a trained classifier head."""

    def resolve(self, config: object) -> ArchSpec:
        """Return the variant that matches a concrete config (post-LN OPT differs from pre-LN OPT)."""
        if self.family == "opt" and getattr(config, "do_layer_norm_before", True) is False:
            return replace(
                self,
                ffn=("fc1", "activation_fn", "fc2"),
                ffn_post_norm="final_layer_norm",
                attn_block_out="self_attn_layer_norm",
            )
        return self

    def layer_list(self, model: nn.Module) -> nn.ModuleList:
        """The decoder layers of ``model``."""
        obj = submodule(model, self.layers)
        if not isinstance(obj, nn.ModuleList):
            raise TypeError(f"{self.layers} is not a ModuleList in {type(model).__name__}")
        return obj

    def attention_module(self, layer: nn.Module) -> nn.Module:
        return submodule(layer, self.attention)

    def branch_output_module(self, layer: nn.Module) -> nn.Module:
        """The module whose output is the attention branch (added to the residual)."""
        return submodule(layer, self.attn_post_norm or self.attention)

    def block_output_module(self, layer: nn.Module) -> nn.Module | None:
        """Post-LN only: the module whose output is the residual stream after the attention block."""
        return submodule(layer, self.attn_block_out) if self.attn_block_out else None

    def mlp_only(self, layer: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
        """What ``layer`` computes on ``hidden`` when its attention branch is skipped."""
        out = hidden
        for name in self.ffn:
            out = submodule(layer, name)(out)
        out = hidden + out
        if self.ffn_post_norm is not None:
            out = submodule(layer, self.ffn_post_norm)(out)
        return out


def submodule(module: nn.Module, dotted: str) -> nn.Module:
    """``module.a.b`` for ``"a.b"``."""
    obj = module
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


_LLAMA_LIKE = dict(layers="model.layers", attention="self_attn", ffn=("post_attention_layernorm", "mlp"))
_SANDWICH = dict(
    layers="model.layers",
    attention="self_attn",
    attn_post_norm="post_attention_layernorm",
    ffn=("pre_feedforward_layernorm", "mlp", "post_feedforward_layernorm"),
)

ARCHITECTURES: tuple[ArchSpec, ...] = (
    ArchSpec("llama", ("llama",), **_LLAMA_LIKE),
    ArchSpec("mistral", ("mistral",), **_LLAMA_LIKE),
    ArchSpec("qwen2", ("qwen2",), **_LLAMA_LIKE),
    ArchSpec("qwen3", ("qwen3",), **_LLAMA_LIKE),
    ArchSpec("gemma", ("gemma",), **_LLAMA_LIKE),
    ArchSpec("gemma2", ("gemma2",), **_SANDWICH),
    ArchSpec("gemma3", ("gemma3_text",), **_SANDWICH),
    ArchSpec(
        "phi3",
        ("phi3",),
        layers="model.layers",
        attention="self_attn",
        ffn=("post_attention_layernorm", "mlp", "resid_mlp_dropout"),
    ),
    ArchSpec("gpt2", ("gpt2",), layers="transformer.h", attention="attn", ffn=("ln_2", "mlp")),
    ArchSpec(
        "gpt_neox",
        ("gpt_neox",),
        layers="gpt_neox.layers",
        attention="attention",
        ffn=("post_attention_layernorm", "mlp", "post_mlp_dropout"),
    ),
    ArchSpec(
        "opt",
        ("opt",),
        layers="model.decoder.layers",
        attention="self_attn",
        ffn=("final_layer_norm", "fc1", "activation_fn", "fc2"),
    ),
    ArchSpec(
        "bert",
        ("bert",),
        layers="encoder.layer",
        attention="attention",
        ffn=("intermediate", "output.dense", "output.dropout"),
        ffn_post_norm="output.LayerNorm",
        attn_block_out="attention",
        prefix_cache=False,
        encoder=True,
    ),
)

_BY_MODEL_TYPE = {mt: spec for spec in ARCHITECTURES for mt in spec.model_types}


def supported_model_types() -> list[str]:
    return sorted(_BY_MODEL_TYPE)


def spec_for_config(config: object) -> ArchSpec:
    """The table entry for a transformers config, or a `UserError` naming what is supported."""
    model_type = getattr(config, "model_type", None)
    spec = _BY_MODEL_TYPE.get(str(model_type))
    if spec is None:
        raise UserError(
            f"unsupported architecture '{model_type}'. Supported model types: "
            + ", ".join(supported_model_types())
        )
    return spec.resolve(config)


def spec_for_family(family: str) -> ArchSpec:
    """The table entry of a family name (as the model presets give it)."""
    for spec in ARCHITECTURES:
        if spec.family == family:
            return spec
    raise UserError(f"unknown model family '{family}'; known: {', '.join(s.family for s in ARCHITECTURES)}")


def spec_for_model(model: nn.Module) -> ArchSpec:
    return spec_for_config(model.config)
