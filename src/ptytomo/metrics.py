"""Error metrics of FORMAT.md: RMSE over the whole volume, and its relative form."""

from __future__ import annotations

import numpy as np
import torch


def rmse(estimate, truth) -> float:
    """sqrt(mean((estimate - truth)^2)) of real arrays or tensors."""
    if torch.is_tensor(estimate):
        return float(torch.sqrt(torch.mean((estimate.double() - truth.double()) ** 2)))
    return float(np.sqrt(np.mean((np.asarray(estimate, float) - np.asarray(truth, float)) ** 2)))


def relative_rmse(estimate, truth) -> float:
    """RMSE divided by sqrt(mean(truth^2)); inf for an all-zero truth."""
    norm = rmse(truth * 0, truth)
    return rmse(estimate, truth) / norm if norm > 0 else float("inf")


def volume_errors(volume: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """Relative RMSE of delta and beta of a complex volume against a complex truth."""
    return {
        "relative_rmse_delta": relative_rmse(volume.real, truth.real),
        "relative_rmse_beta": relative_rmse(volume.imag, truth.imag),
    }
