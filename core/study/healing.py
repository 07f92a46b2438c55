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
* The healed model (`healed_model`): the adapters merged (peft ``merge_and_unload``) into another
  private copy whose adapted weights have their own storage, wrapped as a `LoadedModel` named
  ``<model>+heal-<key>``; a small registry gives every caller the same copy. Its name and merged
  weights give it its own id, so every result cache key of the core tells it apart. It is scored
  under the same mask as the pruned model (`compare_healed`): "pruned and healed".
"""

from __future__ import annotations

import gc
import hashlib
import json
import logging
import math
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from filelock import FileLock
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from ..cache import cache_key
from ..errors import UserError
from ..metrics import METRICS
from ..model.loading import LoadedModel, wrap_model
from ..model.lora import adapter_state, adapter_targets, add_adapters, load_adapter_state, merged_copy
from ..model.pruning import dropped_attention, private_copy, validate_mask
from ..progress import StageProgress, TrainingStep, TrainProgress
from ..settings import home
from ..task.evaluation import EvalConfig, EvalResult, evaluate
from ..task.prompts import PromptBuilder, candidate_mask
from ..task.scoring import AnswerHead
from ..task.setup import Setup
from ..task.uncertainty import N_RESAMPLES
from .compare import PairedStats, ResultComparison

log = logging.getLogger(__name__)

HEAL_VERSION = 1
OBJECTIVES = {
    "lm": "next-token loss on unlabelled text the evaluation never sees (the literature's healing recipe)",
    "task": "the answer loss on the labelled train split, with the scorer's prompt and answer words",
}
TASK_NOTE = ("the task objective trains on the labelled train split with the scorer's own prompt and answer "
             "words: it tunes the model to this task, which the lm objective (unlabelled text) does not")
CPU_STEPS = 50
"""The default budget on a CPU: 50 steps of 8 rows (64 tokens each for ``lm``), a few minutes on 2 cores."""
GPU_STEPS = 250
"""The default budget on a GPU."""
CHECKPOINT_EVERY = 10
MAX_HEALED = 2
"""Healed models the registry keeps (each holds its own copy of the adapted weights); the least recently
asked for goes first."""
ADAPTERS, CHECKPOINT = "adapters.safetensors", "checkpoint.safetensors"


def default_steps(device: str) -> int:
    """The default step budget for a model on ``device``."""
    return GPU_STEPS if device.startswith("cuda") or device == "auto" else CPU_STEPS


@dataclass(frozen=True)
class HealConfig:
    """What defines a healing run (every field is part of its cache key)."""

    objective: str = "lm"
    steps: int = CPU_STEPS
    rank: int = 8
    alpha: float = 16.0
    lr: float = 1e-3
    batch_size: int = 8
    seq_len: int = 64
    """``lm``: tokens per packed row (``task`` rows are the prompts, of their own length)."""
    text_n: int | None = None
    """Train texts (or file lines) to draw from; None: all of them."""
    seed: int = 0
    """Seeds the LoRA initialisation, the draw of ``text_n`` texts and the order of the rows."""
    text_file: str | None = None
    """``lm`` only: a UTF-8 file of unlabelled text, one text per line, instead of the train split."""

    def validate(self) -> None:
        """A `UserError` naming what is allowed, for any value that cannot train."""
        if self.objective not in OBJECTIVES:
            raise UserError(f"unknown healing objective '{self.objective}'; use "
                            + " or ".join(f"{k} ({v})" for k, v in OBJECTIVES.items()))
        for name, value in (("steps", self.steps), ("rank", self.rank), ("batch size", self.batch_size)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise UserError(f"{name} must be a whole number of at least 1 (got {value})")
        if not math.isfinite(self.lr) or self.lr < 0:
            raise UserError(f"the learning rate must be 0 or more (got {self.lr}); 0 trains nothing")
        if not math.isfinite(self.alpha) or self.alpha <= 0:
            raise UserError(f"LoRA alpha must be more than 0 (got {self.alpha})")
        if self.seq_len < 2:
            raise UserError(f"seq_len must be at least 2 tokens, one to read and one to predict (got {self.seq_len})")
        if self.text_n is not None and self.text_n < 1:
            raise UserError(f"text_n must be at least 1, or unset for every train text (got {self.text_n})")
        if self.text_file is not None and self.objective != "lm":
            raise UserError("a text file is unlabelled text, for the lm objective; the task objective trains on "
                            "the data set's labelled train split")

    @property
    def note(self) -> str | None:
        """What a reader must know about this objective (the task objective tunes to the task)."""
        return TASK_NOTE if self.objective == "task" else None


def check_healable(lm: LoadedModel, drop: Sequence[int]) -> tuple[int, ...]:
    """The validated mask, or a `UserError` for what healing cannot repair."""
    if lm.task == "classifier":
        raise UserError(f"'{lm.name}' is an encoder classifier: healing trains LoRA adapters of a causal LM (the "
                        "lm objective needs next-token predictions, and training through an encoder's fitted head "
                        "is out of scope); for an encoder, --refit-head fits its head on the pruned encoder instead")
    mask = validate_mask(drop, lm.num_layers)
    if not mask:
        raise UserError("healing repairs a pruned model: drop at least one attention layer (--drop-attn or --drop-k)")
    devices = set((getattr(lm.model, "hf_device_map", None) or {}).values())
    if len(devices) > 1:
        raise UserError("healing needs the whole model on one device; load it with --device cuda (or cpu), not auto")
    return mask


# ---------------------------------------------------------------- data


def _read_text_file(path: str) -> tuple[list[str], str]:
    """The non-empty lines of a UTF-8 file, and the file's SHA-256."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise UserError(f"text file '{path}' does not exist (give a UTF-8 file with one text per line)")
    data = p.read_bytes()
    try:
        lines = data.decode("utf-8").splitlines()
    except UnicodeDecodeError:
        raise UserError(f"text file '{path}' is not UTF-8 text") from None
    texts = [line.strip() for line in lines if line.strip()]
    if not texts:
        raise UserError(f"text file '{path}' has no text (one text per line)")
    return texts, hashlib.sha256(data).hexdigest()


def _data_key(setup: Setup, drop: Sequence[int], config: HealConfig) -> dict:
    """What defines the training data, for the cache key."""
    if config.objective == "task":
        return {"dataset": setup.ds.fingerprint, "split": "train", "prompt": setup.builder(drop).describe()}
    if config.text_file is not None:
        return {"text_file_sha256": _read_text_file(config.text_file)[1]}
    return {"dataset": setup.ds.fingerprint, "split": "train"}


def heal_key(setup: Setup, drop: Sequence[int], config: HealConfig) -> str:
    """The cache key of healing ``setup``'s model under mask ``drop`` with ``config``."""
    return cache_key("heal", heal_version=HEAL_VERSION, model=setup.lm.id, drop=sorted(drop),
                     data=_data_key(setup, drop, config), **asdict(replace(config, text_file=None)))


@dataclass
class TrainingData:
    """The rows a healing run trains on: packed token rows (``lm``) or prompts with their answers (``task``)."""

    rows: list[list[int]]
    description: str
    tokens: int
    """Tokens in the rows (what one pass over them reads)."""
    labels: list[int] = field(default_factory=list)
    """``task``: each row's answer (index of its candidate)."""
    offered: list[list[bool]] = field(default_factory=list)
    """``task``: which candidates each row offers."""
    example_ids: list[str] = field(default_factory=list)
    """``task``: the train example of each row."""

    def batch(self, step: int, size: int, seed: int) -> list[int]:
        """The rows of step ``step``: a slice of a permutation seeded by ``seed`` (a function of the step alone)."""
        order = np.random.default_rng(seed).permutation(len(self.rows))
        return [int(i) for i in order[step * size : (step + 1) * size]]


def training_data(setup: Setup, drop: Sequence[int], config: HealConfig) -> TrainingData:
    """The rows ``config`` trains on; a `UserError` when one pass over them is too short for the budget."""
    need = config.steps * config.batch_size
    tok = setup.lm.tokenizer
    if config.objective == "task":
        builder = setup.builder(drop)
        assert isinstance(builder, PromptBuilder)
        demos = {ex.id for ex in builder.demos}
        pool, _ = setup.ds.sample("train", config.text_n, seed=config.seed)
        examples = [ex for ex in pool if ex.id not in demos]
        rows = [builder.prefix_ids + builder.encode(ex.text).ids for ex in examples]
        data = TrainingData(rows, f"{len(rows)} labelled train examples of '{setup.ds.name}'",
                            sum(len(r) for r in rows), labels=[ex.label for ex in examples],
                            offered=candidate_mask([ex.n_options for ex in examples], len(builder.candidate_ids)),
                            example_ids=[ex.id for ex in examples])
        if len(rows) < need:
            raise UserError(f"{config.steps} steps of {config.batch_size} examples need {need} labelled examples, "
                            f"but {data.description} are available (healing reads each at most once): use fewer "
                            f"--steps or a smaller --batch-size{', or a larger --text-n' if config.text_n else ''}")
        return data
    if config.text_file is not None:
        texts = _read_text_file(config.text_file)[0][: config.text_n]
        source = f"{len(texts)} lines of '{config.text_file}'"
    else:
        texts = [ex.text for ex in setup.ds.sample("train", config.text_n, seed=config.seed)[0]]
        source = f"{len(texts)} train texts of '{setup.ds.name}'"
    eos = [tok.eos_token_id] if tok.eos_token_id is not None else []
    stream = [i for ids in tok(texts, add_special_tokens=False)["input_ids"] for i in (*ids, *eos)]
    n_rows = len(stream) // config.seq_len
    rows = [stream[r * config.seq_len : (r + 1) * config.seq_len] for r in range(n_rows)]
    if n_rows < need:
        raise UserError(
            f"{config.steps} steps of {config.batch_size} rows of {config.seq_len} tokens need "
            f"{need * config.seq_len:,} tokens, but {source} give {len(stream):,} tokens ({n_rows} full rows): "
            "healing reads its text at most once. Give more text (a larger --text-file or --text-n), or fewer "
            "--steps, a smaller --batch-size or --seq-len")
    return TrainingData(rows, f"{source}, packed into {n_rows} rows of {config.seq_len} tokens",
                        n_rows * config.seq_len)


# ---------------------------------------------------------------- losses


def lm_loss(model: torch.nn.Module, rows: Sequence[Sequence[int]]) -> torch.Tensor:
    """Mean next-token cross-entropy of equal-length token rows under the mask active for ``model``."""
    device = next(model.parameters()).device
    ids = torch.tensor([list(r) for r in rows], device=device)
    logits = model(input_ids=ids, use_cache=False).logits[:, :-1]
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), ids[:, 1:].reshape(-1))


def task_loss(model: torch.nn.Module, head: AnswerHead, rows: Sequence[Sequence[int]], labels: Sequence[int],
              offered: Sequence[Sequence[bool]], pad: int) -> torch.Tensor:
    """Mean cross-entropy of the answers over the offered candidates, read where the scorer reads them.

    ``rows`` are whole prompts (prefix + text + suffix ids), right-padded here; the answer is the
    output layer's candidate rows at each row's last real position (`core.task.scoring`).
    """
    device = next(model.parameters()).device
    lengths = [len(r) for r in rows]
    width = max(lengths)
    ids = torch.full((len(rows), width), pad, dtype=torch.long, device=device)
    mask = torch.zeros((len(rows), width), dtype=torch.long, device=device)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(list(r), device=device)
        mask[i, : len(r)] = 1
    positions = torch.arange(width, device=device).expand(len(rows), -1)
    hidden = model.base_model(input_ids=ids, attention_mask=mask, position_ids=positions,
                              use_cache=False).last_hidden_state
    last = hidden[torch.arange(len(rows), device=device), torch.tensor(lengths, device=device) - 1]
    logits = head(last).float().masked_fill(~torch.tensor(offered, device=device), -math.inf)
    return F.cross_entropy(logits, torch.tensor(list(labels), device=device))


def learning_rate(config: HealConfig, step: int) -> float:
    """Linear warm-up over the first tenth of the steps, then linear decay (a function of the step alone)."""
    warmup = config.steps // 10
    if step < warmup:
        return config.lr * (step + 1) / warmup
    return config.lr * (config.steps - step) / (config.steps - warmup)


def accumulate(rows: list[int], micro: int, loss_of: Callable[[list[int]], torch.Tensor],
               reset: Callable[[], None]) -> tuple[float, int]:
    """Backpropagate the mean loss over ``rows`` in micro-batches of ``micro``; on running out of memory the
    step starts over with micro-batches of half the size. Returns the loss and the micro-batch size used."""
    while True:
        try:
            total = 0.0
            for start in range(0, len(rows), micro):
                part = rows[start : start + micro]
                loss = loss_of(part) * (len(part) / len(rows))
                loss.backward()
                total += float(loss.detach())
            return total, micro
        except torch.OutOfMemoryError:
            reset()
            if micro == 1:
                raise UserError("out of memory with one row per batch: use bf16, a smaller --seq-len, or a "
                                "device with more memory") from None
            micro = max(1, micro // 2)
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            log.warning("out of memory while healing: retrying the step in batches of %d", micro)


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


def heal(setup: Setup, drop: Sequence[int], config: HealConfig = HealConfig(),
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


# ---------------------------------------------------------------- the healed model


_HEALED: OrderedDict[tuple[str, str], LoadedModel] = OrderedDict()
_HEALED_LOCK = threading.Lock()
_BUILD_LOCKS: dict[tuple[str, str], threading.Lock] = {}


def healed_model(lm: LoadedModel, result: HealResult) -> LoadedModel:
    """``lm`` with ``result``'s adapters merged, as a model of its own (shared: every caller gets one copy).

    Score it under the same mask as the pruned model (``result.drop``): it is the pruned model, healed.
    """
    if result.model != lm.id:
        raise UserError(f"these adapters were trained on {result.model}, not on {lm.id}")
    if not result.complete:
        raise UserError(f"healing stopped at step {result.steps_done} of {result.config.steps}: run it again to "
                        "finish (it resumes from its checkpoint) before using the healed model")
    key = (lm.id, result.key)
    with _HEALED_LOCK:
        if key in _HEALED:
            _HEALED.move_to_end(key)
            return _HEALED[key]
        build_lock = _BUILD_LOCKS.setdefault(key, threading.Lock())
    with build_lock:
        with _HEALED_LOCK:
            if key in _HEALED:
                return _HEALED[key]
        merged = merged_copy(lm.model, result.drop, result.config.rank, result.config.alpha, result.state)
        healed = wrap_model(f"{lm.name}+heal-{result.short_key}", merged, lm.tokenizer,
                            source=f"{lm.source} healed ({result.key})")
        with _HEALED_LOCK:
            _HEALED[key] = healed
            while len(_HEALED) > MAX_HEALED:
                _HEALED.popitem(last=False)
        return healed


def release_healed(healed: LoadedModel) -> None:
    """Forget a healed model, so that its memory is freed once no caller holds it."""
    with _HEALED_LOCK:
        for key in [k for k, v in _HEALED.items() if v is healed]:
            del _HEALED[key]


# ---------------------------------------------------------------- three-way comparison


MODELS = ("full", "pruned", "healed")
PAIRS = (("full", "pruned"), ("full", "healed"), ("pruned", "healed"))
"""(base, other) of each paired change: pruned and healed against full, and healed against pruned."""
SHOWN = ("accuracy", "ece", "smooth_ece", "brier", "nll")


@dataclass
class HealComparison:
    """The same test examples under the full model, the pruned model and the pruned, healed model."""

    full: EvalResult
    pruned: EvalResult
    healed: EvalResult
    heal: HealResult

    def result(self, name: str) -> EvalResult:
        return {"full": self.full, "pruned": self.pruned, "healed": self.healed}[name]

    def pair(self, base: str, other: str) -> ResultComparison:
        """Two of the three as a `ResultComparison` (``other`` against ``base``)."""
        return ResultComparison(self.result(base), self.result(other), (base, other))

    def stats(self, n_resamples: int = N_RESAMPLES, seed: int = 0) -> dict[tuple[str, str], PairedStats]:
        """The `PairedStats` of each pair of `PAIRS`, on the same bootstrap resamples."""
        return {(a, b): self.pair(a, b).stats(n_resamples, seed) for a, b in PAIRS}

    def values_table(self, stats: dict[tuple[str, str], PairedStats], metrics: Sequence[str] = SHOWN
                     ) -> pd.DataFrame:
        """One row per metric: each model's value and 95% interval."""
        full_pruned, full_healed = stats[("full", "pruned")], stats[("full", "healed")]
        sides = {"full": full_pruned.base, "pruned": full_pruned.other, "healed": full_healed.other}
        rows = []
        for key in metrics:
            row: dict[str, object] = {"metric": METRICS[key].title}
            for name, side in sides.items():
                row[name] = side[key].value
                row[f"{name} 95% CI"] = f"[{side[key].lo:.3f}, {side[key].hi:.3f}]"
            rows.append(row)
        return pd.DataFrame(rows).set_index("metric")

    def changes_table(self, stats: dict[tuple[str, str], PairedStats], metrics: Sequence[str] = SHOWN
                      ) -> pd.DataFrame:
        """One row per metric and pair: the paired change with its 95% interval, p and verdict."""
        rows = []
        for (a, b), s in stats.items():
            for key in metrics:
                d = s.difference[key]
                rows.append({"metric": METRICS[key].title, "change": f"{b} - {a}", "value": d.value,
                             "95% CI": f"[{d.lo:.3f}, {d.hi:.3f}]", "p": d.p_value,
                             "verdict": METRICS[key].verdict(d.value, d.beyond_noise)})
        return pd.DataFrame(rows).set_index(["metric", "change"])

    def as_json(self, n_resamples: int = N_RESAMPLES, seed: int = 0) -> dict:
        """The shape ``python -m core heal --json`` writes."""
        stats = self.stats(n_resamples, seed)
        full_pruned, full_healed = stats[("full", "pruned")], stats[("full", "healed")]
        sides = {"full": full_pruned.base, "pruned": full_pruned.other, "healed": full_healed.other}
        return {
            "model": self.full.model, "healed_model": self.healed.model, "dataset": self.full.dataset,
            "split": self.full.split, "n": self.full.n,
            "dropped_attention_layers": self.pruned.dropped_attention_layers,
            "bootstrap": {"resamples": n_resamples, "seed": seed},
            "heal": self.heal.as_dict(),
            **{name: {k: v.as_dict() for k, v in side.items()} for name, side in sides.items()},
            "changes": {f"{b}_vs_{a}": {"difference": {k: v.as_dict() for k, v in s.difference.items()},
                                        "verdict": {k: s.verdict(k) for k in s.difference},
                                        "mcnemar": s.mcnemar.as_dict()}
                        for (a, b), s in stats.items()},
            "temperature": {name: self.result(name).temperature for name in MODELS},
            "warnings": list(dict.fromkeys(self.full.warnings + self.pruned.warnings + self.healed.warnings)),
        }


def compare_healed(setup: Setup, heal_result: HealResult, config: EvalConfig | None = None,
                   progress: StageProgress | None = None) -> HealComparison:
    """Evaluate ``config``'s sample under the full model, the pruned model (``heal_result.drop``) and the healed one.

    The healed model is scored under the same mask; the three share examples, prompt and cache.
    """
    config = config or EvalConfig()

    def stage(name: str):
        return (lambda done, total: progress(name, done, total)) if progress else None

    full = evaluate(setup, replace(config, drop=()), stage("full"))
    pruned = evaluate(setup, replace(config, drop=heal_result.drop), stage("pruned"))
    healed_setup = replace(setup, lm=healed_model(setup.lm, heal_result))
    healed = evaluate(healed_setup, replace(config, drop=heal_result.drop), stage("healed"))
    return HealComparison(full, pruned, healed, heal_result)
