"""``repair``: which recalibration brings the pruned model's confidence back, each method against noise.

Every method of `core.task.recalibration` is fitted on the pruned model's validation examples (scored
under the same mask) and compared on the test examples with the unrepaired pruned model and the full
model: metrics with intervals, paired changes, answers changed with McNemar's counts, and a verdict.
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from ..errors import UserError
from .common import (
    Bar,
    add_data_args,
    add_mask_args,
    add_model_args,
    add_prompt_args,
    build_setup,
    mask,
    print_table,
    write_json,
)

if TYPE_CHECKING:
    from ..study.repair import RepairComparison
    from ..task.evaluation import EvalResult
    from .common import Subparsers


def add_parser(sub: Subparsers) -> None:
    p = sub.add_parser("repair", help="recalibration methods fitted on the pruned model's validation split, each "
                                      "against the unrepaired pruned and the full model, with intervals and a "
                                      "verdict")
    add_model_args(p)
    add_data_args(p)
    p.add_argument("--n", type=int, default=200, help="test examples to compare on (default 200)")
    p.add_argument("--val-n", type=int, default=100,
                   help="validation examples every method is fitted on, under each mask (default 100)")
    add_mask_args(p)
    add_prompt_args(p)
    p.add_argument("--methods", default="all", metavar="METHOD,..",
                   help="recalibration methods, comma-separated (default all)")
    p.add_argument("--full-after", action="store_true",
                   help="also fit each method on the full model and compare with the full model after it")
    p.add_argument("--bins", type=int, default=15, help="equal-width bins for ECE (default 15)")
    p.add_argument("--bootstrap", type=int, default=1000, metavar="B",
                   help="bootstrap resamples for the intervals (default 1000; --seed seeds them too)")
    p.add_argument("--no-cache", action="store_true", help="recompute instead of reading the result cache")
    p.add_argument("--json", metavar="PATH|-", help="write the comparison as JSON ('-' for stdout)")
    p.add_argument("--csv", metavar="PATH", help="write the table (one row per method) as CSV")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> None:
    from ..study.compare import compare_results
    from ..study.repair import parse_methods, require_validation
    from ..task.evaluation import EvalConfig

    if args.bootstrap < 1000:
        raise UserError(f"--bootstrap must be at least 1000 resamples for stable 95% intervals (got {args.bootstrap})")
    methods = parse_methods(args.methods)
    setup = build_setup(args)
    require_validation(setup.ds, args.val_n)
    drop = mask(args, setup)
    config = EvalConfig(n=args.n, seed=args.seed, n_bins=args.bins, val_n=args.val_n)
    with Bar("scoring") as bar:
        c = compare_results(setup, drop, config, progress=bar.stage)
    for w in dict.fromkeys(c.base.warnings + c.other.warnings):
        print(f"warning: {w}", file=sys.stderr)
    result = c.repairs(setup, methods, full_after=args.full_after, n_resamples=args.bootstrap, seed=args.seed)
    if args.csv:
        result.table().to_csv(args.csv)
    if args.json:
        out = result.as_json()
        out.update(model=c.base.model, dataset=c.base.dataset, split=c.base.split, dropped_attention_layers=drop,
                   methods=list(methods))
        write_json(out, args.json)
    if args.json != "-":
        _print(c.other, result)


def _cell(value: float, lo: float, hi: float, signed: bool = False) -> str:
    f = "+.3f" if signed else ".3f"
    return f"{value:{f}} [{lo:{f}}, {hi:{f}}]"


def _print(pruned: EvalResult, result: RepairComparison) -> None:
    from ..metrics import METRICS
    from ..study.repair import REPAIR_KEYS

    dropped = pruned.dropped_attention_layers
    print(f"{pruned.model} on {pruned.dataset} ({pruned.split}, n={result.n_test}; every method fitted on "
          f"{result.n_validation} validation examples under the same mask): attention dropped at "
          f"{dropped or 'none'}")
    titles = {k: METRICS[k].title for k in REPAIR_KEYS}
    rows = [{"method": "full model (reference)",
             **{titles[k]: _cell(v.value, v.lo, v.hi) for k, v in result.full.items()}}]
    for r in result.rows:
        rows.append({"method": r.title, "verdict": r.verdict,
                     **{titles[k]: _cell(v.value, v.lo, v.hi) for k, v in r.metrics.items()}})
    print("\neach metric with its 95% interval:")
    print_table(rows, ["method", *titles.values(), "verdict"])
    for heading, side in (("change against the unrepaired pruned model (paired 95% interval):", "vs_pruned"),
                          ("difference from the full model (paired 95% interval):", "vs_full")):
        print(f"\n{heading}")
        print_table([{"method": r.title, **{titles[k]: _cell(d.value, d.lo, d.hi, signed=True)
                                             for k, d in getattr(r, side).items()}}
                     for r in result.rows[1:] if r.fitted], ["method", *titles.values()])
    if any(r.full_after for r in result.rows):
        print("\nthe full model after the same method, and the repaired pruned model's difference from it:")
        print_table([{"method": r.title, **{f"{titles[k]}, full after": _cell(v.value, v.lo, v.hi)
                                             for k, v in r.full_after.items() if k == "ece"},
                      **{f"{titles[k]} difference": _cell(d.value, d.lo, d.hi, signed=True)
                         for k, d in r.vs_full_after.items() if k == "ece"},
                      "note": r.full_after_error or ""}
                     for r in result.rows[1:] if r.full_after or r.full_after_error],
                    ["method", f"{titles['ece']}, full after", f"{titles['ece']} difference", "note"])
    print()
    for r in result.rows:
        print(f"{r.title}: {r.summary}")
        for note in r.notes:
            print(f"  note: {note}")
    print(f"\nintervals: 95%, seed {result.seed}, shared by every row; accuracy: Wilson; calibration errors: "
          f"{result.n_resamples} simulations of correctness inverted (docs/uncertainty.md); the rest: "
          f"{result.n_resamples} paired bootstrap resamples (BCa); accuracy changes are judged by McNemar's exact "
          "test. A change is beyond noise when its interval excludes 0.")
