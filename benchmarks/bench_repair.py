"""Cost of the whole repair comparison of one mask: every recalibration method (prints figures; not a test).

`core.study.repair.compare_repairs` fits every method of `core.task.recalibration` on the pruned
model's validation logits, scores it on the test split with 1,000 shared bootstrap resamples
(accuracy, ECE, smooth ECE, Brier, NLL with intervals, paired changes against the unrepaired pruned
model and the full model, McNemar) and words a verdict. The logits are simulated: a task of
``--answers`` answers where the right answer leads by a normal margin, the pruned side an
overconfident, answer-biased, noisy copy of the full one, so the figures measure the fitting and the
statistics alone. Wall and CPU seconds are medians over ``--repeats`` runs after a warm-up (the
first run also imports scikit-learn's isotonic regression, about a second); run it with one thread:

    OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 python benchmarks/bench_repair.py
        [--sizes 200:100,1000:1000] [--answers 2] [--repeats 5] [--full-after]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from core.study.repair import compare_repairs
from core.task.recalibration import RECALIBRATORS


def simulated(n: int, k: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(full logits, pruned logits, labels) of ``n`` examples with ``k`` answers."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, k, n)
    full = rng.normal(0, 1, (n, k))
    full[np.arange(n), labels] += rng.normal(1.8, 1.5, n)
    pruned = 2.2 * full + rng.normal(0, 0.6, (n, k)) + np.linspace(0.5, 0, k)
    return full, pruned, labels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="200:100,1000:1000", help="test:validation sizes")
    parser.add_argument("--answers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--full-after", action="store_true", help="also fit every method on the full model")
    args = parser.parse_args()
    k = args.answers
    content_free = np.linspace(1.5, 0.5, k) / np.linspace(1.5, 0.5, k).sum()
    for size in args.sizes.split(","):
        n_test, n_val = (int(x) for x in size.split(":"))
        full, pruned, labels = simulated(n_test, k, 1)
        full_val, pruned_val, val_labels = simulated(n_val, k, 2)

        def run(full=full, pruned=pruned, labels=labels, full_val=full_val, pruned_val=pruned_val,
                val_labels=val_labels):
            return compare_repairs(full, pruned_val, val_labels, pruned, labels, content_free=content_free,
                                   full_val_logits=full_val if args.full_after else None,
                                   full_content_free=content_free)

        start = time.perf_counter()
        run()
        first = time.perf_counter() - start
        wall, cpu = [], []
        for _ in range(args.repeats):
            w, c = time.perf_counter(), time.process_time()
            result = run()
            wall.append(time.perf_counter() - w)
            cpu.append(time.process_time() - c)
        verdicts = ", ".join(f"{r.method}: {r.verdict}" for r in result.rows[1:])
        print(f"n = {n_test:,} test / {n_val:,} validation, K = {k}, {len(RECALIBRATORS)} methods"
              f"{' (and each on the full model)' if args.full_after else ''}: {np.median(wall):.2f} s wall, "
              f"{np.median(cpu):.2f} s CPU (medians of {args.repeats}; first run {first:.2f} s)\n  {verdicts}")


if __name__ == "__main__":
    main()
