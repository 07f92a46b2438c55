"""What the modules of the package share: input checks, a BLAS-free product and bin sums.

Every check raises a `UserError` that says what was wrong and what is allowed.
"""

from __future__ import annotations

import numpy as np

from ...errors import UserError
from .. import calibration as cal


def _inputs(probs: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    probs, labels = _probs(probs), np.asarray(labels)
    if labels.shape != (len(probs),):
        raise UserError(f"there are {len(probs)} rows of probabilities but {labels.size} labels")
    if labels.dtype.kind not in "iub" and (labels.dtype.kind != "f" or not np.array_equal(labels, np.round(labels))):
        raise UserError(f"labels must be integer answer indices (got {labels.dtype} values)")
    if labels.min() < 0 or labels.max() >= probs.shape[1]:
        raise UserError(f"labels must be answer indices 0-{probs.shape[1] - 1} (got {labels.min()}-{labels.max()})")
    return probs, labels.astype(int)


def _probs(probs: np.ndarray) -> np.ndarray:
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 2 or len(probs) == 0 or probs.shape[1] == 0:
        raise UserError(f"probabilities must be a non-empty [examples, answers] array (got shape {probs.shape})")
    if not np.isfinite(probs).all():
        raise UserError("probabilities must be finite numbers (found NaN or infinity)")
    return probs


def _check_bins(n_bins: int) -> None:
    if n_bins < 1:
        raise UserError(f"the number of bins must be at least 1 (got {n_bins})")


def _check_sims(n_sims: int) -> None:
    if n_sims < 1:
        raise UserError(f"the simulation needs at least one run (got {n_sims})")


def _check_counts(counts: np.ndarray, n: int) -> np.ndarray:
    counts = np.asarray(counts)
    if counts.ndim != 2 or counts.shape[1] != n:
        raise UserError(f"the resample counts cover {counts.shape[-1]} examples, not {n}")
    return counts.astype(np.float64)


def _dot(matrix: np.ndarray, vector: np.ndarray) -> np.ndarray:
    """``matrix @ vector`` without BLAS.

    These products are small; OpenBLAS's worker threads, once woken, spin for a while and on a busy
    machine take the CPU from the transforms that follow (measured: twice the time on 2 shared cores).
    """
    return np.einsum("ij,j->i", matrix, vector)


def _bin_sums(values: np.ndarray, conf: np.ndarray, n_bins: int) -> np.ndarray:
    """[rows, non-empty bins]: each row of ``values`` [rows, n] summed over each equal-width bin's examples."""
    bins = cal._bin_index(conf, n_bins)
    order = np.argsort(bins, kind="stable")
    starts = np.flatnonzero(np.diff(bins[order], prepend=-1))
    return np.add.reduceat(values[:, order], starts, axis=1)
