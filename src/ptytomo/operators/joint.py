"""The joint forward model x -> far fields, evaluated one batch of angles at a time.

    p = R x                 projection (B, Nz, Nu), complex (delta and beta)
    O = exp(i k pad(p))     transmission; zero padding of p gives O = 1 (free space)
    g = Q O                 far fields (B, J, M, M)

With ``propagation="multislice"`` the volume is cut into ``slices`` slabs along the beam
(:class:`~ptytomo.operators.tomo.SlabProjector`): ``O`` is then the stack (S, B, H, W) of the slabs'
transmissions and ``Q`` the multislice operator
(:class:`~ptytomo.operators.multislice.MultislicePtychography`), which carries the probe from the
plane through the rotation axis across slab after slab.  One slab is the projection model bit for bit.

The cost is a sum over angles, so a batch of angles is the unit of work:
memory is bounded by one batch whatever the data size, and the same loop can
later be split over ranks.  Peak memory of one evaluation, in bytes, for
complex itemsize c (8 for float32):

    volume + sparse projector (~ 24 * A * Nx * 2 max(Ny, Nx))
    + c * B * (Nz * Nu + H * W)            projection and padded transmission
    + 3 * c * B * J * M^2                  windows, exit waves and far fields
    + S * c * B * (Nz * Nu + H * W + 2 * K * J * M^2)   multislice: the slabs' transmissions, their
                                           windows and the incident wave of every slab (kept for the gradient)

with B the angle batch, J the positions per angle and H x W the padded
projection.  ``angle_batch`` is chosen from ``batch_bytes`` when not given.
"""

from __future__ import annotations

import numpy as np
import torch

from ..physics import wavelength_m, wavenumber
from .multislice import MultislicePtychography, slab_propagators
from .ptycho import Ptychography
from .tomo import ParallelProjector, SlabProjector, slab_centres, slab_edges

DEFAULT_BATCH_BYTES = {"cpu": 32 * 2**20, "cuda": 2 * 2**30}  # CPU: stay near cache size
PROPAGATIONS = ("projection", "multislice")


class JointModel:
    """Forward model of a ptycho-tomography experiment on one device and precision."""

    def __init__(
        self,
        volume_shape: tuple[int, int, int],
        voxel_size_m: float,
        energy_kev: float,
        angles,
        positions,
        probe,
        valid=None,
        angle_batch: int | None = None,
        batch_bytes: int | None = None,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
        margin: int = 0,
        pruned: bool | None = None,
        propagation: str = "projection",
        slices: int = 1,
    ):
        """``probe`` (M, M) or (K, M, M) incoherent modes.  ``margin``: extra free-space padding
        (pixels) on every side, room for refined positions to move into.  ``pruned=False``
        keeps whole windows (the probe and position gradients need them).  ``propagation``:
        ``projection`` (one plane) or ``multislice`` with ``slices`` slabs of equal thickness
        (:func:`~ptytomo.operators.tomo.slab_edges`)."""
        if propagation not in PROPAGATIONS:
            raise ValueError(f"propagation must be one of {PROPAGATIONS}, got {propagation!r}")
        self.device = torch.device(device)
        self.real_dtype = dtype
        self.complex_dtype = torch.complex128 if dtype == torch.float64 else torch.complex64
        self.volume_shape = tuple(int(n) for n in volume_shape)
        self.voxel_size_m = float(voxel_size_m)
        self.energy_kev = float(energy_kev)
        self.k = wavenumber(energy_kev)
        self.angles = np.asarray(angles, dtype=np.float64)
        positions = torch.as_tensor(np.asarray(positions, dtype=np.float64))
        self.n_angles, self.n_positions = positions.shape[:2]
        self.probe = torch.as_tensor(np.asarray(probe)).to(device=self.device, dtype=self.complex_dtype)
        self.m = self.probe.shape[-1]
        self.pruned = pruned
        self.propagation = propagation
        self.n_slices = int(slices) if propagation == "multislice" else 1
        if self.n_slices < 1:
            raise ValueError(f"slices must be >= 1, got {slices}")
        self.valid = None if valid is None else torch.as_tensor(np.asarray(valid, dtype=bool))

        nz, _, nx = self.volume_shape
        corners = torch.round(positions)
        if self.valid is not None and self.valid.any():
            corners = corners[self.valid]
        rows, cols = corners[..., 0], corners[..., 1]
        # Pad the projection so every window lies inside; the pad is free space.
        margin = int(margin)
        self.pad_top = int(max(0, -rows.min().item())) + margin
        self.pad_left = int(max(0, -cols.min().item())) + margin
        self.pad_bottom = int(max(0, rows.max().item() + self.m - nz)) + margin
        self.pad_right = int(max(0, cols.max().item() + self.m - nx)) + margin
        self.padded_shape = (nz + self.pad_top + self.pad_bottom, nx + self.pad_left + self.pad_right)
        self.positions = positions + torch.tensor([self.pad_top, self.pad_left], dtype=torch.float64)
        if self.valid is not None:
            # Invalid entries may hold any value; park them at the origin so they index safely.
            self.positions[~self.valid] = 0.0
        self.recorded_positions = self.positions.clone()  # padded coordinates; refinement offsets these
        self.offsets: dict[str, torch.Tensor] = {}  # per refinement group, summed onto recorded_positions
        self.angle_scale: torch.Tensor | None = None  # (A,) incident amplitude per angle (model/scale.py)

        if angle_batch is None:
            budget = batch_bytes or DEFAULT_BATCH_BYTES.get(self.device.type, DEFAULT_BATCH_BYTES["cpu"])
            n_modes = 1 if self.probe.dim() == 2 else self.probe.shape[0]
            per_angle = 3 * n_modes * self.n_positions * self.m**2 * self.probe.element_size()
            if self.multislice:  # the incident wave of every slab and the slabs' windows
                per_angle += 2 * self.n_slices * n_modes * self.n_positions * self.m**2 * self.probe.element_size()
            angle_batch = max(1, min(self.n_angles, budget // max(per_angle, 1)))
        self.angle_batch = int(angle_batch)
        self.batches = [
            slice(start, min(start + self.angle_batch, self.n_angles))
            for start in range(0, self.n_angles, self.angle_batch)
        ]
        self._projectors: dict[int, ParallelProjector | SlabProjector] = {}
        self._ptychography: dict[int, Ptychography] = {}
        self._forward: dict[int, MultislicePtychography] = {}
        self._plane_projectors: dict[int, ParallelProjector] = {}
        if self.multislice:
            edges = slab_edges(self.volume_shape, self.n_slices)
            self.slab_edges = edges  # voxel units along the beam, centred on the rotation axis
            self.slab_thickness_m = float(edges[1] - edges[0]) * self.voxel_size_m
            self.propagators = slab_propagators(slab_centres(edges) * self.voxel_size_m, self.m, self.voxel_size_m,
                                                wavelength_m(energy_kev), self.device, self.complex_dtype)

    @property
    def multislice(self) -> bool:
        return self.propagation == "multislice"

    def set_probe(self, probe: torch.Tensor) -> None:
        """Replace the probe; the per-batch ptychography operators are rebuilt on next use."""
        self.probe = probe.to(device=self.device, dtype=self.complex_dtype)
        self._ptychography.clear()
        self._forward.clear()

    def set_positions(self, positions: torch.Tensor) -> None:
        """Replace the window corners (A, J, 2) in padded coordinates (refinement); they must stay
        inside the padded plane (``margin``); the operators are rebuilt on next use."""
        self.positions = positions.to(torch.float64).cpu()
        self._ptychography.clear()
        self._forward.clear()

    def set_offset(self, name: str, offset: torch.Tensor) -> None:
        """One refinement group's offset of the recorded positions, (A, J, 2) or (A, 1, 2).  The
        window corners are the recorded ones plus every group's offset, so groups compose
        (scan-position corrections and per-angle shifts) without knowing of each other."""
        self.offsets[name] = offset.to(torch.float64).cpu()
        self.set_positions(self.recorded_positions + sum(self.offsets.values()))

    def unpadded(self, positions: torch.Tensor) -> torch.Tensor:
        """Padded-plane corners back in the data file's coordinates."""
        return positions.cpu() - torch.tensor([self.pad_top, self.pad_left], dtype=torch.float64)

    # -- the operators of one batch, built on first use and kept -------------
    def projector(self, b: int) -> ParallelProjector | SlabProjector:
        """The batch's projector: R (B, Nz, Nu), or with multislice the slabs' R_s (S, B, Nz, Nu)."""
        if b not in self._projectors:
            angles = self.angles[self.batches[b]]
            if self.multislice:
                self._projectors[b] = SlabProjector(self.volume_shape, angles, self.slab_edges, self.voxel_size_m,
                                                    self.device, self.real_dtype)
            else:
                self._projectors[b] = ParallelProjector(self.volume_shape, angles, self.voxel_size_m, self.device,
                                                        self.real_dtype)
        return self._projectors[b]

    def plane_projector(self, b: int) -> ParallelProjector:
        """The batch's whole projection R (B, Nz, Nu) whatever the propagation: the tomography of projections
        (the baselines, the coarse alignment) has no slabs."""
        if not self.multislice:
            return self.projector(b)
        if b not in self._plane_projectors:
            self._plane_projectors[b] = ParallelProjector(self.volume_shape, self.angles[self.batches[b]],
                                                          self.voxel_size_m, self.device, self.real_dtype)
        return self._plane_projectors[b]

    def forward_operator(self, b: int) -> Ptychography:
        """Q of the batch for the model's transmissions: the single-plane operator, or the multislice one."""
        if not self.multislice:
            return self.ptychography(b)
        if b not in self._forward:
            batch = self.batches[b]
            valid = None if self.valid is None else self.valid[batch]
            self._forward[b] = MultislicePtychography(self.positions[batch], self.probe, self.padded_shape,
                                                      self.propagators, valid)
        return self._forward[b]

    def ptychography(self, b: int) -> Ptychography:
        """The batch's single-plane operator (2D ptychography of one transmission per angle: the baselines, the
        coarse alignment and the probe search use it whatever the model's propagation)."""
        if b not in self._ptychography:
            batch = self.batches[b]
            valid = None if self.valid is None else self.valid[batch]
            self._ptychography[b] = Ptychography(self.positions[batch], self.probe, self.padded_shape, valid,
                                                 pruned=self.pruned)
        return self._ptychography[b]

    # -- forward pieces -----------------------------------------------------------
    def pad(self, projection: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.pad(
            projection, (self.pad_left, self.pad_right, self.pad_top, self.pad_bottom)
        )

    def crop(self, padded: torch.Tensor) -> torch.Tensor:
        """Adjoint of :meth:`pad`."""
        nz, _, nx = self.volume_shape
        return padded[..., self.pad_top : self.pad_top + nz, self.pad_left : self.pad_left + nx]

    def transmission(self, x: torch.Tensor, b: int) -> torch.Tensor:
        """O = exp(i k R x) on the padded grid for batch ``b``, (B, H, W) (multislice: every slab's, (S, B, H, W)),
        times the angle's incident amplitude when one is refined (the far fields are linear in O, or in the
        first slab's, so this scales them)."""
        o = torch.exp(1j * self.k * self.pad(self.projector(b).forward(x)))
        if self.angle_scale is not None:
            scale = self.angle_scale[self.batches[b]].to(device=self.device, dtype=self.real_dtype)[:, None, None]
            if self.multislice:
                o = torch.cat([o[:1] * scale, o[1:]])
            else:
                o = o * scale
        return o

    def far_field(self, x: torch.Tensor, b: int) -> torch.Tensor:
        """Complex far fields (B, J, M, M) of batch ``b``."""
        # keep=False: nothing follows that needs the slabs' incident waves (a simulator's many slabs)
        return self.forward_operator(b).forward(self.transmission(x, b), keep=False)

    def amplitudes(self, x: torch.Tensor) -> torch.Tensor:
        """|far field| for all angles, (A, J, M, M), real dtype, on the model's device."""
        out = torch.empty((self.n_angles, self.n_positions, self.m, self.m), dtype=self.real_dtype, device=self.device)
        for b, batch in enumerate(self.batches):
            fields = self.far_field(x, b)
            out[batch] = fields.abs() if fields.dim() == 4 else torch.sqrt(torch.sum(fields.abs() ** 2, dim=2))
        return out

    def volume(self, x) -> torch.Tensor:
        """``x`` as a complex tensor on the model's device and precision."""
        return torch.as_tensor(np.asarray(x) if not torch.is_tensor(x) else x).to(
            device=self.device, dtype=self.complex_dtype
        )
