"""Priors and constraints on the solver's unknown u (phase + i attenuation per voxel)."""

from __future__ import annotations

import torch

# Smoothing of |grad u| in TV: small against the per-voxel phase of weak
# materials (~1e-3 for ZnO at 5 keV) so edges stay sharp, large enough to keep
# the gradient Lipschitz.
TV_SMOOTHING = 1e-4


def total_variation(v: torch.Tensor, smoothing: float = TV_SMOOTHING) -> torch.Tensor:
    """Isotropic 3D TV of a real volume, sum sqrt(|forward differences|^2 + s^2) - s."""
    dz = torch.diff(v, dim=0, append=v[-1:])
    dy = torch.diff(v, dim=1, append=v[:, -1:])
    dx = torch.diff(v, dim=2, append=v[:, :, -1:])
    return torch.sum(torch.sqrt(dz**2 + dy**2 + dx**2 + smoothing**2) - smoothing)


class Regularised:
    """Data cost + TV(delta part) * tv_delta + TV(beta part) * tv_beta, with optional non-negativity.

    The TV gradient comes from autograd on one volume (cheap); the data term
    streams over angle batches through the explicit chain rule.
    """

    def __init__(self, objective, tv_delta: float = 0.0, tv_beta: float = 0.0, nonnegative: bool = True):
        self.objective = objective
        self.tv_delta = float(tv_delta)
        self.tv_beta = float(tv_beta)
        self.nonnegative = bool(nonnegative)
        # TV acts on u, whose size tracks the data's; weighting by the voxel
        # count keeps a weight meaningful across volume sizes.
        self.tv_scale = 1.0 / objective.model.volume_shape[0]

    def prior(self, u: torch.Tensor, need_grad: bool):
        if self.tv_delta == 0 and self.tv_beta == 0:
            return 0.0, None
        with torch.enable_grad():
            w = u.detach().clone().requires_grad_(need_grad)
            value = self.tv_scale * (
                self.tv_delta * total_variation(w.real) + self.tv_beta * total_variation(w.imag)
            )
            grad = torch.autograd.grad(value, w)[0] if need_grad else None  # = d/dRe + i d/dIm
        return float(value.detach()), grad

    def value_and_grad(self, u: torch.Tensor, need_grad: bool = True):
        cost, grad = self.objective.value_and_grad(u, need_grad)
        prior, prior_grad = self.prior(u, need_grad)
        if prior_grad is not None:
            grad = grad + prior_grad
        return cost + prior, grad

    def value(self, u: torch.Tensor) -> float:
        return self.value_and_grad(u, need_grad=False)[0]

    def project(self, u: torch.Tensor) -> torch.Tensor:
        if not self.nonnegative:
            return u
        return torch.complex(u.real.clamp_min(0), u.imag.clamp_min(0))
