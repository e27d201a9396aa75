"""Every option of a reconstruction (:class:`ReconstructOptions`), checked in one place.

The CLI maps ``ptytomo reconstruct``'s flags one-to-one onto these fields, and the reconstruction
file stores every one of them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace

from .errors import PtytomoError
from .model import GROUPS
from .model.probe_init import parse_probe_init
from .diagnostics import PROPAGATIONS, choose_propagation
from .objective import GAUSS_NEWTON_LOSSES, LOSSES
from .physics import check_compound
from .solvers import OPTIMIZERS
from .solvers.methods import METHODS

# --refine auto (the default): measured data come with neither an exact probe, nor exact positions, nor
# aligned angles; the per-angle incident flux (scale) is asked for by name
AUTO_REFINE = ("probe", "positions", "shifts")
TOMOGRAPHY_SOLVERS = ("iterative", "fbp")
RHO_UPDATES = ("fixed", "balance")
TV_CHOICES = ("fixed", "auto")
AUTO_MAX_SHIFT, AUTO_SHIFT_FRACTION = 10.0, 0.1  # --max-shift 0 (auto): pixels, fraction of the volume
POSITION_SCALES = ("auto", "pinned", "free")
STEPPED_LOSSES = GAUSS_NEWTON_LOSSES + ("auto",)  # losses the groups and sweeps can step with (auto is one of them)


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
    iterations: int = 0  # 0: the method's default (solvers.methods: Method.default_iterations)
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
    ptycho_iterations: int = 0  # sequential: sweeps before the tomography; admm: per outer iteration; 0: default
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
    # and 10 % of the volume's width or height (measured series drift by tens of pixels)
    max_shift: float = 0.0
    coarse_align: str = "on"  # with --refine shifts: projection matching before the loop (solvers/alignment.py)
    # the forward model's propagation through the sample: projection (one plane), multislice (slab by slab,
    # the joint method only), or auto: multislice where the volume is thicker than the depth of field
    # (diagnostics.choose_propagation)
    propagation: str = "auto"
    slices: int = 0  # multislice slabs; 0: auto (each at most one depth of field thick); N > 0 asks for multislice
    # a chemical formula (SiO2): the file records the compound's mass density from delta and from beta beside
    # the electron density (physics.physical_units); it changes nothing in the reconstruction
    compound: str = ""

    def refined(self) -> list[str]:
        """The groups named by ``refine``, in their canonical order."""
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
        parse_probe_init(self.probe_init)
        check_compound(self.compound)
        if not math.isfinite(self.probe_defocus):
            raise PtytomoError(f"--probe-defocus must be a finite number of metres, got {self.probe_defocus}")
        if self.refined() and self.loss not in STEPPED_LOSSES:
            raise PtytomoError(f"--refine {self.refine} takes Gauss-Newton steps for --loss "
                               f"{' or '.join(GAUSS_NEWTON_LOSSES)}; use --refine none with --loss {self.loss}")
        if self.position_scale not in POSITION_SCALES:
            raise PtytomoError(f"--position-scale {self.position_scale!r}: choose one of {', '.join(POSITION_SCALES)}")
        if self.propagation not in PROPAGATIONS:
            raise PtytomoError(f"--propagation {self.propagation!r}: choose one of {', '.join(PROPAGATIONS)}")
        if self.slices < 0:
            raise PtytomoError(f"--slices must be >= 0 (0: auto), got {self.slices}")
        if self.slices > 0 and self.propagation == "projection":
            raise PtytomoError(f"--slices {self.slices} asks for multislice; --propagation projection has one plane")
        if self.method != "joint" and (self.propagation == "multislice" or self.slices > 0):
            raise PtytomoError(f"--propagation multislice is the joint method's: --method {self.method} is "
                               "projection-based (its ptychography has no volume to propagate through)")
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

    def with_propagation(self, geometry) -> "ReconstructOptions":
        """These options with ``--propagation auto`` and ``--slices 0`` resolved for ``geometry``
        (diagnostics.choose_propagation), as a reconstruction of data of that geometry resolves them."""
        found = choose_propagation(geometry, self.propagation, self.slices, self.method == "joint")
        return replace(self, **found.options())

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
