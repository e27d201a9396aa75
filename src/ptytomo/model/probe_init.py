"""The probe a run starts from: the file's, a guess (mean pattern, disc, Gaussian), or the best of a search.

``--probe-init`` names the start (:func:`parse_probe_init`); :func:`initial_probe` builds it, propagates
it by ``--probe-defocus``, rescales it to the measured counts, searches around a file's probe that
contradicts the data (:mod:`.probe_search`) and adds or drops incoherent modes.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import torch

from ..distributed import SOLO
from ..errors import PtytomoError
from ..physics import wavelength_m
from ..scan import disc_probe, probe_from_mean_pattern
from ..stream import mean_pattern
from . import probe_search
from .probe import frame_power, orthogonal_modes, propagate, rescale_to_counts

log = logging.getLogger("ptytomo")

# Power of each added mode, as a fraction of the first, before refinement starts.
NEW_MODE_POWER = 0.05
PROBE_INITS = ("auto", "file", "mean-pattern", "disc", "gaussian")


def parse_probe_init(text: str) -> tuple[str, float]:
    """``auto`` | ``file`` | ``mean-pattern`` | ``disc:D`` | ``gaussian:D`` (D: diameter in pixels, FWHM for
    Gaussians).  ``auto``: the file's probe, or where its far field contradicts the data the best of a
    search (:mod:`.probe_search`)."""
    kind, _, value = text.partition(":")
    if kind not in PROBE_INITS:
        raise PtytomoError(f"--probe-init {text!r}: choose auto, file, mean-pattern, disc:D or gaussian:D")
    if kind in ("disc", "gaussian"):
        try:
            diameter = float(value)
        except ValueError:
            raise PtytomoError(f"--probe-init {text!r}: {kind} needs a diameter in pixels, e.g. {kind}:20") from None
        if not (math.isfinite(diameter) and diameter > 0):
            raise PtytomoError(f"--probe-init {text!r}: the diameter must be > 0")
        return kind, diameter
    if value:
        raise PtytomoError(f"--probe-init {text!r}: {kind} takes no value")
    return kind, 0.0


def initial_probe(data, init: str, n_modes: int, seed: int = 0, comm=None, defocus_m: float = 0.0,
                  search=None) -> tuple[np.ndarray, list[str]]:
    """(K, M, M) complex128 starting modes and the notes to report (rescaling, a search, added modes),
    propagated by ``defocus_m`` metres (:func:`propagate`) when it is not 0.

    ``init`` ``auto`` is ``file`` unless ``search`` is given (a dict of :func:`.probe_search.searched_probe`'s
    ``loss``, ``device``, ``dtype``: the run refines the probe) and the file's probe's far field
    disagrees with the mean pattern (:data:`.probe_search.AGREEMENT`); then the search's best start.
    ``comm`` joins the ranks of a distributed run (each holds some angles): the statistics
    of the frames are global, so every rank starts from the same probe."""
    comm = comm or SOLO
    kind, diameter = parse_probe_init(init)
    from_file = kind in ("file", "auto")
    m = data.detector_size
    notes = []
    if from_file:
        modes = np.asarray(data.probe_modes, dtype=np.complex128)
    elif kind == "mean-pattern":
        modes = mean_pattern_probe(data, comm)[None]
    elif kind == "disc":
        modes = disc_probe(m, diameter).astype(np.complex128)[None]
    else:
        modes = gaussian_probe(m, diameter)[None]
    if not from_file:
        notes.append(f"probe initialised from {init}")
    if defocus_m:
        modes = propagate(modes, defocus_m, wavelength_m(data.geometry.energy_kev), data.geometry.voxel_size_m)
        notes.append(f"probe propagated by {defocus_m:.4g} m (--probe-defocus)")
    modes = rescale_to_counts(modes, frame_power(data, comm), notes, rescale_always=not from_file)
    if kind == "auto" and search is not None and not defocus_m:
        pattern = global_mean_pattern(data, comm)
        if probe_search.far_field_agreement(modes, pattern, data.mask) < probe_search.AGREEMENT:
            modes, found = probe_search.searched_probe(data, modes, pattern, comm=comm, log=log.debug, **search)
            notes.extend(found)
    n_modes = n_modes or modes.shape[0]
    if n_modes < modes.shape[0]:
        modes = modes[:n_modes]
    elif n_modes > modes.shape[0]:
        modes = add_modes(modes, n_modes, seed)
        notes.append(f"{n_modes - len(data.probe_modes) if from_file else n_modes - 1} probe mode(s) added "
                     f"({NEW_MODE_POWER:.0%} of the first's power each) from Hermite-Gauss perturbations")
    return modes, notes


def mean_pattern_probe(data, comm) -> np.ndarray:
    """sqrt of the mean diffraction pattern with a flat phase, transformed back to the sample plane."""
    return probe_from_mean_pattern(global_mean_pattern(data, comm))


def global_mean_pattern(data, comm) -> np.ndarray:
    """The mean diffraction pattern (M, M) of the valid frames of all ranks."""
    count = comm.total(int(data.valid_or_all().sum()))
    local = torch.from_numpy(mean_pattern(data) * data.valid_or_all().sum())
    return comm.sum(local).numpy() / max(count, 1)


def gaussian_probe(m: int, fwhm: float) -> np.ndarray:
    u = np.arange(m) - (m - 1) / 2
    sigma = fwhm / (2 * math.sqrt(2 * math.log(2)))
    return np.exp(-(u[:, None] ** 2 + u[None, :] ** 2) / (2 * sigma**2)).astype(np.complex128)


def add_modes(modes: np.ndarray, n_modes: int, seed: int = 0) -> np.ndarray:
    """Extra modes from the first: it times the Hermite polynomials x, y, xy, x^2-1, ...
    (in units of its rms width), each with NEW_MODE_POWER of its power, then orthogonalised."""
    first = modes[0]
    m = first.shape[-1]
    intensity = np.abs(first) ** 2
    u = np.arange(m, dtype=np.float64)
    total = intensity.sum()
    rows, cols = intensity.sum(axis=1), intensity.sum(axis=0)
    r0, c0 = (rows @ u) / total, (cols @ u) / total
    sr = max(math.sqrt(rows @ (u - r0) ** 2 / total), 1.0)
    sc = max(math.sqrt(cols @ (u - c0) ** 2 / total), 1.0)
    y, x = (u[:, None] - r0) / sr, (u[None, :] - c0) / sc
    hermite = [x + 0 * y, y + 0 * x, x * y, x**2 - 1 + 0 * y, y**2 - 1 + 0 * x]
    rng = np.random.default_rng(seed)
    extra = []
    for index in range(n_modes - modes.shape[0]):
        shape = hermite[index] if index < len(hermite) else rng.standard_normal((m, m))
        mode = first * shape
        mode *= math.sqrt(NEW_MODE_POWER * total / max(np.sum(np.abs(mode) ** 2), 1e-300))
        extra.append(mode)
    stacked = np.concatenate([modes, np.stack(extra)])
    return orthogonal_modes(torch.from_numpy(stacked)).numpy()
