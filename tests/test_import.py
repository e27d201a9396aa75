"""``ptytomo import``: per-angle CXI, NXcxi_ptycho, ptychodus and mapped files back to FORMAT.md.

A tiny data set simulated by ptytomo is written by the tests themselves into
each layout with plain h5py -- positions in metres (with an arbitrary stage
origin), frames flipped and with the zero frequency at the corner, a few bad
pixels, energies in J, eV or keV -- imported back and compared with the
original: frames, positions in pixels, energy, voxel size, probe, and the
reconstruction.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import textwrap

import h5py
import numpy as np
import pytest
import torch

from ptytomo.cli import main
from ptytomo.errors import PtytomoError
from ptytomo.io import read_data, write_data
from ptytomo.io.foreign import JOULES_PER_KEV
from ptytomo.io.series import FramePipeline, ImportOptions, describe_import, import_series, point_reflect
from ptytomo.operators.ptycho import far_field
from ptytomo.physics import wavelength_m
from ptytomo.reconstruct import ReconstructOptions, reconstruct
from ptytomo.simulate import SimulationConfig, simulate

DETECTOR_PIXEL = 75e-6  # m
STAGE_ORIGIN = np.array([3.25e-6, -1.5e-6])  # (row, col) metres: where the stage's zero happens to be
BAD_PIXEL = (2, 3)  # raw detector coordinates, away from the zero frequency
NEGATIVE_PIXEL = (12, 4)  # negative in one frame only


@pytest.fixture(scope="module")
def original():
    """12^3 voxels, 3 angles, 15 px frames; the raster (step 3, no per-angle shift) is centred on the volume,
    as the importer centres it."""
    config = SimulationConfig(size=12, n_angles=3, detector_size=15, probe_diameter=7, step=3, shift=0,
                              shift_axes="none", device="cpu", precision="float64")
    return simulate(config, progress=False)


def distance_for(data) -> float:
    """The detector distance that makes lambda z / (M d) the simulation's voxel."""
    m = data.detector_size
    return data.geometry.voxel_size_m * m * DETECTOR_PIXEL / wavelength_m(data.geometry.energy_kev)


def raw_frames(frames: np.ndarray, flip: str) -> np.ndarray:
    """What a detector writes: the FORMAT.md frames flipped, with the zero frequency at the corner."""
    flipped = frames[..., ::-1, :] if flip == "ud" else frames[..., :, ::-1]
    return np.fft.ifftshift(flipped, axes=(-2, -1))


def metres(data, a: int) -> np.ndarray:
    """(J, 2) (row, col) window positions of angle a in metres, from an arbitrary stage origin."""
    return data.positions[a] * data.geometry.voxel_size_m + STAGE_ORIGIN


def with_bad_pixels(raw: np.ndarray) -> np.ndarray:
    raw = raw.copy()
    raw[:, BAD_PIXEL[0], BAD_PIXEL[1]] = 1e9  # a hot pixel the mask flags
    raw[0, NEGATIVE_PIXEL[0], NEGATIVE_PIXEL[1]] = -3  # a broken read in one frame
    return raw


def write_cxi(directory, data, nexus: bool = False) -> list[str]:
    """One CXI 1.6 (or NXcxi_ptycho) file per angle: SI units (CXI) or @units (NeXus), sample translations."""
    paths = []
    for a in range(data.n_angles):
        path = os.path.join(directory, f"scan_{a:03d}.{'nxs' if nexus else 'cxi'}")
        with h5py.File(path, "w") as f:
            entry = f.create_group("entry_1")
            detector = entry.create_group("instrument_1/detector_1")
            detector["data"] = with_bad_pixels(raw_frames(data.intensities[a], "ud")).astype(np.float32)
            entry["data_1/data"] = h5py.SoftLink("/entry_1/instrument_1/detector_1/data")
            rows_m, cols_m = metres(data, a).T
            translation = np.stack([-cols_m, -rows_m, np.zeros_like(rows_m)], axis=-1)  # the sample's (x, y, z)
            mask = np.zeros((data.detector_size,) * 2, dtype=np.uint32)
            mask[BAD_PIXEL] = 4  # hot
            mask[5, 9] = 32  # peak mask: still a good pixel for ptychography
            detector["mask"] = mask
            if nexus:
                entry["definition"] = "NXcxi_ptycho"
                entry["data_1/translation"] = translation * 1e6
                entry["data_1/translation"].attrs["units"] = "um"
                detector["distance"] = distance_for(data) * 1e3
                detector["distance"].attrs["units"] = "mm"
                for axis in "xy":
                    detector[f"{axis}_pixel_size"] = DETECTOR_PIXEL * 1e6
                    detector[f"{axis}_pixel_size"].attrs["units"] = "um"
                entry["instrument_1/beam_1/incident_beam_energy"] = data.geometry.energy_kev * 1e3
                entry["instrument_1/beam_1/incident_beam_energy"].attrs["units"] = "eV"
                entry["instrument_1/source_1/energy"] = 6.0  # the ring's electrons, GeV: must be ignored
                entry["instrument_1/source_1/probe"] = data.probe
                entry["sample_1/rotation_angle"] = math.degrees(data.angles[a])
                entry["sample_1/rotation_angle"].attrs["units"] = "degree"
            else:
                f["cxi_version"] = 160
                entry["sample_1/geometry_1/translation"] = translation
                detector["distance"] = distance_for(data)
                detector["x_pixel_size"] = DETECTOR_PIXEL
                detector["y_pixel_size"] = DETECTOR_PIXEL
                entry["instrument_1/source_1/energy"] = data.geometry.energy_kev * JOULES_PER_KEV
                entry["instrument_1/source_1/illumination"] = data.probe
        paths.append(path)
    return paths


def write_ptychodus(directory, data) -> list[str]:
    """One ptychodus directory per angle; patterns stored in shuffled order, named by ``indexes``."""
    paths = []
    rng = np.random.default_rng(1)
    for a in range(data.n_angles):
        path = os.path.join(directory, f"angle_{a:03d}")
        os.makedirs(path)
        j = data.n_positions
        stored = rng.permutation(j)  # pattern row r holds position stored[r]
        raw = with_bad_pixels(raw_frames(data.intensities[a], "lr"))
        with h5py.File(os.path.join(path, "diffraction.h5"), "w") as f:
            f["patterns"] = raw[stored].astype(np.float32)
            f["indexes"] = (100 + stored).astype(np.int64)
            bad = np.zeros((data.detector_size,) * 2, dtype=bool)
            bad[BAD_PIXEL] = True
            f["bad_pixels"] = bad
            f.attrs["detector_pixel_width_m"] = DETECTOR_PIXEL
            f.attrs["detector_pixel_height_m"] = DETECTOR_PIXEL
        with h5py.File(os.path.join(path, "product-in.h5"), "w") as f:
            f.attrs["name"] = f"angle {a}"
            f.attrs["detector_object_distance_m"] = distance_for(data)
            f.attrs["probe_energy_eV"] = data.geometry.energy_kev * 1e3
            f.attrs["tomography_angle_deg"] = math.degrees(data.angles[a])
            rows_m, cols_m = metres(data, a).T
            f["probe_position_indexes"] = 100 + np.arange(j)
            f["probe_position_x_m"] = cols_m  # the probe's position on the object: not negated
            f["probe_position_y_m"] = rows_m
            f["probe"] = data.probe[None, None]  # (opr, modes, H, W)
            f["probe"].attrs["pixel_width_m"] = data.geometry.voxel_size_m
            f["probe"].attrs["pixel_height_m"] = data.geometry.voxel_size_m
        paths.append(path)
    return paths


def assert_same_data(imported, original):
    """Frames (good pixels), positions in pixels, angles, energy, voxel, volume shape and probe agree."""
    good = imported.mask if imported.mask is not None else np.ones((imported.detector_size,) * 2, bool)
    np.testing.assert_allclose(imported.intensities[..., good], original.intensities[..., good], rtol=1e-6, atol=0)
    np.testing.assert_allclose(imported.positions, original.positions, rtol=0, atol=1e-9)
    np.testing.assert_allclose(imported.angles, original.angles, rtol=1e-12, atol=1e-12)
    assert imported.geometry.energy_kev == pytest.approx(original.geometry.energy_kev, rel=1e-12)
    assert imported.geometry.voxel_size_m == pytest.approx(original.geometry.voxel_size_m, rel=1e-12)
    assert imported.geometry.volume_shape == original.geometry.volume_shape
    np.testing.assert_allclose(imported.probe, original.probe, rtol=1e-6, atol=1e-6 * np.abs(original.probe).max())


def expected_mask(original, flip: str) -> np.ndarray:
    """The bad raw pixels (flagged and negative-once) carried through the flip and the DC centring."""
    raw = np.ones((original.detector_size,) * 2, dtype=bool)
    raw[BAD_PIXEL] = raw[NEGATIVE_PIXEL] = False
    # raw = ifftshift(flip(I)); undo: flip(fftshift(raw)) -- for odd M the importer's roll is fftshift.
    centred = np.fft.fftshift(raw)
    return centred[::-1, :] if flip == "ud" else centred[:, ::-1]


@pytest.mark.parametrize("layout", ["cxi", "nxcxi", "ptychodus"])
def test_round_trip_of_each_layout(tmp_path, original, layout):
    inputs_dir = tmp_path / "inputs"
    inputs_dir.mkdir()
    angles_file = None
    if layout == "ptychodus":
        inputs, flip = write_ptychodus(str(inputs_dir), original), "lr"
    else:
        inputs, flip = write_cxi(str(inputs_dir), original, nexus=layout == "nxcxi"), "ud"
    if layout == "cxi":  # CXI carries no rotation angle
        angles_file = tmp_path / "angles.txt"
        angles_file.write_text("".join(f"{math.degrees(t)!r}\n" for t in original.angles))
    out = tmp_path / "imported.h5"
    record = import_series(out, inputs, ImportOptions(angles_file=angles_file and str(angles_file), flip=(flip,),
                                                      volume_shape=original.geometry.volume_shape,
                                                      conjugate="no"), progress=False)
    assert record["format"] == layout
    imported = read_data(out)
    np.testing.assert_array_equal(imported.mask, expected_mask(original, flip))
    assert_same_data(imported, original)
    assert record["masked_pixels"] == 2 and record["bad_value_pixels"] == 1  # the flagged one and the negative one


def test_reconstruction_of_the_import_equals_the_original(tmp_path, original):
    inputs = write_cxi(str(tmp_path), original, nexus=True)
    out = tmp_path / "imported.h5"
    import_series(out, inputs, ImportOptions(flip=("ud",), volume_shape=original.geometry.volume_shape,
                                             conjugate="no"), progress=False)
    imported = read_data(out)
    reference = read_data(write_and_return(tmp_path / "original.h5", original))
    # Bad pixels carry no information in either file; the same mask and masked values (which only
    # frame-count statistics see) make the two data sets the same.
    reference.mask = imported.mask
    reference.intensities[..., ~imported.mask] = imported.intensities[..., ~imported.mask]
    options = ReconstructOptions(refine="none", iterations=3, device="cpu", tolerance=0)
    mine = reconstruct(imported, options, progress=False)
    theirs = reconstruct(reference, options, progress=False)
    np.testing.assert_allclose(mine.volume, theirs.volume, rtol=1e-5, atol=1e-5 * np.abs(theirs.volume).max())


def write_and_return(path, data):
    write_data(path, data)
    return path


# --------------------------------------------------------------------------
# Geometry pieces
# --------------------------------------------------------------------------


@pytest.mark.parametrize("m", [8, 9])
def test_point_reflection_is_conjugation_on_the_centred_grid(m):
    rng = np.random.default_rng(m)
    wave = torch.from_numpy(rng.normal(size=(m, m)) + 1j * rng.normal(size=(m, m)))
    intensity = (far_field(wave).abs() ** 2).numpy()
    conjugated = (far_field(wave.conj()).abs() ** 2).numpy()
    np.testing.assert_allclose(point_reflect(intensity), conjugated, rtol=1e-12, atol=1e-12)


def test_crop_and_bin_pixel_size_and_dc(tmp_path, original):
    """lambda z / (M' d) after --crop M'; --bin keeps it; DC stays at M//2."""
    inputs = write_cxi(str(tmp_path), original, nexus=True)
    for crop, binning, m in [(12, 1, 12), (12, 2, 6), (15, 3, 5)]:
        out = tmp_path / f"crop{crop}_bin{binning}.h5"
        record = import_series(out, inputs, ImportOptions(flip=("ud",), crop=crop, bin=binning, conjugate="no"),
                               progress=False)
        data = read_data(out)
        expected = wavelength_m(original.geometry.energy_kev) * distance_for(original) / (crop * DETECTOR_PIXEL)
        assert data.geometry.voxel_size_m == pytest.approx(expected, rel=1e-12)
        assert data.detector_size == m and data.probe.shape[-1] == m
        assert record["dc_row"] == 14 and record["dc_col"] == 0  # ifftshift of a flipped 15 px frame
        mean = data.intensities.mean(axis=(0, 1))
        assert np.unravel_index(np.argmax(np.where(data.mask, mean, 0) if data.mask is not None else mean),
                                mean.shape) == (m // 2, m // 2)
        total = original.intensities.sum()
        assert data.intensities.sum() <= total * 1.0001


def test_pipeline_bin_sums_blocks():
    pipeline = FramePipeline(flips=(), oriented_shape=(4, 4), dc=(2, 2), crop=4, bin=2)
    frame = np.arange(16.0).reshape(1, 4, 4)
    np.testing.assert_array_equal(pipeline.frames(frame)[0], [[0 + 1 + 4 + 5, 2 + 3 + 6 + 7],
                                                              [8 + 9 + 12 + 13, 10 + 11 + 14 + 15]])


@pytest.mark.parametrize("m", [8, 9])
def test_pipeline_undoes_corner_dc_and_flips_exactly(m):
    """FFT-ordered, flipped and transposed frames come back as FORMAT.md's centred frames, even and odd M."""
    from ptytomo.io.series import orient

    def detector(frames):  # what the test's detector does: flip ud, transpose, DC to the corner
        return np.fft.ifftshift(frames[..., ::-1, :].swapaxes(-1, -2), axes=(-2, -1))

    frames = np.random.default_rng(m).random((2, m, m))
    marker = np.zeros((m, m))
    marker[m // 2, m // 2] = 1  # FORMAT.md's DC pixel
    flips = ("transpose", "ud")  # undoes the detector's orientation
    dc = tuple(int(i) for i in np.argwhere(orient(detector(marker), flips))[0])
    pipeline = FramePipeline(flips=flips, oriented_shape=(m, m), dc=dc, crop=m, bin=1)
    np.testing.assert_array_equal(pipeline.frames(detector(frames)), frames)


def test_default_volume_is_centred_on_the_scanned_field(tmp_path, original):
    inputs = write_cxi(str(tmp_path), original, nexus=True)
    out = tmp_path / "default.h5"
    record = import_series(out, inputs, ImportOptions(flip=("ud",), conjugate="no"), progress=False)
    data = read_data(out)
    nz, ny, nx = data.geometry.volume_shape
    assert record["volume_from"] == "scanned field" and ny == nx
    centres = data.positions[data.valid_or_all()] + (data.detector_size - 1) / 2
    np.testing.assert_allclose((centres.min(0) + centres.max(0)) / 2, [(nz - 1) / 2, (nx - 1) / 2], atol=1e-9)


# --------------------------------------------------------------------------
# Sign convention
# --------------------------------------------------------------------------


def conjugated_copy(data):
    """The same data set in the other sign convention: every frame point-reflected."""
    from dataclasses import replace

    return replace(data, intensities=point_reflect(data.intensities).copy(), probe=np.conj(data.probe))


@pytest.mark.parametrize("conjugated, check_size", [(False, 64), (True, 64), (True, 11)])
def test_conjugate_auto_detects_the_convention(tmp_path, original, conjugated, check_size, monkeypatch):
    """Data written in either sign convention; check_size 11 < M runs the check on cropped frames."""
    from ptytomo.io import series

    monkeypatch.setattr(series, "CHECK_SIZE", check_size)
    data = conjugated_copy(original) if conjugated else original
    inputs = write_cxi(str(tmp_path), data, nexus=True)
    out = tmp_path / "auto.h5"
    record = import_series(out, inputs, ImportOptions(flip=("ud",), volume_shape=original.geometry.volume_shape,
                                                      conjugate="auto", device="cpu"), progress=False)
    assert record["conjugated"] is conjugated, record["conjugate_correlation"]
    assert abs(record["conjugate_correlation"]) > 0.1
    imported = read_data(out)
    good = imported.mask
    np.testing.assert_allclose(imported.intensities[..., good], original.intensities[..., good], rtol=1e-6)
    np.testing.assert_allclose(imported.probe, original.probe, atol=1e-6 * np.abs(original.probe).max())



def test_an_undecided_sign_is_said_in_one_warning(tmp_path, original, monkeypatch, caplog):
    """A correlation too weak to decide keeps the frames, and says so (a silent wrong sign conjugates
    every volume made from the file)."""
    from ptytomo.io import series

    monkeypatch.setattr(series, "phase_absorption_correlation", lambda *args, **kwargs: 0.03)
    inputs = write_cxi(str(tmp_path), original, nexus=True)
    with caplog.at_level("WARNING", logger="ptytomo"):
        record = import_series(tmp_path / "auto.h5", inputs,
                               ImportOptions(flip=("ud",), volume_shape=original.geometry.volume_shape,
                                             conjugate="auto", device="cpu"), progress=False)
    assert record["conjugated"] is False
    (line,) = [r.getMessage() for r in caplog.records if "--conjugate auto could not decide" in r.getMessage()]
    assert "+0.03" in line and "--conjugate yes" in line and "\n" not in line


# --------------------------------------------------------------------------
# Mapping files
# --------------------------------------------------------------------------


MAPPING = textwrap.dedent("""\
    frames = "/scan/frames"
    position_x = "/scan/stage_x"
    position_y = "/scan/stage_y"
    position_units = "um"
    positions_are = "sample"
    energy = "/scan/energy"
    energy_units = "keV"
    distance = {distance}
    distance_units = "m"
    pixel_size = "/scan/frames@pixel_size"
    pixel_size_units = "um"
    angle = "/scan/theta"
    angle_units = "rad"
    mask = "/scan/good"
    mask_bad = "zero"
""")


def write_mapped(directory, data) -> tuple[list[str], str]:
    paths = []
    for a in range(data.n_angles):
        path = os.path.join(directory, f"beamline_{a}.h5")
        with h5py.File(path, "w") as f:
            frames = f.create_dataset("scan/frames", data=with_bad_pixels(raw_frames(data.intensities[a], "ud")))
            frames.attrs["pixel_size"] = DETECTOR_PIXEL * 1e6
            rows_m, cols_m = metres(data, a).T
            f["scan/stage_x"] = -cols_m * 1e6
            f["scan/stage_x"].attrs["units"] = "mm"  # wrong on purpose: the mapping's unit wins
            f["scan/stage_y"] = -rows_m * 1e6
            f["scan/energy"] = data.geometry.energy_kev
            f["scan/theta"] = data.angles[a]
            good = np.ones((data.detector_size,) * 2, dtype=np.uint8)
            good[BAD_PIXEL] = 0
            f["scan/good"] = good
        paths.append(path)
    mapping = os.path.join(directory, "beamline.toml")
    with open(mapping, "w") as handle:
        handle.write(MAPPING.format(distance=repr(distance_for(data))))
    return paths, mapping


def test_mapping_file_round_trip(tmp_path, original):
    inputs, mapping = write_mapped(str(tmp_path), original)
    out = tmp_path / "mapped.h5"
    record = import_series(out, inputs, ImportOptions(mapping=mapping, flip=("ud",), conjugate="no",
                                                      volume_shape=original.geometry.volume_shape), progress=False)
    assert record["format"] == "map" and record["probe"].startswith("initial guess")
    imported = read_data(out)
    good = imported.mask
    np.testing.assert_allclose(imported.intensities[..., good], original.intensities[..., good], rtol=1e-6)
    np.testing.assert_allclose(imported.positions, original.positions, atol=1e-9)
    assert imported.geometry.voxel_size_m == pytest.approx(original.geometry.voxel_size_m, rel=1e-12)
    # The initial probe's far-field modulus is the root of the mean pattern (good pixels).
    mean = np.where(good, imported.intensities.mean(axis=(0, 1)), 0)
    np.testing.assert_allclose((far_field(torch.from_numpy(imported.probe.astype(np.complex128))).abs() ** 2).numpy(),
                               mean, rtol=1e-4, atol=1e-6 * mean.max())


# --------------------------------------------------------------------------
# Errors: one line naming the file and the path, exit status 2
# --------------------------------------------------------------------------


def run_cli(capsys, *argv) -> tuple[int, str]:
    status = main(["import", *map(str, argv)])
    return status, capsys.readouterr().err


def test_cli_import_and_info(tmp_path, original, capsys):
    inputs = write_cxi(str(tmp_path), original, nexus=True)
    out = tmp_path / "cli.h5"
    status = main(["import", str(out), *inputs, "--flip", "ud", "--volume", "12,12,12", "--conjugate", "no",
                   "--quiet"])
    assert status == 0
    assert "wrote" in capsys.readouterr().out
    assert main(["info", str(out)]) == 0
    shown = capsys.readouterr().out
    for label in ("pixel size", "DC centre", "masked", "angle range", "conjugated"):
        assert label in shown
    assert len(describe_import(out)) >= 5


def test_cli_errors_are_one_line(tmp_path, original, capsys):
    inputs = write_cxi(str(tmp_path), original)
    out = tmp_path / "never.h5"
    status, err = run_cli(capsys, out, *inputs, "--conjugate", "no", "--quiet")  # CXI has no angles
    assert status == 2 and err.count("\n") == 1 and "--angles" in err and inputs[0] in err
    angles = tmp_path / "two.txt"
    angles.write_text("0\n90\n")
    status, err = run_cli(capsys, out, *inputs, "--angles", angles, "--conjugate", "no", "--quiet")
    assert status == 2 and err.count("\n") == 1 and "2 angles for 3 inputs" in err
    with h5py.File(inputs[1], "a") as f:
        del f["entry_1/instrument_1/detector_1/distance"]
    status, err = run_cli(capsys, out, *inputs, "--conjugate", "no", "--quiet")
    assert status == 2 and err.count("\n") == 1 and inputs[1] in err and "detector_1/distance" in err
    status, err = run_cli(capsys, out, tmp_path / "missing.cxi")
    assert status == 2 and err.count("\n") == 1 and "missing.cxi" in err
    garbage = tmp_path / "garbage.cxi"
    garbage.write_bytes(b"not hdf5 at all" * 10)
    status, err = run_cli(capsys, out, garbage, "--format", "cxi")
    assert status == 2 and err.count("\n") == 1 and "garbage.cxi: not an HDF5 file" in err
    with h5py.File(inputs[2], "a") as f:  # an angle whose detector was read out with a smaller region
        for name in ("data", "mask"):
            cropped = f[f"entry_1/instrument_1/detector_1/{name}"][..., :13, :13]
            del f[f"entry_1/instrument_1/detector_1/{name}"]
            f[f"entry_1/instrument_1/detector_1/{name}"] = cropped
        del f["entry_1/instrument_1/source_1/illumination"]
    status, err = run_cli(capsys, out, inputs[0], inputs[2], "--angles", angles, "--conjugate", "no", "--quiet")
    assert status == 2 and err.count("\n") == 1 and inputs[2] in err and "(13, 13) px" in err
    assert not out.exists()


def test_missing_compression_filter_is_named(tmp_path, original):
    """Frames compressed with bitshuffle/LZ4 (Eiger) read without hdf5plugin: one line naming the filter."""
    hdf5plugin = pytest.importorskip("hdf5plugin")
    inputs = write_cxi(str(tmp_path), original, nexus=True)
    with h5py.File(inputs[0], "a") as f:
        data = f["entry_1/instrument_1/detector_1/data"][()]
        del f["entry_1/instrument_1/detector_1/data"]
        f.create_dataset("entry_1/instrument_1/detector_1/data", data=data, **hdf5plugin.Bitshuffle())
    script = textwrap.dedent(f"""
        import sys
        sys.modules["hdf5plugin"] = None  # as if it were not installed: its filters are never registered
        from ptytomo.cli import main
        sys.exit(main(["import", {str(tmp_path / 'out.h5')!r}, *{inputs!r}, "--conjugate", "no", "--quiet"]))
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1
    assert "Bitshuffle" in result.stderr and "pip install hdf5plugin" in result.stderr and inputs[0] in result.stderr


# --------------------------------------------------------------------------
# Fuzzing: every damaged input ends in one PtytomoError line, never a traceback or a hang
# --------------------------------------------------------------------------

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

MUTATIONS = ("truncate", "delete", "retype", "reshape", "nonfinite", "absurd", "extra")
ABSURD = (0, -1, 1e300, 1e-300, 2**62, -1e-9)


def hdf5_members(path) -> list[tuple[str, str | None]]:
    """(object path, attribute name or None) of every dataset and attribute in a file."""
    members = [("/", name) for name in h5py.File(path, "r").attrs]
    with h5py.File(path, "r") as f:
        def visit(name, obj):
            if isinstance(obj, h5py.Dataset):
                members.append((name, None))
            members.extend((name, attribute) for attribute in obj.attrs)
        f.visititems(visit)
    return members


def mutate(path, mutation: str, pick: int, fraction: float, value) -> None:
    """Damage one input file in one way."""
    if mutation == "truncate":
        size = os.path.getsize(path)
        with open(path, "r+b") as handle:
            handle.truncate(int(size * fraction))
        return
    members = hdf5_members(path)
    name, attribute = members[pick % len(members)]
    with h5py.File(path, "a") as f:
        holder = f[name]
        if mutation == "extra":
            f.create_dataset(f"/extra_{pick}", data=np.arange(3.0))
            holder.attrs[f"extra_{pick}"] = "unexpected"
            return
        current = holder.attrs[attribute] if attribute else holder[()]
        if mutation == "delete":
            replacement = None
        elif mutation == "retype":
            replacement = "not a number"
        elif mutation == "reshape":
            array = np.asarray(current)
            if array.dtype.kind in "USO":  # text: two of it
                array = np.asarray([str(array.reshape(-1)[0])] * 2, dtype=h5py.string_dtype())
            replacement = array.reshape(-1)[: max(array.size // 2, 1)] if array.ndim else np.stack([array, array])
        elif mutation == "nonfinite":
            replacement = np.asarray(current, dtype=np.float64).copy() if np.asarray(current).dtype.kind in "fiub" \
                else np.asarray(np.nan)
            replacement.reshape(-1)[:1] = value if isinstance(value, float) and not np.isfinite(value) else np.nan
        else:  # absurd
            replacement = np.full(np.shape(current), value, dtype=np.float64)
        if attribute:
            del holder.attrs[attribute]
            if replacement is not None:
                holder.attrs[attribute] = replacement
        else:
            del f[name]
            if replacement is not None:
                f[name] = replacement


def files_of(inputs) -> list[str]:
    files = []
    for path in inputs:
        files += [os.path.join(path, name) for name in sorted(os.listdir(path))] if os.path.isdir(path) else [path]
    return files


def check_import_fails_cleanly(inputs, options, out) -> None:
    try:
        import_series(out, inputs, options, progress=False)
    except PtytomoError as exc:
        message = str(exc)
        assert message and "\n" not in message and "Traceback" not in message
        if os.environ.get("FUZZ_LOG"):
            print("FUZZ", message[-110:])
        return
    read_data(out)  # a damage the import tolerated (an extra field) must still give a valid file


def fuzz(tmp_path_factory, original, writer, options_for):
    base = tmp_path_factory.mktemp("fuzz_base")
    inputs = writer(str(base))

    # FUZZ_EXAMPLES=200 FUZZ_RANDOM=1 FUZZ_LOG=1 pytest -s -k fuzzed: a longer, randomised campaign, every message.
    @settings(max_examples=int(os.environ.get("FUZZ_EXAMPLES", 12)), deadline=None,
              suppress_health_check=list(HealthCheck), derandomize=not os.environ.get("FUZZ_RANDOM"))
    @given(mutation=st.sampled_from(MUTATIONS), which=st.integers(0, 10**6), pick=st.integers(0, 10**6),
           fraction=st.floats(0.0, 0.999), value=st.sampled_from(ABSURD + (np.nan, np.inf, -np.inf)))
    def run(mutation, which, pick, fraction, value):
        import shutil

        work = tmp_path_factory.mktemp("fuzz")
        copies = []
        for path in inputs:
            target = os.path.join(work, os.path.basename(path))
            (shutil.copytree if os.path.isdir(path) else shutil.copy)(path, target)
            copies.append(target)
        files = files_of(copies)
        mutate(files[which % len(files)], mutation, pick, fraction, value)
        check_import_fails_cleanly(copies, options_for(work), os.path.join(work, "out.h5"))

    run()


@pytest.fixture(scope="module")
def fuzz_original():
    """A smaller data set than the round trips' (2 angles), so each fuzz example takes milliseconds."""
    config = SimulationConfig(size=8, n_angles=2, detector_size=15, probe_diameter=7, step=4, device="cpu")
    return simulate(config, progress=False)


@pytest.mark.parametrize("layout", ["cxi", "nxcxi", "ptychodus", "map"])
def test_fuzzed_inputs_fail_in_one_line(tmp_path_factory, fuzz_original, layout):
    data = fuzz_original
    angles = tmp_path_factory.mktemp("angles") / "angles.txt"
    angles.write_text("0\n90\n")
    mapping_holder = {}

    def writer(directory):
        if layout == "ptychodus":
            return write_ptychodus(directory, data)
        if layout == "map":
            paths, mapping_holder["file"] = write_mapped(directory, data)
            return paths
        return write_cxi(directory, data, nexus=layout == "nxcxi")

    def options_for(work):
        return ImportOptions(flip=("ud",), conjugate="no", mapping=mapping_holder.get("file"),
                             angles_file=str(angles) if layout == "cxi" else None)

    fuzz(tmp_path_factory, data, writer, options_for)


@settings(max_examples=15, deadline=None, derandomize=True)
@given(text=st.text(max_size=200))
def test_fuzzed_mapping_files_fail_in_one_line(text):
    import tempfile

    with tempfile.TemporaryDirectory() as directory:
        path = os.path.join(directory, "m.toml")
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(text)
        try:
            from ptytomo.io.mapping import load_mapping

            load_mapping(path)
        except PtytomoError as exc:
            assert "\n" not in str(exc)


def test_probe_modes_are_kept(tmp_path, original):
    inputs = write_cxi(str(tmp_path), original, nexus=True)
    modes = np.stack([original.probe, 0.3j * original.probe[::-1]])
    for path in inputs:
        with h5py.File(path, "a") as f:
            del f["entry_1/instrument_1/source_1/probe"]
            f["entry_1/instrument_1/source_1/probe"] = modes
    out = tmp_path / "modes.h5"
    record = import_series(out, inputs, ImportOptions(flip=("ud",), conjugate="yes"), progress=False)
    assert record["probe"] == "from the inputs (2 mode(s))" and record["conjugated"] is True
    np.testing.assert_allclose(read_data(out).probe, np.conj(modes), rtol=1e-6)


def test_import_that_cannot_fit_is_refused_before_reading_frames(tmp_path, original, capsys, monkeypatch):
    """The memory plan runs before any frame is read: one line, exit 2, no output."""
    import ptytomo.resources as resources

    inputs = write_cxi(str(tmp_path), original, nexus=True)
    monkeypatch.setattr(resources, "host_memory_available", lambda: 1000)  # bytes
    out = tmp_path / "out.h5"
    code, message = run_cli(capsys, out, *inputs, "--conjugate", "no", "--quiet")
    assert code == 2 and "import (" in message and "frames of" in message
    assert not out.exists()
