"""What the commands share: argument groups, output helpers, and building the `Setup` and mask from arguments.

Every command that runs a model builds its setup through `build_setup` and its mask through `mask`,
so an option means the same thing in every command. Heavy modules are imported inside the
functions, so that listing presets stays fast.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any

from ..errors import UserError

if TYPE_CHECKING:
    from ..cache import ResultCache
    from ..explain.dataset import ExplainConfig
    from ..model.loading import LoadedModel
    from ..study.healing import HealConfig
    from ..task.data import Dataset
    from ..task.prompts import PromptConfig
    from ..task.setup import Setup

    Subparsers = argparse._SubParsersAction[argparse.ArgumentParser]


def print_table(rows: list[dict], columns: Sequence[str]) -> None:
    widths = {c: max(len(c), *(len(str(r.get(c, ""))) for r in rows)) for c in columns}
    print("  ".join(c.ljust(widths[c]) for c in columns))
    for r in rows:
        print("  ".join(str(r.get(c, "")).ljust(widths[c]) for c in columns))


def write_json(obj: dict, target: str) -> None:
    """``obj`` as indented JSON to the file ``target``, or to stdout when it is ``-``."""
    text = json.dumps(obj, indent=2, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o))
    if target == "-":
        print(text)
    else:
        with open(target, "w", encoding="utf-8") as f:
            f.write(text + "\n")


class Bar:
    """A tqdm progress bar on stderr, fed by the core's progress callbacks; closed on leaving the ``with``."""

    def __init__(self, desc: str, unit: str = "ex") -> None:
        from tqdm import tqdm

        self._tqdm = tqdm
        self.desc = desc
        self.unit = unit
        self.bar: Any = None

    def __enter__(self) -> Bar:
        return self

    def __exit__(self, kind: type[BaseException] | None, err: BaseException | None, tb: TracebackType | None) -> None:
        if self.bar is not None:
            self.bar.close()

    def __call__(self, done: float, total: int) -> None:
        """A `Progress` callback."""
        if self.bar is None:
            self.bar = self._tqdm(total=total, desc=self.desc, unit=self.unit, file=sys.stderr, leave=False)
        self.bar.total = total
        self.bar.n = round(done, 2)
        self.bar.refresh()

    def stage(self, what: str, done: float, total: int) -> None:
        """A `StageProgress` callback: the bar keeps its own description and ignores the stage's name."""
        self(done, total)


def add_model_args(p: argparse.ArgumentParser) -> None:
    from ..model.loading import DEFAULT_MODEL

    p.add_argument("--model", default=DEFAULT_MODEL, help="preset name, hub id or local folder")
    p.add_argument("--dtype", default="fp32", choices=["fp32", "bf16", "fp16"])
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N, or auto: spread a model over every GPU")
    p.add_argument("--trust-remote-code", action="store_true", help="run model code from the hub (off by default)")


def add_data_args(p: argparse.ArgumentParser) -> None:
    from ..task.data import DEFAULT_DATASET

    p.add_argument("--dataset", default=DEFAULT_DATASET, help="preset name or a .csv / .jsonl path")
    p.add_argument("--text-column", default="text", help="own files: the column holding the text")
    p.add_argument("--label-column", default="label", help="own files: the column holding the label")
    p.add_argument("--label-names", default=None, help="own files: comma-separated label names, in index order")


def add_prompt_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--prompt", default="few-shot", choices=["zero-shot", "few-shot", "chat"])
    p.add_argument("--shots", type=int, default=None, help="demonstrations (default: one per label)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-input-tokens", type=int, default=256)


def add_mask_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--drop-attn", default="", help="attention layers to drop, e.g. 25,26,29")
    p.add_argument("--drop-k", type=int, default=None, help="drop the k most redundant attention layers")
    p.add_argument("--refit-head", action="store_true",
                   help="encoder classifiers: fit the head on the pruned encoder (default: the full one, frozen)")


def add_explainer_args(p: argparse.ArgumentParser, default: str | None) -> None:
    from ..explain.features import GRANULARITIES, REMOVALS
    from ..explain.methods import EXPLAINERS

    p.add_argument("--explainer", default=default, help=f"one of {', '.join(EXPLAINERS)}")
    p.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                   help="explainer parameter, e.g. n_samples=300 (repeatable; see 'explainers')")
    p.add_argument("--granularity", default="word", choices=list(GRANULARITIES))
    p.add_argument("--removal", default="delete", choices=list(REMOVALS),
                   help="how a removed word disappears: deleted, or replaced by the pad / unknown token")


def add_set_args(p: argparse.ArgumentParser) -> None:
    """``--alpha`` and ``--conformal-method``: the prediction sets' miscoverage and score (`core.study.sets`)."""
    from ..task.conformal import DEFAULT_ALPHA, METHODS

    p.add_argument("--alpha", type=float, default=DEFAULT_ALPHA,
                   help="prediction sets: the miscoverage, e.g. 0.1 for sets that hold the answer 90%% of the time")
    p.add_argument("--conformal-method", default="lac", choices=list(METHODS),
                   help="prediction sets: the conformal score (default lac)")


def check_set_args(args: argparse.Namespace) -> None:
    """Refuse a bad ``--alpha`` or one too small for ``--val-n`` before anything is scored."""
    from ..study.sets import check_settings

    check_settings(args.alpha, args.conformal_method, getattr(args, "val_n", 0) or None)


def add_heal_args(p: argparse.ArgumentParser, what: str) -> None:
    """``--heal-steps`` and ``--heal-objective``: heal ``what`` with LoRA (`core.study.healing`) and add the healed
    model beside the full and the pruned one."""
    from ..study.healing import CPU_STEPS, OBJECTIVES

    p.add_argument("--heal-steps", type=int, default=0, metavar="N",
                   help=f"also heal {what} with N LoRA steps and add the healed model (0: no healing; {CPU_STEPS} is "
                        "the heal command's CPU default). Slow: minutes per mask on a CPU (about 4.5 s a step on 2 "
                        "cores for the default model); the adapters are cached, and a second run trains nothing")
    p.add_argument("--heal-objective", default="lm", choices=list(OBJECTIVES),
                   help="what healing minimises: " + "; ".join(f"{k}: {v}" for k, v in OBJECTIVES.items()))


def heal_settings(args: argparse.Namespace) -> HealConfig | None:
    """The healing that ``--heal-steps`` / ``--heal-objective`` ask for (None for none), checked before any model
    loads; every other setting is the heal command's default."""
    from ..study.healing import HealConfig

    if args.heal_steps < 0:
        raise UserError(f"--heal-steps must be 0 (no healing) or more (got {args.heal_steps})")
    if not args.heal_steps:
        return None
    config = HealConfig(objective=args.heal_objective, steps=args.heal_steps)
    config.validate()
    return config


def load_lm(args: argparse.Namespace) -> LoadedModel:
    from ..model.loading import load_model

    return load_model(args.model, args.dtype, args.device, args.trust_remote_code)


def load_data(args: argparse.Namespace) -> Dataset:
    from ..task.data import load_dataset

    names = [x.strip() for x in args.label_names.split(",")] if args.label_names else None
    return load_dataset(args.dataset, text_column=args.text_column, label_column=args.label_column,
                        label_names=names)


def result_cache(args: argparse.Namespace) -> ResultCache | None:
    """The result cache, or None under ``--no-cache``; commands without that option always use the cache."""
    from ..cache import ResultCache

    return None if getattr(args, "no_cache", False) else ResultCache()


def prompt_config(args: argparse.Namespace) -> PromptConfig:
    from ..task.prompts import PromptConfig

    return PromptConfig(style=args.prompt, shots=args.shots, seed=args.seed, max_input_tokens=args.max_input_tokens)


def build_setup(args: argparse.Namespace) -> Setup:
    """The model, data, prompt, head re-fit and cache that the model and data options name."""
    from ..task.setup import Setup

    lm = load_lm(args)
    ds = load_data(args)
    return Setup(lm, ds, prompt_config(args), refit_head=args.refit_head, cache=result_cache(args))


def mask(args: argparse.Namespace, setup: Setup) -> list[int]:
    """The mask from --drop-attn or --drop-k (the k layers with the lowest importance scores), sorted."""
    from ..model.pruning import parse_layer_list, validate_mask
    from ..study.importance import attention_scores, calibration_texts

    drop = list(validate_mask(parse_layer_list(args.drop_attn), setup.lm.num_layers))
    if args.drop_k is not None:
        if drop:
            raise UserError("give either --drop-attn or --drop-k, not both")
        drop = attention_scores(setup.lm, calibration_texts(setup.ds), cache=setup.cache).most_redundant(args.drop_k)
    return sorted(drop)


def explain_config(args: argparse.Namespace) -> ExplainConfig:
    """The explainer options as a validated config; ``--param`` values stay strings for the explainer to parse."""
    from ..explain.dataset import ExplainConfig

    params = {}
    for item in args.param:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UserError(f"--param takes KEY=VALUE (got '{item}')")
        params[key.strip()] = value.strip()
    config = ExplainConfig.make(args.explainer, params, granularity=args.granularity, removal=args.removal)
    config.validate()
    return config
