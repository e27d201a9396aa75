"""Scan positions as a parameter group: a sub-pixel correction of every window.

Gradient: the window at ``n + f`` is modelled as ``P(u - f) O(u + n)`` (the
probe carries the fraction by a Fourier phase ramp, :mod:`ptytomo.operators.ptycho`),
so ``d cost / d f = 2 Re <back, -grad P(u - f) O(u + n)>`` exactly.  Step:
per window, that gradient divided by the Gauss-Newton curvature of the exit
wave along the object's gradient, ``2 sum |P dO/dr|^2`` (Odstrcil, Menzel &
Guizar-Sicairos, Opt. Express 26, 3108 (2018)); the probe's own gradient
would count the frame's rigid shift, which the intensities cannot see.

Constraints after each step: the update is clipped to ``max_step`` pixels
(a frame with a bad gradient cannot jump), the correction to
``max_correction`` pixels; optionally the corrections are replaced by their
least-squares fit with one affine map of the recorded scan (scale, rotation,
shear: encoder calibration errors); and each angle's mean correction is
removed, because a common offset of an angle's windows is a rigid shift of
that projection (alignment, not a position error).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .groups import GroupOptions, ParameterGroup


# Levenberg-Marquardt damping of the per-window curvature, as a fraction of its median over
# the windows: a window over little structure (free space, the sample's edge) carries little
# position information and must not be moved by its noise.
CURVATURE_DAMPING = 1.0


@dataclass
class PositionOptions(GroupOptions):
    start: int = 20  # positions need an object with structure to register against
    step: float = 0.5
    max_step: float = 0.5  # pixels per update
    max_correction: float = 4.0  # pixels in all
    affine: bool = False  # constrain the corrections to one affine map of the scan


class PositionsGroup(ParameterGroup):
    name = "positions"

    def __init__(self, model, options: PositionOptions, gather=None, share=None):
        """``gather``/``share`` move per-angle state between ranks for checkpoints (identity alone)."""
        super().__init__(model, options)
        self.corrections = torch.zeros_like(model.recorded_positions)
        self.valid = (torch.ones(model.recorded_positions.shape[:2], dtype=torch.bool) if model.valid is None
                      else model.valid.clone())
        self.gather = gather or (lambda t: t)
        self.share = share or (lambda t: t)
        self.grad = self.curvature = None
        self.diagnostics: dict[str, float] = {}

    def begin(self) -> None:
        self.grad = torch.zeros_like(self.corrections)
        self.curvature = torch.zeros_like(self.corrections)

    def accumulate(self, residual) -> None:
        grad, curvature = residual.ptychography.position_gradient(residual.transmission, residual.back)
        self.grad[residual.angles] += grad.to(torch.float64).cpu()
        self.curvature[residual.angles] += curvature.to(torch.float64).cpu()

    def update(self) -> None:
        o = self.options
        lit = self.curvature[self.valid]
        damping = CURVATURE_DAMPING * float(lit.median()) if lit.numel() else 0.0
        step = -o.step * self.grad / (self.curvature + max(damping, 1e-30))
        step = step.clamp(-o.max_step, o.max_step)
        corrections = self.corrections + torch.where(self.valid[..., None], step, 0.0)
        if o.affine:
            corrections = affine_fit(self.model.recorded_positions, corrections, self.valid)
        corrections = remove_angle_means(corrections, self.valid).clamp(-o.max_correction, o.max_correction)
        self.set(corrections)
        self.diagnostics = {"position_correction_rms": rms(corrections[self.valid])}

    def set(self, corrections: torch.Tensor) -> None:
        self.corrections = corrections
        self.model.set_offset(self.name, corrections)  # composes with the per-angle shifts

    def refined_positions(self) -> torch.Tensor:
        """The corrected window corners in the data file's coordinates (A, J, 2)."""
        return self.model.unpadded(self.model.positions)

    def state_dict(self) -> dict:
        return {"corrections": self.gather(self.corrections)}

    def load_state_dict(self, state: dict) -> None:
        self.set(self.share(state["corrections"]).to(torch.float64).cpu())


def remove_angle_means(corrections: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Each angle's valid corrections minus their mean (the rigid part belongs to alignment)."""
    weight = valid[..., None].to(corrections.dtype)
    count = weight.sum(dim=1, keepdim=True).clamp_min(1)
    mean = (corrections * weight).sum(dim=1, keepdim=True) / count
    return (corrections - mean) * weight


def affine_fit(recorded: torch.Tensor, corrections: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """The corrections' least-squares fit by ``A (p - mean_a p) + t_a``: one 2x2 map A for the whole
    scan (scale, rotation, shear), one offset per angle."""
    weight = valid[..., None].to(recorded.dtype)
    count = weight.sum(dim=1, keepdim=True).clamp_min(1)
    centred = (recorded - (recorded * weight).sum(1, keepdim=True) / count) * weight
    offsets = (corrections * weight).sum(1, keepdim=True) / count
    target = (corrections - offsets) * weight
    p, t = centred.reshape(-1, 2), target.reshape(-1, 2)
    normal = p.T @ p
    if torch.linalg.matrix_rank(normal) < 2:  # a line scan: no 2D map to fit
        return corrections
    matrix = torch.linalg.solve(normal, p.T @ t)  # t ~ p @ matrix
    return (centred @ matrix + offsets) * weight


def rms(values: torch.Tensor) -> float:
    return math.sqrt(float(values.pow(2).sum(-1).mean())) if values.numel() else 0.0
