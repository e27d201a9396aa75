"""One angle's scan from any HDF5 file, located by a small mapping file (TOML).

The mapping names, for every input file alike, where each field lives and in
which unit (docs/import.md lists the keys)::

    frames = "/entry/data/data"          # (J, H, W) detector frames
    position_x = "/entry/scan/x"         # column axis
    position_y = "/entry/scan/y"         # row axis
    position_units = "um"
    positions_are = "sample"             # sample: a translation (window = minus it); probe: plus it
    energy = "/entry/energy"             # an HDF5 path, "path@attribute", or a number
    energy_units = "keV"
    distance = 5.2
    distance_units = "m"
    pixel_size = 75e-6                   # or pixel_size_x and pixel_size_y
    pixel_size_units = "m"
    angle = "/entry/theta"               # optional (then --angles FILE)
    angle_units = "deg"
    mask = "/entry/mask"                 # optional
    mask_bad = "nonzero"                 # nonzero: bad pixels are nonzero; zero: good pixels are nonzero
    probe = "/entry/probe"               # optional, (H, W) or (K, H, W)
    saturation = 65000                   # optional: counts at or above it are masked

A ``*_units`` key wins over the dataset's ``@units``; with neither, the field is an error.
"""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager

import numpy as np

from .foreign import (ANGLE_UNITS, ENERGY_UNITS, LENGTH_UNITS, AngleScan, FrameSource, InputFile, error,
                      good_pixels_from_bad, probe_modes, to_unit, window_positions)

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

PATH_KEYS = ("frames", "position_x", "position_y", "mask", "probe")
QUANTITY_KEYS = ("energy", "distance", "pixel_size", "pixel_size_x", "pixel_size_y", "angle", "saturation")
UNIT_KEYS = ("position_units", "energy_units", "distance_units", "pixel_size_units", "angle_units")
CHOICE_KEYS = {"positions_are": ("sample", "probe"), "mask_bad": ("nonzero", "zero")}
REQUIRED = ("frames", "position_x", "position_y", "positions_are", "energy", "distance")


def load_mapping(path: str) -> dict:
    """The mapping file as a checked dict; unknown keys are errors (a typo must not pass silently)."""
    path = os.fspath(path)
    try:
        with open(path, "rb") as handle:
            mapping = tomllib.load(handle)
    except OSError as exc:
        raise error(path, None, f"cannot read the mapping file ({exc.strerror})") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise error(path, None, f"not a valid TOML mapping file ({exc})") from None
    known = set(PATH_KEYS) | set(QUANTITY_KEYS) | set(UNIT_KEYS) | set(CHOICE_KEYS)
    for key, value in mapping.items():
        if key not in known:
            raise error(path, key, f"unknown key; the mapping keys are {', '.join(sorted(known))}")
        if key in PATH_KEYS + UNIT_KEYS and not isinstance(value, str):
            raise error(path, key, f"must be a string, got {value!r}")
        if key in QUANTITY_KEYS and (isinstance(value, bool) or not isinstance(value, (str, int, float))):
            raise error(path, key, f"must be an HDF5 path or a number, got {value!r}")
        if key in CHOICE_KEYS and value not in CHOICE_KEYS[key]:
            raise error(path, key, f"is {value!r}; choose {' or '.join(CHOICE_KEYS[key])}")
    for key in REQUIRED:
        if key not in mapping:
            raise error(path, key, "missing from the mapping file")
    if "pixel_size" not in mapping and not {"pixel_size_x", "pixel_size_y"} <= set(mapping):
        raise error(path, "pixel_size", "missing from the mapping file (or give pixel_size_x and pixel_size_y)")
    mapping["_file"] = path
    return mapping


@contextmanager
def open_scan(path: str, mapping: dict):
    """Yield the :class:`~.foreign.AngleScan` of one file located by ``mapping`` (see load_mapping)."""
    with InputFile(path) as f:
        yield read_scan(f, mapping)


def read_scan(f: InputFile, mapping: dict) -> AngleScan:
    frames = FrameSource(f.dataset(mapping["frames"]), f.label, mapping["frames"])
    unit = mapping.get("position_units")
    rows = f.quantities(mapping["position_y"], LENGTH_UNITS, "position", unit, unit_wins=True)
    cols = f.quantities(mapping["position_x"], LENGTH_UNITS, "position", unit, unit_wins=True)
    sign = -1.0 if mapping["positions_are"] == "sample" else 1.0  # a sample translation moves the window back
    scan = AngleScan(
        source=f.label, format="map", frames=frames,
        positions_m=window_positions(f.label, mapping["position_x"], sign * rows, sign * cols, len(frames)),
        energy_kev=quantity(f, mapping, "energy", ENERGY_UNITS, "photon energy"),
        distance_m=quantity(f, mapping, "distance", LENGTH_UNITS, "detector distance"),
        detector_pixel_m=(quantity(f, mapping, "pixel_size_y", LENGTH_UNITS, "pixel size", "pixel_size"),
                          quantity(f, mapping, "pixel_size_x", LENGTH_UNITS, "pixel size", "pixel_size")),
        saturation=frames.saturation,
        fields={key: str(mapping[key]) for key in PATH_KEYS + QUANTITY_KEYS if key in mapping},
    )
    if "saturation" in mapping:
        scan.saturation = quantity(f, mapping, "saturation", COUNTS, "saturation level")
    if "angle" in mapping:
        scan.angle_rad = quantity(f, mapping, "angle", ANGLE_UNITS, "rotation angle", positive=False)
    if "mask" in mapping:
        values = f.array(mapping["mask"])
        bad = values != 0 if mapping.get("mask_bad", "nonzero") == "nonzero" else values == 0
        scan.mask = good_pixels_from_bad(f.label, mapping["mask"], bad, frames.frame_shape)
    if "probe" in mapping:
        scan.probe = probe_modes(f.label, mapping["probe"], f.array(mapping["probe"], complex_ok=True),
                                 frames.frame_shape)
    return scan


COUNTS = {"": 1.0, "counts": 1.0}  # the saturation level has no unit to state


def quantity(f: InputFile, mapping: dict, key: str, table: dict, what: str, fallback: str | None = None,
             positive: bool = True) -> float:
    """A mapped scalar: read from the file (a path), or a literal number in the mapping's unit."""
    if key not in mapping:
        key = fallback
    value = mapping[key]
    unit_key = f"{key.removesuffix('_x').removesuffix('_y')}_units"
    unit = mapping.get(unit_key, "" if table is COUNTS else None)
    if isinstance(value, str):
        return f.quantity(value, table, what, unit, positive, unit_wins=True)
    source = mapping["_file"]
    factor = to_unit(source, unit_key, unit, table, what)
    number = float(value) * factor
    if not np.isfinite(number) or (positive and number <= 0):
        raise error(source, key, f"is {value!r}, expected a finite {what}" + (" > 0" if positive else ""))
    return number
