"""A loaded model, as the rest of `core` holds it: the model, its tokenizer, its architecture and what
identifies its weights.

Apart from `core.model.loading` because most of `core` only needs to hold a model, not to find or load
one: a handle built elsewhere (a notebook's model, a test's tiny one, a healed copy) is wrapped with
`wrap_model` and used like a loaded one. `core.model.loading` imports these names, so they are still
imported from there too.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

import torch
import xxhash
from torch import nn
from transformers import PreTrainedTokenizerBase

from .architectures import ArchSpec
from .devices import DTYPES
from .pruning import install


@dataclass
class LoadedModel:
    """A loaded model shared by every caller; masks are applied per call (see `core.pruning`)."""

    name: str
    model: nn.Module
    tokenizer: PreTrainedTokenizerBase
    spec: ArchSpec
    fingerprint: str
    dtype: str
    device: str
    source: str
    num_layers: int
    has_chat_template: bool
    max_positions: int
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def task(self) -> str:
        """'causal-lm' answers through next-token probabilities; 'classifier' (an encoder) through a trained head."""
        return "classifier" if self.spec.encoder else "causal-lm"

    @property
    def id(self) -> str:
        """What identifies this model's weights in cache keys."""
        return f"{self.name}@{self.fingerprint}"


def _weights_fingerprint(model: nn.Module) -> str:
    h = xxhash.xxh3_128()
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().to("cpu").contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def wrap_model(
    name: str, model: nn.Module, tokenizer: PreTrainedTokenizerBase, source: str = "memory"
) -> LoadedModel:
    """Wrap an already-built model (a notebook's, or a test's) so the rest of `core` can use it."""
    spec = install(model)
    model.eval()
    param = next(model.parameters())
    dtype = {v: k for k, v in DTYPES.items()}.get(param.dtype, str(param.dtype))
    config = model.config
    return LoadedModel(
        name=name,
        model=model,
        tokenizer=tokenizer,
        spec=spec,
        fingerprint=_weights_fingerprint(model),
        dtype=dtype,
        device=str(param.device),
        source=source,
        num_layers=len(spec.layer_list(model)),
        has_chat_template=bool(getattr(tokenizer, "chat_template", None)),
        max_positions=int(
            getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", 2048)
        ),
    )


def model_summary(lm: LoadedModel) -> dict[str, object]:
    n_params = sum(p.numel() for p in lm.model.parameters())
    return {
        "name": lm.name,
        "family": lm.spec.family,
        "parameters": n_params,
        "layers": lm.num_layers,
        "dtype": lm.dtype,
        "device": lm.device,
        "fingerprint": lm.fingerprint,
    }
