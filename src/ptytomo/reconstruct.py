"""Reconstruction API: a data set and options in, a :class:`Reconstruction` out."""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, fields, replace

import numpy as np
import torch

from .device import resolve_device, resolve_precision
from .errors import PtytomoError
from .distributed import SOLO, Comm
from .io import LazyIntensities, PtychoTomoData, Reconstruction
from .metrics import volume_errors
from .resources import data_fingerprint, run_identity
from .objective import GAUSS_NEWTON_LOSSES, LOSSES, JointObjective
from .operators import JointModel
from .stream import amplitudes_of, frame_sums, frames_are_counts
from .solvers import OPTIMIZERS, Regularised, iterate, load_checkpoint, make_optimizer
from .solvers.baselines import Admm, Sequential
from .solvers.heldout import finish_iterations

METHODS = ("joint", "sequential", "admm", "ptycho")
# Defaults that depend on the method (0 in the options means "the method's default").
# joint/sequential: optimiser iterations; admm: outer iterations (the paper ran 50);
# ptycho: sweeps of 2D ptychography per angle (no volume).
# --refine auto (the default): measured data come with neither an exact probe, nor exact positions, nor
# aligned angles; the per-angle incident flux (scale) is asked for by name
AUTO_REFINE = ("probe", "positions", "shifts")
DEFAULT_ITERATIONS = {"joint": 100, "sequential": 100, "admm": 50, "ptycho": 300}
# sequential: ptychography sweeps before the tomography; admm: sweeps per outer iteration.
DEFAULT_PTYCHO_ITERATIONS = {"sequential": 300, "admm": 4}
TOMOGRAPHY_SOLVERS = ("iterative", "fbp")
RHO_UPDATES = ("fixed", "balance")
TV_CHOICES = ("fixed", "auto")
AUTO_MAX_SHIFT, AUTO_SHIFT_FRACTION = 10.0, 0.1  # --max-shift 0 (auto): pixels, fraction of the volume
POSITION_SCALES = ("auto", "pinned", "free")
STEPPED_LOSSES = GAUSS_NEWTON_LOSSES + ("auto",)  # losses the groups and sweeps can step with (auto is one of them)
log = logging.getLogger("ptytomo")


@dataclass
class ReconstructOptions:
    """Every option of a reconstruction; all of them are stored in the output file.

    TV weights act on the normalised problem of :mod:`ptytomo.objective`
    (cost scaled to a Lipschitz constant of 100), separately on delta and beta.
    The fixed weights (``tv="fixed"``; the default ``tv="auto"`` scales its path of weights from them)
    were chosen on data simulated on a 2x finer grid (no inverse
    crime) with two phantoms, three overlaps and doses from 1e4 photons per
    frame to noise-free (benchmarks/tune_defaults.py).  With ``tv_dose_scaling``
    the beta weight grows as sqrt(1e6 / median photons per frame) below 1e6
    photons, so that weak absorption is smoothed, not amplified, at low dose.
    """

    method: str = "joint"
    optimizer: str = "lbfgs"  # for sequential and admm: the tomography solver
    iterations: int = 0  # 0: the method's default (DEFAULT_ITERATIONS)
    tolerance: float = 1e-5
    # auto: poisson where the frames hold photon counts (whole numbers), amplitude otherwise (choose_loss)
    loss: str = "auto"
    nonnegative: bool = True
    tv_delta: float = 0.1
    tv_beta: float = 0.01
    tv_dose_scaling: bool = True
    tv: str = "auto"  # auto: chosen on held-out frames along a path scaled from tv_delta, tv_beta
    # (solvers/heldout.py); fixed: tv_delta, tv_beta as given
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
    # Refinement of the forward model's other unknowns (parameter groups, ptytomo.model):
    # comma list of ptytomo.model.GROUPS, "none", or "auto": probe,positions,shifts (measured data never come
    # with an exact probe, exact positions or aligned angles; --method ptycho: probe,positions), none with
    # --loss intensity (no Gauss-Newton step for it)
    refine: str = "auto"
    probe_modes: int = 0  # K incoherent modes; 0: as many as the file's probe has
    # auto: the file's, or where its far field contradicts the data (and the probe is refined) the best start
    # of a search (model/probe_search.py) | file | mean-pattern | disc:D | gaussian:D
    probe_init: str = "auto"
    probe_defocus: float = 0.0  # metres the initial probe is propagated by (> 0: sample downstream of focus)
    probe_start: int = 3  # first iteration (sweep for sequential, admm, ptycho) of probe updates
    probe_updates: int = 5  # joint: probe steps per iteration (the baselines take one per sweep)
    positions_start: int = 20  # first iteration (sweep) of position updates
    positions_wait: int = 30  # with the probe refined: iterations more at most for it to settle first
    max_position_correction: float = 4.0  # pixels
    # pixels rms per coordinate of the expected position errors: a Gaussian prior on the corrections, which
    # matters only where the data carry little position information (model/positions.py); 0: none
    position_prior: float = 1.0
    position_affine: bool = False  # constrain position corrections to one affine map of the scan
    # the corrections' scale of the scan in rows and columns: pinned (removed) or free; auto: pinned when the
    # probe is refined (its curvature trades with the scale) and the corrections are not --position-affine
    position_scale: str = "auto"
    shifts_start: int = 20  # first joint iteration of per-angle shift updates (model/shifts.py)
    # pixels per coordinate; also the model's padding for the shifted windows; 0: auto, the larger of 10 px
    # and 10 % of the volume's width or height (measured series drift by tens of pixels: issue 11)
    max_shift: float = 0.0
    coarse_align: str = "on"  # with --refine shifts: projection matching before the loop (solvers/alignment.py)

    def refined(self) -> list[str]:
        """The groups named by ``refine``, in their canonical order."""
        from .model import GROUPS

        text = self.refine.strip()
        if text == "auto":
            if self.loss not in STEPPED_LOSSES:
                return []
            # a rigid shift of one angle's object is invisible to that angle's 2D ptychography
            return [n for n in AUTO_REFINE if n != "shifts" or self.method != "ptycho"]
        names = [] if text in ("none", "") else [n.strip() for n in text.split(",")]
        for name in names:
            if name not in GROUPS:
                raise PtytomoError(f"--refine {self.refine!r}: unknown {name!r}; choose from "
                                   f"{', '.join(GROUPS)} (comma-separated) or none")
        return [n for n in GROUPS if n in names]

    def shift_bound(self, volume_shape) -> float:
        """The largest per-angle shift per coordinate in pixels: ``max_shift``, or with 0 (auto) the larger of
        AUTO_MAX_SHIFT and AUTO_SHIFT_FRACTION of the volume's height or width."""
        nz, _, nx = volume_shape
        return float(self.max_shift or max(AUTO_MAX_SHIFT, AUTO_SHIFT_FRACTION * max(nz, nx)))

    def window_margin(self, volume_shape) -> int:
        """Pixels of padding a side beyond the probe for the windows the refined groups move: room for the
        position corrections and the first update's search (PositionOptions.search_radius), and for the
        per-angle shifts."""
        refined = self.refined()
        margin = math.ceil(self.max_position_correction) + 2 if "positions" in refined else 0
        return margin + (math.ceil(self.shift_bound(volume_shape)) + 1 if "shifts" in refined else 0)

    def pins_scan_scale(self) -> bool:
        """Whether the position corrections' scale of the scan is pinned (``position_scale``)."""
        if self.position_scale == "auto":
            return "probe" in self.refined() and not self.position_affine
        return self.position_scale == "pinned"

    def check(self) -> None:
        if self.method not in METHODS:
            raise PtytomoError(f"--method {self.method!r}: choose one of {', '.join(METHODS)}")
        if self.optimizer not in OPTIMIZERS:
            raise PtytomoError(f"--optimizer {self.optimizer!r}: choose one of {', '.join(OPTIMIZERS)}")
        if self.loss not in LOSSES + ("auto",):
            raise PtytomoError(f"--loss {self.loss!r}: choose auto or one of {', '.join(LOSSES)}")
        if self.tomography not in TOMOGRAPHY_SOLVERS:
            raise PtytomoError(f"--tomography {self.tomography!r}: choose one of {', '.join(TOMOGRAPHY_SOLVERS)}")
        if self.tv not in TV_CHOICES:
            raise PtytomoError(f"--tv {self.tv!r}: choose one of {', '.join(TV_CHOICES)}")
        if self.rho_update not in RHO_UPDATES:
            raise PtytomoError(f"--rho-update {self.rho_update!r}: choose one of {', '.join(RHO_UPDATES)}")
        if self.method != "joint" and self.loss not in STEPPED_LOSSES:
            raise PtytomoError(f"--loss {self.loss} works with --method joint only; "
                               f"--method {self.method} takes {' or '.join(GAUSS_NEWTON_LOSSES)}")
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
        from .model.probe import parse_probe_init

        parse_probe_init(self.probe_init)
        if not math.isfinite(self.probe_defocus):
            raise PtytomoError(f"--probe-defocus must be a finite number of metres, got {self.probe_defocus}")
        if self.refined() and self.loss not in STEPPED_LOSSES:
            raise PtytomoError(f"--refine {self.refine} takes Gauss-Newton steps for --loss "
                               f"{' or '.join(GAUSS_NEWTON_LOSSES)}; use --refine none with --loss {self.loss}")
        if self.position_scale not in POSITION_SCALES:
            raise PtytomoError(f"--position-scale {self.position_scale!r}: choose one of {', '.join(POSITION_SCALES)}")
        if self.coarse_align not in ("on", "off"):
            raise PtytomoError(f"--coarse-align {self.coarse_align!r}: choose on or off")
        if not (math.isfinite(self.max_shift) and self.max_shift >= 0):
            raise PtytomoError(f"--max-shift must be a number of pixels > 0 (0: auto), got {self.max_shift}")
        if self.probe_updates < 1:
            raise PtytomoError(f"--probe-updates must be >= 1, got {self.probe_updates}")
        for name in ("probe_modes", "probe_start", "positions_start", "positions_wait", "shifts_start"):
            if getattr(self, name) < 0:
                raise PtytomoError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(self, name)}")
        if not (math.isfinite(self.max_position_correction) and self.max_position_correction > 0):
            raise PtytomoError(f"--max-position-correction must be a number > 0, got {self.max_position_correction}")
        if not (math.isfinite(self.position_prior) and self.position_prior >= 0):
            raise PtytomoError(f"--position-prior must be a number of pixels >= 0 (0: none), got {self.position_prior}")

    def has_tv(self) -> bool:
        """Whether the method has a TV prior (``--method ptycho`` and ``--tomography fbp`` have none)."""
        return self.method != "ptycho" and self.tomography != "fbp"

    def chooses_tv(self) -> bool:
        """``--tv auto`` (the default) where there are TV weights to choose."""
        return self.tv == "auto" and self.has_tv()

    def no_tv_refusal(self) -> str | None:
        """The one-line refusal of a ``--tv auto`` asked for by hand where there is no TV prior."""
        if self.tv != "auto" or self.has_tv():
            return None
        return (f"--tv auto chooses TV weights; --method {self.method}"
                f"{' --tomography fbp' if self.tomography == 'fbp' else ''} has no TV prior")

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


# --loss auto: the Poisson likelihood from this many photons per detector pixel of the median frame on
# (measured, benchmarks/loss.py: amplitude better by 17-25 % on delta at 4.4, Poisson better or within 3 % at 44)
POISSON_COUNTS_PER_PIXEL = 10.0


def choose_loss(data: PtychoTomoData, comm: Comm = SOLO, counts: float | None = None) -> str:
    """``--loss auto``: the Poisson likelihood where the frames hold photon counts (whole numbers on every
    rank) and the median frame (``counts``, computed when None) brings POISSON_COUNTS_PER_PIXEL per
    detector pixel or more; the amplitude cost otherwise (noise-free simulations, processed frames,
    very low doses).

    sqrt(counts) is biased low where a pixel expects a few photons (E sqrt(n) = 0.78 at one expected
    photon), and the amplitude cost fits that bias: it shrinks what the object scatters into the dark
    field, the whole contrast of a weak object (measured, benchmarks/loss.py: delta's best-fit scale
    2.8-3.5 on a SiO2 phantom with a focused beam, relative error 0.76-0.83 against Poisson's 0.40-0.49
    at 1e5-1e6 photons a frame).  At a few photons per pixel everywhere the shrinkage regularises what
    the TV path cannot: there the amplitude cost is the better (README "Which cost")."""
    if comm.anyone(not frames_are_counts(data)):
        return "amplitude"
    counts = median_frame_counts(data, comm) if counts is None else counts
    pixels = data.detector_size**2 if data.mask is None else int(np.count_nonzero(data.mask))
    return "poisson" if counts >= POISSON_COUNTS_PER_PIXEL * max(pixels, 1) else "amplitude"


def beta_dose_factor(counts: float) -> float:
    """sqrt(1e6 / median photons per frame), at least 1: the beta TV weight's growth at low dose."""
    return max(1.0, float(np.sqrt(REFERENCE_PHOTONS / max(counts, 1.0))))


def assess(data: PtychoTomoData, counts: float, comm: Comm = SOLO) -> list[str]:
    """One line per way ``data`` lies outside what the defaults handle well."""
    from .scan import linear_overlap, probe_diameter_estimate, probe_intensity, step_estimate

    notes = []
    valid = data.valid_or_all()
    nz, _, nx = data.geometry.volume_shape
    step, diameter = step_estimate(data.positions[0][valid[0]]), probe_diameter_estimate(data.probe)
    overlap = linear_overlap(step, diameter)
    if overlap <= 0:  # 1 - step/D is negative there: say what it means instead of a negative percentage
        notes.append(f"no probe overlap (scan step {step:.3g} px >= probe diameter {diameter:.3g} px, 90 % power): "
                     "expect artefacts between scan positions; 50-75 % overlap is typical")
    elif overlap < 0.3:
        notes.append(f"low probe overlap (~{overlap:.0%}): expect artefacts between scan positions; 50-75 % is typical")
    n_angles = comm.total(data.n_angles)
    if n_angles < 0.5 * nx:
        notes.append(f"few angles ({n_angles} for {nx} voxels across): expect streaks from angular undersampling")
    if counts < LOW_DOSE:
        notes.append(f"low dose (median {counts:.3g} photons per frame): beta (absorption) will be weak and smoothed")
    illuminated = np.zeros((nz, nx), dtype=bool)
    intensity = probe_intensity(data.probe)
    support = intensity > 0.01 * intensity.max()
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


def build_objective(data: PtychoTomoData, options: ReconstructOptions, comm: Comm = SOLO,
                    probe: np.ndarray | None = None) -> JointObjective:
    """The joint objective of ``data``; ``probe`` (K, M, M) replaces the file's (initial guesses)."""
    device = resolve_device(options.device)
    real_dtype, _ = resolve_precision(options.precision)
    g = data.geometry
    refined = options.refined()
    margin = options.window_margin(g.volume_shape)
    model = JointModel(
        g.volume_shape, g.voxel_size_m, g.energy_kev, data.angles, data.positions,
        data.probe if probe is None else probe, valid=data.valid, angle_batch=options.angle_batch or None,
        device=device, dtype=real_dtype, margin=margin, pruned=False if refined else None,
    )
    amplitudes = amplitudes_of(data, model.batches, device, real_dtype)  # None unless streamed
    if amplitudes is None:
        amplitudes = torch.from_numpy(measured_amplitudes(data)).to(device=device, dtype=real_dtype)
    loss = choose_loss(data, comm) if options.loss == "auto" else options.loss
    return JointObjective(model, amplitudes, loss, data.mask, reduce=comm.sum)


def make_groups(objective: JointObjective, options: ReconstructOptions, comm: Comm = SOLO) -> list:
    """The parameter groups ``options.refine`` names, on ``objective``'s model."""
    from .model import (PositionOptions, PositionsGroup, ProbeGroup, ProbeOptions, ScaleGroup, ScaleOptions,
                        ShiftOptions, ShiftsGroup)
    from .solvers.baselines import gather_angles, share_of

    model, refined, groups = objective.model, options.refined(), []
    if "probe" in refined:
        groups.append(ProbeGroup(model, ProbeOptions(enabled=True, start=options.probe_start,
                                                     updates=options.probe_updates)))
    if "positions" in refined:
        position_options = PositionOptions(enabled=True, start=options.positions_start, wait=options.positions_wait,
                                           max_correction=options.max_position_correction,
                                           prior=options.position_prior,
                                           affine=options.position_affine,
                                           pin_scale=options.pins_scan_scale(),
                                           # with per-angle shifts refined, each angle's common offset is theirs
                                           per_angle_mean="shifts" in refined)
        groups.append(PositionsGroup(model, position_options, gather=lambda t: gather_angles(comm, t),
                                     share=lambda t: share_of(comm, t, model.recorded_positions),
                                     counts_per_unit=objective.probe_max**2))
    if "shifts" in refined:
        groups.append(ShiftsGroup(model, ShiftOptions(enabled=True, start=options.shifts_start,
                                                      max_shift=options.shift_bound(model.volume_shape)),
                                  gather=lambda t: gather_angles(comm, t),
                                  share=lambda t: share_of(comm, t, model.recorded_positions)))
    if "scale" in refined:
        groups.append(ScaleGroup(model, ScaleOptions(enabled=True), gather=lambda t: gather_angles(comm, t),
                                 share=lambda t: share_of(comm, t, model.recorded_positions)))
    probe = next((g for g in groups if g.name == "probe"), None)
    for group in groups:
        if group.name in ("positions", "shifts"):  # windows registered against a wrong probe drift
            group.waits_for = probe
    return groups


def align_before_loop(objective: JointObjective, groups: list, options: ReconstructOptions,
                      comm: Comm = SOLO) -> None:
    """Coarse projection matching (solvers/alignment.py) into the shifts group, when it is refined and
    --coarse-align is on; a resumed joint run has its shifts in the checkpoint instead."""
    from .solvers.alignment import AlignmentOptions, coarse_align
    from .solvers.baselines import gather_angles, share_of

    shifts = next((g for g in groups if g.name == "shifts"), None)
    if shifts is None or options.coarse_align != "on" or (options.resume and options.method == "joint"):
        return
    model = objective.model
    refine_probe = any(g.name == "probe" for g in groups)
    bound = options.shift_bound(model.volume_shape)
    found = coarse_align(objective, AlignmentOptions(max_shift=bound, refine_probe=refine_probe),
                         gather=lambda t: gather_angles(comm, t),
                         share=lambda t: share_of(comm, t, model.recorded_positions), log=log.debug)
    if comm.is_main and not bool(found.any()):
        log.info("coarse alignment: no shifts that make the projections agree better; starting from none")
    shifts.set(found)
    if comm.anyone(bool(found.any())):  # every rank, or none: the power iteration sums over ranks
        objective.normalise()  # windows moved by up to --max-shift: the illumination of the volume changed


def make_stepper(objective: JointObjective, options: ReconstructOptions, tv_beta: float, progress: bool = True,
                 comm: Comm = SOLO, groups=()):
    """The object ``iterate`` steps for ``options.method``: an optimiser (joint) or a baseline,
    refining ``groups`` (probe, positions) on the way."""
    from .model import RefiningStepper
    from .solvers.baselines import Ptycho

    def optimizer_for(problem_objective):
        problem = Regularised(problem_objective, options.tv_delta, tv_beta, options.nonnegative)
        return make_optimizer(
            options.optimizer, problem, alpha0=options.alpha0, eps=options.eps, learning_rate=options.learning_rate
        )

    ptycho_iterations = options.ptycho_iterations or DEFAULT_PTYCHO_ITERATIONS.get(options.method, 0)
    if options.method != "joint":  # per-angle shifts are invisible to 2D ptychography: aligned beforehand
        groups = [g for g in groups if not getattr(g, "needs_volume", False)]
    if options.method == "sequential":
        return Sequential(objective, optimizer_for, ptycho_iterations, options.tolerance,
                          direct=options.tomography == "fbp", step=options.ptycho_step, progress=progress, comm=comm,
                          groups=groups)
    if options.method == "admm":
        return Admm(objective, optimizer_for, options.rho, options.rho_update, ptycho_iterations,
                    options.tomo_iterations, options.ptycho_step, comm=comm, groups=groups)
    if options.method == "ptycho":
        return Ptycho(objective, options.ptycho_step, comm=comm, groups=groups)
    optimizer = optimizer_for(objective)
    return RefiningStepper(objective, optimizer, groups) if groups else optimizer


def reconstruct(data: PtychoTomoData, options: ReconstructOptions | None = None, progress: bool = True,
                comm: Comm = SOLO) -> Reconstruction:
    """Reconstruct delta + i beta from ``data`` with ``options`` (defaults: the general-purpose choice).

    Under torchrun ``data`` is this rank's share of the angles (distributed.read_share) and ``comm``
    joins the ranks; every rank returns the same result.
    """
    options = options or ReconstructOptions()
    options.check()
    counts = median_frame_counts(data, comm)  # one pass over the frames serves every use
    loss_requested = options.loss
    if options.loss == "auto":  # the rest of the run (groups, path, checkpoints) sees the chosen cost
        options = replace(options, loss=choose_loss(data, comm, counts))
        if comm.is_main:
            log.info("--loss auto: %s", options.loss)
    warnings = assess(data, counts, comm)
    for line in warnings if comm.is_main else []:
        log.warning(line)
    torch.manual_seed(options.seed)
    from .model import initial_probe

    search = None
    if "probe" in options.refined():
        search = dict(loss=options.loss, device=resolve_device(options.device),
                      dtype=resolve_precision(options.precision)[0])
    probe, probe_notes = initial_probe(data, options.probe_init, options.probe_modes, options.seed, comm,
                                       defocus_m=options.probe_defocus, search=search)
    for line in probe_notes if comm.is_main else []:
        log.warning(line)
    objective = build_objective(data, options, comm, probe=probe)
    groups = make_groups(objective, options, comm)
    align_before_loop(objective, groups, options, comm)
    model = objective.model
    tv_beta = options.tv_beta * (beta_dose_factor(counts) if options.tv_dose_scaling else 1.0)
    iterations = options.iterations or (1 if options.tomography == "fbp" else DEFAULT_ITERATIONS[options.method])
    # --tv auto's calibration run (probe, positions) is the joint method's, with the joint iteration limit.
    path_iterations = iterations if options.method == "joint" else DEFAULT_ITERATIONS["joint"]
    resumed = load_checkpoint(options.resume) if options.resume else None
    chosen = (resumed or {}).get("extra", {}) if options.chooses_tv() else {}
    heldout, tv_delta = None, options.tv_delta
    if "tv_delta" in chosen:  # a resumed --tv auto run keeps the weights it chose (and its finish)
        tv_delta, tv_beta = chosen["tv_delta"], chosen["tv_beta"]
        iterations = finish_iterations(iterations) if chosen["finish"] else iterations
    elif options.chooses_tv() and options.method != "sequential":
        scored = calibrate_for_heldout(objective, data, options, tv_beta, path_iterations, groups, comm)
        # ADMM's own path: its steps (groups frozen) on the training frames, warm-started along the weights
        admm = (lambda: make_stepper(objective, options, tv_beta, progress=False, comm=comm)) \
            if options.method == "admm" else None
        heldout = held_out_weights(objective, scored, options, tv_beta, iterations, comm, new_stepper=admm)
        tv_delta, tv_beta = heldout.tv_delta, heldout.tv_beta
    stepper = make_stepper(objective, replace(options, tv_delta=tv_delta), tv_beta, progress and comm.is_main,
                           comm, groups)
    if options.chooses_tv() and options.method == "sequential" and "tv_delta" not in chosen:
        # Sequential's own path, once its ptychography on all frames has refined the probe and positions
        stepper.choose_weights = lambda sequential: held_out_weights(
            objective, with_model_positions(data, model), options, tv_beta, iterations, comm, sequential=sequential)
    to_u = objective.scaling.to_u
    truth = None
    if data.truth is not None:
        truth = torch.from_numpy(np.asarray(data.truth)).to(device=model.device, dtype=model.complex_dtype)
    u0 = torch.zeros(model.volume_shape, dtype=model.complex_dtype, device=model.device)
    # --tv auto: joint and ADMM finish on all frames from the chosen point (Sequential: Sequential.step).
    finish = bool(chosen.get("finish"))  # a resumed finish (its limit is set above)
    if heldout is not None and heldout.start is not None and options.method in ("joint", "admm"):
        u0, iterations, finish = heldout.start, finish_iterations(iterations), True

    def weights_in_use() -> dict:
        choice = getattr(stepper, "choice", None)
        weights = (choice.tv_delta, choice.tv_beta) if choice is not None else (tv_delta, tv_beta)
        return dict(zip(("tv_delta", "tv_beta"), weights), finish=finish) if options.chooses_tv() else {}

    result = iterate(
        stepper, u0, iterations, to_u, truth=truth, tolerance=options.tolerance,
        checkpoint_path=options.checkpoint or None, checkpoint_every=options.checkpoint_every,
        resume=resumed, progress=progress,
        identity=run_identity(options, data_fingerprint(data, comm)),  # the data and every option of the result
        description=options.method if options.method != "joint" else f"joint/{options.optimizer}",
        main=comm.is_main, comm=comm, extra=weights_in_use,
    )
    if getattr(stepper, "choice", None) is not None:  # Sequential's own path ran inside the loop
        heldout = stepper.choice
        tv_delta, tv_beta = heldout.tv_delta, heldout.tv_beta
    fit, fit_warning = final_fit(objective, stepper, result, data, options.loss, comm)
    if fit_warning and comm.is_main:
        log.warning(fit_warning)
    warnings = warnings + ([fit_warning] if fit_warning else []) + ([heldout.note] if heldout and heldout.note else [])
    if hasattr(objective.amplitudes, "close"):  # a streamed data set: stop its read-ahead thread
        objective.amplitudes.close()
    volume = (result.u / to_u).cpu().numpy().astype(np.complex64)
    parameters = {k: v for k, v in asdict(options).items() if k != "method"}
    parameters.update(
        iterations_limit=iterations, stopped_by=result.stopped_by, cost_scale=objective.scaling.cost, phase_per_unit_x=to_u,
        angle_batch=model.angle_batch, device=str(model.device), warnings=warnings or ["none"],
        effective_tv_beta=tv_beta, effective_tv_delta=tv_delta,
        effective_max_shift=options.shift_bound(data.geometry.volume_shape) if "shifts" in options.refined() else 0.0,
    )
    if heldout is not None:
        parameters.update(heldout.record, heldout_calibration_iterations=getattr(objective, "calibration_iterations", 0))
    parameters.update(ranks=comm.size, streamed=isinstance(data.intensities, LazyIntensities),
                      sent_bytes_per_rank=comm.sent_bytes)
    parameters.update(fit)
    if data.truth is not None:
        parameters.update(volume_errors(volume, data.truth))
    history = {k: np.asarray(v, dtype=np.float64) for k, v in result.history.columns.items()}
    refined = refined_unknowns(objective, groups, stepper, comm)
    parameters.update(refined.pop("parameters", {}))
    if "angle_shifts" in refined:
        from .model.shifts import bound_reached, shift_summary

        summary, line = shift_summary(refined["angle_shifts"], comm.gather(data.angles))
        parameters.update(summary, angle_shift_summary=line)
        bound = bound_reached(refined["angle_shifts"], options.shift_bound(data.geometry.volume_shape))
        if comm.is_main:
            log.info(line)
            if bound:
                log.warning(bound)
        if bound:
            parameters["warnings"] = [w for w in parameters["warnings"] if w != "none"] + [bound]
    parameters.update(loss_requested=loss_requested)
    parameters.update(probe_notes=probe_notes or ["none"], probe_modes_used=int(model.probe.shape[0]),
                      refined=",".join(g.name for g in groups) or "none")
    return Reconstruction(volume=volume, method=options.method, parameters=parameters, history=history,
                          geometry=data.geometry, **refined)


def calibrate_for_heldout(objective: JointObjective, data: PtychoTomoData, options: ReconstructOptions,
                          tv_beta: float, iterations: int, groups: list, comm: Comm = SOLO) -> PtychoTomoData:
    """With probe, positions (...) refined and ``--tv auto``: a joint run with the fixed weights first, so
    that the path of weights is scored against a refined probe and refined windows, not the file's
    (a path run with a wrong probe or wrong positions ranks weights by how well they hide those
    errors).  Leaves the groups refined in ``objective``'s model and returns ``data`` with the
    refined positions, from which the held-out frames' objective is built; the path itself starts
    again from an empty volume, so the held-out frames shaped nothing but their own windows and
    (as 5 % of the frames) the shared probe.  Without groups: ``data`` unchanged, no extra run."""
    from .solvers.heldout import held_out_frames

    if not groups or held_out_frames(data, options.seed, comm)[1]:  # no groups, or no path (too few frames)
        return data
    stepper = make_stepper(objective, replace(options, method="joint"), tv_beta, progress=False, comm=comm,
                           groups=groups)
    model = objective.model
    u0 = torch.zeros(model.volume_shape, dtype=model.complex_dtype, device=model.device)
    if comm.is_main:
        log.info("--tv auto: refining %s with the fixed weights before the path of weights",
                 ",".join(g.name for g in groups))
    result = iterate(stepper, u0, iterations, objective.scaling.to_u, tolerance=options.tolerance, progress=False,
                     description="joint (calibration for --tv auto)", main=comm.is_main, comm=comm)
    objective.calibration_iterations = len(result.history)
    return with_model_positions(data, model)


def with_model_positions(data: PtychoTomoData, model) -> PtychoTomoData:
    """``data`` with its valid windows at the model's current (refined) positions."""
    positions = model.unpadded(model.positions).numpy()
    return replace(data, positions=np.where(data.valid_or_all()[..., None], positions, data.positions))


def held_out_weights(objective: JointObjective, data: PtychoTomoData, options: ReconstructOptions, tv_beta: float,
                     iterations: int, comm: Comm = SOLO, sequential=None, new_stepper=None):
    """``--tv auto``: the weights of the lowest held-out misfit along a path scaled from the fixed ones
    (the joint method's path, or ``sequential``'s own: solvers.heldout.choose_weights)."""
    from .solvers.heldout import choose_weights

    probe = (objective.model.probe * objective.probe_max).cpu().numpy()
    choice = choose_weights(
        objective, data, options.tv_delta, tv_beta,
        dict(name=options.optimizer, alpha0=options.alpha0, eps=options.eps, learning_rate=options.learning_rate),
        options.nonnegative, iterations, options.tolerance, seed=options.seed, comm=comm,
        build_objective=lambda subset: held_frames_objective(objective, subset, options, comm, probe),
        sequential=sequential, new_stepper=new_stepper)
    if choice.note and comm.is_main:
        log.warning(choice.note)
    return choice


def held_frames_objective(objective: JointObjective, subset: PtychoTomoData, options: ReconstructOptions,
                          comm: Comm, probe: np.ndarray) -> JointObjective:
    """The objective of the held-out frames alone, with ``objective``'s (possibly refined) probe and
    per-angle incident flux; ``subset`` carries the windows' (possibly refined) positions."""
    held = build_objective(subset, replace(options, refine="none"), comm, probe=probe)
    if objective.model.angle_scale is not None:
        held.model.angle_scale = objective.model.angle_scale.clone()
    return held


def final_fit(objective: JointObjective, stepper, result, data, loss: str, comm: Comm = SOLO):
    """The data misfit at the end (count units) against photon noise: (record, warning or None).

    The joint methods are judged by their volume's model; ``--method ptycho`` by its
    transmissions (the last sweep's misfit, which its history already holds)."""
    from .diagnostics import fit_quality
    from .solvers.baselines import Ptycho

    if isinstance(stepper, Ptycho):
        raw = result.history.last("cost") if len(result.history) else float("nan")
    else:
        raw = objective.value(result.u) / objective.scaling.cost
    return fit_quality(raw * objective.probe_max**2, data, loss, comm)


def refined_unknowns(objective: JointObjective, groups: list, stepper, comm: Comm = SOLO) -> dict:
    """The Reconstruction fields of what was refined besides the volume (FORMAT.md's optional ones)."""
    from .solvers.baselines import Ptycho, gather_angles

    model, out = objective.model, {}
    if any(g.name == "probe" for g in groups):
        out["probe"] = (model.probe * objective.probe_max).cpu().numpy().astype(np.complex64)
    for group in groups:
        if group.name == "positions":
            out["positions"] = gather_angles(comm, group.refined_positions()).numpy()
        if group.name == "shifts":
            out["angle_shifts"] = gather_angles(comm, group.shifts).numpy()
        if group.name == "scale":  # no FORMAT.md field: an attribute, in /truth/angle_scale's units (counts)
            out.setdefault("parameters", {})["angle_intensity_scale"] = (gather_angles(comm, group.scale) ** 2).tolist()
    if isinstance(stepper, Ptycho):
        out["transmission"] = stepper.transmissions().numpy().astype(np.complex64)
    return out
