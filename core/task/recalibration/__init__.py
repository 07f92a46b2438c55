"""Recalibration after pruning: a table of methods, each fitted on validation logits and applied to test logits.

One module per concept, each with its own notes:

* `registry`: the table (`RECALIBRATORS`, in menu order): what a method is (`Recalibrator`), what a fit
  returns (`Fitted`), `NotFittable`, and the checks every fit shares (parameters, logits, labels).
* `methods`: the methods, one registered function each (temperature, vector and matrix scaling,
  histogram binning, isotonic regression, ensemble temperature scaling, contextual calibration).
* `content_free`: contextual calibration's inputs, the one part that runs the model.

Every name is imported from here; importing the package registers every method.
"""

from .content_free import CONTENT_FREE, content_free_probs, content_free_texts
from .methods import MAX_MATRIX_ANSWERS, RECALIBRATION_VERSION, T_BOUNDS, simplex_least_squares
from .registry import (
    RECALIBRATORS,
    Fitted,
    NotFittable,
    Recalibrator,
    check_labels,
    check_logits,
    check_recalibrator,
    resolve_params,
)

__all__ = [
    "CONTENT_FREE", "MAX_MATRIX_ANSWERS", "RECALIBRATION_VERSION", "RECALIBRATORS", "T_BOUNDS", "Fitted",
    "NotFittable", "Recalibrator", "check_labels", "check_logits", "check_recalibrator", "content_free_probs",
    "content_free_texts", "resolve_params", "simplex_least_squares",
]
