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

Imperfect data for the refinements (docs/simulation.md): a focused,
band-limited probe, K incoherent probe modes, a nominal file probe, random
position errors, a Fermat-spiral scan, per-angle runout (rigid object
shifts) and incident-flux jitter.  Everything geometric happens on the fine
grid: a position error or a runout shift moves the fine probe by a Fourier
phase ramp, never interpolates coarse data.  The true values go to the
optional ``/truth/*`` fields.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from .device import resolve_device, resolve_precision
from .diagnostics import PROPAGATIONS, choose_propagation
from .errors import PtytomoError
from .io import Geometry, PtychoTomoData
from .operators import JointModel
from .operators.ptycho import far_field, far_field_adjoint
from .operators.tomo import slab_edges
from .phantoms import block_average, load_volume, one_compound, random_ellipsoids, woven_wire
from .physics import delta_beta
from .scan import (
    MAX_PROBE_MODES,
    centre_crop,
    centred_grid,
    default_defocus,
    disc_probe,
    equally_spaced_angles,
    fermat_positions,
    from_far_field,
    linear_overlap,
    load_probe,
    orthogonalised,
    orthonormal_modes,
    probe_diameter_estimate,
    pupil_field,
    raster_positions,
    scale_probe,
    weighted_modes,
)

PHANTOMS = ("woven-wire", "ellipsoids")
NOISE_MODELS = ("none", "poisson")
PROBE_KINDS = ("disc", "focused")
FILE_PROBES = ("true", "nominal")
SCANS = ("raster", "fermat")
# Each random imperfection draws from its own stream of the seed, so turning one
# on leaves the others (and the phantom and noise draws of older versions) unchanged.
RANDOM_STREAMS = {"fermat": 1, "position_errors": 2, "runout": 3, "i0_jitter": 4}


@dataclass
class SimulationConfig:
    """Every knob of a simulation; stored in the file's ``/simulation`` attributes."""

    phantom: str = "woven-wire"  # woven-wire | ellipsoids | path to a .npy / HDF5 volume
    material: str | None = None  # "FORMULA:DENSITY": the phantom's delta map as density fractions of one compound
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
    probe: str = "disc"  # disc | focused (band-limited pupil with defocus)
    pupil: float = 0.5  # focused: pupil diameter as a fraction of the detector
    defocus: float | None = None  # focused: rad at the pupil edge; None: the beam spans 60 % of the window
    probe_modes: int = 1  # K mutually incoherent modes
    mode_power_ratio: float = 0.3  # mode k holds ratio**k of mode 0's power
    file_probe: str = "true"  # true | nominal (a flat disc of probe_diameter in /probe)
    position_errors: float = 0.0  # rms per coordinate (px) of true minus recorded positions
    scan: str = "raster"  # raster | fermat
    runout: float = 0.0  # rms per coordinate (px) of the per-angle rigid object shifts
    angle_intensity_jitter: float = 0.0  # rms fraction of the per-angle incident flux
    # projection | multislice | auto: multislice where the volume is thicker than the depth of field
    propagation: str = "auto"
    slices: int = 0  # multislice slabs on the simulation's (fine) grid; 0: one per fine voxel across the beam
    device: str = "auto"
    precision: str = "float32"
    extra: dict = field(default_factory=dict)

    def check(self) -> None:
        if self.phantom not in PHANTOMS and not Path(self.phantom).exists():
            raise PtytomoError(
                f"--phantom {self.phantom!r}: not one of {', '.join(PHANTOMS)} and no such volume file"
            )
        if self.material is not None:
            self.compound()
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
        if self.propagation not in PROPAGATIONS:
            raise PtytomoError(f"--propagation {self.propagation!r}: choose one of {', '.join(PROPAGATIONS)}")
        if self.slices < 0:
            raise PtytomoError(f"--slices must be >= 0 (0: one per fine voxel), got {self.slices}")
        if self.slices > 0 and self.propagation == "projection":
            raise PtytomoError(f"--slices {self.slices} asks for multislice; --propagation projection has one plane")
        self.check_imperfections()

    def check_imperfections(self) -> None:
        """The options of imperfect data (probe, modes, positions, runout, flux)."""
        if self.probe not in PROBE_KINDS:
            raise PtytomoError(f"--probe {self.probe!r}: choose one of {', '.join(PROBE_KINDS)}")
        if self.probe != "disc" and self.probe_file:
            raise PtytomoError(f"--probe {self.probe} and --probe-file exclude each other")
        if not 0 < self.pupil <= 1:
            raise PtytomoError(f"--pupil must be in (0, 1] (a fraction of the detector), got {self.pupil}")
        if self.defocus is not None and not math.isfinite(self.defocus):
            raise PtytomoError(f"--defocus must be a finite number of radians, got {self.defocus}")
        if not 1 <= self.probe_modes <= MAX_PROBE_MODES:
            raise PtytomoError(f"--probe-modes must be between 1 and {MAX_PROBE_MODES}, got {self.probe_modes}")
        if not 0 < self.mode_power_ratio < 1:
            raise PtytomoError(f"--mode-power-ratio must be in (0, 1), got {self.mode_power_ratio}")
        if self.file_probe not in FILE_PROBES:
            raise PtytomoError(f"--file-probe {self.file_probe!r}: choose one of {', '.join(FILE_PROBES)}")
        if not 0 <= self.position_errors < math.inf:
            raise PtytomoError(f"--position-errors must be a finite rms >= 0 pixels, got {self.position_errors}")
        if self.scan not in SCANS:
            raise PtytomoError(f"--scan {self.scan!r}: choose one of {', '.join(SCANS)}")
        if not 0 <= self.runout < math.inf:
            raise PtytomoError(f"--runout must be a finite rms >= 0 pixels, got {self.runout}")
        if not 0 <= self.angle_intensity_jitter <= 0.5:
            raise PtytomoError(f"--i0-jitter must be in [0, 0.5] (an rms fraction), got {self.angle_intensity_jitter}")

    def compound(self) -> tuple[float, float]:
        """(delta, beta) of ``material`` at the beam energy; one-line errors naming ``--material``."""
        formula, _, density = str(self.material).partition(":")
        try:
            grams_per_cm3 = float(density)
        except ValueError:
            raise PtytomoError(f"--material {self.material!r}: expected FORMULA:DENSITY (g/cm^3), e.g. SiO2:2.2") from None
        try:
            return delta_beta(formula, grams_per_cm3, self.energy_kev)
        except PtytomoError as exc:
            raise PtytomoError(f"--material {self.material!r}: {exc}") from None

    def resolved_propagation(self, volume_shape: tuple[int, int, int]) -> tuple[str, int]:
        """(model, slabs on the fine grid): ``auto`` is multislice where the reconstruction grid's volume is
        thicker than its depth of field (diagnostics.choose_propagation); the simulation's slabs are one fine
        voxel thick (``slices`` 0): many more and thinner than a reconstruction uses, so that its data do not
        share the reconstruction's slicing."""
        geometry = Geometry(self.energy_kev, self.voxel_size_m, tuple(volume_shape))
        model = choose_propagation(geometry, self.propagation, self.slices, joint=True).model
        if model == "projection":
            return model, 1
        fine = tuple(n * self.oversample for n in volume_shape)
        edges = slab_edges(fine, 1)
        return model, self.slices or math.ceil(edges[-1] - edges[0])

    def resolved_defocus(self) -> float:
        return default_defocus(self.pupil, self.detector_size) if self.defocus is None else float(self.defocus)

    def rng(self, purpose: str) -> np.random.Generator:
        return np.random.default_rng([self.seed, RANDOM_STREAMS[purpose]])


def make_phantom(config: SimulationConfig, factor: int) -> np.ndarray:
    """The phantom on a grid ``factor`` times finer than the reconstruction grid; with ``material``, in
    that one compound (``phantoms.one_compound``: a weak phase object, such as SiO2 at 8 keV)."""
    n = config.size * factor
    if config.phantom == "woven-wire":
        volume = woven_wire(n, energy_kev=config.energy_kev)
    elif config.phantom == "ellipsoids":
        volume = random_ellipsoids(n, count=config.ellipsoids, seed=config.seed, energy_kev=config.energy_kev)
    else:
        volume = load_volume(config.phantom)
        # A user's volume has no finer description: refine by repetition so the
        # detector-plane sampling is still the fine one.
        for axis in range(3):
            volume = np.repeat(volume, factor, axis)
    if config.material is None:
        return volume
    try:
        return one_compound(volume, *config.compound())
    except PtytomoError as exc:
        raise PtytomoError(f"--material {config.material!r}: {exc}") from None


def fine_probe(probe: np.ndarray, factor: int) -> np.ndarray:
    """Band-limited (Fourier) interpolation of a coarse probe onto a ``factor``-times finer grid."""
    m = probe.shape[0]
    spectrum = far_field(torch.from_numpy(probe.astype(np.complex128)))
    # Keep DC where the centred layout puts it: index m // 2 -> (m * factor) // 2.
    pad = (m * factor) // 2 - m // 2
    after = m * factor - m - pad
    padded = torch.nn.functional.pad(spectrum, (pad, after, pad, after))
    return (far_field_adjoint(padded) * factor).numpy()


def registration_ramp(m: int, factor: int, dtype=torch.complex128) -> torch.Tensor:
    """Far-field phase that moves coarse samples onto the centres of their fine-pixel blocks."""
    q = torch.arange(m, dtype=torch.float64) - m // 2
    phase = 2 * math.pi * q * (factor - 1) / (2 * m * factor)
    return torch.exp(1j * (phase[:, None] + phase[None, :])).to(dtype)


def coarse_probe(probe_fine: np.ndarray, m: int, factor: int) -> np.ndarray:
    """The M x M probe whose far field is the detector's (cropped) view of the fine probe's."""
    field_fine = centre_crop(far_field(torch.from_numpy(probe_fine.astype(np.complex128))), m) / factor
    return far_field_adjoint(field_fine * registration_ramp(m, factor)).numpy().astype(np.complex64)


def fine_probe_modes(config: SimulationConfig) -> np.ndarray:
    """The true probe modes (K, MS, MS) on the fine grid, together ``photons * S^2`` (complex128).

    Modes are the main probe times low-order polynomials, orthogonalised: in
    real space for a disc or a probe file (the support is kept), in the far
    field for a focused probe (it stays band-limited).  ``S^2``: the
    detector's crop divides the fine far field by S.
    """
    s, m, k = config.oversample, config.detector_size, config.probe_modes
    n = m * s
    photons = config.photons * s**2
    if config.probe == "focused":
        pupil = pupil_field(n, config.pupil * m, config.resolved_defocus())
        q_rows, q_cols = centred_grid(n)
        edge = config.pupil * m / 2
        unit = from_far_field(orthonormal_modes(pupil, q_rows / edge, q_cols / edge, k))
        return weighted_modes(unit, config.mode_power_ratio, photons)
    if config.probe_file:
        main = load_probe(config.probe_file, m).astype(np.complex128)
        main = fine_probe(main, s) if s > 1 else main
        reach = n / 2
    else:
        # The fine disc is drawn on the fine grid itself, not interpolated.
        main = disc_probe(n, config.probe_diameter * s, config.probe_soft_edge * s).astype(np.complex128)
        reach = config.probe_diameter * s / 2
    rows, cols = centred_grid(n)
    offset = n // 2 - (n - 1) / 2  # polynomials about the probe's centre (n - 1) / 2
    unit = orthonormal_modes(main, (rows + offset) / reach, (cols + offset) / reach, k)
    return weighted_modes(unit, config.mode_power_ratio, photons)


def detector_probe_modes(modes_fine: np.ndarray, m: int, s: int) -> np.ndarray:
    """The coarse (K, M, M) modes that the detector sees (complex64), orthogonal, strongest first."""
    coarse = modes_fine if s == 1 else np.stack([coarse_probe(mode, m, s).astype(np.complex128) for mode in modes_fine])
    if s == 1 or len(coarse) == 1:
        return coarse.astype(np.complex64)
    # Cropping the far field can break the orthogonality of modes with tails
    # beyond the detector; the eigenmodes of their sum measure the same.
    return orthogonalised(coarse).astype(np.complex64)


def recorded_scan(config: SimulationConfig, projection_shape) -> tuple[np.ndarray, np.ndarray | None]:
    """The positions (A, J, 2) written to the file, and their valid flags (None: all valid)."""
    m = config.detector_size
    if config.scan == "fermat":
        return fermat_positions(config.n_angles, projection_shape, config.step, m, config.rng("fermat"))
    positions = raster_positions(config.n_angles, projection_shape, config.step, m, config.shift, config.shift_axes)
    return positions, None


def position_errors(config: SimulationConfig, shape) -> np.ndarray:
    """True minus recorded positions (A, J, 2): Gaussian, ``position_errors`` rms per coordinate."""
    return config.rng("position_errors").normal(scale=config.position_errors, size=shape)


def runout_shifts(config: SimulationConfig) -> np.ndarray:
    """Per-angle offsets (A, 2) of all positions of an angle: a rigid object shift by minus them.

    A slow wobble (one sine period over the scan, its own phase per axis,
    80 % of the variance) plus random jitter, scaled so that the rms over
    angles and both coordinates is exactly ``runout``.
    """
    rng = config.rng("runout")
    t = np.arange(config.n_angles)[:, None] / config.n_angles
    drift = np.sin(2 * np.pi * t + rng.uniform(0, 2 * np.pi, size=2))
    shifts = drift + 0.5 * rng.normal(size=(config.n_angles, 2))
    rms = float(np.sqrt(np.mean(shifts**2)))
    return shifts * (config.runout / rms) if rms > 0 else shifts * 0.0


def flux_scales(config: SimulationConfig) -> np.ndarray:
    """Per-angle incident-flux factors (A,): 1 + Gaussian of ``angle_intensity_jitter`` rms, kept > 0."""
    scales = 1 + config.angle_intensity_jitter * config.rng("i0_jitter").normal(size=config.n_angles)
    return np.maximum(scales, 0.05)


def expected_intensities(model: JointModel, x: torch.Tensor, modes_fine: np.ndarray, m: int, s: int,
                         progress: bool) -> np.ndarray:
    """Noise-free counts (A, J, M, M): the sum over modes of the detector's crop of |far field|^2."""
    intensities = np.zeros((model.n_angles, model.n_positions, m, m), dtype=np.float32)
    steps = [(mode, b) for mode in range(len(modes_fine)) for b in range(len(model.batches))]
    for mode, b in tqdm(steps, desc="simulate", unit="batch", disable=not progress or None):
        if b == 0:
            model.set_probe(torch.from_numpy(modes_fine[mode]))
        fields = model.far_field(x, b)
        if s > 1:
            fields = centre_crop(fields, m) / s
        intensities[model.batches[b]] += (fields.abs() ** 2).cpu().numpy()
    return intensities


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
    positions, valid = recorded_scan(config, projection_shape)

    true_positions = positions.copy()
    if config.position_errors > 0:
        true_positions += position_errors(config, positions.shape)
    angle_shifts = runout_shifts(config) if config.runout > 0 else None
    if angle_shifts is not None:
        true_positions += angle_shifts[:, None, :]

    modes_fine = fine_probe_modes(config)
    true_probe = detector_probe_modes(modes_fine, m, s)
    propagation, slices = config.resolved_propagation(truth.shape)
    model = JointModel(
        volume_fine.shape,
        config.voxel_size_m / s,
        config.energy_kev,
        angles,
        true_positions * s,
        modes_fine[0],
        valid=valid,
        device=device,
        dtype=real_dtype,
        propagation=propagation,
        slices=slices,
    )
    intensities = expected_intensities(model, model.volume(volume_fine), modes_fine, m, s, progress)
    angle_scale = flux_scales(config) if config.angle_intensity_jitter > 0 else None
    if angle_scale is not None:
        intensities *= angle_scale[:, None, None, None].astype(np.float32)
    if config.noise == "poisson":
        rng = np.random.default_rng(config.seed)
        intensities = rng.poisson(intensities).astype(np.float32)

    if config.file_probe == "nominal":
        file_probe = disc_probe(m, config.probe_diameter, photons=config.photons)  # what a beamline would guess
    else:
        file_probe = true_probe[0] if len(true_probe) == 1 else true_probe

    perturbed = config.position_errors > 0 or angle_shifts is not None
    return PtychoTomoData(
        intensities=intensities,
        positions=positions,
        angles=angles,
        probe=file_probe,
        geometry=Geometry(config.energy_kev, config.voxel_size_m, tuple(truth.shape)),
        valid=valid,
        truth=truth.astype(np.complex64),
        simulation=simulation_record(replace(config, propagation=propagation, slices=slices), true_probe),
        truth_probe=true_probe,
        truth_positions=true_positions if perturbed else None,
        truth_angle_shifts=angle_shifts,
        truth_angle_scale=angle_scale,
    )


def simulation_record(config: SimulationConfig, true_probe: np.ndarray) -> dict:
    """``/simulation`` attributes: every config field, with the values actually used."""
    record = {k: v for k, v in asdict(config).items() if k != "extra"}
    if config.probe_file or config.probe == "focused":
        # The disc diameter option does not describe this probe: record its 90 %-power width.
        record["probe_diameter"] = probe_diameter_estimate(true_probe)
    if config.probe == "focused":
        record["defocus"] = config.resolved_defocus()
    if config.file_probe == "nominal":
        record["nominal_probe_diameter"] = config.probe_diameter
    record.update(config.extra, overlap=linear_overlap(config.step, record["probe_diameter"]), producer="ptytomo")
    return {k: ("none" if v is None else v) for k, v in record.items()}
