"""Test volumes: a woven-wire phantom, random ellipsoids, and volumes from files.

Every phantom is a complex128 array ``(Nz, Ny, Nx)`` of ``delta + 1j*beta``.
Geometry is defined in normalised coordinates, the volume spanning [-1, 1] on
each axis, so the same call at a finer grid describes the same object: an
oversampled simulator builds ``f(n*S)`` and block-averages it by ``S``, which
matches ``f(n, supersample=supersample*S)`` because both evaluate the very same
sub-points.

All material lies inside the cylinder ``sqrt(x^2 + y^2) <= 0.9``,
``|z| <= 0.9``: the volume rotates about ``z``, and anything outside the
inscribed circle would leave the projection window at some angles.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from ptytomo.errors import PtytomoError
from ptytomo.physics import WIRE_MATERIALS

CYLINDER_RADIUS = 0.9
"""Radius, in normalised units, of the cylinder all material stays in."""
CYLINDER_HALF_HEIGHT = 0.9
"""Half height, in normalised units, of that cylinder."""

_POINTS_PER_CHUNK = 1 << 22
"""Sub-points evaluated at once: bounds memory at tens of MB whatever ``n``."""

_HDF5_SUFFIXES = (".h5", ".hdf5", ".nxs")
_DEFAULT_DATASETS = ("/truth/volume", "/reconstruction/volume", "/volume")

# Inside test on broadcastable normalised coordinates z (a,1,1), y (1,b,1), x (1,1,c).
_Contains = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]


@dataclass(frozen=True)
class _Solid:
    """One body of a single material: a conservative bounding box and an inside test.

    The box, ``(z, y, x)`` lower and upper corners, lets rendering evaluate the
    test only near the body, which keeps many thin wires cheap at large ``n``.
    """

    material: int
    lower: tuple[float, float, float]
    upper: tuple[float, float, float]
    contains: _Contains


def _positive_int(value: int, name: str) -> int:
    """Return ``value`` if it is an integer >= 1, else raise naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise PtytomoError(f"{name} must be an integer >= 1, got {value!r}")
    return int(value)


def _finite(value: float, name: str) -> float:
    """Return ``value`` as a float if it is finite, else raise naming ``name``."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise PtytomoError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(number):
        raise PtytomoError(f"{name} must be finite, got {value!r}")
    return number


def _material_values(energy_kev: float) -> np.ndarray:
    """``delta + 1j*beta`` of each of WIRE_MATERIALS, indexed like the tuple."""
    return np.array([m.refractive_index(energy_kev) for m in WIRE_MATERIALS], dtype=np.complex128)


def _index_range(coords: np.ndarray, lower: float, upper: float) -> slice:
    """Indices of the ascending ``coords`` that lie in ``[lower, upper]``."""
    return slice(int(np.searchsorted(coords, lower, "left")), int(np.searchsorted(coords, upper, "right")))


def _render(n: int, supersample: int, solids: Sequence[_Solid], values: np.ndarray) -> np.ndarray:
    """Rasterise ``solids`` (later ones overwrite earlier) with partial-volume averaging.

    Each voxel is sampled at ``supersample**3`` sub-points; a sub-point takes the
    material of the last solid containing it (never a sum), and the voxel value
    is the material fractions times ``values``.  Work proceeds in chunks of
    z-slices so memory stays bounded.
    """
    m = n * supersample
    # Sub-point j of the fine axis: -1 + 2*(i + (k + 0.5)/ss)/n with j = i*ss + k.
    coords = -1.0 + (2.0 * np.arange(m) + 1.0) / m
    outside_xy = coords[:, None] ** 2 + coords[None, :] ** 2 > CYLINDER_RADIUS**2
    outside_z = np.abs(coords) > CYLINDER_HALF_HEIGHT
    volume = np.zeros((n, n, n), dtype=np.complex128)
    slices_per_chunk = max(1, _POINTS_PER_CHUNK // (supersample * m * m))
    for z0 in range(0, n, slices_per_chunk):
        z1 = min(n, z0 + slices_per_chunk)
        sub = slice(z0 * supersample, z1 * supersample)
        z_coords = coords[sub]
        labels = np.full((z_coords.size, m, m), -1, dtype=np.int8)
        for solid in solids:
            zs = _index_range(z_coords, solid.lower[0], solid.upper[0])
            ys = _index_range(coords, solid.lower[1], solid.upper[1])
            xs = _index_range(coords, solid.lower[2], solid.upper[2])
            if zs.start >= zs.stop or ys.start >= ys.stop or xs.start >= xs.stop:
                continue
            inside = solid.contains(
                z_coords[zs][:, None, None], coords[ys][None, :, None], coords[xs][None, None, :]
            )
            labels[zs, ys, xs][inside] = solid.material
        labels[outside_z[sub]] = -1
        labels[:, outside_xy] = -1
        blocks = labels.reshape(z1 - z0, supersample, n, supersample, n, supersample)
        for index, value in enumerate(values):
            volume[z0:z1] += value * (blocks == index).mean(axis=(1, 3, 5))
    return volume


def _wire(
    material: int,
    along_x: bool,
    offset: float,
    z_layer: float,
    origin: float,
    phase: float,
    radius: float,
    amplitude: float,
    pitch: float,
) -> _Solid:
    """A sinusoidally weaving round wire along x (at ``y = offset``) or along y (at ``x = offset``).

    Centre line height ``z_layer + amplitude*sin(pi*(t - origin)/pitch + phase)``
    with ``t`` the coordinate along the wire.  Distance to the centre line is
    approximated by the distance to its local tangent: the height difference
    shrinks by ``1/sqrt(1 + slope^2)``.
    """
    wave = math.pi / pitch
    half_height = amplitude + radius * math.sqrt(1.0 + (amplitude * wave) ** 2)

    def contains(z: np.ndarray, y: np.ndarray, x: np.ndarray) -> np.ndarray:
        along, across = (x, y) if along_x else (y, x)
        angle = wave * (along - origin) + phase
        height = z - (z_layer + amplitude * np.sin(angle))
        slope = amplitude * wave * np.cos(angle)
        return (across - offset) ** 2 + height**2 / (1.0 + slope**2) <= radius**2

    band = (offset - radius, offset + radius)
    full = (-CYLINDER_RADIUS, CYLINDER_RADIUS)
    y_range, x_range = (band, full) if along_x else (full, band)
    return _Solid(
        material,
        (z_layer - half_height, y_range[0], x_range[0]),
        (z_layer + half_height, y_range[1], x_range[1]),
        contains,
    )


def woven_wire(
    n: int = 64,
    energy_kev: float = 5.0,
    supersample: int = 4,
    *,
    wire_radius: float = 0.09,
    pitch: float = 0.32,
    amplitude: float = 0.13,
    layer_heights: Sequence[float] = (-0.55, 0.0, 0.55),
    span: float = 0.7,
) -> np.ndarray:
    """Woven wires of gold, platinum, ZnO and TiO2, after the reference paper's description.

    The paper's phantom ("interlaced wires of four different materials", 64^3
    voxels of 10 nm) is not public; this is an independent construction from
    that description, not the original data.

    Each layer (centre heights ``layer_heights``) is a plain weave: wires along
    x at ``y = origin + i*pitch`` and along y at ``x = origin + j*pitch`` (all
    within ``|offset| <= span``), their centre lines rising and falling as
    ``amplitude*sin(pi*(t - origin)/pitch + phase)`` so that each wire passes
    alternately over and under the wires crossing it.  Crossing wires have
    opposite phase, so at a crossing their centres are ``2*amplitude`` apart and
    they do not intersect for ``amplitude >= wire_radius``.  Successive layers
    shift ``origin`` by half a pitch (alternating positions and heights).
    Materials cycle over WIRE_MATERIALS wire by wire; where wires overlap a
    single material is kept.  All lengths are normalised (the volume spans
    [-1, 1]); the defaults give wires about 6 voxels thick at ``n = 64`` and
    some 15-20 % of the volume filled.
    """
    n = _positive_int(n, "n")
    supersample = _positive_int(supersample, "supersample")
    radius = _finite(wire_radius, "wire_radius")
    pitch = _finite(pitch, "pitch")
    amplitude = _finite(amplitude, "amplitude")
    span = _finite(span, "span")
    heights = [_finite(h, "layer_heights") for h in layer_heights]
    if radius <= 0.0:
        raise PtytomoError(f"wire_radius must be > 0, got {wire_radius!r}")
    if pitch <= 2.0 * radius:
        raise PtytomoError(f"pitch must exceed 2*wire_radius so parallel wires stay apart, got {pitch!r}")
    if amplitude < radius:
        raise PtytomoError(f"amplitude must be >= wire_radius so crossing wires do not intersect, got {amplitude!r}")
    if span < 0.0:
        raise PtytomoError(f"span must be >= 0, got {span!r}")
    if not heights:
        raise PtytomoError("layer_heights must name at least one layer")
    values = _material_values(energy_kev)

    solids = []
    for layer, z_layer in enumerate(heights):
        origin = (layer % 2) * pitch / 2.0
        indices = range(math.ceil((-span - origin) / pitch), math.floor((span - origin) / pitch) + 1)
        for along_x, base_phase in ((True, math.pi / 2.0), (False, -math.pi / 2.0)):
            for i in indices:
                solids.append(
                    _wire(
                        len(solids) % len(WIRE_MATERIALS),
                        along_x,
                        origin + i * pitch,
                        z_layer,
                        origin,
                        base_phase + i * math.pi,
                        radius,
                        amplitude,
                        pitch,
                    )
                )
    return _render(n, supersample, solids, values)


def _random_rotation(rng: np.random.Generator) -> np.ndarray:
    """A uniformly distributed 3D rotation matrix (QR of a Gaussian matrix, signs fixed)."""
    q, r = np.linalg.qr(rng.standard_normal((3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0.0:
        q[:, 0] = -q[:, 0]
    return q


def _ellipsoid(material: int, centre: np.ndarray, shape: np.ndarray) -> _Solid:
    """Ellipsoid ``(p - centre)^T shape^-1 (p - centre) <= 1``, coordinates ordered (z, y, x)."""
    inverse = np.linalg.inv(shape)
    half = np.sqrt(np.diag(shape))

    def contains(z: np.ndarray, y: np.ndarray, x: np.ndarray) -> np.ndarray:
        d = (z - centre[0], y - centre[1], x - centre[2])
        form = sum(inverse[a, a] * d[a] ** 2 for a in range(3))
        form = form + 2.0 * (inverse[0, 1] * d[0] * d[1] + inverse[0, 2] * d[0] * d[2] + inverse[1, 2] * d[1] * d[2])
        return form <= 1.0

    return _Solid(material, tuple(centre - half), tuple(centre + half), contains)


def random_ellipsoids(
    n: int = 64,
    count: int = 10,
    seed: int = 0,
    energy_kev: float = 5.0,
    supersample: int = 4,
    *,
    min_semi_axis: float = 0.1,
    max_semi_axis: float = 0.35,
) -> np.ndarray:
    """``count`` randomly placed, sized and rotated ellipsoids; later ones overwrite earlier.

    A generic test object with no preferred direction, deterministic for a
    ``seed``.  Semi-axes are uniform in ``[min_semi_axis, max_semi_axis]``
    (normalised units); each ellipsoid's centre is drawn so that the whole
    ellipsoid lies in the cylinder.  Materials are WIRE_MATERIALS cycled and
    shuffled, so each appears at least once when ``count >= 4``.
    """
    n = _positive_int(n, "n")
    count = _positive_int(count, "count")
    supersample = _positive_int(supersample, "supersample")
    low = _finite(min_semi_axis, "min_semi_axis")
    high = _finite(max_semi_axis, "max_semi_axis")
    if not 0.0 < low <= high:
        raise PtytomoError(f"min_semi_axis must be > 0 and <= max_semi_axis, got {min_semi_axis!r}")
    if high >= min(CYLINDER_RADIUS, CYLINDER_HALF_HEIGHT):
        raise PtytomoError(f"max_semi_axis must be < {CYLINDER_RADIUS} to fit the cylinder, got {max_semi_axis!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise PtytomoError(f"seed must be an integer >= 0, got {seed!r}")
    values = _material_values(energy_kev)

    rng = np.random.default_rng(seed)
    materials = rng.permutation(np.arange(count) % len(WIRE_MATERIALS))
    solids = []
    for material in materials:
        rotation = _random_rotation(rng)
        shape = rotation @ np.diag(rng.uniform(low, high, 3) ** 2) @ rotation.T
        # Largest distance from the centre along z, and within the xy plane (axes ordered z, y, x).
        half_z = math.sqrt(shape[0, 0])
        half_xy = math.sqrt(np.linalg.eigvalsh(shape[1:, 1:])[-1])
        radial = (CYLINDER_RADIUS - half_xy) * math.sqrt(rng.uniform())
        angle = rng.uniform(0.0, 2.0 * math.pi)
        centre = np.array(
            [
                rng.uniform(-1.0, 1.0) * (CYLINDER_HALF_HEIGHT - half_z),
                radial * math.sin(angle),
                radial * math.cos(angle),
            ]
        )
        solids.append(_ellipsoid(int(material), centre, shape))
    return _render(n, supersample, solids, values)


def _checked_volume(data: np.ndarray, where: str) -> np.ndarray:
    """Validate a loaded array (numeric, 3D, finite) and return it as complex128."""
    if not (np.issubdtype(data.dtype, np.number) and not np.issubdtype(data.dtype, np.bool_)):
        raise PtytomoError(f"{where}: volume must be numeric, got dtype {data.dtype}")
    if data.ndim != 3:
        raise PtytomoError(f"{where}: volume must be 3D (Nz, Ny, Nx), got shape {data.shape}")
    volume = data.astype(np.complex128)
    if not np.all(np.isfinite(volume)):
        raise PtytomoError(f"{where}: volume contains non-finite values")
    return volume


def load_volume(path: str | os.PathLike, dataset: str | None = None) -> np.ndarray:
    """Read a ``delta + 1j*beta`` volume as complex128 ``(Nz, Ny, Nx)``.

    ``.npy`` files hold the volume itself; a real array is taken as ``delta``
    with ``beta = 0``.  HDF5 files (``.h5``, ``.hdf5``, ``.nxs``) give
    ``dataset`` or, when it is None, the first of ``/truth/volume``,
    ``/reconstruction/volume``, ``/volume`` present, so both data and
    reconstruction files (FORMAT.md) can serve as a truth volume.
    """
    path = Path(path)
    if not path.is_file():
        raise PtytomoError(f"volume file {str(path)!r} does not exist")
    suffix = path.suffix.lower()
    if suffix == ".npy":
        try:
            data = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise PtytomoError(f"{path}: cannot read as .npy ({exc})") from None
        return _checked_volume(data, str(path))
    if suffix not in _HDF5_SUFFIXES:
        raise PtytomoError(f"{path}: unknown volume file extension {suffix!r} (use .npy, .h5, .hdf5 or .nxs)")
    try:
        handle = h5py.File(path, "r")
    except OSError as exc:
        raise PtytomoError(f"{path}: cannot open as HDF5 ({exc})") from None
    with handle:
        candidates = _DEFAULT_DATASETS if dataset is None else (dataset,)
        name = next((c for c in candidates if c in handle), None)
        if name is None:
            raise PtytomoError(f"{path}: no dataset {' or '.join(candidates)}")
        node = handle[name]
        if not isinstance(node, h5py.Dataset):
            raise PtytomoError(f"{path}: {name} is not a dataset")
        return _checked_volume(node[()], f"{path}:{name}")


def one_compound(volume: np.ndarray, delta: float, beta: float) -> np.ndarray:
    """``volume``'s delta map, scaled to [0, 1], as the density fraction of one compound whose refractive
    index is ``delta + i beta`` (beta in proportion): the same shapes as a weak phase object (float64)."""
    strongest = float(np.asarray(volume).real.max())
    if not strongest > 0:
        raise PtytomoError("the phantom has no positive delta to scale to one compound")
    return (np.asarray(volume).real.astype(np.float64) / strongest) * complex(delta, beta)


def block_average(volume: np.ndarray, factor: int) -> np.ndarray:
    """Mean over ``factor^3`` blocks: brings an oversampled volume to the reconstruction grid."""
    factor = _positive_int(factor, "factor")
    volume = np.asarray(volume)
    if volume.ndim != 3:
        raise PtytomoError(f"volume must be 3D to block-average, got shape {volume.shape}")
    if any(size % factor for size in volume.shape):
        raise PtytomoError(f"volume shape {volume.shape} is not divisible by factor {factor}")
    nz, ny, nx = (size // factor for size in volume.shape)
    return volume.reshape(nz, factor, ny, factor, nx, factor).mean(axis=(1, 3, 5))
