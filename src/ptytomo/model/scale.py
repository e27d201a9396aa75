"""Per-angle incident amplitude (I0 fluctuation) as a parameter group: one real factor per angle.

The model's far fields of angle ``a`` are ``c_a`` times those of the unit beam
(:meth:`ptytomo.operators.JointModel.transmission` multiplies the transmission,
on which the fields depend linearly, so the volume's, probe's and positions'
gradients stay exact).  With ``d cost = 2 Re <r, d field>`` and ``d field / d c_a = field / c_a``:

    d cost / d c_a = 2 Re <back, exit waves> / c_a      (back = F^H r, F unitary)

and the Gauss-Newton curvature is ``2 sum |field|^2 / c_a^2`` (exact for the
amplitude cost, which is quadratic in c_a).  The factors' mean is pinned to 1:
with a refined probe their common scale is the probe's power.  The intensity
factor is ``c_a^2`` (``/truth/angle_scale`` of the simulator).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .groups import GroupOptions, ParameterGroup


@dataclass
class ScaleOptions(GroupOptions):
    start: int = 10  # a first volume, so that the darker angles are not explained by the sample
    lowest: float = 0.1  # amplitude factor bounds: a factor near zero would switch an angle off
    highest: float = 10.0


class ScaleGroup(ParameterGroup):
    name = "scale"
    needs_volume = True  # per-angle 2D ptychography absorbs a per-angle factor in the transmission

    def __init__(self, model, options: ScaleOptions, gather=None, share=None):
        super().__init__(model, options)
        self.gather = gather or (lambda t: t)
        self.share = share or (lambda t: t)
        self.scale = torch.ones(model.n_angles, dtype=torch.float64)
        self.grad = self.curvature = None
        self.diagnostics: dict[str, float] = {}

    def begin(self) -> None:
        self.grad = torch.zeros_like(self.scale)
        self.curvature = torch.zeros_like(self.scale)

    def accumulate(self, residual) -> None:
        q = residual.ptychography
        factor = self.scale[residual.angles]
        waves = q.exit_waves(residual.transmission)  # valid windows only, like back
        inner = torch.real(torch.sum(residual.step_back().conj() * waves, dim=tuple(range(1, waves.dim()))))
        power = torch.sum(residual.fields.abs() ** 2, dim=tuple(range(1, residual.fields.dim())))
        self.grad[residual.angles] += 2 * inner.to(torch.float64).cpu() / factor
        self.curvature[residual.angles] += 2 * power.to(torch.float64).cpu() / factor**2

    def update(self) -> None:
        o = self.options
        scale = self.scale - o.step * self.grad / self.curvature.clamp_min(1e-30)
        self.set(self.constrained(scale.clamp(o.lowest, o.highest)))
        self.diagnostics = {"angle_scale_rms_change": math.sqrt(float((self.scale - 1).pow(2).mean()))}

    def constrained(self, scale: torch.Tensor) -> torch.Tensor:
        """``scale`` divided by its mean over all ranks' angles."""
        return scale / float(self.gather(scale).mean())

    def set(self, scale: torch.Tensor) -> None:
        self.scale = scale.to(torch.float64).cpu()
        self.model.angle_scale = self.scale

    def state_dict(self) -> dict:
        return {"scale": self.gather(self.scale)}

    def load_state_dict(self, state: dict) -> None:
        self.set(self.share(state["scale"]).to(torch.float64).cpu())
