"""The table of recalibration methods: what a method is, how it is fitted, and the checks every fit shares.

Every method is one function, registered with its metadata by `_register` in `RECALIBRATORS` (in
menu order), like the explainers of `core.explain.methods`. Its entry says whether it can change
the predicted answer and about how many validation examples it needs (`Recalibrator.min_validation`);
`Recalibrator.fit` sees only the validation logits and labels (and, for contextual calibration, the
model's answers on content-free inputs) and returns a `Fitted` whose ``probs`` maps any logits to
recalibrated probabilities. A method that cannot be fitted on the examples given raises `NotFittable`
with the reason, so that a comparison can show it in that method's row and go on with the others.

The methods themselves are in `core.task.recalibration.methods`, which fills `RECALIBRATORS` when the
package is imported (so the table is never seen empty).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np
from scipy.special import log_softmax

from ...errors import UserError


class NotFittable(UserError):
    """A method cannot be fitted on the validation examples given; the message says why."""


@dataclass(frozen=True)
class Fitted:
    """A method fitted on one validation split: its parameters for display, and the map it applies."""

    method: str
    params: Mapping[str, object]
    """What was fitted, as plain numbers and lists (e.g. ``{"temperature": 1.31}``)."""
    n_validation: int
    n_answers: int
    apply: Callable[[np.ndarray], np.ndarray] = field(repr=False)
    notes: tuple[str, ...] = ()
    """Plain remarks on the fit (an optimum on the edge of its range, ...)."""

    def probs(self, logits: np.ndarray) -> np.ndarray:
        """[n, K] recalibrated probabilities of ``logits`` (0 for answers an example does not offer)."""
        return self.apply(check_logits(logits, self.n_answers))

    def as_dict(self) -> dict:
        return {"method": self.method, "params": dict(self.params), "n_validation": self.n_validation,
                "notes": list(self.notes)}


@dataclass(frozen=True)
class _Validation:
    """A validation split as the fitting functions see it."""

    logits: np.ndarray
    labels: np.ndarray
    offered: np.ndarray
    content_free: np.ndarray | None

    @property
    def n(self) -> int:
        return len(self.labels)

    @property
    def k(self) -> int:
        return self.logits.shape[1]

    @property
    def log_probs(self) -> np.ndarray:
        return log_softmax(self.logits, axis=1)


_Fit = Callable[[_Validation, Mapping[str, object]], tuple[Callable[[np.ndarray], np.ndarray], dict, list[str]]]
"""A method's function: (validation split, resolved parameters) -> (logits -> probs, fitted parameters, notes)."""


@dataclass(frozen=True)
class Recalibrator:
    """One recalibration method: what a table shows of it, and the function that fits it."""

    name: str
    title: str
    changes_prediction: bool
    """Whether it can change an example's predicted answer (and so accuracy)."""
    defaults: Mapping[str, object]
    description: str
    needs: Callable[[int, Mapping[str, object]], int] = field(repr=False)
    """(number of answers, parameters) -> about how many validation examples the method needs."""
    why: str
    """Why it needs that many, in one line."""
    run: _Fit = field(repr=False)
    uses_labels: bool = True

    def min_validation(self, n_answers: int, params: Mapping[str, object] | None = None) -> int:
        return self.needs(n_answers, resolve_params(self.name, params))

    def size_note(self, n_validation: int, n_answers: int, params: Mapping[str, object] | None = None) -> str | None:
        """The plain warning for a validation split smaller than the method needs (None when it is enough)."""
        m = self.min_validation(n_answers, params)
        if n_validation >= m:
            return None
        return f"fitted on only {n_validation:,} validation examples; this method needs about {m:,} ({self.why})"

    def fit(self, val_logits: np.ndarray, val_labels: np.ndarray, content_free: np.ndarray | None = None,
            **params: object) -> Fitted:
        """Fit on the validation logits and labels only; raises `NotFittable` when it cannot be fitted."""
        resolved = resolve_params(self.name, params)
        logits = check_logits(val_logits)
        labels = check_labels(val_labels, logits, "validation")
        if self.uses_labels and not len(labels):
            raise NotFittable("there are no validation examples to fit it on")
        val = _Validation(logits, labels, np.isfinite(logits), content_free)
        apply, fitted, notes = self.run(val, resolved)
        return Fitted(self.name, fitted, val.n, val.k, apply, tuple(notes))


RECALIBRATORS: dict[str, Recalibrator] = {}
"""Every method by name, in menu order; filled by `_register` below."""


def _register(name: str, title: str, changes_prediction: bool, defaults: Mapping[str, object], description: str,
              needs: Callable[[int, Mapping[str, object]], int], why: str, uses_labels: bool = True
              ) -> Callable[[_Fit], _Fit]:
    def add(run: _Fit) -> _Fit:
        RECALIBRATORS[name] = Recalibrator(name, title, changes_prediction, defaults, description, needs, why, run,
                                           uses_labels)
        return run

    return add


def check_recalibrator(name: str) -> Recalibrator:
    if name not in RECALIBRATORS:
        raise UserError(f"unknown recalibration method '{name}'; use one of {', '.join(RECALIBRATORS)}")
    return RECALIBRATORS[name]


def resolve_params(name: str, overrides: Mapping[str, object] | None = None) -> dict[str, object]:
    """The method's defaults updated with ``overrides`` (strings are converted), checked."""
    info = check_recalibrator(name)
    params = dict(info.defaults)
    for key, value in (overrides or {}).items():
        if key not in info.defaults:
            raise UserError(f"method '{name}' has no parameter '{key}'; its parameters: "
                            f"{', '.join(info.defaults) or 'none'}")
        params[key] = value
    if "lam" in params:
        lam = params["lam"]
        if lam != "cv":
            try:
                lam = float(lam)  # type: ignore[arg-type]
            except (TypeError, ValueError):
                lam = -1.0
            if not lam >= 0:
                raise UserError(f"parameter 'lam' of '{name}' must be 'cv' or a number of 0 or more "
                                f"(got {params['lam']!r})")
        params["lam"] = lam
    if "n_bins" in params:
        try:
            bins = int(params["n_bins"])  # type: ignore[call-overload]
        except (TypeError, ValueError):
            bins = 0
        if bins < 2 or str(bins) != str(params["n_bins"]).strip():
            raise UserError(f"parameter 'n_bins' of '{name}' must be a whole number of 2 or more "
                            f"(got {params['n_bins']!r})")
        params["n_bins"] = bins
    return params


def check_logits(logits: np.ndarray, n_answers: int | None = None) -> np.ndarray:
    """``logits`` as float64 [n, K]: finite or -inf (an answer not offered), at least one answer offered per row."""
    z = np.asarray(logits, dtype=np.float64)
    if z.ndim != 2 or z.shape[1] < 2 or (n_answers is not None and z.shape[1] != n_answers):
        want = f"{n_answers}" if n_answers is not None else "at least 2"
        raise UserError(f"logits must be an [examples, answers] array with {want} answers (got shape {z.shape})")
    if np.isnan(z).any() or np.isposinf(z).any():
        raise UserError("logits must be finite numbers, or -inf for an answer an example does not offer")
    if len(z) and not np.isfinite(z).any(axis=1).all():
        raise UserError("every example must offer at least one answer (found a row of -inf logits)")
    return z


def check_labels(labels: np.ndarray, logits: np.ndarray, split: str) -> np.ndarray:
    """``labels`` as integer answer indices, one per row of ``logits``, each an answer its example offers."""
    y = np.asarray(labels)
    if y.shape != (len(logits),) or (len(y) and y.dtype.kind not in "iu"):
        raise UserError(f"the {split} split has {len(logits)} rows of logits but labels of shape {y.shape} "
                        f"({y.dtype}); labels must be integer answer indices")
    if len(y) and (y.min() < 0 or y.max() >= logits.shape[1] or not np.isfinite(logits[np.arange(len(y)), y]).all()):
        raise UserError(f"every {split} label must be one of the answers its example offers")
    return y.astype(int)
