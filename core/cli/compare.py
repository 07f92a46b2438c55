"""``compare``: two masks on the same examples, every metric with its 95% interval and the paired difference.

With ``--heal-steps``, the pruned model healed with LoRA under the same mask is a third model on the same
examples: its metrics, and its paired changes against the full and the pruned model (with flips, and
its prediction sets and abstention against each).
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from .common import (
    Bar,
    add_data_args,
    add_heal_args,
    add_mask_args,
    add_model_args,
    add_prompt_args,
    add_set_args,
    build_setup,
    check_set_args,
    heal_settings,
    mask,
    write_json,
)

if TYPE_CHECKING:
    import pandas as pd

    from ..study.compare import PairedStats, ResultComparison
    from ..study.healed import HealComparison
    from ..study.healing import HealConfig, HealResult
    from ..study.sets import SetStats
    from ..task.setup import Setup
    from ..task.uncertainty import NoiseFloor
    from .common import Subparsers


def add_parser(sub: Subparsers) -> None:
    p = sub.add_parser("compare", help="the full model against a mask on the same examples, with intervals and "
                                       "a verdict per metric (beyond noise or not)")
    add_model_args(p)
    add_data_args(p)
    p.add_argument("--n", type=int, default=200, help="examples of the split to evaluate (default 200)")
    p.add_argument("--split", default="test", choices=["train", "validation", "test"])
    add_mask_args(p)
    p.add_argument("--base-attn", default="", metavar="L,..",
                   help="the mask to compare against (default: none dropped, the full model; the JSON then says "
                        "'base' and 'other' where it says 'full' and 'pruned')")
    add_prompt_args(p)
    p.add_argument("--bins", type=int, default=15, help="equal-width bins for ECE (default 15)")
    p.add_argument("--val-n", type=int, default=100, help="validation examples for temperature scaling (0: off)")
    p.add_argument("--bootstrap", type=int, default=1000, metavar="B",
                   help="bootstrap resamples for the intervals (default 1000; --seed seeds them too)")
    add_set_args(p)
    p.add_argument("--prompt-seeds", default=None, metavar="S,S,..",
                   help="also evaluate under these demonstration draws (few-shot) and report the spread")
    add_heal_args(p, "the pruned model")
    p.add_argument("--no-cache", action="store_true", help="recompute instead of reading the result cache")
    p.add_argument("--json", metavar="PATH|-", help="write the comparison as JSON ('-' for stdout)")
    p.add_argument("--predictions", metavar="PATH.csv", help="write one row per example with both models' columns")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> None:
    from ..errors import UserError
    from ..model.pruning import parse_layer_list, validate_mask
    from ..study.compare import across_prompt_seeds, compare_results, parse_seeds, seed_spread
    from ..task.evaluation import EvalConfig

    if args.bootstrap < 1000:
        raise UserError(f"--bootstrap must be at least 1000 resamples for stable 95% intervals (got {args.bootstrap})")
    seeds = parse_seeds(args.prompt_seeds) if args.prompt_seeds is not None else None
    check_set_args(args)
    heal_config = heal_settings(args)
    if heal_config is not None and args.base_attn:
        raise UserError("--heal-steps compares the healed model with the full model and the pruned one: leave out "
                        "--base-attn")
    setup = build_setup(args)
    drop = mask(args, setup)
    base = sorted(validate_mask(parse_layer_list(args.base_attn), setup.lm.num_layers))
    config = EvalConfig(n=args.n, split=args.split, seed=args.seed, n_bins=args.bins, val_n=args.val_n)
    healing = _heal(setup, drop, heal_config) if heal_config is not None else None
    with Bar("scoring") as bar:
        c = compare_results(setup, drop, config, base, names=("full model", "pruned"), progress=bar.stage)
    hc = None
    if healing is not None:
        from ..study.healed import healed_comparison

        with Bar("scoring the healed model") as bar:
            hc = healed_comparison(setup, c, healing, config, progress=bar)
        for w in hc.healed.warnings:
            print(f"warning (healed model): {w}", file=sys.stderr)
    for w in dict.fromkeys(c.base.warnings + c.other.warnings):
        print(f"warning: {w}", file=sys.stderr)
    stats = c.stats(args.bootstrap, args.seed)
    sets = c.sets(args.alpha, args.conformal_method, args.bootstrap, args.seed)
    out = stats.as_json(("full", "pruned") if not base else ("base", "other"))
    out.update(sets.as_json(("full", "pruned") if not base else ("base", "other")))
    out.update(model=c.base.model, dataset=c.base.dataset, split=args.split, dropped_attention_layers=drop,
               base_dropped_attention_layers=base)
    spread = None
    if seeds is not None:
        with Bar("prompt seeds") as bar:
            table = across_prompt_seeds(setup, drop, seeds, config, progress=bar.stage)
        spread = seed_spread(table)
        out["prompt_seeds"] = {"seeds": seeds, "per_seed": table.to_dict(orient="records"),
                               "spread": spread.to_dict(orient="index")}
    if hc is not None:
        out["healed"] = hc.healed_json(args.bootstrap, args.seed, args.alpha, args.conformal_method)
    if args.predictions:
        table = c.predictions()
        if hc is not None:
            healed = hc.pair("full", "healed").predictions(("full", "healed"))
            table = table.join(healed[[col for col in healed if col.endswith("_healed")]])
            table["flipped_by_healing"] = table["prediction_pruned"] != table["prediction_healed"]
        table.to_csv(args.predictions, index=False)
    if args.json:
        write_json(out, args.json)
    if args.json != "-":
        _print(c, stats, spread)
        _print_sets(sets, ("full", "pruned") if not base else ("base", "other"))
        if hc is not None:
            _print_healed(hc, args.bootstrap, args.seed, args.alpha, args.conformal_method)


def _heal(setup: Setup, drop: list[int], config: HealConfig) -> HealResult:
    """Heal ``drop`` (cached: a second run trains nothing) with a step bar; Ctrl-C stops and keeps a checkpoint."""
    from ..study.heal_job import estimate_heal, timed_heal
    from .heal import StepBar, StopOnCtrlC

    print(f"healing the pruned model ({config.objective} objective): {estimate_heal(setup, drop, config).text()}",
          file=sys.stderr)
    if config.note:
        print(f"note: {config.note}", file=sys.stderr)
    with StopOnCtrlC() as stop, StepBar() as bar:
        result = timed_heal(setup, drop, config, progress=bar, stop=stop)
    if not result.complete:
        kept = ("the checkpoint is kept: run the same command again to resume" if result.path is not None
                else "nothing is kept under --no-cache")
        print(f"healing stopped at step {result.steps_done} of {config.steps}; {kept}", file=sys.stderr)
        raise KeyboardInterrupt
    return result


def _print_healed(hc: HealComparison, n_resamples: int, seed: int, alpha: float, method: str) -> None:
    """The pruned and healed model: every model's values, its paired changes against the full and the pruned model
    with verdicts and flips, and its prediction sets and abstention against each."""
    import pandas as pd

    from ..study.healing import OBJECTIVES

    stats, sets = hc.stats(n_resamples, seed), hc.sets(alpha, method, n_resamples, seed)
    r, cfg = hc.heal, hc.heal.config
    first, last = r.loss_change() or (float("nan"), float("nan"))
    print()
    print(f"pruned and healed ({hc.healed.model}, the same mask): {cfg.objective} objective "
          f"({OBJECTIVES[cfg.objective]}), {cfg.steps} steps of {cfg.batch_size} rows, LoRA rank {cfg.rank}; "
          + ("adapters from the cache" if r.cached else f"trained in {r.seconds:.0f} s")
          + f"; training loss {first:.3f} -> {last:.3f} (mean of the first / last 5 steps)")
    if cfg.note:
        print(f"note: {cfg.note}")
    pairs = {k: v for k, v in stats.items() if k[1] == "healed"}
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print(hc.values_table(stats).round(4).to_string())
        print(hc.changes_table(pairs).round(4).to_string())
    for (a, b), s in pairs.items():
        m = s.mcnemar
        print(f"flips, {b} against {a}: {m.right_to_wrong} right -> wrong, {m.wrong_to_right} wrong -> right "
              f"(exact McNemar p = {m.p_value:.3g})")
        if s.scaled_difference:
            d = s.scaled_difference["ece"]
            print(f"  ECE after each model's own temperature, {b} - {a}: {d.value:+.4f} [{d.lo:+.4f}, {d.hi:+.4f}], "
                  f"{s.verdict('ece', temperature_scaled=True)}")
    for (a, b), sv in sets.items():
        if b == "healed":
            print(f"prediction sets and abstention, healed against {a}:")
            _print_sets(sv, (a, b))


def _print_sets(sets: SetStats, names: tuple[str, str]) -> None:
    """The prediction-set and abstention blocks: both sides, the paired change, its interval and verdict."""
    import pandas as pd

    with pd.option_context("display.width", 200, "display.max_columns", 20):
        if sets.unavailable is None:
            print(sets.heading("sets") + ":")
            print(sets.table(names, "sets").round(4).to_string())
            assert sets.sets_base is not None and sets.sets_other is not None
            print(f"thresholds (qhat, from validation): {names[0]} {sets.sets_base.qhat:.4f}, {names[1]} "
                  f"{sets.sets_other.qhat:.4f}")
        else:
            print(f"Prediction sets: none, {sets.unavailable}")
        print(sets.heading("selective") + ":")
        print(sets.table(names, "selective").round(4).to_string())
    print(f"error with no abstention: {names[0]} {sets.selective_base.error:.3f}, {names[1]} "
          f"{sets.selective_other.error if sets.selective_other else float('nan'):.3f}; intervals: 95%, "
          f"{sets.n_resamples} paired bootstrap resamples (seed {sets.seed})"
          + (", the threshold recalibrated on a resample of the validation examples in each" if not sets.unavailable
             else ""))


def _print(c: ResultComparison, stats: PairedStats, spread: pd.DataFrame | None) -> None:
    import pandas as pd

    from ..metrics import METRICS

    base = c.base.dropped_attention_layers
    print(f"{c.base.model} on {c.base.dataset} ({c.base.split}, n={stats.n}): "
          f"{'the full model' if not base else f'attention dropped at {base}'} against attention dropped at "
          f"{c.other.dropped_attention_layers or 'none'}")
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print(stats.table(("full", "pruned") if not base else ("base", "other")).round(4).to_string())
    m = stats.mcnemar
    print(f"flips: {m.right_to_wrong} right -> wrong, {m.wrong_to_right} wrong -> right "
          f"(exact McNemar p = {m.p_value:.3g})")
    first, second = ("full", "pruned") if not base else ("base", "other")
    for key, (a, b) in stats.noise_floor.items():
        def verdict(f: NoiseFloor) -> str:
            return "consistent with perfect calibration" if f.consistent else "miscalibrated beyond noise"
        print(f"{METRICS[key].title}: {first} {a.observed:.3f} ({verdict(a)}), {second} {b.observed:.3f} "
              f"({verdict(b)}); a perfectly calibrated model with these confidences reaches {a.q95:.3f} / "
              f"{b.q95:.3f} in 95% of samples of {stats.n}")
    if "ece" in stats.difference:
        print(f"to resolve a 0.02 change in ECE, evaluate about {stats.examples_needed('ece', 0.02)} examples")
    if spread is not None:
        print("across prompt seeds (demonstration draws):")
        print(spread.round(4).to_string())
    print(f"intervals: 95%, seed {stats.seed}; accuracy: Wilson; calibration errors: {stats.n_resamples} simulations "
          f"of correctness inverted (docs/uncertainty.md); the rest: {stats.n_resamples} paired bootstrap resamples")
