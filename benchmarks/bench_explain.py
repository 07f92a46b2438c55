"""Explainer speed and faithfulness on a model (the default unless ``--model``) and the default data
(prints figures; not a test).

1. Seconds per explanation for every explainer (median over ``--speed-n`` test reviews, no cache).
2. AOPC comprehensiveness and sufficiency of LIME, Kernel SHAP, Integrated Gradients and the random
   baseline with 0, 4 and 8 of the most redundant attention layers dropped, with accuracy and ECE on
   the same examples, and each pruned mask's change from the full model with its paired 95%
   interval over the same reviews. Results go through the result cache, so a rerun only prints.

    python benchmarks/bench_explain.py [--n 50] [--speed-n 5] [--model all-minilm-l6-v2 --masks 0,2,4]
                                       [--explainers lime,kernel-shap]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import numpy as np

from core import (
    METRICS,
    DatasetExplainer,
    EvalConfig,
    ExplainConfig,
    ResultCache,
    Setup,
    attention_scores,
    calibration_texts,
    dataset_faithfulness,
    evaluate,
    load_dataset,
    load_model,
)
from core.explain.methods import EXPLAINERS
from core.model.loading import DEFAULT_MODEL
from core.study.compare import paired_stats
from core.task.uncertainty import paired_mean_difference, resample_counts


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=50)
    parser.add_argument("--speed-n", type=int, default=5)
    parser.add_argument("--masks", default="0,4,8", help="numbers of most redundant attention layers to drop")
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--explainers", default="lime,kernel-shap,integrated-gradients")
    args = parser.parse_args()
    lm, ds = load_model(args.model), load_dataset()
    cache = ResultCache()
    # speed: a throwaway cache, so explanations are computed afresh (an encoder's head is fitted once into it)
    uncached = Setup(lm, ds, cache=ResultCache(tempfile.mkdtemp(prefix="bench-explain-")))
    cached = Setup(lm, ds, cache=cache)
    examples, _ = ds.sample("test", args.n, seed=0)
    words = [len(ex.text.split()) for ex in examples]
    print(f"{lm.name} on {ds.name}: {args.n} test reviews, {np.mean(words):.1f} words on average "
          f"(median {np.median(words):.0f})")

    print("\nseconds per explanation (median, no cache)")
    for name in EXPLAINERS if args.speed_n else ():
        explainer = DatasetExplainer(uncached, (), ExplainConfig.make(name))
        times = []
        for ex in examples[: args.speed_n]:
            start = time.perf_counter()
            explainer.explain(ex)
            times.append(time.perf_counter() - start)
        print(f"  {name:22s} {np.median(times):6.2f} s  (min {min(times):.2f}, max {max(times):.2f})")

    order = attention_scores(lm, calibration_texts(ds), cache=cache).order
    print(f"\nAOPC faithfulness ({METRICS['comprehensiveness'].axis_title()}; {METRICS['sufficiency'].axis_title()})")
    print(f"{'dropped':>8} {'accuracy':>8} {'ECE':>6}  {'explainer':22s} {'comp':>6} {'suff':>6} "
          f"{'rand comp':>9} {'rand suff':>9} {'s/expl':>6}")
    full_rows: dict[str, list[dict]] = {}
    full_result = None
    counts = resample_counts(args.n)
    for k in (int(x) for x in args.masks.split(",")):
        drop = tuple(sorted(order[:k]))
        result = evaluate(cached, EvalConfig(n=args.n, drop=drop, val_n=0))
        full_result = full_result or result
        for name in args.explainers.split(","):
            explainer = DatasetExplainer(cached, drop, ExplainConfig.make(name))
            faith = dataset_faithfulness(explainer, result.examples)
            s = faith.summary()
            print(f"{k:>8} {result.metrics.accuracy:8.3f} {result.metrics.ece:6.3f}  {name:22s} "
                  f"{s['comprehensiveness']:6.3f} {s['sufficiency']:6.3f} "
                  f"{s['random_baseline_comprehensiveness']:9.3f} {s['random_baseline_sufficiency']:9.3f} "
                  f"{s['seconds_per_explanation']:6.2f}", flush=True)
            rows = faith.per_example()
            if k == 0:
                full_rows[name] = rows
            elif name in full_rows:
                changes = []
                for key in ("comprehensiveness", "sufficiency"):
                    d = paired_mean_difference([r[key] for r in full_rows[name]], [r[key] for r in rows], counts)
                    changes.append(f"{key} {d.value:+.3f} [{d.lo:+.3f}, {d.hi:+.3f}] "
                                   f"{METRICS[key].verdict(d.value, d.beyond_noise, d.p_value)}")
                print(f"{'':>8} change from the full model, n = {len(rows)}: " + "; ".join(changes), flush=True)
        if k and full_result is not None:
            stats = paired_stats(full_result, result)
            print(f"{'':>8} " + "; ".join(
                f"{key} {d.value:+.3f} [{d.lo:+.3f}, {d.hi:+.3f}] {METRICS[key].verdict(d.value, d.beyond_noise)}"
                for key, d in ((key, stats.difference[key]) for key in ("accuracy", "ece"))), flush=True)


if __name__ == "__main__":
    main()
