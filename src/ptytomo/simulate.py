"""The simulator: a phantom and a scan in, a FORMAT.md data set out.

With ``oversample = S > 1`` the data are free of the inverse crime: the
phantom is projected on an S-times finer grid, the probe is sampled there,
each exit wave is transformed on the fine grid and the far field is cropped
to the central M x M pixels (what a finite detector sees, at the same
angular sampling).  The file's probe is the coarse-grid probe whose far field
is the detector's view of the fine one, registered so that coarse pixel ``m``
stands for the fine pixels ``[mS, mS + S)``; ``/truth/volume`` is the fine
phantom averaged over each coarse voxel.  Such data cannot be fitted exactly
by the coarse model, like measured data.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from .device import resolve_device, resolve_precision
from .errors import PtytomoError
from .io import Geometry, PtychoTomoData
from .operators import JointModel
from .operators.ptycho import far_field, far_field_adjoint
from .phantoms import block_average, load_volume, random_ellipsoids, woven_wire
from .scan import (
    disc_probe,
    equally_spaced_angles,
    linear_overlap,
    load_probe,
    probe_diameter_estimate,
    raster_positions,
    scale_probe,
)

PHANTOMS = ("woven-wire", "ellipsoids")
NOISE_MODELS = ("none", "poisson")


@dataclass
class SimulationConfig:
    """Every knob of a simulation; stored in the file's ``/simulation`` attributes."""

    phantom: str = "woven-wire"  # woven-wire | ellipsoids | path to a .npy / HDF5 volume
    size: int = 64
    voxel_size_m: float = 10e-9
    energy_kev: float = 5.0
    n_angles: int = 100
    angle_start: float = 0.0
    angle_stop: float = 2 * math.pi
    detector_size: int = 63
    probe_diameter: float = 15.0
    probe_soft_edge: float = 0.0
    probe_file: str | None = None
    step: int = 4
    shift: int = 1
    shift_axes: str = "both"
    photons: float = 1e6
    noise: str = "none"
    seed: int = 0
    ellipsoids: int = 10
    oversample: int = 1
    device: str = "auto"
    precision: str = "float32"
    extra: dict = field(default_factory=dict)

    def check(self) -> None:
        if self.phantom not in PHANTOMS and not Path(self.phantom).exists():
            raise PtytomoError(
                f"--phantom {self.phantom!r}: not one of {', '.join(PHANTOMS)} and no such volume file"
            )
        if self.noise not in NOISE_MODELS:
            raise PtytomoError(f"--noise {self.noise!r}: choose one of {', '.join(NOISE_MODELS)}")
        if self.size < 2:
            raise PtytomoError(f"--size must be >= 2, got {self.size}")
        if self.oversample < 1:
            raise PtytomoError(f"--oversample must be >= 1, got {self.oversample}")
        if not self.voxel_size_m > 0:
            raise PtytomoError(f"--voxel-size must be > 0, got {self.voxel_size_m}")
        if not self.photons > 0:
            raise PtytomoError(f"--photons must be > 0, got {self.photons}")


def make_phantom(config: SimulationConfig, factor: int) -> np.ndarray:
    """The phantom on a grid ``factor`` times finer than the reconstruction grid."""
    n = config.size * factor
    if config.phantom == "woven-wire":
        return woven_wire(n, energy_kev=config.energy_kev)
    if config.phantom == "ellipsoids":
        return random_ellipsoids(n, count=config.ellipsoids, seed=config.seed, energy_kev=config.energy_kev)
    volume = load_volume(config.phantom)
    # A user's volume has no finer description: refine by repetition so the
    # detector-plane sampling is still the fine one.
    for axis in range(3):
        volume = np.repeat(volume, factor, axis)
    return volume


def fine_probe(probe: np.ndarray, factor: int) -> np.ndarray:
    """Band-limited (Fourier) interpolation of a coarse probe onto a ``factor``-times finer grid."""
    m = probe.shape[0]
    spectrum = far_field(torch.from_numpy(probe.astype(np.complex128)))
    # Keep DC where the centred layout puts it: index m // 2 -> (m * factor) // 2.
    pad = (m * factor) // 2 - m // 2
    after = m * factor - m - pad
    padded = torch.nn.functional.pad(spectrum, (pad, after, pad, after))
    return (far_field_adjoint(padded) * factor).numpy()


def central_crop(frames: torch.Tensor, m: int) -> torch.Tensor:
    """The central m x m pixels of centred far fields (DC stays at index m // 2)."""
    big = frames.shape[-1]
    start = big // 2 - m // 2
    return frames[..., start : start + m, start : start + m]


def registration_ramp(m: int, factor: int, dtype=torch.complex128) -> torch.Tensor:
    """Far-field phase that moves coarse samples onto the centres of their fine-pixel blocks."""
    q = torch.arange(m, dtype=torch.float64) - m // 2
    phase = 2 * math.pi * q * (factor - 1) / (2 * m * factor)
    return torch.exp(1j * (phase[:, None] + phase[None, :])).to(dtype)


def coarse_probe(probe_fine: np.ndarray, m: int, factor: int) -> np.ndarray:
    """The M x M probe whose far field is the detector's (cropped) view of the fine probe's."""
    field_fine = central_crop(far_field(torch.from_numpy(probe_fine.astype(np.complex128))), m) / factor
    return far_field_adjoint(field_fine * registration_ramp(m, factor)).numpy().astype(np.complex64)


def simulate(config: SimulationConfig, progress: bool = True) -> PtychoTomoData:
    """Simulate a data set (noise-free expected counts, or Poisson draws)."""
    config.check()
    device = resolve_device(config.device)
    real_dtype, _ = resolve_precision(config.precision)
    s = config.oversample
    m = config.detector_size

    volume_fine = make_phantom(config, s)
    truth = block_average(volume_fine, s) if s > 1 else volume_fine
    angles = equally_spaced_angles(config.n_angles, config.angle_start, config.angle_stop)
    projection_shape = (truth.shape[0], truth.shape[2])
    positions = raster_positions(config.n_angles, projection_shape, config.step, m, config.shift, config.shift_axes)

    if config.probe_file:
        probe = scale_probe(load_probe(config.probe_file, m).astype(np.complex128), config.photons)
        probe_on_fine_grid = fine_probe(probe, s) if s > 1 else probe
    else:
        # The fine disc is drawn on the fine grid itself, not interpolated.
        probe_on_fine_grid = disc_probe(m * s, config.probe_diameter * s, config.probe_soft_edge * s)
        probe_on_fine_grid = scale_probe(probe_on_fine_grid.astype(np.complex128), config.photons * s**2)
    if s > 1:
        probe = coarse_probe(probe_on_fine_grid, m, s)
    else:
        probe = probe_on_fine_grid.astype(np.complex64)

    model = JointModel(
        volume_fine.shape,
        config.voxel_size_m / s,
        config.energy_kev,
        angles,
        positions * s,
        probe_on_fine_grid,
        device=device,
        dtype=real_dtype,
    )
    x = model.volume(volume_fine)
    intensities = np.empty((config.n_angles, positions.shape[1], m, m), dtype=np.float32)
    for b, batch in enumerate(tqdm(model.batches, desc="simulate", unit="batch", disable=not progress or None)):
        fields = model.far_field(x, b)
        if s > 1:
            fields = central_crop(fields, m) / s
        intensities[batch] = (fields.abs() ** 2).cpu().numpy()
    if config.noise == "poisson":
        rng = np.random.default_rng(config.seed)
        intensities = rng.poisson(intensities).astype(np.float32)

    record = {k: v for k, v in asdict(config).items() if k != "extra"}
    if config.probe_file:
        # The disc diameter option does not describe a loaded probe: record its effective width.
        record["probe_diameter"] = probe_diameter_estimate(probe)
    record.update(config.extra, overlap=linear_overlap(config.step, record["probe_diameter"]), producer="ptytomo")
    return PtychoTomoData(
        intensities=intensities,
        positions=positions,
        angles=angles,
        probe=probe,
        geometry=Geometry(config.energy_kev, config.voxel_size_m, tuple(truth.shape)),
        truth=truth.astype(np.complex64),
        simulation={k: ("none" if v is None else v) for k, v in record.items()},
    )
