"""Volumes for viewers: a reconstruction's delta, beta or electron density as TIFF, OME-Zarr or .npy.

Layouts (docs/export.md):

- ``tiff``: a 32-bit float ImageJ hyperstack (axes ZYX) that Fiji opens with
  its scale: ``unit`` and ``spacing`` in the ImageJ description, X/Y
  resolution tags in pixels per unit.
- ``zarr``: OME-NGFF 0.4 on Zarr v2 (one resolution level, ``/`` chunk keys,
  Blosc-zstd), the version napari-ome-zarr, Fiji's MoBIE and n5-viewer,
  neuroglancer and ParaView read today; the voxel size is the ``scale``
  coordinate transformation, in nanometres or micrometres.
- ``npy``: numpy's format, for Python users.

The volume is read slab by slab (``max_bytes`` bounds what one slab holds),
so a volume larger than memory exports in the memory of one slab.  Every
output is written under a temporary name in the target folder and moved into
place at the end: an interrupted export leaves no half-written file behind.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from .. import physics
from ..errors import PtytomoError
from ..resources import check_disk
from .ptytomo_format import Geometry, open_reconstruction_volume, read_volume_slab

FORMATS = ("tiff", "zarr", "npy")
QUANTITIES = ("delta", "beta", "electron-density")
SUFFIXES = {".tif": "tiff", ".tiff": "tiff", ".zarr": "zarr", ".npy": "npy"}
NGFF_VERSION = "0.4"
DEFAULT_MAX_BYTES = 256 * 2**20
"""Memory one slab may hold (source planes, their complex64 copy and the float32 result)."""
ZARR_CHUNK = 64
"""Edge of the OME-Zarr chunks (smaller along an axis that is shorter, or when a slab is thinner)."""
ZARR_INSTALL_HINT = "--format zarr needs the zarr package: pip install 'ptytomo[zarr]' (or pip install zarr)"

QUANTITY_UNITS = {"delta": "1", "beta": "1", "electron-density": "electrons/nm^3"}


@dataclass(frozen=True)
class ExportSummary:
    """What :func:`export_volume` wrote."""

    path: Path
    format: str
    quantity: str
    shape: tuple[int, int, int]
    voxel_size: float  # in ``length_unit``
    length_unit: str  # "nm" or "um"
    slab_planes: int

    def line(self) -> str:
        nz, ny, nx = self.shape
        return (f"{self.quantity} ({QUANTITY_UNITS[self.quantity]}), float32 {nz}x{ny}x{nx} (z, y, x), "
                f"voxel {self.voxel_size:g} {self.length_unit}, {self.format}")


def format_from_path(path, format: str | None = None) -> str:
    """``format`` when given, else the one OUTPUT's suffix names (.tif/.tiff, .zarr, .npy); one line if neither."""
    if format is not None:
        if format not in FORMATS:
            raise PtytomoError(f"--format {format!r} is not one of {', '.join(FORMATS)}")
        return format
    suffix = Path(os.fspath(path)).suffix.lower()
    if suffix not in SUFFIXES:
        raise PtytomoError(f"--format: cannot tell the format from the suffix of {os.fspath(path)!r}; "
                           f"give --format {'|'.join(FORMATS)} or end the name in .tif, .zarr or .npy")
    return SUFFIXES[suffix]


def length_unit(voxel_size_m: float) -> tuple[str, float]:
    """("nm", 1e9) for voxels below a micrometre, else ("um", 1e6): the unit and metres -> unit factor."""
    return ("nm", 1e9) if voxel_size_m < 1e-6 else ("um", 1e6)


def export_volume(recon_path, out_path, format: str | None = None, quantity: str = "delta", *,
                  force: bool = False, max_bytes: int = DEFAULT_MAX_BYTES) -> ExportSummary:
    """Write ``quantity`` of a reconstruction file's volume to ``out_path`` in ``format``, as float32.

    ``quantity``: ``delta`` (real part), ``beta`` (imaginary part) or
    ``electron-density`` (delta x :func:`ptytomo.physics.electron_density_per_delta`,
    electrons per nm^3).  An existing ``out_path`` is refused unless ``force``;
    then it is replaced only once the new output is complete.
    """
    format = format_from_path(out_path, format)
    if quantity not in QUANTITIES:
        raise PtytomoError(f"--quantity {quantity!r} is not one of {', '.join(QUANTITIES)}")
    if not isinstance(max_bytes, (int, np.integer)) or max_bytes < 1:
        raise PtytomoError(f"max_bytes must be a positive integer, got {max_bytes!r}")
    target = Path(os.fspath(out_path))
    if (target.exists() or target.is_symlink()) and not force:
        raise PtytomoError(f"{target}: exists; give --force to replace it")
    folder = target.absolute().parent
    if not folder.is_dir():
        raise PtytomoError(f"{target}: the folder {folder} does not exist")
    if format == "zarr":
        _import_zarr()  # before reading anything: say at once what is missing
    source = os.fspath(recon_path)
    with open_reconstruction_volume(source) as (dataset, geometry):
        shape = tuple(int(n) for n in geometry.volume_shape)
        check_disk(target, 4 * int(np.prod(shape)) + 2**20, what="export output")
        planes = _slab_planes(shape, dataset.dtype.itemsize, int(max_bytes))
        # Whole chunks per slab: each output chunk is written once, each source chunk read once.
        align = ZARR_CHUNK if format == "zarr" else (dataset.chunks or (1,))[0]
        if align <= planes < shape[0]:
            planes -= planes % align
        slabs = _quantity_slabs(dataset, geometry, quantity, planes, source)
        unit, per_metre = length_unit(geometry.voxel_size_m)
        voxel = float(f"{geometry.voxel_size_m * per_metre:.12g}")  # 12.5, not 12.500000000000002
        write = {"tiff": _write_tiff, "zarr": _write_zarr, "npy": _write_npy}[format]
        with _AtomicOutput(target, directory=format == "zarr", force=force) as temporary:
            write(temporary, slabs, shape, planes, voxel, unit, _description(source, quantity, geometry))
    return ExportSummary(target, format, quantity, shape, voxel, unit, planes)


# --------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------


def _slab_planes(shape: tuple[int, int, int], source_itemsize: int, max_bytes: int) -> int:
    """z-planes per slab: the source's planes, their complex64 copy and two float32 planes per plane."""
    _, ny, nx = shape
    per_plane = ny * nx * (source_itemsize + 8 + 2 * 4)
    return int(max(1, min(shape[0], max_bytes // per_plane)))


def _quantity_slabs(dataset, geometry: Geometry, quantity: str, planes: int, source: str):
    """A callable yielding (z0, float32 slab) of ``quantity``, ``planes`` z-planes at a time."""
    nz = geometry.volume_shape[0]
    factor = np.float32(physics.electron_density_per_delta(geometry.energy_kev)) \
        if quantity == "electron-density" else None

    def slabs() -> Iterator[tuple[int, np.ndarray]]:
        for z0 in range(0, nz, planes):
            volume = read_volume_slab(dataset, slice(z0, min(z0 + planes, nz)), source)
            part = volume.imag if quantity == "beta" else volume.real
            slab = np.array(part, dtype=np.float32)  # contiguous: the writers hand it on as bytes
            del volume, part
            if factor is not None:
                slab *= factor
            yield z0, slab

    return slabs


def _description(source: str, quantity: str, geometry: Geometry) -> dict:
    """Provenance stored with every layout that has room for it."""
    return {"source": os.path.basename(source), "quantity": quantity, "quantity_unit": QUANTITY_UNITS[quantity],
            "voxel_size_m": geometry.voxel_size_m, "energy_kev": geometry.energy_kev}


# --------------------------------------------------------------------------
# Layouts
# --------------------------------------------------------------------------


def _write_tiff(path: str, slabs, shape, planes: int, voxel: float, unit: str, description: dict) -> None:
    import tifffile

    def pages() -> Iterator[np.ndarray]:
        for _, slab in slabs():
            yield from slab  # one z-plane (page) at a time

    info = "\n".join(f"ptytomo {key} = {value}" for key, value in description.items())
    # ImageJ keeps the scale as unit + spacing (z) in its description and x/y as
    # pixels per unit in the resolution tags; ResolutionUnit stays NONE (its unit is ImageJ's).
    tifffile.imwrite(path, pages(), shape=shape, dtype=np.float32, imagej=True,
                     resolution=(1.0 / voxel, 1.0 / voxel),
                     metadata={"axes": "ZYX", "unit": unit, "spacing": voxel, "Info": info})
    _sync(path)


def _write_npy(path: str, slabs, shape, planes: int, voxel: float, unit: str, description: dict) -> None:
    output = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=shape)
    try:
        for z0, slab in slabs():
            output[z0 : z0 + slab.shape[0]] = slab
            output.flush()  # written pages can leave memory
    finally:
        del output
    _sync(path)


def _write_zarr(path: str, slabs, shape, planes: int, voxel: float, unit: str, description: dict) -> None:
    zarr = _import_zarr()
    import numcodecs

    # Chunks are at most as thick as a slab, and slabs a whole number of chunks
    # (export_volume), so every chunk is written once, complete (no read-modify-write).
    chunks = (min(ZARR_CHUNK, shape[0], planes), min(ZARR_CHUNK, shape[1]), min(ZARR_CHUNK, shape[2]))
    compressor = numcodecs.Blosc(cname="zstd", clevel=5, shuffle=numcodecs.Blosc.SHUFFLE)
    if int(zarr.__version__.split(".")[0]) >= 3:
        group = zarr.open_group(path, mode="w-", zarr_format=2)
        array = group.create_array("0", shape=shape, chunks=chunks, dtype="float32", compressors=compressor,
                                   chunk_key_encoding={"name": "v2", "separator": "/"}, fill_value=0.0)
    else:
        group = zarr.open_group(path, mode="w-")
        array = group.create_dataset("0", shape=shape, chunks=chunks, dtype="float32", compressor=compressor,
                                     dimension_separator="/", fill_value=0.0)
    for z0, slab in slabs():
        array[z0 : z0 + slab.shape[0]] = slab
    group.attrs.update(ngff_attributes(voxel, unit, description))
    for root, _, files in os.walk(path):
        for name in files:
            _sync(os.path.join(root, name))


def ngff_attributes(voxel: float, unit: str, description: dict) -> dict:
    """The group attributes of an OME-NGFF 0.4 image with one resolution level, ``0``."""
    unit_name = {"nm": "nanometer", "um": "micrometer"}[unit]
    return {
        "multiscales": [{
            "version": NGFF_VERSION,
            "name": description["quantity"],
            "axes": [{"name": axis, "type": "space", "unit": unit_name} for axis in "zyx"],
            "datasets": [{"path": "0", "coordinateTransformations": [{"type": "scale", "scale": [voxel] * 3}]}],
            "metadata": {"method": "ptytomo export"},
        }],
        "ptytomo": json.loads(json.dumps(description)),  # plain JSON values only
    }


def _import_zarr():
    try:
        import numcodecs  # noqa: F401 - zarr's codecs; part of every zarr install
        import zarr
    except ImportError:
        raise PtytomoError(ZARR_INSTALL_HINT) from None
    return zarr


# --------------------------------------------------------------------------
# Atomic output
# --------------------------------------------------------------------------


class _AtomicOutput:
    """A temporary name in the target folder, moved onto ``target`` when the block succeeds."""

    def __init__(self, target: Path, directory: bool, force: bool):
        self.target, self.directory, self.force = target, directory, force
        folder, name = os.path.split(os.path.abspath(target))
        self.temporary = os.path.join(folder, f".{name}.{secrets.token_hex(6)}.tmp")

    def __enter__(self) -> str:
        return self.temporary

    def __exit__(self, kind, error, traceback) -> bool:
        if kind is not None:
            _remove(self.temporary)
            if isinstance(error, OSError):  # a full disk, a vanished folder: one line, not a traceback
                raise PtytomoError(f"{self.target}: cannot write the export ({error.strerror or error})") from None
            return False
        if os.path.lexists(self.target) and not self.force:  # appeared while exporting
            _remove(self.temporary)
            raise PtytomoError(f"{self.target}: exists; give --force to replace it")
        try:
            self._move_into_place()
        except OSError as exc:
            _remove(self.temporary)
            raise PtytomoError(f"{self.target}: cannot move the export into place ({exc.strerror or exc})") from None
        with suppress(OSError):
            _sync(os.path.dirname(os.path.abspath(self.target)))
        return False

    def _move_into_place(self) -> None:
        target = os.fspath(self.target)
        replaces_directory = os.path.isdir(target) and not os.path.islink(target)
        if not (self.directory or replaces_directory) or not os.path.lexists(target):
            os.replace(self.temporary, target)  # a file onto a file (or nothing): atomic
            return
        # A directory cannot replace another in one step: move the old one aside, then remove it.
        aside = f"{self.temporary}.old"
        os.replace(target, aside)
        try:
            os.replace(self.temporary, target)
        except OSError:
            os.replace(aside, target)
            raise
        _remove(aside)


def _remove(path: str) -> None:
    with suppress(OSError):
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        else:
            os.remove(path)


def _sync(path: str) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


__all__ = ["DEFAULT_MAX_BYTES", "ExportSummary", "FORMATS", "QUANTITIES", "export_volume", "format_from_path",
           "length_unit", "ngff_attributes"]
