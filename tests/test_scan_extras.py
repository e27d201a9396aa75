"""Tests of the simulator's imperfect data: focused probe, incoherent modes, nominal file probe,
position errors, runout, Fermat scan, incident-flux jitter, and their CLI flags (docs/simulation.md)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ptytomo.cli import main
from ptytomo.io import read_data, write_data
from ptytomo.operators import JointModel
from ptytomo.scan import (
    disc_probe,
    mode_powers,
    orthogonalised,
    probe_diameter_estimate,
    probe_intensity,
    probe_photons,
    raster_positions,
    step_estimate,
    to_far_field,
)
from ptytomo.simulate import simulate

M = 15


def model_intensities(data, positions, modes=None) -> np.ndarray:
    """Noise-free coarse-model counts of ``data.truth`` at ``positions``: the sum over ``modes``."""
    modes = data.truth_probe if modes is None else modes
    g = data.geometry
    model = JointModel(g.volume_shape, g.voxel_size_m, g.energy_kev, data.angles, positions, modes[0],
                       valid=data.valid, dtype=torch.float64)
    x = model.volume(data.truth)
    total = 0.0
    for mode in modes:
        model.set_probe(torch.from_numpy(np.asarray(mode, dtype=np.complex128)))
        total = total + model.amplitudes(x).numpy() ** 2
    return total


def relative_misfit(data, positions, modes=None) -> float:
    measured = data.intensities.astype(np.float64)
    return float(np.linalg.norm(model_intensities(data, positions, modes) - measured) / np.linalg.norm(measured))


def gram(modes) -> np.ndarray:
    flat = np.asarray(modes, dtype=np.complex128).reshape(len(modes), -1)
    return flat.conj() @ flat.T


# ---------------------------------------------------------------------------
# The probe: focused and band-limited, incoherent modes, nominal in the file
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("s", [1, 2])
def test_focused_probe_is_band_limited_and_fills_the_window(s, tiny_config):
    data = simulate(tiny_config(size=8, n_angles=1, probe="focused", pupil=0.5, oversample=s), progress=False)
    spectrum = np.abs(to_far_field(data.probe.astype(np.complex128)))
    q = np.arange(M) - M // 2
    outside = np.hypot(q[:, None], q[None, :]) > 0.5 * M / 2
    assert spectrum[outside].max() < 1e-6 * spectrum.max()  # zero outside the pupil, to float32 precision
    assert probe_diameter_estimate(data.probe) > M / 2
    assert data.simulation["probe_diameter"] == pytest.approx(probe_diameter_estimate(data.probe), rel=1e-5)
    # defocus gives curvature: the phase is not flat across the bright part
    bright = np.abs(data.probe) > 0.3 * np.abs(data.probe).max()
    assert np.ptp(np.angle(data.probe[bright] / data.probe[M // 2, M // 2])) > 0.5
    assert probe_photons(data.probe) == pytest.approx(1e6, rel=1e-5)  # band-limited: the detector sees it all


def test_probe_diameter_uses_the_summed_mode_intensities():
    disc = disc_probe(31, 9.0).astype(np.complex128)
    modes = np.stack([disc, 0.5 * np.roll(disc, 3, axis=1)])
    assert probe_photons(modes) == pytest.approx(1.25 * probe_photons(disc))
    assert probe_diameter_estimate(modes) == pytest.approx(probe_diameter_estimate(probe_intensity(modes) ** 0.5))
    assert probe_diameter_estimate(modes) > probe_diameter_estimate(disc)


@pytest.mark.parametrize("kind, s", [("focused", 1), ("focused", 2), ("disc", 1)])
def test_modes_are_orthogonal_with_the_configured_powers(kind, s, tiny_config):
    config = tiny_config(size=8, n_angles=1, probe=kind, probe_diameter=7.0, probe_modes=3, mode_power_ratio=0.3,
                         oversample=s, photons=2e5)
    data = simulate(config, progress=False)
    assert data.probe.shape == data.truth_probe.shape == (3, M, M)
    g = gram(data.probe)
    powers = np.real(np.diag(g))
    assert np.abs(g - np.diag(powers)).max() < 1e-5 * powers.max()
    np.testing.assert_allclose(powers, mode_powers(3, 0.3, 2e5), rtol=1e-5)
    assert powers.sum() == pytest.approx(2e5, rel=1e-5)


def test_orthogonalised_modes_measure_the_same(rng):
    modes = rng.normal(size=(3, 6, 6)) + 1j * rng.normal(size=(3, 6, 6))
    eigen = orthogonalised(modes)
    g = gram(eigen)
    assert np.abs(g - np.diag(np.diag(g))).max() < 1e-10 * np.abs(g).max()
    assert np.all(np.diff(np.real(np.diag(g))) <= 0)  # strongest first
    # the same mutual intensity sum_k P_k(x) conj(P_k(y)), so the same counts through any object
    flat, flat_eigen = modes.reshape(3, -1), eigen.reshape(3, -1)
    np.testing.assert_allclose(flat_eigen.T @ flat_eigen.conj(), flat.T @ flat.conj(), atol=1e-10)


def test_oversampled_disc_modes_are_orthogonal(tiny_config):
    data = simulate(tiny_config(size=8, n_angles=1, probe_diameter=7.0, probe_modes=3, oversample=2), progress=False)
    g = gram(data.probe)
    assert np.abs(g - np.diag(np.diag(g))).max() < 1e-5 * np.abs(g).max()
    # the detector misses a little of the disc's far tails, nothing more
    assert 0.9 * 1e6 < probe_photons(data.probe) <= 1e6 * (1 + 1e-6)


def test_mode_intensities_add(tmp_path, tiny_config):
    """Three modes give the sum of three single-mode simulations (each mode as a probe file)."""
    config = tiny_config(size=8, n_angles=2, probe_diameter=7.0, probe_modes=3)
    data = simulate(config, progress=False)
    total = np.zeros(data.intensities.shape)
    for k, mode in enumerate(data.truth_probe):
        path = tmp_path / f"mode{k}.npy"
        np.save(path, mode)
        single = simulate(tiny_config(size=8, n_angles=2, probe_file=str(path), photons=probe_photons(mode)),
                          progress=False)
        total += single.intensities
    np.testing.assert_allclose(data.intensities, total, rtol=1e-5, atol=1e-6 * total.max())


def test_nominal_file_probe_keeps_the_true_one_as_truth(tmp_path, tiny_config):
    config = dict(size=8, n_angles=2, probe="focused", probe_modes=2, probe_diameter=6.0)
    true = simulate(tiny_config(**config), progress=False)
    nominal = simulate(tiny_config(**config, file_probe="nominal"), progress=False)
    np.testing.assert_array_equal(nominal.intensities, true.intensities)  # the same experiment
    np.testing.assert_array_equal(nominal.probe, disc_probe(M, 6.0, photons=1e6))
    path = tmp_path / "nominal.h5"
    write_data(path, nominal)
    back = read_data(path)
    assert back.probe.shape == (M, M)
    np.testing.assert_array_equal(back.truth_probe, true.probe)
    assert back.simulation["file_probe"] == "nominal" and back.simulation["nominal_probe_diameter"] == 6.0


# ---------------------------------------------------------------------------
# Positions: errors, runout, Fermat spiral
# ---------------------------------------------------------------------------


def test_position_errors_make_the_data_at_the_true_positions(tiny_config):
    data = simulate(tiny_config(position_errors=0.7, probe="focused"), progress=False)
    np.testing.assert_array_equal(data.positions, raster_positions(3, (16, 16), 3, M))
    errors = data.truth_positions - data.positions
    assert np.sqrt(np.mean(errors**2)) == pytest.approx(0.7, rel=0.15)
    assert relative_misfit(data, data.truth_positions) < 1e-6
    assert relative_misfit(data, data.positions) > 1e-3
    assert data.truth_angle_shifts is None and data.truth_angle_scale is None


def test_runout_shifts_every_position_of_an_angle(tiny_config):
    data = simulate(tiny_config(runout=1.5, n_angles=6, size=8), progress=False)
    shifts = data.truth_angle_shifts
    assert shifts.shape == (6, 2)
    assert np.sqrt(np.mean(shifts**2)) == pytest.approx(1.5, rel=1e-12)
    np.testing.assert_array_equal(data.positions, raster_positions(6, (8, 8), 3, M))
    np.testing.assert_allclose(data.truth_positions, data.positions + shifts[:, None, :], rtol=0, atol=1e-12)
    assert relative_misfit(data, data.positions + shifts[:, None, :]) < 1e-6
    assert relative_misfit(data, data.positions) > 1e-3


def test_fermat_scan_spacing_and_windows(tmp_path, tiny_config):
    step = 3
    data = simulate(tiny_config(scan="fermat", step=step, n_angles=3), progress=False)
    valid = data.valid_or_all()
    nz, _, nx = data.geometry.volume_shape
    for a in range(3):
        corners = data.positions[a][valid[a]]
        assert step_estimate(corners) == pytest.approx(step, rel=0.1)
        rows, cols = corners[:, 0], corners[:, 1]
        assert np.all((rows < nz) & (rows + M > 0) & (cols < nx) & (cols + M > 0))  # every window touches
        # the spiral covers the projection: every pixel is within a step of a probe centre
        centres = corners + M // 2
        pixels = np.stack(np.meshgrid(np.arange(nz), np.arange(nx), indexing="ij"), -1).reshape(-1, 2)
        nearest = np.min(np.linalg.norm(pixels[:, None] - centres[None], axis=-1), axis=1)
        assert nearest.max() <= step
    assert not np.allclose(data.positions[0][valid[0]][:5], data.positions[1][valid[1]][:5])  # angles differ
    assert np.all(data.intensities[~valid] == 0)
    assert relative_misfit(data, data.positions) < 1e-6
    write_data(tmp_path / "fermat.h5", data)  # the writer's checks pass (windows, valid flags)


def test_i0_jitter_scales_whole_angles(tiny_config):
    plain = simulate(tiny_config(size=8), progress=False)
    jittered = simulate(tiny_config(size=8, angle_intensity_jitter=0.1), progress=False)
    scale = jittered.truth_angle_scale
    assert scale.shape == (3,) and not np.allclose(scale, 1)
    np.testing.assert_allclose(jittered.intensities, plain.intensities * scale[:, None, None, None].astype(np.float32),
                               rtol=1e-6)


# ---------------------------------------------------------------------------
# Everything together on the fine grid, written and read back
# ---------------------------------------------------------------------------


def test_oversampled_with_every_option(tmp_path, tiny_config):
    config = tiny_config(size=8, n_angles=4, oversample=2, probe="focused", probe_modes=2, file_probe="nominal",
                         position_errors=0.5, scan="fermat", runout=0.8, angle_intensity_jitter=0.05,
                         noise="none")
    data = simulate(config, progress=False)
    path = tmp_path / "everything.h5"
    write_data(path, data)
    back = read_data(path)
    assert back.probe.shape == (M, M) and back.truth_probe.shape == (2, M, M)
    assert back.truth_positions.shape == back.positions.shape and back.truth_angle_shifts.shape == (4, 2)
    assert back.truth_angle_scale.shape == (4,)
    part = read_data(path, angles=slice(1, 3))  # one rank's share: the per-angle truths follow
    np.testing.assert_array_equal(part.truth_positions, back.truth_positions[1:3])
    np.testing.assert_array_equal(part.truth_angle_shifts, back.truth_angle_shifts[1:3])
    np.testing.assert_array_equal(part.truth_angle_scale, back.truth_angle_scale[1:3])
    assert np.sqrt(np.mean(back.truth_angle_shifts**2)) == pytest.approx(0.8)
    for name in ("probe", "pupil", "defocus", "probe_modes", "mode_power_ratio", "file_probe", "position_errors",
                 "scan", "runout", "angle_intensity_jitter"):
        assert name in back.simulation, name
    # No inverse crime, but the truths describe the data: the coarse model with them nearly fits ...
    scaled = back.intensities / back.truth_angle_scale[:, None, None, None]
    unscaled = type(back)(**{**back.__dict__, "intensities": scaled})
    best = relative_misfit(unscaled, back.truth_positions)
    assert 1e-4 < best < 0.05
    # ... and the recorded positions with the nominal probe do not
    assert relative_misfit(unscaled, back.positions, back.probe[None]) > 4 * best


# ---------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------

TINY = ["--size", "8", "--angles", "3", "--detector", "15", "--probe-diameter", "5", "--step", "3", "--quiet",
        "--device", "cpu"]


def test_cli_flags_reach_the_file(tmp_path, capsys):
    path = tmp_path / "cli.h5"
    code = main(["simulate", str(path), *TINY, "--probe", "focused", "--pupil", "0.6", "--defocus", "4",
                 "--probe-modes", "2", "--mode-power-ratio", "0.2", "--file-probe", "nominal",
                 "--position-errors", "0.4", "--scan", "fermat", "--runout", "1", "--i0-jitter", "0.02"])
    assert code == 0, capsys.readouterr().err
    data = read_data(path)
    sim = data.simulation
    assert (sim["probe"], sim["pupil"], sim["defocus"], sim["probe_modes"], sim["mode_power_ratio"]) == (
        "focused", 0.6, 4.0, 2, 0.2)
    assert (sim["file_probe"], sim["position_errors"], sim["scan"], sim["runout"], sim["angle_intensity_jitter"]) == (
        "nominal", 0.4, "fermat", 1.0, 0.02)
    assert data.truth_probe.shape == (2, M, M)
    powers = np.real(np.diag(gram(data.truth_probe)))
    assert powers[1] / powers[0] == pytest.approx(0.2, rel=1e-5)


@pytest.mark.parametrize(
    "flags, flag",
    [
        (["--probe", "cone"], "--probe"),
        (["--pupil", "0"], "--pupil"),
        (["--pupil", "1.5"], "--pupil"),
        (["--defocus", "nan"], "--defocus"),
        (["--probe-modes", "0"], "--probe-modes"),
        (["--probe-modes", "11"], "--probe-modes"),
        (["--mode-power-ratio", "1"], "--mode-power-ratio"),
        (["--file-probe", "guess"], "--file-probe"),
        (["--position-errors", "-1"], "--position-errors"),
        (["--scan", "spiral"], "--scan"),
        (["--runout", "-0.5"], "--runout"),
        (["--i0-jitter", "0.9"], "--i0-jitter"),
        (["--probe", "focused", "--probe-file", "probe.npy"], "--probe-file"),
    ],
)
def test_cli_bad_values_are_one_line_errors(tmp_path, capsys, flags, flag):
    path = tmp_path / "bad.h5"
    code = main(["simulate", str(path), *TINY, *flags])
    err = capsys.readouterr().err
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "error" in lines[0] and flag in lines[0], err
    assert "Traceback" not in err
    assert not path.exists()


def test_too_many_modes_for_a_small_disc_is_an_error(tmp_path, capsys):
    # a 2 px disc has 4 pixels: no room for 6 independent modes
    code = main(["simulate", str(tmp_path / "x.h5"), *TINY, "--probe-diameter", "2", "--probe-modes", "6"])
    err = capsys.readouterr().err
    assert code == 2 and "--probe-modes" in err and len(err.strip().splitlines()) == 1
