"""``--probe-init auto`` (the default): the file's probe, unless its far field contradicts the data.

A probe whose far-field modulus ``sqrt(sum_k |F P_k|^2)`` does not look like the square root of the
mean diffraction pattern (normalised inner product below :data:`AGREEMENT`) is not the beam that made
the data: a nominal flat disc written for a focused beam, a pinhole's guess for a zone plate.  The
mean pattern gives the beam's far-field modulus (the pupil: exactly so for a weak object, and its
bright field for any), but not its phase, and for a focused beam that phase is mostly the defocus
(the sample sits some distance from the focus).  Refinement alone does not find it where the object
is weak: the probe's far-field phase is measured only through the object's interference with it
(measured on 32^3 of SiO2 at 8 keV, about 0.04 rad of phase: from a nominal disc the refined probe's
overlap with the truth stayed at 0.61 and delta at 0.78, against 0.35 with the true probe).

So the candidates are the file's probe and the mean pattern's pupil at its focus and propagated by
distances of both signs (:func:`defocus_distances`: geometric beams of BEAM_FRACTIONS of the window),
each scored by the data: :data:`SWEEPS` sweeps of 2D ptychography on a few angles spread over the
scan (:data:`SEARCH_ANGLES`), refining the probe from the third sweep with the free space around the
volume's projection pinned to O = 1 (as the coarse alignment does), and the lowest data misfit (in
counts) wins.  Its refined probe is the run's start.
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import torch

from ..distributed import SOLO
from ..objective import JointObjective
from ..operators import JointModel
from ..operators.ptycho import far_field
from ..physics import wavelength_m
from ..scan import probe_from_mean_pattern
from ..solvers.subproblems import PtychographyRetrieval
from ..stream import measured_amplitudes
from .probe import ProbeGroup, ProbeOptions, propagate, rescale_to_counts

# Far-field agreement (normalised inner product of the amplitudes) below which the file's probe is
# searched around.  Measured: correct probes 0.967-1.0 (strong and weak objects, a zone plate's pupil
# guess without its astigmatism or modes); nominal discs for focused beams 0.36-0.72.
AGREEMENT = 0.9
# Geometric beam diameters of the defocused candidates, fractions of the window (both signs of defocus).
BEAM_FRACTIONS = (0.25, 0.4, 0.55, 0.7)
SEARCH_ANGLES = 4  # angles (spread over the scan) the candidates are scored on
SWEEPS = 40  # ptychography sweeps per candidate (the probe refined from sweep 3)
# The bright field of the mean pattern: pixels above this fraction of its brightest.
BRIGHT_FIELD = 0.1


def far_field_agreement(modes: np.ndarray, mean_pattern: np.ndarray, mask=None) -> float:
    """Normalised inner product of ``sqrt(sum_k |F P_k|^2)`` and ``sqrt(mean_pattern)`` over the detector's
    good pixels: 1 when the probe's far field has the data's shape (scale does not count)."""
    measured = np.sqrt(np.maximum(np.asarray(mean_pattern, dtype=np.float64), 0.0))
    model = np.sqrt((far_field(torch.from_numpy(np.asarray(modes, dtype=np.complex128))).abs() ** 2).sum(0).numpy())
    weight = np.ones_like(measured) if mask is None else np.asarray(mask, dtype=np.float64)
    norm = math.sqrt(float((measured**2 * weight).sum()) * float((model**2 * weight).sum()))
    return float((measured * model * weight).sum()) / norm if norm > 0 else 0.0


def bright_field_radius(mean_pattern: np.ndarray) -> float:
    """Outer radius (far-field pixels, from the centred zero frequency) of the mean pattern's bright field:
    the 99th percentile of the radii of pixels above BRIGHT_FIELD of the brightest."""
    pattern = np.asarray(mean_pattern, dtype=np.float64)
    m = pattern.shape[-1]
    q = np.arange(m) - m // 2
    radius = np.hypot(q[:, None], q[None, :])
    bright = pattern > BRIGHT_FIELD * pattern.max()
    return max(float(np.percentile(radius[bright], 99)), 1.0) if bright.any() else m / 4


def defocus_distances(mean_pattern: np.ndarray, wavelength_m: float, pixel_m: float) -> list[float]:
    """Propagation distances (metres, both signs) that spread the pupil's edge rays into a geometric beam of
    BEAM_FRACTIONS of the window: a far-field radius of ``r`` pixels is the frequency ``r / (M dx)``, whose
    rays leave the axis at ``lambda r / (M dx)`` per metre, so a beam ``D`` pixels wide is ``z = D M dx^2 /
    (2 lambda r)`` from the focus."""
    m = mean_pattern.shape[-1]
    edge = bright_field_radius(mean_pattern)
    distances = [fraction * m * m * pixel_m**2 / (2 * wavelength_m * edge) for fraction in BEAM_FRACTIONS]
    return [sign * z for z in distances for sign in (1.0, -1.0)]


def search_angles(n_angles: int, count: int = SEARCH_ANGLES) -> list[int]:
    """``count`` angle indices spread evenly over ``n_angles`` (all of them when there are fewer)."""
    if n_angles <= count:
        return list(range(n_angles))
    return sorted({int(round(i)) for i in np.linspace(0, n_angles - 1, count)})


def subset(data, angles: list[int], comm=None):
    """``data`` restricted to ``angles`` (frames read one angle at a time: streamed files work too).  With
    ``comm``, ``angles`` count over all ranks' angles (each rank holding a contiguous share in rank order)
    and every rank returns all of them: the search then runs alike on every rank whatever their number, so
    a run resumed on another number of ranks starts from the same probe."""
    comm = comm or SOLO
    offset = int(comm.gather(np.array([data.n_angles]))[: comm.rank].sum())
    local = [a - offset for a in angles if offset <= a < offset + data.n_angles]
    frames = np.stack([np.asarray(data.intensities[a:a + 1], dtype=np.float32)[0] for a in local]) if local else \
        np.zeros((0, *data.intensities.shape[1:]), dtype=np.float32)
    valid = data.valid_or_all()[local].astype(np.uint8)
    return replace(data, intensities=comm.gather(frames), positions=comm.gather(np.asarray(data.positions)[local]),
                   angles=comm.gather(np.asarray(data.angles)[local]), valid=comm.gather(valid).astype(bool),
                   truth=None)


def score(data, modes: np.ndarray, loss: str, device, dtype, sweeps: int = SWEEPS):
    """(misfit in counts, refined modes) after ``sweeps`` sweeps of 2D ptychography of ``data`` from
    ``modes``, the probe refined from the third sweep with the free space outside the volume's projection
    pinned to O = 1."""
    g = data.geometry
    model = JointModel(g.volume_shape, g.voxel_size_m, g.energy_kev, data.angles, data.positions, modes,
                       valid=data.valid, device=device, dtype=dtype, pruned=False)
    amplitudes = torch.from_numpy(measured_amplitudes(data)).to(device=device, dtype=dtype)
    objective = JointObjective(model, amplitudes, loss, data.mask)
    retrieval = PtychographyRetrieval(objective)
    psi = retrieval.initial()
    groups = [ProbeGroup(model, ProbeOptions(enabled=True))]
    for sweep in range(sweeps):
        retrieval.sweep(psi, groups=groups, index=sweep)
    cost = retrieval.sweep(psi)  # the cost of the last update's object and probe
    refined = (model.probe * objective.probe_max).cpu().numpy().astype(np.complex128)
    return cost * objective.probe_max**2, refined


def searched_probe(data, modes: np.ndarray, mean_pattern: np.ndarray, loss: str, device, dtype, comm=None,
                   log=None) -> tuple[np.ndarray, list[str]]:
    """The best start of the file's probe ``modes`` and the mean pattern's pupil, propagated by
    :func:`defocus_distances` (module docstring), refined on a few angles, and the notes to report."""
    comm = comm or SOLO
    wavelength = wavelength_m(data.geometry.energy_kev)
    pupil = probe_from_mean_pattern(mean_pattern)[None]
    power = float(np.sum(np.abs(modes) ** 2))
    candidates = {"the file's probe": modes}
    for distance in [0.0] + defocus_distances(mean_pattern, wavelength, data.geometry.voxel_size_m):
        propagated = propagate(pupil, distance, wavelength, data.geometry.voxel_size_m) if distance else pupil
        name = f"the mean pattern propagated by {distance:.3g} m" if distance else "the mean pattern at its focus"
        candidates[name] = rescale_to_counts(propagated, power, [], rescale_always=True)
    part = subset(data, search_angles(comm.total(data.n_angles)), comm)  # the same angles on every rank
    scores, refined = {}, {}
    for name, start in candidates.items():
        scores[name], refined[name] = score(part, start, loss, device, dtype)
        if log is not None:
            log(f"probe search: {name}: misfit {scores[name]:.6g}")
    best = min(scores, key=scores.get)
    note = (f"the file's probe disagrees with the mean diffraction pattern: searched {len(candidates)} starting "
            f"probes on {part.n_angles} angles, {best} fits best (misfit {scores[best]:.4g} against "
            f"{scores[next(iter(candidates))]:.4g} for the file's; --probe-init file keeps the file's)")
    return refined[best], [note]
