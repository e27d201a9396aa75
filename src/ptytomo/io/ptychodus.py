"""One angle's scan from a ptychodus directory: ``diffraction.h5`` with ``product-in.h5``.

- ``diffraction.h5``: ``patterns`` (N, H, W), optional ``indexes`` (N,) naming each
  pattern, optional ``bad_pixels`` (H, W) (nonzero = bad), the detector pixel pitch
  as attributes ``detector_pixel_width_m`` / ``detector_pixel_height_m`` (root or
  ``patterns``).
- ``product-in.h5``: root attributes ``detector_object_distance_m``,
  ``probe_energy_eV`` and (optional) ``tomography_angle_deg``; datasets
  ``probe_position_indexes``, ``probe_position_x_m``, ``probe_position_y_m`` and
  ``probe`` (opr, modes, H, W) with ``pixel_width_m`` / ``pixel_height_m``.

Ptychodus stores the PROBE's position on the object, so a window's position is
plus the stored value (column from x, row from y), unlike CXI's sample
translation.  Of an OPR probe (orthogonal probe relaxation: one probe per
position, as a mean plus variations) the first component is the mean probe;
its modes are kept.  Without a detector pixel pitch the probe's pixel size
is the object-plane pixel.
"""

from __future__ import annotations

import os
from contextlib import ExitStack, contextmanager

import numpy as np

from .foreign import (ANGLE_UNITS, ENERGY_UNITS, LENGTH_UNITS, AngleScan, FrameSource, InputFile, error,
                      good_pixels_from_bad, probe_modes, window_positions)

DIFFRACTION = "diffraction.h5"
PRODUCT = "product-in.h5"
PIXEL_ATTRIBUTES = ("detector_pixel_height_m", "detector_pixel_width_m")


@contextmanager
def open_scan(directory: str):
    """Yield the :class:`~.foreign.AngleScan` of one ptychodus directory."""
    directory = os.fspath(directory)
    if not os.path.isdir(directory):
        raise error(directory, None, f"expected a ptychodus directory holding {DIFFRACTION} and {PRODUCT}")
    with ExitStack() as stack:
        diffraction = stack.enter_context(InputFile(os.path.join(directory, DIFFRACTION)))
        product = stack.enter_context(InputFile(os.path.join(directory, PRODUCT)))
        yield read_scan(directory, diffraction, product)


def read_scan(directory: str, diffraction: InputFile, product: InputFile) -> AngleScan:
    patterns = diffraction.dataset("/patterns")
    indexes = product.array("/probe_position_indexes")
    if indexes.dtype.kind not in "iu" or indexes.ndim != 1:
        raise error(product.label, "/probe_position_indexes", f"has dtype {indexes.dtype} and shape "
                                                              f"{indexes.shape}, expected integers (J,)")
    frames = FrameSource(patterns, diffraction.label, "/patterns", pattern_rows(diffraction, indexes))
    positions = window_positions(
        product.label, "/probe_position_x_m",
        product.quantities("/probe_position_y_m", LENGTH_UNITS, "probe position", "m"),
        product.quantities("/probe_position_x_m", LENGTH_UNITS, "probe position", "m"),
        len(frames),
    )  # the probe's position on the object: row from y, column from x, not negated
    scan = AngleScan(
        source=directory, format="ptychodus", frames=frames, positions_m=positions,
        energy_kev=product.quantity("/@probe_energy_eV", ENERGY_UNITS, "photon energy", "eV"),
        distance_m=product.quantity("/@detector_object_distance_m", LENGTH_UNITS, "detector distance", "m"),
        detector_pixel_m=detector_pixel(diffraction),
        saturation=frames.saturation,
        fields={"frames": f"{diffraction.label}:/patterns", "positions": f"{product.label}:/probe_position_x_m"},
    )
    if diffraction.has("/bad_pixels"):
        scan.mask = good_pixels_from_bad(diffraction.label, "/bad_pixels", diffraction.array("/bad_pixels"),
                                         frames.frame_shape)
    if product.has("/probe"):
        probe = product.array("/probe", complex_ok=True)
        if probe.ndim == 4:
            probe = probe[0]  # OPR: the first component is the mean probe
        scan.probe = probe_modes(product.label, "/probe", probe, frames.frame_shape)
        if scan.detector_pixel_m is None:
            scan.object_pixel_m = probe_pixel(product)
    if scan.detector_pixel_m is None and scan.object_pixel_m is None:
        raise error(diffraction.label, "/patterns", f"no pixel size: neither attributes "
                                                    f"{' / '.join(PIXEL_ATTRIBUTES)} nor a probe with pixel_width_m")
    if "tomography_angle_deg" in product.file.attrs:
        scan.angle_rad = product.quantity("/@tomography_angle_deg", ANGLE_UNITS, "rotation angle", "deg",
                                          positive=False)
    return scan


def pattern_rows(diffraction: InputFile, indexes: np.ndarray) -> np.ndarray:
    """Row of ``patterns`` for each position: the pattern whose ``indexes`` entry is the position's index."""
    if not diffraction.has("/indexes"):
        return indexes.astype(np.int64)
    names = diffraction.array("/indexes").ravel()
    if names.dtype.kind not in "iu":
        raise error(diffraction.label, "/indexes", f"has dtype {names.dtype}, expected integers")
    if names.size == 0:
        raise error(diffraction.label, "/indexes", "is empty: no pattern has an index")
    order = np.argsort(names, kind="stable")
    found = np.clip(np.searchsorted(names[order], indexes), 0, names.size - 1)
    unmatched = names[order][found] != indexes
    if unmatched.any():
        raise error(diffraction.label, "/indexes", f"has no pattern for position index {int(indexes[unmatched][0])}")
    return order[found].astype(np.int64)


def detector_pixel(diffraction: InputFile) -> tuple[float, float] | None:
    """(height, width) of a detector pixel from the attributes, on the root or on ``patterns``."""
    for holder in ("/", "/patterns"):
        if all(name in diffraction.file[holder].attrs for name in PIXEL_ATTRIBUTES):
            return tuple(diffraction.quantity(f"{holder}@{name}", LENGTH_UNITS, "pixel size", "m")
                         for name in PIXEL_ATTRIBUTES)
    return None


def probe_pixel(product: InputFile) -> float | None:
    """The probe's (= object-plane) pixel, when ``probe`` states it; square pixels only."""
    if "pixel_width_m" not in product.file["/probe"].attrs:
        return None
    width = product.quantity("/probe@pixel_width_m", LENGTH_UNITS, "probe pixel size", "m")
    height = product.quantity("/probe@pixel_height_m", LENGTH_UNITS, "probe pixel size", "m")
    if not np.isclose(width, height, rtol=1e-6, atol=0):
        raise error(product.label, "/probe@pixel_width_m", f"pixels of {width:g} x {height:g} m are not square")
    return width
