"""Optical constants, phantom geometry and volume loading."""

from __future__ import annotations

import math

import h5py
import numpy as np
import pytest

from ptytomo import phantoms
from ptytomo.errors import PtytomoError
from ptytomo.phantoms import block_average, load_volume, one_compound, random_ellipsoids, woven_wire
from ptytomo.physics import PLANCK_KEV_M, WIRE_MATERIALS, Material, delta_beta, wavelength_m, wavenumber

# METHOD.md, tabulated optical constants at 5 keV: formula -> (delta, beta).
PAPER_5KEV = {
    "Au": (1.21e-4, 2.4e-5),
    "Pt": (1.35e-4, 2.6e-5),
    "ZnO": (4.3e-5, 1.9e-6),
    "TiO2": (2.9e-5, 3.6e-6),
}
MATERIAL_VALUES = [m.refractive_index(5.0) for m in WIRE_MATERIALS]


# ---------------------------------------------------------------- physics


def test_wavelength_and_wavenumber_at_5_kev():
    assert PLANCK_KEV_M == 1.239841984e-9
    assert wavelength_m(5.0) == pytest.approx(0.2479683968e-9, rel=1e-10)
    assert wavenumber(5.0) == pytest.approx(2 * math.pi / 0.2479683968e-9, rel=1e-10)


@pytest.mark.parametrize("energy", [0.0, -5.0, float("nan"), float("inf"), "five"])
def test_bad_energy_is_rejected(energy):
    with pytest.raises(PtytomoError, match="energy_kev"):
        wavelength_m(energy)
    with pytest.raises(PtytomoError, match="energy_kev"):
        delta_beta("Au", 19.32, energy)


def test_wire_materials_are_the_papers_four_in_order():
    assert [(m.name, m.formula, m.density_g_cm3) for m in WIRE_MATERIALS] == [
        ("gold", "Au", 19.32),
        ("platinum", "Pt", 21.45),
        ("zinc oxide", "ZnO", 5.606),
        ("titania", "TiO2", 4.23),
    ]
    with pytest.raises(AttributeError):
        WIRE_MATERIALS[0].density_g_cm3 = 9.32


@pytest.mark.parametrize("material", WIRE_MATERIALS, ids=lambda m: m.formula)
def test_delta_beta_match_method_values_at_5_kev(material):
    expected_delta, expected_beta = PAPER_5KEV[material.formula]
    delta, beta = delta_beta(material.formula, material.density_g_cm3, 5.0)
    assert delta == pytest.approx(expected_delta, rel=0.03)
    assert beta == pytest.approx(expected_beta, rel=0.03)
    assert material.refractive_index(5.0) == complex(delta, beta)


def test_delta_scales_with_density_and_falls_with_energy():
    delta, beta = delta_beta("Au", 19.32, 5.0)
    half = delta_beta("Au", 9.66, 5.0)
    assert half[0] == pytest.approx(delta / 2, rel=1e-9)
    assert half[1] == pytest.approx(beta / 2, rel=1e-9)
    assert delta_beta("Au", 19.32, 10.0)[0] < delta


@pytest.mark.parametrize("formula", ["Xx", "foo", "Au(", "", 42])
def test_unknown_formula_is_named(formula):
    with pytest.raises(PtytomoError, match="formula"):
        delta_beta(formula, 1.0, 5.0)
    with pytest.raises(PtytomoError, match="formula"):
        Material("bad", formula, 1.0).refractive_index(5.0)


@pytest.mark.parametrize("density", [0.0, -1.0, float("nan")])
def test_bad_density_is_rejected(density):
    with pytest.raises(PtytomoError, match="density_g_cm3"):
        delta_beta("Au", density, 5.0)


# ---------------------------------------------------------------- phantoms


def _voxels_outside_cylinder(n: int) -> np.ndarray:
    """Mask of voxels lying wholly outside r <= 0.9, |z| <= 0.9 (no sub-point can be inside)."""
    lower = -1.0 + 2.0 * np.arange(n) / n
    upper = lower + 2.0 / n
    nearest = np.where((lower < 0) & (upper > 0), 0.0, np.minimum(np.abs(lower), np.abs(upper)))
    outside_xy = nearest[:, None] ** 2 + nearest[None, :] ** 2 > 0.9**2
    outside_z = nearest > 0.9
    return outside_z[:, None, None] | outside_xy[None, :, :]


def _pure_material_present(volume: np.ndarray) -> list[bool]:
    return [bool(np.any(np.isclose(volume, value, rtol=1e-9, atol=0))) for value in MATERIAL_VALUES]


def _check_phantom(volume: np.ndarray, n: int) -> None:
    assert volume.shape == (n, n, n)
    assert volume.dtype == np.complex128
    assert all(_pure_material_present(volume)), "every material must fill some voxel completely"
    assert not np.any(volume[_voxels_outside_cylinder(n)])
    deltas = np.array([v.real for v in MATERIAL_VALUES])
    betas = np.array([v.imag for v in MATERIAL_VALUES])
    assert volume.real.min() >= 0 and volume.real.max() <= deltas.max() * (1 + 1e-12)
    assert volume.imag.min() >= 0 and volume.imag.max() <= betas.max() * (1 + 1e-12)
    pure = np.zeros(volume.shape, dtype=bool)
    for value in MATERIAL_VALUES:
        pure |= np.isclose(volume, value, rtol=1e-9, atol=0)
    partial = (volume != 0) & ~pure
    assert partial.sum() > 0.01 * volume.size, "supersampling must give partial-volume edges"


@pytest.fixture(scope="module")
def wire64() -> np.ndarray:
    return woven_wire(64, supersample=2)


def test_woven_wire_basic_properties(wire64):
    _check_phantom(wire64, 64)


def test_woven_wire_has_separate_layers(wire64):
    occupied = np.abs(wire64).sum(axis=(1, 2)) > 0
    first, last = np.flatnonzero(occupied)[[0, -1]]
    assert not occupied[first : last + 1].all(), "layers at different heights leave empty slices between them"


def test_woven_wire_geometry(monkeypatch):
    # With every material valued 1 the volume is the occupancy: wires 4-8 voxels thick, 10-30 % filled.
    monkeypatch.setattr(phantoms, "_material_values", lambda energy_kev: np.ones(4, dtype=np.complex128))
    occupancy = woven_wire(64, supersample=2).real
    assert 0.10 <= occupancy.mean() <= 0.30
    # The middle layer (z = 0, origin = pitch/2 = 0.16) has an x-wire at y = 0.16 cresting (z = 0.13) at x = 0.16.
    coords = -1.0 + (2.0 * np.arange(64) + 1.0) / 64
    iz, ix = np.argmin(np.abs(coords - 0.13)), np.argmin(np.abs(coords - 0.16))
    profile = occupancy[iz, :, ix]
    near = np.abs(coords - 0.16) < 0.12  # wider would reach the rising y-wire along x = 0.16
    assert 4.0 <= profile[near].sum() <= 8.0


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"n": 0}, "n"),
        ({"supersample": 0}, "supersample"),
        ({"wire_radius": 0.0}, "wire_radius"),
        ({"pitch": 0.15}, "pitch"),
        ({"amplitude": 0.05}, "amplitude"),
        ({"layer_heights": ()}, "layer_heights"),
        ({"energy_kev": -1.0}, "energy_kev"),
    ],
)
def test_woven_wire_rejects_bad_arguments(kwargs, field):
    with pytest.raises(PtytomoError, match=field):
        woven_wire(**{"n": 8, "supersample": 1, **kwargs})


def test_random_ellipsoids_basic_properties_and_determinism():
    volume = random_ellipsoids(48, count=10, seed=3, supersample=2)
    _check_phantom(volume, 48)
    np.testing.assert_array_equal(volume, random_ellipsoids(48, count=10, seed=3, supersample=2))
    assert not np.array_equal(volume, random_ellipsoids(48, count=10, seed=4, supersample=2))


def test_random_ellipsoids_rejects_bad_arguments():
    with pytest.raises(PtytomoError, match="count"):
        random_ellipsoids(8, count=0)
    with pytest.raises(PtytomoError, match="seed"):
        random_ellipsoids(8, seed=-1)
    with pytest.raises(PtytomoError, match="max_semi_axis"):
        random_ellipsoids(8, max_semi_axis=0.95)
    with pytest.raises(PtytomoError, match="min_semi_axis"):
        random_ellipsoids(8, min_semi_axis=0.4, max_semi_axis=0.3)


@pytest.mark.parametrize("make", [woven_wire, lambda n, supersample: random_ellipsoids(n, supersample=supersample)])
@pytest.mark.parametrize("ss", [1, 2])
def test_oversampled_phantom_block_averages_to_supersampled_one(make, ss):
    # The oversampled simulator relies on this; both sides evaluate the same sub-points.
    fine = block_average(make(32, supersample=ss), 2)
    coarse = make(16, supersample=2 * ss)
    assert np.linalg.norm(fine - coarse) / np.linalg.norm(coarse) < 1e-9


def test_woven_wire_large_grid_stays_fast():
    # Slab-by-slab rendering: n=128 must cost about a second, not minutes.
    volume = woven_wire(128, supersample=1)
    assert volume.shape == (128, 128, 128) and np.any(volume)


# ---------------------------------------------------------------- block_average


def test_block_average_means_blocks():
    volume = np.arange(4 * 4 * 4, dtype=float).reshape(4, 4, 4) + 1j
    out = block_average(volume, 2)
    assert out.shape == (2, 2, 2)
    assert out[0, 0, 0] == pytest.approx(volume[:2, :2, :2].mean())
    assert out[1, 0, 1] == pytest.approx(volume[2:, :2, 2:].mean())
    np.testing.assert_array_equal(block_average(volume, 1), volume)


@pytest.mark.parametrize(
    "volume, factor, field",
    [(np.zeros((4, 4, 6)), 4, "factor"), (np.zeros((4, 4)), 2, "3D"), (np.zeros((4, 4, 4)), 0, "factor")],
)
def test_block_average_errors(volume, factor, field):
    with pytest.raises(PtytomoError, match=field):
        block_average(volume, factor)


# ---------------------------------------------------------------- load_volume


@pytest.fixture
def volume() -> np.ndarray:
    rng = np.random.default_rng(1)
    return rng.standard_normal((3, 4, 5)) + 1j * rng.standard_normal((3, 4, 5))


def test_load_npy_real_and_complex(tmp_path, volume):
    np.save(tmp_path / "real.npy", volume.real.astype(np.float32))
    loaded = load_volume(tmp_path / "real.npy")
    assert loaded.dtype == np.complex128 and loaded.shape == (3, 4, 5)
    np.testing.assert_allclose(loaded.real, volume.real, rtol=1e-6)
    assert not np.any(loaded.imag)
    np.save(tmp_path / "complex.npy", volume)
    np.testing.assert_array_equal(load_volume(str(tmp_path / "complex.npy")), volume)


def test_load_hdf5_default_order_and_named(tmp_path, volume):
    path = tmp_path / "data.h5"
    with h5py.File(path, "w") as f:
        f["volume"] = volume * 3
        f["reconstruction/volume"] = volume * 2
    np.testing.assert_array_equal(load_volume(path), volume * 2)
    with h5py.File(path, "a") as f:
        f["truth/volume"] = volume.astype(np.complex64)
    np.testing.assert_allclose(load_volume(path), volume, rtol=1e-6)
    np.testing.assert_array_equal(load_volume(path, dataset="/volume"), volume * 3)
    nxs = tmp_path / "scan.nxs"
    with h5py.File(nxs, "w") as f:
        f["volume"] = volume.real
    np.testing.assert_array_equal(load_volume(nxs), volume.real.astype(np.complex128))


def test_load_volume_errors(tmp_path, volume):
    with pytest.raises(PtytomoError, match="missing.npy"):
        load_volume(tmp_path / "missing.npy")
    np.save(tmp_path / "flat.npy", volume[0])
    with pytest.raises(PtytomoError, match="3D"):
        load_volume(tmp_path / "flat.npy")
    bad = volume.copy()
    bad[1, 2, 3] = np.nan
    np.save(tmp_path / "nan.npy", bad)
    with pytest.raises(PtytomoError, match="non-finite"):
        load_volume(tmp_path / "nan.npy")
    (tmp_path / "volume.txt").write_text("1 2 3")
    with pytest.raises(PtytomoError, match="extension"):
        load_volume(tmp_path / "volume.txt")
    path = tmp_path / "data.h5"
    with h5py.File(path, "w") as f:
        f["other"] = volume
        f.create_group("group")
    with pytest.raises(PtytomoError, match="/truth/volume"):
        load_volume(path)
    with pytest.raises(PtytomoError, match="/nope"):
        load_volume(path, dataset="/nope")
    with pytest.raises(PtytomoError, match="group"):
        load_volume(path, dataset="group")
    (tmp_path / "fake.h5").write_bytes(b"not hdf5")
    with pytest.raises(PtytomoError, match="fake.h5"):
        load_volume(tmp_path / "fake.h5")


def test_one_compound_keeps_the_shapes_as_density_fractions():
    """The strongest voxel becomes the compound itself, the others the same fraction of its delta and beta;
    a phantom with no positive delta has nothing to scale."""
    volume = np.zeros((2, 2, 2), dtype=np.complex64)
    volume[0, 0, 0], volume[1, 1, 1] = 4e-5 + 1e-6j, 1e-5 + 3e-6j
    scaled = one_compound(volume, 7e-6, 2e-8)
    assert scaled[0, 0, 0] == pytest.approx(7e-6 + 2e-8j) and scaled[1, 1, 1] == pytest.approx(0.25 * (7e-6 + 2e-8j))
    assert np.count_nonzero(scaled) == 2
    with pytest.raises(PtytomoError, match="no positive delta"):
        one_compound(np.zeros((2, 2, 2)), 7e-6, 2e-8)
