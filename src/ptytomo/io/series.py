"""Per-angle scan files -> one FORMAT.md data file, streamed frame block by frame block (``ptytomo import``).

The import runs in four steps, so a bad input fails in seconds, before any
frame is written:

1. read every input's header (:class:`~.foreign.AngleScan`: positions, energy,
   geometry, mask, probe, angle) and check that they agree with each other;
2. derive the geometry: the object-plane pixel ``lambda z / (M' d)`` of the
   frames after cropping to ``M'`` (binning keeps it), the window corners in
   pixels with the volume centred on the scanned field, the zero-frequency
   (DC) pixel from the mean pattern;
3. decide the sign convention (``--conjugate auto``: a quick 2D reconstruction
   of the middle angle, see :func:`phase_absorption_correlation`);
4. write the frames angle by angle into the output dataset inside
   :func:`~.ptytomo_format.atomic_h5`, masking NaN, negative and saturated
   pixels on the way; the mask and (without one in the inputs) the initial
   probe are written last, from what the stream saw.

Everything derived is recorded as attributes of ``/import`` (docs/import.md).
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass, field
from functools import partial

import h5py
import numpy as np
from tqdm.auto import tqdm

from .. import physics
from ..scan import centre_crop, from_far_field, to_far_field
from ..scan import probe_from_mean_pattern as mean_pattern_guess
from ..errors import PtytomoError
from . import cxi, mapping, nexus, ptychodus
from .foreign import ANGLE_UNITS, AngleScan, InputFile, error
from .ptytomo_format import (ANGLES, DATA_FORMAT, FORMAT_VERSION, INTENSITIES, MASK, POSITIONS, PROBE, VALID,
                             Geometry, LazyIntensities, PtychoTomoData, atomic_h5, validate_data)

FORMATS = ("auto", "cxi", "nxcxi", "ptychodus", "map")
FLIPS = ("ud", "lr", "transpose")
CONJUGATE = ("auto", "yes", "no")
IMPORT = "/import"
# |correlation| below this: the quick reconstruction cannot tell the sign; the frames are kept as they are.
UNDECIDED = 0.1
# Frames larger than this are cropped (coarser pixel) for the --conjugate auto check.
CHECK_SIZE = 64
# Positions this close to an integer are that integer: metres / pixel leaves float dust that would
# otherwise send every window down the (slower, equivalent) fractional-shift path.
INTEGER_SNAP = 1e-6
CHUNK_BYTES = 8 * 2**20  # HDF5 chunks of the output frames (a reader streams angle batches)
# Object-plane pixels outside this range (metres) come from a unit error (eV read as keV, mm as m),
# not from an instrument; so do volumes wider than this many voxels.
PIXEL_RANGE_M = (1e-12, 1e-2)
MAX_VOLUME_EDGE = 100_000


@dataclass
class ImportOptions:
    """Every knob of ``ptytomo import``; recorded in ``/import``."""

    format: str = "auto"
    mapping: str | None = None  # TOML mapping file (format "map")
    angles_file: str | None = None  # one angle a line; needed where the inputs carry none
    angles_unit: str = "deg"
    volume_shape: tuple[int, int, int] | None = None  # default: from the scanned field
    crop: int | None = None  # frame size M' before binning (default: the frames' size)
    bin: int = 1
    flip: tuple[str, ...] = ()  # applied in order, before anything else
    dc: tuple[int, int] | None = None  # zero-frequency pixel (row, col) after the flips; None: detect
    conjugate: str = "auto"
    saturation: float | None = None  # counts at or above it are masked (default: the file's or dtype's)
    conjugate_sweeps: int = 40
    device: str = "auto"  # of the quick reconstruction behind --conjugate auto
    frames_per_read: int = 64

    def check(self) -> None:
        if self.format not in FORMATS:
            raise PtytomoError(f"--format {self.format!r}: choose one of {', '.join(FORMATS)}")
        if self.format == "map" and not self.mapping:
            raise PtytomoError("--format map needs --mapping FILE (a TOML mapping file)")
        if self.angles_unit not in ("deg", "rad"):
            raise PtytomoError(f"--angles-unit {self.angles_unit!r}: choose deg or rad")
        for name in self.flip:
            if name not in FLIPS:
                raise PtytomoError(f"--flip {name!r}: choose from {', '.join(FLIPS)}")
        if self.conjugate not in CONJUGATE:
            raise PtytomoError(f"--conjugate {self.conjugate!r}: choose one of {', '.join(CONJUGATE)}")
        if self.bin < 1:
            raise PtytomoError(f"--bin must be >= 1, got {self.bin}")
        if self.crop is not None and (self.crop < 1 or self.crop % self.bin):
            raise PtytomoError(f"--crop {self.crop}: must be >= 1 and a multiple of --bin {self.bin}")
        if self.volume_shape is not None and (len(self.volume_shape) != 3 or min(self.volume_shape) < 1):
            raise PtytomoError(f"--volume {self.volume_shape}: expected three positive integers NZ,NY,NX")
        if self.saturation is not None and not (math.isfinite(self.saturation) and self.saturation > 0):
            raise PtytomoError(f"--saturation {self.saturation}: expected a count > 0")
        if self.conjugate_sweeps < 1 or self.frames_per_read < 1:
            raise PtytomoError("conjugate_sweeps and frames_per_read must be >= 1")


# --------------------------------------------------------------------------
# Layouts
# --------------------------------------------------------------------------


def detect_format(path: str) -> str:
    """The layout of one input: a directory is ptychodus's; an HDF5 file is NXcxi_ptycho or CXI."""
    if os.path.isdir(path):
        return "ptychodus"
    with InputFile(path) as f:
        if nexus.is_nxcxi(f):
            return "nxcxi"
        if f.has("/entry_1") or f.has("/cxi_version"):
            return "cxi"
    raise error(path, None, "cannot tell the layout (no /entry_1 of CXI or NXcxi_ptycho, not a ptychodus "
                            "directory); pass --format map --mapping FILE")


def scan_opener(inputs: list[str], options: ImportOptions):
    """(format, open_scan) shared by all inputs; mixed layouts are an error."""
    name = options.format
    if name == "auto" and options.mapping:
        name = "map"  # a mapping file says where the fields are: nothing to detect
    if name == "auto":
        name = detect_format(inputs[0])
        for path in inputs[1:]:
            other = detect_format(path)
            if other != name:
                raise error(path, None, f"is {other} but {inputs[0]} is {name}; import one layout at a time")
    if name == "map":
        return name, partial(mapping.open_scan, mapping=mapping.load_mapping(options.mapping))
    return name, {"cxi": cxi.open_scan, "nxcxi": nexus.open_scan, "ptychodus": ptychodus.open_scan}[name]


# --------------------------------------------------------------------------
# Frames: orientation, zero-frequency centring, crop, bin, point reflection
# --------------------------------------------------------------------------


def orient(frames: np.ndarray, flips: tuple[str, ...]) -> np.ndarray:
    """Apply --flip in order to (..., H, W) frames or masks."""
    for name in flips:
        if name == "ud":
            frames = frames[..., ::-1, :]
        elif name == "lr":
            frames = frames[..., :, ::-1]
        else:
            frames = np.swapaxes(frames, -1, -2)
    return frames


def point_reflect(frames: np.ndarray) -> np.ndarray:
    """q -> -q on FORMAT.md's centred grid (DC at M//2): what conjugating the exit wave does to |Psi|^2.

    Index i (frequency i - M//2) goes to 2 (M//2) - i mod M: a plain flip for odd M,
    a flip and a roll by one pixel for even M (frequency -M/2 has no partner but itself).
    """
    reflected = frames[..., ::-1, ::-1]
    if frames.shape[-1] % 2 == 0:
        reflected = np.roll(reflected, 1, axis=-1)
    if frames.shape[-2] % 2 == 0:
        reflected = np.roll(reflected, 1, axis=-2)
    return reflected


@dataclass
class FramePipeline:
    """Raw detector frames (H, W) -> FORMAT.md frames (M, M), the same steps for frames and masks."""

    flips: tuple[str, ...]
    oriented_shape: tuple[int, int]  # (H, W) after the flips
    dc: tuple[int, int]  # zero-frequency pixel after the flips
    crop: int  # M' (before binning)
    bin: int
    conjugate: bool = False

    @property
    def size(self) -> int:
        """M, the output frame size."""
        return self.crop // self.bin

    def _centre(self, frames: np.ndarray) -> np.ndarray:
        height, width = self.oriented_shape
        # Roll the DC pixel to (H//2, W//2): exact for FFT-ordered frames (DC at the corner); on a real
        # detector the rolled-in border rows are what the crop below then cuts away.
        frames = np.roll(orient(frames, self.flips), (height // 2 - self.dc[0], width // 2 - self.dc[1]),
                         axis=(-2, -1))
        return centre_crop(frames, self.crop)  # DC lands at M'//2

    def frames(self, raw: np.ndarray) -> np.ndarray:
        """Counts: centred, cropped, binned by summing B x B blocks (DC bin at M//2), reflected if asked."""
        frames = self._centre(raw)
        if self.bin > 1:
            m, b = self.size, self.bin
            frames = frames.reshape(*frames.shape[:-2], m, b, m, b).sum(axis=(-3, -1))
        return point_reflect(frames) if self.conjugate else frames

    def mask(self, good: np.ndarray) -> np.ndarray:
        """Good-pixel flags through the same steps: a bin is good only when all its pixels are."""
        good = self._centre(good)
        if self.bin > 1:
            m, b = self.size, self.bin
            good = good.reshape(m, b, m, b).all(axis=(1, 3))
        return point_reflect(good) if self.conjugate else good

    def probe(self, probe: np.ndarray) -> np.ndarray:
        """An object-plane probe (K, H, W) resampled to the output grid.

        Cropping the detector to M' coarsens the object-plane pixel: crop the probe's far field
        the same way.  Binning by B keeps the pixel and shrinks the field of view: keep the
        central M of the probe.  The point reflection of the frames conjugates the probe.
        """
        if probe.shape[-2:] != (self.crop, self.crop):
            probe = crop_far_field(probe, self.crop)
        if self.bin > 1:
            start = self.crop // 2 - self.size // 2
            probe = probe[..., start:start + self.size, start:start + self.size]
        return np.conj(probe) if self.conjugate else probe


def crop_far_field(probe: np.ndarray, size: int) -> np.ndarray:
    """The probe seen by a detector cropped to size x size: its far field cropped, on a coarser grid."""
    return from_far_field(centre_crop(to_far_field(probe), size))


def probe_from_mean_pattern(mean_pattern: np.ndarray) -> np.ndarray:
    """The initial probe without one in the inputs, as one mode (1, M, M) (:func:`ptytomo.scan.probe_from_mean_pattern`)."""
    return mean_pattern_guess(mean_pattern)[None]


# --------------------------------------------------------------------------
# Headers and geometry
# --------------------------------------------------------------------------


@dataclass
class Header:
    """What the import keeps of one input after reading it: small arrays only, no frames."""

    source: str
    positions_m: np.ndarray  # (J, 2)
    n_frames: int
    frame_shape: tuple[int, int]
    energy_kev: float
    field_of_view_m: tuple[float, float]  # (rows, cols) lambda z / d: the object-plane width of any N-pixel frame
    angle_rad: float | None
    saturation: float | None
    fields: dict


def field_of_view(scan: AngleScan, frame_shape: tuple[int, int]) -> tuple[float, float]:
    """lambda z / d along rows and columns: the pixel of N-pixel frames is this over N (N d: detector width)."""
    if scan.detector_pixel_m is None or scan.distance_m is None:
        # Only a producer-stated object-plane pixel (ptychodus's probe pixel), for the frames as they are.
        return scan.object_pixel_m * frame_shape[0], scan.object_pixel_m * frame_shape[1]
    wavelength = physics.wavelength_m(scan.energy_kev)
    return (wavelength * scan.distance_m / scan.detector_pixel_m[0],
            wavelength * scan.distance_m / scan.detector_pixel_m[1])


def square_pixel(header: Header, field_of_view: tuple[float, float], crop: int) -> float:
    """The object-plane pixel of M' x M' frames; FORMAT.md's voxels are cubic, so rows and columns must agree."""
    along_rows, along_cols = field_of_view[0] / crop, field_of_view[1] / crop
    if not PIXEL_RANGE_M[0] <= along_rows <= PIXEL_RANGE_M[1]:
        raise error(header.source, header.fields.get("energy"),
                    f"object-plane pixel lambda z / (M d) = {along_rows:.3g} m is implausible; check the units of "
                    f"the energy, distance and detector pixel size")
    if not np.isclose(along_rows, along_cols, rtol=1e-6, atol=0):
        raise error(header.source, header.fields.get("frames"),
                    f"object-plane pixels of {along_rows:.6g} x {along_cols:.6g} m are not square; check the "
                    f"detector pixel sizes")
    return along_rows


def read_headers(inputs: list[str], open_scan) -> tuple[list[Header], np.ndarray | None, np.ndarray | None, dict]:
    """Headers of all inputs, the AND of their masks, the first probe found, and where it came from."""
    headers, mask, probe, notes = [], None, None, {}
    for path in inputs:
        with open_scan(path) as scan:
            shape = scan.frames.frame_shape
            headers.append(Header(scan.source, scan.positions_m, len(scan.frames), shape, scan.energy_kev,
                                  field_of_view(scan, shape), scan.angle_rad, scan.saturation, scan.fields))
            check_consistent(headers[0], headers[-1])
            if scan.mask is not None:
                mask = scan.mask if mask is None else mask & scan.mask
            if probe is None and scan.probe is not None:
                probe, notes = scan.probe, {"probe_source": f"{scan.source}:{scan.fields.get('probe', 'probe')}"}
    return headers, mask, probe, notes


def check_consistent(first: Header, header: Header) -> None:
    """One frame size, one energy and one pixel size for the whole series (FORMAT.md has one of each)."""
    if header is not first:
        if header.frame_shape != first.frame_shape:
            raise error(header.source, header.fields.get("frames"),
                        f"frames of {header.frame_shape} px, but {first.source} has {first.frame_shape}")
        if not np.isclose(header.energy_kev, first.energy_kev, rtol=1e-6, atol=0):
            raise error(header.source, header.fields.get("energy"),
                        f"photon energy {header.energy_kev:.9g} keV, but {first.source} has {first.energy_kev:.9g}")
        if not np.allclose(header.field_of_view_m, first.field_of_view_m, rtol=1e-6, atol=0):
            raise error(header.source, header.fields.get("frames"),
                        f"object-plane field of view {header.field_of_view_m[0]:.6g} m (lambda z / d), but "
                        f"{first.source} has {first.field_of_view_m[0]:.6g} m (distance or detector pixel differ)")


def series_angles(headers: list[Header], options: ImportOptions) -> tuple[np.ndarray, str]:
    """Angles in radians, from --angles FILE when given, else from the inputs."""
    if options.angles_file:
        path = options.angles_file
        try:
            values = np.loadtxt(path, ndmin=1, comments="#", dtype=np.float64)
        except (OSError, ValueError) as exc:
            raise error(path, None, f"cannot read the angles (one number a line): {exc}") from None
        if values.ndim != 1 or values.size != len(headers):
            raise error(path, None, f"holds {values.size} angles for {len(headers)} inputs")
        if not np.all(np.isfinite(values)):
            raise error(path, None, "holds NaN or infinite angles")
        return values * ANGLE_UNITS[options.angles_unit], path
    for header in headers:
        if header.angle_rad is None:
            raise error(header.source, None, "carries no rotation angle; give them with --angles FILE")
    return np.array([header.angle_rad for header in headers]), "inputs"


def output_frame_size(frame_shape: tuple[int, int], options: ImportOptions) -> int:
    """M' (before binning): --crop, else the largest square of the frames that --bin divides."""
    smallest = min(frame_shape)
    crop = options.crop if options.crop is not None else smallest - smallest % options.bin
    if crop > smallest or crop < options.bin:
        raise PtytomoError(f"--crop {crop} does not fit frames of {frame_shape[0]} x {frame_shape[1]} px "
                           f"(with --bin {options.bin})")
    return crop


def window_corners(headers: list[Header], pixel_m: float, m: int, volume_shape) -> tuple[np.ndarray, np.ndarray, tuple, np.ndarray]:
    """(A, J, 2) top-left corners in pixels, (A, J) valid flags, the volume shape and the shift applied.

    Positions in metres / pixel have an arbitrary origin; the shift puts the centre of the scanned
    field (the box of all window centres) on the centre of the volume's projection.
    """
    n_positions = max(header.n_frames for header in headers)
    corners = np.zeros((len(headers), n_positions, 2))
    valid = np.zeros((len(headers), n_positions), dtype=bool)
    for a, header in enumerate(headers):
        corners[a, :header.n_frames] = header.positions_m / pixel_m
        valid[a, :header.n_frames] = True
    centres = corners[valid] + (m - 1) / 2
    low, high = centres.min(axis=0), centres.max(axis=0)
    if volume_shape is None:
        rows, cols = (int(round(min(span, 10.0 * MAX_VOLUME_EDGE))) + 1 for span in high - low)
        volume_shape = (rows, cols, cols)  # Ny = Nx: the volume turns about z
    if max(volume_shape) > MAX_VOLUME_EDGE:
        raise error(headers[0].source, headers[0].fields.get("positions"),
                    f"the volume would be {volume_shape} voxels of {pixel_m:.3g} m; check the positions' units "
                    f"(or give --volume)")
    nz, _, nx = volume_shape
    shift = np.array([(nz - 1) / 2, (nx - 1) / 2]) - (low + high) / 2
    corners[valid] += shift
    nearest = np.round(corners)
    corners = np.where(np.abs(corners - nearest) < INTEGER_SNAP, nearest, corners)
    return corners, valid, tuple(int(n) for n in volume_shape), shift


def detect_dc(mean_pattern: np.ndarray, good: np.ndarray) -> tuple[tuple[int, int], tuple[float, float]]:
    """The zero-frequency pixel of the mean pattern: its centre of point symmetry, and that centre to a
    sub-pixel.

    Not the brightest pixel: a zone plate's central stop leaves the zero frequency dark and the
    pattern an annulus.  A far field's mean pattern is |pupil|^2 spread by the object's scattering,
    and the pupil's modulus (disc, annulus) is symmetric about the zero frequency whatever its
    aberrations (they are phases).  The self-convolution ``sum_q I(q) I(s - q)`` peaks at ``s`` =
    twice the centre; of the pixels ``c`` with ``2 c = s`` (modulo the frame), the one where the
    pattern is brightest after a wide blur is the centre (the others lie half a frame away).
    """
    pattern = np.where(good, mean_pattern, 0.0).astype(np.float64)
    shape = pattern.shape
    spectrum = np.fft.fft2(pattern)
    symmetry = np.fft.ifft2(spectrum * spectrum).real
    peak = np.unravel_index(int(np.argmax(symmetry)), shape)
    twice = [p + _parabolic_offset(symmetry, peak, axis) for axis, p in enumerate(peak)]  # sub-pixel 2c
    sigma = max(shape) / 8.0
    frequencies = [np.fft.fftfreq(n) for n in shape]
    blur = np.exp(-2 * (np.pi * sigma) ** 2 * (frequencies[0][:, None] ** 2 + frequencies[1][None, :] ** 2))
    blurred = np.fft.ifft2(spectrum * blur).real
    candidates = [[c for c in range(n) if (2 * c - peak[axis]) % n in (0, 1, n - 1)] for axis, n in enumerate(shape)]
    row, col = max(((r, c) for r in candidates[0] for c in candidates[1]), key=lambda rc: blurred[rc])
    # 2 c = t modulo n: c = t / 2 modulo n / 2, the candidate chosen above picks the period
    centre = tuple(float(c + _wrap(t / 2 - c, n / 4)) for c, t, n in zip((row, col), twice, shape))
    return (int(round(centre[0])) % shape[0], int(round(centre[1])) % shape[1]), centre


def _parabolic_offset(values: np.ndarray, peak: tuple[int, int], axis: int) -> float:
    """Sub-pixel offset of a (circular) maximum along ``axis`` from the parabola through three samples."""
    n = values.shape[axis]
    before, after = list(peak), list(peak)
    before[axis], after[axis] = (peak[axis] - 1) % n, (peak[axis] + 1) % n
    left, middle, right = values[tuple(before)], values[peak], values[tuple(after)]
    curvature = left - 2 * middle + right
    return float(0.5 * (left - right) / curvature) if curvature < 0 else 0.0


def _wrap(offset: float, half_period: float) -> float:
    """``offset`` brought into [-half_period, half_period) (the sub-pixel part of a centre modulo the frame)."""
    return (offset + half_period) % (2 * half_period) - half_period


# --------------------------------------------------------------------------
# Streaming the frames
# --------------------------------------------------------------------------


@dataclass
class BadPixels:
    """Pixels (raw orientation) that held NaN, inf, negative or saturated counts in any frame read."""

    shape: tuple[int, int]
    seen: np.ndarray = field(init=False)

    def __post_init__(self):
        self.seen = np.zeros(self.shape, dtype=bool)

    def clean(self, raw: np.ndarray, good: np.ndarray | None, saturation: float | None) -> np.ndarray:
        """Zero the bad and masked pixels of a frame block (so no NaN reaches a sum) and remember them."""
        with np.errstate(invalid="ignore"):
            bad = ~np.isfinite(raw) | (raw < 0)
            if saturation is not None:
                bad |= raw >= saturation
        self.seen |= bad.any(axis=0)
        raw[bad] = 0
        if good is not None:
            raw[:, ~good] = 0
        return raw


def read_frames(open_scan, path: str, options: ImportOptions, saturation, good, bad: BadPixels,
                transform):
    """Yield transformed frame blocks of one input, ``frames_per_read`` frames at a time."""
    with open_scan(path) as scan:
        count = len(scan.frames)
        for start in range(0, count, options.frames_per_read):
            stop = min(start + options.frames_per_read, count)
            raw = bad.clean(scan.frames.read(start, stop), good, saturation)
            yield start, stop, transform(raw)


def mean_oriented_pattern(open_scan, paths: list[str], options: ImportOptions, saturations, good) -> np.ndarray:
    """Mean raw frame (after the flips) of a few inputs: where the zero frequency is."""
    total, count = None, 0
    for path, saturation in zip(paths, saturations):
        with open_scan(path) as scan:
            bad = BadPixels(scan.frames.frame_shape)
            for start in range(0, len(scan.frames), options.frames_per_read):
                raw = bad.clean(scan.frames.read(start, start + options.frames_per_read), good, saturation)
                block = raw.sum(axis=0)
                total = block if total is None else total + block
                count += raw.shape[0]
    return orient(total / max(count, 1), options.flip)


def sample_inputs(n: int) -> list[int]:
    """First, middle and last input: enough frames for the mean pattern, three files' worth of reading."""
    return sorted({0, n // 2, n - 1})


# --------------------------------------------------------------------------
# Sign convention
# --------------------------------------------------------------------------


def phase_absorption_correlation(frames: np.ndarray, corners: np.ndarray, angle: float, probe: np.ndarray,
                                 geometry: Geometry, mask: np.ndarray | None, sweeps: int, device: str) -> float:
    """Correlation of phase and attenuation of one angle's transmission, reconstructed in 2D.

    Matter has delta, beta >= 0, so in FORMAT.md's convention the phase k P delta and the
    attenuation -ln|O| = k P beta rise and fall together over the lit region: a clearly negative
    correlation means the frames follow the other convention (conjugated object).  The quick
    reconstruction is per-angle ptychography with the known probe and no non-negativity.
    """
    import torch

    from ..objective import build_objective
    from ..options import ReconstructOptions
    from ..solvers.subproblems import PtychographyRetrieval

    # Large frames are cropped to CHECK_SIZE: a coarser pixel, enough to see the sign, at a fraction of
    # the cost.  A volume one voxel deep: the 2D retrieval lives on the (Nz, Nu) projection plane, and a
    # thin volume keeps the model's projector (built by build_objective, unused here) from costing Ny times more.
    m = frames.shape[-1]
    if m > CHECK_SIZE:
        scale = m / CHECK_SIZE
        frames, probe, mask = (centre_crop(frames, CHECK_SIZE), crop_far_field(probe, CHECK_SIZE),
                               None if mask is None else centre_crop(mask, CHECK_SIZE))
        # Window centres keep their place in metres: corner + (m-1)/2 scales with the pixel.
        corners = (corners + (m - 1) / 2) / scale - (CHECK_SIZE - 1) / 2
        geometry = Geometry(geometry.energy_kev, geometry.voxel_size_m * scale,
                            tuple(max(1, math.ceil(n / scale)) for n in geometry.volume_shape))
    nz, _, nx = geometry.volume_shape
    thin = Geometry(geometry.energy_kev, geometry.voxel_size_m, (nz, 1, nx))
    data = PtychoTomoData(intensities=frames[None].astype(np.float32), positions=corners[None],
                          angles=np.array([angle]), probe=probe.astype(np.complex64), geometry=thin,
                          mask=mask)
    objective = build_objective(data, ReconstructOptions(device=device))
    retrieval = PtychographyRetrieval(objective)
    psi = retrieval.initial()
    for _ in range(sweeps):
        retrieval.sweep(psi)
    xi = retrieval.projections(psi)[0]
    lit = retrieval.lit[0]
    phase, attenuation = xi.real[lit].double(), xi.imag[lit].double()
    if phase.numel() < 3:
        return 0.0
    phase, attenuation = phase - phase.mean(), attenuation - attenuation.mean()
    scale = torch.sqrt((phase**2).sum() * (attenuation**2).sum())
    return float((phase * attenuation).sum() / scale) if scale > 0 else 0.0


# --------------------------------------------------------------------------
# The import
# --------------------------------------------------------------------------


def plan_import_memory(output, raw_frame_shape, corners_shape, m: int, options: ImportOptions) -> None:
    """Refuse in one line, before any frame is read, an import whose frame blocks or output cannot fit
    (resources.plan_import): at the peak one block of raw frames (float64 while cleaned) and, for the
    --conjugate auto check, one angle's frames as float32."""
    from ..resources import check_disk, plan_import

    n_angles, n_positions = corners_shape[:2]
    held = max(options.frames_per_read, n_positions if options.conjugate == "auto" else 0)
    plan_import(tuple(raw_frame_shape), n_angles * n_positions, None, frames_in_memory=held, itemsize=8,
                remedy="use a smaller --crop or --bin, or fewer frames per input")
    check_disk(output, n_angles * n_positions * m * m * 4, what="import output")  # float32 M x M frames


def import_series(output, inputs, options: ImportOptions | None = None, progress: bool = True) -> dict:
    """Turn per-angle inputs into one FORMAT.md data file at ``output``; return the /import record."""
    options = options or ImportOptions()
    options.check()
    inputs = [os.fspath(path) for path in inputs]
    if not inputs:
        raise PtytomoError("no inputs: give one file (or ptychodus directory) per angle")
    output = os.fspath(output)
    if os.path.abspath(output) in {os.path.abspath(path) for path in inputs}:
        raise error(output, None, "is also an input; write the import to a new file")
    layout, open_scan = scan_opener(inputs, options)

    headers, raw_good, probe_in, record = read_headers(inputs, open_scan)
    angles, angles_source = series_angles(headers, options)
    first = headers[0]
    oriented_shape = orient(np.empty(first.frame_shape), options.flip).shape
    crop = output_frame_size(oriented_shape, options)
    m = crop // options.bin
    # lambda z / (M' d) after cropping to M'; binning keeps it (fewer, wider detector pixels).
    transposed = options.flip.count("transpose") % 2 == 1
    pixel_m = square_pixel(first, first.field_of_view_m[::-1] if transposed else first.field_of_view_m, crop)
    corners, valid, volume_shape, shift = window_corners(headers, pixel_m, m, options.volume_shape)
    geometry = Geometry(first.energy_kev, pixel_m, volume_shape)
    plan_import_memory(output, first.frame_shape, corners.shape, m, options)
    saturations = [options.saturation or header.saturation for header in headers]

    samples = sample_inputs(len(inputs))
    if options.dc is None:
        mean_pattern = mean_oriented_pattern(open_scan, [inputs[i] for i in samples], options,
                                             [saturations[i] for i in samples], raw_good)
        good_oriented = orient(raw_good, options.flip) if raw_good is not None else np.ones(oriented_shape, bool)
        dc, centroid = detect_dc(mean_pattern, good_oriented)
    else:
        dc, centroid = tuple(options.dc), tuple(float(v) for v in options.dc)
        if not (0 <= dc[0] < oriented_shape[0] and 0 <= dc[1] < oriented_shape[1]):
            raise PtytomoError(f"--dc {dc[0]},{dc[1]} lies outside frames of {oriented_shape} px")
    pipeline = FramePipeline(tuple(options.flip), tuple(oriented_shape), dc, crop, options.bin)

    # Check the geometry before the conjugation check and the long write: windows outside the volume,
    # a bad --volume, a mask without a good pixel.  (The point reflection changes none of these.)
    placeholder = pipeline.probe(probe_in) if probe_in is not None else np.ones((1, m, m), dtype=np.complex64)
    validate_data(PtychoTomoData(intensities=LazyIntensities(output, 0, len(inputs), (corners.shape[1], m, m)),
                                 positions=corners, angles=angles, probe=placeholder, geometry=geometry,
                                 valid=None if valid.all() else valid,
                                 mask=pipeline.mask(raw_good) if raw_good is not None else None), output)

    conjugate, correlation = decide_conjugation(open_scan, inputs, headers, options, pipeline, probe_in, raw_good,
                                                corners, angles, geometry, saturations)
    pipeline.conjugate = conjugate
    probe = pipeline.probe(probe_in) if probe_in is not None else None

    record.update(
        format=layout, sources=[header.source for header in headers], frames=int(valid.sum()),
        raw_frame_shape=list(first.frame_shape), flips=list(options.flip) or ["none"],
        dc_row=dc[0], dc_col=dc[1], dc_centroid=list(centroid), dc_detected=options.dc is None,
        crop=crop, bin=options.bin, frame_size=m, energy_kev=first.energy_kev,
        object_pixel_m=pixel_m, position_shift_px=list(shift), volume_shape=list(volume_shape),
        volume_from="--volume" if options.volume_shape else "scanned field",
        angles_from=angles_source, angle_min_deg=float(np.degrees(angles.min())),
        angle_max_deg=float(np.degrees(angles.max())),
        conjugated=conjugate, conjugate_option=options.conjugate,
        conjugate_probe="input" if probe_in is not None else "initial guess",
        conjugate_correlation=correlation if correlation is not None else float("nan"),
        saturation=saturations[0] if saturations[0] is not None else float("nan"),
    )
    write_series(output, open_scan, inputs, options, pipeline, headers, corners, valid, angles, geometry,
                 saturations, raw_good, probe, record, progress)
    return record


def decide_conjugation(open_scan, inputs, headers, options, pipeline, probe_in, raw_good, corners, angles,
                       geometry, saturations) -> tuple[bool, float | None]:
    """--conjugate: yes/no as given; auto from the phase-attenuation correlation of the middle angle."""
    if options.conjugate != "auto":
        return options.conjugate == "yes", None
    middle = len(inputs) // 2
    bad = BadPixels(headers[middle].frame_shape)
    blocks = read_frames(open_scan, inputs[middle], options, saturations[middle], raw_good, bad, pipeline.frames)
    frames = np.concatenate([block.astype(np.float32) for _, _, block in blocks])
    good = raw_good & ~bad.seen if raw_good is not None else ~bad.seen
    mask = pipeline.mask(good)
    probe = pipeline.probe(probe_in) if probe_in is not None else probe_from_mean_pattern(frames.mean(axis=0))
    n = headers[middle].n_frames
    correlation = phase_absorption_correlation(frames, corners[middle, :n], float(angles[middle]), probe, geometry,
                                               mask if not mask.all() else None, options.conjugate_sweeps,
                                               options.device)
    if abs(correlation) <= UNDECIDED:
        # Kept silently, a wrong sign gives a conjugated volume (negative phase) from every method.
        logging.getLogger("ptytomo").warning(
            f"--conjugate auto could not decide the sign convention (phase/absorption correlation "
            f"{correlation:+.2f}, a probe guess too far off?): frames kept as they are; check one angle with "
            f"--method ptycho, and import again with --conjugate yes if its phase comes out negative")
    return correlation < -UNDECIDED, correlation


def write_series(output, open_scan, inputs, options, pipeline, headers, corners, valid, angles, geometry,
                 saturations, raw_good, probe, record, progress) -> None:
    """Stream every input's frames into the output file, then write what the stream derived."""
    m = pipeline.size
    n_angles, n_positions = valid.shape
    frames_per_chunk = int(max(1, min(n_positions, CHUNK_BYTES // (4 * m * m))))
    bad = BadPixels(headers[0].frame_shape)
    total = np.zeros((m, m))
    with atomic_h5(output) as f:
        f.attrs["format"] = DATA_FORMAT
        f.attrs["version"] = np.int64(FORMAT_VERSION)
        intensities = f.create_dataset(INTENSITIES, shape=(n_angles, n_positions, m, m), dtype=np.float32,
                                       chunks=(1, frames_per_chunk, m, m), compression="gzip",
                                       compression_opts=4, shuffle=True, fillvalue=0)
        bar = tqdm(total=int(valid.sum()), desc="import", unit="frame", disable=not progress or None)
        with bar:
            for a, path in enumerate(inputs):
                for start, stop, block in read_frames(open_scan, path, options, saturations[a], raw_good,
                                                      bad, pipeline.frames):
                    with np.errstate(over="ignore"):  # reported just below, with the frames named
                        block = block.astype(np.float32)
                    if not np.all(np.isfinite(block)):
                        raise error(path, None, f"frames {start}..{stop - 1} overflow float32 photon counts")
                    intensities[a, start:stop] = block
                    total += block.sum(axis=0)
                    bar.update(stop - start)
        f.create_dataset(POSITIONS, data=corners.astype(np.float64))
        f.create_dataset(ANGLES, data=np.asarray(angles, dtype=np.float64))
        if not valid.all():
            f.create_dataset(VALID, data=valid)
        good = raw_good & ~bad.seen if raw_good is not None else ~bad.seen
        mask = pipeline.mask(good)
        if not mask.any():
            raise error(output, MASK, "every detector pixel is masked (bad-pixel mask, NaN, negative or "
                                      "saturated counts)")
        if not mask.all():
            f.create_dataset(MASK, data=mask)
        if probe is None:
            probe = probe_from_mean_pattern(np.where(mask, total / max(int(valid.sum()), 1), 0))
            record["probe"] = "initial guess: sqrt(mean pattern) with a flat phase, transformed back"
        else:
            record["probe"] = f"from the inputs ({probe.shape[0]} mode(s))"
        f.create_dataset(PROBE, data=(probe[0] if probe.shape[0] == 1 else probe).astype(np.complex64))
        group = f.create_group("/geometry")
        group.attrs["energy_kev"] = np.float64(geometry.energy_kev)
        group.attrs["voxel_size_m"] = np.float64(geometry.voxel_size_m)
        group.attrs["volume_shape"] = np.asarray(geometry.volume_shape, dtype=np.int64)
        record.update(masked_pixels=int((~mask).sum()), bad_value_pixels=int(bad.seen.sum()),
                      mean_frame_photons=float(total.sum() / max(int(valid.sum()), 1)),
                      probe_photons=float(np.sum(np.abs(probe) ** 2)))
        write_record(f, record)


def write_record(f: h5py.File, record: dict) -> None:
    group = f.create_group(IMPORT, track_order=True)
    for name, value in record.items():
        if isinstance(value, (list, tuple)) and value and isinstance(value[0], str):
            group.attrs[name] = np.asarray(value, dtype=h5py.string_dtype())
        elif isinstance(value, bool):
            group.attrs[name] = np.bool_(value)
        else:
            group.attrs[name] = value


def describe_import(path) -> list[str]:
    """Lines for ``ptytomo info``: what the import derived, when the file has an /import group."""
    try:
        with h5py.File(os.fspath(path), "r") as f:
            group = f.get(IMPORT)
            if not isinstance(group, h5py.Group):
                return []
            a = {name: group.attrs[name] for name in group.attrs}
    except (OSError, ValueError, KeyError):
        return []

    def text(name, default="?"):
        value = a.get(name, default)
        if isinstance(value, bytes):
            return value.decode()
        if isinstance(value, np.ndarray):
            return ", ".join(v.decode() if isinstance(v, bytes) else f"{v:g}" if isinstance(v, float) else str(v)
                             for v in value.tolist())
        return value if isinstance(value, str) else (f"{value:g}" if isinstance(value, float) else str(value))

    sources = a.get("sources", [])
    correlation = a.get("conjugate_correlation", float("nan"))
    decided = "given" if text("conjugate_option") != "auto" else \
        f"auto, phase/attenuation correlation {correlation:+.2f} with the {text('conjugate_probe')} probe" + \
        (", undecided: kept" if abs(correlation) <= UNDECIDED else "")
    return [
        f"imported      {len(sources)} {text('format')} input(s), {text('frames')} frames; flips {text('flips')}",
        f"pixel size    {float(a.get('object_pixel_m', float('nan'))) * 1e9:.4g} nm (lambda z / (M' d), M' = "
        f"{text('crop')}, bin {text('bin')})",
        f"DC centre     row {text('dc_row')}, col {text('dc_col')} of the raw frames after flips "
        f"({'detected' if a.get('dc_detected', True) else 'given'}; centroid {text('dc_centroid')})",
        f"conjugated    {'yes' if a.get('conjugated', False) else 'no'} ({decided})",
        f"masked        {text('masked_pixels')} pixels ({text('bad_value_pixels')} for NaN, negative or "
        f"saturated counts)",
        f"angle range   {float(a.get('angle_min_deg', float('nan'))):.2f} to "
        f"{float(a.get('angle_max_deg', float('nan'))):.2f} deg (from {text('angles_from')})",
        f"probe         {text('probe')}",
    ]

