"""How sure each number is: intervals, paired differences, significance and the calibration noise floor.

Every interval is 95% and every resampling is seeded, so the same inputs give the same intervals.
One module per concept, each with its own notes:

* `methods`: which interval each metric gets (chosen by coverage), and the two entry points every
  interval shown comes from: `calibration_intervals` and `paired_differences`.
* `intervals`: the result types (`Interval`, `Difference`, `McNemar`) and the closed forms: the
  Wilson interval, McNemar's test, the sample size to resolve a change, and how bootstrap draws
  become an interval and a p-value.
* `resampling`: the bootstrap: resample counts, every metric on every resample
  (`calibration_draws`), and the percentile intervals of means.
* `inversion`: the intervals of the calibration errors (ECE, adaptive ECE, MCE, smooth ECE):
  a simulation of correctness inverted along the sample's own miscalibration.
* `smooth`: smooth ECE on many resamples at once (relplot's value, vectorised).
* `noise`: what a perfectly calibrated model with the same confidences shows: the noise floor and
  the reliability bins' consistency bands.
* `coverage`: the simulation study that chose the methods.
* `common`: input checks, a BLAS-free product and bin sums the others share.
"""

from .intervals import (
    LEVEL,
    Difference,
    Interval,
    McNemar,
    bootstrap_difference,
    examples_needed,
    mcnemar,
    wilson,
)
from .inversion import CALIBRATION_ERRORS
from .methods import Side, calibration_intervals, differences, paired_differences, side
from .noise import NOISE_FLOOR_KEYS, NoiseFloor, banded_reliability_table, noise_floor, reliability_bands
from .resampling import KEYS, N_RESAMPLES, calibration_draws, mean_interval, paired_mean_difference, resample_counts
from .smooth import smooth_ece

__all__ = [
    "CALIBRATION_ERRORS", "KEYS", "LEVEL", "N_RESAMPLES", "NOISE_FLOOR_KEYS", "Difference", "Interval", "McNemar",
    "NoiseFloor", "Side", "banded_reliability_table", "bootstrap_difference", "calibration_draws",
    "calibration_intervals", "differences", "examples_needed", "mcnemar",
    "mean_interval", "noise_floor", "paired_differences", "paired_mean_difference", "reliability_bands",
    "resample_counts", "side", "smooth_ece", "wilson",
]
