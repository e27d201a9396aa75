"""Property-based tests of the FORMAT.md readers: any damaged file ends in one line and exit 2.

Each example takes a valid tiny file (data or reconstruction), damages it
(truncation, wrong dtypes and shapes, NaN and inf, missing and extra fields,
absurd attributes) and reads it through the API and the CLI: the result is a
valid data set or a one-line ``PtytomoError``, never a traceback or a hang.
Sized to run in a few seconds (``max_examples`` below).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import h5py
import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from ptytomo.cli import main
from ptytomo.errors import PtytomoError
from ptytomo.io import Reconstruction, read_data, read_reconstruction, write_data, write_reconstruction
from ptytomo.simulate import SimulationConfig, simulate

DATA_FIELDS = ("/measurement/intensities", "/measurement/positions", "/measurement/angles", "/measurement/valid",
               "/measurement/mask", "/probe", "/truth/volume")
RECONSTRUCTION_FIELDS = ("/reconstruction/volume", "/history/iteration", "/history/cost", "/history/time_s",
                         "/reconstruction/probe", "/reconstruction/positions", "/reconstruction/angle_shifts")
ATTRIBUTES = (("/", "format"), ("/", "version"), ("/geometry", "energy_kev"), ("/geometry", "voxel_size_m"),
              ("/geometry", "volume_shape"), ("/reconstruction", "method"))
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", 40))  # FUZZ_EXAMPLES=1000 for a longer search than CI's
FUZZ = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                        HealthCheck.too_slow])


@pytest.fixture(scope="module")
def templates(tmp_path_factory):
    """A valid data file (with valid flags, mask and truth) and a valid reconstruction file."""
    folder = tmp_path_factory.mktemp("fuzz")
    data = simulate(SimulationConfig(size=8, n_angles=3, detector_size=9, probe_diameter=5, step=4, device="cpu"),
                    progress=False)
    data.valid = np.ones(data.positions.shape[:2], dtype=bool)
    data.mask = np.ones((9, 9), dtype=bool)
    write_data(folder / "data.h5", data)
    recon = Reconstruction(volume=data.truth, method="joint", parameters={"optimizer": "lbfgs"},
                           history={"iteration": np.arange(1.0, 4.0), "cost": np.ones(3), "time_s": np.ones(3)},
                           geometry=data.geometry, probe=data.probe[None], positions=data.positions,
                           angle_shifts=np.zeros((3, 2)))
    write_reconstruction(folder / "recon.h5", recon)
    return folder


# -- damage -------------------------------------------------------------------------------

DTYPES = ("float16", "float32", "float64", "int8", "uint16", "int64", "complex64", "bool", "string", "compound")
BAD_VALUES = (np.nan, np.inf, -np.inf, -1.0, 0.0, 1e300, -1e300)


def array_of(dtype: str, shape: tuple[int, ...], fill: float) -> np.ndarray:
    if dtype == "string":
        return np.full(shape, b"x", dtype="S1")
    if dtype == "compound":
        return np.zeros(shape, dtype=[("a", "f4"), ("b", "i2")])
    with np.errstate(over="ignore", invalid="ignore"):
        return np.full(shape, fill).astype(dtype)


shapes = st.lists(st.integers(0, 4), min_size=0, max_size=4).map(tuple)
replace_field = st.tuples(st.just("replace"), st.sampled_from(DTYPES), shapes, st.sampled_from(BAD_VALUES + (1.0,)))
poison_field = st.tuples(st.just("poison"), st.sampled_from(BAD_VALUES), st.integers(0, 10_000))
absurd = st.one_of(st.integers(-2**63, 2**63 - 1), st.floats(allow_nan=True, allow_infinity=True),
                   st.text(st.characters(exclude_characters="\x00", exclude_categories=("Cs",)), max_size=5),
                   st.lists(st.integers(-2**40, 2**40), max_size=5).map(np.asarray),
                   st.just(np.array([2**40, 2**40, 2**40])), st.just(np.array([4096, 4096, 4096])))
damage = st.one_of(
    st.tuples(st.just("delete")), st.tuples(st.just("group")), replace_field, poison_field,
)


def apply_field_damage(f: h5py.File, name: str, action: tuple) -> None:
    kind = action[0]
    if kind == "poison":  # one element set to a bad value, the field's own dtype and shape kept
        dataset = f.get(name)
        if isinstance(dataset, h5py.Dataset) and dataset.size and dataset.dtype.kind in "fc":
            values = dataset[()]
            flat = values.reshape(-1)
            with np.errstate(over="ignore", invalid="ignore"):
                flat[action[2] % flat.size] = action[1]
            dataset[()] = values
        return
    if name in f:
        del f[name]
    if kind == "group":
        f.create_group(name)
    elif kind == "replace":
        _, dtype, shape, fill = action
        f.create_dataset(name, data=array_of(dtype, shape, fill))


def apply_attribute_damage(f: h5py.File, where: str, attribute: str, value) -> None:
    group = f.get(where)
    if group is None:
        return
    if value is None:
        group.attrs.pop(attribute, None)
    else:
        group.attrs[attribute] = value


def damaged_copy(template: Path, field_damage, attribute_damage, extra: bool, cut: float | None) -> Path:
    folder = Path(tempfile.mkdtemp(dir=template.parent))
    path = folder / template.name
    shutil.copy(template, path)
    with h5py.File(path, "r+") as f:
        for name, action in field_damage:
            apply_field_damage(f, name, action)
        for (where, attribute), value in attribute_damage:
            apply_attribute_damage(f, where, attribute, value)
        if extra:  # producers add their own fields: readers ignore them
            f.create_dataset("/instrument/extra", data=np.arange(3))
            f.attrs["producer_note"] = "extra"
    if cut is not None:
        size = os.path.getsize(path)
        with open(path, "r+b") as handle:
            handle.truncate(int(size * cut))
    return path


def damage_for(fields):
    return dict(
        field_damage=st.lists(st.tuples(st.sampled_from(fields), damage), max_size=3),
        attribute_damage=st.lists(st.tuples(st.sampled_from(ATTRIBUTES), st.one_of(st.none(), absurd)), max_size=2),
        extra=st.booleans(),
        cut=st.one_of(st.none(), st.none(), st.floats(0.0, 0.999)),
    )


def assert_one_line(exc: BaseException) -> None:
    text = str(exc)
    assert text and "\n" not in text and "Traceback" not in text, text


# -- properties ---------------------------------------------------------------------------


@FUZZ
@given(**damage_for(DATA_FIELDS))
def test_read_data_returns_data_or_one_line(templates, field_damage, attribute_damage, extra, cut):
    path = damaged_copy(templates / "data.h5", field_damage, attribute_damage, extra, cut)
    for stream in (False, True):
        try:
            data = read_data(path, stream=stream)
        except PtytomoError as exc:
            assert_one_line(exc)
            event("refused")
        else:
            assert data.intensities.shape[0] == data.angles.shape[0]
            event("read")


@FUZZ
@given(**damage_for(RECONSTRUCTION_FIELDS))
def test_read_reconstruction_returns_one_or_one_line(templates, field_damage, attribute_damage, extra, cut):
    path = damaged_copy(templates / "recon.h5", field_damage, attribute_damage, extra, cut)
    try:
        recon = read_reconstruction(path)
    except PtytomoError as exc:
        assert_one_line(exc)
        event("refused")
    else:
        assert recon.volume.shape == tuple(recon.geometry.volume_shape)
        event("read")


def assert_cli_one_line(capsys, code: int) -> None:
    err = capsys.readouterr().err
    assert code in (0, 2), err
    event(f"exit {code}")
    if code == 2:
        lines = [line for line in err.splitlines() if not line.startswith("ptytomo: warning:")]
        assert len(lines) == 1 and lines[0].startswith("ptytomo "), err


@settings(FUZZ, max_examples=max(1, EXAMPLES * 5 // 8))  # each runs a reconstruction
@given(**damage_for(DATA_FIELDS))
def test_info_and_reconstruct_cli_end_in_one_line(templates, capsys, field_damage, attribute_damage, extra, cut):
    path = damaged_copy(templates / "data.h5", field_damage, attribute_damage, extra, cut)
    assert_cli_one_line(capsys, main(["info", str(path)]))
    out = path.with_name("recon.h5")
    assert_cli_one_line(capsys, main(["reconstruct", str(path), "-o", str(out), "--iterations", "1", "--quiet",
                                      "--device", "cpu"]))


@settings(FUZZ, max_examples=max(1, EXAMPLES // 4))
@given(cut=st.floats(0.0, 0.999))
def test_report_of_a_truncated_reconstruction_ends_in_one_line(templates, capsys, cut):
    path = damaged_copy(templates / "recon.h5", [], [], False, cut)
    assert_cli_one_line(capsys, main(["report", str(path), "--out", str(path.parent / "figures")]))
