"""The probe as a parameter group: K incoherent modes shared by all angles.

Gradient: with ``d cost = 2 Re <back, d exit wave>`` and exit wave ``P_k W``,
``d cost / d P_k = sum over frames of conj(W) back_k`` (undoing each frame's
sub-pixel shift of the probe).  Step: that gradient divided by the
Gauss-Newton diagonal ``sum over frames |W|^2`` with an rPIE-style floor
(Maiden, Johnson & Li, Optica 4, 736 (2017)), i.e. the simultaneous form of
the PIE family's probe update.  After each step the modes are made
orthogonal (eigenvectors of their Gram matrix), sorted by power, and each
mode's global phase (invisible in the data) is fixed so that its sum is real
and positive.  The probe-object scale is pinned by the free space around the
projected volume (O = 1 there) and by non-negativity (the object cannot
amplify); the mean position is pinned by the positions group.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import PtytomoError
from ..physics import wavelength_m
from ..scan import disc_probe, probe_from_mean_pattern
from .groups import GroupOptions, ParameterGroup

log = logging.getLogger("ptytomo")

# rPIE-style floor of the probe step's denominator, as a fraction of its maximum.
PROBE_FLOOR = 0.1
# Power of each added mode, as a fraction of the first, before refinement starts.
NEW_MODE_POWER = 0.05
# A probe whose power differs from the measured counts by more than this factor is rescaled.
POWER_TOLERANCE = 2.0
PROBE_INITS = ("auto", "file", "mean-pattern", "disc", "gaussian")


@dataclass
class ProbeOptions(GroupOptions):
    start: int = 3  # the volume first takes a few steps: an empty object lets the probe absorb the data
    updates: int = 5  # per joint iteration; measured: probe error 0.21 -> 0.013 in 60 iterations (docs/refinement.md)
    settled: float = 1e-3  # relative change per update below which the probe counts as settled


class ProbeGroup(ParameterGroup):
    name = "probe"

    def __init__(self, model, options: ProbeOptions):
        super().__init__(model, options)
        self.grad = None
        self.curvature = None
        self.change = math.inf  # relative change of the modes at the latest update
        self.diagnostics: dict[str, float] = {}

    def begin(self) -> None:
        self.grad = torch.zeros_like(self.model.probe)
        self.curvature = torch.zeros(self.model.probe.shape[-2:], dtype=self.model.real_dtype, device=self.model.device)

    def accumulate(self, residual) -> None:
        grad, curvature = residual.ptychography.probe_gradient(residual.transmission, residual.step_back())
        self.grad += grad
        self.curvature += curvature

    def finish(self, reduce) -> None:
        self.grad = reduce(self.grad)
        self.curvature = reduce(self.curvature)

    def update(self) -> None:
        denominator = (1 - PROBE_FLOOR) * self.curvature + PROBE_FLOOR * self.curvature.max().clamp_min(1e-30)
        probe = self.model.probe - self.options.step * self.grad / denominator
        probe = orthogonal_modes(probe)
        self.change = float(torch.linalg.vector_norm(probe - self.model.probe)
                            / torch.linalg.vector_norm(self.model.probe).clamp_min(1e-30))
        self.model.set_probe(probe)
        powers = (probe.abs() ** 2).sum(dim=(-2, -1))
        self.diagnostics = {"probe_mode0_power_fraction": float(powers[0] / powers.sum()), "probe_change": self.change}

    @property
    def settled(self) -> bool:
        return self.change < self.options.settled

    def state_dict(self) -> dict:
        return {"probe": self.model.probe.cpu(), "change": self.change}

    def load_state_dict(self, state: dict) -> None:
        self.model.set_probe(state["probe"])
        self.change = float(state["change"])


def orthogonal_modes(probe: torch.Tensor) -> torch.Tensor:
    """Modes (K, M, M) made orthogonal (same summed intensity), strongest first, phase-fixed."""
    k, m = probe.shape[0], probe.shape[-1]
    flat = probe.reshape(k, -1)
    if k > 1:
        gram = flat @ flat.conj().T
        _, vectors = torch.linalg.eigh(gram)  # ascending eigenvalues
        flat = vectors.conj().T.flip(0) @ flat  # rows: modes with power = eigenvalue, descending
    total = flat.sum(dim=1, keepdim=True)
    phase = torch.where(total.abs() > 0, total / total.abs().clamp_min(1e-30), torch.ones_like(total))
    return (flat * phase.conj()).reshape(k, m, m)


# ---------------------------------------------------------------------------------------------
# Initial guesses
# ---------------------------------------------------------------------------------------------


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
    from ..distributed import SOLO
    from . import probe_search

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


def propagate(modes: np.ndarray, distance_m: float, wavelength: float, pixel_m: float) -> np.ndarray:
    """The modes propagated by ``distance_m`` through free space (paraxial, angular spectrum).

    FORMAT.md's sign (``O = exp(+i k P delta)``, far field ``fft2``) is that of waves ``exp(-i k z)``:
    a plane wave of transverse frequency f then gains ``exp(+i pi lambda z f^2)`` over z, so a focus
    propagated by z > 0 (the sample downstream of the focus) is the diverging
    ``exp(-i pi r^2 / (lambda z))``.  With ``--probe-init mean-pattern`` (the zone plate's or mirror's
    pupil, flat phase: the beam at its focus) this is the defocused beam the sample sees.  The transfer
    function is exact on the window's periodic grid; beams spreading past the window wrap around."""
    m = modes.shape[-1]
    f = np.fft.fftfreq(m, d=pixel_m)
    transfer = np.exp(1j * np.pi * wavelength * distance_m * (f[:, None] ** 2 + f[None, :] ** 2))
    return np.fft.ifft2(np.fft.fft2(modes, axes=(-2, -1)) * transfer, axes=(-2, -1))


def frame_power(data, comm) -> float:
    """The counts of a frame through free space, estimated from the data: the 95th percentile of the
    valid frames' sums (frames through the sample are darker; the brightest few may be outliers)."""
    from ..stream import frame_sums

    return free_space_counts(comm.gather(frame_sums(data)))


def free_space_counts(sums) -> float:
    """The counts of a frame through free space from frame sums: their 95th percentile (0 without any)."""
    return float(np.percentile(sums, 95)) if np.size(sums) else 0.0


def rescale_to_counts(modes: np.ndarray, counts: float, notes: list[str], rescale_always: bool) -> np.ndarray:
    power = float(np.sum(np.abs(modes) ** 2))
    if counts <= 0 or power <= 0:
        return modes
    ratio = counts / power
    if rescale_always or not (1 / POWER_TOLERANCE <= ratio <= POWER_TOLERANCE):
        if not rescale_always:
            notes.append(f"probe power {power:.3g} disagrees with the measured {counts:.3g} counts per frame "
                         f"({ratio:.3g}x): rescaled to them")
        modes = modes * math.sqrt(ratio)
    return modes


def mean_pattern_probe(data, comm) -> np.ndarray:
    """sqrt of the mean diffraction pattern with a flat phase, transformed back to the sample plane."""
    return probe_from_mean_pattern(global_mean_pattern(data, comm))


def global_mean_pattern(data, comm) -> np.ndarray:
    """The mean diffraction pattern (M, M) of the valid frames of all ranks."""
    from ..stream import mean_pattern

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
