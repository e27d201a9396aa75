"""Scan geometry: rotation angles, raster positions and the probe.

Positions follow FORMAT.md: ``(r, c)`` is the top-left corner of the M x M
window in projection-plane pixels (row along z, column along u).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from .errors import PtytomoError

SHIFT_AXES = ("both", "rows", "cols", "none")


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


def scale_probe(probe: np.ndarray, photons: float) -> np.ndarray:
    """Scale ``probe`` so that ``sum |P|^2`` (photons per empty-object frame) is ``photons``."""
    if not photons > 0:
        raise PtytomoError(f"photons per measurement must be > 0, got {photons}")
    energy = float(np.sum(np.abs(probe) ** 2))
    if energy == 0:
        raise PtytomoError("probe is zero everywhere")
    return probe * np.sqrt(photons / energy)


def probe_photons(probe: np.ndarray) -> float:
    """Photons per measurement through an empty object."""
    return float(np.sum(np.abs(probe) ** 2))


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


def probe_diameter_estimate(probe: np.ndarray) -> float:
    """Diameter of the disc with the probe's effective area ``(sum|P|^2)^2 / sum|P|^4``.

    Exact for a flat disc, and a fair width for any measured probe.
    """
    intensity = np.abs(probe) ** 2
    area = intensity.sum() ** 2 / max(float(np.sum(intensity**2)), np.finfo(float).tiny)
    return float(2 * np.sqrt(area / np.pi))


def step_estimate(positions: np.ndarray) -> float:
    """Median nearest-neighbour distance between the positions of one angle (pixels)."""
    points = np.asarray(positions, dtype=np.float64)
    if len(points) < 2:
        return float("nan")
    distance = np.hypot(*(points[:, None, :] - points[None, :, :]).transpose(2, 0, 1))
    np.fill_diagonal(distance, np.inf)
    return float(np.median(distance.min(axis=1)))
