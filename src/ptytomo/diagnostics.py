"""What the data and the fit say: the survey of a data set before a run (dose, the cost it calls for,
overlap, angles, illumination) and the final misfit against what photon noise alone leaves.

For Poisson counts n with mean lambda, the amplitude misfit (sqrt(n) - sqrt(lambda))^2 has
expectation close to 1/4 wherever lambda is a few photons or more (the variance of sqrt of a
Poisson variable), and the Poisson deviance used by ``--loss poisson`` (half the usual
deviance) close to 1/2: both fall towards 0 in pixels that receive almost nothing.  A fit
whose misfit stays many times above that leaves structure in the data unexplained: a wrong
probe, wrong positions, misaligned projections, or frames in the other sign convention.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .distributed import SOLO, Comm
from .io import PtychoTomoData
from .operators.tomo import slab_edges
from .physics import depth_of_field_m
from .scan import linear_overlap, probe_diameter_estimate, probe_intensity, step_estimate
from .stream import _angle_chunks, frame_sums, frames_are_counts

# Expected misfit per pixel at high counts, per loss (intensity: the count itself, see below).
NOISE_PER_PIXEL = {"amplitude": 0.25, "poisson": 0.5}
# A misfit this many times the noise expectation earns a warning.
BAD_FIT_RATIO = 10.0


def expected_noise_misfit(data, loss: str) -> float:
    """Sum over this rank's measured pixels of the misfit Poisson noise alone would leave."""
    valid = data.valid_or_all()
    mask = None if data.mask is None else np.asarray(data.mask, dtype=bool)
    total = 0.0
    for angles, frames in _angle_chunks(data, 256 * 2**20):
        counts = np.asarray(frames, dtype=np.float64)[valid[angles]]
        if mask is not None:
            counts = counts[:, mask]
        if loss == "intensity":
            total += float(counts.sum())  # Var(n) = lambda
        else:
            total += float(np.sum(NOISE_PER_PIXEL[loss] * -np.expm1(-counts)))
    return total


def fit_quality(misfit_counts: float, data, loss: str, comm: Comm = SOLO) -> tuple[dict, str | None]:
    """(parameters to record, a warning line or None) for a final data misfit in count units."""
    import torch

    noise = float(comm.sum(torch.tensor(expected_noise_misfit(data, loss), dtype=torch.float64)))  # all ranks
    ratio = misfit_counts / noise if noise > 0 else float("inf")
    record = {"final_misfit": misfit_counts, "noise_misfit": noise, "misfit_to_noise": ratio}
    warning = None
    if ratio > BAD_FIT_RATIO:
        warning = (f"the final misfit is {ratio:.3g}x what photon noise alone would leave: the model does not "
                   "explain the data; likely causes: the probe (try --refine probe, --probe-modes 3, "
                   "--probe-init mean-pattern with --probe-defocus for a defocused zone plate), the scan positions "
                   "(--refine probe,positions), misaligned projections, or frames in the other sign convention "
                   "(ptytomo import --conjugate)")
    return record, warning


PROPAGATIONS = ("auto", "projection", "multislice")


@dataclass
class Propagation:
    """The forward model's propagation through the sample (:func:`choose_propagation`)."""

    model: str  # projection | multislice
    slices: int  # slabs of the multislice model (1 for the projection model)
    depths_of_field: float  # the volume's thickness across the beam over the depth of field
    depth_of_field_m: float
    note: str | None = None  # a warning: a thick sample under a projection-based method or model

    def options(self) -> dict:
        """The ReconstructOptions fields this resolves (``slices`` 0 for the projection model)."""
        return dict(propagation=self.model, slices=self.slices if self.model == "multislice" else 0)


def thickness_in_depths_of_field(geometry) -> tuple[float, float]:
    """(the volume's thickness across the beam in depths of field, the depth of field in metres).

    The thickness is the volume's width in the rotation plane, max(Ny, Nx) voxels: the most the beam can cross
    at the angles where it is shortest (a sample that fills less of the box is thinner); the depth of field is
    5.2 dx^2 / lambda at the voxel size (physics.depth_of_field_m)."""
    _, ny, nx = geometry.volume_shape
    depth = depth_of_field_m(geometry.voxel_size_m, geometry.energy_kev)
    return max(ny, nx) * geometry.voxel_size_m / depth, depth


def auto_slices(geometry) -> int:
    """``--slices auto``: slabs no thicker than the depth of field over the slabs' span (which holds the
    volume's diagonal, operators.tomo.slab_edges)."""
    edges = slab_edges(geometry.volume_shape, 1)
    span = float(edges[-1] - edges[0]) * geometry.voxel_size_m
    return max(1, math.ceil(span / depth_of_field_m(geometry.voxel_size_m, geometry.energy_kev)))


def choose_propagation(geometry, requested: str, slices: int, joint: bool) -> Propagation:
    """``--propagation auto``: the multislice model (``--slices`` slabs, or :func:`auto_slices`) where the
    volume is thicker than the depth of field, the projection approximation where it is not; only the joint
    method has a volume inside its ptychography to propagate through, so the others stay projection-based
    and say so on thick data."""
    depths, depth = thickness_in_depths_of_field(geometry)
    thick = depths > 1.0
    model = requested if requested != "auto" else ("multislice" if (thick or slices > 0) and joint else "projection")
    note = None
    if thick and model == "projection":
        note = (f"the volume is {depths:.3g} depths of field thick (5.2 dx^2/lambda = {depth * 1e9:.3g} nm): the "
                "projection approximation does not hold" + ("; --propagation multislice models the propagation"
                                                             if joint else "; only --method joint models the "
                                                             "propagation through it (--propagation multislice)"))
    count = (slices or auto_slices(geometry)) if model == "multislice" else 1
    return Propagation(model=model, slices=count, depths_of_field=depths, depth_of_field_m=depth, note=note)


@dataclass
class Survey:
    """What a run needs to know of its data before it starts (:func:`survey`)."""

    counts: float  # median photons per frame, over all ranks
    loss: str  # the cost of the run (--loss auto resolved by choose_loss)
    propagation: Propagation  # the forward model (--propagation auto resolved by choose_propagation)
    warnings: list[str]  # one line per way the data lie outside what the defaults handle well (assess)


def survey(data: PtychoTomoData, options, comm: Comm = SOLO) -> Survey:
    """The first stage of a reconstruction: the frames' dose (one pass over them serves every use), the
    cost ``options.loss`` names (``auto``: :func:`choose_loss`), the propagation model (:func:`choose_propagation`)
    and the warnings of :func:`assess`."""
    counts = median_frame_counts(data, comm)
    chosen = choose_loss(data, comm, counts) if options.loss == "auto" else options.loss
    propagation = choose_propagation(data.geometry, options.propagation, options.slices, options.method == "joint")
    warnings = assess(data, counts, comm) + ([propagation.note] if propagation.note else [])
    return Survey(counts=counts, loss=chosen, propagation=propagation, warnings=warnings)


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
    the TV path cannot: there the amplitude cost is the better (docs/benchmarks/loss.md)."""
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
