"""Explainer speed and faithfulness on a model (the default unless ``--model``) and the default data
(prints figures; not a test).

1. Seconds per explanation for every explainer (median over ``--speed-n`` test reviews, no cache).
2. AOPC comprehensiveness and sufficiency of LIME, Kernel SHAP, Integrated Gradients and the random
   baseline with 0, 4 and 8 of the most redundant attention layers dropped, with accuracy and ECE on
   the same examples. Results go through the result cache, so a rerun only prints.

    python benchmarks/bench_explain.py [--n 50] [--speed-n 5] [--model all-minilm-l6-v2 --masks 0,2,4]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

from core import EvalConfig, ResultCache, attention_scores, calibration_texts, evaluate, load_dataset, load_model  # noqa: E402
from core.explain.dataset import ExplainConfig, Explainer, dataset_faithfulness  # noqa: E402
from core.explain.methods import EXPLAINERS  # noqa: E402
from core.model.loading import DEFAULT_MODEL  # noqa: E402
from core.task.head import builder_for  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=50)
    parser.add_argument("--speed-n", type=int, default=5)
    parser.add_argument("--masks", default="0,4,8", help="numbers of most redundant attention layers to drop")
    parser.add_argument("--model", default=DEFAULT_MODEL)
    args = parser.parse_args()
    lm, ds = load_model(args.model), load_dataset()
    builder = builder_for(lm, ds, cache=ResultCache())  # an encoder's head is fitted on the full encoder
    examples, _ = ds.sample("test", args.n, seed=0)
    words = [len(ex.text.split()) for ex in examples]
    print(f"{lm.name} on {ds.name}: {args.n} test reviews, {np.mean(words):.1f} words on average "
          f"(median {np.median(words):.0f})")

    print("\nseconds per explanation (median, no cache)")
    for name in EXPLAINERS:
        explainer = Explainer(lm, ds, builder, "test", (), ExplainConfig.make(name), cache=None)
        times = []
        for ex in examples[: args.speed_n]:
            start = time.perf_counter()
            explainer.explain(ex)
            times.append(time.perf_counter() - start)
        print(f"  {name:22s} {np.median(times):6.2f} s  (min {min(times):.2f}, max {max(times):.2f})")

    cache = ResultCache()
    order = attention_scores(lm, calibration_texts(ds), cache).order
    print("\nAOPC faithfulness (comprehensiveness: higher is better; sufficiency: lower is better)")
    print(f"{'dropped':>8} {'accuracy':>8} {'ECE':>6}  {'explainer':22s} {'comp':>6} {'suff':>6} "
          f"{'rand comp':>9} {'rand suff':>9} {'s/expl':>6}")
    for k in (int(x) for x in args.masks.split(",")):
        drop = tuple(sorted(order[:k]))
        result = evaluate(lm, ds, EvalConfig(n=args.n, drop=drop, val_n=0), cache)
        for name in ("lime", "kernel-shap", "integrated-gradients"):
            explainer = Explainer(lm, ds, builder, "test", drop, ExplainConfig.make(name), cache)
            s = dataset_faithfulness(explainer, result.examples).summary()
            print(f"{k:>8} {result.metrics.accuracy:8.3f} {result.metrics.ece:6.3f}  {name:22s} "
                  f"{s['comprehensiveness']:6.3f} {s['sufficiency']:6.3f} "
                  f"{s['random_baseline_comprehensiveness']:9.3f} {s['random_baseline_sufficiency']:9.3f} "
                  f"{s['seconds_per_explanation']:6.2f}", flush=True)


if __name__ == "__main__":
    main()
