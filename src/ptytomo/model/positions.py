"""Scan positions as a parameter group: a sub-pixel correction of every window.

Gradient: the window at ``n + f`` is modelled as ``P(u - f) O(u + n)`` (the
probe carries the fraction by a Fourier phase ramp, :mod:`ptytomo.operators.ptycho`),
so ``d cost / d f = 2 Re <back, -grad P(u - f) O(u + n)>`` exactly.  Step:
per window (whose cost depends on its own position only), a Gauss-Newton
step with the 2 x 2 matrix ``2 J^T J`` of the far-field modulus'
sensitivity ``J = d|g| / d f``, damped (Levenberg-Marquardt) by a fraction
of the median curvature so that windows over little structure stay put.

Gauss-Newton steps converge to the nearest minimum; a window whose error is
about the size of the object's features can sit in a false one.  So the first
update is a search: every window's cost at a grid of offsets (spacing
``search_step`` up to ``search_radius`` pixels) from the same transmission,
the best one kept, before the Gauss-Newton steps refine it.

Prior: the corrections are also pulled towards the recorded positions by a Gaussian prior of
``prior`` pixels rms per coordinate (the stage errors one expects), weighed against the data in
their own units, photon counts: the step minimises ``NLL + |c|^2 / (2 prior^2)``, whose
negative log-likelihood is twice the amplitude cost in counts.  Where the data carry position
information (an object with contrast, many photons) the prior is negligible; where they carry
little (a weak phase object, the probe's tails), each window's steps were noise that nothing pulled
back, and the windows random-walked: on 32^3 of SiO2 at 8 keV (0.04 rad of phase at most, 1e6
photons a frame) from 0.5 to 1.4 px rms with the exact probe, the half of the windows with the
most information not improving at all (docs/refinement.md, "Weak objects").

Constraints after each step: the update is clipped to ``max_step`` pixels
(a frame with a bad gradient cannot jump), the correction to
``max_correction`` pixels; optionally the corrections are replaced by their
least-squares fit with one affine map of the recorded scan (scale, rotation,
shear: encoder calibration errors), or, with the probe refined, the corrections'
scale of the scan is pinned (:func:`pin_scan_scale`); and the part of the corrections that
only translates the volume is removed (the gauge: a constant row offset of
all windows, and column offsets ``X cos(theta) + Y sin(theta)`` over the
angles), so that the volume and the positions cannot trade it.  A common
offset of one angle's windows is a rigid shift of that projection: it is
kept here (a rotation-axis offset or runout is real), unless the per-angle
shifts group owns it (``per_angle_mean=True``: then each angle's mean is
removed instead).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from .gauge import gauge_fit
from .groups import GroupOptions, ParameterGroup


# Levenberg-Marquardt damping of the per-window Gauss-Newton matrix, as a fraction of its median
# curvature over the windows: a window over little structure (free space, the sample's edge)
# carries little position information and must not be moved by its noise.
CURVATURE_DAMPING = 0.1
# The grid search moves a window only where an offset lowers its cost by this fraction of the larger
# of its own cost and its angle's median window cost.  Relative to its own cost alone, a window that
# sees the object only through the probe's tails (the scan's first or last row, at the sample's edge)
# fits some offset 10 % better from model error alone: on oversampled data with exact positions
# (docs/refinement.md, "Position accuracy") the whole top row jumped by the full search radius.
SEARCH_MARGIN = 0.1
# A window whose Gauss-Newton curvature is below this fraction of the median is unmeasured.
UNMEASURED = 0.05


@dataclass
class PositionOptions(GroupOptions):
    start: int = 20  # positions need an object with structure to register against
    wait: int = 30  # iterations more at most for the probe to settle (docs/refinement.md, "Schedule")
    step: float = 1.0
    max_step: float = 0.5  # pixels per update
    max_correction: float = 4.0  # pixels in all
    affine: bool = False  # constrain the corrections to one affine map of the scan
    search_radius: float = 1.0  # pixels searched on the grid at the first update (0: no search)
    search_step: float = 0.5
    per_angle_mean: bool = False  # remove each angle's mean (when a per-angle shifts group owns it)
    pin_scale: bool = False  # remove the corrections' scale of the scan in rows and in columns (pin_scan_scale)
    prior: float = 1.0  # pixels rms per coordinate of the expected position errors (0: no prior)


class PositionsGroup(ParameterGroup):
    name = "positions"

    def __init__(self, model, options: PositionOptions, gather=None, share=None, counts_per_unit: float = 1.0):
        """``gather``/``share`` move per-angle state between ranks for checkpoints (identity alone);
        ``counts_per_unit``: photon counts per unit of the model's (probe-normalised) intensity, which
        puts the prior and the data in the same units."""
        super().__init__(model, options)
        self.counts_per_unit = float(counts_per_unit)
        self.corrections = torch.zeros_like(model.recorded_positions)
        self.valid = (torch.ones(model.recorded_positions.shape[:2], dtype=torch.bool) if model.valid is None
                      else model.valid.clone())
        self.gather = gather or (lambda t: t)
        self.share = share or (lambda t: t)
        self.grad = self.hessian = None
        self.searched = False
        self.best_offset = None
        self.diagnostics: dict[str, float] = {}

    def begin(self) -> None:
        self.best_offset = torch.zeros_like(self.corrections)
        self.grad = torch.zeros_like(self.corrections)
        self.hessian = torch.zeros((*self.corrections.shape, 2), dtype=torch.float64)

    def accumulate(self, residual) -> None:
        grad, hessian = residual.position_gradient()
        self.grad[residual.angles] += grad.to(torch.float64).cpu()
        self.hessian[residual.angles] += hessian.to(torch.float64).cpu()
        if not self.searched and self.options.search_radius > 0:
            self.best_offset[residual.angles] = self.search(residual)

    def offsets(self) -> torch.Tensor:
        """The search grid (N, 2), the zero offset first (ties keep the window where it is)."""
        o = self.options
        n = int(math.floor(o.search_radius / o.search_step))
        axis = torch.arange(-n, n + 1, dtype=torch.float64) * o.search_step
        grid = torch.cartesian_prod(axis, axis)
        grid = grid[grid.norm(dim=1) <= o.search_radius + 1e-9]
        return torch.cat([torch.zeros(1, 2, dtype=torch.float64), grid[grid.norm(dim=1) > 0]])

    def search(self, residual) -> torch.Tensor:
        """The offset (B, J, 2) of the grid at which each window of the batch fits best."""
        from ..objective import detector_residual

        positions = self.model.positions[residual.angles]
        valid = None if self.model.valid is None else self.model.valid[residual.angles]
        best_cost = best = None
        moves = torch.ones(positions.shape[:2], dtype=positions.dtype) if valid is None else valid.to(positions.dtype)
        moves = moves.to(positions.device)[..., None]  # padding entries stay where they are (inside the plane)
        for offset in self.offsets():
            trial = residual.ptychography.moved(positions + offset.to(positions.device) * moves)
            fields = trial.forward(residual.transmission)
            cost, _ = detector_residual(residual.loss, fields, residual.measured, residual.weight, per_frame=True)
            cost = cost.to(torch.float64).cpu()
            if best_cost is None:
                best_cost, best = cost, torch.zeros((*cost.shape, 2), dtype=torch.float64)
                # each angle's median window cost (per angle, so that neither the angle batches nor the
                # ranks change the result)
                counted = torch.where(moves[..., 0].cpu() > 0, cost, torch.nan)
                typical = counted.nanmedian(dim=1, keepdim=True).values.nan_to_num(0.0)
                bar = cost - SEARCH_MARGIN * torch.maximum(cost, typical)
            else:
                better = (cost < best_cost) & (cost < bar)
                best_cost = torch.where(better, cost, best_cost)
                best[better] = offset
        return best
    def update(self) -> None:
        o = self.options
        curvature = torch.diagonal(self.hessian, dim1=-2, dim2=-1)[self.valid]
        damping = max(CURVATURE_DAMPING * float(curvature.median()) if curvature.numel() else 0.0, 1e-30)
        prior = self.prior_curvature()
        damped = self.hessian + (damping + prior) * torch.eye(2, dtype=torch.float64)
        pulled = self.grad + prior * self.corrections
        step = -o.step * torch.linalg.solve(damped, pulled.unsqueeze(-1)).squeeze(-1)
        step = step.clamp(-o.max_step, o.max_step)
        if not self.searched and o.search_radius > 0:
            step = self.best_offset  # the grid's best fit; Gauss-Newton steps take over from here
            self.searched = True
        corrections = self.corrections + torch.where(self.valid[..., None], step, 0.0)
        if o.affine:
            corrections = affine_fit(self.model.recorded_positions, corrections, self.valid)
        information = torch.diagonal(self.hessian, dim1=-2, dim2=-1).sum(-1)
        if o.pin_scale:
            corrections = pin_scan_scale(self.model.recorded_positions, corrections, self.valid, information,
                                         self.gather)
        if o.per_angle_mean:
            corrections = remove_angle_means(corrections, self.valid, information)
        else:
            corrections = remove_translation_gauge(corrections, self.valid, self.model.angles, information,
                                                   self.gather, self.share)
        corrections = follow_angle_mean(corrections, self.valid, information)
        corrections = corrections.clamp(-o.max_correction, o.max_correction)
        self.set(corrections)
        self.diagnostics = {"position_correction_rms": rms(corrections[self.valid])}

    def prior_curvature(self) -> float:
        """The prior's curvature in the cost's units: ``1 / (2 counts_per_unit prior^2)`` (the cost in
        counts is half the negative log-likelihood, and the model's unit of intensity is
        ``counts_per_unit`` counts); 0 without a prior."""
        prior = self.options.prior
        return 1.0 / (2.0 * self.counts_per_unit * prior**2) if prior > 0 else 0.0

    def set(self, corrections: torch.Tensor) -> None:
        self.corrections = corrections
        self.model.set_offset(self.name, corrections)  # composes with the per-angle shifts

    def refined_positions(self) -> torch.Tensor:
        """The corrected window corners in the data file's coordinates (A, J, 2)."""
        return self.model.unpadded(self.model.positions)

    def state_dict(self) -> dict:
        return {"corrections": self.gather(self.corrections), "searched": self.searched}

    def load_state_dict(self, state: dict) -> None:
        self.searched = bool(state["searched"])
        self.set(self.share(state["corrections"]).to(torch.float64).cpu())


def angle_means(corrections: torch.Tensor, valid: torch.Tensor, information=None) -> torch.Tensor:
    """(A, 1, 2) each angle's mean valid correction, weighted by ``information`` (A, J): windows over
    structure measure the rigid part, those over free space (whose corrections are unmeasured) must
    not drag it."""
    weight = valid.to(corrections.dtype)
    if information is not None:
        weight = weight * information.to(corrections.dtype).clamp_min(0)
        empty = weight.sum(dim=1, keepdim=True) <= 0
        weight = torch.where(empty, valid.to(corrections.dtype), weight)
    weight = weight[..., None]
    return (corrections * weight).sum(dim=1, keepdim=True) / weight.sum(dim=1, keepdim=True).clamp_min(1e-30)


def remove_angle_means(corrections: torch.Tensor, valid: torch.Tensor, information=None) -> torch.Tensor:
    """Each angle's valid corrections minus their mean (the rigid part belongs to alignment)."""
    return (corrections - angle_means(corrections, valid, information)) * valid[..., None]


def follow_angle_mean(corrections: torch.Tensor, valid: torch.Tensor, information: torch.Tensor) -> torch.Tensor:
    """Windows that carry almost no position information (over free space) take their angle's mean
    correction instead of their own.  Their own steps are noise, and every gauge removal moves them as
    well, so left alone they random-walk (measured: to 1 px rms from 0.7 px of true error)."""
    measured = information[valid]
    if not measured.numel():
        return corrections
    unmeasured = valid & (information < UNMEASURED * measured.median())
    means = angle_means(corrections, valid, information).expand_as(corrections)
    return torch.where(unmeasured[..., None], means, corrections)


def pin_scan_scale(recorded: torch.Tensor, corrections: torch.Tensor, valid: torch.Tensor, information: torch.Tensor,
                   gather=None) -> torch.Tensor:
    """The corrections minus their least-squares scale of the scan, one factor for rows and one for
    columns over all angles and valid windows: ``c - s * (p - mean_a p)``, the means weighted by the
    windows' information as the gauge's and the shifts' are, so that neither sees the change.  The fit
    itself weighs every window alike: the drift is largest in the scan's outer windows, which carry
    less information than the inner ones and would barely count otherwise (measured on the 16^3 case:
    information-weighted, the outer windows kept a 1.5 % column expansion).

    With the probe refined, a magnification of the scan is nearly invisible: the probe's curvature
    (defocus, astigmatism) trades with it, as the object's scale does (Fresnel scaling), so the
    corrections drift along it.  Measured on the Siemens star of docs/refinement.md: 0.207 of the
    0.211 px rms left after refinement was such an expansion (0.75 % in rows, 0.3 % in columns); on the
    16^3 case of benchmarks/refinement.py a 0.6 % / 1.2 % one.  A stage's scale is calibrated far better
    than that; a scale error is what ``--position-affine`` fits."""
    gather = gather or (lambda t: t)
    counted = valid.to(corrections.dtype)[..., None]
    recorded = recorded.to(corrections.dtype)
    centred = (recorded - angle_means(recorded, valid, information)) * counted
    deviation = (corrections - angle_means(corrections, valid, information)) * counted
    numerator = gather((centred * deviation).sum(dim=1)).sum(dim=0)  # (2,)
    denominator = gather((centred**2).sum(dim=1)).sum(dim=0)
    scale = torch.where(denominator > 0, numerator / denominator.clamp_min(1e-300), 0.0)
    return (corrections - scale * centred) * counted


def remove_translation_gauge(corrections: torch.Tensor, valid: torch.Tensor, angles, information=None,
                             gather=None, share=None) -> torch.Tensor:
    """The corrections minus what a translation of the volume would explain (:mod:`.gauge`), fitted to
    each angle's mean correction weighted by its windows' information (the same least squares as a fit
    to every window); ``gather``/``share`` join the ranks' angles for the fit."""
    gather = gather or (lambda t: t)
    share = share or (lambda t: t)
    weight = valid.to(corrections.dtype)
    if information is not None:
        weight = weight * information.to(corrections.dtype).clamp_min(0)
    per_angle_weight = weight.sum(dim=1)  # (A,)
    means = (corrections * weight[..., None]).sum(dim=1) / per_angle_weight.clamp_min(1e-300)[:, None]
    all_angles = gather(torch.as_tensor(np.asarray(angles, dtype=np.float64)))
    gauge, _ = gauge_fit(gather(means), all_angles, gather(per_angle_weight))
    return (corrections - share(gauge)[:, None, :]) * valid[..., None]


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
