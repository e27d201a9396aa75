"""Per-angle shifts (alignment, runout) as a parameter group: one offset of all windows of an angle.

A rigid shift of the object at angle ``a`` is the same as one common offset of
all of that angle's scan positions, so the model's window corners are
``recorded[a, j] + shift[a] + correction[a, j]`` (the positions group owns
the corrections and removes their per-angle mean, which is this group's part).

Gradient: the sum over the angle's windows of the position gradient of
:meth:`ptytomo.operators.ptycho.Ptychography.position_gradient` (exact for
the model); step: the Gauss-Newton step with the sum of the windows' 2 x 2
matrices ``2 J^T J`` (the shift moves all of them), damped slightly and
clipped to ``max_step`` pixels per update.

Gauge: the data cannot tell a shift pattern that a translation ``(Z, X, Y)`` of
the whole volume explains: a constant ``Z`` in rows, and ``X cos(theta) + Y sin(theta)``
in columns (FORMAT.md's detector coordinate of a point).  After every update
that part, the least-squares fit over the angles, is removed.  A constant
column offset (the rotation axis beside the detector's centre) is *not* a
gauge: no translation of the volume makes it, so it is kept and reported.

The gradient only reaches about a probe width; larger shifts come from the
coarse projection matching of :mod:`ptytomo.solvers.alignment` before the loop.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from .gauge import gauge_fit, gauge_translation, remove_gauge  # noqa: F401  (the shifts' gauge; tests use it here)
from .groups import GroupOptions, ParameterGroup


# Levenberg-Marquardt damping of each angle's 2 x 2 Gauss-Newton matrix, as a fraction of the median
# curvature over the angles: an angle whose windows see little structure moves less.
HESSIAN_DAMPING = 0.01


@dataclass
class ShiftOptions(GroupOptions):
    start: int = 20  # the volume first needs structure to register against (earlier steps go astray)
    step: float = 1.0  # of the Gauss-Newton step: 1.0 overshoots while the volume still changes (measured)
    max_step: float = 1.0  # pixels per update: the gradient is only trusted within the probe's reach
    max_shift: float = 10.0  # pixels, per coordinate (the model's padding leaves room for it)
    wait: int = 30  # iterations more at most for the probe to settle, as the positions


class ShiftsGroup(ParameterGroup):
    name = "shifts"
    needs_volume = True  # a rigid shift is invisible to per-angle 2D ptychography: joint method only

    def __init__(self, model, options: ShiftOptions, gather=None, share=None):
        """``gather``/``share`` move per-angle state between ranks (the gauge fit needs all angles)."""
        super().__init__(model, options)
        self.gather = gather or (lambda t: t)
        self.share = share or (lambda t: t)
        self.valid = (torch.ones(model.recorded_positions.shape[:2], dtype=torch.bool) if model.valid is None
                      else model.valid.clone())
        self.all_angles = self.gather(torch.from_numpy(np.asarray(model.angles, dtype=np.float64)))
        self.shifts = torch.zeros((model.n_angles, 2), dtype=torch.float64)
        self.grad = self.hessian = None
        self.diagnostics: dict[str, float] = {}

    def begin(self) -> None:
        self.grad = torch.zeros_like(self.shifts)
        self.hessian = torch.zeros((*self.shifts.shape, 2), dtype=torch.float64)

    def accumulate(self, residual) -> None:
        # A shift moves every window of the angle alike: its gradient and Gauss-Newton matrix are sums.
        grad, hessian = residual.position_gradient()
        valid = self.valid[residual.angles].to(torch.float64)
        self.grad[residual.angles] += torch.einsum("bj,bjk->bk", valid, grad.to(torch.float64).cpu())
        self.hessian[residual.angles] += torch.einsum("bj,bjkl->bkl", valid, hessian.to(torch.float64).cpu())

    def update(self) -> None:
        o = self.options
        curvature = torch.diagonal(self.hessian, dim1=-2, dim2=-1)
        damping = max(HESSIAN_DAMPING * float(curvature.median()), 1e-30)
        damped = self.hessian + damping * torch.eye(2, dtype=torch.float64)
        step = -o.step * torch.linalg.solve(damped, self.grad.unsqueeze(-1)).squeeze(-1)
        self.set(self.constrained(self.shifts + step.clamp(-o.max_step, o.max_step)))
        self.diagnostics = {"angle_shift_rms": rms(self.shifts)}

    def constrained(self, shifts: torch.Tensor) -> torch.Tensor:
        """``shifts`` with the gauge removed (over all ranks' angles) and clipped to ``max_shift``."""
        whole = remove_gauge(self.gather(shifts), self.all_angles)
        return self.share(whole).clamp(-self.options.max_shift, self.options.max_shift)

    def set(self, shifts: torch.Tensor) -> None:
        """Put ``shifts`` (A, 2) pixels into the model: every valid window of angle a moves by shift[a]."""
        self.shifts = shifts.to(torch.float64).cpu()
        self.model.set_offset(self.name, self.shifts[:, None, :] * self.valid[..., None])

    def state_dict(self) -> dict:
        return {"shifts": self.gather(self.shifts)}

    def load_state_dict(self, state: dict) -> None:
        self.set(self.share(state["shifts"]).to(torch.float64).cpu())


def translate_volume(volume: np.ndarray, translation) -> np.ndarray:
    """``volume`` moved by ``translation`` (dz, dy, dx) voxels, out(P) = in(P - t), by a Fourier phase
    ramp (periodic: meant for volumes with free space around the object)."""
    volume = np.asarray(volume)
    spectrum = np.fft.fftn(volume)
    for axis, (n, t) in enumerate(zip(volume.shape, translation)):
        shape = [1, 1, 1]
        shape[axis] = n
        spectrum = spectrum * np.exp(-2j * np.pi * np.fft.fftfreq(n) * t).reshape(shape)
    moved = np.fft.ifftn(spectrum)
    return moved.astype(volume.dtype) if np.iscomplexobj(volume) else moved.real.astype(volume.dtype)


def shift_summary(shifts, angles) -> tuple[dict, str]:
    """Statistics of gauge-free shifts (A, 2) for the reconstruction's attributes, and one log line."""
    shifts = torch.as_tensor(np.asarray(shifts, dtype=np.float64))
    _, axis_offset = gauge_fit(shifts, angles)
    record = {"angle_shift_rms_px": rms(shifts), "angle_shift_max_px": float(shifts.abs().max()) if shifts.numel() else 0.0,
              "rotation_axis_offset_px": axis_offset}
    line = (f"angle shifts (gauge removed): rms {record['angle_shift_rms_px']:.3g} px, max "
            f"{record['angle_shift_max_px']:.3g} px, rotation-axis offset {axis_offset:+.3g} px (columns)")
    return record, line


def bound_reached(shifts, max_shift: float) -> str:
    """A one-line warning when gauge-free shifts (A, 2) sit at ``--max-shift`` (the runout may be larger
    than the bound lets the model follow), else an empty string."""
    shifts = np.abs(np.asarray(shifts, dtype=np.float64))
    at_bound = int((shifts >= 0.99 * max_shift).any(axis=-1).sum())
    if not at_bound:
        return ""
    return (f"the per-angle shifts of {at_bound} of {len(shifts)} angles reached --max-shift {max_shift:g} px: "
            f"the runout may be larger; run again with a larger --max-shift")


def rms(values: torch.Tensor) -> float:
    """Root mean square per coordinate (FORMAT.md's runout convention) of (..., 2) offsets."""
    return math.sqrt(float(values.pow(2).mean())) if values.numel() else 0.0
