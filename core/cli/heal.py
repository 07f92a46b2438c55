"""``heal``: heal a pruned model with LoRA adapters, then the full, pruned and healed models on the same examples.

The adapters are cached by content: the same request trains nothing the second time. Ctrl-C stops
after the current step and keeps a checkpoint (a second Ctrl-C stops at once, keeping the last
periodic one); running the same command again resumes from it.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from types import FrameType, TracebackType
from typing import TYPE_CHECKING, Any

from ..errors import UserError
from .common import (
    Bar,
    add_data_args,
    add_mask_args,
    add_model_args,
    add_prompt_args,
    build_setup,
    mask,
    write_json,
)

if TYPE_CHECKING:
    from ..progress import TrainingStep
    from ..study.compare import PairedStats
    from ..study.healed import HealComparison
    from ..study.healing import HealConfig, HealResult
    from .common import Subparsers


def add_parser(sub: Subparsers) -> None:
    p = sub.add_parser("heal", help="heal a pruned model with LoRA (cached, resumable) and compare full, pruned and "
                                    "pruned+healed on the same examples, with intervals and verdicts")
    add_model_args(p)
    add_data_args(p)
    p.add_argument("--n", type=int, default=200, help="test examples to evaluate the three models on (default 200)")
    p.add_argument("--split", default="test", choices=["validation", "test"],
                   help="where to evaluate (never the train split healing reads)")
    add_mask_args(p)
    add_prompt_args(p)
    g = p.add_argument_group("healing")
    g.add_argument("--objective", default="lm",
                   help="lm: next-token loss on unlabelled text (the train split's texts, or --text-file), the "
                        "literature's recipe; task: the answer loss on the labelled train split with the scorer's "
                        "prompt, which tunes the model to the task (default lm)")
    g.add_argument("--steps", type=int, default=None,
                   help="optimisation steps (default: 50 on a CPU, a few minutes on 2 cores; 250 on a GPU)")
    g.add_argument("--rank", type=int, default=8, help="LoRA rank (default 8)")
    g.add_argument("--alpha", type=float, default=16.0, help="LoRA alpha (default 16)")
    g.add_argument("--lr", type=float, default=1e-3,
                   help="peak learning rate of AdamW (default 1e-3; 0 trains nothing)")
    g.add_argument("--batch-size", type=int, default=8, help="rows per step (default 8)")
    g.add_argument("--seq-len", type=int, default=64, help="lm: tokens per packed row (default 64)")
    g.add_argument("--text-n", type=int, default=None, help="train texts (or file lines) to draw from (default: all)")
    g.add_argument("--text-file", default=None, metavar="PATH",
                   help="lm: a UTF-8 file of your own unlabelled text, one text per line")
    g.add_argument("--heal-seed", type=int, default=0, help="seeds the adapters' initialisation and the data order")
    p.add_argument("--bins", type=int, default=15, help="equal-width bins for ECE (default 15)")
    p.add_argument("--val-n", type=int, default=100, help="validation examples for temperature scaling (0: off)")
    p.add_argument("--bootstrap", type=int, default=1000, metavar="B",
                   help="bootstrap resamples for the intervals (default 1000; --seed seeds them too)")
    p.add_argument("--no-cache", action="store_true",
                   help="train and score afresh, and keep nothing (no checkpoint either)")
    p.add_argument("--json", metavar="PATH|-", help="write the three-way comparison as JSON ('-' for stdout)")
    p.set_defaults(run=run)


def heal_config(args: argparse.Namespace) -> HealConfig:
    """The healing options as a validated config (before any model is loaded)."""
    from ..study.healing import HealConfig, default_steps

    config = HealConfig(objective=args.objective,
                        steps=args.steps if args.steps is not None else default_steps(args.device),
                        rank=args.rank, alpha=args.alpha, lr=args.lr, batch_size=args.batch_size, seq_len=args.seq_len,
                        text_n=args.text_n, seed=args.heal_seed, text_file=args.text_file)
    config.validate()
    return config


class StopOnCtrlC:
    """A ``stop`` callable: the first Ctrl-C asks the run to stop after its step; a second one interrupts at once."""

    def __init__(self) -> None:
        self.asked = False
        self._previous: Any = None

    def __enter__(self) -> StopOnCtrlC:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.asked = True
        print("\nstopping after this step, keeping a checkpoint (Ctrl-C again to stop at once)", file=sys.stderr)
        signal.signal(signal.SIGINT, self._previous)

    def __exit__(self, kind: type[BaseException] | None, err: BaseException | None, tb: TracebackType | None) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)

    def __call__(self) -> bool:
        return self.asked


class StepBar:
    """A tqdm bar of optimisation steps with the loss and the ETA, fed by `TrainingStep` callbacks."""

    def __init__(self) -> None:
        self.bar: Any = None

    def __enter__(self) -> StepBar:
        return self

    def __exit__(self, kind: type[BaseException] | None, err: BaseException | None, tb: TracebackType | None) -> None:
        if self.bar is not None:
            self.bar.close()

    def __call__(self, step: TrainingStep) -> None:
        from tqdm import tqdm

        if self.bar is None:
            self.bar = tqdm(total=step.total, initial=step.step - 1, desc="healing", unit="step", file=sys.stderr,
                            leave=False, bar_format="{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} steps "
                                                    "[{elapsed}{postfix}]")
        self.bar.n = step.step
        minutes, seconds = divmod(round(step.eta), 60)
        self.bar.set_postfix_str(f"loss {step.loss:.3f}, ETA {minutes}:{seconds:02d}")


def run(args: argparse.Namespace) -> None:
    from ..study.healed import compare_healed
    from ..study.healing import heal
    from ..task.evaluation import EvalConfig

    if args.bootstrap < 1000:
        raise UserError(f"--bootstrap must be at least 1000 resamples for stable 95% intervals (got {args.bootstrap})")
    config = heal_config(args)
    setup = build_setup(args)
    drop = mask(args, setup)
    if config.note:
        print(f"note: {config.note}", file=sys.stderr)
    with StopOnCtrlC() as stop, StepBar() as bar:
        result = heal(setup, drop, config, progress=bar, stop=stop)
    if not result.complete:
        kept = ("the checkpoint is kept: run the same command again to resume" if result.path is not None
                else "nothing is kept under --no-cache")
        print(f"stopped at step {result.steps_done} of {config.steps}; {kept}", file=sys.stderr)
        raise KeyboardInterrupt
    eval_config = EvalConfig(n=args.n, split=args.split, seed=args.seed, n_bins=args.bins, val_n=args.val_n)
    with Bar("scoring") as scoring:
        c = compare_healed(setup, result, eval_config, progress=scoring.stage)
    out = c.as_json(args.bootstrap, args.seed)
    for w in out["warnings"]:
        print(f"warning: {w}", file=sys.stderr)
    if args.json:
        write_json(out, args.json)
    if args.json != "-":
        _print(c, result, c.stats(args.bootstrap, args.seed), args.bootstrap, args.seed)


def _print(c: HealComparison, result: HealResult, stats: dict[tuple[str, str], PairedStats], n_resamples: int,
           seed: int) -> None:
    import pandas as pd

    from ..study.healing import OBJECTIVES

    cfg = result.config
    print(f"{c.full.model} on {c.full.dataset} ({c.full.split}, n={c.full.n}): full / pruned (attention dropped at "
          f"{list(result.drop)}) / pruned and healed ({c.healed.model}, same mask)")
    how = "from the cache" if result.cached else (
        f"trained in {result.seconds:.0f} s" + (f", resumed from step {result.resumed_from}" if result.resumed_from
                                               else ""))
    first, last = result.loss_change() or (float("nan"), float("nan"))
    print(f"healing: {cfg.objective} objective ({OBJECTIVES[cfg.objective]}); {cfg.steps} steps of {cfg.batch_size} "
          f"rows, LoRA rank {cfg.rank}, alpha {cfg.alpha:g}, lr {cfg.lr:g}, seed {cfg.seed}; {result.targets} modules, "
          f"{result.trainable:,} adapter parameters; data: {result.data}; {how}; training loss {first:.3f} -> "
          f"{last:.3f} (mean of the first / last 5 steps)")
    if cfg.note:
        print(f"note: {cfg.note}")
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print(c.values_table(stats).round(4).to_string())
        print()
        print(c.changes_table(stats).round(4).to_string())
    for (a, b), s in stats.items():
        m = s.mcnemar
        print(f"flips, {b} against {a}: {m.right_to_wrong} right -> wrong, {m.wrong_to_right} wrong -> right "
              f"(exact McNemar p = {m.p_value:.3g})")
    print(f"intervals: 95%, seed {seed}, shared by the three models; accuracy: Wilson; calibration errors: "
          f"{n_resamples} simulations of correctness inverted (docs/uncertainty.md); the rest: {n_resamples} paired "
          "bootstrap resamples")
