"""How sure each number is: intervals, paired differences, significance and the calibration noise floor.

Every interval is 95% and every resampling is seeded, so the same inputs give the same intervals.
One module per concept, each with its own notes:

* `intervals`: the result types (`Interval`, `Difference`, `McNemar`) and the closed forms: the
  Wilson interval, McNemar's test, the sample size to resolve a change, and how draws become an
  interval and a p-value.
* `resampling`: the bootstrap: resample counts, every metric on every resample
  (`calibration_draws`), and the intervals and paired differences built on them.
* `smooth`: smooth ECE on many resamples at once (relplot's value, vectorised).
* `noise`: what a perfectly calibrated model with the same confidences shows: the noise floor and
  the reliability bins' consistency bands.
* `common`: input checks and a BLAS-free product the others share.
"""

from .intervals import LEVEL, Difference, Interval, McNemar, examples_needed, mcnemar, wilson
from .noise import NOISE_FLOOR_KEYS, NoiseFloor, banded_reliability_table, noise_floor, reliability_bands
from .resampling import (
    KEYS,
    N_RESAMPLES,
    calibration_draws,
    calibration_intervals,
    mean_interval,
    paired_differences,
    paired_mean_difference,
    resample_counts,
)
from .smooth import smooth_ece

__all__ = [
    "KEYS", "LEVEL", "N_RESAMPLES", "NOISE_FLOOR_KEYS", "Difference", "Interval", "McNemar", "NoiseFloor",
    "banded_reliability_table", "calibration_draws", "calibration_intervals", "examples_needed", "mcnemar",
    "mean_interval", "noise_floor", "paired_differences", "paired_mean_difference", "reliability_bands",
    "resample_counts", "smooth_ece", "wilson",
]
