"""Scan geometry: rotation angles, raster and Fermat-spiral positions, and the probe
(disc, focused band-limited, incoherent modes).

Positions follow FORMAT.md: ``(r, c)`` is the top-left corner of the M x M
window in projection-plane pixels (row along z, column along u).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from .errors import PtytomoError

SHIFT_AXES = ("both", "rows", "cols", "none")
GOLDEN_ANGLE = math.radians(137.508)
# Median nearest-neighbour distance of the spiral r = sqrt(n), theta = n * GOLDEN_ANGLE
# (measured on its first 2000 points): scaling r by step / this gives spacing ``step``.
FERMAT_NEIGHBOUR_DISTANCE = 1.68
MAX_PROBE_MODES = 10


def equally_spaced_angles(count: int, start: float = 0.0, stop: float = 2 * math.pi) -> np.ndarray:
    """``count`` angles over ``[start, stop)``; the endpoint is left out so a
    full turn does not measure the same projection twice."""
    if count < 1:
        raise PtytomoError(f"angle count must be >= 1, got {count}")
    if not stop > start:
        raise PtytomoError(f"angle range must have stop > start, got [{start}, {stop})")
    return start + (stop - start) * np.arange(count, dtype=np.float64) / count


def raster_centres(extent: int, step: int, offset: int) -> np.ndarray:
    """Probe-centre coordinates along one axis of a projection of ``extent`` pixels.

    The first centre lies in ``(-step, 0]`` and the last at or beyond
    ``extent - 1``, so every pixel row/column is within ``step/2`` of a centre
    whatever the offset; the count does not depend on the offset, which keeps
    the same number of positions at every angle.
    """
    count = math.ceil(max(extent - 2, 0) / step) + 2
    first = (offset % step) - step + 1
    return first + step * np.arange(count, dtype=np.float64)


def raster_positions(
    n_angles: int,
    projection_shape: tuple[int, int],
    step: int,
    detector_size: int,
    shift: int = 1,
    shift_axes: str = "both",
) -> np.ndarray:
    """Raster positions (A, J, 2) whose start moves by ``(a * shift) mod step``
    pixels at angle index ``a`` (the paper's "spiral": positions differ from
    angle to angle, which spreads the raster's border artefacts)."""
    if step < 1:
        raise PtytomoError(f"scan step must be >= 1 pixel, got {step}")
    if shift_axes not in SHIFT_AXES:
        raise PtytomoError(f"unknown shift axes {shift_axes!r}; choose one of {', '.join(SHIFT_AXES)}")
    n_rows, n_cols = projection_shape
    half = detector_size // 2  # integer corners; the disc centre is at (M-1)/2 in the window
    shift_rows = shift_axes in ("both", "rows")
    shift_cols = shift_axes in ("both", "cols")
    positions = []
    for a in range(n_angles):
        offset = (a * shift) % step
        rows = raster_centres(n_rows, step, offset if shift_rows else 0) - half
        cols = raster_centres(n_cols, step, offset if shift_cols else 0) - half
        rr, cc = np.meshgrid(rows, cols, indexing="ij")
        positions.append(np.stack([rr.ravel(), cc.ravel()], axis=-1))
    return np.stack(positions)


def fermat_positions(
    n_angles: int,
    projection_shape: tuple[int, int],
    step: float,
    detector_size: int,
    rng: np.random.Generator | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Fermat-spiral positions (A, J, 2) with mean spacing ``step`` and their valid flags (A, J).

    Centres follow ``r = c sqrt(n)``, ``theta = n * 137.508 deg`` around the
    projection's centre; every angle gets its own rotation and a sub-step
    offset of the spiral, so positions differ between angles.  Centres are
    kept within ``step / 2`` of the projection (each window touches it); the
    count then varies a little between angles, and shorter angles are padded
    with invalid entries (FORMAT.md's ``valid``).  ``valid`` is None when no
    padding was needed.  ``rng`` draws the rotations and offsets.
    """
    if not step > 0:
        raise PtytomoError(f"scan step must be > 0 pixels, got {step}")
    rng = np.random.default_rng(0) if rng is None else rng
    n_rows, n_cols = projection_shape
    margin = min(step / 2, (detector_size - 1) // 2)  # (M - 1) // 2 < M / 2: the window still touches
    scale = step / FERMAT_NEIGHBOUR_DISTANCE
    radius = math.hypot(n_rows + 2 * margin, n_cols + 2 * margin) / 2 + step  # + the offset's reach
    n = np.arange(math.ceil((radius / scale) ** 2) + 1, dtype=np.float64)
    centre = np.array([(n_rows - 1) / 2, (n_cols - 1) / 2])
    half = detector_size // 2  # the same corner convention as raster_positions
    per_angle = []
    for _ in range(n_angles):
        theta = n * GOLDEN_ANGLE + rng.uniform(0, 2 * math.pi)
        offset = rng.uniform(-step / 2, step / 2, size=2)
        points = centre + offset + scale * np.sqrt(n)[:, None] * np.stack([np.sin(theta), np.cos(theta)], axis=-1)
        inside = np.all((points >= -margin) & (points <= np.array([n_rows - 1, n_cols - 1]) + margin), axis=1)
        per_angle.append(points[inside] - half)
    count = max(len(p) for p in per_angle)
    positions = np.empty((n_angles, count, 2))
    valid = np.zeros((n_angles, count), dtype=bool)
    for a, points in enumerate(per_angle):
        positions[a, : len(points)] = points
        positions[a, len(points) :] = points[0]  # padding: any value that indexes safely
        valid[a, : len(points)] = True
    return positions, (None if valid.all() else valid)


def linear_overlap(step: float, probe_diameter: float) -> float:
    """Linear overlap ``1 - step/D`` of FORMAT.md (step 4, D 15 -> 73 %)."""
    return 1.0 - step / probe_diameter


def disc_probe(
    detector_size: int = 63,
    diameter: float = 15.0,
    soft_edge: float = 0.0,
    photons: float | None = None,
) -> np.ndarray:
    """Disc of constant phase centred in an M x M window.

    ``soft_edge`` is the width in pixels of a raised-cosine roll-off centred
    on the disc's edge (0 gives a hard disc).  With ``photons`` the probe is
    scaled so that an empty object gives that many photons per measurement
    (the unitary FFT keeps sum |P|^2).
    """
    if detector_size < 2:
        raise PtytomoError(f"detector size must be >= 2 pixels, got {detector_size}")
    if not 0 < diameter <= detector_size:
        raise PtytomoError(f"probe diameter must be in (0, detector size {detector_size}], got {diameter}")
    if soft_edge < 0:
        raise PtytomoError(f"probe soft edge must be >= 0, got {soft_edge}")
    centre = (detector_size - 1) / 2
    coords = np.arange(detector_size) - centre
    radius = np.hypot(coords[:, None], coords[None, :])
    edge = diameter / 2
    if soft_edge > 0:
        t = np.clip((radius - edge) / soft_edge + 0.5, 0.0, 1.0)
        amplitude = 0.5 * (1 + np.cos(np.pi * t))
    else:
        amplitude = (radius <= edge).astype(np.float64)
    probe = amplitude.astype(np.complex128)
    if photons is not None:
        probe = scale_probe(probe, photons)
    return probe.astype(np.complex64)


def centred_grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Integer frequency (or pixel) offsets from the centred layout's centre ``size // 2``, as (rows, cols)."""
    q = np.arange(size, dtype=np.float64) - size // 2
    return q[:, None], q[None, :]


def from_far_field(field: np.ndarray) -> np.ndarray:
    """Inverse of FORMAT.md's ``fftshift(fft2(., norm="ortho"))`` over the last two axes."""
    return np.fft.ifft2(np.fft.ifftshift(field, axes=(-2, -1)), norm="ortho")


def centre_crop(frames, size: int):
    """The central size x size of (..., H, W) far fields (numpy or torch) whose DC is at (H//2, W//2);
    DC lands at size//2 (what a smaller detector sees)."""
    height, width = frames.shape[-2:]
    top, left = height // 2 - size // 2, width // 2 - size // 2
    return frames[..., top:top + size, left:left + size]


def to_far_field(wave: np.ndarray) -> np.ndarray:
    """FORMAT.md's centred unitary far field over the last two axes."""
    return np.fft.fftshift(np.fft.fft2(wave, norm="ortho"), axes=(-2, -1))


def probe_from_mean_pattern(mean_pattern: np.ndarray) -> np.ndarray:
    """The initial probe when none is known: sqrt of the mean diffraction pattern with a flat phase,
    transformed back (FORMAT.md's inverse far field), so its photon count is the mean frame's."""
    amplitude = np.sqrt(np.maximum(np.asarray(mean_pattern, dtype=np.float64), 0.0))
    # A flat phase alone would put the probe at the window's corner, split over its four corners (the
    # window is a crop of the object, not a period of it): centre it like the disc.
    return from_far_field(amplitude * window_centre_ramp(amplitude.shape[-1]))


def window_centre_ramp(size: int) -> np.ndarray:
    """Far-field phase ramp that moves a field centred on pixel 0 to the window's centre ``(size - 1) / 2``."""
    q_rows, q_cols = centred_grid(size)
    return np.exp(-2j * np.pi * (q_rows + q_cols) * ((size - 1) / 2) / size)


def default_defocus(pupil: float, detector_size: int, fill: float = 0.6) -> float:
    """Defocus (rad at the pupil edge) whose geometric beam spans ``fill`` of the window.

    A phase ``W (q / q_edge)^2`` moves frequency ``q`` by ``M dphi/dq / (2 pi)``
    pixels, so the edge rays land ``2 W / (pi pupil)`` pixels from the axis:
    a geometric diameter of ``4 W / (pi pupil)``, set to ``fill * M``.
    """
    return fill * math.pi * pupil * detector_size / 4


def pupil_field(size: int, pupil_diameter_px: float, defocus: float) -> np.ndarray:
    """Far field of a focused probe on a ``size``-pixel grid: a hard circular pupil with defocus.

    The pupil is ``pupil_diameter_px`` far-field pixels wide (far-field pixels
    are the detector's whatever the real-space sampling) and carries the phase
    ``defocus * (q / q_edge)^2``; a ramp centres the probe at ``(size - 1) / 2``
    like the disc.
    """
    q_rows, q_cols = centred_grid(size)
    edge = pupil_diameter_px / 2
    radius = np.hypot(q_rows, q_cols)
    return np.where(radius <= edge, np.exp(1j * defocus * (radius / edge) ** 2), 0) * window_centre_ramp(size)


def focused_probe(size: int, pupil_diameter_px: float, defocus: float) -> np.ndarray:
    """Band-limited probe (complex128, unit power) that fills the window: the pupil field transformed back."""
    probe = from_far_field(pupil_field(size, pupil_diameter_px, defocus))
    return probe / np.sqrt(np.sum(np.abs(probe) ** 2))


def perturbation_exponents(count: int) -> list[tuple[int, int]]:
    """Monomial exponents (i, j) of u^i v^j by total degree: 1, u, v, u^2, uv, v^2, ... (Hermite-Gauss-like)."""
    exponents = []
    degree = 0
    while len(exponents) < count:
        exponents += [(degree - j, j) for j in range(degree + 1)]
        degree += 1
    return exponents[:count]


def orthonormal_modes(field: np.ndarray, u: np.ndarray, v: np.ndarray, count: int) -> np.ndarray:
    """``count`` orthonormal fields (K, n, n): ``field`` times 1, u, v, u^2, ... after Gram-Schmidt.

    Multiplying keeps the support of ``field`` (a disc stays a disc, a pupil
    stays band-limited), and mode 0 is ``field`` itself, normalised.
    """
    modes = []
    for i, j in perturbation_exponents(count):
        mode = field * (u**i) * (v**j)
        for earlier in modes:  # modified Gram-Schmidt: one projection at a time
            mode = mode - np.vdot(earlier, mode) * earlier
        norm = np.sqrt(np.sum(np.abs(mode) ** 2))
        if norm < 1e-8 * np.sqrt(np.sum(np.abs(field) ** 2)):
            raise PtytomoError(f"--probe-modes {count}: the probe has too few pixels for {count} independent modes")
        modes.append(mode / norm)
    return np.stack(modes)


def mode_powers(count: int, ratio: float, photons: float) -> np.ndarray:
    """Photons per mode: mode k holds ``ratio**k`` of mode 0's, all together ``photons``."""
    weights = ratio ** np.arange(count, dtype=np.float64)
    return photons * weights / weights.sum()


def weighted_modes(unit_modes: np.ndarray, ratio: float, photons: float) -> np.ndarray:
    """Orthonormal modes (K, n, n) scaled to the powers of :func:`mode_powers`."""
    powers = mode_powers(len(unit_modes), ratio, photons)
    return unit_modes * np.sqrt(powers)[:, None, None]


def orthogonalised(modes: np.ndarray) -> np.ndarray:
    """Orthogonal modes, strongest first, with the same summed intensity at every point of any frame.

    Only the sum ``sum_k |P_k><P_k|`` is measurable; its eigenvectors
    (an SVD of the stacked modes) carry the same intensities and are orthogonal.
    Each keeps the global phase of the input mode of the same rank (the SVD's is arbitrary).
    """
    k, n, _ = modes.shape
    flat = modes.reshape(k, n * n)
    _, singular, vh = np.linalg.svd(flat, full_matrices=False)
    eigen = singular[:, None] * vh
    overlap = np.sum(eigen.conj() * flat, axis=1)
    return (eigen * np.exp(1j * np.angle(overlap))[:, None]).reshape(k, n, n)


def scale_probe(probe: np.ndarray, photons: float) -> np.ndarray:
    """Scale ``probe`` so that ``sum |P|^2`` (photons per empty-object frame) is ``photons``."""
    if not photons > 0:
        raise PtytomoError(f"photons per measurement must be > 0, got {photons}")
    energy = float(np.sum(np.abs(probe) ** 2))
    if energy == 0:
        raise PtytomoError("probe is zero everywhere")
    return probe * np.sqrt(photons / energy)


def probe_intensity(probe: np.ndarray) -> np.ndarray:
    """``|P|^2`` of an (M, M) probe; for (K, M, M) incoherent modes the sum of their intensities."""
    intensity = np.abs(np.asarray(probe).astype(np.complex128)) ** 2
    return intensity.sum(axis=0) if intensity.ndim == 3 else intensity


def probe_photons(probe: np.ndarray) -> float:
    """Photons per measurement through an empty object (all modes together)."""
    return float(np.sum(probe_intensity(probe)))


def load_probe(path: str | Path, detector_size: int | None = None) -> np.ndarray:
    """A probe from ``.npy`` or from ``/probe`` of an HDF5 file (e.g. another data file)."""
    path = Path(path)
    if not path.exists():
        raise PtytomoError(f"probe file {path} does not exist")
    if path.suffix == ".npy":
        probe = np.load(path)
    else:
        import h5py

        try:
            with h5py.File(path, "r") as f:
                if "probe" not in f:
                    raise PtytomoError(f"{path}: no /probe dataset")
                probe = f["probe"][()]
        except OSError as exc:
            raise PtytomoError(f"{path}: not a readable .npy or HDF5 probe file ({exc})") from None
    probe = np.asarray(probe)
    if probe.ndim != 2 or probe.shape[0] != probe.shape[1]:
        raise PtytomoError(f"{path}: probe must be a square 2D array, got shape {probe.shape}")
    if detector_size is not None and probe.shape[0] != detector_size:
        raise PtytomoError(f"{path}: probe is {probe.shape[0]} px wide but the detector is {detector_size}")
    if not np.all(np.isfinite(probe)):
        raise PtytomoError(f"{path}: probe has NaN or infinite values")
    return probe.astype(np.complex64)


def probe_diameter_estimate(probe: np.ndarray, fraction: float = 0.9) -> float:
    """Diameter (pixels) of the disc around the probe's power centroid that holds 90 % of its power.

    An enclosed-power width, unlike an effective area, is not fooled by the
    side lobes of a focused, defocused probe, whose weak but wide rings hold
    little power.  A flat disc of diameter D gives ``sqrt(0.9) D``.  (K, M, M)
    probes are measured on their summed mode intensities.
    """
    intensity = probe_intensity(probe)
    total = float(intensity.sum())
    if total == 0:
        return 0.0
    rows, cols = np.indices(intensity.shape, dtype=np.float64)
    centre_row, centre_col = (intensity * rows).sum() / total, (intensity * cols).sum() / total
    order = np.argsort(np.hypot(rows - centre_row, cols - centre_col).ravel(), kind="stable")
    enclosed = np.cumsum(intensity.ravel()[order]) / total
    # The disc is measured by its area in pixels (the pixels nearest the
    # centroid, taken until they hold the fraction), not by the radius of the
    # last pixel taken: that keeps small pixelated discs free of a ring-step bias.
    k = min(int(np.searchsorted(enclosed, fraction)), len(enclosed) - 1)
    below = enclosed[k - 1] if k > 0 else 0.0
    gain = enclosed[k] - below
    area = k + ((fraction - below) / gain if gain > 0 else 1.0)
    return float(2 * np.sqrt(area / np.pi))


def step_estimate(positions: np.ndarray) -> float:
    """Median nearest-neighbour distance between the positions of one angle (pixels)."""
    points = np.asarray(positions, dtype=np.float64)
    if len(points) < 2:
        return float("nan")
    distance = np.hypot(*(points[:, None, :] - points[None, :, :]).transpose(2, 0, 1))
    np.fill_diagonal(distance, np.inf)
    return float(np.median(distance.min(axis=1)))
