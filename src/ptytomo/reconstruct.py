"""Reconstruction API: a data set and options in, a :class:`Reconstruction` out."""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, fields

import numpy as np
import torch

from .device import resolve_device, resolve_precision
from .errors import PtytomoError
from .io import PtychoTomoData, Reconstruction
from .metrics import volume_errors
from .objective import LOSSES, JointObjective
from .operators import JointModel
from .solvers import OPTIMIZERS, Regularised, iterate, load_checkpoint, make_optimizer

METHODS = ("joint",)
log = logging.getLogger("ptytomo")


@dataclass
class ReconstructOptions:
    """Every option of a reconstruction; all of them are stored in the output file.

    TV weights act on the normalised problem of :mod:`ptytomo.objective`
    (cost scaled to a Lipschitz constant of 100), separately on delta and beta.
    The defaults were chosen on data simulated on a 2x finer grid (no inverse
    crime) with two phantoms, three overlaps and doses from 1e4 photons per
    frame to noise-free (benchmarks/tune_defaults.py).  With ``tv_dose_scaling``
    the beta weight grows as sqrt(1e6 / median photons per frame) below 1e6
    photons, so that weak absorption is smoothed, not amplified, at low dose.
    """

    method: str = "joint"
    optimizer: str = "lbfgs"
    iterations: int = 100
    tolerance: float = 1e-5
    loss: str = "amplitude"
    nonnegative: bool = True
    tv_delta: float = 0.1
    tv_beta: float = 0.01
    tv_dose_scaling: bool = True
    alpha0: float = 0.01  # gd
    eps: float = 1e-6  # gd
    learning_rate: float = 1e-3  # adam
    device: str = "auto"
    precision: str = "float32"
    angle_batch: int = 0  # 0: chosen from memory
    checkpoint: str = ""
    checkpoint_every: int = 0
    resume: str = ""
    seed: int = 0

    def check(self) -> None:
        if self.method not in METHODS:
            raise PtytomoError(f"--method {self.method!r}: choose one of {', '.join(METHODS)}")
        if self.optimizer not in OPTIMIZERS:
            raise PtytomoError(f"--optimizer {self.optimizer!r}: choose one of {', '.join(OPTIMIZERS)}")
        if self.loss not in LOSSES:
            raise PtytomoError(f"--loss {self.loss!r}: choose one of {', '.join(LOSSES)}")
        if self.iterations < 1:
            raise PtytomoError(f"--iterations must be >= 1, got {self.iterations}")
        for name in ("tv_delta", "tv_beta", "tolerance", "checkpoint_every", "angle_batch"):
            if getattr(self, name) < 0:
                raise PtytomoError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(self, name)}")
        if self.checkpoint_every and not self.checkpoint:
            raise PtytomoError("--checkpoint-every needs --checkpoint PATH")

    @classmethod
    def names(cls) -> list[str]:
        return [f.name for f in fields(cls)]


def measured_amplitudes(data: PtychoTomoData) -> np.ndarray:
    """sqrt(counts), with padding entries (valid False) set to zero so they cannot leak NaN."""
    amplitudes = np.sqrt(np.maximum(data.intensities, 0, dtype=np.float32))
    if data.valid is not None:
        amplitudes[~data.valid] = 0.0
    return amplitudes


REFERENCE_PHOTONS = 1e6


def median_frame_counts(data: PtychoTomoData) -> float:
    return float(np.median(data.intensities.sum(axis=(2, 3))[data.valid_or_all()]))


def beta_dose_factor(counts: float) -> float:
    """sqrt(1e6 / median photons per frame), at least 1: the beta TV weight's growth at low dose."""
    return max(1.0, float(np.sqrt(REFERENCE_PHOTONS / max(counts, 1.0))))


def assess(data: PtychoTomoData, counts: float) -> list[str]:
    """One line per way ``data`` lies outside what the defaults handle well."""
    from .scan import linear_overlap, probe_diameter_estimate, step_estimate

    notes = []
    valid = data.valid_or_all()
    nz, _, nx = data.geometry.volume_shape
    overlap = linear_overlap(step_estimate(data.positions[0][valid[0]]), probe_diameter_estimate(data.probe))
    if overlap < 0.3:
        notes.append(f"low probe overlap (~{overlap:.0%}): expect artefacts between scan positions; 50-75 % is typical")
    if data.n_angles < 0.5 * nx:
        notes.append(f"few angles ({data.n_angles} for {nx} voxels across): expect streaks from angular undersampling")
    if counts < 1e5:
        notes.append(f"low dose (median {counts:.3g} photons per frame): beta (absorption) will be weak and smoothed")
    illuminated = np.zeros((nz, nx), dtype=bool)
    support = np.abs(data.probe) ** 2 > 0.01 * np.max(np.abs(data.probe) ** 2)
    m = data.detector_size
    for r, c in np.round(data.positions[valid]).astype(int):
        rows, cols = slice(max(r, 0), min(r + m, nz)), slice(max(c, 0), min(c + m, nx))
        illuminated[rows, cols] |= support[rows.start - r : rows.stop - r, cols.start - c : cols.stop - c]
    if illuminated.mean() < 0.99:
        notes.append(f"{1 - illuminated.mean():.0%} of the projection plane is never illuminated at any angle: "
                     "voxels there are not measured")
    return notes


def build_objective(data: PtychoTomoData, options: ReconstructOptions) -> JointObjective:
    device = resolve_device(options.device)
    real_dtype, _ = resolve_precision(options.precision)
    g = data.geometry
    model = JointModel(
        g.volume_shape, g.voxel_size_m, g.energy_kev, data.angles, data.positions, data.probe,
        valid=data.valid, angle_batch=options.angle_batch or None, device=device, dtype=real_dtype,
    )
    amplitudes = torch.from_numpy(measured_amplitudes(data)).to(device=device, dtype=real_dtype)
    return JointObjective(model, amplitudes, options.loss, data.mask)


def reconstruct(data: PtychoTomoData, options: ReconstructOptions | None = None, progress: bool = True) -> Reconstruction:
    """Reconstruct delta + i beta from ``data`` with ``options`` (defaults: the general-purpose choice)."""
    options = options or ReconstructOptions()
    options.check()
    counts = median_frame_counts(data)  # one pass over the frames serves both uses
    warnings = assess(data, counts)
    for line in warnings:
        log.warning(line)
    torch.manual_seed(options.seed)
    objective = build_objective(data, options)
    model = objective.model
    tv_beta = options.tv_beta * (beta_dose_factor(counts) if options.tv_dose_scaling else 1.0)
    problem = Regularised(objective, options.tv_delta, tv_beta, options.nonnegative)
    optimizer = make_optimizer(
        options.optimizer, problem, alpha0=options.alpha0, eps=options.eps, learning_rate=options.learning_rate
    )
    to_u = objective.scaling.to_u
    truth = None
    if data.truth is not None:
        truth = torch.from_numpy(np.asarray(data.truth)).to(device=model.device, dtype=model.complex_dtype)
    u0 = torch.zeros(model.volume_shape, dtype=model.complex_dtype, device=model.device)
    result = iterate(
        optimizer, u0, options.iterations, to_u, truth=truth, tolerance=options.tolerance,
        checkpoint_path=options.checkpoint or None, checkpoint_every=options.checkpoint_every,
        resume=load_checkpoint(options.resume) if options.resume else None, progress=progress,
        description=f"{options.method}/{options.optimizer}",
    )
    volume = (result.u / to_u).cpu().numpy().astype(np.complex64)
    parameters = {k: v for k, v in asdict(options).items() if k != "method"}
    parameters.update(
        stopped_by=result.stopped_by, cost_scale=objective.scaling.cost, phase_per_unit_x=to_u,
        angle_batch=model.angle_batch, device=str(model.device), warnings=warnings or ["none"],
        effective_tv_beta=tv_beta,
    )
    if data.truth is not None:
        parameters.update(volume_errors(volume, data.truth))
    history = {k: np.asarray(v, dtype=np.float64) for k, v in result.history.columns.items()}
    return Reconstruction(volume=volume, method=options.method, parameters=parameters, history=history,
                          geometry=data.geometry)
