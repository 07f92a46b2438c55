"""``evaluate``: accuracy and calibration under a mask; with ``--faithfulness``, the explanations' ERASER scores too."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from ..errors import UserError
from .common import (
    Bar,
    add_data_args,
    add_explainer_args,
    add_mask_args,
    add_model_args,
    add_prompt_args,
    add_set_args,
    build_setup,
    check_set_args,
    explain_config,
    mask,
    write_json,
)

if TYPE_CHECKING:
    import pandas as pd

    from ..explain.dataset import FaithfulnessResult
    from ..study.sets import SetStats
    from ..task.evaluation import EvalResult
    from .common import Subparsers


def add_parser(sub: Subparsers) -> None:
    p = sub.add_parser("evaluate", help="accuracy and calibration of a model, optionally with attention dropped")
    add_model_args(p)
    add_data_args(p)
    p.add_argument("--n", type=int, default=200, help="examples of the split to evaluate (default 200)")
    p.add_argument("--split", default="test", choices=["train", "validation", "test"])
    add_mask_args(p)
    add_prompt_args(p)
    p.add_argument("--balanced", action="store_true", help="sample the same number of examples per label")
    p.add_argument("--bins", type=int, default=15, help="equal-width bins for ECE (default 15)")
    p.add_argument("--val-n", type=int, default=100, help="validation examples for temperature scaling (0: off)")
    p.add_argument("--batch-size", type=int, default=16)
    add_set_args(p)
    p.add_argument("--no-cache", action="store_true", help="recompute instead of reading the result cache")
    p.add_argument("--json", metavar="PATH|-", help="write the result as JSON ('-' for stdout)")
    p.add_argument("--predictions", metavar="PATH.csv", help="write one row per example")
    p.add_argument("--faithfulness", action="store_true",
                   help="also explain the examples and measure comprehensiveness and sufficiency (ERASER)")
    p.add_argument("--faithfulness-n", type=int, default=None,
                   help="explain only the first N evaluated examples (default: all)")
    add_explainer_args(p, default="lime")
    p.add_argument("--prompt-seeds", default=None, metavar="S,S,..",
                   help="also evaluate under these demonstration draws (few-shot) and report the spread")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> None:
    from ..explain.dataset import DatasetExplainer, dataset_faithfulness
    from ..study.compare import across_prompt_seeds, parse_seeds, seed_spread
    from ..study.sets import set_stats
    from ..task.evaluation import EvalConfig, evaluate

    explain = explain_config(args) if args.faithfulness else None
    if args.faithfulness_n is not None and args.faithfulness_n < 1:
        raise UserError(f"--faithfulness-n must be at least 1 (got {args.faithfulness_n})")
    seeds = parse_seeds(args.prompt_seeds) if args.prompt_seeds is not None else None
    check_set_args(args)
    setup = build_setup(args)
    drop = mask(args, setup)
    config = EvalConfig(n=args.n, split=args.split, drop=tuple(drop), seed=args.seed, balanced=args.balanced,
                        n_bins=args.bins, val_n=args.val_n, batch_size=args.batch_size)
    with Bar("scoring") as bar:
        result = evaluate(setup, config, progress=bar)
    for w in result.warnings:
        print(f"warning: {w}", file=sys.stderr)
    summary = result.summary()
    sets = set_stats(result, alpha=args.alpha, method=args.conformal_method, seed=args.seed)
    summary.update(sets.as_json())
    predictions = result.predictions()
    faith = None
    if explain is not None:
        explainer = DatasetExplainer(setup, drop, explain, args.split)
        with Bar(f"explaining ({explain.explainer})") as bar:
            faith = dataset_faithfulness(explainer, result.examples[: args.faithfulness_n], progress=bar)
        summary.update(faith.summary())
        predictions = faith.add_to(predictions)
    spread = None
    if seeds is not None:
        with Bar("prompt seeds") as bar:
            table = across_prompt_seeds(setup, drop, seeds, config, base=drop, progress=bar.stage)
        spread = seed_spread(table)
        summary["prompt_seeds"] = {"seeds": seeds, "per_seed": table.to_dict(orient="records"),
                                   "spread": spread.to_dict(orient="index")}
    if args.predictions:
        predictions.to_csv(args.predictions, index=False)
    if args.json:
        write_json(summary, args.json)
    if args.json != "-":
        _print(result, summary, faith, spread, sets)


def _print(result: EvalResult, summary: dict, faith: FaithfulnessResult | None, spread: pd.DataFrame | None,
           sets: SetStats) -> None:
    from ..metrics import METRICS

    print(f"{result.model} on {result.dataset} ({result.split}, n={result.n}), attention dropped: "
          f"{result.dropped_attention_layers or 'none'}")
    print("  ".join(f"{METRICS[k].title} {v['value']:.3f} [{v['ci'][0]:.3f}, {v['ci'][1]:.3f}]"
                    for k, v in summary["intervals"].items()) + "   (95% intervals)")
    for key, floor in summary["noise_floor"].items():
        print(f"{METRICS[key].title}: a perfectly calibrated model with these confidences shows up to "
              f"{floor['q95']:.3f} at this n: {'consistent' if floor['consistent'] else 'not consistent'} "
              f"with perfect calibration")
    if result.temperature is not None and result.metrics_temperature_scaled is not None:
        print(f"temperature {result.temperature:.3f} (fitted on validation): "
              f"ECE {result.metrics_temperature_scaled.ece:.3f}")
    for part in ("sets", "selective"):
        if keys := sets.keys(part):
            print(f"{sets.heading(part)}: " + "  ".join(
                f"{METRICS[k].title} {sets.base[k].value:.3f} [{sets.base[k].lo:.3f}, {sets.base[k].hi:.3f}]"
                for k in keys))
        elif part == "sets":
            print(f"Prediction sets: none, {sets.unavailable}")
    print(f"{result.seconds:.2f} s{' (from cache)' if result.cached else ''}")
    if faith is not None:
        f = faith.summary()
        print(f"{f['explainer']} on {f['faithfulness_n']} examples: comprehensiveness {f['comprehensiveness']:.3f} "
              f"(random {f['random_baseline_comprehensiveness']:.3f}), sufficiency {f['sufficiency']:.3f} "
              f"(random {f['random_baseline_sufficiency']:.3f}); {f['faithfulness_seconds']:.1f} s")
    if spread is not None:
        print("across prompt seeds (demonstration draws):")
        print(spread.round(4).to_string())
