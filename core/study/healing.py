"""Healing a pruned model: a short LoRA fine-tune with the mask active, cached by content and resumable.

After dropping layers, the literature's repair is a short parameter-efficient fine-tune (ShortGPT;
Gromov et al. 2024, QLoRA on C4; SLEB, LoRA r = 8 for one epoch; LLM-Pruner, LoRA on Alpaca), and
it reports restored accuracy or perplexity. Whether it also restores calibration and explanation
faithfulness is what this module lets one measure: the healed model is a third model (full /
pruned / pruned and healed), evaluated by the same code as the other two.

* Objectives. ``lm``: the next-token loss on unlabelled text the evaluation never sees (the data
  set's train split texts, or a user's text file, one text per line), packed into rows of
  ``seq_len`` tokens: the literature's recipe, blind to the task. ``task``: the cross-entropy of the
  candidate answers at the answer position, with the very prompt ids the scorer reads (prefix +
  text + suffix, `core.task.prompts.PromptBuilder`), on the labelled train split (the prompt's
  demonstrations left out). It tunes the model to this task and its answer words, which ``lm`` does
  not: its gains are not a repair of the model alone (`TASK_NOTE`).
* The mask stays active in training: the adapters train on a private copy of the model
  (`core.model.pruning.private_copy`, sharing the frozen weights' storage; the shared model is never
  modified) under `dropped_attention`, and sit only on the linear maps that run under the mask
  (`core.model.lora`).
* The budget reads its data at most once (a budget that needs more is refused before any
  training). Step ``s`` takes rows ``s*b .. (s+1)*b - 1`` of a permutation seeded by the config's
  seed, and the learning rate is a function of the step alone (linear warm-up over the first tenth
  of the steps, then linear decay), so a resumed run sees exactly what an uninterrupted one would.
  The copy stays in eval mode (no dropout), so no random state needs saving.
* Cache by content: the adapters (safetensors) lie under ``$PRUNE_EXPLORER_HOME/adapters/<key>``,
  keyed by the model's weights, the mask, the objective, the data (and, for ``task``, the prompt)
  and every hyper-parameter; the same request is a cache hit and trains nothing. Every
  `CHECKPOINT_EVERY` steps, and when stopped, a checkpoint (adapters, AdamW state, step, losses) is
  written atomically; a rerun resumes from it. A damaged checkpoint or adapter file is a miss (start
  over), never a crash. Two callers healing the same key at once train it once (a file lock).
* Out of memory: the step is redone with its batch split into micro-batches of half the size, the
  gradients accumulated, so the update is the same.
* The healed model and the three-way comparison live in `core.study.healed`; what a run is and reads
  (its configuration, data and losses) in `core.study.heal_data`.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from filelock import FileLock
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from ..errors import UserError
from ..model.lora import adapter_state, adapter_targets, add_adapters, load_adapter_state
from ..model.pruning import dropped_attention, private_copy
from ..progress import TrainingStep, TrainProgress
from ..settings import home
from ..task.scoring import AnswerHead
from ..task.setup import Setup
from .heal_data import (  # noqa: F401 - the healing API is imported from here
    CPU_STEPS,
    GPU_STEPS,
    HEAL_VERSION,
    OBJECTIVES,
    TASK_NOTE,
    HealConfig,
    TrainingData,
    accumulate,
    check_healable,
    default_steps,
    heal_key,
    learning_rate,
    lm_loss,
    task_loss,
    training_data,
)

log = logging.getLogger(__name__)

CHECKPOINT_EVERY = 10
MAX_HEALED = 2
"""Healed models the registry keeps (each holds its own copy of the adapted weights); the least recently
asked for goes first."""
ADAPTERS, CHECKPOINT = "adapters.safetensors", "checkpoint.safetensors"


# ---------------------------------------------------------------- files


def adapters_root() -> Path:
    """Where adapters and checkpoints are kept."""
    path = home() / "adapters"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _write(path: Path, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    """A safetensors file written whole or not at all (temporary file, then ``os.replace``)."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}-{threading.get_ident()}")
    try:
        save_file({k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}, str(tmp),
                  metadata={"heal": json.dumps(meta)})
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _read(path: Path, key: str) -> tuple[dict[str, torch.Tensor], dict] | None:
    """A file's tensors and metadata; None when absent, or when damaged or written for another key (then deleted)."""
    if not path.exists():
        return None
    try:
        with safe_open(str(path), "pt") as f:
            meta = json.loads((f.metadata() or {})["heal"])
            if meta.get("key") != key or meta.get("version") != HEAL_VERSION:
                raise ValueError("written for another request or version")
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is not iterable)
        return tensors, meta
    except (SafetensorError, OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        log.warning("healing file %s is damaged (%s): starting over", path, e)
        path.unlink(missing_ok=True)
        return None


# ---------------------------------------------------------------- healing


@dataclass
class HealResult:
    """Adapters for one model, mask and `HealConfig`: finished (``complete``) or stopped at a checkpoint."""

    key: str
    model: str
    """The id of the model the adapters were trained on (`LoadedModel.id`)."""
    drop: tuple[int, ...]
    config: HealConfig
    steps_done: int
    complete: bool
    losses: list[float]
    """The training loss of every step done, in order."""
    seconds: float
    """Training time, over every run that contributed."""
    cached: bool
    """Whether the finished adapters came from the cache (nothing trained)."""
    resumed_from: int
    """The step this run started from (0: from scratch)."""
    targets: int
    """Modules with an adapter."""
    trainable: int
    """Adapter parameters."""
    data: str
    micro_batch: int
    """The micro-batch size the last step ran at (smaller than the batch after running out of memory)."""
    state: dict[str, torch.Tensor] = field(repr=False)
    """The adapter weights (peft's names, on the CPU)."""
    path: Path | None = None
    """The folder of the cached adapters (None without a cache)."""

    @property
    def short_key(self) -> str:
        return self.key.split("-", 1)[1][:8]

    def loss_change(self, k: int = 5) -> tuple[float, float] | None:
        """The mean loss of the first and of the last ``k`` steps (None before any step)."""
        if not self.losses:
            return None
        k = min(k, len(self.losses))
        return float(np.mean(self.losses[:k])), float(np.mean(self.losses[-k:]))

    def as_dict(self) -> dict:
        change = self.loss_change()
        return {"key": self.key, "model": self.model, "dropped_attention_layers": list(self.drop),
                "config": asdict(self.config), "objective": OBJECTIVES[self.config.objective],
                "note": self.config.note, "steps_done": self.steps_done, "complete": self.complete,
                "cached": self.cached, "resumed_from": self.resumed_from, "seconds": self.seconds,
                "adapted_modules": self.targets, "adapter_parameters": self.trainable, "data": self.data,
                "micro_batch": self.micro_batch, "loss_first_steps": change[0] if change else None,
                "loss_last_steps": change[1] if change else None, "losses": self.losses,
                "path": str(self.path) if self.path else None}


def cached_steps(setup: Setup, drop: Sequence[int], config: HealConfig) -> int:
    """Steps of this request already in the cache: ``config.steps`` when finished, a checkpoint's step, or 0."""
    if setup.cache is None:
        return 0
    folder = adapters_root() / heal_key(setup, drop, config)
    for name in (ADAPTERS, CHECKPOINT):
        if (path := folder / name).exists():
            try:
                with safe_open(str(path), "pt") as f:
                    meta = json.loads((f.metadata() or {})["heal"])
                return int(meta["steps"] if name == ADAPTERS else meta["step"])
            except (SafetensorError, OSError, ValueError, KeyError, TypeError):
                continue
    return 0


def heal(setup: Setup, drop: Sequence[int], config: HealConfig = HealConfig(),  # noqa: B008 - frozen, never mutated
         progress: TrainProgress | None = None, stop: Callable[[], bool] | None = None) -> HealResult:
    """LoRA adapters that heal ``setup``'s model pruned by ``drop``: from the cache, resumed, or trained.

    Every bad request is refused with a `UserError` before any training. ``progress`` gets every
    finished step; ``stop`` is asked before each step, and when it answers True the run writes a
    checkpoint and returns an incomplete result (a later call resumes from it). With ``setup.cache``
    None nothing is read from or written to disk.
    """
    lm = setup.lm
    drop = check_healable(lm, drop)
    config.validate()
    if config.objective == "lm" and config.seq_len > lm.max_positions:
        raise UserError(f"seq_len {config.seq_len} is longer than this model's context of {lm.max_positions} tokens")
    key = heal_key(setup, drop, config)
    if setup.cache is None:
        return _train(setup, drop, config, key, None, progress, stop)
    folder = adapters_root() / key
    folder.mkdir(parents=True, exist_ok=True)
    with FileLock(str(folder / ".lock")):
        if (hit := _read(folder / ADAPTERS, key)) is not None:
            tensors, meta = hit
            return HealResult(key, lm.id, drop, config, config.steps, True, meta["losses"], meta["seconds"], True,
                              config.steps, len(adapter_targets(lm.model, drop)),
                              sum(t.numel() for t in tensors.values()), meta["data"], meta["micro_batch"], tensors,
                              folder)
        return _train(setup, drop, config, key, folder, progress, stop)


def _train(setup: Setup, drop: tuple[int, ...], config: HealConfig, key: str, folder: Path | None,
           progress: TrainProgress | None, stop: Callable[[], bool] | None) -> HealResult:
    # Outside inference mode before anything is built: a Parameter made inside it could not be trained through.
    with torch.inference_mode(False), torch.enable_grad():
        return _train_here(setup, drop, config, key, folder, progress, stop)


def _train_here(setup: Setup, drop: tuple[int, ...], config: HealConfig, key: str, folder: Path | None,
                progress: TrainProgress | None, stop: Callable[[], bool] | None) -> HealResult:
    lm = setup.lm
    data = training_data(setup, drop, config)
    targets = len(adapter_targets(lm.model, drop))  # counted before peft wraps each map in layers of its own
    model = private_copy(lm.model)
    peft_model = add_adapters(model, drop, config.rank, config.alpha, config.seed)
    params = [p for _, p in peft_model.named_parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=0.0)
    trainable = sum(p.numel() for p in params)
    start, losses, prior, micro = 0, [], 0.0, config.batch_size
    if folder is not None and (found := _read(folder / CHECKPOINT, key)) is not None:
        try:
            _restore(peft_model, optimizer, params, *found)
            start, losses, prior = found[1]["step"], list(found[1]["losses"]), float(found[1]["seconds"])
        except (ValueError, KeyError, TypeError, RuntimeError) as e:
            log.warning("healing checkpoint of %s does not fit this model (%s): starting over", key, e)
            (folder / CHECKPOINT).unlink(missing_ok=True)
            return _train_here(setup, drop, config, key, folder, progress, stop)
    if config.objective == "task":
        builder = setup.builder(drop)
        with torch.no_grad():
            head = AnswerHead(lm, builder.candidate_ids)  # the frozen output rows; no gradient reaches lm
        pad = lm.tokenizer.pad_token_id if lm.tokenizer.pad_token_id is not None else 0

        def loss_of(rows: list[int]) -> torch.Tensor:
            return task_loss(model, head, [data.rows[i] for i in rows], [data.labels[i] for i in rows],
                             [data.offered[i] for i in rows], pad)
    else:
        def loss_of(rows: list[int]) -> torch.Tensor:
            return lm_loss(model, [data.rows[i] for i in rows])

    began = time.perf_counter()

    def spent() -> float:
        return prior + time.perf_counter() - began

    def result(done: int) -> HealResult:
        return HealResult(key, lm.id, drop, config, done, done == config.steps, losses, spent(), False, start,
                          targets, trainable, data.description, micro, adapter_state(peft_model), folder)

    def checkpoint(done: int) -> None:
        if folder is not None:
            _write(folder / CHECKPOINT, _checkpoint_tensors(peft_model, optimizer, params),
                   {"key": key, "version": HEAL_VERSION, "step": done, "losses": losses, "seconds": spent()})

    with dropped_attention(model, drop):
        for step in range(start, config.steps):
            if stop is not None and stop():
                checkpoint(step)
                return result(step)
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(config, step)
            loss, micro = accumulate(data.batch(step, config.batch_size, config.seed), micro, loss_of,
                                     lambda: optimizer.zero_grad(set_to_none=True))
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(loss)
            if progress is not None:
                now = time.perf_counter() - began
                progress(TrainingStep(step + 1, config.steps, loss, now,
                                      now / (step + 1 - start) * (config.steps - step - 1)))
            if (step + 1) % CHECKPOINT_EVERY == 0 and step + 1 < config.steps:
                checkpoint(step + 1)
    out = result(config.steps)
    if folder is not None:
        _write(folder / ADAPTERS, out.state, {"key": key, "version": HEAL_VERSION, "steps": config.steps,
                                              "losses": losses, "seconds": out.seconds, "data": data.description,
                                              "micro_batch": micro})
        (folder / CHECKPOINT).unlink(missing_ok=True)
    return out


def _checkpoint_tensors(peft_model, optimizer: torch.optim.Optimizer, params: list[torch.Tensor]
                        ) -> dict[str, torch.Tensor]:
    tensors = {f"adapter/{k}": v for k, v in adapter_state(peft_model).items()}
    for i, p in enumerate(params):
        for name, value in optimizer.state.get(p, {}).items():
            tensors[f"optim/{i}/{name}"] = torch.as_tensor(value)
    return tensors


def _restore(peft_model, optimizer: torch.optim.Optimizer, params: list[torch.Tensor],
             tensors: dict[str, torch.Tensor], meta: dict) -> None:
    """Load a checkpoint's adapters and AdamW state; a `ValueError` when they do not fit."""
    load_adapter_state(peft_model, {k.removeprefix("adapter/"): v for k, v in tensors.items()
                                    if k.startswith("adapter/")})
    state: dict[int, dict[str, torch.Tensor]] = {}
    for k, v in tensors.items():
        if k.startswith("optim/"):
            _, i, name = k.split("/")
            if int(i) >= len(params):
                raise ValueError(f"optimizer state for parameter {i} of {len(params)}")
            if name != "step" and tuple(v.shape) != tuple(params[int(i)].shape):
                raise ValueError(f"optimizer state {k} has shape {tuple(v.shape)}")
            state.setdefault(int(i), {})[name] = v
    saved = optimizer.state_dict()
    saved["state"] = state
    optimizer.load_state_dict(saved)
    if not isinstance(meta["step"], int) or not isinstance(meta["losses"], list) or len(meta["losses"]) != meta["step"]:
        raise ValueError("the checkpoint's step and losses disagree")
