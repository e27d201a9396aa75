"""Tests of ptytomo.io: the FORMAT.md layouts, tolerant reading, strict errors, atomic writes."""

from __future__ import annotations

import os

import h5py
import numpy as np
import pytest

from ptytomo.errors import PtytomoError
from ptytomo.io import (
    Geometry,
    PtychoTomoData,
    Reconstruction,
    atomic_h5,
    read_data,
    read_intensities,
    read_reconstruction,
    validate_data,
    write_data,
    write_reconstruction,
)

A, J, M = 3, 4, 8
VOLUME_SHAPE = (16, 10, 12)  # (Nz, Ny, Nx): projections are 16 x 12
GEOMETRY = Geometry(energy_kev=5.0, voxel_size_m=1e-8, volume_shape=VOLUME_SHAPE)


def make_data(optional: bool = True) -> PtychoTomoData:
    rng = np.random.default_rng(0)
    rows, cols = np.meshgrid([0.0, 6.0], [-2.0, 5.5], indexing="ij")
    positions = np.stack([rows.ravel(), cols.ravel()], axis=-1)
    positions = np.broadcast_to(positions, (A, J, 2)) + np.arange(A)[:, None, None]
    probe = (rng.normal(size=(M, M)) + 1j * rng.normal(size=(M, M))).astype(np.complex64)
    data = PtychoTomoData(
        intensities=rng.poisson(50.0, size=(A, J, M, M)).astype(np.float32),
        positions=positions.astype(np.float64),
        angles=np.linspace(0, np.pi, A, endpoint=False),
        probe=probe,
        geometry=GEOMETRY,
    )
    if optional:
        valid = np.ones((A, J), dtype=bool)
        valid[1, 3] = False
        data.positions[1, 3] = (1e6, -1e6)  # padding entries may lie anywhere
        mask = np.ones((M, M), dtype=bool)
        mask[0, 0] = False
        data.valid = valid
        data.mask = mask
        data.truth = (rng.normal(size=VOLUME_SHAPE) * 1e-4 + 1j * rng.normal(size=VOLUME_SHAPE) * 1e-5).astype(
            np.complex64
        )
        data.simulation = {"seed": 7, "noise": "poisson", "flux": 1e9, "steps": [4, 10], "note": None, "flag": True}
    return data


def producer_file(fields: dict | None = None) -> dict:
    """What another producer might write with plain h5py: loose dtypes, no optional fields.

    Returned as a mutable description (datasets, root attributes, /geometry
    attributes) that tests spoil one field at a time before writing it.
    """
    data = make_data(optional=False)
    return {
        "fields": {
            "/measurement/intensities": data.intensities.astype(np.float64),
            "/measurement/positions": data.positions.astype(np.float16),
            "/measurement/angles": data.angles,
            "/probe": np.abs(data.probe).astype(np.float32),  # real probe: zero phase
            **(fields or {}),
        },
        "root": {"format": "ptytomo", "version": 1},
        "geometry": {"energy_kev": 5.0, "voxel_size_m": 1e-8, "volume_shape": VOLUME_SHAPE},
    }


def write_producer_file(path, spec: dict) -> None:
    """Write ``spec`` with plain h5py, plus objects FORMAT.md does not name.

    A field whose value is None is left out, a dict value becomes a group,
    and ``geometry = None`` leaves out the /geometry group.
    """
    with h5py.File(path, "w") as f:
        f.attrs.update(spec["root"])
        for name, value in spec["fields"].items():
            if isinstance(value, dict):
                f.create_group(name).update(value)
            elif value is not None:
                f.create_dataset(name, data=value)
        if spec["geometry"] is not None:
            f.create_group("geometry").attrs.update(spec["geometry"])
        f.create_group("instrument").attrs["beamline"] = "somewhere"
        f["instrument/detector_distance_m"] = 3.2
        f["measurement/comment"] = "extra dataset"
        f.create_group("simulation").attrs.update({"simulator": "other", "seed": 3})


def assert_exact_dtypes(data: PtychoTomoData) -> None:
    assert data.intensities.dtype == np.float32
    assert data.positions.dtype == np.float64
    assert data.angles.dtype == np.float64
    assert data.probe.dtype == np.complex64
    for optional, dtype in ((data.valid, bool), (data.mask, bool), (data.truth, np.complex64)):
        assert optional is None or optional.dtype == dtype


# --------------------------------------------------------------------------
# Round trips
# --------------------------------------------------------------------------


@pytest.mark.parametrize("optional", [True, False], ids=["all-optional", "no-optional"])
def test_data_round_trip(tmp_path, optional):
    data = make_data(optional)
    path = tmp_path / "data.h5"
    write_data(path, data)
    back = read_data(path)
    assert_exact_dtypes(back)
    for name in ("intensities", "positions", "angles", "probe", "valid", "mask", "truth"):
        expected = getattr(data, name)
        if expected is None:
            assert getattr(back, name) is None
        else:
            np.testing.assert_array_equal(getattr(back, name), expected)
    assert back.geometry == GEOMETRY
    assert back.simulation == data.simulation
    assert list(back.simulation) == list(data.simulation)
    assert (back.n_angles, back.n_positions, back.detector_size) == (A, J, M)
    assert back.valid_or_all().shape == (A, J) and back.valid_or_all().dtype == bool
    assert back.valid_or_all().all() != optional


def test_written_file_has_format_dtypes_and_angle_chunks(tmp_path):
    path = tmp_path / "data.h5"
    write_data(path, make_data())
    with h5py.File(path, "r") as f:
        assert f.attrs["format"] == "ptytomo" and f.attrs["version"] == 1
        assert f["measurement/intensities"].chunks == (1, J, M, M)
        expected = {
            "measurement/intensities": np.float32,
            "measurement/positions": np.float64,
            "measurement/angles": np.float64,
            "measurement/valid": bool,
            "measurement/mask": bool,
            "probe": np.complex64,
            "truth/volume": np.complex64,
        }
        for name, dtype in expected.items():
            assert f[name].dtype == dtype, name
        assert tuple(f["geometry"].attrs["volume_shape"]) == VOLUME_SHAPE
        assert f["simulation"].attrs["note"] == "none"


def test_write_converts_loose_in_memory_dtypes(tmp_path):
    data = make_data()
    data.intensities = data.intensities.astype(np.int32)
    data.positions = data.positions.astype(np.float32)
    data.probe = np.abs(data.probe).astype(np.float64)
    data.valid = data.valid.astype(np.uint8)
    write_data(tmp_path / "data.h5", data)
    assert_exact_dtypes(read_data(tmp_path / "data.h5"))


def test_reconstruction_round_trip(tmp_path):
    recon = make_reconstruction()
    path = tmp_path / "recon.h5"
    write_reconstruction(path, recon)
    back = read_reconstruction(path)
    assert back.volume.dtype == np.complex64
    np.testing.assert_array_equal(back.volume, recon.volume.astype(np.complex64))
    assert back.method == "joint-gd"
    assert back.parameters == recon.parameters
    assert isinstance(back.parameters["nesterov"], bool) and isinstance(back.parameters["iterations"], int)
    assert list(back.parameters) == list(recon.parameters)
    assert list(back.history) == list(recon.history)
    for name, column in back.history.items():
        assert column.dtype == np.float64
        np.testing.assert_array_equal(column, recon.history[name])
    assert back.geometry == GEOMETRY
    with h5py.File(path, "r") as f:
        assert f.attrs["format"] == "ptytomo-reconstruction" and f.attrs["version"] == 1
        assert f["reconstruction/volume"].dtype == np.complex64
        assert f["reconstruction"].attrs["step"] == "none"


def make_reconstruction() -> Reconstruction:
    k = 5
    return Reconstruction(
        volume=np.full(VOLUME_SHAPE, 1e-4 + 1e-5j, dtype=np.complex128),
        method="joint-gd",
        parameters={"iterations": 100, "alpha": 0.01, "nesterov": True, "step": None, "schedule": [1.0, 0.5]},
        history={
            "iteration": np.arange(k),
            "cost": np.linspace(1.0, 0.1, k),
            "time_s": np.linspace(0.0, 2.0, k, dtype=np.float32),
            "rmse_delta": np.full(k, np.nan),  # a diverged run is still recorded
        },
        geometry=GEOMETRY,
    )


# --------------------------------------------------------------------------
# Files from other producers
# --------------------------------------------------------------------------


def test_reads_plain_h5py_producer_file(tmp_path):
    path = tmp_path / "other.h5"
    spec = producer_file()
    write_producer_file(path, spec)
    data = read_data(path)
    assert_exact_dtypes(data)
    fields = spec["fields"]
    np.testing.assert_array_equal(data.intensities, fields["/measurement/intensities"].astype(np.float32))
    np.testing.assert_array_equal(data.positions, fields["/measurement/positions"].astype(np.float64))
    np.testing.assert_array_equal(data.probe.imag, 0)
    np.testing.assert_allclose(data.probe.real, fields["/probe"])
    assert data.valid is None and data.mask is None and data.truth is None
    assert data.simulation == {"simulator": "other", "seed": 3}


def test_reads_integer_counts_flags_and_complex128(tmp_path):
    path = tmp_path / "other.h5"
    spec = producer_file()
    fields = spec["fields"]
    fields["/measurement/intensities"] = fields["/measurement/intensities"].astype(np.uint16)
    fields["/probe"] = fields["/probe"].astype(np.complex128) * np.exp(0.3j)
    fields["/measurement/valid"] = np.ones((A, J), dtype=np.int8)
    fields["/measurement/mask"] = np.ones((M, M), dtype=np.uint8)
    fields["/truth/volume"] = np.ones(VOLUME_SHAPE, dtype=np.float64) * 1e-4  # real truth: beta = 0
    spec["geometry"] = {"energy_kev": 5, "voxel_size_m": 1e-8, "volume_shape": [16.0, 10.0, 12.0]}
    write_producer_file(path, spec)
    data = read_data(path)
    assert_exact_dtypes(data)
    assert data.valid.all() and data.mask.all()
    assert data.geometry == GEOMETRY
    np.testing.assert_array_equal(data.truth.imag, 0)


def test_read_intensities_streams_angle_batches(tmp_path):
    data = make_data()
    path = tmp_path / "data.h5"
    write_data(path, data)
    batch = read_intensities(path, slice(1, 3))
    assert batch.dtype == np.float32
    np.testing.assert_array_equal(batch, data.intensities[1:3])
    np.testing.assert_array_equal(read_intensities(path, slice(None, None, 2)), data.intensities[::2])
    with pytest.raises(PtytomoError, match="angle_slice"):
        read_intensities(path, 1)
    with pytest.raises(PtytomoError, match="angle_slice"):
        read_intensities(path, slice(None, None, -1))


def test_read_intensities_checks_the_batch(tmp_path):
    spec = producer_file()
    spec["fields"]["/measurement/intensities"][2, 1, 0, 0] = np.nan
    write_producer_file(tmp_path / "d.h5", spec)
    assert read_intensities(tmp_path / "d.h5", slice(0, 2)).shape == (2, J, M, M)
    with pytest.raises(PtytomoError, match="/measurement/intensities.*non-finite"):
        read_intensities(tmp_path / "d.h5", slice(2, 3))


# --------------------------------------------------------------------------
# Bad data files: each gives a one-line PtytomoError naming the field
# --------------------------------------------------------------------------


def _set(name, value):
    """Replace (or add, or with None remove) one dataset."""

    def spoil(spec):
        spec["fields"][name] = value

    return spoil


def _change(name, function):
    """Replace one dataset by a function of its good value."""

    def spoil(spec):
        spec["fields"][name] = function(np.array(spec["fields"][name]))

    return spoil


def _assign(index, value):
    def change(array):
        array = array.astype(np.float64) if array.dtype == np.float16 else array
        array[index] = value
        return array

    return change


def _attr(group, name, value=None, delete=False):
    """Change (or delete) one attribute of the root ("root") or /geometry ("geometry")."""

    def spoil(spec):
        if delete:
            del spec[group][name]
        else:
            spec[group][name] = value

    return spoil


def _no_geometry(spec):
    spec["geometry"] = None


def _no_positions(spec):
    """J = 0: consistent shapes, but nothing measured."""
    for name in ("/measurement/intensities", "/measurement/positions"):
        spec["fields"][name] = spec["fields"][name][:, :0]


BAD_DATA = {
    # header
    "format missing": (_attr("root", "format", delete=True), "root group is missing attribute format"),
    "format wrong": (_attr("root", "format", "nexus"), "format is 'nexus'"),
    "reconstruction given": (_attr("root", "format", "ptytomo-reconstruction"), "format .*reconstruction file"),
    "version newer": (_attr("root", "version", 2), "version is 2, newer"),
    "version missing": (_attr("root", "version", delete=True), "missing attribute version"),
    # geometry
    "geometry group missing": (_no_geometry, "missing group /geometry"),
    "energy missing": (_attr("geometry", "energy_kev", delete=True), "/geometry is missing attribute energy_kev"),
    "energy zero": (_attr("geometry", "energy_kev", 0.0), "/geometry attribute energy_kev is 0.0"),
    "energy string": (_attr("geometry", "energy_kev", "5 keV"), "energy_kev .*expected a number"),
    "voxel negative": (_attr("geometry", "voxel_size_m", -1e-8), "voxel_size_m"),
    "volume_shape length": (_attr("geometry", "volume_shape", [16, 10]), "volume_shape"),
    "volume_shape fraction": (_attr("geometry", "volume_shape", [16, 10.5, 12]), "volume_shape"),
    "volume_shape zero": (_attr("geometry", "volume_shape", [16, 0, 12]), "volume_shape"),
    # missing datasets
    "intensities missing": (_set("/measurement/intensities", None), "missing dataset /measurement/intensities"),
    "positions missing": (_set("/measurement/positions", None), "missing dataset /measurement/positions"),
    "angles missing": (_set("/measurement/angles", None), "missing dataset /measurement/angles"),
    "probe missing": (_set("/probe", None), "missing dataset /probe"),
    "intensities a group": (_set("/measurement/intensities", {"x": 1.0}), "/measurement/intensities is a group"),
    # shapes
    "intensities 3D": (
        _change("/measurement/intensities", lambda x: x[0]),
        r"/measurement/intensities has shape \(4, 8, 8\), expected 4 dimensions",
    ),
    "frames not square": (
        _change("/measurement/intensities", lambda x: x[..., :-1]),
        "/measurement/intensities has 8 x 7 frames",
    ),
    "positions shape": (
        _change("/measurement/positions", lambda x: np.concatenate([x, x[..., :1]], axis=-1)),
        r"/measurement/positions has shape \(3, 4, 3\), expected \(A, J, 2\) = \(3, 4, 2\)",
    ),
    "positions too few angles": (
        _change("/measurement/positions", lambda x: x[:2]),
        "/measurement/positions has shape",
    ),
    "angles shape": (
        _change("/measurement/angles", lambda x: np.append(x, 0.0)),
        r"/measurement/angles has shape \(4,\), expected \(A,\) = \(3,\)",
    ),
    "probe shape": (
        _set("/probe", np.ones((M + 1, M + 1))),
        r"/probe has shape \(9, 9\), expected \(M, M\) = \(8, 8\)",
    ),
    "valid shape": (_set("/measurement/valid", np.ones((A, J + 1), bool)), r"/measurement/valid has shape \(3, 5\)"),
    "mask shape": (_set("/measurement/mask", np.ones((M, M - 1), bool)), r"/measurement/mask has shape \(8, 7\)"),
    "truth shape": (
        _set("/truth/volume", np.zeros((16, 12, 10), np.complex64)),
        r"/truth/volume has shape \(16, 12, 10\), expected volume_shape = \(16, 10, 12\)",
    ),
    # dtypes
    "intensities strings": (
        _set("/measurement/intensities", np.array(["a", "b"], dtype=h5py.string_dtype())),
        "/measurement/intensities has dtype string",
    ),
    "intensities complex": (
        _change("/measurement/intensities", lambda x: x.astype(np.complex64)),
        "/measurement/intensities has dtype complex64",
    ),
    "intensities bool": (
        _change("/measurement/intensities", lambda x: x > 50),
        "/measurement/intensities has dtype bool",
    ),
    "positions strings": (_set("/measurement/positions", np.bytes_(b"0 0")), "/measurement/positions has dtype string"),
    "angles complex": (_change("/measurement/angles", lambda x: x + 0j), "/measurement/angles has dtype complex128"),
    "probe strings": (_set("/probe", "disc"), "/probe has dtype string"),
    "valid float": (_set("/measurement/valid", np.ones((A, J))), "/measurement/valid has dtype float64"),
    "valid not 0/1": (
        _set("/measurement/valid", np.full((A, J), 2, np.int32)),
        "/measurement/valid has values other than 0 and 1",
    ),
    "truth strings": (_set("/truth/volume", "cube"), "/truth/volume has dtype string"),
    # values
    "intensities NaN": (
        _change("/measurement/intensities", _assign((1, 2, 3, 4), np.nan)),
        r"/measurement/intensities has 1 non-finite .*\(1, 2, 3, 4\)",
    ),
    "intensities inf": (
        _change("/measurement/intensities", _assign((0, 0, 0, 0), np.inf)),
        "/measurement/intensities has 1 non-finite",
    ),
    "intensities overflow float32": (
        _change("/measurement/intensities", _assign((0, 0, 0, 0), 1e300)),
        "/measurement/intensities has 1 non-finite",
    ),
    "positions NaN": (
        _change("/measurement/positions", _assign((0, 1, 0), np.nan)),
        "/measurement/positions has 1 non-finite",
    ),
    "angles inf": (_change("/measurement/angles", _assign(2, -np.inf)), "/measurement/angles has 1 non-finite"),
    "probe NaN": (_change("/probe", _assign((3, 3), np.nan)), "/probe has 1 non-finite"),
    "truth NaN": (
        _set("/truth/volume", np.full(VOLUME_SHAPE, np.nan, np.complex64)),
        "/truth/volume has 1920 non-finite",
    ),
    "negative counts": (
        _change("/measurement/intensities", _assign((2, 0, 1, 1), -3.0)),
        r"/measurement/intensities has 1 negative value.*\(2, 0, 1, 1\)",
    ),
    "window below projection": (
        _change("/measurement/positions", _assign((1, 2), (16.0, 0.0))),
        r"/measurement/positions: 1 valid measurement.*angle index 1, position index 2",
    ),
    "windows left of projection": (
        _change("/measurement/positions", _assign((0, slice(None), 1), -M)),
        r"/measurement/positions: 4 valid measurement.*angle index 0, position index 0",
    ),
    "no valid measurement": (
        _set("/measurement/valid", np.zeros((A, J), np.uint8)),
        "/measurement/valid marks no measurement",
    ),
    "no measurement at all": (
        _no_positions,
        r"/measurement/intensities holds no measurement \(A = 3, J = 0\)",
    ),
    "probe all zero": (_set("/probe", np.zeros((M, M), np.complex64)), "/probe is zero everywhere"),
    "mask all dead": (
        _set("/measurement/mask", np.zeros((M, M), bool)),
        "/measurement/mask marks every detector pixel",
    ),
}


@pytest.mark.parametrize("spoil, match", list(BAD_DATA.values()), ids=list(BAD_DATA))
def test_bad_data_file_raises_naming_the_field(tmp_path, spoil, match):
    spec = producer_file()
    spoil(spec)
    path = tmp_path / "bad.h5"
    write_producer_file(path, spec)
    with pytest.raises(PtytomoError, match=match) as info:
        read_data(path)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: ")


def test_invalid_padding_entries_may_lie_outside(tmp_path):
    valid = np.ones((A, J), dtype=bool)
    valid[1, 2] = False
    spec = producer_file({"/measurement/valid": valid})
    _change("/measurement/positions", _assign((1, 2), (1e6, -1e6)))(spec)
    write_producer_file(tmp_path / "d.h5", spec)
    assert read_data(tmp_path / "d.h5").valid_or_all().sum() == A * J - 1


def test_missing_file(tmp_path):
    with pytest.raises(PtytomoError, match="nothing.h5: file not found"):
        read_data(tmp_path / "nothing.h5")


def test_text_file_is_not_hdf5(tmp_path):
    path = tmp_path / "notes.h5"
    path.write_text("intensities: 1 2 3\n")
    with pytest.raises(PtytomoError, match="notes.h5: not an HDF5 file"):
        read_data(path)
    with pytest.raises(PtytomoError, match="not an HDF5 file"):
        read_reconstruction(path)


def test_empty_and_truncated_files(tmp_path):
    (tmp_path / "empty.h5").write_bytes(b"")
    with pytest.raises(PtytomoError, match="empty.h5: not an HDF5 file"):
        read_data(tmp_path / "empty.h5")
    write_data(tmp_path / "good.h5", make_data())
    whole = (tmp_path / "good.h5").read_bytes()
    (tmp_path / "cut.h5").write_bytes(whole[: len(whole) // 2])
    with pytest.raises(PtytomoError, match="cut.h5: cannot open the HDF5 file"):
        read_data(tmp_path / "cut.h5")


def test_directory_is_not_a_file(tmp_path):
    with pytest.raises(PtytomoError, match="is a directory"):
        read_data(tmp_path)


def test_validate_data_in_memory():
    data = make_data()
    validate_data(data)
    data.positions = data.positions[:, :2]
    with pytest.raises(PtytomoError, match=r"^data: /measurement/positions has shape \(3, 2, 2\)"):
        validate_data(data)


def test_write_refuses_invalid_data_and_leaves_no_file(tmp_path):
    data = make_data()
    data.intensities = -data.intensities
    with pytest.raises(PtytomoError, match="/measurement/intensities has .* negative"):
        write_data(tmp_path / "out.h5", data)
    assert os.listdir(tmp_path) == []


def test_write_refuses_unstorable_simulation_attribute(tmp_path):
    data = make_data()
    data.simulation = {"nested": {"a": 1}}
    with pytest.raises(PtytomoError, match="/simulation attribute nested"):
        write_data(tmp_path / "out.h5", data)
    assert os.listdir(tmp_path) == []


def test_write_to_missing_directory(tmp_path):
    with pytest.raises(PtytomoError, match="cannot create a file"):
        write_data(tmp_path / "no" / "such" / "dir.h5", make_data())


# --------------------------------------------------------------------------
# Bad reconstructions
# --------------------------------------------------------------------------


BAD_RECON_FILES = {
    "method missing": (lambda f: f["reconstruction"].attrs.__delitem__("method"), "missing attribute method"),
    "cost missing": (lambda f: f.__delitem__("history/cost"), "missing dataset /history/cost"),
    "history missing": (lambda f: f.__delitem__("history"), "missing group /history"),
    "column length": (lambda f: f.__setitem__("history/extra", np.zeros(2)), "/history/extra has length 2"),
    "column strings": (lambda f: f.__setitem__("history/extra", "x"), "/history/extra has dtype string"),
    "volume shape": (
        lambda f: f["geometry"].attrs.__setitem__("volume_shape", [16, 10, 13]),
        r"/reconstruction/volume has shape \(16, 10, 12\), expected volume_shape",
    ),
    "volume missing": (lambda f: f.__delitem__("reconstruction/volume"), "missing dataset /reconstruction/volume"),
    "version newer": (lambda f: f.attrs.__setitem__("version", 3), "version is 3, newer"),
    "data format": (lambda f: f.attrs.__setitem__("format", "ptytomo"), "format is 'ptytomo'.*data file"),
}


@pytest.mark.parametrize("edit, match", list(BAD_RECON_FILES.values()), ids=list(BAD_RECON_FILES))
def test_bad_reconstruction_file_raises_naming_the_field(tmp_path, edit, match):
    path = tmp_path / "recon.h5"
    write_reconstruction(path, make_reconstruction())
    with h5py.File(path, "a") as f:
        edit(f)
    with pytest.raises(PtytomoError, match=match) as info:
        read_reconstruction(path)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    "change, match",
    [
        (lambda r: r.history.pop("time_s"), "missing dataset /history/time_s"),
        (lambda r: r.history.update(extra=np.zeros((5, 2))), r"/history/extra has shape \(5, 2\)"),
        (lambda r: r.parameters.update(options={"a": 1}), "/reconstruction attribute options"),
        (lambda r: r.parameters.update(method="x"), "parameter 'method'"),
        (lambda r: setattr(r, "method", ""), "method must be a non-empty string"),
        (lambda r: setattr(r, "volume", r.volume[:-1]), r"/reconstruction/volume has shape \(15, 10, 12\)"),
    ],
    ids=["no time_s", "2D column", "dict parameter", "method parameter", "empty method", "volume shape"],
)
def test_write_reconstruction_refuses_bad_input(tmp_path, change, match):
    recon = make_reconstruction()
    change(recon)
    with pytest.raises(PtytomoError, match=match):
        write_reconstruction(tmp_path / "recon.h5", recon)
    assert os.listdir(tmp_path) == []


# --------------------------------------------------------------------------
# Atomic writing
# --------------------------------------------------------------------------


def test_atomic_failure_keeps_existing_file_and_removes_temporary(tmp_path):
    path = tmp_path / "data.h5"
    write_data(path, make_data())
    before = path.read_bytes()
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_h5(path) as f:
            f["x"] = np.zeros(10)
            raise RuntimeError("boom")
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["data.h5"]
    read_data(path)


def test_atomic_success_replaces_file(tmp_path):
    path = tmp_path / "out.h5"
    path.write_text("old")
    with atomic_h5(path) as f:
        f["x"] = np.arange(3)
    with h5py.File(path, "r") as f:
        np.testing.assert_array_equal(f["x"][()], np.arange(3))
    assert os.listdir(tmp_path) == ["out.h5"]


def test_atomic_write_is_on_disk_before_the_rename(tmp_path, monkeypatch):
    """The new file is fsynced under its temporary name before it replaces the old one, then the directory:
    a power cut leaves either file whole, never a renamed file whose blocks were not written."""
    events = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: (events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}"))),
                                                 real_fsync(fd))[1])
    monkeypatch.setattr(os, "replace", lambda a, b: (events.append(("replace", os.fspath(a))), real_replace(a, b))[1])
    path = tmp_path / "out.h5"
    with atomic_h5(path) as f:
        f["x"] = np.arange(3)
    (first, synced), (second, renamed), (third, directory) = events
    assert (first, second, third) == ("fsync", "replace", "fsync")
    assert synced == os.path.realpath(renamed) and os.path.basename(renamed).startswith(".out.h5.")
    assert directory == os.path.realpath(tmp_path)
