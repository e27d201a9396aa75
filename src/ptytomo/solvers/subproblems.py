"""The two halves the baselines split the problem into: 2D ptychography per angle, then tomography.

Both the Sequential and the ADMM-GD baseline (METHOD.md) fit, for every
angle, a transmission function ``psi`` on the padded projection plane to the
measured amplitudes with the known probe, turn it into projections
``xi = -i log(psi) = R' u`` (phase, unwrapped where it passes pi, plus
i attenuation), and fit the volume to those projections.  They differ only in
how the halves are coupled, so the halves live here once.

Units follow :mod:`ptytomo.objective`: the volume unknown is ``u = k voxel x``,
the probe and amplitudes are divided by ``max|P|`` and ``R' = R / voxel``.
"""

from __future__ import annotations

import math

import torch

from ..objective import (GAUSS_NEWTON_LOSSES, TARGET_LIPSCHITZ, JointObjective, Scaling, detector_residual,
                         power_iteration)

# rPIE-style floor of the illumination preconditioner, as a fraction of the
# brightest pixel of the angle: weakly lit pixels take small steps instead of
# amplifying noise (Maiden, Johnson & Li, Optica 4, 736 (2017) use 0.05-0.25).
ILLUMINATION_FLOOR = 0.05
# Projection-plane pixels lit by less than this fraction of the brightest one
# carry no usable phase; the tomography step ignores them.
LIT_FRACTION = 0.01


class PtychographyRetrieval:
    """Per-angle ptychographic phase retrieval of ``psi`` (A, H, W) with the known probe.

    A sweep is one gradient step for every angle on
    ``sum || |Q psi| - a ||^2 + rho || psi - target ||^2``, preconditioned by
    the diagonal of ``Q^H Q`` (the summed probe intensity at each pixel, i.e.
    the Gauss-Newton curvature of the data term).  With ``rho = 0`` and unit
    step this is the simultaneous (all positions at once) form of the PIE
    family's update; ``rho > 0`` is ADMM's proximal ptychography step.  The
    padding around the projected volume is free space and held at 1, as the
    joint model holds it.
    """

    def __init__(self, objective: JointObjective):
        if objective.loss not in GAUSS_NEWTON_LOSSES:
            raise ValueError(f"loss {objective.loss!r} has no ptychography step; use {', '.join(GAUSS_NEWTON_LOSSES)}")
        self.objective = objective
        model = objective.model
        self.model = model
        height, width = model.padded_shape
        self.refresh_illumination()
        brightest = self.illumination.amax(dim=(-2, -1), keepdim=True).clamp_min(1e-30)
        self.lit = model.crop(self.illumination > LIT_FRACTION * brightest)  # (A, Nz, Nu)
        self.free_space = torch.ones((height, width), dtype=torch.bool, device=model.device)
        model.crop(self.free_space).fill_(False)

    def refresh_illumination(self) -> None:
        """Summed probe intensity of every angle (all modes) and the step's denominator; again
        whenever the probe or the positions were refined."""
        model = self.model
        self.illumination = torch.zeros((model.n_angles, *model.padded_shape), dtype=model.real_dtype,
                                        device=model.device)
        for b, batch in enumerate(model.batches):
            q = model.ptychography(b)
            frames = (q.frame_probe.abs() ** 2).sum(dim=-3).expand(*q.rows.shape[:2], q.rows.shape[-1], q.cols.shape[-1])
            if q.weight is not None:
                frames = frames * q.weight
            self.illumination[batch] = q.windows_adjoint(frames.to(model.complex_dtype)).real
        brightest = self.illumination.amax(dim=(-2, -1), keepdim=True).clamp_min(1e-30)
        self.denominator = (1 - ILLUMINATION_FLOOR) * self.illumination + ILLUMINATION_FLOOR * brightest

    def initial(self) -> torch.Tensor:
        """Empty beam everywhere: psi = 1."""
        model = self.model
        return torch.ones((model.n_angles, *model.padded_shape), dtype=model.complex_dtype, device=model.device)

    def sweep(self, psi: torch.Tensor, target: torch.Tensor | None = None, rho: float = 0.0, step: float = 1.0,
              groups=(), index: int = 0) -> float:
        """One preconditioned gradient step for every angle, in place; returns the data cost before it.

        ``groups`` (probe, positions: :mod:`ptytomo.model`) active at sweep ``index`` take their
        gradients from the same residuals and step after the sweep."""
        objective, model = self.objective, self.model
        active = [g for g in groups if g.active(index)]
        total = torch.zeros((), dtype=torch.float64, device=model.device)
        with objective.listening(active):
            objective.begin_evaluation()
            for b, batch in enumerate(model.batches):
                result, cost = objective.residual(b, psi[batch], model.ptychography(b))
                total += cost.to(torch.float64)
                # The Gauss-Newton residual: a unit step is the loss's Newton-like step along the modulus
                # (objective.detector_residual), so one preconditioner serves every loss.
                grad = result.ptychography.adjoint_of_back_waves(result.step_back())
                if rho:
                    grad += rho * (psi[batch] - target[batch])
                psi[batch] -= step * grad / (self.denominator[batch] + rho)
            objective.end_evaluation(psi)
        psi[:, self.free_space] = 1.0
        if active:
            for group in active:
                group.update()
            self.refresh_illumination()
        return float(objective.reduce(total))  # global, so every rank stops at the same sweep

    def projections(self, psi: torch.Tensor, reference: torch.Tensor | None = None) -> torch.Tensor:
        """xi = -i log(psi) = unwrap(angle psi) + i (-ln |psi|) on the volume's projection box, (A, Nz, Nu).

        With ``reference`` projections p, the logarithm is taken of psi exp(-i p) and p added back:
        only the (small) change from p is unwrapped.
        """
        psi = self.model.crop(psi)
        if reference is not None:
            psi = psi * torch.exp(-1j * reference)
        phase = unwrap_phase(torch.angle(psi))
        attenuation = -torch.log(psi.abs().clamp_min(1e-6))
        xi = torch.complex(phase, attenuation)
        return xi if reference is None else xi + reference


def _wrap(phase: torch.Tensor) -> torch.Tensor:
    return torch.remainder(phase + math.pi, 2 * math.pi) - math.pi


def unwrap_phase(phase: torch.Tensor) -> torch.Tensor:
    """2D phase unwrapping of every image in (..., H, W) that wraps; the others are returned as they are.

    Least-squares unwrapping (Ghiglia & Romero, JOSA A 11, 107 (1994)): the
    Poisson equation of the wrapped phase differences solved with Neumann
    boundaries by an FFT of the mirrored image, then moved to the nearest
    value congruent with the measured phase, so consistent data is unwrapped
    exactly.  The 2 pi offset is chosen to make the image border (free space
    around the sample) closest to zero.
    """
    height, width = phase.shape[-2:]
    dy, dx = torch.diff(phase, dim=-2), torch.diff(phase, dim=-1)
    wrapped_dy, wrapped_dx = _wrap(dy), _wrap(dx)
    wraps = ((wrapped_dy - dy).abs() > 1e-6).flatten(-2).any(-1) | ((wrapped_dx - dx).abs() > 1e-6).flatten(-2).any(-1)
    if not wraps.any():
        return phase
    divergence = torch.zeros_like(phase)
    divergence[..., :-1, :] += wrapped_dy
    divergence[..., 1:, :] -= wrapped_dy
    divergence[..., :, :-1] += wrapped_dx
    divergence[..., :, 1:] -= wrapped_dx
    mirrored = torch.cat([divergence, divergence.flip(-1)], dim=-1)
    mirrored = torch.cat([mirrored, mirrored.flip(-2)], dim=-2)
    ky = torch.arange(2 * height, device=phase.device, dtype=phase.dtype)
    kx = torch.arange(2 * width, device=phase.device, dtype=phase.dtype)
    eigen = (2 * torch.cos(math.pi * ky / height) - 2)[:, None] + (2 * torch.cos(math.pi * kx / width) - 2)[None, :]
    eigen[0, 0] = 1.0
    spectrum = torch.fft.fft2(mirrored) / eigen
    spectrum[..., 0, 0] = 0
    smooth = torch.fft.ifft2(spectrum).real[..., :height, :width]
    offset = torch.angle(torch.exp(1j * (phase - smooth)).mean(dim=(-2, -1), keepdim=True))
    smooth = smooth + offset
    unwrapped = phase + 2 * math.pi * torch.round((smooth - phase) / (2 * math.pi))
    border = torch.cat([unwrapped[..., 0, :], unwrapped[..., -1, :], unwrapped[..., :, 0], unwrapped[..., :, -1]], -1)
    unwrapped = unwrapped - 2 * math.pi * torch.round(border.median(dim=-1).values / (2 * math.pi))[..., None, None]
    return torch.where(wraps[..., None, None], unwrapped, phase)


class TomographyObjective:
    """Weighted least squares ``sum w |R' u - xi|^2`` over lit pixels, for delta and beta at once.

    Scaled like the joint cost (Lipschitz constant 100 at any u: the cost is
    quadratic), so TV weights mean the same in every method.  ``target`` (xi)
    is set by the method and may change between solves (ADMM).  ``reduce``
    sums partial costs and gradients over ranks, as in the joint objective.
    """

    def __init__(self, model, weight: torch.Tensor, reduce=None):
        self.model = model
        self.reduce = reduce or (lambda partial: partial)
        self.weight = weight.to(model.real_dtype)
        self.target: torch.Tensor | None = None
        self.scaling = Scaling(to_u=model.k * model.voxel_size_m, cost=1.0)
        self.scaling.cost = TARGET_LIPSCHITZ / self.lipschitz()
        self.evaluations = 0

    def project(self, u: torch.Tensor, b: int) -> torch.Tensor:
        return self.model.plane_projector(b).forward(u) / self.model.voxel_size_m

    def back_project(self, p: torch.Tensor, b: int) -> torch.Tensor:
        return self.model.plane_projector(b).adjoint(p) / self.model.voxel_size_m

    def value_and_grad(self, u: torch.Tensor, need_grad: bool = True):
        total = torch.zeros((), dtype=torch.float64, device=u.device)
        grad = torch.zeros_like(u) if need_grad else None
        for b, batch in enumerate(self.model.batches):
            residual = self.weight[batch] * (self.project(u, b) - self.target[batch])
            total += torch.sum(residual.real**2 + residual.imag**2).to(torch.float64)  # weights are 0 or 1
            if need_grad:
                grad += self.back_project(2 * residual, b)
        self.evaluations += 1
        scale = self.scaling.cost
        return float(self.reduce(total)) * scale, (self.reduce(grad) * scale if need_grad else None)

    def value(self, u: torch.Tensor) -> float:
        return self.value_and_grad(u, need_grad=False)[0]

    def lipschitz(self, iterations: int = 10) -> float:
        """Largest eigenvalue of 2 R'^T W R' by power iteration."""
        generator = torch.Generator().manual_seed(0)
        v = torch.randn(self.model.volume_shape, generator=generator, dtype=torch.float64)
        v = (v / torch.linalg.vector_norm(v)).to(device=self.model.device, dtype=self.model.real_dtype)

        def normal_operator(v):
            return self.reduce(sum(self.back_project(2 * self.weight[batch] * self.project(v, b), b)
                                   for b, batch in enumerate(self.model.batches)))

        return power_iteration(normal_operator, v, iterations)

    def filtered_back_projection(self) -> torch.Tensor:
        """Ram-Lak FBP of the target: ``(pi / A) R'^T (|w| * xi)``, for angles covering pi or 2 pi evenly."""
        nu = self.model.volume_shape[2]
        # The band-limited ramp's kernel in space (Kak & Slaney eq. 3.61), not |f| sampled
        # on the FFT grid: sampling |f| zeroes the DC term and loses ~10 % of the mass.
        n = torch.fft.fftfreq(2 * nu, 1 / (2 * nu), device=self.model.device, dtype=torch.float64)
        kernel = torch.where(n.remainder(2) == 1, -1 / (math.pi * n) ** 2, torch.zeros_like(n))
        kernel[0] = 0.25
        response = torch.fft.fft(kernel).real.to(self.model.real_dtype)
        u = torch.zeros(self.model.volume_shape, dtype=self.model.complex_dtype, device=self.model.device)
        for b, batch in enumerate(self.model.batches):
            projection = self.weight[batch] * self.target[batch]
            u += self.back_project(torch.fft.ifft(torch.fft.fft(projection, n=2 * nu) * response)[..., :nu], b)
        n_angles = int(self.reduce(torch.tensor(self.model.n_angles, device=u.device)))
        return self.reduce(u) * (math.pi / n_angles)
