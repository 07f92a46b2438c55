"""An encoder as a classifier: a logistic-regression head on the mean-pooled encoder output.

An encoder (all-MiniLM-L6-v2) has no answer words to read, so its answer is the class
probability of a head trained on the data set's train split:

* features: the encoder's last hidden states, averaged over the real tokens of
  ``[CLS] text [SEP]`` (sentence-transformers' mean pooling), standardised with the train mean
  and standard deviation;
* head: multinomial logistic regression with an L2 penalty, minimising
  ``C * sum_i CE_i + |W|^2 / 2`` (scikit-learn's convention; the bias is not penalised), for each
  C of `C_GRID`; the C with the lowest validation log-loss is kept (ties: the smaller C).

As in the study, pruning happens after training: the head is fitted once on the full encoder
and then frozen while masks are applied. ``refit`` fits a head on the pruned encoder instead
("prune, then re-fit"), which shows how much of the damage a cheap re-fit repairs. A head is
cached by content (model, data, the examples it saw, the mask it was fitted under, the C grid).

`ClassifierInput` plays the part `PromptBuilder` plays for a causal LM: the prefix is
``[CLS]``, the suffix ``[SEP]`` and the answers are the head's classes, so the scorer, the
explainers and the cache treat both kinds of model alike.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import xxhash
from scipy.optimize import minimize
from scipy.special import log_softmax

from ..cache import ResultCache, cache_key
from ..errors import UserError
from ..model.batching import batch_size_for, run_batched
from ..model.loading import LoadedModel
from ..model.pruning import dropped_attention, validate_mask
from ..model.states import Resumer
from ..progress import Progress
from . import calibration as cal
from .data import Dataset
from .prompts import EncodedInput, PromptBuilder, PromptConfig

C_GRID = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 0.1, 1.0)
DEFAULT_TRAIN_N = 2000
DEFAULT_VAL_N = 300
HEAD_VERSION = 1
DEFAULT_PROMPT = PromptConfig()
"""An encoder reads only its ``max_input_tokens``; the prompt style and shots do not apply."""


def logistic_objective(params: np.ndarray, x: np.ndarray, y: np.ndarray, n_classes: int,
                       c: float) -> tuple[float, np.ndarray]:
    """``C * sum_i CE_i + |W|^2 / 2`` and its gradient; ``params`` is W ([K, d]) then b ([K]), flattened."""
    d = x.shape[1]
    w = params[: n_classes * d].reshape(n_classes, d)
    b = params[n_classes * d:]
    log_p = log_softmax(x @ w.T + b, axis=1)
    onehot = np.eye(n_classes)[y]
    loss = -c * float((onehot * log_p).sum()) + 0.5 * float((w * w).sum())
    residual = c * (np.exp(log_p) - onehot)  # [n, K]
    grad_w = residual.T @ x + w
    grad_b = residual.sum(axis=0)
    return loss, np.concatenate([grad_w.ravel(), grad_b])


def fit_logistic(x: np.ndarray, y: np.ndarray, n_classes: int, c: float) -> tuple[np.ndarray, np.ndarray]:
    """The L2-penalised multinomial logistic regression's weights [K, d] and bias [K] (L-BFGS)."""
    d = x.shape[1]
    start = np.zeros(n_classes * d + n_classes)
    result = minimize(logistic_objective, start, args=(x, y, n_classes, c), jac=True, method="L-BFGS-B",
                      options={"maxiter": 5000, "ftol": 1e-13, "gtol": 1e-7})
    return result.x[: n_classes * d].reshape(n_classes, d), result.x[n_classes * d:]


@dataclass(frozen=True)
class Head:
    """A fitted head: standardisation, then a linear map to class logits."""

    mean: np.ndarray
    scale: np.ndarray
    weight: np.ndarray
    """[n_classes, d]"""
    bias: np.ndarray
    c: float
    fitted_on: tuple[int, ...]
    """The attention layers dropped from the encoder the head was fitted on (empty: the full encoder)."""
    train_n: int
    val_n: int
    val_accuracy: float
    val_nll: float
    seconds: float

    @property
    def fingerprint(self) -> str:
        h = xxhash.xxh3_128()
        for arr in (self.mean, self.scale, self.weight, self.bias):
            h.update(np.ascontiguousarray(arr, dtype=np.float64).tobytes())
        h.update(repr((self.c, self.fitted_on)).encode())
        return h.hexdigest()[:16]

    def logits(self, pooled: np.ndarray) -> np.ndarray:
        return ((pooled - self.mean) / self.scale) @ self.weight.T + self.bias

    def logits_torch(self, pooled: torch.Tensor) -> torch.Tensor:
        """`logits` on a tensor, differentiable (for the gradient explainers)."""
        def t(a: np.ndarray) -> torch.Tensor:
            return torch.as_tensor(a, dtype=pooled.dtype, device=pooled.device)
        return ((pooled - t(self.mean)) / t(self.scale)) @ t(self.weight).T + t(self.bias)

    def as_dict(self) -> dict:
        return {"mean": self.mean.tolist(), "scale": self.scale.tolist(), "weight": self.weight.tolist(),
                "bias": self.bias.tolist(), "c": self.c, "fitted_on": list(self.fitted_on),
                "train_n": self.train_n, "val_n": self.val_n, "val_accuracy": self.val_accuracy,
                "val_nll": self.val_nll, "seconds": self.seconds}

    @classmethod
    def from_dict(cls, d: dict) -> Head:
        arrays = {k: np.array(d[k], dtype=np.float64) for k in ("mean", "scale", "weight", "bias")}
        return cls(**arrays, c=float(d["c"]), fitted_on=tuple(d["fitted_on"]), train_n=int(d["train_n"]),
                   val_n=int(d["val_n"]), val_accuracy=float(d["val_accuracy"]), val_nll=float(d["val_nll"]),
                   seconds=float(d["seconds"]))


def fit_head(x_train: np.ndarray, y_train: np.ndarray, x_val: np.ndarray, y_val: np.ndarray, n_classes: int,
             cs: Sequence[float] = C_GRID, fitted_on: Sequence[int] = ()) -> Head:
    """Standardise, fit one head per C and keep the one with the lowest validation log-loss."""
    start = time.perf_counter()
    if len(set(y_train.tolist())) < 2:
        raise UserError("the head's training examples hold only one class; a classifier needs at least two")
    mean = x_train.mean(axis=0)
    scale = x_train.std(axis=0) + 1e-6
    z_train, z_val = (x_train - mean) / scale, (x_val - mean) / scale
    best = None
    for c in sorted(cs):
        w, b = fit_logistic(z_train, y_train, n_classes, c)
        p = cal.softmax(z_val @ w.T + b)
        nll = float(-np.log(np.clip(p[np.arange(len(y_val)), y_val], 1e-12, 1)).mean())
        if best is None or nll < best[0] - 1e-12:
            best = (nll, c, w, b, float((p.argmax(axis=1) == y_val).mean()))
    nll, c, w, b, acc = best  # type: ignore[misc]
    return Head(mean=mean, scale=scale, weight=w, bias=b, c=c, fitted_on=tuple(sorted(fitted_on)),
                train_n=len(y_train), val_n=len(y_val), val_accuracy=acc, val_nll=nll,
                seconds=time.perf_counter() - start)


def max_text_tokens(config: PromptConfig, max_positions: int) -> int:
    """How many text tokens fit: the configured limit, less room for ``[CLS]`` and ``[SEP]``."""
    return min(config.max_input_tokens, max_positions - 2)


def encode_text(tokenizer, text: str, max_text_tokens: int) -> EncodedInput:
    """The text's ids (tokenised as `PromptBuilder.encode` does, truncated) followed by ``[SEP]``."""
    ids = tokenizer(" " + text, add_special_tokens=False)["input_ids"]
    truncated = len(ids) > max_text_tokens
    ids = ids[:max_text_tokens]
    return EncodedInput(ids=ids + [int(tokenizer.sep_token_id)], text_len=len(ids), truncated=truncated)


class ClassifierInput:
    """Turns examples into token ids for an encoder and holds the head that answers (see the module doc)."""

    def __init__(self, tokenizer, dataset: Dataset, head: Head, max_positions: int,
                 config: PromptConfig = DEFAULT_PROMPT) -> None:
        config.validate()
        if tokenizer.cls_token_id is None or tokenizer.sep_token_id is None:
            raise UserError("this encoder's tokenizer has no [CLS] / [SEP] tokens; it cannot be used as a classifier")
        self.tokenizer, self.dataset, self.head, self.config = tokenizer, dataset, head, config
        self.answer_words = tuple(dataset.label_names)
        if head.weight.shape[0] != len(self.answer_words):
            raise UserError(f"the head has {head.weight.shape[0]} classes but '{dataset.name}' has "
                            f"{len(self.answer_words)} labels")
        self.prefix_ids: list[int] = [int(tokenizer.cls_token_id)]
        self.suffix_ids: list[int] = [int(tokenizer.sep_token_id)]
        self.candidate_ids = list(range(len(self.answer_words)))
        self.max_text_tokens = max_text_tokens(config, max_positions)

    def encode(self, text: str) -> EncodedInput:
        return encode_text(self.tokenizer, text, self.max_text_tokens)

    def describe(self) -> dict[str, object]:
        """What defines these answers, for cache keys and for the run's configuration export."""
        return {"style": "classifier-head", "head": self.head.fingerprint, "head_c": self.head.c,
                "head_fitted_on": list(self.head.fitted_on), "pooling": "mean",
                "max_input_tokens": self.config.max_input_tokens, "answers": list(self.answer_words)}


def pooled_features(lm: LoadedModel, prefix_ids: Sequence[int], inputs: Sequence[Sequence[int]],
                    batch_size: int = 32, progress: Progress | None = None,
                    record: Iterable[int] | None = None) -> np.ndarray:
    """[n, d] mean-pooled last hidden states of ``prefix + input`` under the active mask.

    Each row starts from the deepest stored hidden state that fits the mask and keeps the states of the
    layers in ``record`` (None: all) for later masks (`core.model.states`).
    """
    model = lm.model
    device = next(model.parameters()).device
    pad = lm.tokenizer.pad_token_id if lm.tokenizer.pad_token_id is not None else 0
    rows_all = [list(prefix_ids) + list(x) for x in inputs]
    order = sorted(range(len(rows_all)), key=lambda i: -len(rows_all[i]))
    out = np.zeros((len(rows_all), model.config.hidden_size), dtype=np.float64)
    done = 0

    def run(group: list[int]) -> None:
        width = max(len(rows_all[i]) for i in group)
        ids = torch.full((len(group), width), pad, dtype=torch.long, device=device)
        mask = torch.zeros((len(group), width), dtype=torch.long, device=device)
        for r, i in enumerate(group):
            ids[r, : len(rows_all[i])] = torch.tensor(rows_all[i], device=device)
            mask[r, : len(rows_all[i])] = 1
        with resumer.running(group, width):
            hidden = model(input_ids=ids, attention_mask=mask).last_hidden_state.float()
        m = mask.unsqueeze(-1).float()
        out[group] = ((hidden * m).sum(1) / m.sum(1)).cpu().numpy()

    def step(rows: list[int]) -> None:
        nonlocal done
        for _, group in resumer.groups(rows):
            run(group)
        done += len(rows)
        if progress is not None:
            progress(done, len(rows_all))

    with torch.inference_mode():
        resumer = Resumer(lm, (), rows_all, record)
        run_batched(order, batch_size_for(lm, max((len(r) for r in rows_all), default=1), batch_size), step)
    return out


def classifier_logits(lm: LoadedModel, builder: ClassifierInput, inputs: Sequence[Sequence[int]],
                      batch_size: int = 32, progress: Progress | None = None,
                      record: Iterable[int] | None = None) -> np.ndarray:
    """[n, n_classes] head logits for text-plus-suffix ids, under the active mask."""
    return builder.head.logits(pooled_features(lm, builder.prefix_ids, inputs, batch_size, progress, record))


def train_head(lm: LoadedModel, dataset: Dataset, config: PromptConfig = DEFAULT_PROMPT, drop: Sequence[int] = (),
               *, cache: ResultCache | None = None, train_n: int = DEFAULT_TRAIN_N, val_n: int = DEFAULT_VAL_N,
               seed: int = 0, cs: Sequence[float] = C_GRID, progress: Progress | None = None) -> Head:
    """The head for ``lm`` on ``dataset``, fitted on the encoder with ``drop`` applied; cached by content."""
    if lm.task != "classifier":
        raise UserError(f"'{lm.name}' is a causal LM: it answers through its own next-token probabilities "
                        "and needs no classifier head")
    if dataset.task != "classification":
        raise UserError(f"an encoder classifies texts; '{dataset.name}' is a {dataset.task} data set")
    drop = validate_mask(drop, lm.num_layers)
    train, _ = dataset.sample("train", train_n, seed=seed)
    if dataset.splits.get("validation"):
        val, _ = dataset.sample("validation", val_n, seed=seed)
    else:  # no validation split: hold out a fifth of the train sample to choose C on
        cut = max(1, len(train) // 5)
        train, val = train[cut:], train[:cut]
    key = cache_key("head", model=lm.id, data=dataset.fingerprint, train=[ex.id for ex in train],
                    val=[ex.id for ex in val], drop=list(drop), cs=sorted(cs), pooling="mean",
                    max_input_tokens=config.max_input_tokens, version=HEAD_VERSION)
    if cache is not None and (head := cache.load(key, Head.from_dict)) is not None:
        return head
    max_text = max_text_tokens(config, lm.max_positions)
    prefix = [int(lm.tokenizer.cls_token_id)]
    total = len(train) + len(val)

    def shifted(offset: int) -> Progress | None:
        return (lambda done, _n: progress(offset + done, total)) if progress else None

    with dropped_attention(lm.model, drop):
        x_train = pooled_features(lm, prefix, [encode_text(lm.tokenizer, ex.text, max_text).ids for ex in train],
                                  progress=shifted(0))
        x_val = pooled_features(lm, prefix, [encode_text(lm.tokenizer, ex.text, max_text).ids for ex in val],
                                progress=shifted(len(train)))
    head = fit_head(x_train, np.array([ex.label for ex in train]), x_val, np.array([ex.label for ex in val]),
                    len(dataset.label_names), cs, fitted_on=drop)
    if cache is not None:
        cache.put(key, head.as_dict())
    return head


AnswerInput = PromptBuilder | ClassifierInput
"""What turns texts into a model's answers: a prompt (causal LM) or an encoder's head."""


def builder_for(lm: LoadedModel, dataset: Dataset, prompt: PromptConfig = DEFAULT_PROMPT, drop: Sequence[int] = (),
                refit_head: bool = False, *, cache: ResultCache | None = None,
                progress: Progress | None = None) -> AnswerInput:
    """What turns ``dataset``'s texts into ``lm``'s answers: a prompt for a causal LM, a head for an encoder.

    The head is fitted on the full encoder, or on the encoder with ``drop`` applied when
    ``refit_head`` is set; for a causal LM ``refit_head`` is an error (it has no head to re-fit).
    """
    if lm.task != "classifier":
        if refit_head:
            raise UserError(f"'{lm.name}' is a causal LM: re-fitting a head applies only to encoder classifiers")
        return PromptBuilder(lm.tokenizer, dataset, prompt, lm.has_chat_template, lm.max_positions)
    head = train_head(lm, dataset, prompt, drop if refit_head else (), cache=cache, progress=progress)
    return ClassifierInput(lm.tokenizer, dataset, head, lm.max_positions, prompt)
