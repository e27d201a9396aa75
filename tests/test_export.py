"""``ptytomo export``: exact round trips of TIFF, OME-Zarr and .npy, their scale, streaming, one-line errors."""

from __future__ import annotations

import json
import os
import sys
import tracemalloc

import numpy as np
import pytest
import tifffile
import zarr

from ptytomo import physics
from ptytomo.cli import main
from ptytomo.errors import PtytomoError
from ptytomo.io import Geometry, Reconstruction, write_reconstruction
from ptytomo.io import export
from ptytomo.io.export import FORMATS, QUANTITIES, export_volume

SHAPE = (6, 10, 14)
VOXEL_M = 1.25e-8  # 12.5 nm
SUFFIX = {"tiff": ".tif", "zarr": ".zarr", "npy": ".npy"}


def _volume(shape=SHAPE, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (1e-6 * rng.standard_normal(shape) + 1j * 1e-8 * rng.standard_normal(shape)).astype(np.complex64)


def _write(path, volume, voxel_m=VOXEL_M) -> None:
    history = {"iteration": np.arange(2.0), "cost": np.ones(2), "time_s": np.arange(2.0)}
    write_reconstruction(path, Reconstruction(volume, "joint", {}, history, Geometry(8.0, voxel_m, volume.shape)))


def _expected(volume, quantity) -> np.ndarray:
    if quantity == "beta":
        return volume.imag.astype(np.float32)
    delta = volume.real.astype(np.float32)
    if quantity == "electron-density":
        return delta * np.float32(physics.electron_density_per_delta(8.0))
    return delta


def _read(path, format) -> np.ndarray:
    if format == "tiff":
        return tifffile.imread(path)
    if format == "zarr":
        return zarr.open_group(str(path), mode="r")["0"][:]
    return np.load(path)


def _leftovers(folder) -> list[str]:
    return [name for name in os.listdir(folder) if name.endswith((".tmp", ".old"))]


@pytest.fixture(scope="module")
def recon_file(tmp_path_factory):
    volume = _volume()
    path = tmp_path_factory.mktemp("recon") / "recon.h5"
    _write(path, volume)
    return path, volume


@pytest.mark.parametrize("format", FORMATS)
@pytest.mark.parametrize("quantity", QUANTITIES)
def test_round_trip_is_exact(tmp_path, recon_file, format, quantity):
    path, volume = recon_file
    out = tmp_path / f"volume{SUFFIX[format]}"
    summary = export_volume(path, out, quantity=quantity)  # format from the suffix
    assert summary.format == format and summary.shape == SHAPE
    read = _read(out, format)
    assert read.dtype == np.float32
    np.testing.assert_array_equal(read, _expected(volume, quantity))
    assert _leftovers(tmp_path) == []


def test_electron_density_is_delta_times_the_factor(tmp_path, recon_file):
    path, volume = recon_file
    export_volume(path, tmp_path / "rho.npy", quantity="electron-density")
    rho = np.load(tmp_path / "rho.npy")
    factor = physics.electron_density_per_delta(8.0)
    np.testing.assert_allclose(rho, volume.real.astype(np.float64) * factor, rtol=1e-6, atol=0)
    assert 9.28e7 < factor < 9.29e7  # e/nm^3 per unit delta at 8 keV


def test_tiff_carries_the_imagej_scale(tmp_path, recon_file):
    path, _ = recon_file
    out = tmp_path / "stack.tif"
    export_volume(path, out, "tiff", "delta")
    with tifffile.TiffFile(out) as tif:
        assert tif.is_imagej
        meta = tif.imagej_metadata
        assert meta["unit"] == "nm" and meta["spacing"] == pytest.approx(12.5, rel=1e-12)
        assert meta["images"] == SHAPE[0] and meta.get("hyperstack")
        assert "quantity = delta" in meta["Info"]
        assert tif.series[0].axes == "ZYX" and tif.series[0].shape == SHAPE
        page = tif.pages[0]
        for tag in ("XResolution", "YResolution"):
            numerator, denominator = page.tags[tag].value
            assert numerator / denominator == pytest.approx(1 / 12.5, rel=1e-6)  # pixels per nm
        assert page.tags["ResolutionUnit"].value == 1  # NONE: the unit is ImageJ's
        assert page.dtype == np.float32


def test_micrometre_voxels_use_um(tmp_path):
    path = tmp_path / "coarse.h5"
    _write(path, _volume((3, 4, 5)), voxel_m=2.5e-6)
    export_volume(path, tmp_path / "coarse.tif")
    with tifffile.TiffFile(tmp_path / "coarse.tif") as tif:
        assert tif.imagej_metadata["unit"] == "um" and tif.imagej_metadata["spacing"] == pytest.approx(2.5)
    export_volume(path, tmp_path / "coarse.zarr")
    axes = zarr.open_group(str(tmp_path / "coarse.zarr"), mode="r").attrs["multiscales"][0]["axes"]
    assert [a["unit"] for a in axes] == ["micrometer"] * 3


def test_ome_zarr_metadata_is_ngff_04_on_zarr_v2(tmp_path, recon_file):
    path, volume = recon_file
    out = tmp_path / "volume.zarr"
    export_volume(path, out, "zarr", "beta")
    group = zarr.open_group(str(out), mode="r")
    (image,) = group.attrs["multiscales"]
    assert image["version"] == "0.4"
    assert image["axes"] == [{"name": n, "type": "space", "unit": "nanometer"} for n in "zyx"]
    (level,) = image["datasets"]
    assert level["path"] == "0"
    assert level["coordinateTransformations"] == [{"type": "scale", "scale": [pytest.approx(12.5)] * 3}]
    assert group.attrs["ptytomo"]["quantity"] == "beta" and group.attrs["ptytomo"]["energy_kev"] == 8.0
    # Zarr v2 with "/" chunk keys, as NGFF 0.4 requires; chunks no larger than 64 per axis.
    array_meta = json.loads((out / "0" / ".zarray").read_text())
    assert array_meta["zarr_format"] == 2 and array_meta["dimension_separator"] == "/"
    assert array_meta["chunks"] == list(SHAPE) and array_meta["dtype"] == "<f4"
    assert json.loads((out / ".zgroup").read_text())["zarr_format"] == 2
    np.testing.assert_array_equal(group["0"][:], volume.imag)


@pytest.mark.parametrize("format", FORMATS)
def test_a_volume_larger_than_the_budget_streams(tmp_path, recon_file, format):
    """A 8 MiB complex volume under a 256 KiB budget: one plane a slab, the peak well below the volume."""
    shape = (64, 128, 128)
    volume = _volume(shape, seed=1)
    path = tmp_path / "large.h5"
    _write(path, volume)
    out = tmp_path / f"large{SUFFIX[format]}"
    export_volume(recon_file[0], tmp_path / f"warm{SUFFIX[format]}", format)  # imports: not the export's memory
    tracemalloc.start()
    try:
        summary = export_volume(path, out, format, "electron-density", max_bytes=2**18)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    float32_bytes = 4 * volume.size  # 4 MiB; the complex64 volume is twice that
    assert summary.slab_planes == 1
    assert peak < float32_bytes / 4, (peak, float32_bytes)
    np.testing.assert_array_equal(_read(out, format), _expected(volume, "electron-density"))


def test_slabs_are_whole_zarr_chunks(tmp_path, monkeypatch):
    """A budget of 100 planes with 64-plane chunks reads 64 planes a slab: no chunk is written twice."""
    shape = (150, 8, 8)
    volume = _volume(shape, seed=2)
    path = tmp_path / "tall.h5"
    _write(path, volume)
    per_plane = 8 * 8 * (8 + 8 + 2 * 4)
    summary = export_volume(path, tmp_path / "tall.zarr", max_bytes=100 * per_plane)
    assert summary.slab_planes == 64
    array = zarr.open_group(str(tmp_path / "tall.zarr"), mode="r")["0"]
    assert array.chunks == (64, 8, 8)
    np.testing.assert_array_equal(array[:], volume.real)


@pytest.mark.parametrize("format", FORMATS)
def test_existing_output_is_kept_unless_forced(tmp_path, recon_file, format):
    path, volume = recon_file
    out = tmp_path / f"volume{SUFFIX[format]}"
    export_volume(path, out, format, "beta")
    with pytest.raises(PtytomoError, match="--force"):
        export_volume(path, out, format, "delta")
    np.testing.assert_array_equal(_read(out, format), volume.imag)
    export_volume(path, out, format, "delta", force=True)
    np.testing.assert_array_equal(_read(out, format), volume.real)
    assert _leftovers(tmp_path) == []


@pytest.mark.parametrize("format", FORMATS)
def test_a_failed_export_leaves_the_old_output(tmp_path, recon_file, monkeypatch, format):
    path, volume = recon_file
    out = tmp_path / f"volume{SUFFIX[format]}"
    export_volume(path, out, format, "beta")
    calls, read_volume_slab = [], export.read_volume_slab

    def failing(dataset, planes, source="reconstruction"):  # the second slab cannot be read
        calls.append(planes)
        if len(calls) > 1:
            raise PtytomoError(f"{source}: cannot read /reconstruction/volume (simulated)")
        return read_volume_slab(dataset, planes, source)

    monkeypatch.setattr(export, "read_volume_slab", failing)
    with pytest.raises(PtytomoError, match="simulated"):
        export_volume(path, out, format, "delta", force=True, max_bytes=2**10)
    assert len(calls) == 2
    np.testing.assert_array_equal(_read(out, format), volume.imag)
    assert _leftovers(tmp_path) == []


def test_no_disk_space_is_refused_before_writing(tmp_path, recon_file, monkeypatch):
    import shutil

    from ptytomo import resources

    path, _ = recon_file
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(resources.shutil, "disk_usage", lambda folder: usage._replace(free=1000))
    with pytest.raises(PtytomoError, match="disk"):
        export_volume(path, tmp_path / "volume.npy")
    assert os.listdir(tmp_path) == []


# --------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------


def _one_line_error(capsys, argv, *words) -> str:
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("ptytomo export: error:")
    for word in words:
        assert word in lines[0], (word, lines[0])
    return lines[0]


def test_cli_writes_and_reports(tmp_path, recon_file, capsys):
    path, volume = recon_file
    out = tmp_path / "rho.tif"
    assert main(["export", str(path), str(out), "--quantity", "electron-density", "--max-memory-mb", "1"]) == 0
    printed = capsys.readouterr().out
    assert f"wrote {out}" in printed and "electrons/nm^3" in printed and "12.5 nm" in printed
    np.testing.assert_array_equal(tifffile.imread(out), _expected(volume, "electron-density"))


def test_cli_one_line_errors(tmp_path, recon_file, capsys, tiny_data_file):
    path, _ = recon_file
    _one_line_error(capsys, ["export", tmp_path / "missing.h5", tmp_path / "a.tif"], "missing.h5", "not found")
    _one_line_error(capsys, ["export", tiny_data_file, tmp_path / "a.tif"], "ptytomo-reconstruction", "data file")
    _one_line_error(capsys, ["export", path, tmp_path / "a.tif", "--format", "png"], "--format", "png")
    _one_line_error(capsys, ["export", path, tmp_path / "a.raw"], "--format", "a.raw")
    _one_line_error(capsys, ["export", path, tmp_path / "a.tif", "--quantity", "phase"], "--quantity", "phase")
    (tmp_path / "taken.npy").write_bytes(b"keep")
    _one_line_error(capsys, ["export", path, tmp_path / "taken.npy"], "taken.npy", "--force")
    assert (tmp_path / "taken.npy").read_bytes() == b"keep"
    _one_line_error(capsys, ["export", path, tmp_path / "nowhere" / "a.npy"], "does not exist")
    assert sorted(os.listdir(tmp_path)) == ["taken.npy"]


def test_cli_without_zarr_says_how_to_install_it(tmp_path, recon_file, capsys, monkeypatch):
    path, _ = recon_file
    monkeypatch.setitem(sys.modules, "zarr", None)  # import zarr now raises ImportError
    _one_line_error(capsys, ["export", path, tmp_path / "v.zarr"], "pip install", "ptytomo[zarr]")
    assert os.listdir(tmp_path) == []
