"""The probe as a parameter group: K incoherent modes shared by all angles.

Gradient: with ``d cost = 2 Re <back, d exit wave>`` and exit wave ``P_k W``,
``d cost / d P_k = sum over frames of conj(W) back_k`` (undoing each frame's
sub-pixel shift of the probe).  Step: that gradient divided by the
Gauss-Newton diagonal ``sum over frames |W|^2`` with an rPIE-style floor
(Maiden, Johnson & Li, Optica 4, 736 (2017)), i.e. the simultaneous form of
the PIE family's probe update.  After each step the modes are made
orthogonal (eigenvectors of their Gram matrix), sorted by power, and each
mode's global phase (invisible in the data) is fixed so that its sum is real
and positive.  The probe-object scale is pinned by the free space around the
projected volume (O = 1 there) and by non-negativity (the object cannot
amplify); the mean position is pinned by the positions group.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from ..stream import frame_sums
from .groups import GroupOptions, ParameterGroup

# rPIE-style floor of the probe step's denominator, as a fraction of its maximum.
PROBE_FLOOR = 0.1
# A probe whose power differs from the measured counts by more than this factor is rescaled.
POWER_TOLERANCE = 2.0


@dataclass
class ProbeOptions(GroupOptions):
    start: int = 3  # the volume first takes a few steps: an empty object lets the probe absorb the data
    updates: int = 5  # per joint iteration; measured: probe error 0.21 -> 0.013 in 60 iterations (docs/refinement.md)
    settled: float = 1e-3  # relative change per update below which the probe counts as settled


class ProbeGroup(ParameterGroup):
    name = "probe"

    def __init__(self, model, options: ProbeOptions):
        super().__init__(model, options)
        self.grad = None
        self.curvature = None
        self.change = math.inf  # relative change of the modes at the latest update
        self.diagnostics: dict[str, float] = {}

    def begin(self) -> None:
        self.grad = torch.zeros_like(self.model.probe)
        self.curvature = torch.zeros(self.model.probe.shape[-2:], dtype=self.model.real_dtype, device=self.model.device)

    def accumulate(self, residual) -> None:
        grad, curvature = residual.ptychography.probe_gradient(residual.transmission, residual.step_back())
        self.grad += grad
        self.curvature += curvature

    def finish(self, reduce) -> None:
        self.grad = reduce(self.grad)
        self.curvature = reduce(self.curvature)

    def update(self) -> None:
        denominator = (1 - PROBE_FLOOR) * self.curvature + PROBE_FLOOR * self.curvature.max().clamp_min(1e-30)
        probe = self.model.probe - self.options.step * self.grad / denominator
        probe = orthogonal_modes(probe)
        self.change = float(torch.linalg.vector_norm(probe - self.model.probe)
                            / torch.linalg.vector_norm(self.model.probe).clamp_min(1e-30))
        self.model.set_probe(probe)
        powers = (probe.abs() ** 2).sum(dim=(-2, -1))
        self.diagnostics = {"probe_mode0_power_fraction": float(powers[0] / powers.sum()), "probe_change": self.change}

    @property
    def settled(self) -> bool:
        return self.change < self.options.settled

    def state_dict(self) -> dict:
        return {"probe": self.model.probe.cpu(), "change": self.change}

    def load_state_dict(self, state: dict) -> None:
        self.model.set_probe(state["probe"])
        self.change = float(state["change"])


def orthogonal_modes(probe: torch.Tensor) -> torch.Tensor:
    """Modes (K, M, M) made orthogonal (same summed intensity), strongest first, phase-fixed."""
    k, m = probe.shape[0], probe.shape[-1]
    flat = probe.reshape(k, -1)
    if k > 1:
        gram = flat @ flat.conj().T
        _, vectors = torch.linalg.eigh(gram)  # ascending eigenvalues
        flat = vectors.conj().T.flip(0) @ flat  # rows: modes with power = eigenvalue, descending
    total = flat.sum(dim=1, keepdim=True)
    phase = torch.where(total.abs() > 0, total / total.abs().clamp_min(1e-30), torch.ones_like(total))
    return (flat * phase.conj()).reshape(k, m, m)


# ---------------------------------------------------------------------------------------------
# Free-space propagation and power
# ---------------------------------------------------------------------------------------------


def propagate(modes: np.ndarray, distance_m: float, wavelength: float, pixel_m: float) -> np.ndarray:
    """The modes propagated by ``distance_m`` through free space (paraxial, angular spectrum).

    FORMAT.md's sign (``O = exp(+i k P delta)``, far field ``fft2``) is that of waves ``exp(-i k z)``:
    a plane wave of transverse frequency f then gains ``exp(+i pi lambda z f^2)`` over z, so a focus
    propagated by z > 0 (the sample downstream of the focus) is the diverging
    ``exp(-i pi r^2 / (lambda z))``.  With ``--probe-init mean-pattern`` (the zone plate's or mirror's
    pupil, flat phase: the beam at its focus) this is the defocused beam the sample sees.  The transfer
    function is exact on the window's periodic grid; beams spreading past the window wrap around."""
    m = modes.shape[-1]
    f = np.fft.fftfreq(m, d=pixel_m)
    transfer = np.exp(1j * np.pi * wavelength * distance_m * (f[:, None] ** 2 + f[None, :] ** 2))
    return np.fft.ifft2(np.fft.fft2(modes, axes=(-2, -1)) * transfer, axes=(-2, -1))


def frame_power(data, comm) -> float:
    """The counts of a frame through free space, estimated from the data: the 95th percentile of the
    valid frames' sums (frames through the sample are darker; the brightest few may be outliers)."""
    return free_space_counts(comm.gather(frame_sums(data)))


def free_space_counts(sums) -> float:
    """The counts of a frame through free space from frame sums: their 95th percentile (0 without any)."""
    return float(np.percentile(sums, 95)) if np.size(sums) else 0.0


def rescale_to_counts(modes: np.ndarray, counts: float, notes: list[str], rescale_always: bool) -> np.ndarray:
    power = float(np.sum(np.abs(modes) ** 2))
    if counts <= 0 or power <= 0:
        return modes
    ratio = counts / power
    if rescale_always or not (1 / POWER_TOLERANCE <= ratio <= POWER_TOLERANCE):
        if not rescale_always:
            notes.append(f"probe power {power:.3g} disagrees with the measured {counts:.3g} counts per frame "
                         f"({ratio:.3g}x): rescaled to them")
        modes = modes * math.sqrt(ratio)
    return modes
