"""The gauge of everything that moves windows: what a translation of the whole volume explains.

A translation ``(Z, Y, X)`` of the volume moves every projection by ``Z`` in rows and by
``X cos(theta) + Y sin(theta)`` in columns (FORMAT.md's detector coordinate of a point); the
data cannot tell it from a common offset of the windows, so the groups that offset windows
(per-angle shifts, per-window positions) remove it after every update.  A constant column
offset (the rotation axis beside the detector's centre) is *not* a gauge: it is fitted jointly
with ``X, Y`` (so that angles covering less than a full turn, or unequal weights, split
correctly) and kept.
"""

from __future__ import annotations

import numpy as np
import torch


def _basis(angles) -> torch.Tensor:
    theta = torch.as_tensor(np.asarray(angles, dtype=np.float64))
    return torch.stack([torch.ones_like(theta), torch.cos(theta), torch.sin(theta)], dim=1)


def _fit(offsets: torch.Tensor, angles, weights=None):
    """(row translation Z, column coefficients (c, X, Y) or None when fewer than 3 are determined)."""
    offsets = offsets.to(torch.float64)
    weights = torch.ones(offsets.shape[0], dtype=torch.float64) if weights is None else weights.to(torch.float64)
    rows = float((weights * offsets[:, 0]).sum() / weights.sum().clamp_min(1e-300))
    basis = _basis(angles)
    root = weights.clamp_min(0).sqrt()[:, None]
    if int(torch.linalg.matrix_rank(basis * root)) < 3:  # one or two (weighted) angles
        return rows, None
    return rows, torch.linalg.lstsq(basis * root, offsets[:, 1:2] * root).solution[:, 0]


def gauge_fit(offsets: torch.Tensor, angles, weights=None) -> tuple[torch.Tensor, float]:
    """(the part of per-angle ``offsets`` (A, 2) a volume translation explains, the rotation-axis offset),
    by least squares with per-angle ``weights`` (all 1 by default)."""
    offsets = offsets.to(torch.float64)
    rows, coefficients = _fit(offsets, angles, weights)
    gauge = torch.zeros_like(offsets)
    gauge[:, 0] = rows
    if coefficients is None:  # only the mean column offset is determined; it is the axis offset
        w = torch.ones(offsets.shape[0], dtype=torch.float64) if weights is None else weights.to(torch.float64)
        return gauge, float((w * offsets[:, 1]).sum() / w.sum().clamp_min(1e-300))
    gauge[:, 1] = _basis(angles)[:, 1:] @ coefficients[1:]
    return gauge, float(coefficients[0])


def remove_gauge(offsets: torch.Tensor, angles, weights=None) -> torch.Tensor:
    """Per-angle ``offsets`` (A, 2) minus what a translation of the volume explains (:func:`gauge_fit`)."""
    return offsets.to(torch.float64) - gauge_fit(offsets, angles, weights)[0]


def gauge_translation(offsets: torch.Tensor, angles) -> tuple[float, float, float]:
    """The volume translation (dz, dy, dx) voxels whose projections make the gauge part of ``offsets``.

    A reconstruction whose shifts had this part removed holds the volume moved by minus it
    (x_hat(P) = x(P + t)); comparing it with a truth needs the volume moved back by ``t``."""
    rows, coefficients = _fit(offsets, angles)
    if coefficients is None:
        return rows, 0.0, 0.0
    _, along_x, along_y = coefficients.tolist()
    return rows, along_y, along_x
