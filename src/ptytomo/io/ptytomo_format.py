"""Reading and writing ptytomo's HDF5 files (layout: FORMAT.md, version 1).

Other producers (a beamline converter, an independent simulator) write data
files with plain h5py, so the reader is lenient wherever the meaning is
unambiguous -- any float precision, integer photon counts, a real-valued
probe, 0/1 integer masks, extra groups and attributes -- and strict everywhere
else.  Every problem with the input surfaces as a one-line ``PtytomoError``
that names the file and the field, never as an h5py or numpy traceback.

The writers always produce the exact dtypes of FORMAT.md and write through
:func:`atomic_h5`, so an interrupted run never leaves a half-written file in
place of a good one.  :func:`validate_data` is shared by reading and writing,
so every file ptytomo writes is one it will read back.
"""

from __future__ import annotations

import os
import secrets
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field, replace
from typing import Any, Iterator

import h5py
import numpy as np

from .. import physics
from ..errors import PtytomoError

DATA_FORMAT = "ptytomo"
RECONSTRUCTION_FORMAT = "ptytomo-reconstruction"
FORMAT_VERSION = 1

# Field names as they appear in the file; error messages use them too, so a
# user can find the offending object with h5ls whether it was read or written.
INTENSITIES = "/measurement/intensities"
POSITIONS = "/measurement/positions"
ANGLES = "/measurement/angles"
VALID = "/measurement/valid"
MASK = "/measurement/mask"
PROBE = "/probe"
GEOMETRY = "/geometry"
TRUTH = "/truth/volume"
# Optional truths of ptytomo's simulator beyond FORMAT.md (docs/simulation.md):
TRUTH_PROBE = "/truth/probe"
TRUTH_POSITIONS = "/truth/positions"
TRUTH_ANGLE_SHIFTS = "/truth/angle_shifts"
TRUTH_ANGLE_SCALE = "/truth/angle_scale"
SIMULATION = "/simulation"
VOLUME = "/reconstruction/volume"
REFINED_PROBE = "/reconstruction/probe"
REFINED_POSITIONS = "/reconstruction/positions"
ANGLE_SHIFTS = "/reconstruction/angle_shifts"
TRANSMISSION = "/reconstruction/transmission"
RECONSTRUCTION = "/reconstruction"
HISTORY = "/history"
# Optional, beyond FORMAT.md (docs/resolution.md): the Fourier shell correlation of `ptytomo resolution`.
RESOLUTION = "/resolution"
RESOLUTION_CURVES = ("frequency", "fsc_delta", "fsc_beta", "threshold", "voxels_per_shell")

REQUIRED_HISTORY = ("iteration", "cost", "time_s")

# dtype kinds accepted on input: real arrays may be any float or integer
# precision (counts are often stored as integers), complex arrays may also be
# real (zero phase), flags may be bool or integer 0/1.
_REAL_KINDS = "fiu"
_COMPLEX_KINDS = "fiuc"
_FLAG_KINDS = "biu"

# gzip (not lzf) so that non-h5py readers (C, MATLAB) can open the files too.
_COMPRESSION = {"compression": "gzip", "compression_opts": 4, "shuffle": True}



# --------------------------------------------------------------------------
# Data model
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class Geometry:
    """Beam energy and volume grid; the ``/geometry`` attributes of both layouts."""

    energy_kev: float
    voxel_size_m: float
    volume_shape: tuple[int, int, int]  # (Nz, Ny, Nx)

    def __post_init__(self) -> None:
        # Keep the dataclass hashable and comparable when a caller passes a
        # list or an array; the values themselves are checked by the validators.
        if not isinstance(self.volume_shape, tuple):
            try:
                object.__setattr__(self, "volume_shape", tuple(self.volume_shape))
            except TypeError:
                pass

    @property
    def wavelength_m(self) -> float:
        return physics.wavelength_m(self.energy_kev)

    @property
    def wavenumber(self) -> float:
        """``k = 2 pi / lambda`` in 1/m."""
        return 2.0 * np.pi / self.wavelength_m


@dataclass
class PtychoTomoData:
    """One ptycho-tomography data set, with the dtypes of FORMAT.md after reading."""

    intensities: np.ndarray  # float32 (A, J, M, M), photon counts, DC at centre (LazyIntensities: streamed)
    positions: np.ndarray  # float64 (A, J, 2), (r, c) top-left window corners
    angles: np.ndarray  # float64 (A,), radians
    probe: np.ndarray  # complex64 (M, M), or (K, M, M) incoherent modes (intensities add)
    geometry: Geometry
    valid: np.ndarray | None = None  # bool (A, J); False marks padding entries
    mask: np.ndarray | None = None  # bool (M, M); False marks dead pixels
    truth: np.ndarray | None = None  # complex64 (Nz, Ny, Nx), delta + i*beta
    simulation: dict = field(default_factory=dict)  # attrs of /simulation
    # Optional truths of simulated imperfections (docs/simulation.md), None when absent:
    truth_probe: np.ndarray | None = None  # complex64 (K, M, M) the probe that made the data
    truth_positions: np.ndarray | None = None  # float64 (A, J, 2) corners that made the data
    truth_angle_shifts: np.ndarray | None = None  # float64 (A, 2) runout: offset added to angle a's positions
    truth_angle_scale: np.ndarray | None = None  # float64 (A,) incident-flux factor of angle a

    @property
    def n_angles(self) -> int:
        return int(self.intensities.shape[0])

    @property
    def n_positions(self) -> int:
        """Entries per angle, padding included (see :meth:`valid_or_all`)."""
        return int(self.intensities.shape[1])

    @property
    def detector_size(self) -> int:
        return int(self.intensities.shape[-1])

    @property
    def probe_modes(self) -> np.ndarray:
        """The probe as (K, M, M) modes, K = 1 for a single coherent probe."""
        probe = np.asarray(self.probe)
        return probe[None] if probe.ndim == 2 else probe

    def valid_or_all(self) -> np.ndarray:
        """Bool (A, J) mask of the real measurements, so callers need no None check."""
        if self.valid is None:
            return np.ones((self.n_angles, self.n_positions), dtype=bool)
        return np.asarray(self.valid, dtype=bool)

    def angle_subset(self, rows: slice) -> PtychoTomoData:
        """The angles ``rows`` (a slice, any positive step) with everything that is per angle: frames (left
        in the file when streamed), positions, angles, valid flags and the per-angle truths of
        docs/simulation.md; the probe, mask, geometry, volume and probe truths are shared, not copied."""
        start, stop, step = rows.indices(self.n_angles)
        if step < 1 or len(range(start, stop, step)) == 0:
            raise PtytomoError(f"angles {rows} select none of the {self.n_angles} angles (a positive step is needed)")
        if isinstance(self.intensities, LazyIntensities):
            frames = self.intensities.subset(slice(start, stop, step))
        else:
            frames = self.intensities[start:stop:step]

        def part(values):
            return None if values is None else np.asarray(values)[start:stop:step]

        return replace(self, intensities=frames, positions=part(self.positions), angles=part(self.angles),
                       valid=part(self.valid), truth_positions=part(self.truth_positions),
                       truth_angle_shifts=part(self.truth_angle_shifts), truth_angle_scale=part(self.truth_angle_scale))


@dataclass
class Reconstruction:
    """A reconstructed volume with everything needed to reproduce and judge it."""

    volume: np.ndarray  # complex64 (Nz, Ny, Nx), delta + i*beta
    method: str
    parameters: dict  # str/int/float/bool/None/lists; None is stored as "none"
    history: dict[str, np.ndarray]  # float64 (K,) columns incl. iteration, cost, time_s
    geometry: Geometry
    # Optional, written when the reconstruction refined them (FORMAT.md), in the data file's coordinates:
    probe: np.ndarray | None = None  # complex64 (K, M, M) refined probe modes, strongest first
    positions: np.ndarray | None = None  # float64 (A, J, 2) refined window corners (r, c), pixels
    angle_shifts: np.ndarray | None = None  # float64 (A, 2) offset added to every position of angle a
    transmission: np.ndarray | None = None  # complex64 (A, Nz, Nu) per-angle transmissions (--method ptycho)
    # Optional, beyond FORMAT.md (docs/resolution.md): /resolution of `ptytomo resolution`; arrays (float64 (S,),
    # RESOLUTION_CURVES at least) are its datasets, scalars and strings its attributes (the crossings)
    resolution: dict | None = None


# --------------------------------------------------------------------------
# Atomic writing
# --------------------------------------------------------------------------


@contextmanager
def atomic_h5(path) -> Iterator[h5py.File]:
    """Yield an HDF5 file that replaces ``path`` only once it is complete.

    The file is written under a temporary name in the target directory (so
    the final ``os.replace`` is atomic on the same file system); on any
    exception the temporary file is removed and ``path`` stays as it was.
    """
    target = os.fspath(path)
    directory, name = os.path.split(os.path.abspath(target))
    temporary = os.path.join(directory, f".{name}.{secrets.token_hex(6)}.tmp")
    try:
        handle = h5py.File(temporary, "w-")
    except OSError as exc:
        raise _error(target, f"cannot create a file in {directory} ({exc})") from None
    try:
        yield handle
        handle.close()  # flushes: a full disk fails here, before path is touched
        _sync(temporary)  # on disk before the rename: a power cut leaves the old file or the new, whole
    except BaseException:
        with suppress(Exception):  # the original exception is the one to report
            handle.close()
        _remove_quietly(temporary)
        raise
    try:
        os.replace(temporary, target)
    except OSError as exc:
        _remove_quietly(temporary)
        raise _error(target, f"cannot replace the file ({exc.strerror})") from None
    with suppress(OSError):  # the rename itself; not every platform syncs a directory
        _sync(directory)


def _sync(path: str) -> None:
    """fsync a file or a directory by name."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _remove_quietly(path: str) -> None:
    with suppress(OSError):
        os.remove(path)


# --------------------------------------------------------------------------
# Data files
# --------------------------------------------------------------------------


def read_data(path, angles: slice | None = None, stream: bool = False) -> PtychoTomoData:
    """Read a data file in the FORMAT.md layout, converting to its exact dtypes.

    Raises PtytomoError naming the file and field for anything that does not
    follow the layout; groups, datasets and attributes it does not name are
    ignored (``/simulation`` attributes are returned as ``simulation``).

    ``angles`` (a contiguous slice) reads only those angles' frames, positions,
    valid flags and angles: one rank's share of a distributed run.  With
    ``stream`` the frames stay in the file: ``intensities`` is then a
    :class:`LazyIntensities` whose batches are read and checked on indexing.
    """
    source = os.fspath(path)
    with _open_for_reading(source) as f:
        _check_header(f, source, DATA_FORMAT)
        geometry = _read_geometry(f, source)
        dataset = _dataset(f, source, INTENSITIES)
        _check_kind(source, INTENSITIES, dataset.dtype, _REAL_KINDS)
        n_angles = _check_intensity_shape(source, dataset.shape)[0]
        rows = _angle_range(source, angles, n_angles)
        if rows != slice(0, n_angles):
            # Indices in messages then count from rows.start; say so, or users look at the wrong angle.
            source = f"{source} (angles {rows.start}..{rows.stop - 1}, indices counted from {rows.start})"
        if stream:
            intensities = None  # made below, once the valid flags are known
        else:
            intensities = _to_real(_read_array(f, source, INTENSITIES, _REAL_KINDS, rows, n_angles), np.float32)
        positions = _to_real(_read_array(f, source, POSITIONS, _REAL_KINDS, rows, n_angles), np.float64)
        angles = _to_real(_read_array(f, source, ANGLES, _REAL_KINDS, rows, n_angles), np.float64)
        probe = _to_complex64(_read_array(f, source, PROBE, _COMPLEX_KINDS))
        valid = mask = truth = None
        if f.get(VALID) is not None:
            valid = _to_flags(source, VALID, _read_array(f, source, VALID, _FLAG_KINDS, rows, n_angles))
        if stream:
            intensities = LazyIntensities(os.fspath(path), rows.start, rows.stop, tuple(dataset.shape[1:]), valid)
        if f.get(MASK) is not None:
            mask = _to_flags(source, MASK, _read_array(f, source, MASK, _FLAG_KINDS))
        if f.get(TRUTH) is not None:
            truth = _to_complex64(_read_array(f, source, TRUTH, _COMPLEX_KINDS))
        simulation = _read_attrs_leniently(f.get(SIMULATION))
        extra_truths = _read_simulation_truths(f, source, rows, n_angles)
    data = PtychoTomoData(
        intensities=intensities,
        positions=positions,
        angles=angles,
        probe=probe,
        geometry=geometry,
        valid=valid,
        mask=mask,
        truth=truth,
        simulation=simulation,
        **extra_truths,
    )
    validate_data(data, source)
    return data


def _read_simulation_truths(f: h5py.File, source: str, rows: slice, n_angles: int) -> dict:
    """The optional /truth/* fields of docs/simulation.md that the file has (per-angle ones for ``rows``)."""
    found = {}
    if f.get(TRUTH_PROBE) is not None:
        found["truth_probe"] = _to_complex64(_read_array(f, source, TRUTH_PROBE, _COMPLEX_KINDS))
    for key, name in (("truth_positions", TRUTH_POSITIONS), ("truth_angle_shifts", TRUTH_ANGLE_SHIFTS),
                      ("truth_angle_scale", TRUTH_ANGLE_SCALE)):
        if f.get(name) is not None:
            found[key] = _to_real(_read_array(f, source, name, _REAL_KINDS, rows, n_angles), np.float64)
    return found


def read_intensities(path, angle_slice: slice, valid: np.ndarray | None = None) -> np.ndarray:
    """Read the float32 intensities of one batch of angles, for streaming.

    Only this batch is loaded (the writer chunks one angle per chunk), and it
    gets the same finiteness and sign checks as :func:`read_data`, so a
    streaming reader does not have to load the whole file first.  With the
    batch's ``valid`` flags (B, J), padding entries come back as 0 unchecked:
    FORMAT.md lets them hold anything.
    """
    source = os.fspath(path)
    if not isinstance(angle_slice, slice):
        raise _error(source, f"angle_slice must be a slice, got {type(angle_slice).__name__}")
    with _open_for_reading(source) as f:
        _check_header(f, source, DATA_FORMAT)
        dataset = _dataset(f, source, INTENSITIES)
        _check_kind(source, INTENSITIES, dataset.dtype, _REAL_KINDS)
        _check_intensity_shape(source, dataset.shape)
        try:
            start, stop, step = angle_slice.indices(dataset.shape[0])
        except (TypeError, ValueError) as exc:
            raise _error(source, f"angle_slice {angle_slice} is not usable ({exc})") from None
        if step < 1:
            raise _error(source, f"angle_slice must have a positive step, got {step}")
        label = f"{INTENSITIES}[{start}:{stop}:{step}]"
        try:
            batch = dataset[start:stop:step]
        except OSError as exc:
            raise _error(source, f"cannot read {label} ({exc}){_FILTER_HINT}") from None
    batch = _to_real(batch, np.float32)
    if valid is not None:
        if np.shape(valid) != batch.shape[:2]:
            raise _error(source, f"valid flags of shape {np.shape(valid)} for {label} of shape {batch.shape}")
        batch = np.where(np.asarray(valid, dtype=bool)[..., None, None], batch, np.float32(0))
    _check_finite(source, label, batch)
    _check_nonnegative(source, label, batch)
    return batch


@dataclass(frozen=True)
class LazyIntensities:
    """The intensities of angles [start, stop) of a data file, left in the file.

    Stands in for the (A, J, M, M) array of :class:`PtychoTomoData` when a
    share of the frames does not fit in memory: indexing with a slice of
    angles (counted from ``start``) reads and checks only those frames.
    """

    path: str
    start: int
    stop: int
    frame_shape: tuple[int, int, int]  # (J, M, M)
    valid: np.ndarray | None = None  # bool (len(self), J)
    step: int = 1  # every step-th angle of [start, stop): one half of `ptytomo resolution --split angles`

    dtype = np.dtype(np.float32)
    ndim = 4

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (len(self), *self.frame_shape)

    def __len__(self) -> int:
        return len(range(self.start, self.stop, self.step))

    def __getitem__(self, rows: slice) -> np.ndarray:
        if not isinstance(rows, slice):
            raise TypeError(f"LazyIntensities takes a slice of angles, got {type(rows).__name__}")
        start, stop, step = rows.indices(len(self))
        if step != 1:
            raise TypeError("LazyIntensities reads contiguous angle batches only (step 1)")
        valid = None if self.valid is None else self.valid[start:stop]
        first = self.start + start * self.step
        return read_intensities(self.path, slice(first, first + (stop - start) * self.step, self.step), valid)

    def subset(self, rows: slice) -> LazyIntensities:
        """Angles ``rows`` (counted from ``start``, any positive step), still in the file."""
        start, stop, step = rows.indices(len(self))
        valid = None if self.valid is None else self.valid[start:stop:step]
        return replace(self, start=self.start + start * self.step, stop=self.start + stop * self.step,
                       step=self.step * step, valid=valid)


def intensities_shape(path) -> tuple[int, int, int, int]:
    """(A, J, M, M) of a data file, without reading the frames (to split them over ranks)."""
    source = os.fspath(path)
    with _open_for_reading(source) as f:
        _check_header(f, source, DATA_FORMAT)
        dataset = _dataset(f, source, INTENSITIES)
        _check_intensity_shape(source, dataset.shape)
        return tuple(int(n) for n in dataset.shape)


def write_data(path, data: PtychoTomoData) -> None:
    """Validate ``data`` and write it atomically with the exact dtypes of FORMAT.md.

    Intensities are chunked one angle per chunk so that readers can stream
    angle batches (:func:`read_intensities`) without decompressing the rest.
    """
    source = os.fspath(path)
    validate_data(data, source)
    simulation = _encode_attrs(data.simulation, source, SIMULATION)
    n_angles, n_positions, m, _ = np.shape(data.intensities)
    with atomic_h5(path) as f:
        _write_header(f, DATA_FORMAT)
        _write_geometry(f, data.geometry)
        f.create_dataset(
            INTENSITIES,
            data=np.asarray(data.intensities, dtype=np.float32),
            chunks=(1, n_positions, m, m),  # uncompressed: noise-free floats barely compress, and gzip costs minutes on GBs
        )
        f.create_dataset(POSITIONS, data=np.asarray(data.positions, dtype=np.float64))
        f.create_dataset(ANGLES, data=np.asarray(data.angles, dtype=np.float64))
        if data.valid is not None:
            f.create_dataset(VALID, data=_to_flags(source, VALID, np.asarray(data.valid)))
        if data.mask is not None:
            f.create_dataset(MASK, data=_to_flags(source, MASK, np.asarray(data.mask)))
        f.create_dataset(PROBE, data=_to_complex64(data.probe))
        if data.truth is not None:
            f.create_dataset(TRUTH, data=_to_complex64(data.truth), **_COMPRESSION)
        if data.truth_probe is not None:
            f.create_dataset(TRUTH_PROBE, data=_to_complex64(np.asarray(data.truth_probe).reshape(-1, m, m)))
        for name, values in ((TRUTH_POSITIONS, data.truth_positions), (TRUTH_ANGLE_SHIFTS, data.truth_angle_shifts),
                             (TRUTH_ANGLE_SCALE, data.truth_angle_scale)):
            if values is not None:
                f.create_dataset(name, data=np.asarray(values, dtype=np.float64))
        if simulation:
            f.create_group(SIMULATION, track_order=True).attrs.update(simulation)


def validate_data(data: PtychoTomoData, source: str = "data") -> None:
    """Check ``data`` against FORMAT.md; raise PtytomoError naming the first bad field.

    Shared by :func:`read_data` (after dtype conversion) and :func:`write_data`
    (before anything is written).  Arrays may have any accepted dtype here;
    fields are named by their HDF5 paths in both cases.
    """
    geometry = data.geometry
    _check_geometry(source, geometry)
    nz, _, nx = geometry.volume_shape

    if isinstance(data.intensities, LazyIntensities):  # values are checked batch by batch as they are read
        n_angles, n_positions, m = _check_intensity_shape(source, data.intensities.shape)
        valid = _valid_flags(source, data.valid, n_angles, n_positions)
    else:
        intensities = _as_array(source, INTENSITIES, data.intensities, _REAL_KINDS)
        n_angles, n_positions, m = _check_intensity_shape(source, intensities.shape)
        valid = _valid_flags(source, data.valid, n_angles, n_positions)
        # Padding entries (valid False) take no part, so converters may fill them with anything, NaN included.
        intensities = np.where(valid[..., None, None], _to_real(intensities, np.float32), 0.0)
        _check_finite(source, INTENSITIES, intensities)
        _check_nonnegative(source, INTENSITIES, intensities)

    positions = _as_array(source, POSITIONS, data.positions, _REAL_KINDS)
    _check_shape(source, POSITIONS, positions, (n_angles, n_positions, 2), "(A, J, 2)")
    positions = _to_real(positions, np.float64)
    _check_finite(source, POSITIONS, np.where(valid[..., None], positions, 0.0))

    angles = _as_array(source, ANGLES, data.angles, _REAL_KINDS)
    _check_shape(source, ANGLES, angles, (n_angles,), "(A,)")
    _check_finite(source, ANGLES, _to_real(angles, np.float64))

    _check_probe(source, PROBE, data.probe, m)

    if data.mask is not None:
        mask = _to_flags(source, MASK, _as_array(source, MASK, data.mask, _FLAG_KINDS))
        _check_shape(source, MASK, mask, (m, m), "(M, M)")
        if not mask.any():
            raise _error(source, f"{MASK} marks every detector pixel dead (all False)")

    if data.truth is not None:
        truth = _as_array(source, TRUTH, data.truth, _COMPLEX_KINDS)
        _check_shape(source, TRUTH, truth, geometry.volume_shape, "volume_shape")
        _check_finite(source, TRUTH, _to_complex64(truth))
    _check_simulation_truths(source, data, n_angles, n_positions, m)

    _check_windows_overlap(source, positions, valid, m, nz, nx)


def _check_simulation_truths(source: str, data: PtychoTomoData, n_angles: int, n_positions: int, m: int) -> None:
    """Shapes and finiteness of the optional /truth/* fields of docs/simulation.md."""
    if data.truth_probe is not None:
        _check_probe(source, TRUTH_PROBE, data.truth_probe, m)
    for name, values, shape, label in (
        (TRUTH_POSITIONS, data.truth_positions, (n_angles, n_positions, 2), "(A, J, 2)"),
        (TRUTH_ANGLE_SHIFTS, data.truth_angle_shifts, (n_angles, 2), "(A, 2)"),
        (TRUTH_ANGLE_SCALE, data.truth_angle_scale, (n_angles,), "(A,)"),
    ):
        if values is not None:
            values = _as_array(source, name, values, _REAL_KINDS)
            _check_shape(source, name, values, shape, label)
            _check_finite(source, name, _to_real(values, np.float64))


def _check_probe(source: str, name: str, probe, m: int) -> None:
    """A probe is (M, M) or (K, M, M) incoherent modes, finite and not all zero."""
    probe = _as_array(source, name, probe, _COMPLEX_KINDS)
    if probe.ndim == 3 and probe.shape[0] >= 1:
        _check_shape(source, name, probe, (probe.shape[0], m, m), "(K, M, M)")
    else:
        _check_shape(source, name, probe, (m, m), "(M, M)")
    probe = _to_complex64(probe)
    _check_finite(source, name, probe)
    if not np.any(probe):
        raise _error(source, f"{name} is zero everywhere; it sets the illumination")


def _valid_flags(source: str, valid, n_angles: int, n_positions: int) -> np.ndarray:
    """The (A, J) valid flags, all True when the file has none; raise when nothing is valid."""
    if valid is None:
        if n_angles * n_positions == 0:
            raise _error(source, f"{INTENSITIES} holds no measurement (A = {n_angles}, J = {n_positions})")
        return np.ones((n_angles, n_positions), dtype=bool)
    valid = _to_flags(source, VALID, _as_array(source, VALID, valid, _FLAG_KINDS))
    _check_shape(source, VALID, valid, (n_angles, n_positions), "(A, J)")
    if not valid.any():
        raise _error(source, f"{VALID} marks no measurement as valid (all False)")
    return valid


def _check_intensity_shape(source: str, shape: tuple) -> tuple[int, int, int]:
    """Return (A, J, M) from the intensities' shape, or raise."""
    if len(shape) != 4:
        raise _error(source, f"{INTENSITIES} has shape {shape}, expected 4 dimensions (A, J, M, M)")
    n_angles, n_positions, rows, cols = shape
    if rows != cols or rows == 0:
        raise _error(source, f"{INTENSITIES} has {rows} x {cols} frames, expected square M x M frames with M > 0")
    return n_angles, n_positions, rows


def _check_windows_overlap(source, positions, valid, m, nz, nx) -> None:
    """Every valid M x M window must touch the (Nz, Nu = Nx) projection.

    A window wholly in free space carries no information about the object;
    such positions are almost always a unit or convention error (metres
    instead of pixels, centre instead of top-left corner).
    """
    rows, cols = positions[..., 0], positions[..., 1]
    misses = valid & ((rows >= nz) | (rows + m <= 0) | (cols >= nx) | (cols + m <= 0))
    if misses.any():
        count = int(misses.sum())
        angle, position = np.argwhere(misses)[0]
        r, c = positions[angle, position]
        raise _error(
            source,
            f"{POSITIONS}: {count} valid measurement(s) have M x M windows [r, r+{m}) x [c, c+{m}) "
            f"outside the projection [0, {nz}) x [0, {nx}), first at angle index {angle}, "
            f"position index {position}: (r, c) = ({r:g}, {c:g}); fix the positions or mark "
            f"them False in {VALID}",
        )


# --------------------------------------------------------------------------
# Reconstruction files
# --------------------------------------------------------------------------


def write_reconstruction(path, recon: Reconstruction) -> None:
    """Validate ``recon`` and write it atomically in the FORMAT.md layout."""
    source = os.fspath(path)
    validate_reconstruction(recon, source)
    parameters = _encode_attrs(recon.parameters, source, RECONSTRUCTION)
    with atomic_h5(path) as f:
        _write_header(f, RECONSTRUCTION_FORMAT)
        _write_geometry(f, recon.geometry)
        # track_order: parameters and columns read back in the order they were given
        group = f.create_group(RECONSTRUCTION, track_order=True)
        group.create_dataset("volume", data=_to_complex64(recon.volume), **_COMPRESSION)
        group.attrs["method"] = recon.method
        group.attrs.update(parameters)
        for name, value, convert in _optional_reconstruction_fields(recon):
            if value is not None:
                f.create_dataset(name, data=convert(value))
        if recon.resolution is not None:
            curves, attributes = _resolution_parts(recon.resolution)
            group = f.create_group(RESOLUTION, track_order=True)
            for name, curve in curves.items():
                group.create_dataset(name, data=_to_float64(curve))
            group.attrs.update(_encode_attrs(attributes, source, RESOLUTION))
        history = f.create_group(HISTORY, track_order=True)
        for name, column in recon.history.items():
            history.create_dataset(name, data=np.asarray(column, dtype=np.float64))


def read_reconstruction(path) -> Reconstruction:
    """Read a reconstruction file; parameters come back as plain Python values."""
    source = os.fspath(path)
    with _open_for_reading(source) as f:
        _check_header(f, source, RECONSTRUCTION_FORMAT)
        geometry = _read_geometry(f, source)
        volume = _to_complex64(_read_array(f, source, VOLUME, _COMPLEX_KINDS))
        group = f[RECONSTRUCTION]
        method = _as_text(_get_attr(group, source, RECONSTRUCTION, "method"))
        if method is None:
            raise _error(source, f"{RECONSTRUCTION} attribute method is not a string")
        parameters = {}
        for name in group.attrs:
            if name != "method":
                value = _get_attr(group, source, RECONSTRUCTION, name)
                parameters[name] = _decode_attr(value)
        history_group = f.get(HISTORY)
        if not isinstance(history_group, h5py.Group):
            raise _error(source, f"missing group {HISTORY}")
        history = {}
        for name, member in history_group.items():
            if isinstance(member, h5py.Dataset):  # anything else is not a column
                column_field = f"{HISTORY}/{name}"
                history[name] = _to_real(_read_array(f, source, column_field, _REAL_KINDS), np.float64)
        optional = {}
        for name, _, convert in _optional_reconstruction_fields(None):
            if f.get(name) is not None:
                kinds = _COMPLEX_KINDS if convert is _to_complex64 else _REAL_KINDS
                optional[name.rsplit("/", 1)[1]] = convert(_read_array(f, source, name, kinds))
        if f.get(RESOLUTION) is not None:
            optional["resolution"] = _read_resolution(f, source)
    recon = Reconstruction(volume=volume, method=method, parameters=parameters, history=history, geometry=geometry,
                           **optional)
    validate_reconstruction(recon, source)
    return recon


@contextmanager
def open_reconstruction_volume(path) -> Iterator[tuple[h5py.Dataset, Geometry]]:
    """A reconstruction file's ``/reconstruction/volume``, left in the file, and its geometry.

    For readers of volumes larger than memory (``ptytomo export``): index the
    dataset slab by slab, with :func:`read_volume_slab` for one-line errors.
    The header, the geometry and the volume's dtype and shape are checked as
    :func:`read_reconstruction` checks them.
    """
    source = os.fspath(path)
    with _open_for_reading(source) as f:
        _check_header(f, source, RECONSTRUCTION_FORMAT)
        geometry = _read_geometry(f, source)
        dataset = _dataset(f, source, VOLUME)
        _check_kind(source, VOLUME, dataset.dtype, _COMPLEX_KINDS)
        if tuple(dataset.shape) != tuple(geometry.volume_shape):
            raise _error(source, f"{VOLUME} has shape {tuple(dataset.shape)}, expected volume_shape = "
                                 f"{tuple(geometry.volume_shape)}")
        yield dataset, geometry


def read_volume_slab(dataset: h5py.Dataset, planes: slice, source: str = "reconstruction") -> np.ndarray:
    """Planes ``planes`` (along z) of a volume from :func:`open_reconstruction_volume`, as complex64."""
    try:
        return _to_complex64(dataset[planes])
    except OSError as exc:
        raise _error(source, f"cannot read {VOLUME} ({exc}){_FILTER_HINT}") from None


def _to_float64(array) -> np.ndarray:
    return _to_real(array, np.float64)


def _read_resolution(f: h5py.File, source: str) -> dict:
    """``/resolution``: its datasets as float64 arrays, then its attributes as Python values."""
    group = f[RESOLUTION]
    if not isinstance(group, h5py.Group):
        raise _error(source, f"{RESOLUTION} is a dataset, expected a group")
    found = {}
    for name, member in group.items():
        if isinstance(member, h5py.Dataset):
            found[name] = _to_float64(_read_array(f, source, f"{RESOLUTION}/{name}", _REAL_KINDS))
    for name in group.attrs:
        found[name] = _decode_attr(_get_attr(group, source, RESOLUTION, name))
    return found


def _resolution_parts(resolution: dict) -> tuple[dict, dict]:
    """``Reconstruction.resolution`` split into curves (arrays: datasets) and attributes (scalars, strings)."""
    curves = {k: v for k, v in resolution.items() if isinstance(v, (np.ndarray, list, tuple)) and np.ndim(v) >= 1}
    return curves, {k: v for k, v in resolution.items() if k not in curves}


def _check_resolution(source: str, resolution) -> None:
    """``/resolution`` (docs/resolution.md): the curves of RESOLUTION_CURVES, 1D of one length S >= 2, and
    attributes HDF5 can store.  The FSC curves may hold NaN (a diverged half); the others may not."""
    if not isinstance(resolution, dict):
        raise _error(source, f"{RESOLUTION} must be a dict of curves and attributes, got {type(resolution).__name__}")
    curves, attributes = _resolution_parts(resolution)
    for name in RESOLUTION_CURVES:
        if name not in curves:
            raise _error(source, f"missing dataset {RESOLUTION}/{name}")
    length = None
    for name, curve in curves.items():
        if not isinstance(name, str) or not name or "/" in name or name == ".":
            raise _error(source, f"{RESOLUTION} curve name {name!r} is not a valid HDF5 name")
        label = f"{RESOLUTION}/{name}"
        curve = _to_float64(_as_array(source, label, curve, _REAL_KINDS))
        if curve.ndim != 1 or curve.shape[0] < 2:
            raise _error(source, f"{label} has shape {curve.shape}, expected (S,) with S >= 2 shells")
        length = curve.shape[0] if length is None else length
        if curve.shape[0] != length:
            raise _error(source, f"{label} has length {curve.shape[0]}, expected S = {length} like the other curves")
        if not name.startswith("fsc"):
            _check_finite(source, label, curve)
    frequency = _to_float64(curves["frequency"])
    if np.any(np.diff(frequency) <= 0) or frequency[0] < 0 or frequency[-1] > 0.5 + 1e-9:
        raise _error(source, f"{RESOLUTION}/frequency must rise from >= 0 to <= 0.5 cycles per voxel, got "
                             f"{_describe(frequency)}")
    if np.any(_to_float64(curves["voxels_per_shell"]) < 0):
        raise _error(source, f"{RESOLUTION}/voxels_per_shell has negative counts")
    _encode_attrs(attributes, source, RESOLUTION)


def _optional_reconstruction_fields(recon: Reconstruction | None):
    """(path, value, converter) of the refined unknowns FORMAT.md names beside the volume."""
    get = (lambda name: None) if recon is None else (lambda name: getattr(recon, name))
    return [
        (REFINED_PROBE, get("probe"), _to_complex64),
        (REFINED_POSITIONS, get("positions"), _to_float64),
        (ANGLE_SHIFTS, get("angle_shifts"), _to_float64),
        (TRANSMISSION, get("transmission"), _to_complex64),
    ]


def validate_reconstruction(recon: Reconstruction, source: str = "reconstruction") -> None:
    """Check ``recon`` against FORMAT.md; raise PtytomoError naming the first bad field.

    NaN and inf are allowed in the volume and history: a diverged run is
    still worth recording, and its record must stay readable.
    """
    _check_geometry(source, recon.geometry)
    volume = _as_array(source, VOLUME, recon.volume, _COMPLEX_KINDS)
    _check_shape(source, VOLUME, volume, tuple(recon.geometry.volume_shape), "volume_shape")
    if not isinstance(recon.method, str) or not recon.method:
        raise _error(source, f"{RECONSTRUCTION} attribute method must be a non-empty string, got {recon.method!r}")
    if not isinstance(recon.parameters, dict):
        raise _error(source, f"{RECONSTRUCTION} parameters must be a dict, got {type(recon.parameters).__name__}")
    if "method" in recon.parameters:
        raise _error(source, f"{RECONSTRUCTION} parameter 'method' clashes with the method attribute")
    _encode_attrs(recon.parameters, source, RECONSTRUCTION)

    if recon.probe is not None:
        probe = _as_array(source, REFINED_PROBE, recon.probe, _COMPLEX_KINDS)
        if probe.ndim != 3 or probe.shape[1] != probe.shape[2] or probe.shape[0] < 1:
            raise _error(source, f"{REFINED_PROBE} has shape {probe.shape}, expected (K, M, M)")
    if recon.positions is not None:
        positions = _as_array(source, REFINED_POSITIONS, recon.positions, _REAL_KINDS)
        if positions.ndim != 3 or positions.shape[2] != 2:
            raise _error(source, f"{REFINED_POSITIONS} has shape {positions.shape}, expected (A, J, 2)")
    if recon.angle_shifts is not None:
        shifts = _as_array(source, ANGLE_SHIFTS, recon.angle_shifts, _REAL_KINDS)
        if shifts.ndim != 2 or shifts.shape[1] != 2:
            raise _error(source, f"{ANGLE_SHIFTS} has shape {shifts.shape}, expected (A, 2)")
    if recon.transmission is not None:
        transmission = _as_array(source, TRANSMISSION, recon.transmission, _COMPLEX_KINDS)
        nz, _, nx = recon.geometry.volume_shape
        if transmission.ndim != 3 or transmission.shape[1:] != (nz, nx):
            raise _error(source, f"{TRANSMISSION} has shape {transmission.shape}, expected (A, Nz, Nu) "
                                 f"= (A, {nz}, {nx})")
    if recon.resolution is not None:
        _check_resolution(source, recon.resolution)

    if not isinstance(recon.history, dict):
        raise _error(source, f"{HISTORY} must be a dict of columns, got {type(recon.history).__name__}")
    for name in REQUIRED_HISTORY:
        if name not in recon.history:
            raise _error(source, f"missing dataset {HISTORY}/{name}")
    length = None
    for name, column in recon.history.items():
        if not isinstance(name, str) or not name or "/" in name or name == ".":
            raise _error(source, f"{HISTORY} column name {name!r} is not a valid HDF5 name")
        column_field = f"{HISTORY}/{name}"
        column = _as_array(source, column_field, column, _REAL_KINDS)
        if column.ndim != 1:
            raise _error(source, f"{column_field} has shape {column.shape}, expected (K,)")
        if length is None:
            length = column.shape[0]
        elif column.shape[0] != length:
            raise _error(
                source, f"{column_field} has length {column.shape[0]}, expected K = {length} like the other columns"
            )


# --------------------------------------------------------------------------
# HDF5 access: every h5py failure becomes a PtytomoError naming the field
# --------------------------------------------------------------------------

_FILTER_HINT = "; if it is compressed with a plugin filter, `import hdf5plugin` first"


def _error(source: str, message: str) -> PtytomoError:
    """A PtytomoError whose message is one line, prefixed with the file (or source)."""
    return PtytomoError(" ".join(f"{source}: {message}".split()))


def _open_for_reading(source: str) -> h5py.File:
    if not os.path.exists(source):
        raise _error(source, "file not found")
    if os.path.isdir(source):
        raise _error(source, "is a directory, expected an HDF5 file")
    try:
        return h5py.File(source, "r")
    except OSError as exc:
        try:
            is_hdf5 = h5py.is_hdf5(source)
        except Exception:  # noqa: BLE001 - only used to pick the message
            is_hdf5 = True
        if not is_hdf5:
            raise _error(source, "not an HDF5 file") from None
        raise _error(source, f"cannot open the HDF5 file ({exc})") from None


def _check_header(f: h5py.File, source: str, expected_format: str) -> None:
    """Root attributes: the format name must match and the version must not be newer."""
    found = _as_text(_get_attr(f, source, "the root group", "format"))
    if found != expected_format:
        hint = ""
        if found in (DATA_FORMAT, RECONSTRUCTION_FORMAT):
            hint = f" (this is a {'data' if found == DATA_FORMAT else 'reconstruction'} file)"
        raise _error(source, f"root attribute format is {found!r}, expected {expected_format!r}{hint}")
    version = _as_integer(_get_attr(f, source, "the root group", "version"))
    if version is None:
        raise _error(source, "root attribute version is not an integer")
    if version > FORMAT_VERSION:
        raise _error(
            source,
            f"root attribute version is {version}, newer than the supported {FORMAT_VERSION}; upgrade ptytomo",
        )
    if version < 1:
        raise _error(source, f"root attribute version is {version}, expected {FORMAT_VERSION}")


def _get_attr(obj, source: str, where: str, name: str) -> Any:
    if name not in obj.attrs:
        raise _error(source, f"{where} is missing attribute {name}")
    try:
        return obj.attrs[name]
    except (OSError, TypeError, ValueError) as exc:
        raise _error(source, f"cannot read attribute {name} of {where} ({exc})") from None


def _read_geometry(f: h5py.File, source: str) -> Geometry:
    group = f.get(GEOMETRY)
    if not isinstance(group, h5py.Group):
        raise _error(source, f"missing group {GEOMETRY}")
    numbers = {}
    for name in ("energy_kev", "voxel_size_m"):
        value = np.asarray(_get_attr(group, source, GEOMETRY, name))
        if value.size != 1 or value.dtype.kind not in _REAL_KINDS:
            raise _error(source, f"{GEOMETRY} attribute {name} is {_describe(value)}, expected a number")
        numbers[name] = float(value.reshape(()))
    shape = np.asarray(_get_attr(group, source, GEOMETRY, "volume_shape"))
    if shape.shape != (3,) or shape.dtype.kind not in _REAL_KINDS or not np.all(np.mod(shape, 1) == 0):
        raise _error(
            source, f"{GEOMETRY} attribute volume_shape is {_describe(shape)}, expected 3 integers (Nz, Ny, Nx)"
        )
    geometry = Geometry(numbers["energy_kev"], numbers["voxel_size_m"], tuple(int(n) for n in shape))
    _check_geometry(source, geometry)
    return geometry


def _write_header(f: h5py.File, format_name: str) -> None:
    f.attrs["format"] = format_name
    f.attrs["version"] = np.int64(FORMAT_VERSION)


def _write_geometry(f: h5py.File, geometry: Geometry) -> None:
    group = f.create_group(GEOMETRY)
    group.attrs["energy_kev"] = np.float64(geometry.energy_kev)
    group.attrs["voxel_size_m"] = np.float64(geometry.voxel_size_m)
    group.attrs["volume_shape"] = np.asarray(geometry.volume_shape, dtype=np.int64)


def _dataset(f: h5py.File, source: str, name: str) -> h5py.Dataset:
    obj = f.get(name)  # None for missing objects and dangling links alike
    if obj is None:
        raise _error(source, f"missing dataset {name}")
    if not isinstance(obj, h5py.Dataset):
        raise _error(source, f"{name} is a group, expected a dataset")
    if obj.shape is None:
        raise _error(source, f"{name} is empty (no dataspace), expected an array")
    return obj


def _read_array(
    f: h5py.File, source: str, name: str, kinds: str, rows: slice | None = None, n_angles: int = 0
) -> np.ndarray:
    """Read a dataset after checking its dtype (so strings are never decoded).

    ``rows`` of ``n_angles`` reads only those angles of a per-angle field.
    """
    dataset = _dataset(f, source, name)
    _check_kind(source, name, dataset.dtype, kinds)
    selection = ()
    if rows is not None and rows != slice(0, n_angles):
        # A part cannot show a wrong length, so check it here; whole fields get validate_data's message.
        if not dataset.shape or dataset.shape[0] != n_angles:
            raise _error(source, f"{name} has shape {dataset.shape}, expected A = {n_angles} rows like {INTENSITIES}")
        selection = rows
    try:
        return np.asarray(dataset[selection])
    except OSError as exc:
        raise _error(source, f"cannot read {name} ({exc}){_FILTER_HINT}") from None


def _angle_range(source: str, angles, n_angles: int) -> slice:
    """``angles`` as slice(start, stop) of ``n_angles``: contiguous and not empty."""
    if angles is None:
        return slice(0, n_angles)
    if not isinstance(angles, slice):
        raise _error(source, f"angles must be a slice, got {type(angles).__name__}")
    start, stop, step = angles.indices(n_angles)
    if step != 1 or stop <= start:
        raise _error(source, f"angles {angles} is not a non-empty contiguous range of the {n_angles} angles")
    return slice(start, stop)


def _read_attrs_leniently(group) -> dict:
    """Attributes of an optional, producer-defined group; unreadable ones are skipped."""
    if not isinstance(group, h5py.Group):
        return {}
    attrs = {}
    for name in group.attrs:
        try:
            attrs[name] = _decode_attr(group.attrs[name])
        except Exception:  # noqa: BLE001 - FORMAT.md: readers ignore what it does not name
            continue
    return attrs


# --------------------------------------------------------------------------
# Checks and conversions shared by reading and writing
# --------------------------------------------------------------------------


def _describe(value) -> str:
    """Short description of a dtype or value for error messages."""
    if isinstance(value, np.dtype):
        if h5py.check_string_dtype(value) is not None or value.kind in "SUO":
            return "string"
        if value.kind == "V":
            return f"compound {value}"
        return str(value)
    text = repr(value.tolist() if isinstance(value, np.ndarray) else value)
    return text if len(text) <= 60 else text[:57] + "..."


def _check_kind(source: str, name: str, dtype: np.dtype, kinds: str) -> None:
    if dtype.kind in kinds and h5py.check_string_dtype(dtype) is None:
        return
    expected = {
        _REAL_KINDS: "real numbers (float or integer)",
        _COMPLEX_KINDS: "complex or real numbers",
        _FLAG_KINDS: "bool or integer 0/1",
    }[kinds]
    raise _error(source, f"{name} has dtype {_describe(dtype)}, expected {expected}")


def _as_array(source: str, name: str, value, kinds: str) -> np.ndarray:
    """An in-memory field as an ndarray of an accepted dtype kind."""
    if value is None:
        raise _error(source, f"{name} is missing (None)")
    try:
        array = np.asarray(value)
    except (ValueError, TypeError) as exc:
        raise _error(source, f"{name} is not an array ({exc})") from None
    _check_kind(source, name, array.dtype, kinds)
    return array


def _check_shape(source: str, name: str, array: np.ndarray, expected: tuple, symbolic: str) -> None:
    if array.shape != tuple(expected):
        raise _error(source, f"{name} has shape {array.shape}, expected {symbolic} = {tuple(expected)}")


def _check_finite(source: str, name: str, array: np.ndarray) -> None:
    finite = np.isfinite(array)
    if not finite.all():
        first = np.unravel_index(np.argmin(finite), array.shape)
        count = array.size - int(np.count_nonzero(finite))
        raise _error(
            source, f"{name} has {count} non-finite value(s) (NaN or inf), first at index {tuple(map(int, first))}"
        )


def _check_nonnegative(source: str, name: str, array: np.ndarray) -> None:
    if array.size and array.min() < 0:
        negative = array < 0
        first = np.unravel_index(np.argmax(negative), array.shape)
        raise _error(
            source,
            f"{name} has {int(negative.sum())} negative value(s) (min {float(array.min()):g}), "
            f"first at index {tuple(map(int, first))}; photon counts are >= 0",
        )


def _check_geometry(source: str, geometry) -> None:
    if not isinstance(geometry, Geometry):
        raise _error(source, f"{GEOMETRY} must be a Geometry, got {type(geometry).__name__}")
    for name in ("energy_kev", "voxel_size_m"):
        value = getattr(geometry, name)
        if not (_is_real(value) and np.isfinite(value) and value > 0):
            raise _error(source, f"{GEOMETRY} attribute {name} is {value!r}, expected a finite number > 0")
    shape = geometry.volume_shape
    if not (
        isinstance(shape, tuple) and len(shape) == 3 and all(_is_integer(n) and n > 0 for n in shape)
    ):
        raise _error(
            source, f"{GEOMETRY} attribute volume_shape is {shape!r}, expected 3 positive integers (Nz, Ny, Nx)"
        )


def _is_real(value) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))


def _is_integer(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _to_real(array, dtype) -> np.ndarray:
    # Values beyond the target range become inf and are then reported as non-finite.
    with np.errstate(over="ignore", invalid="ignore"):
        return np.asarray(array).astype(dtype, copy=False)


def _to_complex64(array) -> np.ndarray:
    with np.errstate(over="ignore", invalid="ignore"):
        return np.asarray(array).astype(np.complex64, copy=False)


def _to_flags(source: str, name: str, array: np.ndarray) -> np.ndarray:
    """Bool, or integer 0/1 (what producers without a bool type write), as bool."""
    if array.dtype.kind == "b":
        return array.astype(bool, copy=False)
    if np.any((array != 0) & (array != 1)):
        raise _error(source, f"{name} has values other than 0 and 1, expected bool flags")
    return array != 0


def _as_text(value) -> str | None:
    if isinstance(value, np.ndarray) and value.size == 1:
        value = value.reshape(()).item()
    if isinstance(value, bytes):
        try:
            value = value.decode("utf-8")
        except UnicodeDecodeError:
            return None
    return str(value) if isinstance(value, str) else None


def _as_integer(value) -> int | None:
    value = np.asarray(value)
    if value.size != 1 or value.dtype.kind not in _REAL_KINDS:
        return None
    number = value.reshape(()).item()
    return int(number) if float(number).is_integer() else None


def _encode_attrs(values: dict, source: str, where: str) -> dict:
    """Python values -> HDF5 attribute values; None is stored as the string "none"."""
    if not isinstance(values, dict):
        raise _error(source, f"{where} attributes must be a dict, got {type(values).__name__}")
    encoded = {}
    for name, value in values.items():
        if not isinstance(name, str) or not name:
            raise _error(source, f"{where} attribute name {name!r} is not a non-empty string")
        try:
            encoded[name] = _encode_attr(value)
        except (TypeError, ValueError, OverflowError) as exc:
            raise _error(source, f"{where} attribute {name} = {_describe(value)} cannot be stored ({exc})") from None
    return encoded


def _encode_attr(value):
    if value is None:
        return "none"
    if isinstance(value, (bool, np.bool_)):
        return np.bool_(value)
    if isinstance(value, (int, np.integer)):
        return np.int64(value)
    if isinstance(value, (float, np.floating)):
        return np.float64(value)
    if isinstance(value, str):
        return value
    if isinstance(value, (list, tuple, np.ndarray)):
        array = np.asarray(value)
        if array.size == 0:
            return np.zeros(array.shape, dtype=np.float64)
        if array.dtype.kind in "biuf":
            return array
        if array.dtype.kind == "U":
            return array.astype(h5py.string_dtype())
        raise TypeError("lists must hold only numbers or only strings")
    raise TypeError(f"unsupported type {type(value).__name__}; use str, int, float, bool, None or lists")


def _decode_attr(value):
    if isinstance(value, h5py.Empty):
        return None
    if isinstance(value, (bytes, np.bytes_)):
        value = value.decode("utf-8")
    if isinstance(value, str):
        return None if value == "none" else str(value)
    if isinstance(value, np.ndarray):
        return _decode_items(value.tolist())
    if isinstance(value, np.generic):
        return value.item()
    return value


def _decode_items(items):
    """Nested lists from ``ndarray.tolist()``, with fixed-length strings decoded."""
    if isinstance(items, list):
        return [_decode_items(item) for item in items]
    return items.decode("utf-8") if isinstance(items, bytes) else items
