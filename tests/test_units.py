"""Physical units: electron density and a compound's mass density from delta and beta, and their figures."""

from __future__ import annotations

import math

import numpy as np
import pytest
import xraydb
from mpl_toolkits.axes_grid1.anchored_artists import AnchoredSizeBar

from ptytomo import physics
from ptytomo.cli import build_parser, main
from ptytomo.errors import PtytomoError
from ptytomo.io import Geometry, Reconstruction, write_reconstruction
from ptytomo.report import _slices_figure, report_from_files
from ptytomo.report_units import UNITS_NAME, scale_bar_length, units_figure

AVOGADRO = 6.02214076e23
SIO2_DENSITY = 2.2
SHAPE = (12, 16, 20)


def _sio2_molecules_per_nm3(density_g_cm3: float) -> float:
    molar_mass = xraydb.atomic_mass("Si") + 2 * xraydb.atomic_mass("O")  # g/mol
    return density_g_cm3 / molar_mass * AVOGADRO * 1e-21  # 1 cm^3 = 1e21 nm^3


def _ball(shape=SHAPE, radius=0.6) -> np.ndarray:
    z, y, x = np.meshgrid(*(np.linspace(-1, 1, n) for n in shape), indexing="ij")
    return x**2 + y**2 + z**2 < radius**2


def _sio2_volume(noise: float = 0.0, seed: int = 0) -> np.ndarray:
    """A silica ball at 2.2 g/cm^3 (8 keV) in empty space, with optional Gaussian noise on delta and beta."""
    delta, beta = physics.delta_beta("SiO2", SIO2_DENSITY, 8.0)
    ball = _ball()
    rng = np.random.default_rng(seed)
    volume = ball * complex(delta, beta) + noise * (delta * rng.standard_normal(SHAPE)
                                                     + 1j * beta * rng.standard_normal(SHAPE))
    return volume.astype(np.complex64)


def _recon(volume, parameters=None) -> Reconstruction:
    history = {"iteration": np.arange(3.0), "cost": np.ones(3), "time_s": np.arange(3.0)}
    return Reconstruction(volume, "joint", dict(parameters or {}), history, Geometry(8.0, 1.5e-8, volume.shape))


# --------------------------------------------------------------------------
# Numbers
# --------------------------------------------------------------------------


def test_electron_density_of_silica_from_its_electrons_and_molar_mass():
    """SiO2 at 2.2 g/cm^3 holds 30 electrons per 60.08 g/mol: 661.5 e/nm^3, counted without xraydb's delta.

    delta also carries the anomalous factor f' (+0.34 electrons per SiO2 at 8 keV, +1.1 %), which
    fades with energy; with f' added, the formula's constants match xraydb's to 1e-4.
    """
    molecules = _sio2_molecules_per_nm3(SIO2_DENSITY)
    electrons = molecules * (xraydb.atomic_number("Si") + 2 * xraydb.atomic_number("O"))
    assert electrons == pytest.approx(661.5, abs=0.1)
    for energy, tolerance in ((8.0, 0.015), (20.0, 0.004)):
        delta, _ = physics.delta_beta("SiO2", SIO2_DENSITY, energy)
        measured = delta * physics.electron_density_per_delta(energy)
        assert measured == pytest.approx(electrons, rel=tolerance)
        anomalous = xraydb.f1_chantler("Si", energy * 1e3) + 2 * xraydb.f1_chantler("O", energy * 1e3)
        assert measured == pytest.approx(electrons + molecules * anomalous, rel=1e-4)


def test_electron_density_factor_scales_with_the_square_of_the_energy():
    """rho_e / delta = 2 pi / (r_e lambda^2): 9.283e7 e/nm^3 at 8 keV, four times that at 16 keV."""
    at_8 = physics.electron_density_per_delta(8.0)
    wavelength = physics.PLANCK_KEV_M / 8.0
    assert at_8 == pytest.approx(2 * math.pi / (2.8179403262e-15 * wavelength**2) * 1e-27, rel=1e-12)
    assert at_8 == pytest.approx(9.2832e7, rel=1e-4)
    assert physics.electron_density_per_delta(16.0) == pytest.approx(4 * at_8, rel=1e-12)
    with pytest.raises(PtytomoError, match="energy_kev"):
        physics.electron_density_per_delta(0.0)


def test_mass_density_factors_recover_the_density_of_delta_and_beta():
    per_delta, per_beta = physics.compound_density_factors("SiO2", 8.0)
    for density in (0.5, SIO2_DENSITY, 19.3):
        delta, beta = physics.delta_beta("SiO2", density, 8.0)
        assert delta * per_delta == pytest.approx(density, rel=1e-12)
        assert beta * per_beta == pytest.approx(density, rel=1e-12)


def test_physical_units_of_a_silica_phantom():
    """A float32 phantom made with delta_beta at 2.2 g/cm^3 gives 2.2 from delta and from beta (1e-6)."""
    volume = _sio2_volume()
    units = physics.physical_units(volume, 8.0, "SiO2")
    assert units["compound"] == "SiO2"
    assert units["object_mass_density_from_delta_median_g_cm3"] == pytest.approx(SIO2_DENSITY, rel=1e-6)
    assert units["object_mass_density_from_beta_median_g_cm3"] == pytest.approx(SIO2_DENSITY, rel=1e-6)
    assert units["object_voxel_fraction"] == pytest.approx(_ball().mean(), abs=1e-12)
    delta, _ = physics.delta_beta("SiO2", SIO2_DENSITY, 8.0)
    expected = delta * physics.electron_density_per_delta(8.0)
    for name in ("median", "p05", "p95"):
        assert units[f"object_electron_density_{name}_nm3"] == pytest.approx(expected, rel=1e-6)
    assert units["electron_density_per_delta_nm3"] == physics.electron_density_per_delta(8.0)
    # Plain scalars and strings only: the attributes go straight into the reconstruction file.
    assert all(isinstance(v, (float, str)) for v in units.values())
    without = physics.physical_units(volume, 8.0)
    assert "compound" not in without and "mass_density_per_delta_g_cm3" not in without


def test_object_definition_is_robust_to_noise_and_outliers():
    """10 % noise and a few huge voxels: the threshold stays near 0.6 x the ball's delta whatever the
    outliers, every ball voxel and no background voxel counts, and the median is the ball's to 1 %."""
    volume = _sio2_volume(noise=0.1, seed=3)
    volume.flat[[5, 77, 901]] = 1e-3  # three ringing voxels, 100x the ball's delta
    units = physics.physical_units(volume, 8.0, "SiO2")
    mask, threshold = physics.object_mask(volume.real)
    ball = _ball()
    delta, _ = physics.delta_beta("SiO2", SIO2_DENSITY, 8.0)
    assert 0.55 < threshold / delta < 0.7
    assert units["object_delta_threshold"] == threshold
    assert np.count_nonzero(mask & ~ball) == 3  # the outliers only: background noise is 6 sigmas below
    assert np.count_nonzero(ball & ~mask) == 0
    assert units["object_mass_density_from_delta_median_g_cm3"] == pytest.approx(SIO2_DENSITY, rel=0.01)
    assert units["object_mass_density_from_beta_median_g_cm3"] == pytest.approx(SIO2_DENSITY, rel=0.01)


def test_no_object_gives_nan_summaries():
    units = physics.physical_units(np.zeros(SHAPE, np.complex64), 8.0, "Au")
    assert units["object_voxel_fraction"] == 0.0
    assert math.isnan(units["object_electron_density_median_nm3"])
    assert math.isnan(units["object_mass_density_from_delta_median_g_cm3"])


@pytest.mark.parametrize("good", ["", "SiO2", "Au", "CaCO3", " H2O "])
def test_check_compound_accepts_formulas(good):
    physics.check_compound(good)


@pytest.mark.parametrize("bad", ["sio2", "Xx", "12", "Si(O2", 3.0])
def test_check_compound_names_the_option_in_one_line(bad):
    with pytest.raises(PtytomoError, match="--compound") as caught:
        physics.check_compound(bad)
    assert "\n" not in str(caught.value)


# --------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------


def test_reconstruct_parser_takes_compound():
    args = build_parser().parse_args(["reconstruct", "data.h5", "-o", "recon.h5", "--compound", "SiO2"])
    assert args.compound == "SiO2"
    assert build_parser().parse_args(["reconstruct", "data.h5", "-o", "recon.h5"]).compound == ""


def test_report_with_a_bad_compound_is_one_line(tmp_path, capsys):
    recon_path = tmp_path / "recon.h5"
    write_reconstruction(recon_path, _recon(_sio2_volume()))
    code = main(["report", str(recon_path), "--compound", "Qz2"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1 and "--compound" in err and "Qz2" in err
    assert not (tmp_path / "recon_report").exists()


# --------------------------------------------------------------------------
# Figures
# --------------------------------------------------------------------------


@pytest.mark.parametrize("field_m, expected_m, label", [
    (480e-9, 100e-9, "100 nm"), (1e-6, 200e-9, "200 nm"), (3.2e-5, 5e-6, "5 µm"), (10e-9, 2e-9, "2 nm"),
    (6e-6, 1e-6, "1 µm"), (120e-9, 20e-9, "20 nm"),
])
def test_scale_bar_length_is_round_and_about_a_fifth(field_m, expected_m, label):
    length, text = scale_bar_length(field_m)
    assert length == pytest.approx(expected_m, rel=1e-12) and text == label


def test_scale_bar_lengths_over_many_fields():
    for field in np.geomspace(1e-9, 1e-3, 97):
        length, _ = scale_bar_length(float(field))
        mantissa = length / 10 ** math.floor(math.log10(length) + 1e-9)
        assert round(mantissa, 9) in (1.0, 2.0, 5.0)
        assert 0.1 <= length / field <= 0.5


def _bars(fig):
    return [(ax, a) for ax in fig.axes for a in ax.artists if isinstance(a, AnchoredSizeBar)]


def test_slice_figure_carries_scale_bars_and_the_electron_density_scale():
    volume = _sio2_volume()
    recon = _recon(volume)
    fig = _slices_figure(volume, volume, None, "", recon.geometry)
    images = [ax for ax in fig.axes if ax.images]
    bars = _bars(fig)
    assert len(images) == 12 and len(bars) == 12  # delta, beta x recon, truth x three planes
    field = min(SHAPE[1:]) * 1.5e-8  # 240 nm: a 50 nm bar, 3.33 voxels
    assert {bar.txt_label.get_text() for _, bar in bars} == {"50 nm"}
    assert {round(bar.size_bar.get_children()[0].get_width(), 9) for _, bar in bars} == {round(50e-9 / 1.5e-8, 9)}
    assert scale_bar_length(field)[1] == "50 nm"
    scales = [child.get_ylabel() for ax in fig.axes for child in ax.child_axes]
    assert len(scales) == 2 and all("e/nm³" in label for label in scales)  # recon and truth delta rows
    median = physics.physical_units(volume, 8.0)["object_electron_density_median_nm3"]
    assert f"object median {median:.4g}" in scales[0]


def test_units_figure_shows_both_mass_densities_on_one_scale():
    volume = _sio2_volume(noise=0.05, seed=1)
    fig = units_figure(volume, 1.5e-8, 8.0, "SiO2")
    images = [ax for ax in fig.axes if ax.images]
    assert len(images) == 9 and len(_bars(fig)) == 9
    titles = [ax.get_title() for ax in images]
    assert sum("from delta" in t for t in titles) == 3 and sum("from beta" in t for t in titles) == 3
    units = physics.physical_units(volume, 8.0, "SiO2")
    assert f"object median {units['object_mass_density_from_beta_median_g_cm3']:.4g} g/cm³" in titles[-1]
    limits = [ax.images[0].get_clim() for ax in images]
    assert limits[3] == limits[6]  # from delta and from beta: one shared g/cm^3 scale
    assert limits[3][0] < SIO2_DENSITY < limits[3][1]


def test_report_writes_units_png_from_the_files_compound(tmp_path, capsys):
    recon_path = tmp_path / "silica.h5"
    write_reconstruction(recon_path, _recon(_sio2_volume(), {"compound": "SiO2"}))
    paths = report_from_files(recon_path)
    assert [p.name for p in paths] == ["slices.png", "convergence.png", UNITS_NAME]
    assert paths[2].stat().st_size > 10_000
    # --compound "" turns it off; another compound replaces the file's.
    assert UNITS_NAME not in [p.name for p in report_from_files(recon_path, out_dir=tmp_path / "none", compound="")]
    code = main(["report", str(recon_path), "--out", str(tmp_path / "gold"), "--compound", "Au"])
    out = capsys.readouterr().out
    assert code == 0 and UNITS_NAME in out
    assert sorted(p.name for p in (tmp_path / "gold").iterdir()) == sorted(["slices.png", "convergence.png",
                                                                           UNITS_NAME])
