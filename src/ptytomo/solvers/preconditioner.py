"""A ramp-filter preconditioner for the tomographic part of the joint cost.

Near a solution the Hessian of the joint cost is about ``c R'^T R'`` (the
ptychographic part is close to a multiple of the identity where probes
overlap), and for parallel-beam geometry ``R'^T R'`` acts on every z-slice
like a filter ``~ 1/|w|`` in (y, x).  Gradient methods therefore resolve low
spatial frequencies first and fine detail very slowly.  Applying ``|w|`` (the
ramp filter of filtered back-projection, floored at the lowest frequency so
it stays positive definite) to the gradient evens out that spectrum.
"""

from __future__ import annotations

import torch


class RampFilter:
    """K: volume -> volume, applies max(|w|, w_min) per z-slice in (y, x) on a zero-padded grid."""

    def __init__(self, volume_shape, device, dtype):
        _, ny, nx = volume_shape
        self.shape = (2 * ny, 2 * nx)  # zero padding against wrap-around
        fy = torch.fft.fftfreq(self.shape[0], device=device, dtype=torch.float64)
        fx = torch.fft.fftfreq(self.shape[1], device=device, dtype=torch.float64)
        radius = torch.sqrt(fy[:, None] ** 2 + fx[None, :] ** 2)
        floor = 1.0 / max(self.shape)
        self.response = (torch.clamp(radius, min=floor) / radius.max()).to(dtype)
        self.ny, self.nx = ny, nx

    def __call__(self, v: torch.Tensor) -> torch.Tensor:
        spectrum = torch.fft.fft2(v, s=self.shape)
        return torch.fft.ifft2(spectrum * self.response)[..., : self.ny, : self.nx]
