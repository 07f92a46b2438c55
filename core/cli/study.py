"""``study``: the grid models × datasets × strategies × layers dropped, in-process or on Ray, resumable."""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING

from ..errors import UserError
from .common import Bar, add_heal_args, add_set_args, check_set_args, heal_settings, prompt_config

if TYPE_CHECKING:
    from .common import Subparsers


def _names(raw: str, option: str) -> tuple[str, ...]:
    names = tuple(x.strip() for x in raw.split(",") if x.strip())
    if not names:
        raise UserError(f"{option} needs at least one name (comma-separated)")
    return names


def add_parser(sub: Subparsers) -> None:
    from ..model.loading import DEFAULT_MODEL
    from ..study.strategies import DEFAULT_STRATEGY
    from ..task.data import DEFAULT_DATASET
    from .common import add_prompt_args

    p = sub.add_parser("study", help="a grid of models × datasets × strategies × layers dropped (local or on Ray)",
                       description="Evaluate every point of the grid and write results.csv, results.parquet, "
                                   "run.json and report.html to --out. Finished points are cached: a rerun "
                                   "computes only what is missing.")
    p.add_argument("--models", default=DEFAULT_MODEL, help="comma-separated: presets, hub ids or local folders")
    p.add_argument("--datasets", default=DEFAULT_DATASET, help="comma-separated: presets or .csv / .jsonl paths")
    p.add_argument("--strategies", default=DEFAULT_STRATEGY, help="comma-separated (see 'sweep --help')")
    p.add_argument("--max-drop", type=int, default=8, help="drop 0..K attention layers (default 8)")
    p.add_argument("--n", type=int, default=200, help="test examples per point (default 200)")
    p.add_argument("--val-n", type=int, default=100,
                   help="validation examples for temperature scaling and the prediction sets' threshold")
    add_set_args(p)
    p.add_argument("--faith-n", type=int, default=0, help="examples explained per point (default 0: none)")
    p.add_argument("--explainers", default="occlusion", help="comma-separated, used when --faith-n > 0")
    p.add_argument("--calibration-n", type=int, default=100, help="greedy strategies: validation examples judged")
    p.add_argument("--repair", default=None, metavar="METHOD,..",
                   help="also fit these recalibration methods on each point's validation split ('all': every one) "
                        "and add their columns")
    add_heal_args(p, "each pruned point (a row of its own, its 'healed' column naming the settings)")
    p.add_argument("--engine", default="local", help="local (this process) or ray")
    p.add_argument("--address", default=None, help="ray: a cluster to join (default: start a local runtime)")
    p.add_argument("--workers", type=int, default=None,
                   help="ray: actors (default: one per GPU, or one per --cpus-per-worker cores)")
    p.add_argument("--cpus-per-worker", type=int, default=1, help="ray: CPU cores per actor (default 1)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N, or auto: spread a model over every GPU")
    p.add_argument("--dtype", default="fp32", choices=["fp32", "bf16", "fp16"])
    add_prompt_args(p)
    p.add_argument("--out", required=True, metavar="DIR", help="folder for results.csv/.parquet, run.json, report.html")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> None:
    from ..study.grid import GridSpec, run_study
    from ..study.repair import parse_methods

    if args.workers is not None and args.workers < 1 or args.cpus_per_worker < 1:
        raise UserError("--workers and --cpus-per-worker must be at least 1")
    if args.engine != "ray" and (args.address or args.workers):
        raise UserError("--address and --workers apply to --engine ray only")
    check_set_args(args)
    spec = GridSpec(models=_names(args.models, "--models"), datasets=_names(args.datasets, "--datasets"),
                    strategies=_names(args.strategies, "--strategies"), max_drop=args.max_drop, n=args.n,
                    val_n=args.val_n, faith_n=args.faith_n, explainers=_names(args.explainers, "--explainers"),
                    prompt=prompt_config(args), dtype=args.dtype, device=args.device, seed=args.seed,
                    calibration_n=args.calibration_n, alpha=args.alpha, method=args.conformal_method,
                    repair=parse_methods(args.repair, "--repair") if args.repair is not None else (),
                    heal=heal_settings(args))
    if spec.heal is not None:
        healed = len(spec.models) * len(spec.datasets) * len(spec.strategies) * spec.max_drop
        print(f"healing {healed} pruned masks of {spec.heal.steps} steps each ({spec.heal.objective} objective): "
              "minutes per mask on a CPU; the adapters are cached, so a rerun trains none of them again",
              file=sys.stderr)
    with Bar("study (points and greedy candidates)", unit="mask") as bar:
        result = run_study(spec, args.out, engine=args.engine, address=args.address, workers=args.workers,
                           cpus_per_worker=args.cpus_per_worker, progress=bar)
    shown = [c for c in ("model", "dataset", "strategy", "explainer", "healed", "dropped", "accuracy", "ece",
                         "comprehensiveness", "sufficiency", "coverage", "set_size", "aurc")
             if c in result.table and result.table[c].notna().any()]
    print(result.table[shown].round(3).to_string(index=False))
    print(json.dumps({k: result.run[k] for k in ("points", "computed", "cached", "seconds")}))
    print(f"wrote results.csv, results.parquet, run.json and report.html to {args.out}")
    if result.failed:
        print(f"{len(result.failed)} points failed (listed in run.json); rerun to retry them", file=sys.stderr)
        raise SystemExit(1)
