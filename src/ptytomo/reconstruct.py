"""Reconstruction API: a data set and options in, a :class:`Reconstruction` out."""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, fields

import numpy as np
import torch

from .device import resolve_device, resolve_precision
from .errors import PtytomoError
from .distributed import SOLO, Comm
from .io import LazyIntensities, PtychoTomoData, Reconstruction
from .metrics import volume_errors
from .resources import data_fingerprint, run_identity
from .objective import LOSSES, JointObjective
from .operators import JointModel
from .stream import amplitudes_of, frame_sums
from .solvers import OPTIMIZERS, Regularised, iterate, load_checkpoint, make_optimizer
from .solvers.baselines import Admm, Sequential
from .solvers.subproblems import PTYCHO_STEP

METHODS = ("joint", "sequential", "admm")
# Defaults that depend on the method (0 in the options means "the method's default").
# joint/sequential: optimiser iterations; admm: outer iterations (the paper ran 50).
DEFAULT_ITERATIONS = {"joint": 100, "sequential": 100, "admm": 50}
# sequential: ptychography sweeps before the tomography; admm: sweeps per outer iteration.
DEFAULT_PTYCHO_ITERATIONS = {"sequential": 300, "admm": 4}
TOMOGRAPHY_SOLVERS = ("iterative", "fbp")
RHO_UPDATES = ("fixed", "balance")
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
    optimizer: str = "lbfgs"  # for sequential and admm: the tomography solver
    iterations: int = 0  # 0: the method's default (DEFAULT_ITERATIONS)
    tolerance: float = 1e-5
    loss: str = "amplitude"
    nonnegative: bool = True
    tv_delta: float = 0.1
    tv_beta: float = 0.01
    tv_dose_scaling: bool = True
    alpha0: float = 0.01  # gd
    eps: float = 1e-6  # gd
    learning_rate: float = 1e-3  # adam
    ptycho_iterations: int = 0  # sequential, admm; 0: the method's default
    ptycho_step: float = 1.0  # sequential, admm: fraction of the preconditioned (Newton-like) step
    tomography: str = "iterative"  # sequential: iterative (optimizer, priors) or fbp
    tomo_iterations: int = 4  # admm: tomography steps per outer iteration
    rho: float = 0.5  # admm penalty
    rho_update: str = "fixed"  # admm: fixed or balance (residual balancing)
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
        if self.tomography not in TOMOGRAPHY_SOLVERS:
            raise PtytomoError(f"--tomography {self.tomography!r}: choose one of {', '.join(TOMOGRAPHY_SOLVERS)}")
        if self.rho_update not in RHO_UPDATES:
            raise PtytomoError(f"--rho-update {self.rho_update!r}: choose one of {', '.join(RHO_UPDATES)}")
        if self.method != "joint" and self.loss not in PTYCHO_STEP:
            raise PtytomoError(f"--loss {self.loss} works with --method joint only; "
                               f"--method {self.method} takes {' or '.join(PTYCHO_STEP)}")
        if self.tomography == "fbp" and self.method != "sequential":
            raise PtytomoError(f"--tomography fbp is for --method sequential, not {self.method}")
        if self.tomography == "fbp" and self.iterations > 1:
            raise PtytomoError("--tomography fbp is direct: leave --iterations unset")
        for name in ("rho", "ptycho_step"):
            if not (math.isfinite(getattr(self, name)) and getattr(self, name) > 0):
                raise PtytomoError(f"--{name.replace('_', '-')} must be a number > 0, got {getattr(self, name)}")
        for name in ("iterations", "tv_delta", "tv_beta", "tolerance", "checkpoint_every", "angle_batch",
                     "ptycho_iterations"):
            if getattr(self, name) < 0:
                raise PtytomoError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(self, name)}")
        if self.tomo_iterations < 1:
            raise PtytomoError(f"--tomo-iterations must be >= 1, got {self.tomo_iterations}")
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
LOW_DOSE = 1e5  # photons per frame below which assess() warns


def median_frame_counts(data: PtychoTomoData, comm: Comm = SOLO) -> float:
    return float(np.median(comm.gather(frame_sums(data))))  # over all ranks' frames


def beta_dose_factor(counts: float) -> float:
    """sqrt(1e6 / median photons per frame), at least 1: the beta TV weight's growth at low dose."""
    return max(1.0, float(np.sqrt(REFERENCE_PHOTONS / max(counts, 1.0))))


def assess(data: PtychoTomoData, counts: float, comm: Comm = SOLO) -> list[str]:
    """One line per way ``data`` lies outside what the defaults handle well."""
    from .scan import linear_overlap, probe_diameter_estimate, step_estimate

    notes = []
    valid = data.valid_or_all()
    nz, _, nx = data.geometry.volume_shape
    overlap = linear_overlap(step_estimate(data.positions[0][valid[0]]), probe_diameter_estimate(data.probe))
    if overlap < 0.3:
        notes.append(f"low probe overlap (~{overlap:.0%}): expect artefacts between scan positions; 50-75 % is typical")
    n_angles = comm.total(data.n_angles)
    if n_angles < 0.5 * nx:
        notes.append(f"few angles ({n_angles} for {nx} voxels across): expect streaks from angular undersampling")
    if counts < LOW_DOSE:
        notes.append(f"low dose (median {counts:.3g} photons per frame): beta (absorption) will be weak and smoothed")
    illuminated = np.zeros((nz, nx), dtype=bool)
    support = np.abs(data.probe) ** 2 > 0.01 * np.max(np.abs(data.probe) ** 2)
    m = data.detector_size
    for r, c in np.round(data.positions[valid]).astype(int):
        rows, cols = slice(max(r, 0), min(r + m, nz)), slice(max(c, 0), min(c + m, nx))
        if rows.stop <= rows.start or cols.stop <= cols.start:
            continue  # a window beside the volume (wide scans, small volumes)
        illuminated[rows, cols] |= support[rows.start - r : rows.stop - r, cols.start - c : cols.stop - c]
    illuminated = comm.union(illuminated)
    if illuminated.mean() < 0.99:
        notes.append(f"{1 - illuminated.mean():.0%} of the projection plane is never illuminated at any angle: "
                     "voxels there are not measured")
    return notes


def build_objective(data: PtychoTomoData, options: ReconstructOptions, comm: Comm = SOLO) -> JointObjective:
    device = resolve_device(options.device)
    real_dtype, _ = resolve_precision(options.precision)
    g = data.geometry
    model = JointModel(
        g.volume_shape, g.voxel_size_m, g.energy_kev, data.angles, data.positions, data.probe,
        valid=data.valid, angle_batch=options.angle_batch or None, device=device, dtype=real_dtype,
    )
    amplitudes = amplitudes_of(data, model.batches, device, real_dtype)  # None unless streamed
    if amplitudes is None:
        amplitudes = torch.from_numpy(measured_amplitudes(data)).to(device=device, dtype=real_dtype)
    return JointObjective(model, amplitudes, options.loss, data.mask, reduce=comm.sum)


def make_stepper(objective: JointObjective, options: ReconstructOptions, tv_beta: float, progress: bool = True,
                 comm: Comm = SOLO):
    """The object ``iterate`` steps for ``options.method``: an optimiser (joint) or a baseline."""

    def optimizer_for(problem_objective):
        problem = Regularised(problem_objective, options.tv_delta, tv_beta, options.nonnegative)
        return make_optimizer(
            options.optimizer, problem, alpha0=options.alpha0, eps=options.eps, learning_rate=options.learning_rate
        )

    ptycho_iterations = options.ptycho_iterations or DEFAULT_PTYCHO_ITERATIONS.get(options.method, 0)
    if options.method == "sequential":
        return Sequential(objective, optimizer_for, ptycho_iterations, options.tolerance,
                          direct=options.tomography == "fbp", step=options.ptycho_step, progress=progress, comm=comm)
    if options.method == "admm":
        return Admm(objective, optimizer_for, options.rho, options.rho_update, ptycho_iterations,
                    options.tomo_iterations, options.ptycho_step, comm=comm)
    return optimizer_for(objective)


def reconstruct(data: PtychoTomoData, options: ReconstructOptions | None = None, progress: bool = True,
                comm: Comm = SOLO) -> Reconstruction:
    """Reconstruct delta + i beta from ``data`` with ``options`` (defaults: the general-purpose choice).

    Under torchrun ``data`` is this rank's share of the angles (distributed.read_share) and ``comm``
    joins the ranks; every rank returns the same result.
    """
    options = options or ReconstructOptions()
    options.check()
    counts = median_frame_counts(data, comm)  # one pass over the frames serves both uses
    warnings = assess(data, counts, comm)
    for line in warnings if comm.is_main else []:
        log.warning(line)
    torch.manual_seed(options.seed)
    objective = build_objective(data, options, comm)
    model = objective.model
    tv_beta = options.tv_beta * (beta_dose_factor(counts) if options.tv_dose_scaling else 1.0)
    iterations = options.iterations or (1 if options.tomography == "fbp" else DEFAULT_ITERATIONS[options.method])
    stepper = make_stepper(objective, options, tv_beta, progress and comm.is_main, comm)
    to_u = objective.scaling.to_u
    truth = None
    if data.truth is not None:
        truth = torch.from_numpy(np.asarray(data.truth)).to(device=model.device, dtype=model.complex_dtype)
    u0 = torch.zeros(model.volume_shape, dtype=model.complex_dtype, device=model.device)
    result = iterate(
        stepper, u0, iterations, to_u, truth=truth, tolerance=options.tolerance,
        checkpoint_path=options.checkpoint or None, checkpoint_every=options.checkpoint_every,
        resume=load_checkpoint(options.resume) if options.resume else None, progress=progress,
        identity=run_identity(options, data_fingerprint(data, comm)),  # the data and every option of the result
        description=options.method if options.method != "joint" else f"joint/{options.optimizer}",
        main=comm.is_main, comm=comm,
    )
    if hasattr(objective.amplitudes, "close"):  # a streamed data set: stop its read-ahead thread
        objective.amplitudes.close()
    volume = (result.u / to_u).cpu().numpy().astype(np.complex64)
    parameters = {k: v for k, v in asdict(options).items() if k != "method"}
    parameters.update(
        iterations_limit=iterations, stopped_by=result.stopped_by, cost_scale=objective.scaling.cost, phase_per_unit_x=to_u,
        angle_batch=model.angle_batch, device=str(model.device), warnings=warnings or ["none"],
        effective_tv_beta=tv_beta,
    )
    parameters.update(ranks=comm.size, streamed=isinstance(data.intensities, LazyIntensities),
                      sent_bytes_per_rank=comm.sent_bytes)
    if data.truth is not None:
        parameters.update(volume_errors(volume, data.truth))
    history = {k: np.asarray(v, dtype=np.float64) for k, v in result.history.columns.items()}
    return Reconstruction(volume=volume, method=options.method, parameters=parameters, history=history,
                          geometry=data.geometry)
