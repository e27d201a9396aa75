"""Error metrics of FORMAT.md: RMSE over the whole volume, and its relative form."""

from __future__ import annotations

import numpy as np
import torch


def rmse(estimate, truth=None) -> float:
    """sqrt(mean((estimate - truth)^2)) of real arrays or tensors (truth None: the RMS of estimate).

    numpy arrays are reduced in float64 one slab of the first axis at a time,
    so a large volume is never copied whole.
    """
    if torch.is_tensor(estimate):
        diff = estimate.double() if truth is None else estimate.double() - truth.double()
        return float(torch.sqrt(torch.mean(diff**2)))
    estimate = np.asarray(estimate)
    if estimate.size == 0:
        return float("nan")
    total = 0.0
    for index in range(estimate.shape[0]) if estimate.ndim else [()]:
        slab = np.asarray(estimate[index], dtype=np.float64)
        if truth is not None:
            slab = slab - np.asarray(truth[index], dtype=np.float64)
        total += float(np.sum(slab * slab))
    return float(np.sqrt(total / estimate.size))


def relative_rmse(estimate, truth) -> float:
    """RMSE divided by sqrt(mean(truth^2)); inf for an all-zero truth."""
    norm = rmse(truth)
    return rmse(estimate, truth) / norm if norm > 0 else float("inf")


def volume_errors(volume: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """Relative RMSE of delta and beta of a complex volume against a complex truth."""
    return {
        "relative_rmse_delta": relative_rmse(volume.real, truth.real),
        "relative_rmse_beta": relative_rmse(volume.imag, truth.imag),
    }
