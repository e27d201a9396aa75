"""Multislice ptychography: the beam crosses the volume slab by slab (thick samples).

For one window ``j`` of one angle, with the slabs' windowed transmissions ``W_0 .. W_{S-1}`` (slab 0
first along the beam, ``+t``; :class:`~ptytomo.operators.tomo.SlabProjector`), the probe ``P`` (the
wave in the plane through the rotation axis, FORMAT.md) and the free-space propagators ``H(d)``
(:class:`~ptytomo.operators.propagation.FresnelPropagator`):

    psi_0 = H(c_0) P                       the probe carried from t = 0 to the first slab's centre
    psi_{s+1} = H(c_{s+1} - c_s) (W_s psi_s)
    exit = W_{S-1} psi_{S-1},  far field F exit

The far field's modulus does not depend on the plane its exit wave is referred to (free-space
propagation is a phase in the angular spectrum), so the exit wave is transformed where it leaves the
last slab.  With one slab centred at ``t = 0`` every propagation is the identity and the operator is
:class:`~ptytomo.operators.ptycho.Ptychography` bit for bit.

The model is linear in the probe and multilinear in the slabs.  The backward sweep carries the
detector-plane residual ``chi`` from the exit back to the probe plane: the gradient with respect to
``W_s`` is ``conj(psi_s) chi_s`` and ``chi_{s-1} = H^H (conj(W_s) chi_s)``; what reaches the probe
plane is the gradient with respect to the (shifted) probe of every window, from which the probe's and
the positions' gradients follow as in the single-plane model.  The incident wave of every slab is kept
from the forward pass for the backward ones (``S x B x J x K x M^2`` complex numbers per angle batch,
released by :meth:`MultislicePtychography.release`).
"""

from __future__ import annotations

import numpy as np
import torch

from .propagation import FresnelPropagator
from .ptycho import Ptychography


def slab_propagators(centres_m, m: int, pixel_m: float, wavelength_m: float, device, dtype) -> list:
    """The S propagators of the beam: from the probe's plane (t = 0) to slab 0's centre, then from each
    slab's centre to the next's (``centres_m`` in metres along the beam)."""
    centres = np.asarray(centres_m, dtype=np.float64)
    distances = np.concatenate([centres[:1], np.diff(centres)])
    return [FresnelPropagator((m, m), pixel_m, wavelength_m, float(d), device=device, dtype=dtype) for d in distances]


class MultislicePtychography(Ptychography):
    """Q: slab transmissions (S, B, H, W) -> far fields (B, J, [K,] M, M) for one batch of angles.

    The windows, the probe's sub-pixel shifts, the valid flags and the transform are the single-plane
    operator's; the transmission argument of every method is the stack of the slabs' transmissions.
    """

    def __init__(self, positions: torch.Tensor, probe: torch.Tensor, transmission_shape: tuple[int, int],
                 propagators: list, valid: torch.Tensor | None = None):
        super().__init__(positions, probe, transmission_shape, valid, pruned=False)
        self.propagators = list(propagators)
        self.n_slabs = len(self.propagators)
        self._state = None  # (transmissions, windows, incident waves, exit waves) of the latest forward pass

    def moved(self, positions: torch.Tensor) -> "MultislicePtychography":
        return MultislicePtychography(positions, self.probe, self.transmission_shape, self.propagators, self.valid)

    def window_stack(self, transmissions: torch.Tensor) -> list[torch.Tensor]:
        """Every slab's (B, J, M, M) windows (those of the latest forward pass when it had these slabs)."""
        return self._forward_state(transmissions)[0]

    def _slab_windows(self, transmissions: torch.Tensor) -> list[torch.Tensor]:
        if transmissions.dim() != 4 or transmissions.shape[0] != self.n_slabs:
            raise ValueError(f"expected {self.n_slabs} slab transmissions (S, B, H, W), got {tuple(transmissions.shape)}")
        return [self.windows(slab) for slab in transmissions]

    def carry(self, wave: torch.Tensor, windows) -> torch.Tensor:
        """A probe-plane wave (B, J, K, M, M) carried through every slab to the exit (valid windows only)."""
        for propagator, window in zip(self.propagators, windows):
            wave = propagator.forward(wave) * window[:, :, None]
        return self._weighted(wave)

    def _forward_state(self, transmissions: torch.Tensor):
        if self._state is not None and self._state[0] is transmissions:
            return self._state[1:]
        windows = self._slab_windows(transmissions)
        waves, wave = [], self.frame_probe
        for propagator, window in zip(self.propagators, windows):
            wave = propagator.forward(wave)
            waves.append(wave)
            wave = wave * window[:, :, None]
        exit_waves = self._weighted(wave)
        self._state = (transmissions, windows, waves, exit_waves)
        return windows, waves, exit_waves

    def release(self) -> None:
        """Forget the forward pass's waves (the objective calls this when a batch is done)."""
        self._state = None

    def exit_waves(self, transmissions: torch.Tensor) -> torch.Tensor:
        return self._forward_state(transmissions)[2]

    def forward(self, transmissions: torch.Tensor, keep: bool = True) -> torch.Tensor:
        """Far fields (B, J, [K,] M, M); ``keep=False`` computes them without keeping every slab's incident
        wave (nothing to differentiate: a simulation with many thin slabs)."""
        if keep:
            return super().forward(transmissions)
        fields = self.transform(self.carry(self.frame_probe, self._slab_windows(transmissions)))
        return fields[:, :, 0] if self.single_mode else fields

    def window_power(self, transmissions: torch.Tensor) -> torch.Tensor:
        """|product of the slabs' windows|^2 (B, J, M, M): the whole sample's transmission seen by each window."""
        total = None
        for window in self._forward_state(transmissions)[0]:
            total = window if total is None else total * window
        return total.abs() ** 2

    def backward(self, transmissions: torch.Tensor, back: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(d cost / d slab transmissions (S, B, H, W), d cost / d frame probe (B, J, K, M, M)) from ``back``
        (F^H of the detector residual, :meth:`back_waves`), with ``d cost = 2 Re <., d .>``."""
        windows, waves, _ = self._forward_state(transmissions)
        chi = back
        slabs = [None] * self.n_slabs
        for s in reversed(range(self.n_slabs)):
            slabs[s] = self.windows_adjoint(torch.sum(chi * waves[s].conj(), dim=2))
            chi = self.propagators[s].adjoint(chi * windows[s].conj()[:, :, None])
        return torch.stack(slabs), chi

    def transmission_gradient(self, transmissions: torch.Tensor, back: torch.Tensor) -> torch.Tensor:
        return self.backward(transmissions, back)[0]

    def probe_frames_gradient(self, transmissions: torch.Tensor, back: torch.Tensor):
        return self.backward(transmissions, back)[1], self.window_power(transmissions)

    def linear_forward(self, perturbation: torch.Tensor) -> torch.Tensor:
        """The far fields' derivative at empty slabs (O = 1) in the direction of slab transmissions
        ``perturbation`` (S, B, H, W): the Jacobian the cost's normalisation measures."""
        d_wave, wave = None, self.frame_probe
        for propagator, slab in zip(self.propagators, perturbation):
            wave = propagator.forward(wave)
            d_wave = wave * self.windows(slab)[:, :, None] + (0 if d_wave is None else propagator.forward(d_wave))
        fields = self.transform(self._weighted(d_wave))
        return fields[:, :, 0] if self.single_mode else fields

    def linear_adjoint(self, fields: torch.Tensor) -> torch.Tensor:
        """Adjoint of :meth:`linear_forward`."""
        ones = torch.ones((self.n_slabs, self.batch, *self.transmission_shape), dtype=self.probe.dtype,
                          device=self.probe.device)
        try:
            return self.transmission_gradient(ones, self.back_waves(fields))
        finally:
            self.release()
