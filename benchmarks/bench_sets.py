"""Time of the full-vs-pruned comparison of prediction sets and selective prediction (prints figures; not a test).

`core.task.conformal.paired_conformal` with 1,000 resamples, each recalibrating both sides'
thresholds on a resample of the validation split, and `core.task.selective.paired_selective` on the
same test examples. The probabilities are simulated (four answers, the pruned side a noisy copy of
the full one), so the figures measure the statistics alone.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from core.task import calibration as cal
from core.task.conformal import METHODS, paired_conformal
from core.task.selective import paired_selective


def simulated(n: int, seed: int, k: int = 4) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Full and pruned probabilities and the labels: the right answer's logit leads by about 1.8."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, k, n)
    logits = rng.normal(0, 1, (n, k))
    logits[np.arange(n), labels] += 1.8
    pruned = logits + rng.normal(0, 0.6, logits.shape)
    return cal.softmax(logits), cal.softmax(pruned), labels


def timed(repeats: int, call, *args, **kwargs) -> tuple[float, object]:
    """The median time of ``call(*args, **kwargs)`` over ``repeats`` runs after a warm-up, and its result."""
    result = call(*args, **kwargs)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call(*args, **kwargs)
        times.append(time.perf_counter() - start)
    return float(np.median(times)), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", default="200:100,2000:1000", help="test:validation sizes, comma-separated")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--resamples", type=int, default=1000)
    args = parser.parse_args()
    for pair in args.sizes.split(","):
        n_test, n_val = (int(x) for x in pair.split(":"))
        test_a, test_b, test_y = simulated(n_test, 1)
        val_a, val_b, val_y = simulated(n_val, 2)
        for key in METHODS:
            seconds, d = timed(args.repeats, paired_conformal, val_a, val_b, val_y, test_a, test_b, test_y, 0.1, key,
                               args.resamples)
            size = d.differences["set_size"]
            print(f"n = {n_test:5d} (validation {n_val:4d}) {key:15s} {seconds:.3f} s; set size "
                  f"{d.base.set_size:.2f} -> {d.other.set_size:.2f}, change {size.value:+.2f} "
                  f"[{size.lo:+.2f}, {size.hi:+.2f}], p = {size.p_value:.3f}")
        seconds, d = timed(args.repeats, paired_selective, test_a, test_b, test_y, n_resamples=args.resamples)
        aurc = d.differences["aurc"]
        print(f"n = {n_test:5d} selective prediction {seconds:.3f} s; AURC change {aurc.value:+.3f} "
              f"[{aurc.lo:+.3f}, {aurc.hi:+.3f}], p = {aurc.p_value:.3f}")
    print(f"(medians of {args.repeats}, {args.resamples} resamples)")


if __name__ == "__main__":
    main()
