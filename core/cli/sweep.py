"""``sweep``: drop 0..K attention layers in a strategy's order, one row of metrics per step, to a CSV."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from ..errors import UserError
from .common import (
    Bar,
    add_data_args,
    add_explainer_args,
    add_heal_args,
    add_model_args,
    add_prompt_args,
    add_set_args,
    build_setup,
    check_set_args,
    explain_config,
    heal_settings,
    write_json,
)

if TYPE_CHECKING:
    from .common import Subparsers


def add_parser(sub: Subparsers) -> None:
    from ..study.strategies import DEFAULT_STRATEGY, STRATEGIES

    p = sub.add_parser("sweep", help="drop 0..K attention layers in a strategy's order: one row of metrics each")
    add_model_args(p)
    add_data_args(p)
    p.add_argument("--strategy", default=DEFAULT_STRATEGY, help=f"one of {', '.join(STRATEGIES)}")
    p.add_argument("--max-drop", type=int, default=8, help="drop up to K layers (default 8)")
    p.add_argument("--n", type=int, default=200, help="test examples per point (default 200)")
    p.add_argument("--val-n", type=int, default=100,
                   help="validation examples for temperature scaling and the prediction sets' threshold")
    add_set_args(p)
    p.add_argument("--faith-n", type=int, default=20,
                   help="examples explained per point for faithfulness (default 20; 0: none)")
    p.add_argument("--calibration-n", type=int, default=32, help="greedy strategies: validation examples judged")
    p.add_argument("--steps", type=int, default=None, help="greedy strategies: layers chosen greedily (default K)")
    p.add_argument("--candidates", type=int, default=None,
                   help="greedy strategies: most redundant remaining layers tried per step (default: all)")
    p.add_argument("--weights", default="1,1,1", help="trust-greedy: weights of accuracy, ECE, comprehensiveness")
    p.add_argument("--refit-head", action="store_true",
                   help="encoder classifiers: re-fit the head on each pruned encoder")
    p.add_argument("--repair", default=None, metavar="METHOD,..",
                   help="also fit these recalibration methods on each mask's validation split ('all': every one; "
                        "see 'repair') and add their ECE, smooth ECE and accuracy columns")
    add_heal_args(p, "each pruned mask")
    add_prompt_args(p)
    add_explainer_args(p, default="occlusion")
    p.add_argument("--out", required=True, metavar="PATH.csv", help="the table; settings go to PATH.csv.json")
    p.set_defaults(run=run)


def _weights(raw: str) -> tuple[float, float, float]:
    try:
        values = tuple(float(x) for x in raw.split(","))
    except ValueError:
        raise UserError(f"--weights takes three numbers, e.g. 1,1,1 (got '{raw}')") from None
    if len(values) != 3:
        raise UserError(f"--weights takes three numbers: accuracy, ECE, comprehensiveness (got '{raw}')")
    return values  # type: ignore[return-value]


def run(args: argparse.Namespace) -> None:
    from dataclasses import asdict

    from ..study.heal_job import estimate_heal, require_causal
    from ..study.repair import parse_methods, require_validation
    from ..study.strategies import StrategyConfig, layer_order
    from ..study.sweep import PointConfig, heal_columns, readable_heal, readable_repairs, repair_columns, sweep
    from ..task.evaluation import EvalConfig

    strategy = StrategyConfig(name=args.strategy, seed=args.seed, calibration_n=args.calibration_n,
                              steps=args.steps or args.max_drop, candidates=args.candidates,
                              weights=_weights(args.weights))
    strategy.validate()
    check_set_args(args)
    repair = parse_methods(args.repair, "--repair") if args.repair is not None else ()
    heal = heal_settings(args)
    explain = explain_config(args) if args.faith_n > 0 else None
    if not str(args.out).endswith(".csv"):
        raise UserError(f"--out must name a .csv file (got '{args.out}')")
    setup = build_setup(args)
    if repair:
        require_validation(setup.ds, args.val_n, "the methods of --repair")
    if heal is not None:
        require_causal(setup)
    lm = setup.lm
    if not 0 <= args.max_drop <= lm.num_layers:
        raise UserError(f"--max-drop must be between 0 and {lm.num_layers} (got {args.max_drop})")
    with Bar(f"ordering ({args.strategy})", unit="mask") as bar:
        order = layer_order(setup, strategy, progress=bar.stage)
    config = PointConfig(eval=EvalConfig(n=args.n, seed=args.seed, val_n=args.val_n),
                         explain=explain, faith_n=max(args.faith_n, 1), alpha=args.alpha,
                         method=args.conformal_method, repair=repair, heal=heal)
    if heal is not None and args.max_drop:
        first = estimate_heal(setup, order[:1], heal)
        print(f"healing {args.max_drop} masks of {heal.steps} steps each ({heal.objective} objective); the first: "
              f"{first.text()}. The bar shows 'healing, step s of {heal.steps}' while a mask heals.", file=sys.stderr)
    with Bar("sweeping", unit="point") as bar:
        table = sweep(setup, order, args.max_drop, config, progress=bar.stage)
    table.to_csv(args.out, index=False)
    settings = {"model": lm.name, "dataset": setup.ds.name, "strategy": asdict(strategy), "order": order,
                "n": args.n, "val_n": args.val_n, "prompt": asdict(setup.prompt),
                "explainer": explain.explainer if explain else None,
                "explainer_params": explain.resolved_params() if explain else None,
                "faith_n": args.faith_n, "removal": args.removal, "refit_head": args.refit_head,
                "alpha": args.alpha, "conformal_method": args.conformal_method, "repair": list(repair),
                "heal": asdict(heal) if heal is not None else None}
    write_json(settings, args.out + ".json")
    print(table.drop(columns=[*repair_columns(repair), *(heal_columns() if heal else [])]).round(3)
          .to_string(index=False))
    if repair:
        print("after repair (each method fitted on the mask's validation split; change from the full model):")
        print(readable_repairs(table).to_string(index=False))
    if heal is not None and (healed := readable_heal(table)) is not None:
        print(f"pruned and healed ({heal.objective} objective, {heal.steps} LoRA steps per mask; changes from the full "
              "model and from the unhealed pruned model, paired over the same examples):")
        print(healed.to_string(index=False))
    print(f"wrote {args.out} and {args.out}.json")
