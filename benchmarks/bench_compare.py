"""Time of the full paired comparison of two masks, given their per-example results (prints figures; not a test).

The comparison is what `python -m core compare`, the Calibration view and every sweep row compute
once both masks are scored: every metric with its interval on both sides, the paired differences
with p-values (before and after temperature scaling), McNemar, the noise floor of binned, adaptive
and smooth ECE on both sides, and the label mass. The per-example results are simulated (a binary
task, accuracy about 0.86, the pruned side a noisy copy of the full one), so the figures measure
the statistics alone; scoring the examples is `bench_scoring.py`'s business.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from core.study.compare import paired_stats
from core.task import calibration as cal
from core.task.data import Example
from core.task.evaluation import EvalResult
from core.task.uncertainty import paired_differences


def simulated(n: int, seed: int, noise: float = 0.0) -> EvalResult:
    rng = np.random.default_rng(0)
    margin = rng.normal(1.8, 1.5, n)
    labels = rng.integers(0, 2, n)
    logits = np.zeros((n, 2))
    logits[np.arange(n), labels] = margin  # the right answer leads by ``margin`` (wrong when negative)
    logits += np.random.default_rng(seed).normal(0, noise, logits.shape)
    probs = cal.softmax(logits)
    return EvalResult(
        model="simulated", dataset="simulated", split="test", n=n, dropped_attention_layers=[] if not noise else [1],
        all_attention_dropped=False, label_names=["a", "b"], metrics=cal.report(probs, labels),
        reliability=[], temperature=1.3, metrics_temperature_scaled=cal.report(cal.softmax(logits, 1.3), labels),
        examples=[Example(str(i), "", int(labels[i])) for i in range(n)], logits=logits,
        label_mass=rng.uniform(0.6, 1.0, n), val_logits=None, val_labels=None, seconds=0.0, cached=False,
        warnings=[], prompt={})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", default="200,2000")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    for n in (int(x) for x in args.sizes.split(",")):
        full = simulated(n, 1)
        paired_stats(full, simulated(n, 2, noise=0.6))  # warm-up; the full side's simulations are then kept
        times, bootstrap = [], []
        for r in range(args.repeats):  # a new pruned side each time, as each new mask is
            pruned = simulated(n, 3 + r, noise=0.6)
            start = time.perf_counter()
            paired_differences(full.probs, pruned.probs, full.labels)
            bootstrap.append(time.perf_counter() - start)
            pruned = simulated(n, 100 + r, noise=0.6)
            start = time.perf_counter()
            stats = paired_stats(full, pruned)
            times.append(time.perf_counter() - start)
        d = stats.difference["ece"]
        print(f"n = {n:5d}: paired intervals of every metric {np.median(bootstrap):.3f} s; the full comparison "
              f"(also after temperature scaling, McNemar, noise floors, label mass) {np.median(times):.3f} s "
              f"(medians of {args.repeats} new pruned sides against one full model, 1,000 resamples); "
              f"ECE change {d.value:+.3f} [{d.lo:+.3f}, {d.hi:+.3f}], "
              f"p = {d.p_value:.3f}")


if __name__ == "__main__":
    main()
