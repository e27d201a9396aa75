"""Error metrics: RMSE over the whole volume (FORMAT.md), its relative form, and SSIM."""

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


def ssim(estimate, truth, sigma: float = 1.5, radius: int = 5) -> float:
    """Mean structural similarity (Wang et al., IEEE TIP 13, 600 (2004)) of two real volumes.

    The standard constants (K1 = 0.01, K2 = 0.03) and an isotropic Gaussian
    window (sigma 1.5, 11 taps) applied separably in 3D; the dynamic range is
    the truth's, so a volume scaled by a factor is penalised, not hidden.
    """
    radius = min(radius, (min(np.shape(truth)) - 1) // 2)  # the window fits small volumes too
    x = torch.as_tensor(np.asarray(truth), dtype=torch.float64)[None, None]
    y = torch.as_tensor(np.asarray(estimate), dtype=torch.float64)[None, None]
    taps = torch.exp(-0.5 * (torch.arange(-radius, radius + 1, dtype=torch.float64) / sigma) ** 2)
    taps = taps / taps.sum()

    def blur(v):
        for axis in range(3):
            shape = [1, 1, 1, 1, 1]
            shape[2 + axis] = taps.numel()
            v = torch.nn.functional.conv3d(v, taps.reshape(shape))
        return v

    value_range = float(x.max() - x.min()) or 1.0
    c1, c2 = (0.01 * value_range) ** 2, (0.03 * value_range) ** 2
    mx, my = blur(x), blur(y)
    vx, vy, cxy = blur(x * x) - mx**2, blur(y * y) - my**2, blur(x * y) - mx * my
    index = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
    return float(index.mean())
