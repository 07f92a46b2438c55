"""Time of the full-vs-pruned comparison of prediction sets and selective prediction (prints figures; not a test).

`core.task.conformal.paired_conformal` with 1,000 resamples, each recalibrating both sides'
thresholds on a resample of the validation split, and `core.task.selective.paired_selective` on the
same test examples. Then the whole of what ``python -m core compare`` and the Prediction sets view add
on two evaluations: `core.study.sets.set_stats` (both of the above, LAC) and `set_figures` (each
side's set sizes, coverage over 25 alphas and risk-coverage band). The probabilities are simulated
(four answers, the pruned side a noisy copy of the full one), so the figures measure the statistics alone.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from core.study.sets import set_figures, set_stats
from core.task import calibration as cal
from core.task.conformal import METHODS, paired_conformal
from core.task.data import Example
from core.task.evaluation import EvalResult
from core.task.selective import paired_selective


def simulated(n: int, seed: int, k: int = 4) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Full and pruned probabilities and the labels: the right answer's logit leads by about 1.8."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, k, n)
    logits = rng.normal(0, 1, (n, k))
    logits[np.arange(n), labels] += 1.8
    pruned = logits + rng.normal(0, 0.6, logits.shape)
    return cal.softmax(logits), cal.softmax(pruned), labels


def evaluation(test: np.ndarray, labels: np.ndarray, val: np.ndarray, val_labels: np.ndarray) -> EvalResult:
    """An `EvalResult` holding simulated probabilities (as logits) and its validation part, nothing scored."""
    return EvalResult(
        model="simulated", dataset="simulated", split="test", n=len(labels), dropped_attention_layers=[],
        all_attention_dropped=False, label_names=[f"answer {k}" for k in range(test.shape[1])],
        metrics=cal.report(test, labels), reliability=[], temperature=None, metrics_temperature_scaled=None,
        examples=[Example(str(i), "", int(y)) for i, y in enumerate(labels)], logits=np.log(test),
        label_mass=None, val_logits=np.log(val), val_labels=val_labels, seconds=0.0, cached=True, warnings=[],
        prompt={})


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
        full, pruned = evaluation(test_a, test_y, val_a, val_y), evaluation(test_b, test_y, val_b, val_y)
        seconds, s = timed(args.repeats, set_stats, full, pruned, 0.1, "lac", args.resamples)
        print(f"n = {n_test:5d} set_stats (LAC and selective, paired) {seconds:.3f} s; "
              f"{len(s.difference)} metrics")
        seconds, _ = timed(args.repeats, set_figures, {"full": full, "pruned": pruned}, 0.1, "lac")
        print(f"n = {n_test:5d} set_figures (sizes, coverage over 25 alphas, risk bands) {seconds:.3f} s")
    print(f"(medians of {args.repeats}, {args.resamples} resamples)")


if __name__ == "__main__":
    main()
