"""What a healing run is and what it reads: its configuration, its training rows and its losses.

`core.study.healing` trains on them (its notes say how and why); this module only says what a run
is (`HealConfig`, every field part of its cache key, `heal_key`), which rows it reads
(`training_data`: packed unlabelled text for ``lm``, the scorer's prompts for ``task``, each at most
once), and what it minimises (`lm_loss`, `task_loss`, with `accumulate` redoing a step in smaller
micro-batches on running out of memory) on the learning-rate schedule `learning_rate`.
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..cache import cache_key
from ..errors import UserError
from ..model.batching import release_memory
from ..model.loading import LoadedModel
from ..model.pruning import validate_mask
from ..task.prompts import PromptBuilder, candidate_mask
from ..task.scoring import AnswerHead
from ..task.setup import Setup

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
            release_memory()
            log.warning("out of memory while healing: retrying the step in batches of %d", micro)
