"""Every installed packaged model on the default data (prints figures; not a test).

For each model: accuracy, ECE and Brier on ``--n`` test examples with no attention layer dropped
and with the two most redundant (He et al.'s score) dropped, the temperature fitted on 100
validation examples and the ECE after it, and the seconds per 100 examples of uncached scoring.
For an encoder classifier also the head re-fitted on the pruned encoder ("prune, then re-fit"),
and how much of the accuracy lost to pruning the re-fit recovers.

    python benchmarks/bench_models.py [--n 200] [--models all-minilm-l6-v2,gemma-3-270m]
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch

from core import EvalConfig, ResultCache, Setup, attention_scores, calibration_texts, evaluate, load_dataset
from core.model.loading import PRESETS, load_model
from core.task.scoring import score_examples


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--models", default=",".join(p.name for p in PRESETS if p.embedded))
    args = parser.parse_args()
    ds, cache = load_dataset(), ResultCache()
    print(f"torch threads: {torch.get_num_threads()}, {ds.name}, n = {args.n} test examples, ECE with 15 bins")
    print("| model | dropped | head | accuracy | ECE | Brier | temperature | ECE after T | s / 100 examples |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name in args.models.split(","):
        preset = next(p for p in PRESETS if p.name == name)
        if not preset.available_offline():
            print(f"| {name} | not installed: {preset.install} | | | | | | | |")
            continue
        lm = load_model(name)
        drop = tuple(sorted(attention_scores(lm, calibration_texts(ds), cache=cache).most_redundant(2)))
        heads = (False, True) if lm.task == "classifier" else (False,)
        runs = [((), False)] + [(drop, refit) for refit in heads]
        accuracy = {}
        for mask, refit in runs:
            setup = Setup(lm, ds, refit_head=refit, cache=cache)
            result = evaluate(setup, EvalConfig(n=args.n, drop=mask))
            builder = setup.builder(mask)
            score_examples(lm, builder, result.examples[:16], mask)  # warm-up
            start = time.perf_counter()
            score_examples(lm, builder, result.examples, mask)
            per_100 = 100 * (time.perf_counter() - start) / len(result.examples)
            m, scaled = result.metrics, result.metrics_temperature_scaled
            head = "-" if lm.task != "classifier" else ("re-fitted" if refit else "frozen (full)")
            accuracy[(mask, refit)] = m.accuracy
            print(f"| {name} | {', '.join(map(str, mask)) or 'none'} | {head} | {m.accuracy:.3f} | {m.ece:.3f} | "
                  f"{m.brier:.3f} | {result.temperature:.3f} | {scaled.ece:.3f} | {per_100:.2f} |")
        if lm.task == "classifier":
            lost = accuracy[((), False)] - accuracy[(drop, False)]
            regained = accuracy[(drop, True)] - accuracy[(drop, False)]
            share = f"{regained / lost:.0%}" if lost > 0 else "n/a (nothing lost)"
            print(f"|   | re-fit: lost {lost:+.3f} accuracy to dropping {drop}, re-fit regained {regained:+.3f} "
                  f"({share}) | | | | | | | |")


if __name__ == "__main__":
    main()
