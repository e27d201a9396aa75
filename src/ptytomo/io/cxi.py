"""One angle's scan from a CXI 1.6 file (Maia, Nature Methods 9, 854 (2012); cxidb.org).

CXI states SI units (metres, joules) and stores the SAMPLE's translation
(x, y, z): the illuminated window moves the other way, so its position is
minus the translation, column from x and row from y.  Detector masks are bit
fields; the bits that mean "do not use this pixel" are :data:`BAD_MASK_BITS`.
NXcxi_ptycho (:mod:`.nexus`) shares these paths and this reader.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import h5py
import numpy as np

from .foreign import (ANGLE_UNITS, ENERGY_UNITS, LENGTH_UNITS, AngleScan, FrameSource, InputFile, as_text,
                      error, probe_modes, window_positions)

# CXI pixel-mask bits that make a pixel unusable: invalid 1, saturated 2, hot 4, dead 8, shadowed 16,
# to be ignored 64, bad 128, missing 512, failed artifact correction 4096.  Peak-mask (32), resolution
# limits (256), noisy (1024) and corrected (2048) pixels still hold valid counts.
BAD_MASK_BITS = 1 | 2 | 4 | 8 | 16 | 64 | 128 | 512 | 4096

DETECTOR = "/entry_1/instrument_1/detector_1"


@dataclass(frozen=True)
class Layout:
    """Where a CXI-family file keeps each field, and in which unit when it carries no @units."""

    name: str
    frames: tuple[str, ...]
    translation: tuple[str, ...]
    energy: tuple[str, ...]
    probe: tuple[str, ...]
    angle: tuple[str, ...] = ()
    length_unit: str | None = "m"  # None: the @units attribute is required
    energy_unit: str | None = "J"
    angle_unit: str | None = None


CXI = Layout(
    name="cxi",
    frames=("/entry_1/data_1/data", f"{DETECTOR}/data"),
    translation=("/entry_1/data_1/translation", "/entry_1/sample_1/geometry_1/translation"),
    energy=("/entry_1/instrument_1/source_1/energy",),
    probe=("/entry_1/instrument_1/source_1/illumination",),
)


@contextmanager
def open_scan(path: str, layout: Layout = CXI):
    """Yield the :class:`AngleScan` of one CXI-family file; the frames stay readable until exit."""
    with InputFile(path) as f:
        yield read_scan(f, layout)


def read_scan(f: InputFile, layout: Layout) -> AngleScan:
    frames_path = _required(f, layout.frames, "detector frames")
    frames = FrameSource(f.dataset(frames_path), f.label, frames_path)
    translation_path = _required(f, layout.translation, "sample translation")
    translation = f.quantities(translation_path, LENGTH_UNITS, "translation", layout.length_unit)
    if translation.ndim != 2 or translation.shape[1] < 2:
        raise error(f.label, translation_path, f"has shape {translation.shape}, expected (J, 3) = (x, y, z)")
    # The window moves against the sample: position = -translation; column from x, row from y.
    positions = window_positions(f.label, translation_path, -translation[:, 1], -translation[:, 0], len(frames))
    energy_path = _required(f, layout.energy, "photon energy")
    fields = {"frames": frames_path, "positions": translation_path, "energy": energy_path}
    scan = AngleScan(
        source=f.label, format=layout.name, frames=frames, positions_m=positions,
        energy_kev=f.quantity(energy_path, ENERGY_UNITS, "photon energy", layout.energy_unit),
        distance_m=f.quantity(f"{DETECTOR}/distance", LENGTH_UNITS, "detector distance", layout.length_unit),
        detector_pixel_m=(
            f.quantity(f"{DETECTOR}/y_pixel_size", LENGTH_UNITS, "pixel size", layout.length_unit),
            f.quantity(f"{DETECTOR}/x_pixel_size", LENGTH_UNITS, "pixel size", layout.length_unit),
        ),
        saturation=frames.saturation,
        fields=fields,
    )
    if f.has(f"{DETECTOR}/saturation_value"):
        scan.saturation = saturation_value(f, f"{DETECTOR}/saturation_value")
    if f.has(f"{DETECTOR}/mask"):
        scan.mask = good_pixels(f, f"{DETECTOR}/mask", frames.frame_shape)
        fields["mask"] = f"{DETECTOR}/mask"
    probe_path = f.first(layout.probe) or probe_image(f)
    if probe_path:
        scan.probe = probe_modes(f.label, probe_path, f.array(probe_path, complex_ok=True), frames.frame_shape)
        fields["probe"] = probe_path
    angle_path = f.first(layout.angle)
    if angle_path:
        scan.angle_rad = f.quantity(angle_path, ANGLE_UNITS, "rotation angle", layout.angle_unit, positive=False)
        fields["angle"] = angle_path
    return scan


def _required(f: InputFile, paths: tuple[str, ...], what: str) -> str:
    path = f.first(paths)
    if path is None:
        raise error(f.label, paths[0], f"missing ({what}; also looked for {', '.join(paths[1:]) or 'nothing else'})")
    return path


def saturation_value(f: InputFile, path: str) -> float:
    """The detector's saturation level (counts): pixels at or above it are masked."""
    value = f.array(path)
    if value.size != 1 or value.dtype.kind not in "fiu" or not np.isfinite(value.reshape(())) or value.reshape(()) <= 0:
        raise error(f.label, path, f"is {value.tolist() if value.size < 5 else value.shape}, expected one count > 0")
    return float(value.reshape(()))


def good_pixels(f: InputFile, path: str, shape: tuple[int, int]) -> np.ndarray:
    """Good-pixel flags from a CXI bit mask (a pixel is bad when any of BAD_MASK_BITS is set)."""
    mask = f.array(path)
    if mask.shape != tuple(shape):
        raise error(f.label, path, f"has shape {mask.shape}, expected the frame shape {tuple(shape)}")
    if mask.dtype.kind == "b":
        raise error(f.label, path, "is bool, expected CXI mask bits (unsigned integers)")
    if mask.dtype.kind not in "iu":
        raise error(f.label, path, f"has dtype {mask.dtype}, expected CXI mask bits (unsigned integers)")
    return (mask.astype(np.int64) & BAD_MASK_BITS) == 0


def probe_image(f: InputFile) -> str | None:
    """``/entry_1/image_N/data`` of the first image whose data_type says it is the probe."""
    entry = f.file.get("/entry_1")
    if not isinstance(entry, h5py.Group):
        return None
    names = sorted(name for name in entry.keys() if name.startswith("image_"))
    for name in names:
        kind = None
        if f.has(f"/entry_1/{name}/data_type"):
            try:
                kind = as_text(f.file[f"/entry_1/{name}/data_type"][()])
            except (OSError, ValueError, TypeError):
                kind = None
        if kind and kind.strip().lower() in ("probe", "illumination") and f.has(f"/entry_1/{name}/data"):
            return f"/entry_1/{name}/data"
    return None
