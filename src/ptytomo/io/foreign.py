"""What every foreign layout reader shares: one angle's scan, unit tables and careful HDF5 access.

A layout module (:mod:`.cxi`, :mod:`.nexus`, :mod:`.ptychodus`, :mod:`.mapping`)
opens one angle's input and returns an :class:`AngleScan`: the frames left in
the file (:class:`FrameSource`), the positions in metres with the layout's sign
already settled, and the numbers the geometry needs in SI units.
:mod:`.series` turns a list of them into one FORMAT.md file.

Every failure -- a missing field, a missing unit, a string where a number
belongs, a truncated file, a compression filter h5py cannot decode -- becomes
one :class:`~ptytomo.errors.PtytomoError` line naming the file and the path.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import h5py
import numpy as np

from ..errors import PtytomoError

# Unit tables: factor to SI (metres, radians) or to keV for energies.
LENGTH_UNITS = {"m": 1.0, "meter": 1.0, "metre": 1.0, "cm": 1e-2, "mm": 1e-3, "um": 1e-6, "µm": 1e-6,
                "micron": 1e-6, "microns": 1e-6, "nm": 1e-9, "pm": 1e-12}
JOULES_PER_KEV = 1.602176634e-16
ENERGY_UNITS = {"kev": 1.0, "ev": 1e-3, "j": 1.0 / JOULES_PER_KEV}
ANGLE_UNITS = {"rad": 1.0, "radian": 1.0, "radians": 1.0,
               "deg": np.pi / 180, "degree": np.pi / 180, "degrees": np.pi / 180}

# HDF5 filter ids of the compressors detector files use (registered by hdf5plugin).
FILTER_NAMES = {32001: "Blosc", 32004: "LZ4", 32008: "Bitshuffle", 32015: "Zstd", 32026: "Blosc2",
                307: "bzip2", 32013: "ZFP", 32017: "SZ", 32024: "SZ3", 32018: "FCIDECOMP"}

_NUMBER_KINDS = "fiu"


def error(source: str, path: str | None, message: str) -> PtytomoError:
    """One line: ``file: path: message`` (whitespace of nested messages folded)."""
    where = f"{source}: {path}: " if path else f"{source}: "
    return PtytomoError(" ".join((where + message).split()))


def load_compression_plugins() -> bool:
    """Register hdf5plugin's filters (bitshuffle/LZ4, Blosc, Zstd...); False when it is not installed."""
    try:
        import hdf5plugin  # noqa: F401  (importing registers the filters with HDF5)
    except ImportError:
        return False
    return True


def missing_filter(dataset: h5py.Dataset) -> tuple[int, str] | None:
    """(id, name) of the first filter in the dataset's pipeline that this HDF5 cannot run."""
    try:
        plist = dataset.id.get_create_plist()
        for index in range(plist.get_nfilters()):
            code = int(plist.get_filter(index)[0])
            if not h5py.h5z.filter_avail(code):
                return code, FILTER_NAMES.get(code, f"filter {code}")
    except Exception:  # noqa: BLE001 - only used to choose the message
        return None
    return None


def read_failure(source: str, path: str, dataset, exc: Exception) -> PtytomoError:
    """The one line for a dataset h5py could not read: which filter is missing, when that is why."""
    missing = missing_filter(dataset) if isinstance(dataset, h5py.Dataset) else None
    if missing is not None:
        code, name = missing
        hint = ("hdf5plugin does not provide it" if load_compression_plugins()
                else "install hdf5plugin (pip install hdf5plugin)")
        return error(source, path, f"compressed with the HDF5 filter {name} (id {code}), which is not "
                                   f"available; {hint}")
    return error(source, path, f"cannot read ({exc})")


def to_unit(source: str, path: str, unit: str | None, table: dict, what: str) -> float:
    """Factor of ``unit`` in ``table``, or a line naming the unit and the choices."""
    if unit is None:
        raise error(source, path, f"no unit for the {what} (an @units attribute or the mapping's units)")
    key = unit.strip()
    factor = table.get(key, table.get(key.lower()))
    if factor is None:
        raise error(source, path, f"unknown {what} unit {unit!r}; use one of {', '.join(sorted(table))}")
    return factor


class FrameSource:
    """The frames of one angle, left in the file: ``read(start, stop)`` loads frames [start, stop).

    ``order`` (optional) maps frame number to dataset row (ptychodus's position indexes), so
    frames come back in the order of the positions.
    """

    def __init__(self, dataset: h5py.Dataset, source: str, path: str, order: np.ndarray | None = None):
        self.dataset, self.source, self.path = dataset, source, path
        if dataset.ndim != 3 or 0 in dataset.shape:
            raise error(source, path, f"has shape {dataset.shape}, expected frames (J, H, W)")
        if dataset.dtype.kind not in _NUMBER_KINDS or h5py.check_string_dtype(dataset.dtype) is not None:
            raise error(source, path, f"has dtype {dataset.dtype}, expected numbers (photon counts)")
        if order is not None:
            order = np.asarray(order)
            if order.ndim != 1 or order.size == 0 or np.any(order < 0) or np.any(order >= dataset.shape[0]):
                raise error(source, path, f"position indexes must lie in [0, {dataset.shape[0]}), "
                                          f"got {order.size} values from {order.min(initial=0)} to "
                                          f"{order.max(initial=0)}")
        self.order = order

    def __len__(self) -> int:
        return int(self.dataset.shape[0] if self.order is None else self.order.size)

    @property
    def frame_shape(self) -> tuple[int, int]:
        return tuple(int(n) for n in self.dataset.shape[1:])

    @property
    def saturation(self) -> float | None:
        """The largest integer of the stored dtype: detectors write it for saturated or broken pixels."""
        dtype = self.dataset.dtype
        return float(np.iinfo(dtype).max) if dtype.kind in "iu" else None

    def read(self, start: int, stop: int) -> np.ndarray:
        """Frames [start, stop) as float64 (NaN, inf and negative values are the caller's to mask)."""
        try:
            if self.order is None:
                block = self.dataset[start:stop]
            else:
                rows = self.order[start:stop]
                unique, inverse = np.unique(rows, return_inverse=True)  # h5py reads increasing rows only
                block = self.dataset[unique][inverse]
        except (OSError, ValueError, TypeError, KeyError) as exc:
            raise read_failure(self.source, self.path, self.dataset, exc) from None
        with np.errstate(over="ignore", invalid="ignore"):
            return np.asarray(block, dtype=np.float64)


@dataclass
class AngleScan:
    """One angle's measurement, as every layout reader returns it."""

    source: str  # the input (file or directory) for messages
    format: str
    frames: FrameSource
    positions_m: np.ndarray  # float64 (J, 2): (row, col) window positions in the object plane, metres
    energy_kev: float
    distance_m: float | None = None
    detector_pixel_m: tuple[float, float] | None = None  # (row = y, col = x) pixel pitch
    object_pixel_m: float | None = None  # object-plane pixel as the producer states it (raw frames)
    mask: np.ndarray | None = None  # bool (H, W), True = good pixel
    probe: np.ndarray | None = None  # complex (K, H, W), object plane
    angle_rad: float | None = None
    saturation: float | None = None
    fields: dict = field(default_factory=dict)  # what was read from where (recorded in /import)


class InputFile:
    """An HDF5 input opened for reading, whose every access fails as one line naming file and path."""

    def __init__(self, path: str, label: str | None = None):
        self.path = os.fspath(path)
        self.label = label or self.path
        load_compression_plugins()
        if not os.path.exists(self.path):
            raise error(self.label, None, "file not found")
        if os.path.isdir(self.path):
            raise error(self.label, None, "is a directory, expected an HDF5 file")
        try:
            self.file = h5py.File(self.path, "r")
        except (OSError, ValueError) as exc:
            if not _looks_like_hdf5(self.path):
                raise error(self.label, None, "not an HDF5 file (or truncated)") from None
            raise error(self.label, None, f"cannot open the HDF5 file ({exc})") from None

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()

    def close(self) -> None:
        try:
            self.file.close()
        except Exception:  # noqa: BLE001 - closing a damaged file must not hide the first error
            pass

    def has(self, path: str) -> bool:
        try:
            return self.file.get(path) is not None
        except (OSError, ValueError, KeyError, RuntimeError):
            return False

    def first(self, paths) -> str | None:
        """The first of ``paths`` present in the file."""
        return next((path for path in paths if self.has(path)), None)

    def dataset(self, path: str) -> h5py.Dataset:
        try:
            obj = self.file.get(path)
        except (OSError, ValueError, KeyError, RuntimeError) as exc:
            raise error(self.label, path, f"cannot be opened ({exc})") from None
        if obj is None:
            raise error(self.label, path, "missing")
        if not isinstance(obj, h5py.Dataset):
            raise error(self.label, path, "is a group, expected a dataset")
        if obj.shape is None:
            raise error(self.label, path, "is empty (no dataspace)")
        return obj

    def array(self, path: str, complex_ok: bool = False) -> np.ndarray:
        """A numeric dataset read whole (small fields: positions, masks, probes)."""
        dataset = self.dataset(path)
        kinds = _NUMBER_KINDS + ("c" if complex_ok else "") + "b"
        if h5py.check_string_dtype(dataset.dtype) is not None:
            raise error(self.label, path, "holds text, expected numbers")
        if dataset.dtype.kind not in kinds:
            raise error(self.label, path, f"has dtype {dataset.dtype}, expected numbers")
        try:
            return np.asarray(dataset[()])
        except (OSError, ValueError, TypeError) as exc:
            raise read_failure(self.label, path, dataset, exc) from None

    def units(self, path: str) -> str | None:
        """The @units attribute of a dataset, as text, or None."""
        try:
            value = self.file[path].attrs.get("units")
        except (OSError, ValueError, KeyError, RuntimeError, TypeError):
            return None
        return as_text(value)

    def attribute(self, path: str, name: str):
        """Attribute ``name`` of the object at ``path`` ('/' for the root); missing -> one line."""
        try:
            obj = self.file[path]
            if name not in obj.attrs:
                raise error(self.label, f"{path}@{name}", "missing attribute")
            return obj.attrs[name]
        except PtytomoError:
            raise
        except (OSError, ValueError, KeyError, RuntimeError, TypeError) as exc:
            raise error(self.label, f"{path}@{name}", f"cannot be read ({exc})") from None

    def quantity(self, spec: str, table: dict, what: str, unit: str | None = None, positive: bool = True,
                 unit_wins: bool = False) -> float:
        """A scalar from a dataset or ``path@attribute``, converted with ``table``.

        The unit is the dataset's @units when present, else ``unit`` (the layout's fixed unit);
        with ``unit_wins`` (a mapping file's stated unit) ``unit`` overrides @units.
        """
        values = self.quantities(spec, table, what, unit, positive, unit_wins)
        if values.size != 1:
            raise error(self.label, spec, f"has {values.size} values, expected one {what}")
        return float(values.reshape(()))

    def quantities(self, spec: str, table: dict, what: str, unit: str | None = None,
                   positive: bool = False, unit_wins: bool = False) -> np.ndarray:
        """An array of numbers (dataset or attribute) in the unit of ``table``; finite, and > 0 if asked."""
        path, _, attribute = spec.partition("@")
        if attribute:
            raw, stated = self.attribute(path or "/", attribute), None
        else:
            raw, stated = self.array(path), self.units(path)
        values = np.asarray(raw)
        if values.dtype.kind not in _NUMBER_KINDS or values.size == 0:
            raise error(self.label, spec, f"is {_describe(values)}, expected the {what} as numbers")
        chosen = unit if (unit_wins and unit is not None) else (stated or unit)
        factor = to_unit(self.label, spec, chosen, table, what)
        with np.errstate(over="ignore", invalid="ignore"):
            values = values.astype(np.float64) * factor
        if not np.all(np.isfinite(values)):
            raise error(self.label, spec, f"has NaN or infinite {what} values")
        if positive and np.any(values <= 0):
            raise error(self.label, spec, f"{what} must be > 0, got {_describe(values / factor)}")
        return values


def _looks_like_hdf5(path: str) -> bool:
    try:
        return bool(h5py.is_hdf5(path))
    except Exception:  # noqa: BLE001
        return False


def as_text(value) -> str | None:
    if isinstance(value, np.ndarray) and value.size == 1:
        value = value.reshape(()).item()
    if isinstance(value, (bytes, np.bytes_)):
        try:
            value = bytes(value).decode("utf-8")
        except UnicodeDecodeError:
            return None
    return value if isinstance(value, str) else None


def _describe(values: np.ndarray) -> str:
    if values.dtype.kind in "SUO":
        return "text"
    text = repr(values.tolist()) if values.size <= 4 else f"an array of shape {values.shape}"
    return text if len(text) <= 60 else text[:57] + "..."


def good_pixels_from_bad(source: str, path: str, bad: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """A (H, W) good-pixel mask from a bad-pixel array (nonzero = bad), shape-checked."""
    bad = np.asarray(bad)
    if bad.shape != tuple(shape):
        raise error(source, path, f"has shape {bad.shape}, expected the frame shape {tuple(shape)}")
    return bad == 0


def probe_modes(source: str, path: str, probe: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """A probe (H, W) or (K, H, W), complex128 modes (K, H, W); frame-shaped and finite."""
    stored = np.asarray(probe)
    probe = stored[None] if stored.ndim == 2 else stored
    if probe.ndim != 3 or probe.shape[1:] != tuple(shape) or probe.shape[0] < 1:
        raise error(source, path, f"has shape {stored.shape}, expected (H, W) or (K, H, W) with the frame "
                                  f"shape {tuple(shape)}")
    with np.errstate(over="ignore", invalid="ignore"):
        probe = probe.astype(np.complex128)
    if not np.all(np.isfinite(probe)) or not np.any(probe):
        raise error(source, path, "is not finite or is zero everywhere")
    return probe


def window_positions(source: str, path: str, rows_m, cols_m, count: int) -> np.ndarray:
    """(J, 2) (row, col) positions in metres from two 1D arrays, checked against the frame count."""
    rows_m, cols_m = np.ravel(rows_m), np.ravel(cols_m)
    if rows_m.shape != cols_m.shape:
        raise error(source, path, f"x and y hold {cols_m.size} and {rows_m.size} values, expected the same")
    if rows_m.size != count:
        raise error(source, path, f"holds {rows_m.size} positions for {count} frames")
    return np.stack([rows_m, cols_m], axis=-1)
